"""The coverage of a label set in words and pictures (a noun: it renders the figures the coverage
stage computed, it reads nothing): the gaps and warnings in sentences, the markdown report, the
heatmap and histogram plots and the caption beside each image.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from gt.core import bands, report
from gt.selection.report import stand_in

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BINS = list(range(11))  # score bins 0..10 (bin = floor(score))
STRONG_CORRELATION = 0.8
# the bands of gt/core/bands.py in the report's words and the JSON's keys: "0-3", "4-7", "8-10"
LOW = f"{bands.SCORE_MIN:g}-{bands.MIDDLE_LOW - 1:g}"
MIDDLE = f"{bands.MIDDLE_LOW:g}-{bands.MIDDLE_HIGH - 1:g}"
HIGH = f"{bands.MIDDLE_HIGH:g}-{bands.SCORE_MAX:g}"


def band_key(band: str) -> str:
    """The JSON key of a band: '0-3' -> '0_3'."""
    return band.replace("-", "_")


def band_definitions() -> dict[str, str]:
    """What each band holds, by its key (the coverage JSON's "bands")."""
    return {band_key(LOW): f"bins {LOW} (score < {bands.MIDDLE_LOW:g})",
            band_key(MIDDLE): f"bins {MIDDLE} ({bands.MIDDLE_LOW:g} <= score < {bands.MIDDLE_HIGH:g})",
            band_key(HIGH): f"bins {HIGH} (score >= {bands.MIDDLE_HIGH:g})"}


def _runs(bins: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in bins:
        if out and b == out[-1][1] + 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return out


def _bins_phrase(runs: list[tuple[int, int]], verb: str) -> str:
    parts = [f"{a}-{b}" if a != b else f"{a}" for a, b in runs]
    plural = len(runs) > 1 or runs[0][0] != runs[0][1]
    return f"{'bins' if plural else 'bin'} {', '.join(parts)} {'are' if plural else 'is'} {verb}"


def _labels(count: int) -> str:
    return f"{count:,} label{'' if count == 1 else 's'}"


def gap_sentences(coverage: dict) -> list[str]:
    """The coverage gaps in words, one sentence per dimension or tier that has one."""
    sentences = []
    share = coverage["sparse_share"]
    for name, fig in coverage["dimensions"].items():
        n = fig["n"]
        if not n:
            continue
        hist = fig["histogram"]
        top = max(b for b in BINS if hist[str(b)] > 0)
        bottom = min(b for b in BINS if hist[str(b)] > 0)
        ends = []  # the score range's empty ends: "no article above 7.5 (bins 8-10 are empty)"
        if top < 10:
            ends.append(f"above {fig['max']:g} ({_bins_phrase([(top + 1, 10)], 'empty')})")
        if bottom > 0:
            ends.append(f"below {fig['min']:g} ({_bins_phrase([(0, bottom - 1)], 'empty')})")
        clauses = [f"{name} has no article " + " and none ".join(ends)] if ends else []
        inner = [b for b in fig["missing_bins"] if bottom < b < top]
        if inner:
            clauses.append(_bins_phrase(_runs(inner), "empty"))
        sparse = fig["sparse_bins"]
        if len(sparse) == 1:
            b = sparse[0]
            clauses.append(f"bin {b} is sparse ({_labels(hist[str(b)])}, {report.pct(hist[str(b)], n)})")
        elif sparse:
            clauses.append("sparse bins: " + ", ".join(
                f"{b} ({_labels(hist[str(b)])}, {report.pct(hist[str(b)], n)})" for b in sparse))
        if clauses:
            if not ends:
                clauses[0] = f"{name}: {clauses[0]}"
            sentences.append("; ".join(clauses) + ".")
    tiers = coverage["tiers"]
    total = sum(tiers["counts"].values())
    for tier, count in tiers["counts"].items():
        if total and count == 0:
            sentences.append(f"Tier {tier} has no article (it needs overall >= {tiers['thresholds'][tier]:g}).")
        elif total and count < share * total:
            sentences.append(f"Tier {tier} is sparse: {_labels(count)} ({report.pct(count, total)}).")
    return sentences


def warning_sentences(coverage: dict) -> list[str]:
    out = []
    names = coverage["correlation"]["dimensions"]
    r = coverage["correlation"]["matrix"]
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            if r[i][j] is not None and abs(r[i][j]) >= STRONG_CORRELATION:
                out.append(f"{a} and {names[j]} are strongly correlated (r = {r[i][j]:.2f}, |r| >= {STRONG_CORRELATION:.2f}): "
                           "a selection that covers one largely covers the other.")
    for name, fig in coverage["dimensions"].items():
        if fig["n"] and fig["sd"] is not None and fig["sd"] == 0:
            out.append(f"{name} has the same score ({fig['min']:g}) on every label.")
    if stand_in(coverage["oracle"]):
        out.append(f"These labels come from the offline oracle {coverage['oracle']}, which runs a small local "
                   "model so the pipeline works without a key: it is not a substitute for a real LLM oracle.")
    return out


def render_markdown(coverage: dict, images: Mapping[str, str] | None = None) -> str:
    dims = coverage["dimensions"]
    n = coverage["labels"]
    lines = [
        f"# Coverage of {coverage['filter']}",
        "",
        f"{n:,} valid labels by **{coverage['oracle']}** (prompt {coverage['prompt_sha256'][:12]}, repeat "
        f"{coverage['repeat']}), one per article, so every count of labels below is a count of articles; "
        f"generated {coverage['generated_at']}.",
        "",
        "## Coverage gaps",
        "",
    ]
    if coverage["gaps"]:
        lines += [f"A bin is empty when no label scores in it, sparse when it holds under "
                  f"{coverage['sparse_share']:.1%} of the {n:,} labels (bin = floor of the score).", ""]
        lines += [f"- {g}" for g in coverage["gaps"]]
    else:
        lines.append(f"No gaps: every dimension has labels in every bin 0-10, each holding at least "
                     f"{coverage['sparse_share']:.1%} of the labels, and every tier has labels.")
    if coverage["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in coverage["warnings"]]
    lines += ["", "## Per dimension", ""]
    lines.append(report.md_table(
        ["dimension", "mean", "sd", "median", "IQR", "skew", f"{MIDDLE} share", LOW, HIGH, "half points",
         "empty bins", "sparse bins"],
        [[d, f["mean"], f["sd"], f["median"], f["iqr"], f["skew"], report.pct(f[f"count_{band_key(MIDDLE)}"], f["n"]),
          f[f"count_{band_key(LOW)}"], f[f"count_{band_key(HIGH)}"], f["half_point_scores"],
          ", ".join(map(str, f["missing_bins"])) or "none", ", ".join(map(str, f["sparse_bins"])) or "none"]
         for d, f in dims.items()],
        align="lrrrrrrrrrll", intfmt=","))
    lines += ["## Histogram (labels, i.e. articles, per score bin)", ""]
    lines.append(report.md_table(["dimension"] + [str(b) for b in BINS],
                                 [[d] + [f["histogram"][str(b)] for b in BINS] for d, f in dims.items()], intfmt=","))
    if images:
        captions = image_captions(coverage)
        for kind, path in images.items():
            lines += [f"![{coverage['filter']} {kind}]({path})", "", captions.get(kind, ""), ""]
    tiers = coverage["tiers"]
    lines += ["## Tiers", "", "Computed from the filter's current config (weights, gatekeepers, content-type caps, "
              "thresholds), as the score view computes them.", ""]
    lines.append(report.md_table(["tier", "overall >=", "labels", "share"],
                                 [[t, tiers["thresholds"][t], c, report.pct(c, n)] for t, c in tiers["counts"].items()],
                                 floatfmt="g", intfmt=","))
    corr = coverage["correlation"]
    lines += ["## Correlations between dimensions (Pearson)", ""]
    lines.append(report.md_table([""] + corr["dimensions"],
                                 [[a] + row for a, row in zip(corr["dimensions"], corr["matrix"])]))
    lines += ["## Sources", ""]
    lines.append(report.md_table(["source", "labels", "share"],
                                 [[s, c, report.pct(c, n)] for s, c in coverage["sources"].items()], intfmt=","))
    lines += ["## Content types", ""]
    lines.append(report.md_table(["content type", "labels", "share"],
                                 [[s, c, report.pct(c, n)] for s, c in coverage["content_types"].items()], intfmt=","))
    lines += ["## Definitions", "",
              f"- Binning: {coverage['binning']}.",
              "- Bands: " + "; ".join(f"{band} = {coverage['bands'][band_key(band)]}" for band in (LOW, MIDDLE, HIGH))
              + ".",
              f"- Sparse: {coverage['sparse_rule']}.",
              "- sd is the sample standard deviation; skew is the adjusted Fisher-Pearson coefficient "
              "(as pandas); quartiles interpolate linearly.",
              ""]
    return "\n".join(lines)


def plot_figures(coverage: dict) -> dict[str, Figure]:
    """The two plots, unsaved: a heatmap (dimension x score bin, articles per cell) and one
    histogram per dimension (articles per score bin, a red x on each empty bin)."""
    dims = coverage["dimensions"]
    counts = [[f["histogram"][str(b)] for b in BINS] for f in dims.values()]
    heatmap = report.heatmap(counts, list(dims), BINS,
                             title=f"{coverage['filter']}: articles per score bin ({coverage['oracle']})",
                             xlabel="score bin (floor of the score)", ylabel="dimension",
                             colorbar_label="articles (one label each)", integer_colorbar=True)
    histograms = report.histograms({d: {coverage["oracle"]: row} for d, row in zip(dims, counts)}, BINS,
                                   title=f"{coverage['filter']}: score histograms "
                                         f"({coverage['labels']:,} articles, one label each)",
                                   xlabel="score bin", ylabel="articles")
    return {"heatmap": heatmap, "histograms": histograms}


def write_plots(coverage: dict, stem: Path) -> dict[str, Path]:
    paths = {}
    for kind, fig in plot_figures(coverage).items():
        paths[kind] = report.save_figure(fig, stem.with_name(f"{stem.name}_{kind}.png"))
    return paths


def image_captions(coverage: dict) -> dict[str, str]:
    """What each plot shows, for the line beside its image in the markdown."""
    empty = {d: f["missing_bins"] for d, f in coverage["dimensions"].items() if f["missing_bins"]}
    marks = ("A red x on the axis marks an empty bin (no article scores there): "
             + "; ".join(f"{d} bin{'s' if len(b) > 1 else ''} {', '.join(map(str, b))}" for d, b in empty.items())
             + "." if empty else "No bin is empty, so no red x is drawn.")
    return {
        "heatmap": "Heatmap: one row per dimension, one column per score bin (floor of the score); the number "
                   "and colour of a cell are the articles whose score on that dimension falls in that bin "
                   "(0 = an empty bin).",
        "histograms": f"Histograms: one panel per dimension; each bar is the number of articles whose "
                      f"{coverage['oracle']} score falls in that bin (x: score bin, y: articles). {marks}",
    }
