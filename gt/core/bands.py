"""Score bands on the 0-10 scale: the one definition every stage uses (a noun, pure).

    middle band   4 <= score < 8   (bins 4-7): where an uninformative rater piles its scores
    outer bins    score < 4 or score >= 8 (bins 0-3 and 8-10): the rest of the scale
        low tail  score < 4        (bins 0-3)
        high tail score >= 8       (bins 8-10)

Coverage counts the articles in each band, the selection strategies weight the outer bins
('extreme'), the learning curves, the student's metrics and evaluate report the tail MAE over the
outer bins, and aimed labelling counts the outer-bin articles it finds: all from these numbers.
"""
from __future__ import annotations

import numpy as np

MIDDLE_LOW = 4.0     # the middle band starts here ...
MIDDLE_HIGH = 8.0    # ... and ends just below here
SCORE_MIN = 0.0
SCORE_MAX = 10.0


def is_low(score):
    """Low tail: score < MIDDLE_LOW (elementwise for an array)."""
    return np.asarray(score, dtype=float) < MIDDLE_LOW if np.ndim(score) else bool(score < MIDDLE_LOW)


def is_high(score):
    """High tail: score >= MIDDLE_HIGH (elementwise for an array)."""
    return np.asarray(score, dtype=float) >= MIDDLE_HIGH if np.ndim(score) else bool(score >= MIDDLE_HIGH)


def is_outer(score):
    """Outer bins: low or high tail (elementwise for an array)."""
    if np.ndim(score):
        s = np.asarray(score, dtype=float)
        return (s < MIDDLE_LOW) | (s >= MIDDLE_HIGH)
    return bool(score < MIDDLE_LOW or score >= MIDDLE_HIGH)


def in_middle(score):
    """The middle band: MIDDLE_LOW <= score < MIDDLE_HIGH (elementwise for an array)."""
    if np.ndim(score):
        s = np.asarray(score, dtype=float)
        return (s >= MIDDLE_LOW) & (s < MIDDLE_HIGH)
    return bool(MIDDLE_LOW <= score < MIDDLE_HIGH)


def words() -> str:
    """The bands in words, for reports."""
    return (f"low tail: score below {MIDDLE_LOW:g} (bins 0-{MIDDLE_LOW - 1:g}); middle band: {MIDDLE_LOW:g} to "
            f"below {MIDDLE_HIGH:g} (bins {MIDDLE_LOW:g}-{MIDDLE_HIGH - 1:g}); high tail: {MIDDLE_HIGH:g} or more "
            f"(bins {MIDDLE_HIGH:g}-10); outer bins: either tail")
