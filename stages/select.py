"""Select stage (step 4 of the workflow): from the labelled pool in gt.db, pick the training subset
that best covers every dimension's score range, as an OR-Tools integer program, split it into
train/val/test, and write the splits (JSONL, or Parquet with --format parquet; every line carries the
provenance of its label: labels.id, oracle, model, prompt hash, evidence), their dataset card
(README.md, Hugging Face conventions: `datasets.load_dataset("json", data_dir=...)` loads them) and
two reports.

    python -m stages.select --db gt.db --target-size 2000 --strategy maximize_coverage \\
        --output-dir data/training

The program (stages/selection.py) fills each (dimension, score bin) cell up to a quota; a strategy
is a set of quotas, cell values, article weights and tier bounds (the STRATEGIES table, also in
stages/selection.py, and in every selection_report.md). The answer comes with the LP bound: the report says how far from
optimal it can at most be (usually: proven optimal).

Selections live side by side in gt.db (`selections`, `selection_members`), keyed by --name. Running
again with the same name REPLACES that selection in one transaction, unless a trained model refers
to it: then the stage refuses (pick another --name) so a model's training set never changes under it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages import selection as sel
from stages import store
from stages.filters import FilterError, load_filter
from stages.pool import load_pool, program_pool, student_error
from stages.selection import DEFAULT_BINS, STRATEGIES, Strategy, bin_labels, build_program, to_bins  # noqa: F401

OFFLINE_ORACLES = ("local-embed", "local-llm")
SPLIT_FORMATS = ("jsonl", "parquet")
RANDOM_SUBSETS = 5   # the random baseline: this many uniform subsets of the selection's size, seeds --seed, +1, ...


class SelectError(Exception):
    """The work cannot be done as asked (bad data, infeasible program); one line says why."""


class UsageError(SelectError):
    """A flag is wrong (exit 2)."""


# ---- strategies, bins and the program a strategy asks for: stages/selection.py -------------------

def parse_bins(text: str) -> np.ndarray:
    """--bins as lower edges (stages.selection.parse_bins); a bad list is a usage error (exit 2)."""
    try:
        return sel.parse_bins(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def parse_tier_shares(text: str | None, tier_names: list[str]) -> dict[str, tuple[float, float]] | None:
    """'impact=0.1:0.4,not_uplifting=:0.6' -> {tier: (min share, max share)}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, _, rng = part.partition("=")
        name = name.strip()
        if name not in tier_names:
            raise UsageError(f"--tier-shares: unknown tier '{name}' (tiers: {', '.join(tier_names)})")
        lo_s, _, hi_s = rng.partition(":")
        try:
            lo = float(lo_s) if lo_s.strip() else 0.0
            hi = float(hi_s) if hi_s.strip() else 1.0
        except ValueError:
            raise UsageError(f"--tier-shares: '{part}' must read tier=min:max with shares 0-1") from None
        if not (0 <= lo <= hi <= 1):
            raise UsageError(f"--tier-shares: '{part}' must have 0 <= min <= max <= 1")
        out[name] = (lo, hi)
    return out


# ---- inputs from gt.db ------------------------------------------------------------------------

def load_predictions(conn: sqlite3.Connection, spec: str, dimension_names: list[str]) -> tuple[pd.DataFrame, str]:
    """Predictions as a frame (article_id + one column per dimension) from a JSONL file or from a
    model id in gt.db. Predictions for articles gt.db does not know are an error."""
    path = Path(spec)
    if path.is_file():
        rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SelectError(f"--model-predictions: invalid JSON, {path}:{n} ({e.msg})") from None
                aid = obj.get("id", obj.get("article_id")) if isinstance(obj, dict) else None
                values = (obj.get("predictions", obj.get("scores")) if isinstance(obj, dict) else None)
                if aid is None or values is None:
                    raise SelectError(f"--model-predictions: a line needs 'id' (or 'article_id') and 'predictions' "
                                      f"(or 'scores'), {path}:{n}")
                if isinstance(values, list):
                    if len(values) != len(dimension_names):
                        raise SelectError(f"--model-predictions: {len(values)} predictions for "
                                          f"{len(dimension_names)} dimensions, {path}:{n} (a list follows the "
                                          f"filter's dimension order)")
                    values = dict(zip(dimension_names, values))
                if not isinstance(values, dict):
                    raise SelectError(f"--model-predictions: predictions must be an object or a list, {path}:{n}")
                missing = [d for d in dimension_names if d not in values]
                if missing:
                    raise SelectError(f"--model-predictions: no prediction for {', '.join(missing)}, {path}:{n}")
                try:
                    rows.append({"article_id": str(aid), **{d: float(values[d]) for d in dimension_names}})
                except (TypeError, ValueError):
                    raise SelectError(f"--model-predictions: a prediction is not a number, {path}:{n}") from None
        frame = pd.DataFrame(rows, columns=["article_id", *dimension_names])
        where = str(path)
    else:
        if conn.execute("SELECT 1 FROM models WHERE id = ?", (spec,)).fetchone() is None:
            raise SelectError(f"--model-predictions '{spec}': no such file and no model with that id in gt.db "
                              f"(pass a predictions JSONL or a model id from `make evaluate`)")
        long = pd.read_sql_query("SELECT article_id, dimension, score FROM predictions WHERE model_id = ?",
                                 conn, params=(spec,))
        frame = long.pivot_table(index="article_id", columns="dimension", values="score").reset_index()
        missing = [d for d in dimension_names if d not in frame.columns]
        if long.empty or missing:
            raise SelectError(f"--model-predictions '{spec}': the model has no predictions"
                              + (f" for {', '.join(missing)}" if missing and not long.empty else "")
                              + " in gt.db (run `make evaluate` with predictions)")
        frame = frame[["article_id", *dimension_names]].dropna()
        where = f"model {spec} in gt.db"
    if frame["article_id"].duplicated().any():
        dup = frame.loc[frame["article_id"].duplicated(), "article_id"].iloc[0]
        raise SelectError(f"--model-predictions: article '{dup}' appears twice, {where}")
    known = pd.read_sql_query("SELECT id FROM articles", conn)["id"]
    unknown = frame.loc[~frame["article_id"].isin(known), "article_id"]
    if len(unknown):
        raise SelectError(f"--model-predictions: {len(unknown)} predictions for articles not in gt.db "
                          f"(first: '{unknown.iloc[0]}'), {where} (predict on articles of this database)")
    return frame, where


def disagreement(conn: sqlite3.Connection, filt, pool: pd.DataFrame, oracle: str, prompt_sha256: str,
                 dims: list[str]) -> pd.Series:
    """Mean absolute difference between the chosen label and every other valid label of the same
    article (other oracles, other repeats), over `dims`; NaN where there is none."""
    others = store.scores_frame(conn, filt, None, None, repeat=None)
    others = others[~((others["oracle"] == oracle) & (others["prompt_sha256"] == prompt_sha256)
                      & (others["repeat"] == 0))]
    if others.empty:
        return pd.Series(np.nan, index=pool.index)
    merged = others[["article_id", *dims]].merge(pool[["article_id", *dims]], on="article_id", suffixes=("", "_own"))
    merged["diff"] = np.abs(merged[dims].to_numpy() - merged[[f"{d}_own" for d in dims]].to_numpy()).mean(axis=1)
    per_article = merged.groupby("article_id")["diff"].mean()
    return pool["article_id"].map(per_article)


def difficulty_filter(pool: pd.DataFrame, difficulty: pd.Series, which: str) -> np.ndarray:
    """Mask of the harder (or easier) half of the articles that have a difficulty measure; ties by id."""
    has = difficulty.notna().to_numpy()
    if not has.any():
        raise SelectError("--filter-by-difficulty needs labels of the same articles by a second oracle or repeat "
                          "(make calibrate / make label --repeats), or --model-predictions")
    idx = np.flatnonzero(has)
    values = difficulty.to_numpy()[idx]
    ids = pool["article_id"].to_numpy()[idx]
    order = np.lexsort((ids, -values if which == "hard" else values))
    keep = np.zeros(len(pool), dtype=bool)
    keep[idx[order[: math.ceil(len(idx) / 2)]]] = True
    return keep


# ---- the stage --------------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    selection_id: int
    output_dir: Path
    pool_size: int
    size: int
    solution: sel.Solution
    split_counts: dict
    random_objective: float
    greedy_objective: int | None
    oracle: str
    files: list[str]
    imported: str | None = None
    removed: list[str] | None = None   # the other format's split files of an earlier run, now gone


def parse_dimensions(text: str | None, names: list[str]) -> list[str]:
    if not text:
        return list(names)
    dims = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in dims if d not in names]
    if unknown:
        raise UsageError(f"--dimensions: unknown dimension '{unknown[0]}' (the filter has: {', '.join(names)})")
    if len(set(dims)) != len(dims):
        raise UsageError("--dimensions: a dimension is listed twice")
    return dims


def check_ratios(train: float, val: float, test: float) -> tuple[float, float, float]:
    ratios = (train, val, test)
    if any(r < 0 for r in ratios) or train <= 0:
        raise UsageError(f"--train-ratio/--val-ratio/--test-ratio must be >= 0 with train > 0 (got {train}, {val}, {test})")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise UsageError(f"--train-ratio + --val-ratio + --test-ratio = {sum(ratios):g}, they must sum to 1")
    return ratios


def run(args: argparse.Namespace) -> Result:
    t_start = time.perf_counter()
    # ---- flags first: nothing is read or written before they are all valid
    if args.target_size < 1:
        raise UsageError(f"--target-size must be at least 1 (got {args.target_size})")
    ratios = check_ratios(args.train_ratio, args.val_ratio, args.test_ratio)
    edges = parse_bins(args.bins)
    if args.max_per_source is not None and args.max_per_source < 1:
        raise UsageError(f"--max-per-source must be at least 1 (got {args.max_per_source})")
    if args.time_limit <= 0:
        raise UsageError(f"--time-limit must be positive (got {args.time_limit})")
    strategy = STRATEGIES[args.strategy]
    try:
        filt = load_filter(args.filter)
    except FilterError as e:
        raise SelectError(f"filter {e.path}: {e.problems[0]} (fix the filter package)") from None
    dims = parse_dimensions(args.dimensions, filt.dimension_names)
    tier_shares = parse_tier_shares(args.tier_shares, filt.tier_names)
    if strategy.needs_predictions and not args.model_predictions:
        raise UsageError("--strategy active_learning needs --model-predictions (a predictions JSONL or a model id)")
    if not args.labeled_file and not Path(args.db).exists():
        raise SelectError(f"no gt.db at {args.db} (run make ingest and make label, or pass --labeled-file)")
    if args.labeled_file and not Path(args.labeled_file).is_file():
        raise SelectError(f"--labeled-file {args.labeled_file}: no such file")
    name = args.name or "-".join([strategy.name, str(args.target_size), f"seed{args.seed}"]
                                 + ([args.filter_by_difficulty] if args.filter_by_difficulty else []))
    if args.extend and not args.name:
        name = f"{args.extend}+{name}"

    conn = store.connect(args.db, create=bool(args.labeled_file))  # only importing --labeled-file may create gt.db
    try:
        imported = None
        if args.labeled_file:
            from stages.labeled_file import import_labeled_file
            summary = import_labeled_file(conn, filt, args.labeled_file)
            if summary.problems and not (summary.imported_labels or summary.already_present):
                raise SelectError(f"--labeled-file: {summary.problems[0]}")
            imported = (f"imported {summary.imported_labels} labels ({summary.invalid_labels} invalid, "
                        f"{summary.rejected} records rejected) from {args.labeled_file}; ")
        if conn.execute("SELECT 1 FROM filters WHERE id = ?", (filt.id,)).fetchone() is None:
            raise SelectError(f"no labels of {filt.id} in {args.db} (run make label, or pass --labeled-file)")
        store.register_filter(conn, filt)  # the score view reflects the filter's current tiers and weights
        try:
            oracle, prompt_sha = store.choose_label_set(conn, filt, args.oracle)
        except store.StoreError as e:
            raise SelectError(str(e)) from None
        pool_df, excluded = load_pool(conn, filt, oracle, prompt_sha)
        labelled = len(pool_df) + excluded["duplicates (dup_of set)"] + excluded["too short"]
        if args.holdout_split:  # a dataset's own test set (ingest --split-column) never enters a selection
            splits = store.article_splits(conn, args.holdout_split)
            if not splits:
                known = store.split_names(conn)
                raise UsageError(f"--holdout-split {args.holdout_split}: gt.db holds no split by that name "
                                 + (f"(it has: {', '.join(known)})" if known else "(ingest with --split-column)"))
            held = pool_df["article_id"].map(splits).eq("test")
            excluded[f"held out: the test split of '{args.holdout_split}'"] = int(held.sum())
            pool_df = pool_df[~held].reset_index(drop=True)

        all_rows = pool_df
        kept = extended_members(conn, args.extend, oracle) if args.extend else {}
        if kept:
            missing = sorted(set(kept) - set(pool_df["article_id"]))
            if missing:
                raise SelectError(f"--extend {args.extend}: {len(missing)} of its articles have no {oracle} label in "
                                  f"this label set, e.g. {missing[0]} (extend a selection of the same labels)")
            pool_df = drop_with_cluster_mates(pool_df, set(kept), excluded,
                                              f"already in '{args.extend}' (extended) or a near-duplicate of one")
        if strategy.name == "active_learning" and args.model_predictions:
            trained = student_training_split(conn, args.model_predictions)
            if trained:
                pool_df = drop_with_cluster_mates(pool_df, trained, excluded,
                                                  "in the student's own training split (or a near-duplicate)")
        predictions, pred_where = (None, None)
        if args.model_predictions:
            predictions, pred_where = load_predictions(conn, args.model_predictions, filt.dimension_names)
        error = student_error(pool_df, predictions, dims) if predictions is not None else None

        if args.filter_by_difficulty:
            measures = [disagreement(conn, filt, pool_df, oracle, prompt_sha, dims)]
            if error is not None:
                measures.append(error)
            difficulty = pd.concat(measures, axis=1).mean(axis=1, skipna=True)
            keep = difficulty_filter(pool_df, difficulty, args.filter_by_difficulty)
            excluded[f"difficulty filter ({args.filter_by_difficulty} half kept)"] = int((~keep).sum())
            pool_df = pool_df[keep].reset_index(drop=True)
            if error is not None:
                error = error[keep].reset_index(drop=True)
        if args.target_size > len(pool_df):
            raise SelectError(f"--target-size {args.target_size} is larger than the eligible pool of "
                              f"{len(pool_df)} articles ({oracle} labels of {filt.id}; see the exclusions with a "
                              f"smaller --target-size)")

        # ---- the program's input
        pool, source_names = program_pool(pool_df, dims, edges, filt.tier_names,
                                          error if strategy.name == "active_learning" else None)
        program = build_program(strategy, edges, args.target_size, filt.tier_names, pool,
                                tier_shares=tier_shares, max_per_source=args.max_per_source)
        try:
            chosen, groups, solution = sel.choose(pool, program, seed=args.seed, time_limit=args.time_limit)
        except sel.SelectionError as e:
            raise SelectError(f"{e} ({oracle} labels of {filt.id}, pool {len(pool_df)})") from None

        # ---- splits
        picked = np.flatnonzero(chosen)
        unit = np.where(pool.cluster[picked] >= 0, pool.cluster[picked] + pool.size, picked)
        split_idx = sel.assign_splits(pool.bins[picked], unit, ratios, args.seed)
        split_of = pd.Series(np.array(sel.SPLITS)[split_idx], index=pool_df["article_id"].to_numpy()[picked])
        if kept:  # the picks join the extended selection's train split; its val and test stay as they are
            split_of = pd.concat([pd.Series(kept, dtype=object),
                                  pd.Series("train", index=split_of.index, dtype=object)])

        # ---- baselines beside the answer
        randoms = [sel.random_subset(pool.size, args.target_size, args.seed + r) for r in range(RANDOM_SUBSETS)]
        random_objs = [sel.objective_value(pool.bins, m.astype(np.int64), pool.weight, program) for m in randoms]
        greedy_counts = sel.greedy_fill(groups, program,
                                        tiebreak=np.random.default_rng(args.seed).permutation(groups.count).astype(float))
        greedy_mask = sel.pick_articles(pool, groups, greedy_counts, args.seed) if greedy_counts is not None else None
        greedy_obj = (sel.objective_value(groups.bins, greedy_counts, groups.weight, program)
                      if greedy_counts is not None else None)

        # ---- outputs: everything staged first, then one transaction, then the renames
        out_dir = Path(args.output_dir)
        params = {
            "target_size": args.target_size, "strategy": strategy.name, "dimensions": dims, "bins": edges.tolist(),
            "ratios": list(ratios), "seed": args.seed, "max_per_source": args.max_per_source,
            "tier_shares": tier_shares, "tier_min": program.tier_min.tolist(), "tier_max": program.tier_max.tolist(),
            "filter_by_difficulty": args.filter_by_difficulty, "model_predictions": pred_where,
            "prompt_sha256": prompt_sha, "time_limit": args.time_limit, "labeled_file": args.labeled_file,
            "holdout_split": args.holdout_split, "format": args.format,
            "extends": args.extend, "extended_members": len(kept),
            "gap": solution.gap, "groups": solution.groups, "proven_by": solution.proven_by,
        }
        ctx = ReportContext(filt=filt, dims=dims, edges=edges, strategy=strategy, program=program, pool_df=pool_df,
                            pool=pool, chosen=chosen, split_of=split_of, solution=solution, randoms=randoms,
                            random_objs=random_objs, greedy_mask=greedy_mask, greedy_obj=greedy_obj,
                            excluded=excluded, labelled=labelled, oracle=oracle, name=name, params=params,
                            source_names=list(source_names), args=args, error=error, all_rows=all_rows)
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".select-", dir=out_dir))
        try:
            files = write_outputs(conn, ctx, staging)
            with store.transaction(conn):
                selection_id = save_selection(conn, ctx, time.perf_counter() - t_start)
            for f in files:
                os.replace(staging / f, out_dir / f)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        removed = remove_stale_splits(out_dir, args.format)
        counts = split_of.value_counts().reindex(list(sel.SPLITS), fill_value=0).to_dict()
        return Result(name=name, selection_id=selection_id, output_dir=out_dir, pool_size=len(pool_df),
                      size=int(chosen.sum()), solution=solution, split_counts=counts,
                      random_objective=float(np.mean(random_objs)), greedy_objective=greedy_obj, oracle=oracle,
                      files=files, imported=imported, removed=removed)
    finally:
        conn.close()


def extended_members(conn: sqlite3.Connection, name: str, oracle: str) -> dict[str, str]:
    """--extend: the selection's members and their splits."""
    row = conn.execute("SELECT id, oracle FROM selections WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM selections ORDER BY id DESC LIMIT 5")]
        raise UsageError(f"--extend {name}: no selection by that name in gt.db"
                         + (f" (recent: {', '.join(known)})" if known else " (make select first)"))
    if row["oracle"] != oracle:
        raise UsageError(f"--extend {name}: it was selected from {row['oracle']}'s labels, this run uses {oracle}'s "
                         f"(pass --oracle {row['oracle']})")
    return {r[0]: r[1] for r in conn.execute("SELECT article_id, split FROM selection_members WHERE selection_id = ?",
                                             (row["id"],))}


def student_training_split(conn: sqlite3.Connection, model_id: str) -> set[str]:
    """The articles a model in gt.db was trained on (its selection's train split); empty for a
    predictions file or a model without a recorded selection."""
    return {r[0] for r in conn.execute(
        """SELECT sm.article_id FROM models m JOIN selection_members sm ON sm.selection_id = m.selection_id
           WHERE m.id = ? AND sm.split = 'train'""", (model_id,))}


def drop_with_cluster_mates(pool_df: pd.DataFrame, ids: set[str], excluded: dict, why: str) -> pd.DataFrame:
    """The pool without these articles and their near-duplicate cluster mates (counted under `why`)."""
    clusters = set(pool_df.loc[pool_df["article_id"].isin(ids), "near_dup_cluster"].dropna())
    drop = pool_df["article_id"].isin(ids) | pool_df["near_dup_cluster"].isin(clusters)
    excluded[why] = int(drop.sum())
    return pool_df[~drop].reset_index(drop=True)


def save_selection(conn: sqlite3.Connection, ctx: "ReportContext", seconds: float) -> int:
    """Insert (or replace, same name) the selection and its members; inside the caller's transaction."""
    old = conn.execute("SELECT id FROM selections WHERE name = ?", (ctx.name,)).fetchone()
    if old is not None:
        model = conn.execute("SELECT id FROM models WHERE selection_id = ?", (old["id"],)).fetchone()
        if model is not None:
            raise SelectError(f"selection '{ctx.name}' was used to train model '{model['id']}': "
                              f"pick another --name (the model's training set must not change)")
        conn.execute("DELETE FROM selection_members WHERE selection_id = ?", (old["id"],))
        conn.execute("DELETE FROM selections WHERE id = ?", (old["id"],))
    s = ctx.solution
    cur = conn.execute(
        """INSERT INTO selections (name, filter_id, oracle, strategy, params_json, size, objective, bound,
               solver_status, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (ctx.name, ctx.filt.id, ctx.oracle, ctx.strategy.name, json.dumps(ctx.params, sort_keys=True),
         int(ctx.chosen.sum()), s.objective, s.bound, s.status + (f" ({s.proven_by})" if s.proven_by else ""),
         round(seconds, 3)))
    selection_id = int(cur.lastrowid)
    conn.executemany("INSERT INTO selection_members (selection_id, article_id, split) VALUES (?, ?, ?)",
                     [(selection_id, aid, split) for aid, split in ctx.split_of.sort_index().items()])
    return selection_id


# ---- files ------------------------------------------------------------------------------------

@dataclass
class ReportContext:
    filt: object
    dims: list
    edges: np.ndarray
    strategy: Strategy
    program: sel.Program
    pool_df: pd.DataFrame
    pool: sel.Pool
    chosen: np.ndarray
    split_of: pd.Series
    solution: sel.Solution
    randoms: list
    random_objs: list
    greedy_mask: np.ndarray | None
    greedy_obj: int | None
    excluded: dict
    labelled: int
    oracle: str
    name: str
    params: dict
    source_names: list
    args: argparse.Namespace
    error: pd.Series | None
    all_rows: pd.DataFrame | None = None   # every labelled row (an extended selection's members are not in pool_df)


def write_outputs(conn: sqlite3.Connection, ctx: ReportContext, folder: Path) -> list[str]:
    """The train/val/test splits (JSONL or Parquet), the dataset card (README.md) and both reports
    (+ PNG) into `folder`; returns the file names."""
    from stages import report

    ids = list(ctx.split_of.index)
    articles = {r["id"]: r for r in _rows_by_id(
        conn, "SELECT id, title, text, source, origin, language FROM articles WHERE id IN ({ids})", ids)}
    records = split_records(conn, ctx, articles)
    split_files = write_splits(records, folder, ctx.args.format)
    report.write_text_atomic(folder / "README.md", dataset_card(ctx, records, articles))
    report.write_text_atomic(folder / "selection_report.md", selection_report(ctx))
    report.write_text_atomic(folder / "coverage_comparison.md", coverage_report(ctx))
    coverage_plot(ctx, folder / "coverage_comparison.png")
    return [*split_files, "README.md", "selection_report.md", "coverage_comparison.md", "coverage_comparison.png"]


def _rows_by_id(conn: sqlite3.Connection, sql: str, ids: list) -> list[sqlite3.Row]:
    """The rows of `sql` (an IN list written `{ids}`) for every id, 500 ids a query."""
    rows = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows += conn.execute(sql.format(ids=",".join("?" * len(chunk))), chunk).fetchall()
    return rows


def split_records(conn: sqlite3.Connection, ctx: ReportContext, articles: dict) -> dict[str, list[dict]]:
    """The lines of train/val/test, by id: the article, the scores of the label the selection used,
    and that label's provenance (its id in gt.db's labels table, oracle, the model its run called,
    prompt hash, and the evidence per dimension: '' where the answer gave none, null where the
    label carries no evidence at all, e.g. imported human ratings)."""
    names = ctx.filt.dimension_names
    rows = (ctx.all_rows if ctx.all_rows is not None else ctx.pool_df).set_index("article_id")
    labels = {r["id"]: r for r in _rows_by_id(
        conn, """SELECT l.id, l.oracle, l.prompt_sha256, l.evidence_json, r.model FROM labels l
                 JOIN label_runs r ON r.id = l.run_id WHERE l.id IN ({ids})""",
        [int(x) for x in rows.loc[list(ctx.split_of.index), "label_id"]])}
    records = {}
    for split in sel.SPLITS:
        records[split] = []
        for aid in sorted(ctx.split_of.index[ctx.split_of == split]):
            r, label = rows.loc[aid], labels[int(rows.loc[aid, "label_id"])]
            evidence = json.loads(label["evidence_json"]) if label["evidence_json"] else None
            records[split].append({
                "id": aid, "title": articles[aid]["title"], "text": articles[aid]["text"],
                "labels": [float(r[n]) for n in names], "dimension_names": names,
                "tier": r["tier"], "overall": round(float(r["overall"]), 4),
                "label_id": label["id"], "oracle": label["oracle"], "model": label["model"],
                "prompt_sha256": label["prompt_sha256"],
                "evidence": ({n: str(evidence.get(n) or "") for n in names} if isinstance(evidence, dict) else None),
            })
    return records


def write_splits(records: dict[str, list[dict]], folder: Path, fmt: str) -> list[str]:
    """train/val/test.<fmt>, one row per article, the same columns in both formats (Parquet: one
    schema for the three files, so an empty split still has every column)."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.Table.from_pylist([r for rows in records.values() for r in rows]).schema
        for split, rows in records.items():
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{split}.parquet")
    else:
        for split, rows in records.items():
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return [f"{split}.{fmt}" for split in records]


def remove_stale_splits(folder: Path, fmt: str) -> list[str]:
    """Split files of the other format left by an earlier run in `folder`: removed, so that nothing
    (make train, load_dataset) reads an old selection beside the new one. Returns their names."""
    stale = [folder / f"{split}.{other}" for other in SPLIT_FORMATS if other != fmt for split in sel.SPLITS]
    stale = [f for f in stale if f.is_file()]
    for f in stale:
        f.unlink()
    return [f.name for f in stale]


# ---- the dataset card (README.md beside the splits) ------------------------------------------------

# Bundled texts whose licence is known (data/sample/README.md, data/emobank/README.md): (the end of
# the path the article was ingested from, its source or None for any) -> (Hugging Face licence id or
# None for public domain, licence, attribution to keep with every copy). gt.db keeps no licence per
# article, so any other text's licence is the user's to state.
BUNDLED_LICENCES = {
    ("data/sample/articles.jsonl", "Wikinews"): (
        "cc-by-2.5", "CC BY 2.5 (https://creativecommons.org/licenses/by/2.5/)",
        "News articles from Wikinews (https://en.wikinews.org), licensed CC BY 2.5. Each record's url links "
        "the original article. Changes: datelines removed, whitespace normalised."),
    ("data/sample/articles.jsonl", "VOA Learning English"): (
        None, "public domain (US federal work: VOA Learning English items credited to VOA staff)",
        "Articles from VOA Learning English (Voice of America) are in the public domain."),
    ("data/emobank/emobank.csv.gz", None): (
        "cc-by-sa-4.0", "CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/): share this dataset "
        "under the same licence",
        "EmoBank by Sven Buechel and Udo Hahn (JULIE Lab, Friedrich-Schiller-Universität Jena), "
        "https://github.com/JULIELab/EmoBank, licensed CC BY-SA 4.0."),
}
UNKNOWN_LICENCE = "not recorded in gt.db: yours to state (check the source's terms before sharing)"


def licence_of(origin: str | None, source: str | None) -> tuple | None:
    """(licence id, licence, attribution) of a bundled text, or None where it is not known."""
    origin = origin.replace("\\", "/") if isinstance(origin, str) else ""
    for (ending, src), licence in BUNDLED_LICENCES.items():
        if (origin == ending or origin.endswith("/" + ending)) and src in (None, source):
            return licence
    return None


def card_licence(sources: pd.DataFrame) -> dict:
    """The card's `license` metadata for (source, origin, articles) rows: the one licence that covers
    every article (public-domain items add no terms), 'unknown' where any text's licence is not known."""
    known = [licence_of(o, s) for s, o in zip(sources["source"], sources["origin"])]
    if any(k is None for k in known):
        return {"license": "unknown"}
    ids = sorted({k[0] for k in known if k[0]})
    if len(ids) == 1:
        return {"license": ids[0]}
    return {"license": "other", "license_name": "public-domain" if not ids else "mixed",
            "license_link": "README.md"}


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def dataset_card(ctx: ReportContext, records: dict[str, list[dict]], articles: dict) -> str:
    """README.md of the split folder in the Hugging Face dataset-card shape: YAML metadata (licence,
    `configs` mapping train/validation/test to the files), then what the rows are, where their labels
    come from, how they were selected, the licence per source, and how to load them."""
    import yaml

    from stages.report import md_table, pct

    fmt, out_dir = ctx.args.format, ctx.args.output_dir
    counts = {split: len(rows) for split, rows in records.items()}
    k = sum(counts.values())
    hf_split = {"train": "train", "val": "validation", "test": "test"}
    nonempty = [split for split in sel.SPLITS if counts[split]]
    facts = pd.DataFrame([dict(articles[r["id"]]) for rows in records.values() for r in rows])
    sources = facts.groupby(["source", "origin"], dropna=False).size().rename("articles").reset_index()
    languages = sorted(x for x in facts["language"].dropna().unique())
    meta = {"pretty_name": f"{ctx.filt.id} selection {ctx.name}", **card_licence(sources),
            **({"language": languages} if languages else {}),
            "task_categories": ["text-classification"], "tags": ["regression", "llm-labelled", ctx.filt.name],
            "size_categories": [size_category(k)],
            "configs": [{"config_name": "default", "data_files": [
                {"split": hf_split[split], "path": f"{split}.{fmt}"} for split in nonempty]}]}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {ctx.filt.id}: selection `{ctx.name}`", "",
             f"{k} texts scored 0-10 on the {len(ctx.filt.dimension_names)} dimensions of the filter "
             f"**{ctx.filt.name}** (version {ctx.filt.version}): {', '.join(ctx.filt.dimension_names)}. "
             f"Selected by `python -m stages.select` from {len(ctx.pool_df)} labelled texts in gt.db to cover "
             f"every dimension's score range (strategy **{ctx.strategy.name}**), for training a small model "
             "(the student) to predict the scores.", ""]
    if ctx.oracle in OFFLINE_ORACLES:
        lines += [f"> The labels come from the offline oracle `{ctx.oracle}`, a stand-in that lets the pipeline "
                  "run without a key or network, not a substitute for a real LLM oracle: this dataset "
                  "demonstrates the mechanics.", ""]
    lines += ["## Splits", "", md_table(["split", "file", "rows", "share"],
              [[hf_split[sp], f"{sp}.{fmt}", counts[sp], pct(counts[sp], k)] for sp in sel.SPLITS]), "",
              "Iterative stratification over the (dimension, score bin) cells: each split holds every score "
              "range in proportion; near-duplicate texts never sit in two splits.", ""]
    lines += ["## Fields", "", md_table(["field", "meaning"], [
        ["id", "the article's id in gt.db (articles.id)"], ["title, text", "the article"],
        ["labels", "the scores, one per dimension, in the order of dimension_names"],
        ["dimension_names", "the filter's dimensions"],
        ["tier, overall", "the filter's tier and weighted overall score"],
        ["label_id", "the label's row in gt.db (labels.id): every figure below can be traced to it"],
        ["oracle", "who labelled it (an LLM oracle, an offline stand-in, or an imported set such as human ratings)"],
        ["model", "the model the labelling run called (null where the run recorded none, e.g. an import)"],
        ["prompt_sha256", "hash of the prompt that produced the label"],
        ["evidence", "per dimension, the evidence the oracle quoted ('' where none; null where the label has none)"]],
        align="ll"), ""]
    lines += card_provenance(ctx, records) + card_selection(ctx)
    lines += card_licence_section(sources) + card_loading(out_dir, fmt, counts)
    return "\n".join(lines)


def card_provenance(ctx: ReportContext, records: dict[str, list[dict]]) -> list[str]:
    """Who labelled the rows: one line per (oracle, model, prompt) with its count, and the filter's prompt."""
    from stages.report import md_table

    rows = pd.DataFrame([{"oracle": r["oracle"], "model": r["model"] or "—", "prompt": r["prompt_sha256"]}
                         for recs in records.values() for r in recs])
    table = rows.groupby(["oracle", "model", "prompt"]).size().reset_index(name="labels")
    lines = ["## Labels", "",
             md_table(["oracle", "model", "prompt sha256", "labels"], table.values.tolist(), align="lllr"),
             "", f"Filter `{ctx.filt.id}` from `{ctx.filt.path}`; its prompt now hashes to `{ctx.filt.prompt_sha256}`"]
    old = sorted(set(table["prompt"]) - {ctx.filt.prompt_sha256})
    lines[-1] += (" (the labels above with another hash were made with an earlier prompt)." if old else
                  ", the prompt every label above was made with.")
    return lines + [""]


def card_selection(ctx: ReportContext) -> list[str]:
    from stages.report import md_table

    p, s = ctx.params, ctx.solution
    rows = [["selection in gt.db", f"`{ctx.name}` (tables selections, selection_members)"],
            ["strategy", p["strategy"]], ["target size", p["target_size"]], ["seed", p["seed"]],
            ["train / val / test ratios", " / ".join(f"{r:g}" for r in p["ratios"])],
            ["dimensions covered", ", ".join(p["dimensions"])],
            ["bins (lower edges)", ", ".join(f"{e:g}" for e in p["bins"])],
            ["tier bounds (articles)", ", ".join(f"{t} {lo}-{hi}" for t, lo, hi in
                                                 zip(ctx.filt.tier_names, p["tier_min"], p["tier_max"]))],
            ["max per source", p["max_per_source"] if p["max_per_source"] is not None else "no cap"],
            ["difficulty filter", p["filter_by_difficulty"] or "none"],
            ["model predictions", p["model_predictions"] or "none"],
            ["labelled file imported", p["labeled_file"] or "none"],
            ["held-out split", p["holdout_split"] or "none"],
            ["objective / bound / gap", f"{s.objective:,} / {s.bound:,} / {100 * s.gap:.2f}%"],
            ["solver status", s.status + (f" ({s.proven_by})" if s.proven_by else "")]]
    return ["## Selection", "", md_table(["parameter", "value"], rows, align="ll"), "",
            "The objective and the baselines it beats are explained in `selection_report.md`; the coverage per "
            "dimension in `coverage_comparison.md`.", ""]


def card_licence_section(sources: pd.DataFrame) -> list[str]:
    """One row per licence: its articles and (up to 5 of) their sources and files; then the attributions."""
    from stages.report import md_table

    groups: dict[str, list] = {}
    attributions = []
    for src, origin, n in sources[["source", "origin", "articles"]].itertuples(index=False):
        known = licence_of(origin, src)
        where = (src if isinstance(src, str) else "(no source)") + (f" ({origin})" if isinstance(origin, str) else "")
        entry = groups.setdefault(known[1] if known else UNKNOWN_LICENCE, [0, []])
        entry[0] += int(n)
        entry[1].append(where)
        if known and known[2] not in attributions:
            attributions.append(known[2])
    rows = [[licence, n, ", ".join(wheres[:5]) + (f" and {len(wheres) - 5} more" if len(wheres) > 5 else "")]
            for licence, (n, wheres) in groups.items()]
    lines = ["## Licence", "", "The texts keep their own licence; the scores are this project's output.", "",
             md_table(["licence", "articles", "sources (ingested from)"], rows, align="lrl"), ""]
    if attributions:
        lines += ["Attribution to keep with every copy:", ""] + [f"> {a}" for a in attributions] + [""]
    return lines


def card_loading(out_dir: str, fmt: str, counts: dict) -> list[str]:
    builder = "json" if fmt == "jsonl" else "parquet"
    files = ", ".join(f'"{hf}": "{out_dir}/{sp}.{fmt}"' for sp, hf in
                      (("train", "train"), ("val", "validation"), ("test", "test")) if counts[sp])
    lines = ["## Loading", "", "```python", "from datasets import load_dataset", ""]
    if all(counts.values()):
        lines += [f"# split names from the file names: train, validation (val.{fmt}), test",
                  f'ds = load_dataset("{builder}", data_dir="{out_dir}")']
    else:
        lines += ["# a split is empty and load_dataset refuses a split file without rows: name the others"]
    lines += ["# the files named", f"ds = load_dataset(\"{builder}\", data_files={{{files}}})",
              "# the configs of this card", f'ds = load_dataset("{out_dir}")', "```", ""]
    if fmt == "parquet":
        lines += ["`make train` reads the JSONL splits: rerun select with `--format jsonl`, or train from gt.db "
                  "with `python -m stages.train --selection <name>`.", ""]
    return lines


def strategy_table() -> str:
    from stages.report import md_table

    return md_table(["strategy", "goal", "quotas", "cell value", "article weight", "tiers"],
                    [[s.name, s.goal, s.quotas, s.values, s.weights, s.tiers] for s in STRATEGIES.values()],
                    align="llllll")


def terms_lines(ctx: ReportContext, strategies: str = "the Strategies table of selection_report.md") -> list[str]:
    """The words both reports use, defined before any figure."""
    integer_bins = np.array_equal(ctx.edges, np.arange(11))
    bins = ("one per integer score 0-10, a half point falls into the bin below" if integer_bins else
            "lower edges " + ", ".join(f"{e:g}" for e in ctx.edges))
    bonus = int(ctx.program.bonus.max())
    return ["**Terms.** *Bin*: a range of the 0-10 score scale, from one `--bins` edge to the next "
            f"({bins}). *Cell*: one (dimension, bin) pair; an article sits in one cell per dimension. "
            "*Quota*: how many articles of a cell count; more add nothing. *Value*: what each counted article "
            f"of a cell adds (the strategy sets quotas and values: {strategies}). "
            "*Fill*: value x min(articles in the cell, quota), summed over cells; what the pool allows is the "
            "fill of the whole pool, the most any subset can reach. *Covered*: a cell that holds at least one "
            f"article{f', worth a bonus of {bonus}' if bonus else ''}. *Objective*: fill + the bonuses of the "
            "covered cells + the strategy's article weights (only active_learning has any); *bound*: no "
            "selection can score above it; *gap*: (bound - objective) / bound. *Random* and *greedy*: the "
            "baselines, defined under Baselines.", ""]


def _dimension_stats(ctx: ReportContext, mask: np.ndarray) -> dict:
    bins = ctx.pool.bins[mask]
    b = len(ctx.edges)
    counts = np.stack([np.bincount(bins[:, j], minlength=b) for j in range(bins.shape[1])]) if len(bins) else \
        np.zeros((len(ctx.dims), b), dtype=int)
    high = ctx.pool_df.loc[mask, ctx.dims].to_numpy() >= 8
    fill = (ctx.program.value * np.minimum(counts, ctx.program.quota)).sum(axis=1)
    return {"counts": counts, "covered": (counts > 0).sum(axis=1), "high": high.sum(axis=0),
            "high_articles": int(high.any(axis=1).sum()), "fill": fill}


def baselines(ctx: ReportContext) -> dict[str, dict]:
    """The selection, the random baseline (mean over its subsets) and the greedy one on the same
    measures, so both reports quote the same numbers: objective, fill, cells covered, articles
    scoring 8-10 on at least one dimension."""
    def measures(masks: list) -> dict:
        stats = [_dimension_stats(ctx, m) for m in masks]
        return {key: float(np.mean([st[key].sum() if key != "high_articles" else st[key] for st in stats]))
                for key in ("fill", "covered", "high_articles")}

    out = {"selection": {"objective": float(ctx.solution.objective), **measures([ctx.chosen])},
           f"random (mean of {len(ctx.randoms)})": {"objective": float(np.mean(ctx.random_objs)),
                                                    **measures(ctx.randoms)}}
    if ctx.greedy_mask is not None:
        out["greedy"] = {"objective": float(ctx.greedy_obj), **measures([ctx.greedy_mask])}
    return out


def baseline_lines(ctx: ReportContext) -> list[str]:
    """The Baselines section, the same in both reports."""
    from stages.report import md_table, pct

    k, seed, n = int(ctx.chosen.sum()), ctx.args.seed, len(ctx.randoms)
    figures = baselines(ctx)
    pool_s = _dimension_stats(ctx, np.ones(ctx.pool.size, dtype=bool))
    reach = float((ctx.program.value * np.minimum(pool_s["counts"], ctx.program.quota)).sum())
    own = figures["selection"]["objective"]
    num = lambda v: f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"  # noqa: E731  (means keep a decimal)
    rows = [[name, num(f["objective"]), pct(f["objective"], own), num(f["fill"]), pct(f["fill"], reach),
             num(f["covered"]), num(f["high_articles"])] for name, f in figures.items()]
    return ["## Baselines", "",
            f"- **random**: {n} subsets of {k} articles drawn uniformly at random from the {len(ctx.pool_df)} "
            f"eligible articles (seeds {seed} to {seed + n - 1}), ignoring the tier, source and near-duplicate "
            f"constraints; every figure is the mean over the {n}.",
            f"- **greedy**: starts empty and adds, one at a time until {k}, the article that raises the objective "
            "most, within the same tier, source and near-duplicate bounds as the program (ties in an order "
            f"seeded by {seed})"
            + ("." if ctx.greedy_mask is not None else "; here it found no subset that meets the bounds."), "",
            md_table(["subset", "objective", "% of the selection's objective", "fill", "% of what the pool allows",
                      f"cells covered (of {ctx.pool.bins.shape[1] * len(ctx.edges)})",
                      "articles scoring 8-10 on at least one dimension"], rows, align="lrrrrrr"), ""]


def selection_report(ctx: ReportContext) -> str:
    from stages.report import md_table, pct

    s, k = ctx.solution, int(ctx.chosen.sum())
    figures = baselines(ctx)
    rand = figures[f"random (mean of {len(ctx.randoms)})"]["objective"]
    proven = (f"**proven optimal** ({s.proven_by})" if s.status == "optimal"
              else f"feasible, within {100 * s.gap:.2f}% of the bound (time limit {ctx.args.time_limit:g} s)")
    lines = [f"# Selection `{ctx.name}`", "", *terms_lines(ctx, "see Strategies below"),
             f"Selected **{k}** of {len(ctx.pool_df)} eligible articles ({ctx.filt.id}, oracle `{ctx.oracle}`) with "
             f"strategy **{ctx.strategy.name}**: objective {s.objective:,} vs bound {s.bound:,} (gap "
             f"{100 * s.gap:.2f}%), {proven}, in {s.seconds:.2f} s. The random baseline reaches "
             f"{pct(rand, s.objective)} of this objective, the greedy baseline "
             f"{pct(ctx.greedy_obj, s.objective) if ctx.greedy_obj is not None else '— (it found no feasible set)'} "
             "(both under Baselines).", ""]
    if ctx.oracle in OFFLINE_ORACLES:
        lines += [f"> The labels come from the offline oracle `{ctx.oracle}`, which makes the pipeline run without a "
                  "key or network; it is not a substitute for a real LLM oracle, so treat this selection as a "
                  "demonstration of the mechanics.", ""]
    split_counts = ctx.split_of.value_counts()
    lines += ["## Splits", "", md_table(["split", "articles", "share"],
              [[sp, int(split_counts.get(sp, 0)), pct(split_counts.get(sp, 0), k)] for sp in sel.SPLITS]), "",
              "Each split covers the cells in proportion (iterative stratification over the (dimension, bin) "
              "cells); at most one article per near-duplicate cluster is selected, so no cluster crosses splits. "
              "README.md beside the splits is their dataset card.", ""]
    p = ctx.params
    lines += ["## Parameters", "", md_table(["parameter", "value"], [
        ["target size", p["target_size"]], ["strategy", p["strategy"]], ["dimensions", ", ".join(p["dimensions"])],
        ["bins (lower edges)", ", ".join(f"{e:g}" for e in p["bins"])],
        ["train / val / test", " / ".join(f"{r:g}" for r in p["ratios"])], ["seed", p["seed"]],
        ["max per source", p["max_per_source"] if p["max_per_source"] is not None else "no cap"],
        ["tier shares (--tier-shares)", json.dumps(p["tier_shares"]) if p["tier_shares"] else "strategy default"],
        ["difficulty filter", p["filter_by_difficulty"] or "none"],
        ["model predictions", p["model_predictions"] or "none"],
        ["labelled file imported", p["labeled_file"] or "none"],
        ["prompt sha256", p["prompt_sha256"][:16] + "…"], ["time limit", f"{p['time_limit']:g} s"]], align="ll"), ""]
    lines += ["## Solver", "", md_table(["step", "figure"], [
        ["eligible articles", len(ctx.pool_df)],
        ["groups (identical bin profile, tier, weight, capped source, cluster)", s.groups],
        ["LP relaxation (GLOP) objective", f"{s.lp_objective:,.2f}"],
        ["bound (floor of the LP, or CP-SAT's)", f"{s.bound:,}"],
        ["rounded LP + greedy completion", f"{s.rounded_objective:,}"],
        ["final objective", f"{s.objective:,}"], ["gap", f"{100 * s.gap:.3f}%"],
        ["status", s.status + (f", proven by the {s.proven_by}" if s.proven_by else "")],
        ["CP-SAT groups after reduced-cost fixing", s.free_groups if s.timings.get("cpsat") else "not needed"],
        ["time: LP / rounding / CP-SAT / total", " / ".join(f"{s.timings.get(x, 0.0):.2f}" for x in
                                                            ("lp", "rounding", "cpsat")) + f" / {s.seconds:.2f} s"]],
        align="ll"),
        "",
        f"The objective is the sum over cells of value x min(articles in the cell, quota), plus "
        f"a bonus of {int(ctx.program.bonus.max())} for each cell that holds at least one article (covering an "
        f"empty bin outweighs anything else one article can add), plus the strategy's article weights; all "
        f"coefficients are integers, so the floor of the LP relaxation bounds every selection.", ""]
    lines += baseline_lines(ctx)
    lines += ["## Strategies", "", f"This selection used **{ctx.strategy.name}**. The base quota is "
              f"ceil(K / bins) = {math.ceil(p['target_size'] / len(ctx.edges))}; extreme bins are those with a "
              "midpoint below 4 or at least 8.", "", strategy_table(), ""]
    tiers = ctx.filt.tier_names
    pool_t = ctx.pool_df["tier"].value_counts()
    sel_t = ctx.pool_df.loc[ctx.chosen, "tier"].value_counts()
    lines += ["## Tier mix", "", md_table(["tier", "pool", "pool share", "selected", "selected share", "allowed"],
              [[t, int(pool_t.get(t, 0)), pct(pool_t.get(t, 0), len(ctx.pool_df)), int(sel_t.get(t, 0)),
                pct(sel_t.get(t, 0), k), f"{ctx.program.tier_min[i]}-{ctx.program.tier_max[i]}"]
               for i, t in enumerate(tiers)]), ""]
    src_pool = ctx.pool_df["source"].fillna("(unknown)").value_counts()
    src_sel = ctx.pool_df.loc[ctx.chosen, "source"].fillna("(unknown)").value_counts()
    top = src_sel.head(15)
    lines += ["## Source mix", "", f"{len(src_sel)} sources in the selection ({len(src_pool)} in the pool)"
              + (f"; cap {ctx.args.max_per_source} per source." if ctx.args.max_per_source else "; no per-source cap.")
              + (" The 15 largest:" if len(src_sel) > 15 else ""), "",
              md_table(["source", "pool", "selected", "selected share"],
                       [[src, int(src_pool.get(src, 0)), int(n), pct(n, k)] for src, n in top.items()]), ""]
    clusters = int(ctx.pool_df["near_dup_cluster"].notna().sum())
    lines += ["## Exclusions", "", md_table(["reason", "articles"], [[r, n] for r, n in ctx.excluded.items()]
              + [["in near-duplicate clusters (at most one per cluster may be chosen)", clusters]], align="lr"), ""]
    if ctx.error is not None:
        e = ctx.error
        lines += ["## Student error", "", f"Mean absolute error of the student over {', '.join(ctx.dims)}: pool "
                  f"{e.mean():.3f}, selection {e[ctx.chosen].mean():.3f} ({int(e.notna().sum())} of "
                  f"{len(e)} pool articles have predictions).", ""]
    return "\n".join(lines)


def coverage_report(ctx: ReportContext) -> str:
    from stages.report import md_table, pct

    everything = np.ones(ctx.pool.size, dtype=bool)
    pool_s, sel_s = _dimension_stats(ctx, everything), _dimension_stats(ctx, ctx.chosen)
    rand_s = [_dimension_stats(ctx, m) for m in ctx.randoms]
    greedy_s = _dimension_stats(ctx, ctx.greedy_mask) if ctx.greedy_mask is not None else None
    reach = (ctx.program.value * np.minimum(pool_s["counts"], ctx.program.quota)).sum(axis=1)
    mean = lambda key: np.mean([r[key] for r in rand_s], axis=0)  # noqa: E731
    b, k, n = len(ctx.edges), int(ctx.chosen.sum()), len(ctx.randoms)
    rand_name = f"random (mean of {n})"
    figures = baselines(ctx)
    lines = ["# Coverage: pool, selection, random and greedy", "", *terms_lines(ctx),
             f"The selection of {k} fills **{pct(sel_s['fill'].sum(), reach.sum())}** of what the pool allows, "
             f"the random baseline {pct(figures[rand_name]['fill'], reach.sum())}"
             + (f", the greedy baseline {pct(figures['greedy']['fill'], reach.sum())}" if greedy_s else "") + ". "
             f"**{sel_s['high_articles']}** of the {k} selected articles score 8-10 on at least one of the "
             f"{len(ctx.dims)} dimensions (each article counted once), vs {figures[rand_name]['high_articles']:.1f} "
             f"in a random subset" + (f" and {greedy_s['high_articles']} in the greedy one" if greedy_s else "")
             + f"; the pool has {pool_s['high_articles']}.", "",
             "![coverage per dimension](coverage_comparison.png)", "",
             "*Figure*: articles per score bin, one panel per dimension; a red x marks a bin where the pool has "
             "no article, so no subset can cover it.", "",
             *baseline_lines(ctx),
             f"## Bins covered (of {b}), per dimension", "",
             md_table(["dimension", "pool", "selection", rand_name, "greedy"],
                      [[d, int(pool_s["covered"][j]), int(sel_s["covered"][j]), float(mean("covered")[j]),
                        int(greedy_s["covered"][j]) if greedy_s else None] for j, d in enumerate(ctx.dims)],
                      floatfmt=".1f"), "",
             "## Fill per dimension (and % of what the pool allows)", "",
             md_table(["dimension", "pool allows", "selection", rand_name, "greedy"],
                      [[d, int(reach[j]), f"{int(sel_s['fill'][j])} ({pct(sel_s['fill'][j], reach[j])})",
                        f"{mean('fill')[j]:.1f} ({pct(mean('fill')[j], reach[j])})",
                        f"{int(greedy_s['fill'][j])} ({pct(greedy_s['fill'][j], reach[j])})" if greedy_s else "—"]
                       for j, d in enumerate(ctx.dims)]), "",
             "## Articles scoring 8-10, per dimension", "",
             "An article that scores 8-10 on two dimensions counts in both rows, so the rows can add up to more "
             "than the articles above.", "",
             md_table(["dimension", "pool", "selection", rand_name, "greedy"],
                      [[d, int(pool_s["high"][j]), int(sel_s["high"][j]), float(mean("high")[j]),
                        int(greedy_s["high"][j]) if greedy_s else None] for j, d in enumerate(ctx.dims)],
                      floatfmt=".1f"), "",
             "## Selected articles per bin", "",
             md_table(["dimension", *bin_labels(ctx.edges)],
                      [[d, *[int(x) for x in sel_s["counts"][j]]] for j, d in enumerate(ctx.dims)]), "",
             "## Pool articles per bin", "",
             md_table(["dimension", *bin_labels(ctx.edges)],
                      [[d, *[int(x) for x in pool_s["counts"][j]]] for j, d in enumerate(ctx.dims)]), ""]
    return "\n".join(lines)


def coverage_plot(ctx: ReportContext, path: Path) -> None:
    """coverage_figure for this selection, saved as a PNG."""
    series = {"selection": _dimension_stats(ctx, ctx.chosen)["counts"],
              f"random (mean of {len(ctx.randoms)})":
                  np.mean([_dimension_stats(ctx, m)["counts"] for m in ctx.randoms], axis=0)}
    if ctx.greedy_mask is not None:
        series["greedy"] = _dimension_stats(ctx, ctx.greedy_mask)["counts"]
    pool_counts = _dimension_stats(ctx, np.ones(ctx.pool.size, dtype=bool))["counts"]
    fig = coverage_figure(series, pool_counts, ctx.dims, bin_labels(ctx.edges), f"{ctx.name}: articles per score bin")
    fig.savefig(path, format="png", dpi=90)


def coverage_figure(series: dict[str, np.ndarray], pool_counts: np.ndarray, dims: list[str], labels: list[str],
                    title: str):
    """Articles per score bin, one panel per dimension, one bar per series ((dimensions x bins)
    counts each); a red x on the axis where the pool has no article in the bin. A plain grid layout
    (no constrained layout, no tight bbox): the shared helper's layout pass took seconds here, longer
    than the solve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ncols = min(4, len(dims))
    nrows = math.ceil(len(dims) / ncols)
    height = 2.4 * nrows + 1.2
    fig = Figure(figsize=(3.1 * ncols + 0.4, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    handles = []
    for j, dim in enumerate(dims):
        ax = axes[j // ncols][j % ncols]
        for s_i, (name, counts) in enumerate(series.items()):
            bars = ax.bar(x + (s_i - (len(series) - 1) / 2) * width, counts[j], width=width, color=f"C{s_i}",
                          label=name)
            if j == 0:
                handles.append(bars)
        empty = np.flatnonzero(pool_counts[j] == 0)
        if len(empty):
            ax.plot(empty, np.zeros(len(empty)), linestyle="none", marker="x", color="red", markersize=6,
                    clip_on=False, zorder=3)
        ax.set_title(dim, fontsize=9)
        ax.set_xticks(x, labels, fontsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="y", labelsize=7)
        if j + ncols >= len(dims):
            ax.set_xlabel("score bin", fontsize=8)
        if j % ncols == 0:
            ax.set_ylabel("articles", fontsize=8)
    for j in range(len(dims), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    if (pool_counts == 0).any():
        handles.append(Line2D([], [], linestyle="none", marker="x", color="red",
                              label="no article in the pool (no subset can cover it)"))
    fig.legend(handles=handles, labels=[h.get_label() for h in handles], loc="upper center", ncol=len(handles),
               fontsize=7, frameon=False, bbox_to_anchor=(0.5, 1 - 0.45 / height))
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    fig.subplots_adjust(left=0.6 / (3.1 * ncols + 0.4), right=0.98, bottom=0.55 / height, top=1 - 1.0 / height,
                        wspace=0.3, hspace=0.55)
    return fig


# ---- command line -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m stages.select",
        description="Select the training subset that best covers every dimension's score range (an OR-Tools "
                    "integer program over the labelled pool in gt.db), split it into train/val/test and write "
                    "the splits, their dataset card README.md, selection_report.md and coverage_comparison.md (+ PNG).",
        epilog="Strategies:\n" + "\n".join(f"  {s.name:18} {s.goal}" for s in STRATEGIES.values())
               + "\n\nSelections are stored in gt.db by --name; the same name replaces the old selection in one "
                 "transaction unless a trained model refers to it (then the stage refuses).\n"
                 "Everything is validated and solved before anything is written; the files appear together.\n"
                 "Exit codes: 0 done; 1 the selection could not be made (one line says why: pool too small, "
                 "infeasible constraint, bad predictions); 2 bad flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=store.default_db_path(), help="gt.db path (default: $GT_DB, else gt.db)")
    ap.add_argument("--filter", default="filters/uplifting/v1", help="filter package (default: filters/uplifting/v1)")
    ap.add_argument("--oracle", help="whose labels to select from (default: the oracle with the most valid labels)")
    ap.add_argument("--labeled-file", help="import this labelled JSONL (the spec's labeled_articles.jsonl shape) "
                                           "into gt.db first, then select")
    ap.add_argument("--output-dir", default="data/training",
                    help="where train/val/test.jsonl and the reports go (default: data/training)")
    ap.add_argument("--target-size", type=int, default=2000, help="articles to select, exactly (default: 2000)")
    ap.add_argument("--strategy", choices=list(STRATEGIES), default="maximize_coverage",
                    help="quotas, values and tier bounds of the program (see below; default: maximize_coverage)")
    ap.add_argument("--train-ratio", type=float, default=0.8, help="share of the selection in train.jsonl (0.8)")
    ap.add_argument("--val-ratio", type=float, default=0.1, help="share in val.jsonl (0.1)")
    ap.add_argument("--test-ratio", type=float, default=0.1, help="share in test.jsonl (0.1); the three sum to 1")
    ap.add_argument("--dimensions", help="comma list of the dimensions whose bins the selection covers (default: "
                                         "all); the JSONL labels always hold every dimension of the filter")
    ap.add_argument("--filter-by-difficulty", choices=["hard", "easy"],
                    help="keep only the harder (or easier) half of the pool: disagreement between oracles or "
                         "repeats of the same article, and/or the student's error from --model-predictions")
    ap.add_argument("--model-predictions", help="a predictions JSONL ({'id', 'predictions': {dim: x} or a list in "
                                                "dimension order} per line) or a model id in gt.db; drives "
                                                "active_learning and the difficulty filter")
    ap.add_argument("--bins", default=DEFAULT_BINS,
                    help=f"lower bin edges of the score scale (default {DEFAULT_BINS}: one bin per integer; "
                         "half points fall into the bin below)")
    ap.add_argument("--max-per-source", type=int, help="at most this many articles from one source (default: no cap)")
    ap.add_argument("--tier-shares", help="hard tier bounds replacing the strategy's, e.g. "
                                          "'impact=0.2:,not_uplifting=:0.5' (tier=min:max as shares of K)")
    ap.add_argument("--name", help="the selection's name in gt.db (default: <strategy>-<size>-seed<seed>"
                                   "[-<difficulty>])")
    ap.add_argument("--time-limit", type=float, default=60.0,
                    help="seconds the solver may take to prove optimality (default 60); the best answer so "
                         "far and its gap are reported when it runs out")
    ap.add_argument("--holdout-split", metavar="NAME",
                    help="never select the 'test' articles of this split scheme stored in gt.db (ingest "
                         "--split-column; e.g. official): `evaluate --split NAME` measures the student on them")
    ap.add_argument("--format", choices=SPLIT_FORMATS, default="jsonl",
                    help="file format of the splits: jsonl (default; what `make train` reads) or parquet (same "
                         "columns); the other format's split files of an earlier run in --output-dir are removed")
    ap.add_argument("--extend", metavar="SELECTION",
                    help="add this run's picks to an existing selection's train split, keeping its val and test "
                         "splits as they are (its members and their near-duplicates are not picked again); saved "
                         "under a new name (default <SELECTION>+<strategy>-<size>-seed<seed>)")
    ap.add_argument("--seed", type=int, default=42, help="seed for ties, baselines and splits (default 42)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        r = run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SelectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (store.StoreError, sqlite3.Error) as e:  # gt.db missing, locked, read-only, corrupt...
        return store.fail_line(e, args.db)
    s = r.solution
    greedy = f"{100 * r.greedy_objective / s.objective:.1f}%" if r.greedy_objective is not None and s.objective else "—"
    rand = f"{100 * r.random_objective / s.objective:.1f}%" if s.objective else "—"
    print(f"{r.imported or ''}Selected {r.size} of {r.pool_size} eligible articles ({r.oracle} labels) as selection '{r.name}' "
          f"(id {r.selection_id}) in {args.db}: objective {s.objective:,}, bound {s.bound:,}, gap {100 * s.gap:.2f}%, "
          f"{s.status}{' (' + s.proven_by + ')' if s.proven_by else ''} in {s.seconds:.2f} s; of that objective "
          f"{RANDOM_SUBSETS} random subsets reach {rand} (mean), the greedy baseline {greedy}. Wrote train/val/test.{args.format} ({r.split_counts['train']}/{r.split_counts['val']}/"
          f"{r.split_counts['test']}), README.md (dataset card), selection_report.md and coverage_comparison.md "
          f"(+ PNG) to {r.output_dir}/"
          + (f"; removed the earlier {', '.join(r.removed)}" if r.removed else "")
          + (". `make train` expects the .jsonl splits: pass --format jsonl, or train from gt.db with "
             f"`python -m stages.train --selection {r.name}`." if args.format == "parquet" else "."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
