"""Select stage (step 4 of the workflow): from the labelled pool in gt.db, pick the training subset
that best covers every dimension's score range, as an OR-Tools integer program, split it into
train/val/test, and write the splits and two reports.

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

        # ---- baselines beside the answer
        randoms = [sel.random_subset(pool.size, args.target_size, args.seed + r) for r in range(5)]
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
            "holdout_split": args.holdout_split,
            "gap": solution.gap, "groups": solution.groups, "proven_by": solution.proven_by,
        }
        ctx = ReportContext(filt=filt, dims=dims, edges=edges, strategy=strategy, program=program, pool_df=pool_df,
                            pool=pool, chosen=chosen, split_of=split_of, solution=solution, randoms=randoms,
                            random_objs=random_objs, greedy_mask=greedy_mask, greedy_obj=greedy_obj,
                            excluded=excluded, labelled=labelled, oracle=oracle, name=name, params=params,
                            source_names=list(source_names), args=args, error=error)
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
        counts = split_of.value_counts().reindex(list(sel.SPLITS), fill_value=0).to_dict()
        return Result(name=name, selection_id=selection_id, output_dir=out_dir, pool_size=len(pool_df),
                      size=int(chosen.sum()), solution=solution, split_counts=counts,
                      random_objective=float(np.mean(random_objs)), greedy_objective=greedy_obj, oracle=oracle,
                      files=files, imported=imported)
    finally:
        conn.close()


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


def write_outputs(conn: sqlite3.Connection, ctx: ReportContext, folder: Path) -> list[str]:
    """train/val/test JSONL and both reports (+ PNG) into `folder`; returns the file names."""
    from stages import report

    names = ctx.filt.dimension_names
    ids = list(ctx.split_of.index)
    texts = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for r in conn.execute(f"SELECT id, title, text FROM articles WHERE id IN ({','.join('?' * len(chunk))})", chunk):
            texts[r["id"]] = (r["title"], r["text"])
    rows = ctx.pool_df.set_index("article_id")
    for split in sel.SPLITS:
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for aid in sorted(ctx.split_of.index[ctx.split_of == split]):
                r = rows.loc[aid]
                title, text = texts[aid]
                f.write(json.dumps({
                    "id": aid, "title": title, "text": text,
                    "labels": [float(r[n]) for n in names], "dimension_names": names,
                    "tier": r["tier"], "overall": round(float(r["overall"]), 4),
                }, ensure_ascii=False) + "\n")
    report.write_text_atomic(folder / "selection_report.md", selection_report(ctx))
    report.write_text_atomic(folder / "coverage_comparison.md", coverage_report(ctx))
    coverage_plot(ctx, folder / "coverage_comparison.png")
    return ["train.jsonl", "val.jsonl", "test.jsonl", "selection_report.md", "coverage_comparison.md",
            "coverage_comparison.png"]


def strategy_table() -> str:
    from stages.report import md_table

    return md_table(["strategy", "goal", "quotas", "cell value", "article weight", "tiers"],
                    [[s.name, s.goal, s.quotas, s.values, s.weights, s.tiers] for s in STRATEGIES.values()],
                    align="llllll")


def selection_report(ctx: ReportContext) -> str:
    from stages.report import md_table, pct

    s, k = ctx.solution, int(ctx.chosen.sum())
    rand = float(np.mean(ctx.random_objs))
    proven = (f"**proven optimal** ({s.proven_by})" if s.status == "optimal"
              else f"feasible, within {100 * s.gap:.2f}% of the bound (time limit {ctx.args.time_limit:g} s)")
    lines = [f"# Selection `{ctx.name}`", "",
             f"Selected **{k}** of {len(ctx.pool_df)} eligible articles ({ctx.filt.id}, oracle `{ctx.oracle}`) with "
             f"strategy **{ctx.strategy.name}**: objective {s.objective:,} vs bound {s.bound:,} (gap "
             f"{100 * s.gap:.2f}%), {proven}, in {s.seconds:.2f} s. Random selection of the same size reaches "
             f"{pct(rand, s.objective)} of this objective (mean of 5 seeds), a greedy selection "
             f"{pct(ctx.greedy_obj, s.objective) if ctx.greedy_obj is not None else '— (greedy found no feasible set)'}.",
             ""]
    if ctx.oracle in OFFLINE_ORACLES:
        lines += [f"> The labels come from the offline oracle `{ctx.oracle}`, which makes the pipeline run without a "
                  "key or network; it is not a substitute for a real LLM oracle, so treat this selection as a "
                  "demonstration of the mechanics.", ""]
    split_counts = ctx.split_of.value_counts()
    lines += ["## Splits", "", md_table(["split", "articles", "share"],
              [[sp, int(split_counts.get(sp, 0)), pct(split_counts.get(sp, 0), k)] for sp in sel.SPLITS]),
              "Each split covers the cells in proportion (iterative stratification over the (dimension, bin) "
              "cells); at most one article per near-duplicate cluster is selected, so no cluster crosses splits.", ""]
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
                                                            ("lp", "rounding", "cpsat")) + f" / {s.seconds:.2f} s"],
        ["random subset (mean of 5 seeds)", f"{rand:,.0f} ({pct(rand, s.objective)})"],
        ["greedy baseline", f"{ctx.greedy_obj:,} ({pct(ctx.greedy_obj, s.objective)})" if ctx.greedy_obj is not None
         else "no feasible greedy set"]], align="ll"),
        f"The objective is the sum over (dimension, bin) cells of value x min(articles in the cell, quota), plus "
        f"a bonus of {int(ctx.program.bonus.max())} for each cell that holds at least one article (covering an "
        f"empty bin outweighs anything else one article can add), plus the strategy's article weights; all "
        f"coefficients are integers, so the floor of the LP relaxation bounds every selection.", ""]
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


def _dimension_stats(ctx: ReportContext, mask: np.ndarray) -> dict:
    bins = ctx.pool.bins[mask]
    b = len(ctx.edges)
    counts = np.stack([np.bincount(bins[:, j], minlength=b) for j in range(bins.shape[1])]) if len(bins) else \
        np.zeros((len(ctx.dims), b), dtype=int)
    high = (ctx.pool_df.loc[mask, ctx.dims].to_numpy() >= 8).sum(axis=0)
    fill = (ctx.program.value * np.minimum(counts, ctx.program.quota)).sum(axis=1)
    return {"counts": counts, "covered": (counts > 0).sum(axis=1), "high": high, "fill": fill}


def coverage_report(ctx: ReportContext) -> str:
    from stages.report import md_table, pct

    everything = np.ones(ctx.pool.size, dtype=bool)
    pool_s, sel_s = _dimension_stats(ctx, everything), _dimension_stats(ctx, ctx.chosen)
    rand_s = [_dimension_stats(ctx, m) for m in ctx.randoms]
    greedy_s = _dimension_stats(ctx, ctx.greedy_mask) if ctx.greedy_mask is not None else None
    reach = (ctx.program.value * np.minimum(pool_s["counts"], ctx.program.quota)).sum(axis=1)
    mean = lambda key: np.mean([r[key] for r in rand_s], axis=0)  # noqa: E731
    b, k = len(ctx.edges), int(ctx.chosen.sum())
    total_sel, total_rand = sel_s["fill"].sum(), mean("fill").sum()
    lines = ["# Coverage: pool, selection, random and greedy", "",
             f"The selection of {k} fills **{pct(total_sel, reach.sum())}** of what the pool can fill in the "
             f"(dimension, bin) cells (value x min(count, quota)), a random subset of the same size "
             f"{pct(total_rand, reach.sum())} (mean of 5 seeds)"
             + (f", the greedy baseline {pct(greedy_s['fill'].sum(), reach.sum())}" if greedy_s else "") + ". "
             f"Articles scoring 8-10 on some dimension: {int(sel_s['high'].sum())} in the selection vs "
             f"{mean('high').sum():.1f} at random.", "",
             "![coverage per dimension](coverage_comparison.png)", "",
             f"## Bins covered (of {b})", "",
             md_table(["dimension", "pool", "selection", "random (mean of 5)", "greedy"],
                      [[d, int(pool_s["covered"][j]), int(sel_s["covered"][j]), float(mean("covered")[j]),
                        int(greedy_s["covered"][j]) if greedy_s else None] for j, d in enumerate(ctx.dims)],
                      floatfmt=".1f"), "",
             "## Cell fill per dimension (value x min(count, quota), and % of what the pool allows)", "",
             md_table(["dimension", "pool allows", "selection", "random (mean of 5)", "greedy"],
                      [[d, int(reach[j]), f"{int(sel_s['fill'][j])} ({pct(sel_s['fill'][j], reach[j])})",
                        f"{mean('fill')[j]:.1f} ({pct(mean('fill')[j], reach[j])})",
                        f"{int(greedy_s['fill'][j])} ({pct(greedy_s['fill'][j], reach[j])})" if greedy_s else "—"]
                       for j, d in enumerate(ctx.dims)]), "",
             "## Articles scoring 8-10", "",
             md_table(["dimension", "pool", "selection", "random (mean of 5)", "greedy"],
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
    """Articles per bin, one panel per dimension: selection, random (mean of 5), greedy. A plain
    grid layout (no constrained layout, no tight bbox): the shared helper's layout pass took
    seconds here, longer than the solve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = {"selection": _dimension_stats(ctx, ctx.chosen)["counts"],
              "random (mean of 5)": np.mean([_dimension_stats(ctx, m)["counts"] for m in ctx.randoms], axis=0)}
    if ctx.greedy_mask is not None:
        series["greedy"] = _dimension_stats(ctx, ctx.greedy_mask)["counts"]
    labels = bin_labels(ctx.edges)
    ncols = min(4, len(ctx.dims))
    nrows = math.ceil(len(ctx.dims) / ncols)
    fig = Figure(figsize=(3.1 * ncols, 2.3 * nrows + 0.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for j, dim in enumerate(ctx.dims):
        ax = axes[j // ncols][j % ncols]
        for s_i, (name, counts) in enumerate(series.items()):
            ax.bar(x + (s_i - (len(series) - 1) / 2) * width, counts[j], width=width, color=f"C{s_i}", label=name)
        ax.set_title(dim, fontsize=9)
        ax.set_xticks(x, labels, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for j in range(len(ctx.dims), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{ctx.name}: articles per score bin", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.08, top=0.88, wspace=0.25, hspace=0.45)
    fig.savefig(path, format="png", dpi=90)


# ---- command line -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m stages.select",
        description="Select the training subset that best covers every dimension's score range (an OR-Tools "
                    "integer program over the labelled pool in gt.db), split it into train/val/test and write "
                    "the splits, selection_report.md and coverage_comparison.md (+ PNG).",
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
          f"{s.status}{' (' + s.proven_by + ')' if s.proven_by else ''} in {s.seconds:.2f} s; random reaches {rand}, "
          f"greedy {greedy}. Wrote train/val/test.jsonl ({r.split_counts['train']}/{r.split_counts['val']}/"
          f"{r.split_counts['test']}), selection_report.md and coverage_comparison.md (+ PNG) to {r.output_dir}/.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
