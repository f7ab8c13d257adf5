"""Train/val/test splits of a selection: sizes by largest remainder, and iterative stratification
over the (dimension, bin) cells with near-duplicate clusters kept whole."""
from __future__ import annotations

import numpy as np

# ---- splits -----------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")


def split_sizes(total: int, ratios: tuple[float, float, float]) -> np.ndarray:
    """Largest-remainder rounding of total * ratios (sums to total exactly)."""
    raw = np.asarray(ratios, dtype=float) * total
    sizes = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - sizes), kind="stable")[: total - sizes.sum()]:
        sizes[i] += 1
    return sizes


def assign_splits(bins: np.ndarray, unit: np.ndarray, ratios: tuple[float, float, float], seed: int) -> np.ndarray:
    """Iterative stratification (Sechidis et al. 2011) over the cells: the rarest cell is placed
    first, each unit (a near-duplicate cluster, or a lone article) goes to the split that still
    wants most of that cell. Whole units move together, so no cluster crosses splits. Returns the
    split index (0 train, 1 val, 2 test) per article."""
    n, d = bins.shape
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    unit_ids, unit_of = np.unique(unit, return_inverse=True)
    members = [[] for _ in unit_ids]
    for i, u in enumerate(unit_of):
        members[u].append(i)
    n_bins = int(bins.max()) + 1
    cell_of = bins + np.arange(d)[None, :] * n_bins          # (n, d) global cell ids
    ratios_a = np.asarray(ratios, dtype=float)
    want_total = split_sizes(n, ratios).astype(float)
    cell_total = np.bincount(cell_of.ravel(), minlength=d * n_bins)
    want_cell = ratios_a[:, None] * cell_total[None, :]        # (3, cells)
    unit_cells = [np.bincount(cell_of[m].ravel(), minlength=d * n_bins) for m in members]
    remaining = cell_total.astype(np.int64).copy()
    unassigned = set(range(len(unit_ids)))
    cell_units: dict[int, list[int]] = {}
    for u, m in enumerate(members):
        for c in np.unique(cell_of[m]):
            cell_units.setdefault(int(c), []).append(u)
    tie = rng.random(3)
    while unassigned:
        live = np.flatnonzero(remaining > 0)
        cell = int(live[np.argmin(remaining[live])])
        for u in rng.permutation(cell_units[cell]):
            u = int(u)
            if u not in unassigned:
                continue
            size = len(members[u])
            room = want_total >= size - 1e-9
            candidates = np.flatnonzero(room) if room.any() else np.arange(3)
            key = np.lexsort((tie[candidates], -want_total[candidates], -want_cell[candidates, cell]))
            s = int(candidates[key[0]])
            out[members[u]] = s
            want_total[s] -= size
            want_cell[s] -= unit_cells[u]
            remaining -= unit_cells[u]
            unassigned.discard(u)
    return out
