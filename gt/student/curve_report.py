"""The learning curves' summary and report: from the runs that gt/student/curve.py measured to the
summary rows (mean and 95% Student t interval over seeds per strategy and budget, the comparison
with random), the verdict line, curve.md, the curve_*.png plots and the console table (a noun: it
imports no stage).

The result dict carries what the words need: params (filter, oracle, dimensions, budgets,
strategies in their order, seeds, bins, time limit, exploration share), the summary rows, the
runs' solver figures, the pool and test-set counts, the mean predictor and the target thresholds.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gt.core import bands

RANDOM = "random"                 # the baseline strategy: a seeded uniform sample
HEADLINE_BUDGET = 1000            # the verdict speaks of this budget (or the nearest one run)
HEADLINE_STRATEGY = "maximize_coverage"  # ... and of the select stage's default strategy
METRICS = ("mae", "tail_mae", "spearman")
METRIC_WORDS = {"mae": "MAE", "tail_mae": "tail MAE", "spearman": "Spearman"}
CI_WORDS = "95% Student t interval over seeds (mean ± t(0.975, n-1) · sd / √n)"


# ---- from the runs to the summary ----------------------------------------------------------------

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


def summarise(runs: list[dict], dims: Sequence[str], strategies: Sequence[str], target: dict) -> list[dict]:
    """Per (strategy, budget): mean and 95% t interval over seeds of each metric (overall and per
    dimension), the extremes in the training sets, and the comparison with random (meets_target:
    `target`'s {'tail_mae_cut', 'mae_slack'}). Rows by budget, then in the order of `strategies`."""
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
                                 and tail_change <= -target["tail_mae_cut"] and mae_change <= target["mae_slack"])}
    order = {s: i for i, s in enumerate(strategies)}
    out.sort(key=lambda r: (r["budget"], order.get(r["strategy"], 99)))
    return out


# ---- words ------------------------------------------------------------------------------------

def tail_words() -> str:
    """Which test articles the tail MAE is over, in words (gt/core/bands.py's outer bins)."""
    return f"the outer bins, the ones the selection strategies call extreme ({bands.words()})"


def ci(stat: dict, digits: int = 2) -> str:
    """A mean and its interval: '1.23 (1.10-1.36)', the mean alone for one seed, 'undefined' for none."""
    if stat["mean"] is None:
        return "undefined"
    if stat["lo"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ({stat['lo']:.{digits}f}-{stat['hi']:.{digits}f})"


def signed_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}%"


def fmt(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def target_words(target: dict) -> str:
    return (f"tail MAE at least {100 * target['tail_mae_cut']:g}% below random's with overall MAE within "
            f"{100 * target['mae_slack']:g}%")


def verdict(summary: list[dict], budgets: Sequence[int], target: dict) -> str:
    """One line: the headline strategy against random at the headline budget, then which strategy
    (if any) reaches the target ({'tail_mae_cut', 'mae_slack'}), where."""
    budget = min(budgets, key=lambda b: (abs(b - HEADLINE_BUDGET), -b))
    at = {r["strategy"]: r for r in summary if r["budget"] == budget}
    name = HEADLINE_STRATEGY if HEADLINE_STRATEGY in at else next((s for s in at if s != RANDOM), None)
    rnd = at.get(RANDOM)
    if name is None or rnd is None:
        return f"At {budget:,} labels only random was run: no strategy to compare."
    s = at[name]
    change = s["vs_random"] or {}
    tail_change, mae_change = change.get("tail_mae_change"), change.get("mae_change")
    words = (f"At {budget:,} labels, {name}'s tail MAE is {ci(s['tail_mae'])} vs random's {ci(rnd['tail_mae'])} "
             f"({signed_pct(tail_change)}), overall MAE {ci(s['mae'])} vs {ci(rnd['mae'])} ({signed_pct(mae_change)}) "
             f"(means over seeds, 95% t intervals).")
    met = [r for r in summary if r.get("vs_random") and r["vs_random"]["meets_target"]]
    if met:
        by_strategy: dict[str, list[int]] = {}
        for r in met:
            by_strategy.setdefault(r["strategy"], []).append(r["budget"])
        words += " Target (" + target_words(target) + ") met by " + "; ".join(
            f"{k} at {', '.join(f'{b:,}' for b in v)}" for k, v in by_strategy.items()) + "."
    else:
        words += f" No strategy reaches the target ({target_words(target)}) at any budget."
    return words


def console_table(summary: list[dict]) -> str:
    """The table the stage prints: per strategy and budget, the metrics and the tail change vs random."""
    from gt.core.report import md_table

    rows = [[r["strategy"], f"{r['budget']:,}", ci(r["mae"]), ci(r["tail_mae"]), ci(r["spearman"]),
             signed_pct((r["vs_random"] or {}).get("tail_mae_change"))] for r in summary]
    return md_table(["strategy", "budget", "MAE", "tail MAE", "Spearman", "tail vs random"], rows, align="lrrrrr")


# ---- curve.md ---------------------------------------------------------------------------------

def _setup_paragraph(result: dict) -> str:
    p = result["params"]
    dropped = result["pool"]["cluster_mates_dropped"]
    return (f"Selection pool: {result['pool']['n']:,} labelled articles; test set: {result['test']['n']:,} articles, "
            f"{result['test']['source']}; the test set is never offered to any selection"
            + (f" ({dropped} pool articles sharing a near-duplicate cluster with a test article were left out too)"
               if dropped else "") + ". "
            f"Budgets {', '.join(f'{b:,}' for b in p['budgets'])}; strategies {', '.join(p['strategies'])}; "
            f"seeds {', '.join(map(str, p['seeds']))}. Student: {result['student']}. Selection: the select stage's "
            f"program and OR-Tools solver (gt.selection.program.choose), time limit {p['time_limit']:g} s per solve, "
            f"bins {', '.join(f'{e:g}' for e in p['bins'])}; random is a seeded uniform sample"
            + (f"; exploration share {p['exploration_share']:g}: each strategy's program picks "
               f"{100 * (1 - p['exploration_share']):g}% of the budget, a seeded uniform sample the rest"
               if p['exploration_share'] else "") + ".")


def _terms_paragraphs(result: dict) -> list[str]:
    dims, test, mean = result["params"]["dimensions"], result["test"], result["mean_predictor"]
    target = result["target"]
    return [
        f"**Tail MAE**: MAE on the test articles whose true score lies in {tail_words()}, per dimension, then the "
        f"mean over dimensions. **Intervals**: {CI_WORDS}. **Target**: tail MAE at least "
        f"{100 * target['tail_mae_cut']:g}% below random's at the same budget with overall MAE within "
        f"{100 * target['mae_slack']:g}% of random's.", "",
        "Test articles in the tails: " + ", ".join(
            f"{d} {test['tail_n'][d]} ({test['tail_low_n'][d]} low, {test['tail_high_n'][d]} high)" for d in dims)
        + f". A constant predictor (the selection pool's mean score) has MAE {fmt(mean['mae'])} and tail MAE "
          f"{fmt(mean['tail_mae'])} (mean over dimensions; per dimension "
        + ", ".join(f"{d} {fmt(mean['per_dimension'][d]['mae'])} / {fmt(mean['per_dimension'][d]['tail_mae'])}"
                    for d in dims)
        + "): the floor any student must beat."]


def _mean_table(result: dict) -> str:
    from gt.core.report import md_table

    dims = result["params"]["dimensions"]
    rows = [[r["strategy"], f"{r['budget']:,}", ci(r["mae"]), ci(r["tail_mae"]), ci(r["spearman"]),
             signed_pct((r["vs_random"] or {}).get("tail_mae_change")),
             signed_pct((r["vs_random"] or {}).get("mae_change")),
             ("met" if r["vs_random"]["meets_target"] else "not met") if r["vs_random"] else "baseline",
             " / ".join(f"{r['extremes_selected'][d]:.1f}" for d in dims)] for r in result["summary"]]
    return md_table(["strategy", "budget", "MAE", "tail MAE", "Spearman", "tail MAE vs random", "MAE vs random",
                     "target", "extremes in training set"], rows, align="lrrrrrrll")


def _dimension_sections(result: dict) -> list[str]:
    from gt.core.report import md_table

    lines = []
    for d in result["params"]["dimensions"]:
        lines += [f"## {d}", "",
                  md_table(["strategy", "budget", "MAE", "tail MAE", "Spearman"],
                           [[r["strategy"], f"{r['budget']:,}", ci(r["per_dimension"][d]["mae"]),
                             ci(r["per_dimension"][d]["tail_mae"]), ci(r["per_dimension"][d]["spearman"])]
                            for r in result["summary"]], align="lrrrr"), "",
                  f"![{d}](curve_{d}.png)", ""]
    return lines


def _timing_section(result: dict) -> list[str]:
    solver = [r["solver"] for r in result["runs"] if r["solver"]]
    if not solver:
        return []
    proven = sum(x["status"] == "optimal" for x in solver)
    seconds = result["seconds"]
    return ["## Selection and timing", "",
            f"{len(solver)} solves: {proven} proven optimal, {len(solver) - proven} stopped at the time limit "
            f"(largest gap {100 * max(x['gap'] for x in solver):.2f}%); mean solve "
            f"{np.mean([x['seconds'] for x in solver]):.2f} s. Embeddings: {result['embeddings']}. Wall time "
            f"{seconds['total']:.0f} s (setup {seconds['setup']:.0f} s, grid {seconds['grid']:.0f} s).", ""]


HOW_IT_IS_MEASURED = (
    "Every (strategy, budget, seed) selects `budget` articles from the selection pool and trains a fresh "
    "student on them; the test set is the same for every run. A seed changes the random sample, and for the "
    "selection strategies the order in which interchangeable articles (same bins, tier and cluster) are "
    "taken. active_learning weights articles by the error of the previous budget's active-learning student "
    "(at the first budget, the random student's of that budget and seed), as rounds of `make evaluate "
    "ARGS=--all` and `make select STRATEGY=active_learning` would. All labels of the pool are already "
    "paid for in this workflow, so a budget counts training articles, not labelling calls.")


def markdown_report(result: dict) -> str:
    """curve.md: the verdict first, then the setup, the terms, the tables and the plots."""
    p = result["params"]
    lines = [result["verdict"], "", f"# Learning curves: {p['filter']} ({p['oracle']} labels)", "",
             _setup_paragraph(result), "", *_terms_paragraphs(result), "",
             "## Mean over dimensions", "", _mean_table(result),
             f"Cells: mean over {len(p['seeds'])} seeds (95% t interval). Extremes in training set: selected articles "
             f"in the outer bins per dimension ({' / '.join(p['dimensions'])}), mean over seeds.", "",
             "![mean over dimensions](curve_mean.png)", ""]
    lines += _dimension_sections(result) + _timing_section(result)
    lines += ["## How it is measured", "", HOW_IT_IS_MEASURED, ""]
    return "\n".join(lines)


# ---- the plots ----------------------------------------------------------------------------------

def _plot_metric(ax, summary: list[dict], strategies: Sequence[str], budgets: Sequence[int], metric: str,
                 key: str | None) -> None:
    """One panel: `metric` against the budget, one line per strategy with its 95% t interval."""
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


def plot_curves(result: dict, out_dir: Path) -> list[str]:
    """curve_<dimension>.png per dimension and curve_mean.png: MAE, tail MAE and Spearman against the
    budget, one line per strategy with its 95% t interval."""
    from matplotlib.figure import Figure

    from gt.core import report

    summary, params = result["summary"], result["params"]
    strategies = [s for s in params["strategies"] if any(r["strategy"] == s for r in summary)]
    budgets = sorted({r["budget"] for r in summary})
    files = []
    for key in [None, *params["dimensions"]]:
        fig = Figure(figsize=(13, 4.2))
        axes = fig.subplots(1, 3)
        for ax, metric in zip(axes, METRICS):
            _plot_metric(ax, summary, strategies, budgets, metric, key)
        axes[0].legend(fontsize=8)
        what = "mean over dimensions" if key is None else key
        fig.suptitle(f"{params['filter']} ({params['oracle']}): {what}, {result['student_kind']} student, mean and "
                     f"95% t interval over {len(params['seeds'])} seeds", fontsize=10)
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.86, wspace=0.28)
        name = "curve_mean.png" if key is None else f"curve_{key}.png"
        report.save_figure(fig, out_dir / name, dpi=90)
        files.append(name)
    return files
