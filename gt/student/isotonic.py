"""Per-dimension isotonic calibration of a student's scores, fitted on the validation split only.

A regression student trained on few articles shrinks towards the mean: its scores keep the order but
not the spread. Isotonic regression (a monotone step map from the student's score to the oracle's,
scikit-learn's IsotonicRegression, clipped to the 0-10 scale and to the fitted range) restores what
the order allows. It is fitted on the val split (never train, which the student has seen, nor test,
which measures it), stored beside the model as isotonic.json, and applied by Student.predict (score,
evaluate) when the model's training_config.json says `"isotonic": true` (train --isotonic on). Train
and evaluate measure the test split both ways, so a user sees whether it helps on their data.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from gt.core.bands import SCORE_MAX, SCORE_MIN

FILE = "isotonic.json"


def fit(predicted: np.ndarray, true: np.ndarray, dims: Sequence[str]) -> dict:
    """The isotonic map per dimension from the val split's predictions to its labels."""
    from sklearn.isotonic import IsotonicRegression

    table = {"fitted_on": "val", "n": int(len(true)), "dimensions": {}}
    for j, d in enumerate(dims):
        iso = IsotonicRegression(y_min=SCORE_MIN, y_max=SCORE_MAX, out_of_bounds="clip")
        iso.fit(np.asarray(predicted, dtype=float)[:, j], np.asarray(true, dtype=float)[:, j])
        table["dimensions"][d] = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    return table


def apply(table: dict, scores: np.ndarray, dims: Sequence[str]) -> np.ndarray:
    """The calibrated scores: each dimension through its map (linear between the thresholds, flat
    beyond them, as IsotonicRegression.predict)."""
    out = np.array(scores, dtype=float, copy=True)
    for j, d in enumerate(dims):
        m = table["dimensions"][d]
        out[:, j] = np.interp(out[:, j], m["x"], m["y"])
    return out


def save(table: dict, folder: Path) -> None:
    from gt.core import report

    report.write_json_atomic(Path(folder) / FILE, table)


def load(folder: Path) -> dict | None:
    path = Path(folder) / FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
