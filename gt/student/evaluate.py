"""Evaluate a trained student against the oracle and write its predictions back into gt.db.

    python -m stages.evaluate --model-dir models/uplifting_qwen_v1 --test-file data/training/test.jsonl
    python -m stages.evaluate --model-dir models/uplifting_qwen_v1 --test-file ... --all   # + every article
    python -m stages.evaluate --model-dir models/emobank_minilm --split official --oracle human-mean

Per dimension, on the test split (oracle scores are the truth, 0-10 scale): MAE, RMSE, Spearman
rho, bias (mean of prediction - truth: > 0 means the student scores too high) and the MAE on the
tails of gt/core/bands.py (true score >= 8 and < 4; "undefined" where the test split has no such
article). The test
articles are --test-file's, or with --split NAME the 'test' articles of a split scheme stored in
gt.db (`ingest --split-column`: a dataset's own test set, e.g. EmoBank's) with the labels of
--oracle; articles the student was trained or validated on are left out and counted. Next to
them, the mean predictor (every article gets each dimension's mean over the labelled pool the
student's selection was drawn from, repeats averaged and the test articles left out: pool_means;
the training labels' mean saved with the model where gt.db knows no selection of it): a dimension where the student's MAE is not lower than its MAE is flagged "worse
than mean" in the report's summary and table and in the printed summary line. And the floor:
how far two raters' labels of the same articles lie apart, the best a student trained on one can
hope to reach. It is read from the calibration report's JSON (--calibration,
default the newest reports/*calibration*.json of the model's filter): where a label set there has
several ratings per article (human raters), the MAE of one rating against the mean of the others;
else the pair of oracles compared on the most articles. Without a report it is computed from
gt.db's labels of the two oracles that labelled the most articles in common.

Writes: the predictions into gt.db's `predictions` (model id from training; test articles, and
with --all every article in gt.db, labelled or not), <model-dir>/predictions.jsonl (one line per
article: {"id": ..., "predictions": {dimension: score}}, what `select --model-predictions`
reads), <model-dir>/evaluation.json and evaluation.md, and the figures into `models.metrics_json`.
"""
from __future__ import annotations

import itertools
import json
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gt.core.report import REPORTS_DIR
from gt.core import bands, store
from gt.core.errors import UsageError
from gt.student import isotonic
from gt.student.model import CONFIG_FILE, Student, StudentError, dimension_metrics, read_model_folder, read_split

HIGH_TAIL = f"truth >= {bands.MIDDLE_HIGH:g}"    # the tails of gt/core/bands.py, in the report's words
LOW_TAIL = f"truth < {bands.MIDDLE_LOW:g}"


@dataclass
class EvaluateOptions:
    """What to evaluate and against what (the flags of `python -m stages.evaluate`). Inference is
    deterministic: there is no seed."""
    db: str = field(default_factory=store.default_db_path)
    model_dir: str = "models/student"
    test_file: str | None = None
    split: str | None = None
    oracle: str | None = None
    all: bool = False
    calibration: str | None = None
    output: str | None = None
    max_tokens: int | None = None   # padded tokens per batch (None: gt.student.engine's default for the device)
    device: str = "auto"


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
    test_name: str = ""


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
    """The floor from a calibration report's JSON: where a label set has several ratings per article
    (human raters), the MAE of one rating against the mean of the article's other ratings (the set
    with the most articles); else the inter-oracle MAE of the pair compared on the most articles."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or (filter_id and data.get("filter") != filter_id):
        return None
    best = None
    for name, model in (data.get("models") or {}).items():
        per_dim = ((model or {}).get("inter_rater") or {}).get("per_dimension") or {}
        per = {d: ((per_dim.get(d) or {}).get("mae_vs_others") or {}).get("value") for d in dims}
        values = [v for v in per.values() if v is not None]
        n = max(((per_dim.get(d) or {}).get("items") or 0 for d in dims), default=0)
        if values and (best is None or n > best["n"]):
            best = {"oracles": [name, f"the mean of the other {name} ratings"], "n": int(n),
                    "mae": float(np.mean(values)), "per_dimension": per, "source": str(path), "kind": "inter_rater"}
    if best is not None:
        return best
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
    for path in sorted(Path(REPORTS_DIR).glob("*calibration*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
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
    """(id, title, text) of every article but duplicates and `skip`, in id order."""
    ids = [r[0] for r in conn.execute("SELECT id FROM articles WHERE dup_of IS NULL ORDER BY id") if r[0] not in skip]
    texts = store.article_texts(conn, ids)
    return [(aid, *texts[aid]) for aid in ids]


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
    from gt.core import report

    lines = [json.dumps({"id": aid, "predictions": {d: round(float(scores[i, j]), 4) for j, d in enumerate(dims)}},
                        ensure_ascii=False) for i, aid in enumerate(ids)]
    report.write_text_atomic(path, "\n".join(lines) + ("\n" if lines else ""))


def _fmt(x, digits: int = 2) -> str:
    return "undefined" if x is None else f"{x:.{digits}f}"


def mean_predictor(true: np.ndarray, means, dims: list[str], source: str) -> dict:
    """The baseline: every test article gets, on each dimension, the constant `means` (the pool's
    mean, pool_means; `source` says whose). Its figures are dimension_metrics'; `predicts` holds
    the constant it answers per dimension, `from` where it came from."""
    true = np.asarray(true, dtype=float)
    baseline = dimension_metrics(true, np.tile(np.asarray(means, dtype=float), (len(true), 1)), dims)
    baseline["predicts"] = {d: float(v) for d, v in zip(dims, means)}
    baseline["from"] = source
    return baseline


def pool_means(conn: sqlite3.Connection, model_id: str, filter_id: str | None, dims: list[str],
               test_ids: set[str]) -> tuple[list[float], str] | None:
    """Each dimension's mean over the labelled pool the student's selection was drawn from (the label
    set of its selection: every valid label, an article's repeats averaged, duplicates and the test
    articles left out): the natural distribution, never a selection's. None where gt.db knows no
    selection of this model."""
    selection = conn.execute("SELECT selection_id FROM models WHERE id = ?", (model_id,)).fetchone()
    if selection is None or selection[0] is None or not filter_id:
        return None
    oracle, prompt = store.selection_label_set(conn, selection[0])
    rows = conn.execute(
        """SELECT l.article_id, s.dimension, AVG(s.score) FROM labels l JOIN label_scores s ON s.label_id = l.id
           JOIN articles a ON a.id = l.article_id AND a.dup_of IS NULL
           WHERE l.filter_id = ? AND l.oracle = ? AND l.prompt_sha256 = ? AND l.status = 'ok'
           GROUP BY l.article_id, s.dimension""", (filter_id, oracle, prompt)).fetchall()
    values: dict[str, list[float]] = {d: [] for d in dims}
    articles = set()
    for aid, dim, score in rows:
        if aid not in test_ids and dim in values:
            values[dim].append(score)
            articles.add(aid)
    if not articles or not all(values.values()):
        return None
    return ([float(np.mean(values[d])) for d in dims],
            f"the mean of {len(articles):,} labelled pool articles ({oracle}, test articles left out)")


def worse_than_mean(metrics: dict, baseline: dict | None) -> list[str]:
    """The dimensions where the student's MAE is no lower than the mean predictor's (in order)."""
    if not baseline:
        return []
    return [d for d, m in metrics["per_dimension"].items() if m["mae"] >= baseline["per_dimension"][d]["mae"]]


WORSE_THAN_MEAN = "**worse than mean**"


def _vs_mean(student_mae: float, mean_mae: float | None) -> str:
    """The table cell comparing the student with the mean predictor: the MAE difference, flagged
    when the student does not beat it."""
    if mean_mae is None:
        return "-"
    diff = student_mae - mean_mae
    return f"{WORSE_THAN_MEAN} ({diff:+.2f})" if diff >= 0 else f"better ({diff:+.2f})"


def floor_kind(floor: dict | None) -> str:
    return "inter-rater" if floor and floor.get("kind") == "inter_rater" else "inter-oracle"


def evaluation_table(metrics: dict, floor: dict | None, dims: list[str],
                     baseline: dict | None = None) -> tuple[list[str], list[list[str]]]:
    headers = ["dimension", "MAE", "RMSE", "Spearman", "bias", f"tail MAE, {HIGH_TAIL} (n)", f"tail MAE, {LOW_TAIL} (n)",
               "mean-predictor MAE", "student vs mean predictor (MAE difference)",
               "floor: inter-rater MAE (one vs the others)" if floor_kind(floor) == "inter-rater"
               else "floor: inter-oracle MAE"]
    rows = []
    for d in dims:
        m = metrics["per_dimension"][d]
        mean_mae = baseline["per_dimension"][d]["mae"] if baseline else None
        rows.append([d, _fmt(m["mae"]), _fmt(m["rmse"]), _fmt(m["spearman"]), f"{m['bias']:+.2f}",
                     f"{_fmt(m['tail_high_mae'])} ({m['tail_high_n']})", f"{_fmt(m['tail_low_mae'])} ({m['tail_low_n']})",
                     _fmt(mean_mae) if baseline else "-", _vs_mean(m["mae"], mean_mae),
                     _fmt(floor["per_dimension"].get(d)) if floor else "no floor"])
    mean_all = baseline["mae"] if baseline else None
    rows.append(["all", _fmt(metrics["mae"]), _fmt(metrics["rmse"]), _fmt(metrics["mean_spearman"]), "", "", "",
                 _fmt(mean_all) if baseline else "-", _vs_mean(metrics["mae"], mean_all),
                 _fmt(floor["mae"]) if floor else "no floor"])
    return headers, rows


def floor_definition(floor: dict | None) -> str:
    """What the floor is, where it comes from, and why it bounds the student."""
    if floor and floor.get("kind") == "inter_rater":
        return (f"inter-rater MAE: one {floor['oracles'][0]} rating against {floor['oracles'][1]} of the same "
                f"article, on {floor['n']} articles ({floor['source']}): how far one human lies from the others, "
                f"the floor set by the raters' own disagreement (a student scored against the raters' mean can "
                f"land below it: a mean is less noisy than one rating)")
    if floor:
        return (f"inter-oracle MAE: {floor['oracles'][0]} vs {floor['oracles'][1]} on {floor['n']} articles "
                f"labelled by both ({floor['source']}): how far two oracles disagree, the floor a student of one "
                f"oracle can hope for")
    return ("none here: no two oracles labelled the same articles in gt.db and no calibration report was found "
            "(run `make calibrate`), so there is no inter-oracle floor to compare with")


def terms_section(floor: dict | None, baseline: dict | None) -> str:
    predicts = (baseline or {}).get("predicts")
    means = (" (here: " + ", ".join(f"{d} {v:.2f}" for d, v in predicts.items()) + ")") if predicts else ""
    return f"""## Terms

- **MAE** (mean absolute error): the mean of |student score - oracle score| over the test articles, on the 0-10
  scale; lower is better. RMSE is the root of the mean squared difference (it weighs large misses more).
- **Spearman**: the rank correlation between the student's and the oracle's scores (1 = same order).
- **bias**: the mean of student score - oracle score (> 0: the student scores too high).
- **tail MAE**: the MAE on only the test articles whose oracle (true) score on that dimension is
  >= {bands.MIDDLE_HIGH:g} (high tail) or < {bands.MIDDLE_LOW:g} (low tail), the outer bins of the 0-10 scale; the number of such articles
  is in brackets, "undefined" where there is none.
- **mean predictor** (the baseline): predicts, for every article, each dimension's mean: {(baseline or {}).get("from", "of the labelled pool")}{means}.
  The pool's mean, not a selection's: a selection skews it, the pool is what the student will meet. A dimension where the student's
  MAE is not lower than the mean predictor's is marked {WORSE_THAN_MEAN}: there the student has learnt
  nothing a constant would not give.
- **floor**: {floor_definition(floor)}.
"""


def summary_sentences(metrics: dict, floor: dict | None, baseline: dict | None) -> str:
    """The verdict in words: the test MAE against the mean predictor and the floor, and the
    dimensions where the student is no better than the mean predictor."""
    text = (f"Test MAE **{metrics['mae']:.2f}** (0-10 scale) on {metrics['n']} articles; mean Spearman "
            f"{_fmt(metrics['mean_spearman'])}.")
    if baseline:
        text += f" The mean predictor's MAE is {baseline['mae']:.2f}."
    if floor:
        text += f" The student is {metrics['mae'] - floor['mae']:+.2f} MAE from the floor ({floor['mae']:.2f})."
    worse = worse_than_mean(metrics, baseline)
    if worse:
        text += (f" The student is no better than the mean predictor on {len(worse)} of "
                 f"{len(metrics['per_dimension'])} dimensions: {', '.join(worse)} (marked {WORSE_THAN_MEAN} below).")
    elif baseline:
        text += " The student beats the mean predictor on every dimension."
    return text


def evaluation_report(model_id: str, test_file: str, metrics: dict, floor: dict | None, dims: list[str],
                      baseline: dict | None = None, split_info: dict | None = None) -> str:
    from gt.core import report

    headers, rows = evaluation_table(metrics, floor, dims, baseline)
    split_line = ""
    if split_info:
        i = split_info
        split_line = (f"\nTest articles: the {i['test_articles']} articles of the 'test' split of '{i['split_name']}' "
                      f"stored in gt.db, truth = {i['oracle']}'s labels; left out: {i['duplicates_left_out']} exact "
                      f"duplicates, {i['unlabelled_left_out']} without a valid label, {i['trained_on_left_out']} the "
                      f"student trained or validated on.\n")
    return f"""# Evaluation of {model_id}

Test articles: `{test_file}`. The truth is the oracle's scores.

{terms_section(floor, baseline)}
## Summary

{summary_sentences(metrics, floor, baseline)}

{report.md_table(headers, rows)}
{split_line}"""


def check_options(o: EvaluateOptions) -> str:
    """The flags that go together, a trained student in --model-dir and an existing gt.db, checked
    before the model loads; returns the device to run on."""
    import torch

    if o.test_file and o.split:
        raise UsageError("pass --test-file or --split, not both (they are two ways to name the test articles)")
    if o.oracle and not o.split:
        raise UsageError("--oracle goes with --split (a --test-file carries its own labels)")
    if not o.test_file and not o.split and not o.all:
        raise UsageError("nothing to do: pass --test-file or --split (metrics) and/or --all (predictions for every "
                         "article)")
    if o.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is visible (use --device cpu)")
    return "cuda" if o.device == "auto" and torch.cuda.is_available() else ("cpu" if o.device == "auto" else o.device)


def load_student(model_dir: Path, device: str) -> Student:
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # per-tensor 'Loading weights' bars: noise, not progress
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers v6 renames, not the user's concern
    return Student.load(model_dir, device=device)


def evaluate(o: EvaluateOptions, *, progress: bool = True) -> Evaluation:
    """Predict the test articles (and with --all every article), measure, and write the predictions
    (gt.db, JSONL) and the evaluation (JSON, markdown, models.metrics_json). Prints nothing."""
    device = check_options(o)
    model_dir = Path(o.model_dir)
    student = load_student(model_dir, device)
    dims, config = student.dimension_names, student.config
    model_id = config["name"]
    test = read_split(o.test_file) if o.test_file else []
    for r in test:
        if list(r["dimension_names"]) != dims:
            raise StudentError(f"article {r['id']} has dimensions {r['dimension_names']}, the model {dims}, {o.test_file}")
    conn = store.connect(o.db, create=False)  # predictions go into an existing gt.db, never a new empty one
    try:
        ensure_registered(conn, model_id, config, model_dir)
        split_info, test_name = None, str(o.test_file)
        if o.split:
            test, split_info = split_test_rows(conn, model_id, config.get("filter"), o.split, o.oracle, dims)
            test_name = f"the test split of '{o.split}' ({split_info['oracle']} labels)"
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        metrics = floor = baseline = None
        if test:
            applied, student.isotonic = student.isotonic, None   # measured both ways below
            raw = student.predict([(r.get("title", ""), r["text"]) for r in test], max_tokens=o.max_tokens,
                                  progress=progress)
            student.isotonic = applied
            table = isotonic.load(model_dir)
            pred = isotonic.apply(applied, raw, dims) if applied else raw
            true = np.array([r["labels"] for r in test], dtype=float)
            metrics = dimension_metrics(true, pred, dims)
            both = ({"applied": bool(applied), "test_mae_raw": float(np.abs(raw - true).mean()),
                     "test_mae_isotonic": float(np.abs(isotonic.apply(table, raw, dims) - true).mean())}
                    if table else None)
            natural = pool_means(conn, model_id, config.get("filter"), dims, {r["id"] for r in test})
            baseline = (mean_predictor(true, natural[0], dims, natural[1]) if natural else
                        mean_predictor(true, student.scaler.mean, dims,
                                       "the mean of the training labels (gt.db holds no selection of this student)"))
            floor = find_floor(conn, o.calibration, config.get("filter"), dims)
            ids += [r["id"] for r in test]
            blocks.append(pred)
        if o.all:
            rest = all_articles(conn, set(ids))
            if rest:
                blocks.append(student.predict([(t, x) for _, t, x in rest], max_tokens=o.max_tokens, progress=progress))
                ids += [a for a, _, _ in rest]
        scores = np.vstack(blocks) if blocks else np.zeros((0, len(dims)))
        stored, not_in_db = store_predictions(conn, model_id, ids, scores, dims)
        jsonl = Path(o.output) if o.output else model_dir / "predictions.jsonl"
        write_predictions_jsonl(jsonl, ids, scores, dims)
        report_path = None
        if metrics:
            evaluation = {"test_file": test_name, "test": metrics, "inter_oracle": floor,
                          "mean_predictor": baseline, "worse_than_mean": worse_than_mean(metrics, baseline),
                          "isotonic": both}
            if split_info:
                evaluation["split"] = split_info
            report_path = write_evaluation(conn, model_dir, model_id, evaluation, dims)
    finally:
        conn.close()
    return Evaluation(model_id, metrics, floor, baseline, len(ids), stored, not_in_db, jsonl, report_path, test_name)


def write_evaluation(conn: sqlite3.Connection, model_dir: Path, model_id: str, evaluation: dict,
                     dims: list[str]) -> Path:
    """evaluation.json and evaluation.md beside the model, and the figures into models.metrics_json."""
    from gt.core import report

    report.write_json_atomic(model_dir / "evaluation.json", evaluation)
    path = report.write_text_atomic(model_dir / "evaluation.md", evaluation_report(
        model_id, evaluation["test_file"], evaluation["test"], evaluation["inter_oracle"], dims,
        evaluation["mean_predictor"], evaluation.get("split")))
    row = conn.execute("SELECT metrics_json FROM models WHERE id = ?", (model_id,)).fetchone()
    merged = json.loads(row["metrics_json"] or "{}") if row else {}
    merged["evaluation"] = evaluation
    with store.transaction(conn):
        conn.execute("UPDATE models SET metrics_json = ? WHERE id = ?", (json.dumps(merged, default=str), model_id))
    return path


def split_test_rows(conn: sqlite3.Connection, model_id: str, filter_id: str | None, split_name: str,
                    oracle: str | None, dims: list[str]) -> tuple[list[dict], dict]:
    """The 'test' articles of a stored split scheme as test rows (read_split's shape), truth = the
    mean of the valid repeats of `oracle` (default: the oracle of the model's training selection, else
    the one with the most labels; its prompt version with the most labels). Duplicates, articles
    without a label, and articles in the model's training selection (train or val) are left out and
    counted in the returned info."""
    splits = store.article_splits(conn, split_name)
    if not splits:
        known = store.split_names(conn)
        raise UsageError(f"--split {split_name}: gt.db holds no split by that name "
                         + (f"(it has: {', '.join(known)})" if known else "(ingest with --split-column COLUMN)"))
    test_ids = {a for a, sp in splits.items() if sp == "test"}
    if not test_ids:
        raise UsageError(f"--split {split_name}: no article is in its test split")
    selection = conn.execute(
        "SELECT s.id, s.oracle FROM models m JOIN selections s ON s.id = m.selection_id WHERE m.id = ?",
        (model_id,)).fetchone()
    oracle, prompt = truth_label_set(conn, filter_id, selection, oracle, f"--split {split_name}")
    trained = {r[0] for r in conn.execute(
        "SELECT article_id FROM selection_members WHERE selection_id = ? AND split IN ('train', 'val')",
        (selection["id"],))} if selection else set()
    scores: dict[str, dict[str, float]] = {}
    for r in conn.execute(   # the truth: the mean of the article's valid repeats, as the student's targets are
            """SELECT a.id, s.dimension, AVG(s.score) AS score FROM article_splits p
               JOIN articles a ON a.id = p.article_id AND a.dup_of IS NULL
               JOIN labels l ON l.article_id = a.id AND l.filter_id = ? AND l.oracle = ? AND l.prompt_sha256 = ?
                   AND l.status = 'ok'
               JOIN label_scores s ON s.label_id = l.id
               WHERE p.split_name = ? AND p.split = 'test' GROUP BY a.id, s.dimension""",
            (filter_id, oracle, prompt, split_name)):
        scores.setdefault(r["id"], {})[r["dimension"]] = r["score"]
    texts = store.article_texts(conn, [a for a in sorted(scores) if a not in trained])
    duplicates = conn.execute(
        """SELECT COUNT(*) FROM article_splits p JOIN articles a ON a.id = p.article_id
           WHERE p.split_name = ? AND p.split = 'test' AND a.dup_of IS NOT NULL""", (split_name,)).fetchone()[0]
    rows, left_out = [], 0
    for aid in sorted(scores):
        if aid in trained:
            left_out += 1
            continue
        if all(d in scores[aid] for d in dims):
            title, text = texts[aid]
            rows.append({"id": aid, "title": title, "text": text, "labels": [scores[aid][d] for d in dims],
                         "dimension_names": dims})
    info = {"split_name": split_name, "oracle": oracle, "prompt_sha256": prompt, "test_articles": len(test_ids),
            "duplicates_left_out": int(duplicates), "trained_on_left_out": left_out,
            "unlabelled_left_out": len(test_ids) - int(duplicates) - len(scores), "evaluated": len(rows)}
    if not rows:
        raise UsageError(f"--split {split_name}: none of its {len(test_ids)} test articles has a valid {oracle} label "
                         f"the student did not train on (pass --oracle NAME)")
    return rows, info


def truth_label_set(conn: sqlite3.Connection, filter_id: str, selection: sqlite3.Row | None, oracle: str | None,
                    what: str) -> tuple[str, str]:
    """Whose labels are the truth: the oracle and prompt version the model's training selection was
    built from, unless `oracle` (--oracle) names another; then store.choose_label_set's choice."""
    try:
        if selection is not None and oracle in (None, selection["oracle"]):
            return store.selection_label_set(conn, selection["id"])
        return store.choose_label_set(conn, filter_id, oracle)
    except store.StoreError as e:
        raise UsageError(f"{what}: {e} (pass --oracle NAME)") from None


def check_inputs(o: EvaluateOptions) -> None:
    """A trained student in --model-dir and a readable gt.db, before the model is loaded: no model
    folder first, then gt.db's trouble, then a damaged folder (each one line)."""
    if not Path(o.model_dir, CONFIG_FILE).exists():
        read_model_folder(Path(o.model_dir))   # raises: no trained student there
    store.connect(o.db, create=False).close()  # a missing, locked or corrupt gt.db fails now
    read_model_folder(Path(o.model_dir))       # a damaged folder: one line, before any model loads

