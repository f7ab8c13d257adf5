"""Select stage (step 4 of the workflow): from the labelled pool in gt.db, pick the training subset
that best covers every dimension's score range, as an OR-Tools integer program, split it into
train/val/test, and write the splits (JSONL, or Parquet with --format parquet; every line carries the
provenance of its label: labels.id, oracle, model, prompt hash, evidence), their dataset card
(README.md, Hugging Face conventions: `datasets.load_dataset("json", data_dir=...)` loads them) and
two reports.

    python -m stages.select --db gt.db --target-size 2000 --strategy maximize_coverage \\
        --output-dir data/training

The program (gt/selection/program.py) fills each (dimension, score bin) cell up to a quota; a strategy
is a set of quotas, cell values, article weights and tier bounds (the STRATEGIES table, also in
gt/selection/program.py, and in every selection_report.md). The answer comes with the LP bound: the
report says how far from optimal it can at most be (usually: proven optimal).

The stage reads as its steps (select): check the options, read the eligible pool, narrow it
(--extend, the student's own training articles, the difficulty filter), solve and split, then write
the files (gt/selection/report.py renders them) and the selection in one transaction.

Selections live side by side in gt.db (`selections`, `selection_members`), keyed by --name. Running
again with the same name REPLACES that selection in one transaction, unless a trained model refers
to it: then the stage refuses (pick another --name) so a model's training set never changes under it.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from gt import DEFAULT_SEED
from gt.core import errors, store
from gt.selection import bins, program as solver, splits
from gt.core.filters import DEFAULT_FILTER, load_filter
from gt.selection.pool import (difficulty_filter, disagreement, drop_with_cluster_mates, load_pool, load_predictions,
                         program_pool, student_error)
from gt.selection.bins import DEFAULT_BINS
from gt.selection.strategies import STRATEGIES, Strategy, build_program
from gt.selection.report import SPLIT_FORMATS, ReportContext, remove_stale_splits, write_files

RANDOM_SUBSETS = 5   # the random baseline: this many uniform subsets of the selection's size, seeds --seed, +1, ...
TEST_FROM = ("pool", "selection")


class SelectError(errors.StageError):
    """The work cannot be done as asked (bad data, infeasible program); one line says why (exit 1)."""


@dataclass
class SelectOptions:
    """The flags of `python -m stages.select`, typed (the names are argparse's)."""
    db: str = field(default_factory=store.default_db_path)
    filter: str = DEFAULT_FILTER
    oracle: str | None = None
    labeled_file: str | None = None
    output_dir: str = "data/training"
    target_size: int | str = 2000   # or "all": every eligible article (resolved once the pool is read)
    strategy: str = "maximize_coverage"
    train_ratio: float = 0.8
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    dimensions: str | None = None
    filter_by_difficulty: str | None = None    # 'hard' | 'easy'
    model_predictions: str | None = None
    bins: str = DEFAULT_BINS
    max_per_source: int | None = None
    tier_shares: str | None = None
    name: str | None = None
    time_limit: float = 60.0
    holdout_split: str | None = None
    format: str = "jsonl"
    extend: str | None = None
    test_from: str = "pool"            # 'pool': the test split is a uniform sample of the eligible pool
    exploration_share: float = 0.0     # this share of train+val drawn uniformly, the rest by the program
    seed: int = DEFAULT_SEED



@dataclass
class Plan:
    """The options, checked and resolved: nothing is read or written before they all are."""
    filt: object
    strategy: Strategy
    dims: list[str]
    edges: np.ndarray
    ratios: tuple[float, float, float]
    tier_shares: dict[str, tuple[float, float]] | None
    name: str


@dataclass
class Candidates:
    """The eligible pool from gt.db and what was left out of it, and why."""
    oracle: str
    prompt_sha: str
    pool_df: pd.DataFrame
    all_rows: pd.DataFrame                # every labelled row, before --extend and the filters narrowed it
    excluded: dict
    kept: dict                            # --extend: the extended selection's members and their splits
    test_ids: list = field(default_factory=list)   # --test-from pool: the test split, drawn from the pool
    error: pd.Series | None = None        # the student's error per pool article (with --model-predictions)
    predictions_from: str | None = None
    imported: str | None = None           # what importing --labeled-file did, in words


@dataclass
class Result:
    name: str
    selection_id: int
    output_dir: Path
    pool_size: int
    size: int
    solution: solver.Solution
    split_counts: dict
    random_objective: float
    greedy_objective: int | None
    oracle: str
    files: list[str]
    imported: str | None = None
    removed: list[str] | None = None   # the other format's split files of an earlier run, now gone


# ---- the selection flow -----------------------------------------------------------------------

def select(o: SelectOptions) -> Result:
    """Check the options, read the eligible pool, solve the program, split the answer, measure the
    baselines, then write the files and the selection (everything staged, one transaction)."""
    started = time.perf_counter()
    plan = check_options(o)
    conn = store.connect(o.db, create=bool(o.labeled_file))  # only importing --labeled-file may create gt.db
    try:
        cand = read_candidates(conn, o, plan)
        draw_pool_test(o, plan, cand)
        narrow_candidates(conn, o, plan, cand)
        if o.target_size == "all":   # one article of each near-duplicate cluster, as the program picks
            o = replace(o, target_size=len(cand.test_ids) + selectable(cand.pool_df))
        if o.target_size - len(cand.test_ids) > len(cand.pool_df):
            raise SelectError(f"--target-size {o.target_size} is larger than the eligible pool of "
                              f"{len(cand.pool_df)} articles ({cand.oracle} labels of {plan.filt.id}; see the "
                              f"exclusions with a smaller --target-size)")
        ctx = solve_and_split(o, plan, cand)
        return write_selection(conn, o, ctx, cand, started)
    finally:
        conn.close()


def check_options(o: SelectOptions) -> Plan:
    """Every option checked before anything is read (usage errors exit 2)."""
    if o.target_size != "all" and (not isinstance(o.target_size, int) or o.target_size < 1):
        raise errors.UsageError(f"--target-size must be at least 1 (got {o.target_size})")
    ratios = check_ratios(o.train_ratio, o.val_ratio, o.test_ratio)
    edges = parse_bins(o.bins)
    if o.max_per_source is not None and o.max_per_source < 1:
        raise errors.UsageError(f"--max-per-source must be at least 1 (got {o.max_per_source})")
    if o.time_limit <= 0:
        raise errors.UsageError(f"--time-limit must be positive (got {o.time_limit})")
    if o.strategy not in STRATEGIES:
        raise errors.UsageError(f"--strategy {o.strategy}: no such strategy (one of {', '.join(STRATEGIES)})")
    if o.format not in SPLIT_FORMATS:
        raise errors.UsageError(f"--format {o.format}: one of {', '.join(SPLIT_FORMATS)}")
    if o.test_from not in TEST_FROM:
        raise errors.UsageError(f"--test-from {o.test_from}: one of {', '.join(TEST_FROM)}")
    if not 0 <= o.exploration_share < 1:
        raise errors.UsageError(f"--exploration-share must be at least 0 and below 1 (got {o.exploration_share})")
    strategy = STRATEGIES[o.strategy]
    filt = load_filter(o.filter)   # a broken package: FilterError, one line per problem (stages/kit.py)
    dims = parse_dimensions(o.dimensions, filt.dimension_names)
    tier_shares = parse_tier_shares(o.tier_shares, filt.tier_names)
    if strategy.uses_student_error and not o.model_predictions:
        raise errors.UsageError(f"--strategy {strategy.name} needs --model-predictions (a predictions JSONL or a model id)")
    if not o.labeled_file and not Path(o.db).exists():
        raise SelectError(f"no gt.db at {o.db} (run make ingest and make label, or pass --labeled-file)")
    if o.labeled_file and not Path(o.labeled_file).is_file():
        raise SelectError(f"--labeled-file {o.labeled_file}: no such file")
    name = o.name or "-".join([strategy.name, str(o.target_size), f"seed{o.seed}"]
                              + ([o.filter_by_difficulty] if o.filter_by_difficulty else []))
    if o.extend and not o.name:
        name = f"{o.extend}+{name}"
    return Plan(filt, strategy, dims, edges, ratios, tier_shares, name)


def read_candidates(conn: sqlite3.Connection, o: SelectOptions, plan: Plan) -> Candidates:
    """The valid labels of one label set (imported from --labeled-file first if given), less
    duplicates, too-short texts and the --holdout-split's test articles."""
    filt, imported = plan.filt, None
    if o.labeled_file:
        from gt.intake.labeled_file import import_labeled_file
        summary = import_labeled_file(conn, filt, o.labeled_file)
        if summary.problems and not (summary.imported_labels or summary.already_present):
            raise SelectError(f"--labeled-file: {summary.problems[0]}")
        imported = (f"imported {summary.imported_labels} labels ({summary.invalid_labels} invalid, "
                    f"{summary.rejected} records rejected) from {o.labeled_file}; ")
    if conn.execute("SELECT 1 FROM filters WHERE id = ?", (filt.id,)).fetchone() is None:
        raise SelectError(f"no labels of {filt.id} in {o.db} (run make label, or pass --labeled-file)")
    store.register_filter(conn, filt)  # the score view reflects the filter's current tiers and weights
    try:
        oracle, prompt_sha = store.choose_label_set(conn, filt, o.oracle)
    except store.StoreError as e:
        raise SelectError(str(e)) from None
    pool_df, excluded = load_pool(conn, filt, oracle, prompt_sha)
    if o.holdout_split:  # a dataset's own test set (ingest --split-column) never enters a selection
        splits = store.article_splits(conn, o.holdout_split)
        if not splits:
            known = store.split_names(conn)
            raise errors.UsageError(f"--holdout-split {o.holdout_split}: gt.db holds no split by that name "
                                 + (f"(it has: {', '.join(known)})" if known else "(ingest with --split-column)"))
        held = pool_df["article_id"].map(splits).eq("test")
        excluded[f"held out: the test split of '{o.holdout_split}'"] = int(held.sum())
        pool_df = pool_df[~held].reset_index(drop=True)
    return Candidates(oracle, prompt_sha, pool_df, pool_df, excluded, {}, imported=imported)


def selectable(df: pd.DataFrame) -> int:
    """How many articles a selection can hold: one per near-duplicate cluster (--target-size all)."""
    return int(df["near_dup_cluster"].nunique() + df["near_dup_cluster"].isna().sum())


def draw_pool_test(o: SelectOptions, plan: Plan, cand: Candidates) -> None:
    """--test-from pool (the default): the test split is a seeded uniform sample of the eligible pool,
    near-duplicate clusters whole, drawn before any strategy picks, so the student's test figures are
    those of the articles it will meet; the test articles and their cluster mates leave the pool.
    Not with a --holdout-split (the dataset's own test split is the test), --extend (the extended
    selection's test split stays) or --test-ratio 0."""
    total = selectable(cand.pool_df) if o.target_size == "all" else o.target_size
    n_test = int(splits.split_sizes(total, plan.ratios)[2])
    if o.test_from != "pool" or o.holdout_split or o.extend or n_test == 0:
        return
    df = cand.pool_df
    unit = df["near_dup_cluster"].astype(object).where(df["near_dup_cluster"].notna(), "a:" + df["article_id"])
    sizes = unit.value_counts()
    rng = np.random.default_rng(o.seed)
    taken: list = []
    count = 0
    for u in rng.permutation(np.array(sorted(sizes.index, key=str), dtype=object)):
        if count + sizes[u] <= n_test:
            taken.append(u)
            count += int(sizes[u])
        if count == n_test:
            break
    cand.test_ids = sorted(df.loc[unit.isin(taken), "article_id"])
    cand.pool_df = drop_with_cluster_mates(df, set(cand.test_ids), cand.excluded,
                                           "drawn for the test split (--test-from pool: a uniform sample of the pool)")


def narrow_candidates(conn: sqlite3.Connection, o: SelectOptions, plan: Plan, cand: Candidates) -> None:
    """--extend (its members stay out), the student's own training articles (a strategy driven by
    its error never picks them), the student's error, and the difficulty filter."""
    if o.extend:
        cand.kept = extended_members(conn, o.extend, cand.oracle)
        missing = sorted(set(cand.kept) - set(cand.pool_df["article_id"]))
        if missing:
            raise SelectError(f"--extend {o.extend}: {len(missing)} of its articles have no {cand.oracle} label in "
                              f"this label set, e.g. {missing[0]} (extend a selection of the same labels)")
        cand.pool_df = drop_with_cluster_mates(cand.pool_df, set(cand.kept), cand.excluded,
                                               f"already in '{o.extend}' (extended) or a near-duplicate of one")
    if plan.strategy.uses_student_error and o.model_predictions:
        trained = student_training_split(conn, o.model_predictions)
        if trained:
            cand.pool_df = drop_with_cluster_mates(cand.pool_df, trained, cand.excluded,
                                                   "in the student's own training split (or a near-duplicate)")
    if o.model_predictions:
        predictions, cand.predictions_from = load_predictions(conn, o.model_predictions, plan.filt.dimension_names)
        cand.error = student_error(cand.pool_df, predictions, plan.dims)
    if o.filter_by_difficulty:
        measures = [disagreement(conn, plan.filt, cand.pool_df, cand.oracle, cand.prompt_sha, plan.dims)]
        if cand.error is not None:
            measures.append(cand.error)
        difficulty = pd.concat(measures, axis=1).mean(axis=1, skipna=True)
        keep = difficulty_filter(cand.pool_df, difficulty, o.filter_by_difficulty)
        cand.excluded[f"difficulty filter ({o.filter_by_difficulty} half kept)"] = int((~keep).sum())
        cand.pool_df = cand.pool_df[keep].reset_index(drop=True)
        if cand.error is not None:
            cand.error = cand.error[keep].reset_index(drop=True)


def solve_and_split(o: SelectOptions, plan: Plan, cand: Candidates) -> ReportContext:
    """The program's answer, its train/val/test splits and the random and greedy baselines."""
    size = o.target_size - len(cand.test_ids)   # what the strategy picks (train and val when the test came from the pool)
    explore = 0 if plan.strategy.uniform else int(round(o.exploration_share * size))
    pool, _ = program_pool(cand.pool_df, plan.dims, plan.edges, plan.filt.tier_names,
                           cand.error if plan.strategy.uses_student_error else None)
    program = build_program(plan.strategy, plan.edges, size - explore, plan.filt.tier_names, pool,
                            tier_shares=plan.tier_shares, max_per_source=o.max_per_source)
    try:
        if plan.strategy.uniform:   # random: a seeded uniform sample, no program
            chosen, groups, solution = solver.choose_uniform(pool, program, size, seed=o.seed)
        else:
            chosen, groups, solution = solver.choose(pool, program, seed=o.seed, time_limit=o.time_limit)
            if explore:   # --exploration-share: the rest drawn uniformly from what the program left
                chosen = solver.add_uniform(pool, chosen, explore, seed=o.seed)
    except solver.SelectionError as e:
        raise SelectError(f"{e} ({cand.oracle} labels of {plan.filt.id}, pool {len(cand.pool_df)})") from None
    picked = np.flatnonzero(chosen)
    unit = np.where(pool.cluster[picked] >= 0, pool.cluster[picked] + pool.size, picked)
    ratios = plan.ratios if not cand.test_ids else (plan.ratios[0], plan.ratios[1], 0.0)
    ratios = tuple(r / sum(ratios) for r in ratios)
    split_idx = splits.assign_splits(pool.bins[picked], unit, ratios, o.seed)
    split_of = pd.Series(np.array(splits.SPLITS)[split_idx], index=cand.pool_df["article_id"].to_numpy()[picked])
    if cand.test_ids:
        split_of = pd.concat([split_of, pd.Series("test", index=cand.test_ids, dtype=object)])
    if cand.kept:  # the picks join the extended selection's train split; its val and test stay as they are
        split_of = pd.concat([pd.Series(cand.kept, dtype=object), pd.Series("train", index=split_of.index, dtype=object)])
    randoms = [solver.random_subset(pool.size, size, o.seed + r) for r in range(RANDOM_SUBSETS)]
    random_objs = [solver.objective_value(pool.bins, m.astype(np.int64), pool.weight, program) for m in randoms]
    greedy_counts = solver.greedy_fill(groups, program,
                                    tiebreak=np.random.default_rng(o.seed).permutation(groups.count).astype(float))
    greedy_mask = solver.pick_articles(pool, groups, greedy_counts, o.seed) if greedy_counts is not None else None
    greedy_obj = (solver.objective_value(groups.bins, greedy_counts, groups.weight, program)
                  if greedy_counts is not None else None)
    return ReportContext(filt=plan.filt, dims=plan.dims, edges=plan.edges, strategy=plan.strategy, program=program,
                         pool_df=cand.pool_df, pool=pool, chosen=chosen, split_of=split_of, solution=solution,
                         randoms=randoms, random_objs=random_objs, greedy_mask=greedy_mask, greedy_obj=greedy_obj,
                         excluded=cand.excluded, oracle=cand.oracle, name=plan.name,
                         params=selection_params(o, plan, cand, program, solution), output_dir=o.output_dir,
                         error=cand.error, all_rows=cand.all_rows)


def selection_params(o: SelectOptions, plan: Plan, cand: Candidates, program: solver.Program,
                     solution: solver.Solution) -> dict:
    """The selection's parameters as stored in gt.db (selections.params_json) and quoted by its files."""
    return {
        "target_size": o.target_size, "strategy": plan.strategy.name, "dimensions": plan.dims,
        "bins": plan.edges.tolist(), "ratios": list(plan.ratios), "seed": o.seed, "max_per_source": o.max_per_source,
        "tier_shares": plan.tier_shares, "tier_min": program.tier_min.tolist(), "tier_max": program.tier_max.tolist(),
        "filter_by_difficulty": o.filter_by_difficulty, "model_predictions": cand.predictions_from,
        "prompt_sha256": cand.prompt_sha, "time_limit": o.time_limit, "labeled_file": o.labeled_file,
        "holdout_split": o.holdout_split, "test_from": "pool" if cand.test_ids else (
            "holdout split" if o.holdout_split else "selection"), "test_size": len(cand.test_ids) or None,
        "exploration_share": o.exploration_share, "format": o.format, "extends": o.extend, "extended_members": len(cand.kept),
        "gap": solution.gap, "groups": solution.groups, "proven_by": solution.proven_by,
    }


def write_selection(conn: sqlite3.Connection, o: SelectOptions, ctx: ReportContext, cand: Candidates,
                    started: float) -> Result:
    """Every file staged first, then the selection in one transaction, then the renames."""
    out_dir = Path(o.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".select-", dir=out_dir))
    try:
        files = write_files(conn, ctx, staging)
        with store.transaction(conn):
            selection_id = save_selection(conn, ctx, time.perf_counter() - started)
        for f in files:
            os.replace(staging / f, out_dir / f)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    removed = remove_stale_splits(out_dir, o.format)
    counts = ctx.split_of.value_counts().reindex(list(splits.SPLITS), fill_value=0).to_dict()
    return Result(name=ctx.name, selection_id=selection_id, output_dir=out_dir, pool_size=len(ctx.pool_df),
                  size=len(ctx.split_of), solution=ctx.solution, split_counts=counts,
                  random_objective=float(np.mean(ctx.random_objs)), greedy_objective=ctx.greedy_obj,
                  oracle=ctx.oracle, files=files, imported=cand.imported, removed=removed)


# ---- the options, checked (a bad one is a usage error: exit 2) --------------------------------

def parse_bins(text: str) -> np.ndarray:
    """--bins as lower edges (gt.selection.program.parse_bins); a bad list is a usage error (exit 2)."""
    try:
        return bins.parse_bins(text)
    except ValueError as e:
        raise errors.UsageError(str(e)) from None


def parse_tier_shares(text: str | None, tier_names: list[str]) -> dict[str, tuple[float, float]] | None:
    """'impact=0.1:0.4,not_uplifting=:0.6' -> {tier: (min share, max share)}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, _, rng = part.partition("=")
        name = name.strip()
        if name not in tier_names:
            raise errors.UsageError(f"--tier-shares: unknown tier '{name}' (tiers: {', '.join(tier_names)})")
        lo_s, _, hi_s = rng.partition(":")
        try:
            lo = float(lo_s) if lo_s.strip() else 0.0
            hi = float(hi_s) if hi_s.strip() else 1.0
        except ValueError:
            raise errors.UsageError(f"--tier-shares: '{part}' must read tier=min:max with shares 0-1") from None
        if not (0 <= lo <= hi <= 1):
            raise errors.UsageError(f"--tier-shares: '{part}' must have 0 <= min <= max <= 1")
        out[name] = (lo, hi)
    return out


def parse_dimensions(text: str | None, names: list[str]) -> list[str]:
    if not text:
        return list(names)
    dims = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in dims if d not in names]
    if unknown:
        raise errors.UsageError(f"--dimensions: unknown dimension '{unknown[0]}' (the filter has: {', '.join(names)})")
    if len(set(dims)) != len(dims):
        raise errors.UsageError("--dimensions: a dimension is listed twice")
    return dims


def check_ratios(train: float, val: float, test: float) -> tuple[float, float, float]:
    ratios = (train, val, test)
    if any(r < 0 for r in ratios) or train <= 0:
        raise errors.UsageError(f"--train-ratio/--val-ratio/--test-ratio must be >= 0 with train > 0 (got {train}, {val}, {test})")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise errors.UsageError(f"--train-ratio + --val-ratio + --test-ratio = {sum(ratios):g}, they must sum to 1")
    return ratios


# ---- gt.db: other selections, the student's training split, the selection itself -------------

def extended_members(conn: sqlite3.Connection, name: str, oracle: str) -> dict[str, str]:
    """--extend: the selection's members and their splits."""
    row = conn.execute("SELECT id, oracle FROM selections WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM selections ORDER BY id DESC LIMIT 5")]
        raise errors.UsageError(f"--extend {name}: no selection by that name in gt.db"
                             + (f" (recent: {', '.join(known)})" if known else " (make select first)"))
    if row["oracle"] != oracle:
        raise errors.UsageError(f"--extend {name}: it was selected from {row['oracle']}'s labels, this run uses "
                             f"{oracle}'s (pass --oracle {row['oracle']})")
    return {r[0]: r[1] for r in conn.execute("SELECT article_id, split FROM selection_members WHERE selection_id = ?",
                                             (row["id"],))}


def student_training_split(conn: sqlite3.Connection, model_id: str) -> set[str]:
    """The articles a model in gt.db was trained on (its selection's train split); empty for a
    predictions file or a model without a recorded selection."""
    return {r[0] for r in conn.execute(
        """SELECT sm.article_id FROM models m JOIN selection_members sm ON sm.selection_id = m.selection_id
           WHERE m.id = ? AND sm.split = 'train'""", (model_id,))}


def save_selection(conn: sqlite3.Connection, ctx: ReportContext, seconds: float) -> int:
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


# ---- command line -----------------------------------------------------------------------------
