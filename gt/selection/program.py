"""The selection program, pure optimisation (no gt.db, no files): choose exactly K articles so that
every (dimension, score bin) cell holds as many articles as it can, up to its quota.

    maximise   sum_cells value[c] * min(count[c], quota[c]) + bonus[c] * min(count[c], 1)
               + sum_articles weight[i] * x[i]
    subject to sum x = K;  tier_min[t] <= sum_{i in tier t} x <= tier_max[t];
               sum_{i in source s} x <= max_per_source;  sum_{i in cluster k} x <= 1

Solved in four steps, each one cheap because of the first:
1. aggregate: articles that agree on everything the program sees (bin profile, tier, weight, and
   the source where a source cap applies, the near-duplicate cluster where there is one) are
   interchangeable, so the program picks a COUNT per group, bounded by the group's size. Clustered
   articles keep their cluster id in the key, so the one-per-cluster rows stay exact; unclustered
   articles aggregate freely. Skewed scores give far fewer groups than articles.
2. GLOP solves the LP relaxation over groups: an upper bound (floor of it, all coefficients are
   integers) and a start.
3. the LP counts are rounded down and completed greedily by marginal gain within the constraints.
   If that reaches the floor of the LP bound it is proven optimal and we stop.
4. otherwise CP-SAT polishes it, with the rounded solution as a complete hint, within a time limit;
   the LP's reduced costs first fix every count that cannot be part of a solution at least as good
   as the hint (reduced-cost fixing), which shrinks the CP-SAT model to the few groups that matter.
Group counts are mapped back to concrete articles deterministically (seeded order, then priority).

The strategies (quotas, cell values, article weights, tier bounds) and build_program live in
gt/selection/strategies.py, the score bins in bins.py, the splits in splits.py; the select step, the
learning curves and aimed labelling build the same program from them. choose() runs one selection
start to end.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gt import DEFAULT_SEED



class SelectionError(Exception):
    """The program cannot be solved as asked; the message names the constraint responsible."""


@dataclass
class Pool:
    """The eligible articles as the program sees them, one row each."""
    bins: np.ndarray                      # (N, D) bin index of each selected dimension's score
    tier: np.ndarray                      # (N,) index into Program.tier_names
    source: np.ndarray                    # (N,) source code (any int; only compared for equality)
    cluster: np.ndarray                   # (N,) near-duplicate cluster code, -1 = not in a cluster
    weight: np.ndarray | None = None      # (N,) integer strategy weight per article (objective term)
    priority: np.ndarray | None = None    # (N,) float: within a group, higher is taken first

    def __post_init__(self):
        self.bins = np.asarray(self.bins, dtype=np.int64)
        if self.bins.ndim != 2:
            raise ValueError("bins must be a 2-D array (articles x dimensions)")
        n = len(self.bins)
        self.tier = np.asarray(self.tier, dtype=np.int64)
        self.source = np.asarray(self.source, dtype=np.int64)
        self.cluster = np.asarray(self.cluster, dtype=np.int64)
        self.weight = np.zeros(n, dtype=np.int64) if self.weight is None else np.asarray(self.weight, dtype=np.int64)
        for name in ("tier", "source", "cluster", "weight"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, bins has {n}")

    @property
    def size(self) -> int:
        return len(self.bins)


@dataclass
class Program:
    """Quotas, values and constraints: what a strategy sets."""
    quota: np.ndarray                     # (D, B) int: articles per cell that still count
    value: np.ndarray                     # (D, B) int: objective value of one article in the cell
    size: int                             # K
    tier_names: list[str]
    tier_min: np.ndarray                  # (T,) int counts
    tier_max: np.ndarray                  # (T,) int counts
    max_per_source: int | None = None
    bonus: np.ndarray | None = None       # (D, B) int: extra value of a cell's FIRST article (covering it)

    def __post_init__(self):
        self.quota = np.asarray(self.quota, dtype=np.int64)
        self.value = np.asarray(self.value, dtype=np.int64)
        self.bonus = np.zeros_like(self.value) if self.bonus is None else np.asarray(self.bonus, dtype=np.int64)
        self.tier_min = np.asarray(self.tier_min, dtype=np.int64)
        self.tier_max = np.asarray(self.tier_max, dtype=np.int64)


@dataclass
class Groups:
    """Articles aggregated by everything the program sees."""
    of_article: np.ndarray   # (N,) group index of each article
    size: np.ndarray         # (G,)
    bins: np.ndarray         # (G, D)
    tier: np.ndarray         # (G,)
    source: np.ndarray       # (G,) dense 0..S-1
    cluster: np.ndarray      # (G,) dense 0..K-1, -1 = none
    weight: np.ndarray       # (G,)

    @property
    def count(self) -> int:
        return len(self.size)


@dataclass
class Solution:
    counts: np.ndarray        # (G,) articles taken per group
    objective: int
    bound: int
    status: str               # 'optimal' | 'feasible'
    proven_by: str            # 'LP bound' | 'CP-SAT' | '' (not proven)
    seconds: float
    timings: dict = field(default_factory=dict)
    groups: int = 0
    free_groups: int = 0      # groups left to CP-SAT after reduced-cost fixing
    lp_objective: float = 0.0
    rounded_objective: int = 0

    @property
    def gap(self) -> float:
        return 0.0 if self.bound <= 0 else max(0.0, (self.bound - self.objective) / self.bound)


# ---- aggregation ------------------------------------------------------------------------------

def aggregate(pool: Pool, program: Program) -> Groups:
    cols = {f"b{d}": pool.bins[:, d] for d in range(pool.bins.shape[1])}
    cols["tier"] = pool.tier
    cols["weight"] = pool.weight
    cols["cluster"] = pool.cluster
    # a source only matters to the program where it is capped
    cols["source"] = pool.source if program.max_per_source is not None else np.zeros(pool.size, dtype=np.int64)
    frame = pd.DataFrame(cols)
    of_article = frame.groupby(list(cols), sort=True).ngroup().to_numpy()
    n_groups = int(of_article.max()) + 1 if pool.size else 0
    first = np.full(n_groups, pool.size, dtype=np.int64)
    np.minimum.at(first, of_article, np.arange(pool.size))
    _, source_dense = np.unique(cols["source"][first], return_inverse=True)
    cluster_raw = pool.cluster[first]
    cluster_dense = np.full(n_groups, -1, dtype=np.int64)
    clustered = cluster_raw >= 0
    if clustered.any():
        _, cluster_dense[clustered] = np.unique(cluster_raw[clustered], return_inverse=True)
    return Groups(
        of_article=of_article,
        size=np.bincount(of_article, minlength=n_groups).astype(np.int64),
        bins=pool.bins[first],
        tier=pool.tier[first],
        source=source_dense.astype(np.int64),
        cluster=cluster_dense,
        weight=pool.weight[first],
    )


# ---- objective --------------------------------------------------------------------------------

def cell_counts(bins: np.ndarray, counts: np.ndarray, n_bins: int) -> np.ndarray:
    """(D, B) articles per cell, for rows of `bins` taken `counts` times each."""
    d = bins.shape[1]
    out = np.zeros((d, n_bins), dtype=np.int64)
    for j in range(d):
        out[j] = np.bincount(bins[:, j], weights=counts, minlength=n_bins)[:n_bins].astype(np.int64)
    return out


def objective_value(bins: np.ndarray, counts: np.ndarray, weight: np.ndarray, program: Program) -> int:
    """The program's objective for rows taken `counts` times (groups, or articles with 0/1)."""
    cells = cell_counts(bins, counts, program.quota.shape[1])
    return int((program.value * np.minimum(cells, program.quota)).sum() + (program.bonus * (cells > 0)).sum()
               + (weight * counts).sum())


# ---- feasibility ------------------------------------------------------------------------------

def check_feasible(groups: Groups, program: Program) -> None:
    """Cheap counting checks that name the constraint a target cannot meet; raises SelectionError."""
    k = program.size
    units = _units(groups)
    if k > groups.size.sum():
        raise SelectionError(f"target size {k} is larger than the eligible pool ({int(groups.size.sum())} articles)")
    if k > units:
        raise SelectionError(
            f"target size {k} is larger than the {units} eligible articles left at one per near-duplicate cluster")
    tier_units = np.array([_units(groups, groups.tier == t) for t in range(len(program.tier_names))])
    for t, name in enumerate(program.tier_names):
        if program.tier_min[t] > program.tier_max[t]:
            raise SelectionError(f"tier share of {name}: minimum {program.tier_min[t]} is above maximum {program.tier_max[t]}")
        if program.tier_min[t] > tier_units[t]:
            raise SelectionError(
                f"tier share of {name} needs at least {program.tier_min[t]} articles, the eligible pool has {tier_units[t]}")
    if program.tier_min.sum() > k:
        raise SelectionError(f"tier shares: the minimums add up to {program.tier_min.sum()} articles, more than the target {k}")
    reachable = np.minimum(program.tier_max, tier_units).sum()
    if reachable < k:
        raise SelectionError(f"tier shares: the maximums allow at most {reachable} articles, fewer than the target {k}")
    if program.max_per_source is not None:
        per_source = np.zeros(groups.source.max() + 1 if groups.count else 0, dtype=np.int64)
        for s in range(len(per_source)):
            per_source[s] = min(program.max_per_source, _units(groups, groups.source == s))
        if per_source.sum() < k:
            raise SelectionError(
                f"per-source cap: --max-per-source {program.max_per_source} over {len(per_source)} sources allows at most "
                f"{per_source.sum()} articles, fewer than the target {k}")


def _units(groups: Groups, mask: np.ndarray | None = None) -> int:
    """Articles that can be taken together: unclustered ones, plus one per cluster."""
    m = np.ones(groups.count, dtype=bool) if mask is None else mask
    loose = int(groups.size[m & (groups.cluster < 0)].sum())
    return loose + len(np.unique(groups.cluster[m & (groups.cluster >= 0)]))


# ---- the LP relaxation ------------------------------------------------------------------------

def _constraint_rows(groups: Groups, program: Program, relax: frozenset = frozenset()):
    """Rows over the group counts only: (lists of (row, col) pairs, lower, upper, family names)."""
    g = groups.count
    rows, cols, lo, hi, family = [], [], [], [], []

    def add(members: np.ndarray, lower: float, upper: float, name: str):
        r = len(lo)
        rows.append(np.full(len(members), r, dtype=np.int64))
        cols.append(members.astype(np.int64))
        lo.append(lower)
        hi.append(upper)
        family.append(name)

    everything = np.arange(g)
    add(everything, program.size, program.size, "target size")
    if "tier" not in relax:
        for t, name in enumerate(program.tier_names):
            members = everything[groups.tier == t]
            if program.tier_min[t] > 0 or program.tier_max[t] < groups.size[members].sum():
                add(members, program.tier_min[t], program.tier_max[t], f"tier share of {name}")
    if program.max_per_source is not None and "source" not in relax:
        order = np.argsort(groups.source, kind="stable")
        splits = np.flatnonzero(np.diff(groups.source[order])) + 1
        for members in np.split(order, splits):
            if len(members) and groups.size[members].sum() > program.max_per_source:
                add(members, -np.inf, program.max_per_source, "per-source cap")
    if "cluster" not in relax:
        clustered = everything[groups.cluster >= 0]
        order = clustered[np.argsort(groups.cluster[clustered], kind="stable")]
        splits = np.flatnonzero(np.diff(groups.cluster[order])) + 1
        for members in np.split(order, splits) if len(order) else []:
            if groups.size[members].sum() > 1:
                add(members, -np.inf, 1, "near-duplicate cluster")
    return rows, cols, lo, hi, family


def solve_lp(groups: Groups, program: Program, relax: frozenset = frozenset()):
    """GLOP on the relaxation. Returns (status, objective, counts, reduced costs of the counts)."""
    import scipy.sparse as sp
    from ortools.linear_solver.python import model_builder as mb

    g = groups.count
    d, b = program.quota.shape
    c = d * b
    # cell rows: y_c - sum_{groups in c} n_g <= 0 (fill up to the quota), then z_c - sum n_g <= 0
    # (the cell is covered at all); columns: n (G), y (C), z (C)
    cell_of = (np.arange(d)[None, :] * b + groups.bins).ravel()          # (G*D,)
    group_of = np.repeat(np.arange(g), d)
    r_cells = np.concatenate([cell_of, c + cell_of, np.arange(2 * c)])
    c_cells = np.concatenate([group_of, group_of, g + np.arange(2 * c)])
    v_cells = np.concatenate([-np.ones(2 * g * d), np.ones(2 * c)])
    c2 = 2 * c
    rows, cols, lo, hi, _ = _constraint_rows(groups, program, relax)
    r_more = np.concatenate(rows) + c2 if rows else np.zeros(0, dtype=np.int64)
    c_more = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    matrix = sp.csr_matrix(
        (np.concatenate([v_cells, np.ones(len(r_more))]),
         (np.concatenate([r_cells, r_more]), np.concatenate([c_cells, c_more]))),
        shape=(c2 + len(lo), g + c2))
    pool_cells = cell_counts(groups.bins, groups.size, b)
    var_lo = np.zeros(g + c2)
    var_hi = np.concatenate([groups.size, np.minimum(program.quota, pool_cells).ravel(),
                             np.minimum(1, pool_cells).ravel()]).astype(float)
    obj = np.concatenate([groups.weight, program.value.ravel(), program.bonus.ravel()]).astype(float)
    row_lo = np.concatenate([np.full(c2, -np.inf), np.asarray(lo, dtype=float)])
    row_hi = np.concatenate([np.zeros(c2), np.asarray(hi, dtype=float)])
    model = mb.Model()
    model.helper.fill_model_from_sparse_data(var_lo, var_hi, obj, row_lo, row_hi, matrix)
    model.helper.set_maximize(True)
    solver = mb.Solver("glop")
    # Dantzig pricing: with ~100 rows and up to 10^5-10^6 columns, steepest edge spends its time
    # updating column norms (measured: 1M->50k LP in 12 s instead of 280 s)
    solver.set_solver_specific_parameters("feasibility_rule: DANTZIG optimization_rule: DANTZIG")
    status = solver.solve(model)
    if status not in (mb.SolveStatus.OPTIMAL, mb.SolveStatus.FEASIBLE):
        return "infeasible" if status == mb.SolveStatus.INFEASIBLE else str(status), None, None, None
    variables = model.get_variables()
    values = solver.values(variables).to_numpy()
    reduced = solver.reduced_costs(variables).to_numpy()
    return "optimal", float(solver.objective_value), values[:g], reduced[:g]


def diagnose_infeasible(groups: Groups, program: Program) -> str:
    """Which constraint family makes the program infeasible: re-solve the LP with each relaxed."""
    families = {"tier": "the tier shares", "source": "the per-source cap",
                "cluster": "one article per near-duplicate cluster"}
    culprits = [words for key, words in families.items() if solve_lp(groups, program, frozenset({key}))[0] == "optimal"]
    if len(culprits) == 1:
        return f"{culprits[0]} (relaxing it makes a selection possible)"
    if culprits:
        return f"{' together with '.join(culprits)} (relaxing any one of them makes a selection possible)"
    for a, b in itertools.combinations(families, 2):
        if solve_lp(groups, program, frozenset({a, b}))[0] == "optimal":
            return f"{families[a]} and {families[b]} (only relaxing both makes a selection possible)"
    return "the target size with all constraints together"


# ---- greedy completion (rounding, and the greedy baseline) -------------------------------------

def greedy_fill(groups: Groups, program: Program, start: np.ndarray | None = None,
                tiebreak: np.ndarray | None = None) -> np.ndarray | None:
    """Add articles one at a time by best marginal gain until K are taken, never breaking an upper
    bound (group size, tier maximum, source cap, cluster). Tiers below their minimum are served
    first. Lazy evaluation: gains only fall as cells fill, so a stale heap entry is an upper bound.
    Returns group counts, or None where the bounds block it before K."""
    g, d = groups.count, groups.bins.shape[1]
    counts = np.zeros(g, dtype=np.int64) if start is None else start.astype(np.int64).copy()
    tiebreak = np.arange(g, dtype=float) if tiebreak is None else tiebreak
    quota = program.quota.tolist()
    value = program.value.tolist()
    bonus = program.bonus.tolist()
    cells = cell_counts(groups.bins, counts, program.quota.shape[1]).tolist()
    bins = groups.bins.tolist()
    weight = groups.weight.tolist()
    size = groups.size.tolist()
    tier = groups.tier.tolist()
    source = groups.source.tolist()
    cluster = groups.cluster.tolist()
    cnt = counts.tolist()
    tier_count = np.bincount(groups.tier, weights=counts, minlength=len(program.tier_names)).astype(int).tolist()
    src_count = np.bincount(groups.source, weights=counts, minlength=groups.source.max() + 1 if g else 0).astype(int).tolist()
    n_clusters = groups.cluster.max() + 1 if g and groups.cluster.max() >= 0 else 0
    clu_count = np.bincount(groups.cluster[groups.cluster >= 0], weights=counts[groups.cluster >= 0],
                            minlength=n_clusters).astype(int).tolist() if n_clusters else []
    tier_max = program.tier_max.tolist()
    cap = program.max_per_source
    total = sum(cnt)
    dims = range(d)

    def gain(i: int) -> int:
        row = bins[i]
        return weight[i] + sum((value[j][row[j]] if cells[j][row[j]] < quota[j][row[j]] else 0)
                               + (bonus[j][row[j]] if cells[j][row[j]] == 0 else 0) for j in dims)

    def open_(i: int) -> bool:
        return (cnt[i] < size[i] and tier_count[tier[i]] < tier_max[tier[i]]
                and (cap is None or src_count[source[i]] < cap)
                and (cluster[i] < 0 or clu_count[cluster[i]] < 1))

    def take(i: int) -> None:
        nonlocal total
        cnt[i] += 1
        total += 1
        row = bins[i]
        for j in dims:
            cells[j][row[j]] += 1
        tier_count[tier[i]] += 1
        src_count[source[i]] += 1
        if cluster[i] >= 0:
            clu_count[cluster[i]] += 1

    def run(candidates, stop) -> None:
        heap = [(-gain(i), tiebreak[i], i) for i in candidates if open_(i)]
        heapq.heapify(heap)
        while heap and not stop():
            neg, tb, i = heapq.heappop(heap)
            if not open_(i):
                continue
            now = gain(i)
            if now < -neg and heap and -heap[0][0] > now:
                heapq.heappush(heap, (-now, tb, i))
                continue
            take(i)
            if open_(i):
                heapq.heappush(heap, (-gain(i), tb, i))

    k = program.size
    for t in range(len(program.tier_names)):
        need = int(program.tier_min[t])
        if tier_count[t] < need:
            run([i for i in range(g) if tier[i] == t], lambda: tier_count[t] >= need or total >= k)
    run(range(g), lambda: total >= k)
    counts = np.asarray(cnt, dtype=np.int64)
    if total != k or (np.bincount(groups.tier, weights=counts, minlength=len(program.tier_names)) < program.tier_min).any():
        return None
    return counts


def improve_by_swaps(groups: Groups, program: Program, counts: np.ndarray, seconds: float) -> np.ndarray:
    """1-swap local search: take one article out, put a better one in, while the objective rises
    and every bound still holds. Cheap on small pools, where an LP with quotas of 1-2 per cell is
    most fractional and rounding loses most; skipped when it would be slow."""
    g = groups.count
    deadline = time.perf_counter() + seconds
    counts = counts.copy()
    n_bins = program.quota.shape[1]
    d = groups.bins.shape[1]
    cells = cell_counts(groups.bins, counts, n_bins)
    tier_count = np.bincount(groups.tier, weights=counts, minlength=len(program.tier_names)).astype(np.int64)
    src_count = np.bincount(groups.source, weights=counts, minlength=groups.source.max() + 1).astype(np.int64)
    n_cl = int(groups.cluster.max()) + 1 if groups.cluster.max() >= 0 else 0
    clu_count = np.zeros(max(n_cl, 1), dtype=np.int64)
    np.add.at(clu_count, groups.cluster[groups.cluster >= 0], counts[groups.cluster >= 0])
    dim_index = np.arange(d)
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        support = np.flatnonzero(counts > 0)
        in_cells = program.value * (cells <= program.quota) + program.bonus * (cells == 1)  # loss per cell
        loss = groups.weight[support] + in_cells[dim_index[None, :], groups.bins[support]].sum(axis=1)
        for out in support[np.argsort(loss, kind="stable")]:
            after = cells.copy()
            after[dim_index, groups.bins[out]] -= 1
            open_value = program.value * (after < program.quota) + program.bonus * (after == 0)
            gain_in = groups.weight + open_value[dim_index[None, :], groups.bins].sum(axis=1)
            lose = groups.weight[out] + in_cells[dim_index, groups.bins[out]].sum()
            delta = gain_in - lose
            ok = (counts < groups.size) & (delta > 0)
            ok[out] = False
            t_out = groups.tier[out]
            other_tier = groups.tier != t_out
            ok &= ~other_tier | ((tier_count[groups.tier] < program.tier_max[groups.tier])
                                 & (tier_count[t_out] > program.tier_min[t_out]))
            if program.max_per_source is not None:
                ok &= (groups.source == groups.source[out]) | (src_count[groups.source] < program.max_per_source)
            clustered = groups.cluster >= 0
            same_cluster = clustered & (groups.cluster == groups.cluster[out])
            ok &= ~clustered | same_cluster | (clu_count[np.maximum(groups.cluster, 0)] < 1)
            if not ok.any():
                if time.perf_counter() > deadline:
                    break
                continue
            best = int(np.flatnonzero(ok)[np.argmax(delta[ok])])
            for grp, step in ((out, -1), (best, 1)):
                counts[grp] += step
                cells[dim_index, groups.bins[grp]] += step
                tier_count[groups.tier[grp]] += step
                src_count[groups.source[grp]] += step
                if groups.cluster[grp] >= 0:
                    clu_count[groups.cluster[grp]] += step
            improved = True
            break
    return counts


# ---- the solve --------------------------------------------------------------------------------

def solve(groups: Groups, program: Program, *, time_limit: float = 60.0, seed: int = DEFAULT_SEED,
          workers: int = 1, polish: str = "auto") -> Solution:
    """LP bound and start, rounding, then CP-SAT with a complete hint where the bound is not reached.
    polish: 'auto' (CP-SAT only when needed), 'always' (CP-SAT even when the LP bound already proves
    the rounded answer optimal; tests use it), 'never'."""
    t0 = time.perf_counter()
    check_feasible(groups, program)
    status, lp_obj, lp_counts, reduced = solve_lp(groups, program)
    t_lp = time.perf_counter() - t0
    if status != "optimal":
        raise SelectionError(f"no selection of {program.size} articles satisfies {diagnose_infeasible(groups, program)}")
    bound = int(math.floor(lp_obj + 1e-6))
    floor_counts = np.floor(lp_counts + 1e-7).astype(np.int64)
    frac = lp_counts - floor_counts
    rounded = greedy_fill(groups, program, start=floor_counts, tiebreak=-frac)
    if rounded is None:  # the floor left a bound too tight to complete: complete from scratch
        rounded = greedy_fill(groups, program)
    best_obj = objective_value(groups.bins, rounded, groups.weight, program) if rounded is not None else -1
    rounded_obj = best_obj
    if rounded is not None and best_obj < bound and groups.count * int((rounded > 0).sum()) <= 5_000_000:
        rounded = improve_by_swaps(groups, program, rounded, seconds=min(5.0, 0.2 * time_limit))
        best_obj = objective_value(groups.bins, rounded, groups.weight, program)
    t_round = time.perf_counter() - t0 - t_lp
    timings = {"lp": t_lp, "rounding": t_round, "cpsat": 0.0}
    best = rounded
    proven, free = "", 0
    if best is not None and best_obj >= bound and polish != "always":
        proven = "LP bound"
    elif polish != "never":
        left = max(0.5, time_limit - (time.perf_counter() - t0))
        cp_counts, cp_obj, cp_bound, cp_status, free = _polish(groups, program, best, best_obj, lp_obj, lp_counts,
                                                                reduced, left, seed, workers)
        timings["cpsat"] = time.perf_counter() - t0 - t_lp - t_round
        if cp_counts is not None and cp_obj >= best_obj:
            best, best_obj = cp_counts, cp_obj
        if cp_bound is not None:
            bound = min(bound, cp_bound)
        if cp_status == "optimal" or best_obj >= bound:
            proven = "CP-SAT"
            bound = best_obj
    if best is None:
        raise SelectionError(f"no selection of {program.size} articles found within the time limit "
                             f"({time_limit:g} s): raise --time-limit")
    return Solution(counts=best, objective=int(best_obj), bound=int(max(bound, best_obj)),
                    status="optimal" if proven else "feasible", proven_by=proven,
                    seconds=time.perf_counter() - t0, timings=timings, groups=groups.count, free_groups=free,
                    lp_objective=lp_obj, rounded_objective=int(rounded_obj))


def _polish(groups, program, hint, hint_obj, lp_obj, lp_counts, reduced, time_limit, seed, workers):
    """CP-SAT over the groups whose count can still matter. Returns (counts, obj, bound, status, free)."""
    from ortools.sat.python import cp_model

    g, (d, b) = groups.count, program.quota.shape
    lo = np.zeros(g, dtype=np.int64)
    hi = groups.size.copy()
    if hint is not None:
        # reduced-cost fixing: obj(x) <= lp_obj + sum_g rc_g (x_g - x*_g); keep only x that can reach hint_obj
        slack = lp_obj - hint_obj + 1e-6 * max(1.0, abs(lp_obj))
        at_lo = (reduced < -1e-9) & (lp_counts < 0.5)
        at_hi = (reduced > 1e-9) & (lp_counts > groups.size - 0.5)
        hi[at_lo] = np.minimum(hi[at_lo], np.floor(slack / -reduced[at_lo]).astype(np.int64))
        lo[at_hi] = np.maximum(0, groups.size[at_hi] - np.floor(slack / reduced[at_hi]).astype(np.int64))
        lo = np.minimum(lo, hint)  # guard against rounding noise: the hint must stay feasible
        hi = np.maximum(hi, hint)
    model = cp_model.CpModel()
    free_idx = np.flatnonzero(hi > lo)
    fixed_counts = lo.copy()
    fixed_counts[free_idx] = 0
    n = {int(i): model.new_int_var(int(lo[i]), int(hi[i]), f"n{i}") for i in free_idx}
    fixed_cells = cell_counts(groups.bins, fixed_counts, b)
    pool_cells = cell_counts(groups.bins, groups.size, b)
    hint_cells = cell_counts(groups.bins, hint, b) if hint is not None else None

    def expr(members: np.ndarray, const: int = 0):
        free_members = [n[int(i)] for i in members if int(i) in n]
        return sum(free_members) + const

    objective = []
    for j in range(d):
        for k in range(b):
            members = free_idx[groups.bins[free_idx, j] == k]
            for top, value, name in ((min(program.quota[j, k], pool_cells[j, k]), program.value[j, k], "y"),
                                     (min(1, pool_cells[j, k]), program.bonus[j, k], "z")):
                if top == 0 or value == 0:
                    continue
                y = model.new_int_var(0, int(top), f"{name}{j}_{k}")
                model.add(y <= expr(members, int(fixed_cells[j, k])))
                objective.append((int(value), y))
                if hint is not None:
                    model.add_hint(y, int(min(hint_cells[j, k], top)))
    fixed_weight = int((groups.weight * fixed_counts).sum())
    rows, cols, lo_r, hi_r, _ = _constraint_rows(groups, program)
    for r_members, lo_v, hi_v in zip(cols, lo_r, hi_r):
        const = int(fixed_counts[r_members].sum())
        e = expr(r_members, const)
        if isinstance(e, int):
            continue
        if lo_v > -np.inf:
            model.add(e >= int(lo_v))
        if hi_v < np.inf:
            model.add(e <= int(hi_v))
    model.maximize(sum(v * y for v, y in objective)
                   + sum(int(groups.weight[i]) * var for i, var in n.items() if groups.weight[i]) + fixed_weight)
    if hint is not None:
        for i, var in n.items():
            model.add_hint(var, int(hint[i]))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit)
    solver.parameters.random_seed = int(seed)
    solver.parameters.num_workers = int(workers)
    # one worker: the same seed gives the same answer (parallel CP-SAT is not reproducible), and on
    # these models it proved optimality faster than 8 workers sharing 2 cores (measured: 1.3 s vs 20 s)
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, None, None, "optimal" if status == cp_model.INFEASIBLE and hint is not None else "unknown", len(n)
    counts = fixed_counts.copy()
    for i, var in n.items():
        counts[i] = solver.value(var)
    obj = objective_value(groups.bins, counts, groups.weight, program)
    cp_bound = int(math.floor(solver.best_objective_bound + 1e-6))
    return counts, obj, cp_bound, "optimal" if status == cp_model.OPTIMAL else "feasible", len(n)


# ---- from group counts to articles ------------------------------------------------------------

def pick_articles(pool: Pool, groups: Groups, counts: np.ndarray, seed: int) -> np.ndarray:
    """Boolean mask over the pool: counts[g] articles of each group, by priority (highest first),
    ties in a seeded random order. Same seed, same articles."""
    rank = np.random.default_rng(seed).permutation(pool.size)
    priority = np.zeros(pool.size) if pool.priority is None else np.nan_to_num(pool.priority, nan=-np.inf)
    order = np.lexsort((rank, -priority, groups.of_article))
    sorted_groups = groups.of_article[order]
    starts = np.searchsorted(sorted_groups, np.arange(groups.count))
    position = np.arange(pool.size) - starts[sorted_groups]
    chosen = np.zeros(pool.size, dtype=bool)
    chosen[order[position < counts[sorted_groups]]] = True
    return chosen


def add_uniform(pool: Pool, chosen: np.ndarray, k: int, seed: int) -> np.ndarray:
    """`chosen` plus k more articles drawn uniformly (seeded) from the rest, at most one per
    near-duplicate cluster (none from a cluster already chosen), as the program picks."""
    out = chosen.copy()
    taken = set(pool.cluster[out & (pool.cluster >= 0)].tolist())
    added = 0
    for i in np.random.default_rng(seed).permutation(pool.size):
        if added == k:
            break
        if out[i] or (pool.cluster[i] >= 0 and pool.cluster[i] in taken):
            continue
        out[i] = True
        added += 1
        if pool.cluster[i] >= 0:
            taken.add(pool.cluster[i])
    if added < k:
        raise SelectionError(f"only {added} of the {k} articles to draw uniformly are left in the pool "
                             f"(near-duplicate clusters count once)")
    return out


def choose_uniform(pool: Pool, program: Program, k: int, *, seed: int) -> tuple[np.ndarray, Groups, Solution]:
    """The `random` strategy: k articles drawn uniformly (add_uniform), measured by the program's
    objective (no program is solved: status 'uniform')."""
    started = time.perf_counter()
    groups = aggregate(pool, program)
    chosen = add_uniform(pool, np.zeros(pool.size, dtype=bool), k, seed)
    objective = int(objective_value(pool.bins, chosen.astype(np.int64), pool.weight, program))
    counts = np.bincount(groups.of_article[chosen], minlength=groups.count)
    return chosen, groups, Solution(counts=counts, objective=objective, bound=0, status="uniform", proven_by="",
                                    seconds=time.perf_counter() - started, groups=groups.count)


def random_subset(pool_size: int, k: int, seed: int) -> np.ndarray:
    chosen = np.zeros(pool_size, dtype=bool)
    chosen[np.random.default_rng(seed).choice(pool_size, size=k, replace=False)] = True
    return chosen



# ---- one selection, start to end -------------------------------------------------------------

def choose(pool: Pool, program: Program, *, seed: int, time_limit: float) -> tuple[np.ndarray, Groups, Solution]:
    """Aggregate, solve and pick: the mask of the chosen articles, the groups and the solution."""
    groups = aggregate(pool, program)
    solution = solve(groups, program, time_limit=time_limit, seed=seed)
    return pick_articles(pool, groups, solution.counts, seed), groups, solution
