"""Calibrate stage: before paying for 20k labels, label a seeded random sample with several models
and decide from evidence which one should label (step 1 of the workflow:
`make calibrate MODELS=gemini-flash,gemini-pro SAMPLE=200 SEED=42`).

Labels go into gt.db through the label stage's `label_articles` as calibration runs (purpose
'calibrate'), keyed by (filter, oracle, prompt hash, repeat) like every label: a later `label`
run with the same oracle and prompt reuses them, and labels already in gt.db (an earlier
calibration, an import) are never requested again. The comparison (stages/stats.py) covers every
model and every pair, per dimension and overall; the report leads with the recommendation: the
cheapest model whose agreement with the reference (the strongest model, or the consensus of three
or more) is within the thresholds given as flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from stages import stats, store
from stages.filters import Filter, FilterError, load_filter
from stages.human_labels import is_human
from stages.oracles.base import OracleSpec

PROJECT_ARTICLES = 20_000           # the size of the ground truth the projection prices
OFFLINE_PROVIDERS = ("local-embed", "local-llm")
OFFLINE_SENTENCE = ("local-embed and local-llm are offline stand-ins, not substitutes for a real LLM: "
                    "their agreement figures exercise the pipeline, they say nothing about a paid model.")
MOST_DISAGREEING = 5


@dataclass(frozen=True)
class Thresholds:
    """What 'agrees well enough with the reference' means. Defaults, and why:
    - mean Spearman over the dimensions >= 0.70: a strong rank agreement; below it the two models
      would fill the selection's score bins with different articles;
    - mean MAE <= 1.0 point: within one half of a scale anchor band (anchors are 2 points wide), so
      an article rarely changes band between the models;
    - tier agreement >= 70%: with three tiers, chance agreement on typical news is ~40-60%;
    - invalid-answer rate <= 5%: invalid answers are lost articles (re-asked once), above 5% they
      cost money and bias the sample towards what the model finds easy to answer;
    - at least 20 articles scored by both: fewer and the figures are noise."""
    min_spearman: float = 0.70
    max_mae: float = 1.0
    min_tier_agreement: float = 0.70
    max_invalid_rate: float = 0.05
    min_articles: int = 20


@dataclass
class Rater:
    """One model's labels of the sample."""
    name: str
    spec: OracleSpec | None                 # None: labels found in gt.db, the oracle is not in oracles.yaml
    prompt_sha256: str
    scores: pd.DataFrame                    # index: sample article ids; columns: dimensions + overall (NaN: none)
    tiers: pd.Series                        # tier per article (None: no valid label)
    repeats: dict[int, pd.DataFrame]        # repeat -> scores (repeat 0 is `scores`)
    labels: pd.DataFrame                    # label rows of the sample, repeat 0 (status, cost, latency, tokens)
    labels_per_second: float | None = None  # throughput of the runs that made these labels (None: unknown)
    labelled_now: int = 0                   # labels this calibration paid for
    cost_now: float = 0.0

    @property
    def offline(self) -> bool:
        return self.spec is not None and self.spec.provider in OFFLINE_PROVIDERS

    @property
    def human(self) -> bool:
        """Imported human labels (ingest --labels): a gold standard, not a model."""
        return self.spec is None and is_human(self.prompt_sha256)

    def rating_matrix(self, column: str) -> np.ndarray:
        """Sample articles x repeats (rater slots) of one column; NaN where a slot has no rating."""
        return np.column_stack([self.repeats[k][column].to_numpy(dtype=float) for k in sorted(self.repeats)])


class CalibrationError(Exception):
    """The calibration cannot be done; the message is one line saying what to do."""


# ---- the sample ------------------------------------------------------------------------------

def draw_sample(conn: sqlite3.Connection, filt: Filter, size: int, seed: int,
                within: set[str] | None = None, within_note: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """A seeded random sample of labellable articles: no duplicates, one per near-duplicate cluster,
    not too short, not caught by the filter's prefilter (the label stage would skip those); with
    `within`, only those articles (e.g. the ones a human gold set labelled). The order is the label
    stage's (sha256 of seed and id), so a larger sample contains a smaller one."""
    from stages.labelling import eligible_article_ids

    ordered = eligible_article_ids(conn, filt, seed=seed, random_sample=True)
    rows = {r["id"]: r for r in conn.execute(
        "SELECT id, title, text, near_dup_cluster FROM articles WHERE dup_of IS NULL AND too_short = 0")}
    total = conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
    seen_clusters: set[str] = set()
    pool: list[str] = []
    prefiltered = near_dups = 0
    outside = 0
    for aid in ordered:
        row = rows.get(aid)
        if row is None:
            continue
        if within is not None and aid not in within:
            outside += 1
            continue
        cluster = row["near_dup_cluster"]
        if cluster:
            if cluster in seen_clusters:
                near_dups += 1
                continue
            seen_clusters.add(cluster)
        if filt.prefilter_reason(row["title"] or "", row["text"] or ""):
            prefiltered += 1
            continue
        pool.append(aid)
    info = {"requested": size, "seed": seed, "articles_in_db": int(total), "pool": len(pool),
            "skipped_short_or_duplicate": int(total) - len(ordered), "skipped_near_duplicate": near_dups,
            "skipped_prefilter": prefiltered, "note": None}
    if within is not None:
        info["within"] = within_note
        info["skipped_outside"] = outside
    if size > len(pool):
        info["note"] = (f"asked for {size} articles but only {len(pool)} are eligible "
                        f"(of {total} in gt.db): the sample is the whole pool")
    sample = pool[:size]
    info["used"] = len(sample)
    return sample, info


# ---- collecting labels -----------------------------------------------------------------------

def known_oracles(conn: sqlite3.Connection, filt: Filter, registry: dict[str, OracleSpec]) -> list[str]:
    labelled = [r[0] for r in conn.execute("SELECT DISTINCT oracle FROM labels WHERE filter_id = ?", (filt.id,))]
    return sorted(set(registry) | set(labelled))


def resolve_models(conn: sqlite3.Connection, filt: Filter, names: Sequence[str],
                   registry: dict[str, OracleSpec]) -> dict[str, OracleSpec | None]:
    """name -> spec, or None for an oracle known only from labels in gt.db (e.g. imported).
    Raises UnknownOracle listing every known name."""
    from stages.oracles.registry import UnknownOracle, resolve

    labelled = {r[0] for r in conn.execute("SELECT DISTINCT oracle FROM labels WHERE filter_id = ?", (filt.id,))}
    out: dict[str, OracleSpec | None] = {}
    for name in names:
        try:
            out[name] = resolve(name, registry)
        except UnknownOracle:
            if name in labelled:
                out[name] = None
            else:
                raise UnknownOracle(
                    f"unknown model '{name}'; known: {', '.join(known_oracles(conn, filt, registry))} "
                    f"(oracles.yaml entries and oracles with labels in gt.db)") from None
    return out


def collect(conn: sqlite3.Connection, filt: Filter, name: str, spec: OracleSpec | None,
            sample: Sequence[str]) -> Rater:
    """Read one model's labels of the sample from gt.db (current prompt hash; for an oracle not in
    oracles.yaml, the prompt version it has the most labels of)."""
    prompt = filt.prompt_sha256
    if spec is None:
        _, prompt = store.choose_label_set(conn, filt, name)
    dims = filt.dimension_names
    frame = store.scores_frame(conn, filt, oracle=name, prompt_sha256=prompt, repeat=None)
    frame = frame[frame["article_id"].isin(set(sample))]
    repeats: dict[int, pd.DataFrame] = {}
    for rep, part in frame.groupby("repeat"):
        repeats[int(rep)] = part.set_index("article_id")[dims + ["overall"]].reindex(sample).astype(float)
    empty = pd.DataFrame(np.nan, index=pd.Index(sample, name="article_id"), columns=dims + ["overall"])
    scores = repeats.get(0, empty)
    first = frame[frame["repeat"] == 0].set_index("article_id")
    tiers = first["tier"].reindex(sample) if not first.empty else pd.Series([None] * len(sample), index=sample)
    tiers = tiers.astype(object).where(tiers.notna(), None)
    rows = pd.read_sql_query(
        """SELECT article_id, status, cost_usd, latency_ms, input_tokens, output_tokens, cached_tokens, attempts,
                  error, run_id
           FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ? AND "repeat" = 0""",
        conn, params=(filt.id, name, prompt))
    rows = rows[rows["article_id"].isin(set(sample))].reset_index(drop=True)
    return Rater(name, spec, prompt, scores, tiers, repeats, rows,
                 labels_per_second=run_throughput(conn, rows["run_id"].dropna().unique().tolist()))


MIN_RUN_SECONDS = 10   # run timestamps have one-second resolution: shorter runs say little about speed


def run_throughput(conn: sqlite3.Connection, run_ids: Sequence[int]) -> float | None:
    """Labels per second of the given label runs together (all their labels, wall time from start
    to finish), or None when they are too short to measure or were imports."""
    if not run_ids:
        return None
    marks = ",".join("?" * len(run_ids))
    row = conn.execute(
        f"""SELECT SUM((julianday(finished_at) - julianday(started_at)) * 86400.0),
                   (SELECT COUNT(*) FROM labels WHERE run_id IN ({marks}))
            FROM label_runs WHERE id IN ({marks}) AND finished_at IS NOT NULL AND mode != 'import'""",
        [*map(int, run_ids), *map(int, run_ids)]).fetchone()
    seconds, count = row[0], row[1]
    if not seconds or seconds < MIN_RUN_SECONDS or not count:
        return None
    return count / seconds


def label_sample(conn: sqlite3.Connection, filt: Filter, specs: dict[str, OracleSpec | None],
                 sample: Sequence[str], *, repeats: int = 1, concurrency: int = 16, max_cost: float | None = None,
                 seed: int = 42, timeout: float | None = None, progress: bool = True,
                 log=None) -> dict[str, Any]:
    """Label what is missing for every model with a spec (purpose 'calibrate'); returns
    name -> LabelRunSummary. `max_cost` is the budget for all models together."""
    from stages.labelling import label_articles

    summaries: dict[str, Any] = {}
    spent = 0.0
    for name, spec in specs.items():
        if spec is None:
            continue
        budget = None if max_cost is None else max(max_cost - spent, 0.0)
        if budget is not None and budget <= 0:
            summaries[name] = None
            if log:
                log(f"{name}: skipped, the --max-cost budget is spent")
            continue
        summary = label_articles(conn, filt, spec, list(sample), purpose="calibrate", repeats=repeats,
                                 concurrency=concurrency, max_cost=budget, seed=seed,
                                 params={"calibration_sample": len(sample), "seed": seed, "repeats": repeats},
                                 progress=progress, timeout=timeout)
        spent += summary.cost_usd
        summaries[name] = summary
        if log:
            stopped = f", stopped: {summary.stopped_reason} {summary.stopped_message}" if summary.stopped_reason else ""
            log(f"{name}: {summary.ok} ok, {summary.invalid} invalid, {summary.error} error labelled now, "
                f"{summary.skipped_existing} already in gt.db, ${summary.cost_usd:.4f}{stopped}")
    return summaries


# ---- the comparison --------------------------------------------------------------------------

def _jsonable(obj: Any) -> Any:
    if isinstance(obj, stats.Stat):
        return obj.to_dict()
    if isinstance(obj, stats.Redundancy):
        return obj.to_dict()
    if isinstance(obj, pd.DataFrame):
        return {str(r): {str(c): _jsonable(obj.loc[r, c]) for c in obj.columns} for r in obj.index}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def label_counts(r: Rater, sample_size: int) -> dict[str, Any]:
    status = r.labels["status"].value_counts()
    ok, invalid, error = (int(status.get(s, 0)) for s in ("ok", "invalid", "error"))
    answered = ok + invalid
    rate = (stats.Stat(invalid / answered, n=answered) if answered
            else stats.undefined("no answers" if not error else f"all {error} requests failed"))
    return {"ok": ok, "invalid": invalid, "error": error, "missing": sample_size - ok - invalid - error,
            "invalid_rate": rate}


def cost_and_speed(r: Rater, concurrency: int) -> dict[str, Any]:
    """Cost per article and latency from the label rows, and the projection for 20,000 articles
    at sync and batch prices, with the time the rate limits allow."""
    rows = r.labels[r.labels["status"].isin(["ok", "invalid"])]
    out: dict[str, Any] = {"answered": len(rows)}
    if rows.empty:
        out.update(cost_per_article=None, latency_p50_ms=None, latency_p95_ms=None, projection=None)
        return out
    mean = lambda col: float(pd.to_numeric(rows[col], errors="coerce").fillna(0).mean())
    out["cost_per_article"] = mean("cost_usd")
    out["input_tokens_per_article"] = mean("input_tokens")
    out["output_tokens_per_article"] = mean("output_tokens")
    out["cached_tokens_per_article"] = mean("cached_tokens")
    out["latency_p50_ms"] = stats.percentile(rows["latency_ms"], 50)
    out["latency_p95_ms"] = stats.percentile(rows["latency_ms"], 95)
    spec = r.spec
    if spec is None:
        out["projection"] = None
        return out
    n = PROJECT_ARTICLES
    tin, tout, tcached = (out[k] for k in ("input_tokens_per_article", "output_tokens_per_article",
                                           "cached_tokens_per_article"))
    sync = spec.cost(tin, tout, tcached) * n
    batch = spec.cost(tin, tout, tcached, batch=True) * n if spec.batch_input_per_m is not None else None
    limits = []
    if spec.rpm:
        limits.append(n / spec.rpm * 60)
    if spec.tpm:
        limits.append(n * (tin + tout) / spec.tpm * 60)
    at_limit = max(limits) if limits else None
    if r.labels_per_second:
        measured, how = n / r.labels_per_second, "measured throughput of the runs that made the sample's labels"
    else:
        # no run long enough to time: median latency, `concurrency` requests in flight (offline: one at a time)
        parallel = 1 if r.offline else max(concurrency, 1)
        measured = n * (out["latency_p50_ms"] or 0.0) / 1000 / parallel
        how = f"median latency with {parallel} request(s) in flight"
    out["projection"] = {
        "articles": n, "cost_sync_usd": sync, "cost_batch_usd": batch,
        "seconds_at_rate_limit": at_limit, "seconds_measured": measured, "measured_by": how,
        "seconds": max(x for x in (at_limit, measured) if x is not None),
        "rpm": spec.rpm, "tpm": spec.tpm, "labels_per_second": r.labels_per_second,
    }
    return out


def compare_pair(a: pd.DataFrame, b: pd.DataFrame, columns: Sequence[str], names: tuple[str, str], *,
                 n_boot: int, seed: int) -> dict[str, dict[str, stats.Stat]]:
    return {c: stats.agreement(a[c].to_numpy(), b[c].to_numpy(), names=names, n_boot=n_boot, seed=seed)
            for c in columns}


def summarise(per_dim: dict[str, dict[str, stats.Stat]], dims: Sequence[str]) -> dict[str, stats.Stat]:
    """Means over the filter's dimensions (overall excluded) of each statistic."""
    names = next(iter(per_dim.values())).keys()
    return {s: stats.mean_of({d: per_dim[d][s] for d in dims}) for s in names}


def disagreements(a: Rater | pd.DataFrame, b: Rater | pd.DataFrame, dims: Sequence[str],
                  titles: dict[str, str], k: int = MOST_DISAGREEING) -> list[dict[str, Any]]:
    fa = a.scores if isinstance(a, Rater) else a
    fb = b.scores if isinstance(b, Rater) else b
    diff = (fa[dims] - fb[dims]).abs().mean(axis=1).dropna().sort_values(ascending=False, kind="stable")
    out = []
    for aid in diff.index[:k]:
        out.append({"article_id": aid, "title": titles.get(aid, ""), "mean_abs_diff": float(diff[aid]),
                    "a": [float(v) for v in fa.loc[aid, dims]], "b": [float(v) for v in fb.loc[aid, dims]]})
    return out


def tier_of(filt: Filter, frame: pd.DataFrame) -> pd.Series:
    return frame["overall"].map(lambda v: filt.tier(v) if pd.notna(v) else None).astype(object)


def compare(filt: Filter, raters: list[Rater], *, reference: str | None, sample_info: dict, titles: dict[str, str],
            thresholds: Thresholds, n_boot: int = stats.DEFAULT_BOOT, seed: int = 42, concurrency: int = 16,
            repeats: int = 1) -> dict[str, Any]:
    """Every figure of the calibration report, as plain data (Stat objects and frames inside)."""
    dims = filt.dimension_names
    columns = dims + ["overall"]
    tier_names = list(reversed(filt.tier_names))   # lowest tier first
    n_sample = sample_info["used"]
    models: dict[str, Any] = {}
    for r in raters:
        entry: dict[str, Any] = {
            "offline": r.offline, "in_oracles_yaml": r.spec is not None, "prompt_sha256": r.prompt_sha256,
            "provider": r.spec.provider if r.spec else None, "model": r.spec.model if r.spec else None,
            "prices_per_m": ({"input": r.spec.input_per_m, "output": r.spec.output_per_m,
                              "batch_input": r.spec.batch_input_per_m, "batch_output": r.spec.batch_output_per_m}
                             if r.spec else None),
            "labels": label_counts(r, n_sample), "labelled_now": r.labelled_now, "cost_now_usd": r.cost_now,
        }
        entry.update(cost_and_speed(r, concurrency))
        entry["distribution"] = {c: stats.distribution(r.scores[c]) for c in columns}
        entry["tiers"] = stats.tier_distribution(r.tiers.tolist(), tier_names)
        entry["redundancy"] = stats.redundancy(r.scores[dims])
        if len(r.repeats) >= 2:   # several ratings per article (human raters, or an LLM's repeats)
            per = {c: stats.inter_rater(r.rating_matrix(c), n_boot=n_boot, seed=seed) for c in columns}
            entry["inter_rater"] = {
                "per_dimension": per,
                "summary": {k: stats.mean_of({d: per[d][k] for d in dims}) for k in ("alpha", "icc1", "mae_vs_others")},
                "slots": len(r.repeats),
            }
        if repeats > 1:
            sc = {}
            for rep in range(1, repeats):
                other = r.repeats.get(rep)
                if other is None:
                    other = pd.DataFrame(np.nan, index=r.scores.index, columns=columns)
                per = compare_pair(r.scores, other, columns, (f"{r.name} r0", f"{r.name} r{rep}"),
                                   n_boot=n_boot, seed=seed)
                sc[f"r0_vs_r{rep}"] = {"per_dimension": per, "summary": summarise(per, dims),
                                       "tier_agreement": stats.tier_agreement(r.tiers.tolist(),
                                                                              tier_of(filt, other).tolist())}
            entry["self_consistency"] = sc
        models[r.name] = entry

    pairs = []
    for ra, rb in combinations(raters, 2):
        per = compare_pair(ra.scores, rb.scores, columns, (ra.name, rb.name), n_boot=n_boot, seed=seed)
        pairs.append({
            "a": ra.name, "b": rb.name, "per_dimension": per, "summary": summarise(per, dims),
            "tier_confusion": stats.tier_confusion(ra.tiers.tolist(), rb.tiers.tolist(), tier_names),
            "tier_agreement": stats.tier_agreement(ra.tiers.tolist(), rb.tiers.tolist()),
            "most_disagreeing": disagreements(ra, rb, dims, titles),
        })

    cons = None
    if len(raters) >= 3:
        frame = stats.consensus([r.scores[dims] for r in raters])
        # the consensus' overall and tier come from its dimension medians, through the filter's arithmetic
        # (content-type caps need a content type, which a median does not have: they are not applied)
        overall = frame.apply(lambda row: filt.overall(row.to_dict()) if row.notna().all() else np.nan, axis=1)
        frame["overall"] = overall
        cons_tiers = tier_of(filt, frame)
        vs = {}
        for r in raters:
            per = compare_pair(r.scores, frame, columns, (r.name, "consensus"), n_boot=n_boot, seed=seed)
            vs[r.name] = {"per_dimension": per, "summary": summarise(per, dims),
                          "tier_agreement": stats.tier_agreement(r.tiers.tolist(), cons_tiers.tolist()),
                          "tier_confusion": stats.tier_confusion(r.tiers.tolist(), cons_tiers.tolist(), tier_names),
                          "most_disagreeing": disagreements(r, frame, dims, titles)}
        cons = {"frame": frame, "tiers": stats.tier_distribution(cons_tiers.tolist(), tier_names),
                "articles": int(frame[dims].notna().all(axis=1).sum()), "vs": vs,
                "note": "per-dimension median of the models that answered (at least 2); overall and tier "
                        "from the medians with the filter's weights and gatekeepers (no content-type caps)"}

    result = {"filter": filt.id, "prompt_sha256": filt.prompt_sha256, "dimensions": dims, "tier_names": tier_names,
              "sample": sample_info, "models": models, "pairs": pairs, "consensus": cons,
              "thresholds": dataclasses.asdict(thresholds), "bootstrap_resamples": n_boot, "seed": seed,
              "repeats": repeats}
    result["reference"] = reference
    result["recommendation"] = recommend(result, raters, thresholds)
    return result


def agreement_with_reference(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The summary of `name` against the reference: mean Spearman, mean MAE, tier agreement, n."""
    ref = result["reference"]
    if ref == "consensus":
        vs = (result.get("consensus") or {}).get("vs", {}).get(name)
        if vs is None:
            return None
        summary, tiers = vs["summary"], vs["tier_agreement"]
        n = vs["per_dimension"][result["dimensions"][0]]["mae"].n
    elif name == ref:
        return {"self": True}
    else:
        pair = next((p for p in result["pairs"] if {p["a"], p["b"]} == {name, ref}), None)
        if pair is None:
            return None
        summary, tiers = pair["summary"], pair["tier_agreement"]
        n = pair["per_dimension"][result["dimensions"][0]]["mae"].n
    return {"self": False, "spearman": summary["spearman"], "mae": summary["mae"], "tier_agreement": tiers,
            "bias": summary["bias"], "n": n}


def recommend(result: dict[str, Any], raters: list[Rater], t: Thresholds) -> dict[str, Any]:
    """The cheapest model whose agreement with the reference is within the thresholds, and for
    every model the numbers and the reasons it qualified or not."""
    rows = []
    for r in raters:
        m = result["models"][r.name]
        proj = m.get("projection") or {}
        prices = [x for x in (proj.get("cost_sync_usd"), proj.get("cost_batch_usd")) if x is not None]
        cost = min(prices) if prices else None
        reasons: list[str] = []
        invalid = m["labels"]["invalid_rate"]
        valid = m["labels"]["ok"]
        if valid == 0:
            reasons.append("no valid answers")
        elif invalid.defined and invalid.value > t.max_invalid_rate:
            reasons.append(f"invalid rate {invalid.value:.1%} > {t.max_invalid_rate:.0%}")
        ag = agreement_with_reference(result, r.name)
        if ag is None:
            reasons.append("no comparison with the reference")
        elif not ag["self"] and valid:
            if ag["n"] < t.min_articles:
                reasons.append(f"only {ag['n']} articles scored by both (need {t.min_articles})")
            s = ag["spearman"]
            if not s.defined:
                reasons.append(f"Spearman {s.fmt()}")
            elif s.value < t.min_spearman:
                reasons.append(f"mean Spearman {s.value:.2f} < {t.min_spearman:.2f}")
            mae = ag["mae"]
            if not mae.defined:
                reasons.append(f"MAE {mae.fmt()}")
            elif mae.value > t.max_mae:
                reasons.append(f"mean MAE {mae.value:.2f} > {t.max_mae:.2f}")
            ta = ag["tier_agreement"]
            if not ta.defined:
                reasons.append(f"tier agreement {ta.fmt()}")
            elif ta.value < t.min_tier_agreement:
                reasons.append(f"tier agreement {ta.value:.0%} < {t.min_tier_agreement:.0%}")
        if r.spec is None:
            reasons.append("not in oracles.yaml (labels only, cannot label more)")
        rows.append({"model": r.name, "cost_20k_usd": cost, "agreement": ag, "invalid_rate": invalid,
                     "qualifies": not reasons, "reasons": reasons, "offline": r.offline,
                     "is_reference": r.name == result["reference"]})
    order = {r.name: i for i, r in enumerate(raters)}
    qualifying = sorted((row for row in rows if row["qualifies"]),
                        key=lambda row: (row["cost_20k_usd"] if row["cost_20k_usd"] is not None else math.inf,
                                         order[row["model"]]))
    chosen = qualifying[0]["model"] if qualifying else None
    if all(r.spec is None for r in raters):
        kinds = "human label sets" if all(r.human for r in raters) else "label sets already in gt.db"
        ref = result["reference"]
        verdict = (f"Nothing to recommend: {', '.join(r.name for r in raters)} are {kinds}, not models that can label "
                   f"more; below is how they agree with {'their consensus' if ref == 'consensus' else ref} and "
                   f"with each other. Add a model to --models to judge it against them.")
    elif chosen is None:
        why = "; ".join(f"{row['model']}: {', '.join(row['reasons'])}" for row in rows)
        verdict = f"No model qualifies ({why}). Do not start the 20k run yet: revise the prompt or try other models."
    else:
        row = qualifying[0]
        cost = f"${row['cost_20k_usd']:,.2f}" if row["cost_20k_usd"] is not None else "an unknown cost"
        if row["is_reference"]:
            others = [o for o in rows if not o["is_reference"]]
            failed = [o for o in others if not o["qualifies"]]
            if failed and len(failed) == len(others):
                why = "; ".join(f"{o['model']}: {', '.join(o['reasons'])}" for o in failed)
                verdict = f"Label with {chosen}, the reference model: no other model agrees with it within the thresholds ({why})"
            else:
                verdict = (f"Label with {chosen}, the reference model: the models that agree with it within the thresholds "
                           f"do not cost less")
            verdict += f"; projected cost for {PROJECT_ARTICLES:,} articles {cost}."
        else:
            ag = row["agreement"]
            against = "the consensus" if result["reference"] == "consensus" else result["reference"]
            verdict = (f"Label with {chosen}: the cheapest model within the thresholds against {against} "
                       f"(mean Spearman {ag['spearman'].value:.2f}, mean MAE {ag['mae'].value:.2f}, tier agreement "
                       f"{ag['tier_agreement'].value:.0%}, invalid rate {_share(row['invalid_rate'])}); "
                       f"projected cost for {PROJECT_ARTICLES:,} articles {cost}.")
        if row["offline"]:
            verdict += (f" {chosen} is an offline stand-in: to choose the model for real labels, calibrate paid "
                        f"models (e.g. --models gemini-flash,gemini-pro).")
    return {"model": chosen, "verdict": verdict, "rows": rows, "reference": result["reference"]}


def check_strongest(names: Sequence[str], requested: str | None) -> None:
    if not requested:
        return
    if requested != "consensus" and requested not in names:
        raise CalibrationError(f"--strongest {requested} is not one of --models ({', '.join(names)}) "
                               f"(pass one of them, or 'consensus')")
    if requested == "consensus" and len(names) < 3:
        raise CalibrationError("--strongest consensus needs at least three models (add models to --models)")


def choose_reference(raters: list[Rater], requested: str | None) -> tuple[str, str]:
    """(reference, why it is the reference): --strongest, else the first imported human label set
    listed (a gold standard outranks any model), else the consensus with three or more models, else
    the model with the highest price per article (list prices on the sample's measured tokens;
    ties: the first listed)."""
    names = [r.name for r in raters]
    if requested:
        check_strongest(names, requested)
        return requested, "chosen with --strongest"
    humans = [r.name for r in raters if r.human]
    if humans:
        return humans[0], ("imported human labels, the gold standard" + (" (the first listed of " + ", ".join(humans)
                           + ")" if len(humans) > 1 else "") + "; pass --strongest NAME to choose")
    if len(raters) >= 3:
        return "consensus", "three or more models: their per-dimension median; pass --strongest NAME to use one model"

    def price(r: Rater) -> float:
        if r.spec is None:
            return -1.0
        rows = r.labels[r.labels["status"].isin(["ok", "invalid"])]
        tin = float(pd.to_numeric(rows["input_tokens"], errors="coerce").fillna(0).mean()) if len(rows) else 2000.0
        tout = float(pd.to_numeric(rows["output_tokens"], errors="coerce").fillna(0).mean()) if len(rows) else 300.0
        return r.spec.cost(tin, tout)
    prices = {r.name: price(r) for r in raters}
    best = max(prices.values())
    top = [n for n in names if prices[n] == best]
    if len(top) > 1:
        return top[0], (f"{', '.join(top)} cost the same per article: the first listed in --models; "
                        f"pass --strongest NAME to choose")
    return top[0], "the highest price per article, taken as the strongest; pass --strongest NAME to choose"


# ---- the report ------------------------------------------------------------------------------

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _money(v: float | None) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "$0"
    return f"${v:,.2f}" if v >= 1 else f"${v:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _share(stat: stats.Stat) -> str:
    return f"{stat.value:.0%}" if stat.defined else stat.fmt()


def _ms(v: float | None) -> str:
    return "—" if v is None else (f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s")


def plot_files(result: dict[str, Any], raters: list[Rater], stem: Path) -> dict[str, str]:
    """Histograms, per-pair scatter plots and per-model dimension correlation heatmaps, next to the
    report; returns label -> file name."""
    from matplotlib.figure import Figure

    from stages import report

    dims = result["dimensions"]
    columns = dims + ["overall"]
    files: dict[str, str] = {}
    panels = {c: {r.name: [result["models"][r.name]["distribution"][c]["histogram"][str(b)] for b in stats.SCORE_BINS]
                  for r in raters} for c in columns}
    path = stem.with_name(f"{stem.name}_histograms.png")
    report.histograms(panels, stats.SCORE_BINS, title="Score distribution per dimension (articles per score bin)",
                      path=path)
    files["histograms"] = path.name
    rng = np.random.default_rng(0)   # jitter only separates overlapping points on the half-point grid
    scatter_pairs = [(ra, rb.scores, rb.name) for ra, rb in combinations(raters, 2)]
    if result.get("consensus"):
        scatter_pairs += [(r, result["consensus"]["frame"], "consensus") for r in raters]
    for ra, fb, bname in scatter_pairs:
        ncols = 3
        nrows = math.ceil(len(columns) / ncols)
        fig = Figure(figsize=(3.1 * ncols, 3.0 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        pair = next((p for p in result["pairs"] if (p["a"], p["b"]) == (ra.name, bname)), None)
        per = pair["per_dimension"] if pair else result["consensus"]["vs"][ra.name]["per_dimension"]
        for k, c in enumerate(columns):
            ax = axes[k // ncols][k % ncols]
            x, y = ra.scores[c].to_numpy(dtype=float), fb[c].to_numpy(dtype=float)
            keep = np.isfinite(x) & np.isfinite(y)
            jx, jy = rng.uniform(-0.12, 0.12, keep.sum()), rng.uniform(-0.12, 0.12, keep.sum())
            ax.scatter(x[keep] + jx, y[keep] + jy, s=10, alpha=0.55)
            ax.plot([0, 10], [0, 10], color="grey", lw=0.8, ls="--")
            ax.set_xlim(-0.5, 10.5)
            ax.set_ylim(-0.5, 10.5)
            ax.set_title(f"{c}  ρ={per[c]['spearman'].fmt(ci=False)}", fontsize=8)
            ax.tick_params(labelsize=7)
            if k % ncols == 0:
                ax.set_ylabel(bname, fontsize=8)
            if k // ncols == nrows - 1:
                ax.set_xlabel(ra.name, fontsize=8)
        for k in range(len(columns), nrows * ncols):
            axes[k // ncols][k % ncols].set_visible(False)
        fig.suptitle(f"{ra.name} vs {bname} (one point per article, slightly jittered)")
        path = stem.with_name(f"{stem.name}_scatter_{_safe(ra.name)}_vs_{_safe(bname)}.png")
        report.save_figure(fig, path)
        files[f"scatter {ra.name} vs {bname}"] = path.name
    for r in raters:
        red = result["models"][r.name]["redundancy"]
        if len(red.dimensions) < 2:
            continue
        path = stem.with_name(f"{stem.name}_dimcorr_{_safe(r.name)}.png")
        fig = report.heatmap(red.correlation.to_numpy(dtype=float), red.dimensions, red.dimensions,
                             title=f"{r.name}: correlation between dimensions", cmap="RdBu_r", vmin=-1, vmax=1,
                             fmt="{:.2f}", colorbar_label="Pearson r")
        for label in fig.axes[0].get_xticklabels():   # long dimension names overlap when horizontal
            label.set_rotation(40)
            label.set_horizontalalignment("right")
        report.save_figure(fig, path)
        files[f"dimension correlation {r.name}"] = path.name
    return files


def render_markdown(result: dict[str, Any], raters: list[Rater], plots: dict[str, str], json_name: str) -> str:
    from stages.report import md_table

    dims = result["dimensions"]
    columns = dims + ["overall"]
    rec = result["recommendation"]
    t = Thresholds(**result["thresholds"])
    ref = result["reference"]
    names = [r.name for r in raters]
    sample = result["sample"]
    out: list[str] = []
    out.append(f"# Calibration of {result['filter']}: {', '.join(names)}\n")
    out.append(f"## Recommendation\n\n**{rec['verdict']}**\n")
    offline = [r.name for r in raters if r.offline]
    if offline:
        out.append(f"> **{OFFLINE_SENTENCE}** ({', '.join(offline)} in this calibration.)\n")
    ref_text = ("the consensus (per-dimension median) of the models" if ref == "consensus"
                else f"**{ref}**, the reference model")
    if result.get("reference_reason"):
        ref_text += f" ({result['reference_reason']})"
    out.append(f"Each model was compared with {ref_text}. A model qualifies when its mean Spearman over the "
               f"{len(dims)} dimensions is at least {t.min_spearman:.2f}, its mean absolute difference at most "
               f"{t.max_mae:.1f} point, it puts at least {t.min_tier_agreement:.0%} of articles in the same tier, "
               f"at most {t.max_invalid_rate:.0%} of its answers are invalid, and at least {t.min_articles} "
               f"articles were scored by both; the cheapest qualifying model is recommended "
               f"(flags --min-spearman, --max-mae, --min-tier-agreement, --max-invalid-rate, --min-articles).\n")
    rows = []
    for row in rec["rows"]:
        ag = row["agreement"] or {}
        if ag.get("self"):
            sp = mae = ta = "reference"
        elif ag:
            sp, mae, ta = ag["spearman"].fmt(ci=False), ag["mae"].fmt(ci=False), ag["tier_agreement"].fmt(ci=False)
            if ag["tier_agreement"].defined:
                ta = f"{ag['tier_agreement'].value:.0%}"
        else:
            sp = mae = ta = "—"
        rows.append([row["model"], _money(row["cost_20k_usd"]), sp, mae, ta, row["invalid_rate"].fmt(ci=False)
                     if not row["invalid_rate"].defined else f"{row['invalid_rate'].value:.1%}",
                     "yes" if row["qualifies"] else "no: " + "; ".join(row["reasons"])])
    out.append(md_table(["model", f"cost for {PROJECT_ARTICLES:,} (cheapest mode)", "mean Spearman", "mean MAE",
                         "tier agreement", "invalid rate", "qualifies"], rows, align="lrrrrrl"))
    note = f" {sample['note']}." if sample.get("note") else ""
    out.append(f"\nSample: {sample['used']} articles drawn with seed {sample['seed']} from {sample['pool']} eligible "
               f"(of {sample['articles_in_db']} in gt.db; skipped: {sample['skipped_short_or_duplicate']} too short or "
               f"duplicate, {sample['skipped_near_duplicate']} near-duplicates, {sample['skipped_prefilter']} caught "
               f"by the prefilter).{note}"
               + (f" The sample is {sample['within']}; {sample['skipped_outside']} other eligible articles were left "
                  f"out." if sample.get("within") else "")
               + f" Prompt {result['prompt_sha256'][:12]}. Every figure is in `{json_name}`.\n")

    # cost and speed
    out.append("## Cost, speed and answer quality\n")
    rows = []
    for r in raters:
        m = result["models"][r.name]
        lab = m["labels"]
        proj = m.get("projection") or {}
        rows.append([r.name, lab["ok"], lab["invalid"], lab["error"], lab["missing"],
                     lab["invalid_rate"].fmt(ci=False) if not lab["invalid_rate"].defined
                     else f"{lab['invalid_rate'].value:.1%}",
                     _money(m.get("cost_per_article")), _ms(m.get("latency_p50_ms")), _ms(m.get("latency_p95_ms")),
                     _money(proj.get("cost_sync_usd")),
                     _money(proj.get("cost_batch_usd")) if proj.get("cost_batch_usd") is not None else "no batch mode",
                     _duration(proj.get("seconds"))])
    out.append(md_table(["model", "valid", "invalid", "error", "no label", "invalid rate", "cost / article",
                         "latency p50", "latency p95", f"{PROJECT_ARTICLES:,} sync", f"{PROJECT_ARTICLES:,} batch",
                         f"{PROJECT_ARTICLES:,} time"], rows, align="lrrrrrrrrrrr"))
    out.append(f"\nCost per article is what the sample's labels cost (tokens as the provider reported them, at the "
               f"prices in oracles.yaml; cached prompt tokens included); the {PROJECT_ARTICLES:,} projection prices the "
               f"same mean tokens per article at sync and batch prices. Time is the slower of the rate limit "
               f"(RPM/TPM in oracles.yaml) and the measured speed: the throughput of the label runs that made the "
               f"sample's labels (at their concurrency; offline models answer one request at a time on this "
               f"machine), or the median latency where those runs were too short to time.\n")

    # agreement
    def agreement_table(per: dict[str, dict[str, stats.Stat]]) -> str:
        rows = []
        for c in columns:
            s = per[c]
            rows.append([c, s["spearman"].fmt(), s["pearson"].fmt(), s["mae"].fmt(), s["bias"].fmt(),
                         s["alpha"].fmt(), s["icc"].fmt(), s["mae"].n])
        return md_table(["dimension", "Spearman", "Pearson", "MAE", "bias (b − a)", "Krippendorff α", "ICC(A,1)", "n"],
                        rows, align="llllllll")

    out.append("## Agreement between models\n")
    out.append(f"Values with 95% bootstrap intervals ({result['bootstrap_resamples']} resamples of articles, seed "
               f"{result['seed']}); \"undefined (why)\" where the data cannot support a value (a constant rater, "
               f"too few articles scored by both). Bias is the mean of b − a.\n")
    for p in result["pairs"]:
        out.append(f"### a = {p['a']}, b = {p['b']}\n")
        out.append(agreement_table(p["per_dimension"]))
        sm = p["summary"]
        out.append(f"\nMean over the {len(dims)} dimensions: Spearman {sm['spearman'].fmt(ci=False)}, MAE "
                   f"{sm['mae'].fmt(ci=False)}, α {sm['alpha'].fmt(ci=False)}, ICC {sm['icc'].fmt(ci=False)}. "
                   f"Same tier: {_share(p['tier_agreement'])}.\n")
        key = f"scatter {p['a']} vs {p['b']}"
        if key in plots:
            out.append(f"![{key}]({plots[key]})\n")

    cons = result.get("consensus")
    if cons:
        out.append("## Consensus\n")
        out.append(f"The consensus is the {cons['note']}; {cons['articles']} articles have one.\n")
        rows = []
        for name, vs in cons["vs"].items():
            sm = vs["summary"]
            ta = vs["tier_agreement"]
            rows.append([name, sm["spearman"].fmt(ci=False), sm["mae"].fmt(ci=False), sm["bias"].fmt(ci=False),
                         sm["alpha"].fmt(ci=False), sm["icc"].fmt(ci=False),
                         f"{ta.value:.0%}" if ta.defined else ta.fmt()])
        out.append(md_table(["model vs consensus", "mean Spearman", "mean MAE", "mean bias", "mean α", "mean ICC",
                             "same tier"], rows, align="lllllll"))
        out.append("\nA model is part of the consensus it is compared with, which flatters every model a little.\n")
        for name, vs in cons["vs"].items():
            out.append(f"<details><summary>{name} vs consensus, per dimension</summary>\n\n"
                       f"{agreement_table(vs['per_dimension'])}\n</details>\n")
            key = f"scatter {name} vs consensus"
            if key in plots:
                out.append(f"![{key}]({plots[key]})\n")

    # tiers
    tier_names = result["tier_names"]
    out.append("## Tiers\n")
    rows = [[name] + [result["models"][name]["tiers"][tn] for tn in tier_names] for name in names]
    if cons:
        rows.append(["consensus"] + [cons["tiers"][tn] for tn in tier_names])
    out.append(md_table(["model"] + tier_names, rows))
    for p in result["pairs"]:
        m = p["tier_confusion"]
        out.append(f"\nTier confusion, rows {p['a']}, columns {p['b']}:\n")
        out.append(md_table([f"{p['a']} \\ {p['b']}"] + tier_names,
                            [[tn] + [int(m.loc[tn, c]) for c in tier_names] for tn in tier_names]))

    # distributions
    out.append("## Score distributions\n")
    out.append("Mean, standard deviation and the share of scores in the 4-7 band per dimension (a model that "
               "piles its scores in the middle cannot tell articles apart); counts per score in the histograms.\n")
    for r in raters:
        rows = []
        for c in columns:
            d = result["models"][r.name]["distribution"][c]
            hist = " ".join(str(d["histogram"][str(b)]) for b in stats.SCORE_BINS)
            share = d["share_4_7"]
            rows.append([c, d["n"], d["mean"].fmt(ci=False), d["sd"].fmt(ci=False),
                         f"{share.value:.0%}" if share.defined else share.fmt(), hist])
        out.append(f"### {r.name}\n")
        out.append(md_table(["dimension", "n", "mean", "sd", "in 4-7", "articles per score 0 … 10"], rows,
                            align="lrrrrl"))
    if "histograms" in plots:
        out.append(f"\n![histograms]({plots['histograms']})\n")

    # redundancy
    out.append("## Dimension redundancy\n")
    out.append(f"Eight dimensions that move together cannot train a useful eight-output student. Warnings fire when "
               f"the first principal component explains more than {stats.PC1_WARN:.0%} of the variance or two "
               f"dimensions correlate above {stats.PAIR_R_WARN:.2f}.\n")
    for r in raters:
        red = result["models"][r.name]["redundancy"]
        pc1 = red.pc1_share
        line = f"- **{r.name}**: PC1 explains {pc1.value:.0%} of the variance" if pc1.defined else \
            f"- **{r.name}**: PC1 share {pc1.fmt()}"
        shown = red.warnings[:4] + ([f"{len(red.warnings) - 4} more in the JSON"] if len(red.warnings) > 4 else [])
        out.append(line + ("." if not red.warnings else ". **Warning:** " + "; ".join(shown) + "."))
        key = f"dimension correlation {r.name}"
        if key in plots:
            out.append(f"\n  ![{key}]({plots[key]})\n")
    out.append("")

    # self-consistency
    if result["repeats"] > 1:
        out.append("## Self-consistency (repeats)\n")
        rows = []
        for r in raters:
            for key, sc in result["models"][r.name].get("self_consistency", {}).items():
                sm = sc["summary"]
                ta = sc["tier_agreement"]
                rows.append([r.name, key.replace("_", " "), sm["spearman"].fmt(ci=False), sm["mae"].fmt(ci=False),
                             sm["alpha"].fmt(ci=False), sm["icc"].fmt(ci=False),
                             f"{ta.value:.0%}" if ta.defined else ta.fmt()])
        out.append(md_table(["model", "repeats", "mean Spearman", "mean MAE", "mean α", "mean ICC", "same tier"],
                            rows, align="lllllll"))
        out.append("\nThe same statistics between a model's own repeated answers: a model that disagrees with "
                   "itself cannot agree with another.\n")

    # several ratings per article
    multi = [(r.name, result["models"][r.name]["inter_rater"]) for r in raters
             if "inter_rater" in result["models"][r.name]]
    if multi:
        out.append("## Agreement among several ratings of the same article\n")
        out.append("For a label set with several ratings per article (imported human raters, one repeat per rater "
                   "slot; or a model's --repeats): Krippendorff's α (interval) over every rating, ICC(1,1) (one-way "
                   "random effects, single rating: the raters of one article need not be those of another), and "
                   "the MAE of each rating against the mean of the same article's other ratings (how far one "
                   "rater lies from the others; the human floor a student of the mean can be held to). None of "
                   "them depends on which slot a rating sits in. Intervals: bootstrap over articles for α and MAE, "
                   "pingouin's F-test interval for ICC.\n")
        for name, ir in multi:
            rows = []
            for c in columns:
                st = ir["per_dimension"][c]
                per_item = ", ".join(f"{n} × {k}" for k, n in st["ratings_per_item"].items())
                rows.append([c, st["items"], st["ratings"], st["alpha"].fmt(), st["icc1"].fmt(),
                             st["mae_vs_others"].fmt(), per_item])
            out.append(f"### {name} ({ir['slots']} rater slots)\n")
            out.append(md_table(["dimension", "articles", "ratings", "Krippendorff α", "ICC(1,1)",
                                 "MAE one vs the others", "articles × ratings each"], rows, align="lrrllll"))
            sm = ir["summary"]
            note = ir["per_dimension"][dims[0]]["icc1"].ci_note
            out.append(f"\nMean over the {len(dims)} dimensions: α {sm['alpha'].fmt(ci=False)}, ICC(1,1) "
                       f"{sm['icc1'].fmt(ci=False)}, MAE one vs the others {sm['mae_vs_others'].fmt(ci=False)}."
                       + (f" ICC: {note}." if note else "") + "\n")

    # most disagreeing
    out.append("## Most disagreeing articles\n")
    out.append(f"Mean absolute difference over the dimensions; scores in the order {', '.join(dims)}.\n")
    blocks = [(p["a"], p["b"], p["most_disagreeing"]) for p in result["pairs"]]
    if cons:
        blocks += [(name, "consensus", vs["most_disagreeing"]) for name, vs in cons["vs"].items()]
    for a, b, items in blocks:
        out.append(f"### {a} vs {b}\n")
        if not items:
            out.append("No article was scored by both.\n")
            continue
        rows = [[it["article_id"], it["title"][:70], f"{it['mean_abs_diff']:.2f}",
                 " ".join(f"{v:g}" for v in it["a"]), " ".join(f"{v:g}" for v in it["b"])] for it in items]
        out.append(md_table(["article", "title", "mean |diff|", a, b], rows, align="lllll"))
        out.append("")

    out.append("## Method\n")
    out.append("- Spearman and Pearson: scipy; Krippendorff's α: the `krippendorff` package, interval metric; ICC: "
               "pingouin, the ICC(A,1) form (two-way random effects, absolute agreement, one rater; Shrout & "
               "Fleiss's ICC(2,1)), because a model that scores every article higher is not interchangeable with "
               "the reference. Missing or invalid answers are dropped pairwise, never read as 0.\n"
               f"- Intervals: percentile bootstrap over articles, {result['bootstrap_resamples']} resamples, seed "
               f"{result['seed']} (flag --bootstrap).\n"
               "- Overall score and tier: the filter's weights, gatekeepers, content-type caps and tier thresholds "
               "applied to each model's scores.\n"
               "- Labels are stored in gt.db as calibration runs and are reused by a later `label` run with the "
               "same oracle and prompt (nothing is paid twice).\n")
    return "\n".join(out)


def write_report(result: dict[str, Any], raters: list[Rater], output: str | Path,
                 plots: bool = True) -> tuple[Path, Path, list[Path]]:
    from stages.report import write_json_atomic, write_text_atomic

    md_path = Path(output)
    stem = md_path.with_suffix("")
    json_path = stem.with_suffix(".json")
    plots = plot_files(result, raters, stem) if plots else {}
    md = render_markdown(result, raters, plots, json_path.name)
    data = _jsonable({k: v for k, v in result.items() if k != "consensus"})
    if result.get("consensus"):
        cons = dict(result["consensus"])
        frame = cons.pop("frame")
        cons["scores"] = {aid: {c: (None if pd.isna(v) else float(v)) for c, v in row.items()}
                          for aid, row in frame.iterrows()}
        data["consensus"] = _jsonable(cons)
    data["plots"] = plots
    data["report"] = md_path.name
    write_json_atomic(json_path, data)
    write_text_atomic(md_path, md)
    return md_path, json_path, [md_path.parent / f for f in plots.values()]


# ---- the whole stage as a function -------------------------------------------------------------

def calibrate(conn: sqlite3.Connection, filt: Filter, models: Sequence[str], *, sample_size: int = 200,
              seed: int = 42, repeats: int = 1, concurrency: int = 16, max_cost: float | None = None,
              strongest: str | None = None, thresholds: Thresholds = Thresholds(), n_boot: int = stats.DEFAULT_BOOT,
              registry: dict[str, OracleSpec] | None = None, label: bool = True, timeout: float | None = None,
              progress: bool = True, log=None) -> tuple[dict[str, Any], list[Rater]]:
    """Draw the sample, label what is missing, compare, recommend. Returns (result, raters)."""
    from stages.oracles.registry import check_credentials, load_registry

    if len(models) < 2:
        raise CalibrationError("calibration compares models: pass at least two to --models (e.g. gemini-flash,gemini-pro)")
    if len(set(models)) != len(models):
        raise CalibrationError(f"--models lists a model twice ({', '.join(models)})")
    check_strongest(models, strongest)       # before anything is paid for
    registry = registry if registry is not None else load_registry()
    store.register_filter(conn, filt)
    specs = resolve_models(conn, filt, models, registry)
    # labels-only sets (imported, e.g. a human gold set) cannot label more: sample among the articles they labelled
    within, within_note = None, None
    fixed = [name for name, spec in specs.items() if spec is None]
    for name in fixed:
        _, prompt = store.choose_label_set(conn, filt, name)
        ids = {r[0] for r in conn.execute(
            "SELECT DISTINCT article_id FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ? "
            "AND status = 'ok'", (filt.id, name, prompt))}
        within = ids if within is None else within & ids
    if fixed:
        within_note = (f"drawn among the {len(within)} articles labelled by {' and '.join(fixed)} "
                       f"(label sets that cannot label more)")
    sample, info = draw_sample(conn, filt, sample_size, seed, within, within_note)
    if not sample:
        raise CalibrationError("no eligible articles in gt.db (ingest some first: pass --source 'data/sample/*.jsonl')")
    if label:
        for spec in specs.values():
            if spec is not None:
                check_credentials(spec)       # every key before any paid call
        summaries = label_sample(conn, filt, specs, sample, repeats=repeats, concurrency=concurrency,
                                 max_cost=max_cost, seed=seed, timeout=timeout, progress=progress, log=log)
    else:
        summaries = {}
    raters = []
    for name, spec in specs.items():
        r = collect(conn, filt, name, spec, sample)
        s = summaries.get(name)
        if s is not None:
            r.labelled_now, r.cost_now = s.ok + s.invalid + s.error, s.cost_usd
        raters.append(r)
    reference, reference_reason = choose_reference(raters, strongest)
    titles = {r["id"]: r["title"] for r in conn.execute("SELECT id, title FROM articles")}
    result = compare(filt, raters, reference=reference, sample_info=info, titles=titles, thresholds=thresholds,
                     n_boot=n_boot, seed=seed, concurrency=concurrency, repeats=repeats)
    result["reference_reason"] = reference_reason
    result["labelling"] = {name: (dataclasses.asdict(s) if s is not None else None) for name, s in summaries.items()}
    return result, raters


# ---- command line ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    d = Thresholds()
    p = argparse.ArgumentParser(
        prog="python -m stages.calibrate",
        description="Label a seeded random sample with several models, compare them (per dimension and overall: "
                    "distributions, Spearman/Pearson, MAE, bias, Krippendorff's alpha, ICC with bootstrap "
                    "intervals, tiers, dimension redundancy, cost, latency, the 20k projection) and recommend the "
                    "cheapest model that agrees with the strongest one. Labels are stored in gt.db and reused.")
    p.add_argument("--db", default=store.default_db_path(), help="gt.db path (default: $GT_DB, else gt.db)")
    p.add_argument("--filter", default="filters/uplifting/v1", help="filter package directory (default: %(default)s)")
    p.add_argument("--source", action="append", default=[],
                   help="JSONL file(s) or glob(s) to ingest into gt.db first (repeatable); without it, sample what "
                        "gt.db already holds")
    p.add_argument("--models", required=True,
                   help="comma-separated oracle names from oracles.yaml, e.g. gemini-flash,gemini-pro (an oracle "
                        "that is not in oracles.yaml but has labels in gt.db, e.g. imported, is compared as is)")
    p.add_argument("--sample-size", type=int, default=200, help="articles in the sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the sample and the bootstrap (default: %(default)s)")
    p.add_argument("--output", default=None,
                   help="markdown report path (default: reports/<filter>_v<N>_calibration.md); the JSON with every "
                        "figure and the PNG plots are written next to it")
    p.add_argument("--repeats", type=int, default=1,
                   help="label each article this many times per model and report each model's self-consistency")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight per model (default: %(default)s)")
    p.add_argument("--max-cost", type=float, default=None, metavar="USD",
                   help="budget for the whole calibration, all models together; never exceeded")
    p.add_argument("--strongest", default=None,
                   help="the reference the others are compared with: a model name or 'consensus' (default: the "
                        "consensus with three or more models, else the model with the highest price per article)")
    p.add_argument("--oracles-file", default=None, help="oracle registry (default: oracles.yaml of the project)")
    p.add_argument("--no-label", action="store_true",
                   help="label nothing: compare only the labels already in gt.db (needs no API key)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for one answer (default: oracles.yaml)")
    p.add_argument("--bootstrap", type=int, default=stats.DEFAULT_BOOT,
                   help="bootstrap resamples for the confidence intervals (0: none; default: %(default)s)")
    p.add_argument("--min-spearman", type=float, default=d.min_spearman,
                   help="a model qualifies with at least this mean Spearman vs the reference (default: %(default)s)")
    p.add_argument("--max-mae", type=float, default=d.max_mae,
                   help="... at most this mean absolute difference in points (default: %(default)s)")
    p.add_argument("--min-tier-agreement", type=float, default=d.min_tier_agreement,
                   help="... at least this share of articles in the same tier (default: %(default)s)")
    p.add_argument("--max-invalid-rate", type=float, default=d.max_invalid_rate,
                   help="... at most this share of invalid answers (default: %(default)s)")
    p.add_argument("--min-articles", type=int, default=d.min_articles,
                   help="... with at least this many articles scored by both (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (the report and JSON are complete "
                                                          "without them)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _fail(msg: str, code: int = 1) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for flag, value, low in (("--sample-size", args.sample_size, 1), ("--repeats", args.repeats, 1),
                             ("--concurrency", args.concurrency, 1), ("--bootstrap", args.bootstrap, 0),
                             ("--min-articles", args.min_articles, 1)):
        if value < low:
            return _fail(f"{flag} must be at least {low}, got {value} (pass a larger number)", 2)
    if args.max_cost is not None and args.max_cost <= 0:
        return _fail(f"--max-cost must be positive, got {args.max_cost} (pass US dollars, e.g. --max-cost 2)", 2)
    for flag, value in (("--min-spearman", args.min_spearman), ("--min-tier-agreement", args.min_tier_agreement),
                        ("--max-invalid-rate", args.max_invalid_rate)):
        if not 0 <= value <= 1:
            return _fail(f"{flag} must be between 0 and 1, got {value} (e.g. 0.7)", 2)
    thresholds = Thresholds(args.min_spearman, args.max_mae, args.min_tier_agreement, args.max_invalid_rate,
                            args.min_articles)

    from stages.oracles import registry as reg
    try:
        filt = load_filter(args.filter)
    except FilterError as e:
        return _fail(f"{e.problems[0]}, {e.path} (fix the filter package or pass --filter filters/<name>/v<N>)", 2)
    try:
        registry = reg.load_registry(args.oracles_file) if args.oracles_file else reg.load_registry()
    except reg.OracleConfigError as e:
        return _fail(str(e).splitlines()[0], 2)
    try:
        conn = store.connect(args.db, create=bool(args.source))  # only ingesting --source may create gt.db
    except (store.StoreError, sqlite3.Error) as e:
        return store.fail_line(e, args.db)
    notes: list[str] = []
    if args.source:
        try:
            notes.append(_ingest(conn, args.source, filt))
        except FileNotFoundError as e:
            return _fail(str(e), 2)
        except (store.StoreError, sqlite3.Error) as e:
            return store.fail_line(e, args.db)
    output = Path(args.output or f"reports/{filt.name}_v{filt.version}_calibration.md")
    started = time.monotonic()
    log = (lambda line: print(line, file=sys.stderr)) if not args.quiet else None
    from stages.oracles.base import FatalError
    try:
        result, raters = calibrate(conn, filt, models, sample_size=args.sample_size, seed=args.seed,
                                   repeats=args.repeats, concurrency=args.concurrency, max_cost=args.max_cost,
                                   strongest=args.strongest, thresholds=thresholds, n_boot=args.bootstrap,
                                   registry=registry, label=not args.no_label, timeout=args.timeout,
                                   progress=not args.quiet, log=log)
    except reg.UnknownOracle as e:
        return _fail(str(e), 2)
    except reg.MissingKey as e:
        return _fail(f"{e}; or compare only the labels already in gt.db with --no-label", 1)
    except reg.OracleConfigError as e:
        return _fail(str(e).splitlines()[0], 2)
    except CalibrationError as e:
        return _fail(str(e), 2 if "--" in str(e) else 1)
    except (store.StoreError, sqlite3.Error) as e:  # database trouble (locked, read-only...) or no labels
        return store.fail_line(e, args.db)
    except FatalError as e:
        from stages.labelling import scrub_secrets
        return _fail(f"an oracle refused the request: {scrub_secrets(str(e))} (check the key, model id and "
                     f"oracles.yaml)", 1)
    except KeyboardInterrupt:
        print("interrupted: labels stored so far are kept; run the same command to continue", file=sys.stderr)
        return 130
    md_path, json_path, pngs = write_report(result, raters, output, plots=not args.no_plots)
    for n in notes:
        print(n)
    print(result["recommendation"]["verdict"])
    if any(r.offline for r in raters):
        print(OFFLINE_SENTENCE)
    s = result["sample"]
    paid = sum((r.cost_now for r in raters), 0.0)
    labelled = sum(r.labelled_now for r in raters)
    print(f"Calibrated {', '.join(models)} on {s['used']} articles of {filt.id} from {args.db} (seed {args.seed}"
          f"{'; ' + s['note'] if s.get('note') else ''}): {labelled} labels requested now for ${paid:.4f}, the rest "
          f"reused from gt.db; report {md_path}, figures {json_path}, {len(pngs)} plots next to it "
          f"({time.monotonic() - started:.0f} s).")
    return 0


def _ingest(conn: sqlite3.Connection, sources: list[str], filt: Filter) -> str:
    """--source: ingest first (idempotent: records already in gt.db are skipped)."""
    from stages.ingestion import expand_sources, ingest_files
    files, problems = expand_sources(sources)
    if not files:
        raise FileNotFoundError(problems[0] if problems else f"--source {', '.join(sources)} matches no file")
    summary = ingest_files(conn, sources, filt=filt, progress=True)
    for line in summary.problems[:5]:
        print(f"ingest: {line}", file=sys.stderr)
    return (f"ingested {summary.records} records from {summary.files} file(s): {summary.inserted} new articles, "
            f"{summary.already_present} already in gt.db")


if __name__ == "__main__":
    sys.exit(main())
