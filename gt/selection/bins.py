"""The score bins of the selection program: lower edges on the 0-10 scale, their labels and
midpoints, and scores to bin indices (floor binning: half points fall into the bin below)."""
from __future__ import annotations

import numpy as np

from gt.core.bands import SCORE_MAX

# ---- bins -------------------------------------------------------------------------------------

DEFAULT_BINS = "0,1,2,3,4,5,6,7,8,9,10"


def parse_bins(text: str) -> np.ndarray:
    """Lower edges, e.g. '0,1,...,10' (the default: one bin per integer) or '0,3,5,7,9'."""
    try:
        edges = np.array([float(x) for x in text.split(",") if x.strip()], dtype=float)
    except ValueError:
        raise ValueError(f"--bins '{text}' is not a comma list of numbers (e.g. {DEFAULT_BINS})") from None
    if len(edges) < 2 or edges[0] != 0 or (np.diff(edges) <= 0).any() or edges[-1] > SCORE_MAX:
        raise ValueError(f"--bins '{text}': lower edges must start at 0, increase, and stay within 0-10")
    return edges


def bin_labels(edges: np.ndarray) -> list[str]:
    if np.array_equal(edges, np.arange(11)):
        return [str(int(e)) for e in edges]
    uppers = list(edges[1:]) + [SCORE_MAX]
    return [f"{lo:g}-{hi:g}" if i < len(edges) - 1 else (f"{lo:g}-10" if lo < 10 else "10")
            for i, (lo, hi) in enumerate(zip(edges, uppers))]


def bin_midpoints(edges: np.ndarray) -> np.ndarray:
    uppers = np.append(edges[1:], SCORE_MAX)
    mids = (edges + uppers) / 2
    if np.array_equal(edges, np.arange(11)):
        mids = edges.astype(float)  # integer bins: the bin is its score
    return mids


def to_bins(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 1).astype(np.int64)
