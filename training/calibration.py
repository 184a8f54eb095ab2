"""Probability calibration as a named step, chosen by measurement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

Method = Literal["isotonic", "sigmoid"]
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


@dataclass
class Calibrator:
    """Maps raw model probabilities to calibrated ones (monotone non-decreasing).

    ``sigmoid`` is Platt scaling on the logit of the raw probability; ``isotonic`` a
    piecewise-linear monotone fit. Stored as plain arrays so it serialises as JSON.
    """

    method: Method = "sigmoid"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, raw: np.ndarray, y: np.ndarray, method: Method) -> Calibrator:
        raw, y = np.asarray(raw, dtype="float64"), np.asarray(y)
        if method == "isotonic":
            iso = IsotonicRegression(out_of_bounds="clip", y_min=_EPS, y_max=1 - _EPS).fit(raw, y)
            return cls("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
        lr = LogisticRegression(C=1e6).fit(_logit(raw).reshape(-1, 1), y)
        return cls("sigmoid", {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])})

    def transform(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype="float64")
        if self.method == "isotonic":
            return np.interp(raw, self.params["x"], self.params["y"])
        z = self.params["a"] * _logit(raw) + self.params["b"]
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        return cls(d["method"], d["params"])


def choose_calibration(raw: np.ndarray, y: np.ndarray, *, seed: int, folds: int = 5,
                       groups: np.ndarray | None = None) -> tuple[Method, dict[str, float]]:
    """Cross-validated log loss of each method on the calibration window; the lower wins.

    ``groups`` (e.g. the contact of each row, when the window stacks several as-of dates):
    a group's rows stay in one fold (a hash of the group picks it: linear time at millions of
    rows), so a contact's twin row at another date does not reward the method that
    memorises it (isotonic)."""
    raw, y = np.asarray(raw), np.asarray(y)
    losses: dict[str, float] = {}
    if groups is None:
        splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(raw, y))
    else:
        key = f"leadscore{seed:07d}"[-16:]  # hash_array takes a 16-character key
        fold = pd.util.hash_array(np.asarray(groups, dtype=object), hash_key=key) % np.uint64(folds)
        splits = [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(folds)]
    for method in ("sigmoid", "isotonic"):
        total = 0.0
        for fit_idx, eval_idx in splits:
            cal = Calibrator.fit(raw[fit_idx], y[fit_idx], method)  # type: ignore[arg-type]
            total += log_loss(y[eval_idx], cal.transform(raw[eval_idx]), labels=[0, 1]) * len(eval_idx)
        losses[method] = total / len(y)
    return min(losses, key=losses.get), losses  # type: ignore[return-value]
