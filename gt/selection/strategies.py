"""The selection strategies as data: one row of STRATEGIES each (quota factors, cell values, article
weights, tier rule), and build_program, which turns a strategy, the bins and the pool into the
Program that gt.selection.program solves. The select stage, the learning curves and aimed labelling
build the same program from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gt.core import bands
from gt.selection.bins import bin_midpoints
from gt.selection.program import Pool, Program

# ---- strategies: quotas, values, weights and tier bounds ---------------------------------------
# Cells are (dimension, score bin). `base quota` = ceil(K / number of bins): an even share.
# A bin is "extreme" (outer) when its midpoint lies in an outer band of gt/core/bands.py (below
# MIDDLE_LOW or at least MIDDLE_HIGH: scores 0-3 and 8-10 with the default integer bins): the one
# definition of the outer bins, used by the strategies here, the learning curves' tail MAE
# (gt/student/curve.py) and aimed labelling.

EXTREME_LOW = bands.MIDDLE_LOW      # kept for callers that name the edges (curve, bench)
EXTREME_HIGH = bands.MIDDLE_HIGH
is_extreme = bands.is_outer

SCALE_MIDDLE = (bands.SCORE_MIN + bands.SCORE_MAX) / 2      # 5: the 'distance' value rule counts from here
DISTANCE_STEP = 2.5                                          # ... one more value per 2.5 points away


@dataclass(frozen=True)
class Strategy:
    """One row of the strategy table: what the program of this strategy is, as data. A new strategy
    is one more row; nothing elsewhere branches on a strategy's name."""
    name: str
    goal: str            # one line, for --help and the report
    quotas: str          # the quota rule, in words
    values: str          # the value of one article in a cell, in words
    weights: str         # the per-article objective term, in words
    tiers: str           # the tier bounds, in words
    tier_rule: str       # 'shares' (clipped to the pool) | 'equal' | 'none'
    tier_share: tuple[float, float] = (0.0, 1.0)
    outer_quota_factor: float = 1.0    # quota of an outer (extreme) bin's cell, in base quotas
    middle_quota_factor: float = 1.0   # ... of a middle-band bin's cell
    value_rule: str = "outer"          # 'outer': outer_value in the outer bins, 1 in the middle;
    outer_value: int = 1               # 'distance': 1 + round(|midpoint - 5| / 2.5)
    uses_student_error: bool = False   # article weights from the student's error (needs --model-predictions)
    uniform: bool = False              # no program: a seeded uniform sample (its objective still measured)

    def quota_factor(self, mid: float) -> float:
        return self.outer_quota_factor if is_extreme(mid) else self.middle_quota_factor

    def cell_value(self, mid: float) -> int:
        if self.value_rule == "distance":
            return 1 + int(round(abs(mid - SCALE_MIDDLE) / DISTANCE_STEP))
        return self.outer_value if is_extreme(mid) else 1


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("random", "a seeded uniform sample of the pool (the baseline; the natural distribution)",
             "none: no program is solved (the objective is measured with maximize_coverage's quotas)", "1", "none",
             "none", "none", uniform=True),
    Strategy("maximize_coverage", "every score bin of every dimension, tiers within stated shares (recommended)",
             "base quota in every cell", "1 per article in a cell, up to its quota", "none",
             "each tier 10%-70% of K (clipped to what the pool has)", "shares", (0.10, 0.70)),
    Strategy("balanced_tiers", "equal tier counts first, coverage second",
             "base quota in every cell", "1", "none",
             "equal counts per tier (a tier with too few articles gives all it has, the rest share the remainder)",
             "equal"),
    Strategy("iqr_optimization", "spread: outer bins count more, which widens each dimension's IQR",
             "base quota in every cell", "1 + round(|bin midpoint - 5| / 2.5): 1 at 4-6, 2 at 2-3 and 7-8, 3 at "
             "0-1 and 9-10", "none", "each tier 10%-70% of K (clipped)", "shares", (0.10, 0.70),
             value_rule="distance"),
    Strategy("extreme_focus", "heavy over-sampling of 0-3 and 8-10; may sacrifice the middle",
             "2 x base quota at 0-3 and 8-10, 0.5 x base quota at 4-7", "3 at 0-3 and 8-10, 1 at 4-7", "none",
             "none", "none", outer_quota_factor=2.0, middle_quota_factor=0.5, outer_value=3),
    Strategy("active_learning", "articles where the student errs most, still covering the bins",
             "base quota in every cell", "1",
             "student error |prediction - label| (mean over the dimensions), as its pool percentile cut "
             "into 2D levels (0..2D-1): a worst-predicted article is worth up to about two full coverage rows",
             "none", "none", uses_student_error=True),
)}


# ---- the program a strategy asks for ----------------------------------------------------------

def _tier_units(pool: Pool, n_tiers: int) -> np.ndarray:
    out = np.zeros(n_tiers, dtype=np.int64)
    for t in range(n_tiers):
        m = pool.tier == t
        out[t] = int((m & (pool.cluster < 0)).sum()) + len(np.unique(pool.cluster[m & (pool.cluster >= 0)]))
    return out


def _water_fill(avail: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal counts per tier where possible: level L with sum(min(avail, L)) = k."""
    lo, hi = 0.0, float(max(k, 1))
    for _ in range(100):
        mid = (lo + hi) / 2
        if np.minimum(avail, mid).sum() < k:
            lo = mid
        else:
            hi = mid
    share = np.minimum(avail, hi)
    return np.floor(share + 1e-9).astype(np.int64), np.minimum(avail, np.ceil(share - 1e-9)).astype(np.int64)


def build_program(strategy: Strategy, edges: np.ndarray, k: int, tier_names: list[str], pool: Pool, *,
                  tier_shares: dict[str, tuple[float, float]] | None, max_per_source: int | None) -> Program:
    d = pool.bins.shape[1]
    mids = bin_midpoints(edges)
    base = math.ceil(k / len(edges))
    quota_row = np.array([max(1, int(round(base * strategy.quota_factor(m)))) for m in mids])
    value_row = np.array([strategy.cell_value(m) for m in mids])
    t = len(tier_names)
    avail = _tier_units(pool, t)
    if tier_shares is not None:  # the user's shares are hard constraints
        t_min = np.array([math.ceil(tier_shares.get(n, (0.0, 1.0))[0] * k - 1e-9) for n in tier_names])
        t_max = np.array([math.floor(tier_shares.get(n, (0.0, 1.0))[1] * k + 1e-9) for n in tier_names])
    elif strategy.tier_rule == "equal":
        t_min, t_max = _water_fill(avail, k)
    elif strategy.tier_rule == "shares":
        lo, hi = strategy.tier_share
        t_min = np.minimum(math.ceil(lo * k), avail)
        others = avail.sum() - avail
        t_max = np.maximum(np.maximum(math.floor(hi * k), k - others), t_min)
    else:
        t_min, t_max = np.zeros(t, dtype=np.int64), np.full(t, k, dtype=np.int64)
    # covering an empty bin outweighs anything else one article can add, so every bin the pool
    # reaches is covered before any quota is topped up
    bonus = d * int(value_row.max()) + int(pool.weight.max(initial=0)) + 1
    return Program(quota=np.tile(quota_row, (d, 1)), value=np.tile(value_row, (d, 1)), size=k,
                   tier_names=list(tier_names), tier_min=t_min, tier_max=np.minimum(t_max, k),
                   max_per_source=max_per_source, bonus=np.full((d, len(edges)), bonus, dtype=np.int64))


# ---- active learning's article weights ----------------------------------------------------------

def active_learning_weights(error: pd.Series, n_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Article weights and priorities of active_learning from the student's error per article (NaN
    where there is no prediction): the error's pool percentile cut into 2 x n_dims levels, 0 where
    unknown; within a group the worst-predicted articles are taken first."""
    pct = error.rank(pct=True, method="average")
    levels = 2 * n_dims
    weight = np.minimum(levels - 1, np.floor(pct.fillna(0).to_numpy() * levels)).astype(np.int64)
    weight[error.isna().to_numpy()] = 0
    return weight, error.fillna(-1.0).to_numpy()
