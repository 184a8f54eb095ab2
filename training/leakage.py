"""Probable leaks: features that alone separate converters almost perfectly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def single_feature_auc(
    frame: pd.DataFrame, y: np.ndarray, columns: Sequence[str], *, max_rows: int = 100_000, seed: int = 0
) -> pd.Series:
    """ROC AUC of each column used alone (direction-free: max(auc, 1 - auc)).

    Numbers are used as they are (missing as the lowest value); categories by their
    conversion rate in the same rows, which is optimistic and so errs towards flagging.
    """
    y = np.asarray(y)
    if len(y) > max_rows:
        keep = np.random.default_rng(seed).choice(len(y), max_rows, replace=False)
        frame, y = frame.iloc[keep], y[keep]
    if len(np.unique(y)) < 2:
        return pd.Series(np.nan, index=list(columns), dtype="float64")
    out = {}
    for c in columns:
        x = frame[c]
        if pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x):
            v = pd.to_numeric(x, errors="coerce").to_numpy(dtype="float64")
            v = np.where(np.isnan(v), np.nanmin(v) - 1 if np.isfinite(v).any() else 0, v)
        else:
            key = x.astype("object").where(x.notna(), "__missing__")
            v = pd.Series(y, index=key.index).groupby(key).transform("mean").to_numpy()
        auc = roc_auc_score(y, v) if np.unique(v).size > 1 else 0.5
        out[c] = max(auc, 1 - auc)
    return pd.Series(out, dtype="float64")


def probable_leaks(aucs: pd.Series, threshold: float) -> dict[str, str]:
    """Columns whose single-feature AUC reaches ``threshold``, with the reason."""
    return {
        c: f"alone separates converters with ROC AUC {a:.3f} >= {threshold} (probable leak)"
        for c, a in aucs.items()
        if np.isfinite(a) and a >= threshold
    }
