"""Evaluate a trained student against the oracle and write its predictions back into gt.db.

    python -m stages.evaluate --model-dir models/uplifting_qwen_v1 --test-file data/training/test.jsonl
    python -m stages.evaluate --model-dir models/uplifting_qwen_v1 --test-file ... --all   # + every article

Per dimension, on the test split (oracle scores are the truth, 0-10 scale): MAE, RMSE, Spearman
rho, bias (mean of prediction - truth: > 0 means the student scores too high) and the MAE on the
tails (true score >= 7 and <= 2; "undefined" where the test split has no such article). Next to
them, the inter-oracle MAE: how far two oracles' labels of the same articles lie apart, the floor a
student trained on one oracle can hope to reach. It is read from the calibration report's JSON
(--calibration, default the newest reports/*calibration*.json of the model's filter; the pair of
oracles compared on the most articles) or, where there is none, computed from gt.db's labels of
the two oracles that labelled the most articles in common.

Writes: the predictions into gt.db's `predictions` (model id from training; test articles, and
with --all every article in gt.db, labelled or not), <model-dir>/predictions.jsonl (one line per
article: {"id": ..., "predictions": {dimension: score}}, what `select --model-predictions`
reads), <model-dir>/evaluation.json and evaluation.md, and the figures into `models.metrics_json`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import store
from stages.student import CONFIG_FILE, Student, StudentError, dimension_metrics, read_split


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=store.default_db_path(), help="gt.db path (default: $GT_DB, else gt.db)")
    ap.add_argument("--model-dir", default="models/student", help="a folder written by `make train` "
                                                                  "(default: models/student)")
    ap.add_argument("--test-file", help="test.jsonl from `make select`: the articles the metrics are measured on")
    ap.add_argument("--all", action="store_true", help="also predict every article in gt.db (labelled or not, "
                                                       "duplicates excluded) for active learning")
    ap.add_argument("--calibration", help="calibration JSON written by `make calibrate` (default: the newest "
                                          "reports/*calibration*.json of the model's filter, else computed from gt.db)")
    ap.add_argument("--output", help="predictions JSONL (default: <model-dir>/predictions.jsonl)")
    ap.add_argument("--batch-size", type=int, default=32, help="articles per forward pass (default 32)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where to run the model (default auto: cuda when a GPU is visible)")
    ap.add_argument("--seed", type=int, default=42, help="unused by inference (deterministic); kept for the "
                                                         "stage convention")
    return ap


@dataclass
class Evaluation:
    model_id: str
    metrics: dict | None
    floor: dict | None
    baseline: dict | None
    predicted: int
    stored: int
    not_in_db: int
    jsonl: Path
    report: Path | None


def inter_oracle_mae(conn: sqlite3.Connection, filter_id: str, dims: list[str]) -> dict | None:
    """MAE between the two oracles that labelled the most articles in common (first repeat of each)."""
    import pandas as pd

    frame = pd.read_sql_query(
        """SELECT l.oracle, l.article_id, s.dimension, s.score FROM labels l
           JOIN label_scores s ON s.label_id = l.id
           WHERE l.filter_id = ? AND l.status = 'ok' AND l.repeat = 0""", conn, params=(filter_id,))
    if frame.empty or frame["oracle"].nunique() < 2:
        return None
    wide = frame.pivot_table(index=["article_id", "dimension"], columns="oracle", values="score", aggfunc="mean")
    best = None
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        n = both.index.get_level_values("article_id").nunique()
        if n and (best is None or n > best[2]):
            best = (a, b, n, both)
    if best is None:
        return None
    a, b, n, both = best
    diff = (both[a] - both[b]).abs()
    per = {d: float(diff.xs(d, level="dimension").mean()) for d in dims if d in diff.index.get_level_values(1)}
    return {"oracles": [a, b], "n": int(n), "mae": float(diff.mean()), "per_dimension": per}


def calibration_floor(path: Path, filter_id: str | None, dims: list[str]) -> dict | None:
    """The inter-oracle MAE from a calibration report's JSON: the pair compared on the most articles."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or (filter_id and data.get("filter") != filter_id):
        return None
    best = None
    for pair in data.get("pairs") or []:
        per = {d: (pair.get("per_dimension", {}).get(d, {}).get("mae") or {}) for d in dims}
        n = max((m.get("n") or 0 for m in per.values()), default=0)
        if n and (best is None or n > best["n"]):
            values = [m.get("value") for m in per.values() if m.get("value") is not None]
            best = {"oracles": [pair.get("a"), pair.get("b")], "n": int(n),
                    "mae": float(np.mean(values)) if values else None,
                    "per_dimension": {d: m.get("value") for d, m in per.items()}, "source": str(path)}
    return best if best and best["mae"] is not None else None


def find_floor(conn: sqlite3.Connection, flag: str | None, filter_id: str | None, dims: list[str]) -> dict | None:
    if flag:
        if not Path(flag).is_file():
            raise UsageError(f"--calibration {flag}: no such file (pass the JSON next to the calibration report)")
        floor = calibration_floor(Path(flag), filter_id, dims)
        if floor is None:
            raise UsageError(f"--calibration {flag}: no pair of oracles of filter {filter_id} with per-dimension MAE")
        return floor
    for path in sorted(Path("reports").glob("*calibration*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        floor = calibration_floor(path, filter_id, dims)
        if floor:
            return floor
    floor = inter_oracle_mae(conn, filter_id, dims)
    if floor:
        floor["source"] = "gt.db labels"
    return floor


def ensure_registered(conn: sqlite3.Connection, model_id: str, config: dict, model_dir: Path) -> None:
    """A model trained against another gt.db: register it here so predictions can refer to it."""
    if conn.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone():
        return
    filter_id = config.get("filter")
    if not conn.execute("SELECT 1 FROM filters WHERE id = ?", (filter_id,)).fetchone():
        filter_id = None
    metrics_path = model_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics.pop("history", None)
    conn.execute("INSERT INTO models (id, base_model, filter_id, params_json, metrics_json, path) VALUES (?, ?, ?, ?, ?, ?)",
                 (model_id, config["base_model"], filter_id, json.dumps(config, default=str),
                  json.dumps(metrics, default=str), str(model_dir)))


def all_articles(conn: sqlite3.Connection, skip: set[str]) -> list[tuple[str, str, str]]:
    return [(r["id"], r["title"], r["text"]) for r in
            conn.execute("SELECT id, title, text FROM articles WHERE dup_of IS NULL ORDER BY id") if r["id"] not in skip]


def store_predictions(conn: sqlite3.Connection, model_id: str, ids: list[str], scores: np.ndarray,
                      dims: list[str]) -> tuple[int, int]:
    """Replace the model's predictions for these articles. Returns (articles stored, not in gt.db)."""
    known = {r[0] for r in conn.execute("SELECT value FROM json_each(?) WHERE value IN (SELECT id FROM articles)",
                                        (json.dumps(ids),))}
    rows = [(model_id, aid, d, float(scores[i, j])) for i, aid in enumerate(ids) if aid in known
            for j, d in enumerate(dims)]
    with store.transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO predictions (model_id, article_id, dimension, score) VALUES (?, ?, ?, ?)",
                         rows)
    return len(known), len(set(ids)) - len(known)


def write_predictions_jsonl(path: Path, ids: list[str], scores: np.ndarray, dims: list[str]) -> None:
    from stages import report

    lines = [json.dumps({"id": aid, "predictions": {d: round(float(scores[i, j]), 4) for j, d in enumerate(dims)}},
                        ensure_ascii=False) for i, aid in enumerate(ids)]
    report.write_text_atomic(path, "\n".join(lines) + ("\n" if lines else ""))


def _fmt(x, digits: int = 2) -> str:
    return "undefined" if x is None else f"{x:.{digits}f}"


def evaluation_table(metrics: dict, floor: dict | None, dims: list[str],
                     baseline: dict | None = None) -> tuple[list[str], list[list[str]]]:
    headers = ["dimension", "MAE", "RMSE", "Spearman", "bias", "MAE true>=7 (n)", "MAE true<=2 (n)",
               "mean-predictor MAE", "inter-oracle MAE"]
    rows = []
    for d in dims:
        m = metrics["per_dimension"][d]
        rows.append([d, _fmt(m["mae"]), _fmt(m["rmse"]), _fmt(m["spearman"]), f"{m['bias']:+.2f}",
                     f"{_fmt(m['tail_high_mae'])} ({m['tail_high_n']})", f"{_fmt(m['tail_low_mae'])} ({m['tail_low_n']})",
                     _fmt(baseline["per_dimension"][d]["mae"]) if baseline else "-",
                     _fmt(floor["per_dimension"].get(d)) if floor else "no calibration"])
    rows.append(["all", _fmt(metrics["mae"]), _fmt(metrics["rmse"]), _fmt(metrics["mean_spearman"]), "", "", "",
                 _fmt(baseline["mae"]) if baseline else "-", _fmt(floor["mae"]) if floor else "no calibration"])
    return headers, rows


def evaluation_report(model_id: str, test_file: str, metrics: dict, floor: dict | None, dims: list[str],
                      baseline: dict | None = None) -> str:
    from stages import report

    headers, rows = evaluation_table(metrics, floor, dims, baseline)
    floor_line = (f"Inter-oracle MAE: {floor['oracles'][0]} vs {floor['oracles'][1]} on {floor['n']} articles "
                  f"labelled by both ({floor['source']}): the floor a student of one oracle can hope for."
                  if floor else "No two oracles labelled the same articles in gt.db (run `make calibrate`), so there "
                                "is no inter-oracle floor to compare with.")
    gap = (f" The student is {metrics['mae'] - floor['mae']:+.2f} MAE from that floor." if floor else "")
    return f"""# Evaluation of {model_id}

Test MAE **{metrics['mae']:.2f}** (0-10 scale) on {metrics['n']} articles of `{test_file}`; mean Spearman
{_fmt(metrics['mean_spearman'])}.{gap}

{report.md_table(headers, rows)}

Bias is the mean of prediction minus oracle score. The mean predictor answers every article with
the train split's mean score (the baseline a student must beat). Tail MAE is measured only on articles whose oracle
score is >= 7 or <= 2 (count in brackets; "undefined" where there are none). {floor_line}
"""


def evaluate(args: argparse.Namespace, *, progress: bool = True) -> Evaluation:
    import torch

    if not args.test_file and not args.all:
        raise UsageError("nothing to do: pass --test-file (metrics) and/or --all (predictions for every article)")
    if args.batch_size <= 0:
        raise UsageError("--batch-size must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is visible (use --device cpu)")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    model_dir = Path(args.model_dir)
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # per-tensor 'Loading weights' bars: noise, not progress
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers v6 renames, not the user's concern
    student = Student.load(model_dir, device=device)
    dims, config = student.dimension_names, student.config
    model_id = config["name"]
    test = read_split(args.test_file) if args.test_file else []
    for r in test:
        if list(r["dimension_names"]) != dims:
            raise StudentError(f"article {r['id']} has dimensions {r['dimension_names']}, the model {dims}, {args.test_file}")

    conn = store.connect(args.db, create=False)  # predictions go into an existing gt.db, never a new empty one
    try:
        ensure_registered(conn, model_id, config, model_dir)
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        metrics = floor = baseline = None
        if test:
            pred = student.predict([(r.get("title", ""), r["text"]) for r in test], batch_size=args.batch_size,
                                   progress=progress)
            true = np.array([r["labels"] for r in test], dtype=float)
            metrics = dimension_metrics(true, pred, dims)
            baseline = dimension_metrics(true, np.tile(student.scaler.mean, (len(test), 1)), dims)
            floor = find_floor(conn, args.calibration, config.get("filter"), dims)
            ids += [r["id"] for r in test]
            blocks.append(pred)
        if args.all:
            rest = all_articles(conn, set(ids))
            if rest:
                blocks.append(student.predict([(t, x) for _, t, x in rest], batch_size=args.batch_size,
                                              progress=progress))
                ids += [a for a, _, _ in rest]
        scores = np.vstack(blocks) if blocks else np.zeros((0, len(dims)))
        stored, not_in_db = store_predictions(conn, model_id, ids, scores, dims)
        jsonl = Path(args.output) if args.output else model_dir / "predictions.jsonl"
        write_predictions_jsonl(jsonl, ids, scores, dims)
        report_path = None
        if metrics:
            from stages import report

            evaluation = {"test_file": str(args.test_file), "test": metrics, "inter_oracle": floor,
                          "mean_predictor": baseline}
            report.write_json_atomic(model_dir / "evaluation.json", evaluation)
            report_path = report.write_text_atomic(model_dir / "evaluation.md",
                                                   evaluation_report(model_id, args.test_file, metrics, floor, dims, baseline))
            row = conn.execute("SELECT metrics_json FROM models WHERE id = ?", (model_id,)).fetchone()
            merged = json.loads(row["metrics_json"] or "{}") if row else {}
            merged["evaluation"] = evaluation
            with store.transaction(conn):
                conn.execute("UPDATE models SET metrics_json = ? WHERE id = ?", (json.dumps(merged, default=str), model_id))
    finally:
        conn.close()
    return Evaluation(model_id, metrics, floor, baseline, len(ids), stored, not_in_db, jsonl, report_path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.model_dir, CONFIG_FILE).exists():
        print(f"error: no trained student in {args.model_dir} ({CONFIG_FILE} missing: run `make train` first, "
              f"or pass --model-dir)", file=sys.stderr)
        return 1
    try:  # a missing, locked or corrupt gt.db fails now, not after loading the model
        store.connect(args.db, create=False).close()
    except (store.StoreError, sqlite3.Error) as e:
        return store.fail_line(e, args.db)
    try:
        result = evaluate(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StudentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (store.StoreError, sqlite3.Error) as e:  # gt.db missing, locked, read-only, corrupt...
        return store.fail_line(e, args.db)
    if result.metrics:
        from stages import report

        dims = list(result.metrics["per_dimension"])
        headers, rows = evaluation_table(result.metrics, result.floor, dims, result.baseline)
        print(report.md_table(headers, rows))
        print()
    skipped = f" ({result.not_in_db} test articles are not in gt.db: in the JSONL only)" if result.not_in_db else ""
    measured = (f"Test MAE {result.metrics['mae']:.2f} on {result.metrics['n']} articles of {args.test_file}"
                + (f" (inter-oracle floor {result.floor['mae']:.2f})" if result.floor else " (no inter-oracle floor in gt.db)")
                + f"; report {result.report}. " if result.metrics else "")
    print(f"{measured}Predicted {result.predicted:,} articles with {result.model_id}: {result.stored:,} stored in "
          f"{args.db} (predictions, model_id '{result.model_id}'){skipped}, all in {result.jsonl}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
