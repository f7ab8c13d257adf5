"""Agreement and distribution statistics for calibration: pure functions on numpy arrays and pandas
frames, NaN-aware (a missing or invalid answer is NaN and is dropped pairwise, never read as 0).

Every statistic is a `Stat`: a value, or None with the reason it is undefined (constant scores,
too few paired articles, a rater with no valid answers). Reports print "undefined (why)", never
a 0 or a 1 that the data does not support.

Point estimates come from the libraries: scipy (Spearman, Pearson), krippendorff (alpha, interval
metric) and pingouin (ICC). The ICC reported is ICC(A,1) in McGraw & Wong's notation, i.e.
Shrout & Fleiss's ICC(2,1): two-way random effects, absolute agreement, one rater; absolute
agreement because a model that scores every article 2 points higher is NOT interchangeable with
the reference for labelling. Confidence intervals are percentile bootstraps over articles
(seeded; `n_boot` resamples, default 1000). The bootstrap replicates use closed forms of the same
statistics vectorised over all resamples at once (calling pingouin 1000 times per dimension and
pair would take minutes); `tests/test_stats.py` checks that each closed form equals the library's
value on the full sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from gt import DEFAULT_SEED
from gt.core import bands

MIN_PAIRED = 3          # fewer paired articles than this: every agreement statistic is undefined
MIN_BOOTSTRAP = 5       # fewer paired articles than this: no confidence interval
DEFAULT_BOOT = 1000
CI_LEVEL = 0.95
SCORE_BINS = list(range(11))     # histogram bins 0..10; bin k holds scores in [k, k+1), 10 holds 10
PC1_WARN = 0.70
KRIPPENDORFF_MAX_CELLS = 20_000_000   # items x distinct values^2 above which alpha uses its closed form (memory)
PAIR_R_WARN = 0.90


@dataclass
class Stat:
    """One statistic: `value` (None when undefined, `why` then says why), its bootstrap
    confidence interval, and the number of paired items it was computed on."""
    value: float | None
    n: int = 0
    why: str | None = None
    ci: tuple[float, float] | None = None
    ci_note: str | None = None   # e.g. why there is no interval, or how many resamples were undefined

    @property
    def defined(self) -> bool:
        return self.value is not None

    def fmt(self, digits: int = 2, ci: bool = True) -> str:
        if self.value is None:
            return f"undefined ({self.why})"
        text = f"{self.value:.{digits}f}"
        if ci and self.ci is not None:
            text += f" [{self.ci[0]:.{digits}f}, {self.ci[1]:.{digits}f}]"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "n": self.n, "undefined_because": self.why,
                "ci95": list(self.ci) if self.ci is not None else None, "ci_note": self.ci_note}


def undefined(why: str, n: int = 0) -> Stat:
    return Stat(None, n=n, why=why)


def _stat(value: float, n: int, why_nan: str) -> Stat:
    value = float(value)
    if not math.isfinite(value):
        return undefined(why_nan, n)
    return Stat(value, n=n)


# ---- inputs ---------------------------------------------------------------------------------------

def as_scores(values: Any) -> np.ndarray:
    """Float array with None -> NaN."""
    return np.asarray(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce"), dtype=float)


def paired(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """The items both raters scored (NaN in either one drops the item)."""
    x, y = as_scores(x), as_scores(y)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need equal lengths, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _why_not_pairable(x_all: np.ndarray, y_all: np.ndarray, x: np.ndarray, y: np.ndarray,
                      names: tuple[str, str], need_variance: bool) -> str | None:
    for arr, name in ((x_all, names[0]), (y_all, names[1])):
        if not np.isfinite(arr).any():
            return f"{name} has no valid answers"
    if len(x) < MIN_PAIRED:
        return f"only {len(x)} article(s) scored by both, need {MIN_PAIRED}"
    if need_variance:
        for arr, name in ((x, names[0]), (y, names[1])):
            if np.ptp(arr) == 0:
                return f"{name} gives every article {arr[0]:g}"
    return None


# ---- distribution ---------------------------------------------------------------------------------

def distribution(values: Any) -> dict[str, Any]:
    """Mean, sd, histogram over 0-10 (every bin, zeros included), share in the middle band of
    gt/core/bands.py (bins 4-7, 4 <= s < 8: where an uninformative rater piles its scores)."""
    all_values = as_scores(values)
    v = all_values[np.isfinite(all_values)]
    out: dict[str, Any] = {"n": int(v.size), "missing": int(all_values.size - v.size)}
    counts, _ = np.histogram(np.clip(v, 0, 10), bins=np.arange(12))
    out["histogram"] = {str(b): int(c) for b, c in zip(SCORE_BINS, counts)}
    if v.size == 0:
        why = "no valid answers"
        out.update(mean=undefined(why), sd=undefined(why), share_4_7=undefined(why), min=None, max=None)
        return out
    out["mean"] = Stat(float(v.mean()), n=int(v.size))
    out["sd"] = Stat(float(v.std(ddof=1)), n=int(v.size)) if v.size > 1 else undefined("one score only", 1)
    out["share_4_7"] = Stat(float(bands.in_middle(v).mean()), n=int(v.size))
    out["min"], out["max"] = float(v.min()), float(v.max())
    return out


# ---- the single statistics (library point estimates) --------------------------------------------

def spearman(x: Any, y: Any, names: tuple[str, str] = ("a", "b")) -> Stat:
    from scipy.stats import spearmanr
    xa, ya = as_scores(x), as_scores(y)
    px, py = paired(xa, ya)
    why = _why_not_pairable(xa, ya, px, py, names, need_variance=True)
    if why:
        return undefined(why, len(px))
    return _stat(spearmanr(px, py).statistic, len(px), "no rank variation")


def pearson(x: Any, y: Any, names: tuple[str, str] = ("a", "b")) -> Stat:
    from scipy.stats import pearsonr
    xa, ya = as_scores(x), as_scores(y)
    px, py = paired(xa, ya)
    why = _why_not_pairable(xa, ya, px, py, names, need_variance=True)
    if why:
        return undefined(why, len(px))
    return _stat(pearsonr(px, py).statistic, len(px), "no variation")


def mae(x: Any, y: Any, names: tuple[str, str] = ("a", "b")) -> Stat:
    xa, ya = as_scores(x), as_scores(y)
    px, py = paired(xa, ya)
    why = _why_not_pairable(xa, ya, px, py, names, need_variance=False)
    if why:
        return undefined(why, len(px))
    return Stat(float(np.mean(np.abs(px - py))), n=len(px))


def mean_bias(x: Any, y: Any, names: tuple[str, str] = ("a", "b")) -> Stat:
    """Mean of (y - x): positive when the second rater scores higher."""
    xa, ya = as_scores(x), as_scores(y)
    px, py = paired(xa, ya)
    why = _why_not_pairable(xa, ya, px, py, names, need_variance=False)
    if why:
        return undefined(why, len(px))
    return Stat(float(np.mean(py - px)), n=len(px))


def krippendorff_alpha(ratings: Any) -> Stat:
    """Krippendorff's alpha, interval metric, for a raters x items matrix (NaN = not rated; items
    with fewer than two ratings do not count). Undefined when there is no variation at all."""
    import krippendorff

    data = np.asarray(ratings, dtype=float)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError("krippendorff_alpha needs a raters x items matrix with at least two raters")
    pairable = np.isfinite(data).sum(axis=0) >= 2
    n = int(pairable.sum())
    if n < MIN_PAIRED:
        return undefined(f"only {n} item(s) rated at least twice, need {MIN_PAIRED}", n)
    values = data[:, pairable]
    finite = values[np.isfinite(values)]
    if np.ptp(finite) == 0:
        return undefined(f"every rating is {finite[0]:g}", n)
    distinct = np.unique(finite).size
    if values.shape[1] * distinct * distinct > KRIPPENDORFF_MAX_CELLS:
        # the package builds an items x values x values array (10,000 sentences with 300 distinct mean
        # ratings: 7 GB); the interval metric's closed form gives the same number (tests/test_stats.py)
        m, s1, s2, _ = _item_sums(values.T)
        stat = _stat(float(_alpha_from_sums(m, s1, s2)), n, "no variation between items")
        stat.ci_note = f"closed form: {distinct} distinct values x {n} items is too large for the krippendorff package"
        return stat
    with np.errstate(divide="ignore", invalid="ignore"):
        value = krippendorff.alpha(reliability_data=values, level_of_measurement="interval")
    return _stat(value, n, "no variation between items")


def icc_agreement(matrix: Any) -> Stat:
    """ICC(A,1) = Shrout & Fleiss ICC(2,1) (two-way random, absolute agreement, single rater) for
    an items x raters matrix, through pingouin. Items with a missing rating are dropped."""
    import pingouin as pg

    data = np.asarray(matrix, dtype=float)
    if data.ndim != 2 or data.shape[1] < 2:
        raise ValueError("icc_agreement needs an items x raters matrix with at least two raters")
    data = data[np.isfinite(data).all(axis=1)]
    n = int(data.shape[0])
    if n < MIN_PAIRED:
        return undefined(f"only {n} item(s) rated by every rater, need {MIN_PAIRED}", n)
    if np.ptp(data) == 0:
        return undefined(f"every rating is {data.flat[0]:g}", n)
    if np.ptp(data.mean(axis=1)) == 0:
        return undefined("every item has the same mean score", n)
    long = pd.DataFrame({
        "item": np.repeat(np.arange(n), data.shape[1]),
        "rater": np.tile(np.arange(data.shape[1]), n),
        "score": data.ravel(),
    })
    with np.errstate(divide="ignore", invalid="ignore"):
        table = pg.intraclass_corr(long, targets="item", raters="rater", ratings="score")
    value = table.loc[table["Type"] == "ICC2", "ICC"]
    if value.empty:  # pingouin labels the forms either ICC2 or ICC(A,1) depending on the version
        value = table.loc[table["Type"] == "ICC(A,1)", "ICC"]
    return _stat(value.iloc[0], n, "no variation between items")


# ---- vectorised replicates for the bootstrap (closed forms of the statistics above) --------------

def _rows_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=1) / den, np.nan)


def _rows_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return _rows_pearson(rankdata(x, axis=1), rankdata(y, axis=1))


def _rows_alpha(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Interval alpha for two complete raters: 1 - (N-1) * sum (x-y)^2 / (N * SS_total), N = 2n
    pairable values (Krippendorff 2011, coincidence form with m_u = 2)."""
    both = np.concatenate([x, y], axis=1)
    total = 2 * x.shape[1]
    ss = ((both - both.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    d = ((x - y) ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss > 0, 1 - (total - 1) * d / (total * ss), np.nan)


def _rows_icc_a1(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ICC(A,1) from the two-way ANOVA mean squares (McGraw & Wong 1996, k = 2 raters)."""
    n, k = x.shape[1], 2
    data = np.stack([x, y], axis=2)                     # replicates x items x raters
    grand = data.mean(axis=(1, 2), keepdims=True)
    item_means = data.mean(axis=2, keepdims=True)
    rater_means = data.mean(axis=1, keepdims=True)
    msr = k * ((item_means - grand) ** 2).sum(axis=(1, 2)) / (n - 1)
    msc = n * ((rater_means - grand) ** 2).sum(axis=(1, 2)) / (k - 1)
    mse = ((data - item_means - rater_means + grand) ** 2).sum(axis=(1, 2)) / ((n - 1) * (k - 1))
    den = msr + (k - 1) * mse + k * (msc - mse) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((den != 0) & (msr + mse > 0), (msr - mse) / den, np.nan)


REPLICATES = {
    "spearman": _rows_spearman,
    "pearson": _rows_pearson,
    "mae": lambda x, y: np.abs(x - y).mean(axis=1),
    "bias": lambda x, y: (y - x).mean(axis=1),
    "alpha": _rows_alpha,
    "icc": _rows_icc_a1,
}


def bootstrap_cis(x: np.ndarray, y: np.ndarray, *, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED,
                  chunk: int = 250) -> dict[str, tuple[tuple[float, float] | None, str | None]]:
    """Percentile bootstrap intervals over items (paired complete arrays), one per statistic in
    REPLICATES: name -> (interval or None, note). Resamples where a statistic is undefined (e.g.
    a constant resample) are left out and counted in the note."""
    n = len(x)
    if n < MIN_BOOTSTRAP or n_boot <= 0:
        note = f"no interval: {n} paired articles (need {MIN_BOOTSTRAP})" if n_boot > 0 else "bootstrap off"
        return {name: (None, note) for name in REPLICATES}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in REPLICATES}
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        bx, by = x[idx], y[idx]
        for name, fn in REPLICATES.items():
            draws[name].append(fn(bx, by))
        done += b
    tail = (1 - CI_LEVEL) / 2 * 100
    out = {}
    for name, parts in draws.items():
        values = np.concatenate(parts)
        ok = values[np.isfinite(values)]
        dropped = n_boot - ok.size
        if ok.size < max(10, n_boot // 2):
            out[name] = (None, f"no interval: {dropped} of {n_boot} resamples undefined")
            continue
        lo, hi = np.percentile(ok, [tail, 100 - tail])
        out[name] = ((float(lo), float(hi)), f"{dropped} of {n_boot} resamples undefined" if dropped else None)
    return out


# ---- a pair of raters on one dimension ------------------------------------------------------------

def agreement(x: Any, y: Any, *, names: tuple[str, str] = ("a", "b"), n_boot: int = DEFAULT_BOOT,
              seed: int = DEFAULT_SEED) -> dict[str, Stat]:
    """Everything two raters' scores of the same items say about their agreement: spearman,
    pearson, mae, bias (mean of y - x), alpha (Krippendorff, interval), icc (ICC(A,1)), each with
    a bootstrap interval; missing answers are dropped pairwise."""
    xa, ya = as_scores(x), as_scores(y)
    px, py = paired(xa, ya)
    out = {
        "spearman": spearman(xa, ya, names),
        "pearson": pearson(xa, ya, names),
        "mae": mae(xa, ya, names),
        "bias": mean_bias(xa, ya, names),
    }
    # a constant rater makes alpha and ICC degenerate (ICC(A,1) is then exactly 0 whatever the
    # other rater does), so like the correlations they are undefined; MAE and bias still say how far off it is
    why = _why_not_pairable(xa, ya, px, py, names, need_variance=True)
    out["alpha"] = undefined(why, len(px)) if why else krippendorff_alpha(np.vstack([px, py]))
    out["icc"] = undefined(why, len(px)) if why else icc_agreement(np.column_stack([px, py]))
    if any(s.defined for s in out.values()):
        cis = bootstrap_cis(px, py, n_boot=n_boot, seed=seed)
        for name, stat in out.items():
            if stat.defined:
                stat.ci, stat.ci_note = cis[name]
    return out


# ---- several ratings per item (inter-rater agreement) ---------------------------------------------
# Inputs are items x rating slots (NaN: no rating in that slot). A slot is not a person: crowd raters
# (EmoBank's) differ from item to item, so every statistic here is one that does not depend on which
# slot a rating sits in: Krippendorff's alpha, the one-way ICC(1) and each rating against the mean of
# the item's other ratings.

def _ratings(matrix: Any) -> np.ndarray:
    data = np.asarray(matrix, dtype=float)
    if data.ndim != 2:
        raise ValueError("inter-rater statistics need an items x rating slots matrix")
    return data


def _item_sums(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per item: number of ratings m, sum, sum of squares, and the sum over its ratings of
    |rating - mean of the item's other ratings| (0 where m < 2)."""
    ok = np.isfinite(data)
    v = np.where(ok, data, 0.0)
    m = ok.sum(axis=1).astype(float)
    s1 = v.sum(axis=1)
    s2 = (v ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        others = (s1[:, None] - v) / (m[:, None] - 1)
        loo = np.where(ok & (m[:, None] >= 2), np.abs(v - others), 0.0).sum(axis=1)
    return m, s1, s2, loo


def _alpha_from_sums(m: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Interval Krippendorff's alpha from per-item sums (last axis: items; items with m >= 2 only):
    D_o = sum_u 2 (m_u S2_u - S1_u^2) / (m_u - 1) / N, D_e = 2 (N S2 - S1^2) / (N (N - 1)),
    alpha = 1 - D_o / D_e, N = the number of pairable ratings (Krippendorff 2011)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        within = np.where(m >= 2, 2 * (m * s2 - s1 ** 2) / (m - 1), 0.0)
        n = np.where(m >= 2, m, 0.0).sum(axis=-1)
        t1 = np.where(m >= 2, s1, 0.0).sum(axis=-1)
        t2 = np.where(m >= 2, s2, 0.0).sum(axis=-1)
        d_o = within.sum(axis=-1) / n
        d_e = 2 * (n * t2 - t1 ** 2) / (n * (n - 1))
        return np.where(d_e > 0, 1 - d_o / d_e, np.nan)


def mae_vs_others(matrix: Any) -> Stat:
    """Mean over every rating of an item rated at least twice of |rating - mean of the item's other
    ratings|: how far one rater lies from the others (n = ratings compared)."""
    data = _ratings(matrix)
    m, _, _, loo = _item_sums(data)
    keep = m >= 2
    n = int(m[keep].sum())
    if keep.sum() < MIN_PAIRED:
        return undefined(f"only {int(keep.sum())} item(s) rated at least twice, need {MIN_PAIRED}", int(keep.sum()))
    return Stat(float(loo[keep].sum() / n), n=n)


def icc_oneway(matrix: Any) -> Stat:
    """ICC(1,1) (Shrout & Fleiss: one-way random effects, single rating, absolute agreement) through
    pingouin, the form for raters that differ from item to item. pingouin needs the same number of
    ratings per item: the items with at least k ratings (k: the most common count, at least 2) enter
    with their first k, which the Stat's ci_note says. Its interval is pingouin's F-based 95% CI."""
    import pingouin as pg

    data = _ratings(matrix)
    counts = np.isfinite(data).sum(axis=1)
    rated = counts[counts >= 2]
    if rated.size < MIN_PAIRED:
        return undefined(f"only {rated.size} item(s) rated at least twice, need {MIN_PAIRED}", int(rated.size))
    values, freq = np.unique(rated, return_counts=True)
    k = int(values[np.argmax(freq)])
    rows = [row[np.isfinite(row)][:k] for row in data[counts >= k]]
    block = np.vstack(rows)
    n = block.shape[0]
    if np.ptp(block) == 0:
        return undefined(f"every rating is {block.flat[0]:g}", n)
    if np.ptp(block.mean(axis=1)) == 0:
        return undefined("every item has the same mean rating", n)
    long = pd.DataFrame({"item": np.repeat(np.arange(n), k), "rater": np.tile(np.arange(k), n),
                         "score": block.ravel()})
    with np.errstate(divide="ignore", invalid="ignore"):
        table = pg.intraclass_corr(long, targets="item", raters="rater", ratings="score")
    row = table.loc[table["Type"].isin(["ICC1", "ICC(1,1)"])].iloc[0]
    stat = _stat(row["ICC"], n, "no variation between items")
    if stat.defined:
        ci = row.get("CI95", row.get("CI95%"))   # the column's name depends on pingouin's version
        if ci is not None and len(ci) == 2 and all(np.isfinite(ci)):
            stat.ci = (float(ci[0]), float(ci[1]))
    dropped = int(rated.size - n)
    stat.ci_note = (f"items with at least {k} ratings, their first {k}"
                    + (f" ({dropped} item(s) with fewer left out)" if dropped else "") + "; interval: pingouin's F test")
    return stat


def inter_rater(matrix: Any, *, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Agreement among several ratings of the same items (items x rating slots, NaN = none):
    Krippendorff's alpha (interval; the `krippendorff` package, every rating of every item rated at
    least twice), ICC(1,1) (pingouin) and the MAE of each rating against the mean of the item's
    other ratings, with percentile bootstrap intervals over items for alpha and MAE (closed forms,
    as for pairs); plus how many items have how many ratings."""
    data = _ratings(matrix)
    counts = np.isfinite(data).sum(axis=1)
    keep = counts >= 2
    rated = data[keep]
    out: dict[str, Any] = {
        "items": int(keep.sum()),
        "ratings": int(counts[keep].sum()),
        "ratings_per_item": {str(int(c)): int((counts == c).sum()) for c in np.unique(counts[keep])},
    }
    out["alpha"] = (krippendorff_alpha(rated.T) if rated.shape[1] >= 2 else
                    undefined("fewer than two rating slots", int(keep.sum())))
    out["icc1"] = icc_oneway(rated)
    out["mae_vs_others"] = mae_vs_others(rated)
    targets = [s for s in (out["alpha"], out["mae_vs_others"]) if s.defined]
    if targets and n_boot > 0 and rated.shape[0] >= MIN_BOOTSTRAP:
        m, s1, s2, loo = _item_sums(rated)
        rng = np.random.default_rng(seed)
        alphas, maes = [], []
        for start in range(0, n_boot, 250):
            b = min(250, n_boot - start)
            idx = rng.integers(0, len(m), size=(b, len(m)))
            alphas.append(_alpha_from_sums(m[idx], s1[idx], s2[idx]))
            maes.append(loo[idx].sum(axis=1) / m[idx].sum(axis=1))
        tail = (1 - CI_LEVEL) / 2 * 100
        for name, draws in (("alpha", alphas), ("mae_vs_others", maes)):
            values = np.concatenate(draws)
            values = values[np.isfinite(values)]
            if out[name].defined and values.size >= max(10, n_boot // 2):
                lo, hi = np.percentile(values, [tail, 100 - tail])
                out[name].ci = (float(lo), float(hi))
    return out


# ---- tiers ----------------------------------------------------------------------------------------

def tier_distribution(tiers: Sequence[Any], tier_names: Sequence[str]) -> dict[str, int]:
    """Count per tier, every tier listed (zeros included); None/NaN (no valid answer) not counted."""
    s = pd.Series(list(tiers), dtype=object).dropna()
    return {t: int((s == t).sum()) for t in tier_names}


def tier_confusion(a: Sequence[Any], b: Sequence[Any], tier_names: Sequence[str]) -> pd.DataFrame:
    """Rows: tiers by the first rater; columns: by the second; items either did not rate dropped."""
    frame = pd.DataFrame({"a": list(a), "b": list(b)}, dtype=object).dropna()
    cat = pd.CategoricalDtype(list(tier_names))
    return pd.crosstab(frame["a"].astype(cat), frame["b"].astype(cat), dropna=False).reindex(
        index=list(tier_names), columns=list(tier_names), fill_value=0)


def tier_agreement(a: Sequence[Any], b: Sequence[Any]) -> Stat:
    """Share of items both raters put in the same tier."""
    frame = pd.DataFrame({"a": list(a), "b": list(b)}, dtype=object).dropna()
    n = len(frame)
    if n < MIN_PAIRED:
        return undefined(f"only {n} article(s) with a tier from both, need {MIN_PAIRED}", n)
    return Stat(float((frame["a"] == frame["b"]).mean()), n=n)


# ---- dimension redundancy -------------------------------------------------------------------------

@dataclass
class Redundancy:
    dimensions: list[str]                 # dimensions with variation (the matrix's rows and columns)
    correlation: pd.DataFrame             # Pearson correlation between dimensions (pairwise complete)
    pc1_share: Stat                       # variance share of the first principal component
    constant: list[str] = field(default_factory=list)   # left out: the same score for every article
    high_pairs: list[tuple[str, str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"dimensions": self.dimensions, "constant_dimensions": self.constant,
                "correlation": {r: {c: _none_if_nan(self.correlation.loc[r, c]) for c in self.correlation.columns}
                                for r in self.correlation.index},
                "pc1_share": self.pc1_share.to_dict(),
                "high_pairs": [list(p) for p in self.high_pairs], "warnings": self.warnings}


def _none_if_nan(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def redundancy(scores: pd.DataFrame, *, pc1_warn: float = PC1_WARN, pair_warn: float = PAIR_R_WARN) -> Redundancy:
    """How many independent dimensions a rater's scores really have: the correlation matrix and
    the first principal component's share of the variance of the standardised scores (PCA on
    complete rows). Warns when PC1 explains more than `pc1_warn` or two dimensions correlate
    above `pair_warn` in absolute value."""
    frame = scores.apply(pd.to_numeric, errors="coerce")
    complete = frame.dropna()
    constant = [c for c in frame.columns if frame[c].dropna().nunique() <= 1]
    dims = [c for c in frame.columns if c not in constant]
    corr = frame[dims].corr(method="pearson", min_periods=MIN_PAIRED) if dims else pd.DataFrame()
    warnings: list[str] = []
    high: list[tuple[str, str, float]] = []
    for i, a in enumerate(dims):
        for b in dims[i + 1:]:
            r = corr.loc[a, b]
            if np.isfinite(r) and abs(r) > pair_warn:
                high.append((a, b, float(r)))
    for a, b, r in high:
        warnings.append(f"{a} and {b} correlate at r = {r:.2f} (above {pair_warn:.2f}): they measure the same thing")
    if len(dims) < 2:
        pc1 = undefined(f"{len(dims)} dimension(s) with variation, need 2")
    elif len(complete) < MIN_PAIRED:
        pc1 = undefined(f"only {len(complete)} article(s) with every dimension scored, need {MIN_PAIRED}")
    else:
        c = complete[dims].to_numpy(dtype=float)
        c = c[:, c.std(axis=0) > 0]
        if c.shape[1] < 2:
            pc1 = undefined("fewer than 2 dimensions vary among complete answers")
        else:
            eig = np.linalg.eigvalsh(np.corrcoef(c, rowvar=False))  # PCA of standardised scores
            pc1 = Stat(float(eig[-1] / eig.sum()), n=len(c))
            if pc1.value > pc1_warn:
                warnings.insert(0, f"the first principal component explains {pc1.value:.0%} of the variance "
                                   f"(above {pc1_warn:.0%}): the {len(dims)} dimensions behave like fewer")
    if constant:
        warnings.append(f"constant (no information): {', '.join(constant)}")
    return Redundancy(dims, corr, pc1, constant, high, warnings)


# ---- consensus ------------------------------------------------------------------------------------

def consensus(frames: Sequence[pd.DataFrame], min_raters: int = 2) -> pd.DataFrame:
    """Per-item, per-column median of several raters' frames (same index and columns); an item
    scored by fewer than `min_raters` raters is NaN in the consensus."""
    if not frames:
        raise ValueError("consensus needs at least one rater")
    stacked = np.stack([f.to_numpy(dtype=float) for f in frames])
    counts = np.isfinite(stacked).sum(axis=0)
    with np.errstate(all="ignore"):
        import warnings as _w
        with _w.catch_warnings():
            _w.simplefilter("ignore", RuntimeWarning)   # all-NaN cells are expected and masked below
            med = np.nanmedian(stacked, axis=0)
    med[counts < min_raters] = np.nan
    return pd.DataFrame(med, index=frames[0].index, columns=frames[0].columns)


# ---- summaries ------------------------------------------------------------------------------------

def mean_of(stats: Mapping[str, Stat]) -> Stat:
    """Mean of the defined values (e.g. Spearman across dimensions); undefined if none is."""
    defined = [s.value for s in stats.values() if s.defined]
    if not defined:
        whys = sorted({s.why for s in stats.values() if s.why})
        return undefined("; ".join(whys) or "nothing to average")
    missing = len(stats) - len(defined)
    stat = Stat(float(np.mean(defined)), n=len(defined))
    if missing:
        stat.ci_note = f"mean of {len(defined)} defined of {len(stats)}"
    return stat


def percentile(values: Any, q: float) -> float | None:
    v = as_scores(values)
    v = v[np.isfinite(v)]
    return float(np.percentile(v, q)) if v.size else None


# ---- a student's errors on one dimension (the one definition: evaluate, train, curve) ------------

def error_figures(true: np.ndarray, pred: np.ndarray) -> dict:
    """One dimension's errors of predictions against the truth: MAE, RMSE, bias (mean of pred - true),
    Spearman rho (None for a constant column), and the MAE on the tails of gt/core/bands.py: both
    tails together (`tail`: true < 4 or >= 8), the high tail (true >= 8) and the low tail (true < 4),
    each with its n and None where no article is there."""
    from scipy.stats import spearmanr

    t, p = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    err = p - t
    out = {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))), "bias": float(np.mean(err)),
           "spearman": float(spearmanr(t, p).statistic) if len(t) > 1 and np.ptp(t) > 0 and np.ptp(p) > 0 else None}
    for name, mask in (("tail", bands.is_outer(t)), ("tail_high", bands.is_high(t)), ("tail_low", bands.is_low(t))):
        out[f"{name}_mae"] = float(np.mean(np.abs(err[mask]))) if mask.any() else None
        out[f"{name}_n"] = int(mask.sum())
    return out

