"""The calibration report (a noun: it measures and renders, it decides nothing; the reference and
the recommendation are the calibrate stage's):
- the figures, from each model's labels of the sample (a Rater): answers, cost per article and the
  projection for 20,000 articles, score distributions, tiers, dimension redundancy, the agreement of
  every pair of models, of every model with the consensus and of a model's several ratings of one
  article, the most disagreeing articles;
- the words of the verdict, the markdown under reports/ that leads with it, the JSON with every
  figure and the PNG plots (score histograms, one scatter plot per pair of models and per model
  against the consensus, each model's dimension correlation heatmap).
It imports no stage.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gt import DEFAULT_SEED
from gt.labelling.sync import DEFAULT_CONCURRENCY
from gt.core import stats
from gt.core.filters import Filter
from gt.intake.human_labels import is_human
from gt.oracles.base import OracleSpec
from gt.oracles.registry import STAND_IN_PROVIDERS
from gt.core.report import md_table

PROJECT_ARTICLES = 20_000           # the size of the ground truth the projection prices
OFFLINE_SENTENCE = (f"{' and '.join(STAND_IN_PROVIDERS)} are offline stand-ins, not substitutes for a real LLM: "
                    "their agreement figures exercise the pipeline, they say nothing about a paid model.")
MOST_DISAGREEING = 5                # articles listed per pair


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
        """An offline stand-in (local-embed, local-llm): it exercises the pipeline, it is no real LLM."""
        return self.spec is not None and self.spec.provider in STAND_IN_PROVIDERS

    @property
    def human(self) -> bool:
        """Imported human labels (ingest --labels): a gold standard, not a model."""
        return self.spec is None and is_human(self.prompt_sha256)

    def rating_matrix(self, column: str) -> np.ndarray:
        """Sample articles x repeats (rater slots) of one column; NaN where a slot has no rating."""
        return np.column_stack([self.repeats[k][column].to_numpy(dtype=float) for k in sorted(self.repeats)])


# ---- the figures -------------------------------------------------------------------------------

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


def versus(filt: Filter, a: pd.DataFrame, a_tiers: pd.Series, b: pd.DataFrame, b_tiers: pd.Series,
           names: tuple[str, str], *, n_boot: int, seed: int) -> dict[str, Any]:
    """How scores `a` agree with scores `b`: per column, the means over the dimensions, the same tier."""
    dims = filt.dimension_names
    per = compare_pair(a, b, dims + ["overall"], names, n_boot=n_boot, seed=seed)
    return {"per_dimension": per, "summary": summarise(per, dims),
            "tier_agreement": stats.tier_agreement(a_tiers.tolist(), b_tiers.tolist())}


def model_figures(filt: Filter, r: Rater, n_sample: int, *, concurrency: int, repeats: int, n_boot: int,
                  seed: int) -> dict[str, Any]:
    """One model's own figures: answers, cost and speed, distributions, tiers, redundancy, and the
    agreement of its several ratings of an article (rater slots, or --repeats) with each other."""
    dims = filt.dimension_names
    columns = dims + ["overall"]
    spec = r.spec
    entry: dict[str, Any] = {
        "offline": r.offline, "in_oracles_yaml": spec is not None, "prompt_sha256": r.prompt_sha256,
        "provider": spec.provider if spec else None, "model": spec.model if spec else None,
        "prices_per_m": ({"input": spec.input_per_m, "output": spec.output_per_m,
                          "batch_input": spec.batch_input_per_m, "batch_output": spec.batch_output_per_m}
                         if spec else None),
        "labels": label_counts(r, n_sample), "labelled_now": r.labelled_now, "cost_now_usd": r.cost_now,
    }
    entry.update(cost_and_speed(r, concurrency))
    entry["distribution"] = {c: stats.distribution(r.scores[c]) for c in columns}
    entry["tiers"] = stats.tier_distribution(r.tiers.tolist(), list(reversed(filt.tier_names)))
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
            sc[f"r0_vs_r{rep}"] = versus(filt, r.scores, r.tiers, other, tier_of(filt, other),
                                         (f"{r.name} r0", f"{r.name} r{rep}"), n_boot=n_boot, seed=seed)
        entry["self_consistency"] = sc
    return entry


def consensus_figures(filt: Filter, raters: list[Rater], titles: dict[str, str], *, n_boot: int,
                      seed: int) -> dict[str, Any]:
    """The per-dimension median of the models, and every model against it."""
    dims = filt.dimension_names
    tier_names = list(reversed(filt.tier_names))
    frame = stats.consensus([r.scores[dims] for r in raters])
    # the consensus' overall and tier come from its dimension medians, through the filter's arithmetic
    # (content-type caps need a content type, which a median does not have: they are not applied)
    frame["overall"] = frame.apply(lambda row: filt.overall(row.to_dict()) if row.notna().all() else np.nan, axis=1)
    cons_tiers = tier_of(filt, frame)
    vs = {}
    for r in raters:
        vs[r.name] = versus(filt, r.scores, r.tiers, frame, cons_tiers, (r.name, "consensus"), n_boot=n_boot,
                            seed=seed)
        vs[r.name]["tier_confusion"] = stats.tier_confusion(r.tiers.tolist(), cons_tiers.tolist(), tier_names)
        vs[r.name]["most_disagreeing"] = disagreements(r, frame, dims, titles)
    return {"frame": frame, "tiers": stats.tier_distribution(cons_tiers.tolist(), tier_names),
            "articles": int(frame[dims].notna().all(axis=1).sum()), "vs": vs,
            "note": "per-dimension median of the models that answered (at least 2); overall and tier "
                    "from the medians with the filter's weights and gatekeepers (no content-type caps)"}


def figures(filt: Filter, raters: list[Rater], *, sample_info: dict, titles: dict[str, str],
            n_boot: int = stats.DEFAULT_BOOT, seed: int = DEFAULT_SEED, concurrency: int = DEFAULT_CONCURRENCY, repeats: int = 1) -> dict[str, Any]:
    """Every model's own figures, every pair's agreement and, with three or more models, the
    consensus and every model against it."""
    dims = filt.dimension_names
    tier_names = list(reversed(filt.tier_names))   # lowest tier first
    boot = {"n_boot": n_boot, "seed": seed}
    models = {r.name: model_figures(filt, r, sample_info["used"], concurrency=concurrency, repeats=repeats, **boot)
              for r in raters}
    pairs = []
    for ra, rb in combinations(raters, 2):
        pair = versus(filt, ra.scores, ra.tiers, rb.scores, rb.tiers, (ra.name, rb.name), **boot)
        pairs.append({"a": ra.name, "b": rb.name, "per_dimension": pair["per_dimension"], "summary": pair["summary"],
                      "tier_confusion": stats.tier_confusion(ra.tiers.tolist(), rb.tiers.tolist(), tier_names),
                      "tier_agreement": pair["tier_agreement"],
                      "most_disagreeing": disagreements(ra, rb, dims, titles)})
    cons = consensus_figures(filt, raters, titles, **boot) if len(raters) >= 3 else None
    return {"filter": filt.id, "prompt_sha256": filt.prompt_sha256, "dimensions": dims, "tier_names": tier_names,
            "sample": sample_info, "models": models, "pairs": pairs, "consensus": cons,
            "bootstrap_resamples": n_boot, "seed": seed, "repeats": repeats}


# ---- small formats -----------------------------------------------------------------------------

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


def share(stat: stats.Stat) -> str:
    """A share as a whole percentage, or why it is undefined."""
    return f"{stat.value:.0%}" if stat.defined else stat.fmt()


def _rate(stat: stats.Stat) -> str:
    """An invalid-answer rate to a tenth of a percent, or why it is undefined."""
    return f"{stat.value:.1%}" if stat.defined else stat.fmt(ci=False)


def _ms(v: float | None) -> str:
    return "—" if v is None else (f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s")


# ---- the verdict -------------------------------------------------------------------------------

def verdict(rows: list[dict[str, Any]], chosen: str | None, reference: str, label_sets_only: str | None) -> str:
    """The recommendation in one paragraph. `rows`: one per model (model, qualifies, reasons,
    agreement, invalid_rate, cost_20k_usd, offline, is_reference); `label_sets_only`: what the
    compared sets are when none of them can label more ('human label sets', ...), else None."""
    if label_sets_only:
        return (f"Nothing to recommend: {', '.join(row['model'] for row in rows)} are {label_sets_only}, not models "
                f"that can label more; below is how they agree with "
                f"{'their consensus' if reference == 'consensus' else reference} and with each other. Add a model to "
                f"--models to judge it against them.")
    if chosen is None:
        why = "; ".join(f"{row['model']}: {', '.join(row['reasons'])}" for row in rows)
        return f"No model qualifies ({why}). Do not start the 20k run yet: revise the prompt or try other models."
    row = next(row for row in rows if row["model"] == chosen)
    cost = f"${row['cost_20k_usd']:,.2f}" if row["cost_20k_usd"] is not None else "an unknown cost"
    if row["is_reference"]:
        others = [o for o in rows if not o["is_reference"]]
        failed = [o for o in others if not o["qualifies"]]
        if failed and len(failed) == len(others):
            why = "; ".join(f"{o['model']}: {', '.join(o['reasons'])}" for o in failed)
            text = f"Label with {chosen}, the reference model: no other model agrees with it within the thresholds ({why})"
        else:
            text = (f"Label with {chosen}, the reference model: the models that agree with it within the thresholds "
                    f"do not cost less")
        text += f"; projected cost for {PROJECT_ARTICLES:,} articles {cost}."
    else:
        ag = row["agreement"]
        against = "the consensus" if reference == "consensus" else reference
        text = (f"Label with {chosen}: the cheapest model within the thresholds against {against} "
                f"(mean Spearman {ag['spearman'].value:.2f}, mean MAE {ag['mae'].value:.2f}, tier agreement "
                f"{ag['tier_agreement'].value:.0%}, invalid rate {share(row['invalid_rate'])}); "
                f"projected cost for {PROJECT_ARTICLES:,} articles {cost}.")
    if row["offline"]:
        text += (f" {chosen} is an offline stand-in: to choose the model for real labels, calibrate paid "
                 f"models (e.g. --models gemini-flash,gemini-pro).")
    return text


# ---- plots -------------------------------------------------------------------------------------

def plot_files(result: dict[str, Any], raters: Sequence[Rater], stem: Path) -> dict[str, str]:
    """Histograms, per-pair scatter plots and per-model dimension correlation heatmaps, next to the
    report; returns label -> file name."""
    from gt.core import report

    columns = result["dimensions"] + ["overall"]
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
        pair = next((p for p in result["pairs"] if (p["a"], p["b"]) == (ra.name, bname)), None)
        per = pair["per_dimension"] if pair else result["consensus"]["vs"][ra.name]["per_dimension"]
        path = stem.with_name(f"{stem.name}_scatter_{_safe(ra.name)}_vs_{_safe(bname)}.png")
        report.save_figure(_scatter(ra, fb, bname, columns, per, rng), path)
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


def _scatter(ra: Rater, fb: pd.DataFrame, bname: str, columns: list[str],
             per: dict[str, dict[str, stats.Stat]], rng: np.random.Generator):
    """One panel per column: ra's scores (x) against fb's (y), jittered, with the diagonal."""
    from matplotlib.figure import Figure

    ncols = 3
    nrows = math.ceil(len(columns) / ncols)
    fig = Figure(figsize=(3.1 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
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
    return fig


# ---- the markdown, section by section ------------------------------------------------------------

def render_markdown(result: dict[str, Any], raters: Sequence[Rater], plots: dict[str, str], json_name: str) -> str:
    names = [r.name for r in raters]
    out = [f"# Calibration of {result['filter']}: {', '.join(names)}\n"]
    out += _recommendation(result, [r.name for r in raters if r.offline], json_name)
    out += _cost_and_speed(result, names)
    out += _agreement(result, plots)
    out += _consensus(result, plots)
    out += _tiers(result, names)
    out += _distributions(result, names, plots)
    out += _redundancy(result, names, plots)
    out += _self_consistency(result, names)
    out += _several_ratings(result, names)
    out += _most_disagreeing(result)
    out += _method(result)
    return "\n".join(out)


def _recommendation(result: dict[str, Any], offline: list[str], json_name: str) -> list[str]:
    dims, rec, ref, sample = result["dimensions"], result["recommendation"], result["reference"], result["sample"]
    t = result["thresholds"]
    out = [f"## Recommendation\n\n**{rec['verdict']}**\n"]
    if offline:
        out.append(f"> **{OFFLINE_SENTENCE}** ({', '.join(offline)} in this calibration.)\n")
    ref_text = ("the consensus (per-dimension median) of the models" if ref == "consensus"
                else f"**{ref}**, the reference model")
    if result.get("reference_reason"):
        ref_text += f" ({result['reference_reason']})"
    out.append(f"Each model was compared with {ref_text}. A model qualifies when its mean Spearman over the "
               f"{len(dims)} dimensions is at least {t['min_spearman']:.2f}, its mean absolute difference at most "
               f"{t['max_mae']:.1f} point, it puts at least {t['min_tier_agreement']:.0%} of articles in the same "
               f"tier, at most {t['max_invalid_rate']:.0%} of its answers are invalid, and at least "
               f"{t['min_articles']} articles were scored by both; the cheapest qualifying model is recommended "
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
        rows.append([row["model"], _money(row["cost_20k_usd"]), sp, mae, ta, _rate(row["invalid_rate"]),
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
    return out


def _cost_and_speed(result: dict[str, Any], names: list[str]) -> list[str]:
    rows = []
    for name in names:
        m = result["models"][name]
        lab = m["labels"]
        proj = m.get("projection") or {}
        rows.append([name, lab["ok"], lab["invalid"], lab["error"], lab["missing"], _rate(lab["invalid_rate"]),
                     _money(m.get("cost_per_article")), _ms(m.get("latency_p50_ms")), _ms(m.get("latency_p95_ms")),
                     _money(proj.get("cost_sync_usd")),
                     _money(proj.get("cost_batch_usd")) if proj.get("cost_batch_usd") is not None else "no batch mode",
                     _duration(proj.get("seconds"))])
    n = f"{PROJECT_ARTICLES:,}"
    return ["## Cost, speed and answer quality\n",
            md_table(["model", "valid", "invalid", "error", "no label", "invalid rate", "cost / article",
                      "latency p50", "latency p95", f"{n} sync", f"{n} batch", f"{n} time"], rows,
                     align="lrrrrrrrrrrr"),
            f"\nCost per article is what the sample's labels cost (tokens as the provider reported them, at the "
            f"prices in oracles.yaml; cached prompt tokens included); the {n} projection prices the "
            f"same mean tokens per article at sync and batch prices. Time is the slower of the rate limit "
            f"(RPM/TPM in oracles.yaml) and the measured speed: the throughput of the label runs that made the "
            f"sample's labels (at their concurrency; offline models answer one request at a time on this "
            f"machine), or the median latency where those runs were too short to time.\n"]


def _agreement_table(per: dict[str, dict[str, stats.Stat]], columns: list[str]) -> str:
    rows = []
    for c in columns:
        s = per[c]
        rows.append([c, s["spearman"].fmt(), s["pearson"].fmt(), s["mae"].fmt(), s["bias"].fmt(),
                     s["alpha"].fmt(), s["icc"].fmt(), s["mae"].n])
    return md_table(["dimension", "Spearman", "Pearson", "MAE", "bias (b − a)", "Krippendorff α", "ICC(A,1)", "n"],
                    rows, align="llllllll")


def _agreement(result: dict[str, Any], plots: dict[str, str]) -> list[str]:
    dims = result["dimensions"]
    out = ["## Agreement between models\n",
           f"Values with 95% bootstrap intervals ({result['bootstrap_resamples']} resamples of articles, seed "
           f"{result['seed']}); \"undefined (why)\" where the data cannot support a value (a constant rater, "
           f"too few articles scored by both). Bias is the mean of b − a.\n"]
    for p in result["pairs"]:
        out.append(f"### a = {p['a']}, b = {p['b']}\n")
        out.append(_agreement_table(p["per_dimension"], dims + ["overall"]))
        sm = p["summary"]
        out.append(f"\nMean over the {len(dims)} dimensions: Spearman {sm['spearman'].fmt(ci=False)}, MAE "
                   f"{sm['mae'].fmt(ci=False)}, α {sm['alpha'].fmt(ci=False)}, ICC {sm['icc'].fmt(ci=False)}. "
                   f"Same tier: {share(p['tier_agreement'])}.\n")
        key = f"scatter {p['a']} vs {p['b']}"
        if key in plots:
            out.append(f"![{key}]({plots[key]})\n")
    return out


def _consensus(result: dict[str, Any], plots: dict[str, str]) -> list[str]:
    cons = result.get("consensus")
    if not cons:
        return []
    out = ["## Consensus\n", f"The consensus is the {cons['note']}; {cons['articles']} articles have one.\n"]
    rows = []
    for name, vs in cons["vs"].items():
        sm = vs["summary"]
        rows.append([name, sm["spearman"].fmt(ci=False), sm["mae"].fmt(ci=False), sm["bias"].fmt(ci=False),
                     sm["alpha"].fmt(ci=False), sm["icc"].fmt(ci=False), share(vs["tier_agreement"])])
    out.append(md_table(["model vs consensus", "mean Spearman", "mean MAE", "mean bias", "mean α", "mean ICC",
                         "same tier"], rows, align="lllllll"))
    out.append("\nA model is part of the consensus it is compared with, which flatters every model a little.\n")
    for name, vs in cons["vs"].items():
        out.append(f"<details><summary>{name} vs consensus, per dimension</summary>\n\n"
                   f"{_agreement_table(vs['per_dimension'], result['dimensions'] + ['overall'])}\n</details>\n")
        key = f"scatter {name} vs consensus"
        if key in plots:
            out.append(f"![{key}]({plots[key]})\n")
    return out


def _tiers(result: dict[str, Any], names: list[str]) -> list[str]:
    tier_names, cons = result["tier_names"], result.get("consensus")
    rows = [[name] + [result["models"][name]["tiers"][tn] for tn in tier_names] for name in names]
    if cons:
        rows.append(["consensus"] + [cons["tiers"][tn] for tn in tier_names])
    out = ["## Tiers\n", md_table(["model"] + tier_names, rows)]
    for p in result["pairs"]:
        m = p["tier_confusion"]
        out.append(f"\nTier confusion, rows {p['a']}, columns {p['b']}:\n")
        out.append(md_table([f"{p['a']} \\ {p['b']}"] + tier_names,
                            [[tn] + [int(m.loc[tn, c]) for c in tier_names] for tn in tier_names]))
    return out


def _distributions(result: dict[str, Any], names: list[str], plots: dict[str, str]) -> list[str]:
    out = ["## Score distributions\n",
           "Mean, standard deviation and the share of scores in the 4-7 band per dimension (a model that "
           "piles its scores in the middle cannot tell articles apart); counts per score in the histograms.\n"]
    for name in names:
        rows = []
        for c in result["dimensions"] + ["overall"]:
            d = result["models"][name]["distribution"][c]
            hist = " ".join(str(d["histogram"][str(b)]) for b in stats.SCORE_BINS)
            rows.append([c, d["n"], d["mean"].fmt(ci=False), d["sd"].fmt(ci=False), share(d["share_4_7"]), hist])
        out.append(f"### {name}\n")
        out.append(md_table(["dimension", "n", "mean", "sd", "in 4-7", "articles per score 0 … 10"], rows,
                            align="lrrrrl"))
    if "histograms" in plots:
        out.append(f"\n![histograms]({plots['histograms']})\n")
    return out


def _redundancy(result: dict[str, Any], names: list[str], plots: dict[str, str]) -> list[str]:
    out = ["## Dimension redundancy\n",
           f"Eight dimensions that move together cannot train a useful eight-output student. Warnings fire when "
           f"the first principal component explains more than {stats.PC1_WARN:.0%} of the variance or two "
           f"dimensions correlate above {stats.PAIR_R_WARN:.2f}.\n"]
    for name in names:
        red = result["models"][name]["redundancy"]
        pc1 = red.pc1_share
        line = (f"- **{name}**: PC1 explains {pc1.value:.0%} of the variance" if pc1.defined
                else f"- **{name}**: PC1 share {pc1.fmt()}")
        shown = red.warnings[:4] + ([f"{len(red.warnings) - 4} more in the JSON"] if len(red.warnings) > 4 else [])
        out.append(line + ("." if not red.warnings else ". **Warning:** " + "; ".join(shown) + "."))
        key = f"dimension correlation {name}"
        if key in plots:
            out.append(f"\n  ![{key}]({plots[key]})\n")
    out.append("")
    return out


def _self_consistency(result: dict[str, Any], names: list[str]) -> list[str]:
    if result["repeats"] <= 1:
        return []
    rows = []
    for name in names:
        for key, sc in result["models"][name].get("self_consistency", {}).items():
            sm = sc["summary"]
            rows.append([name, key.replace("_", " "), sm["spearman"].fmt(ci=False), sm["mae"].fmt(ci=False),
                         sm["alpha"].fmt(ci=False), sm["icc"].fmt(ci=False), share(sc["tier_agreement"])])
    return ["## Self-consistency (repeats)\n",
            md_table(["model", "repeats", "mean Spearman", "mean MAE", "mean α", "mean ICC", "same tier"],
                     rows, align="lllllll"),
            "\nThe same statistics between a model's own repeated answers: a model that disagrees with "
            "itself cannot agree with another.\n"]


def _several_ratings(result: dict[str, Any], names: list[str]) -> list[str]:
    multi = [(name, result["models"][name]["inter_rater"]) for name in names
             if "inter_rater" in result["models"][name]]
    if not multi:
        return []
    dims = result["dimensions"]
    out = ["## Agreement among several ratings of the same article\n",
           "For a label set with several ratings per article (imported human raters, one repeat per rater "
           "slot; or a model's --repeats): Krippendorff's α (interval) over every rating, ICC(1,1) (one-way "
           "random effects, single rating: the raters of one article need not be those of another), and "
           "the MAE of each rating against the mean of the same article's other ratings (how far one "
           "rater lies from the others; the human floor a student of the mean can be held to). None of "
           "them depends on which slot a rating sits in. Intervals: bootstrap over articles for α and MAE, "
           "pingouin's F-test interval for ICC.\n"]
    for name, ir in multi:
        rows = []
        for c in dims + ["overall"]:
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
    return out


def _most_disagreeing(result: dict[str, Any]) -> list[str]:
    out = ["## Most disagreeing articles\n",
           f"Mean absolute difference over the dimensions; scores in the order {', '.join(result['dimensions'])}.\n"]
    blocks = [(p["a"], p["b"], p["most_disagreeing"]) for p in result["pairs"]]
    if result.get("consensus"):
        blocks += [(name, "consensus", vs["most_disagreeing"]) for name, vs in result["consensus"]["vs"].items()]
    for a, b, items in blocks:
        out.append(f"### {a} vs {b}\n")
        if not items:
            out.append("No article was scored by both.\n")
            continue
        rows = [[it["article_id"], it["title"][:70], f"{it['mean_abs_diff']:.2f}",
                 " ".join(f"{v:g}" for v in it["a"]), " ".join(f"{v:g}" for v in it["b"])] for it in items]
        out.append(md_table(["article", "title", "mean |diff|", a, b], rows, align="lllll"))
        out.append("")
    return out


def _method(result: dict[str, Any]) -> list[str]:
    return ["## Method\n",
            "- Spearman and Pearson: scipy; Krippendorff's α: the `krippendorff` package, interval metric; ICC: "
            "pingouin, the ICC(A,1) form (two-way random effects, absolute agreement, one rater; Shrout & "
            "Fleiss's ICC(2,1)), because a model that scores every article higher is not interchangeable with "
            "the reference. Missing or invalid answers are dropped pairwise, never read as 0.\n"
            f"- Intervals: percentile bootstrap over articles, {result['bootstrap_resamples']} resamples, seed "
            f"{result['seed']} (flag --bootstrap).\n"
            "- Overall score and tier: the filter's weights, gatekeepers, content-type caps and tier thresholds "
            "applied to each model's scores.\n"
            "- Labels are stored in gt.db as calibration runs and are reused by a later `label` run with the "
            "same oracle and prompt (nothing is paid twice).\n"]


# ---- the files ---------------------------------------------------------------------------------

def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (stats.Stat, stats.Redundancy)):
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


def write_report(result: dict[str, Any], raters: Sequence[Rater], output: str | Path,
                 plots: bool = True) -> tuple[Path, Path, list[Path]]:
    """The markdown at `output`, the JSON and the PNG plots next to it; returns (markdown, JSON, PNGs)."""
    from gt.core.report import write_json_atomic, write_text_atomic

    md_path = Path(output)
    stem = md_path.with_suffix("")
    json_path = stem.with_suffix(".json")
    plot_names = plot_files(result, raters, stem) if plots else {}
    md = render_markdown(result, raters, plot_names, json_path.name)
    data = _jsonable({k: v for k, v in result.items() if k != "consensus"})
    if result.get("consensus"):
        cons = dict(result["consensus"])
        frame = cons.pop("frame")
        cons["scores"] = {aid: {c: (None if pd.isna(v) else float(v)) for c, v in row.items()}
                          for aid, row in frame.iterrows()}
        data["consensus"] = _jsonable(cons)
    data["plots"] = plot_names
    data["report"] = md_path.name
    write_json_atomic(json_path, data)
    write_text_atomic(md_path, md)
    return md_path, json_path, [md_path.parent / f for f in plot_names.values()]
