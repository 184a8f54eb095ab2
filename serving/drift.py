"""Population stability index (PSI) between a reference and a current feature distribution.

``PSI = sum_i (c_i - r_i) * ln(c_i / r_i)`` over bins ``i``, with ``r_i`` and ``c_i`` the
reference and current shares of the bin. Practitioners read it as: below 0.1 stable,
0.1-0.25 worth a look, above 0.25 a shift that calls for retraining.

- Numeric features: bins are the reference deciles (or ``bins`` quantiles; duplicate edges
  merged, so a 0/1 flag gets two bins), intervals closed on the right, open-ended at both
  ends; missing values form a bin of their own.
- Categorical features (strings, booleans, categories): each reference category is a bin;
  categories unseen in the reference are pooled into one bin; missing is a category.

Empty bins get a share of ``eps`` so that the logarithm stays finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_EXCLUDED", "psi", "psi_table"]

#: Columns never compared: keys and personal data.
DEFAULT_EXCLUDED: frozenset[str] = frozenset(
    {
        "contact_id",
        "as_of",
        "email",
        "phone",
        "company_name",
        "company_domain",
        "first_name",
        "last_name",
        "name",
        "converted",
    }
)

_EPS = 1e-4
_MISSING = "\x00missing"
_UNSEEN = "\x00unseen"


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)


def _shares(counts: np.ndarray, eps: float) -> np.ndarray:
    total = counts.sum()
    p = counts / total if total else np.zeros(len(counts))
    return np.maximum(p, eps)


def _numeric_counts(
    reference: pd.Series, current: pd.Series, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    ref = reference.to_numpy(dtype=np.float64, na_value=np.nan)
    cur = current.to_numpy(dtype=np.float64, na_value=np.nan)
    ref_ok, cur_ok = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if ref_ok.size:
        levels = np.arange(1, bins) / bins
        edges = np.unique(np.quantile(ref_ok, levels))
    else:
        edges = np.array([], dtype=np.float64)
    n_bins = edges.size + 1
    # bin k = (edges[k-1], edges[k]]; the missing bin comes last
    ref_counts = np.bincount(np.searchsorted(edges, ref_ok, side="left"), minlength=n_bins)
    cur_counts = np.bincount(np.searchsorted(edges, cur_ok, side="left"), minlength=n_bins)
    ref_counts = np.append(ref_counts, ref.size - ref_ok.size)
    cur_counts = np.append(cur_counts, cur.size - cur_ok.size)
    return ref_counts, cur_counts


def _labels(s: pd.Series) -> pd.Series:
    return s.astype("object").where(s.notna(), _MISSING).astype(str)


def _categorical_counts(reference: pd.Series, current: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    ref = _labels(reference).value_counts()
    cur = _labels(current).value_counts()
    seen = cur.index.isin(ref.index)
    ref_counts = np.append(ref.to_numpy(dtype=np.int64), 0)
    cur_counts = np.append(
        cur.reindex(ref.index, fill_value=0).to_numpy(dtype=np.int64),
        int(cur[~seen].sum()),
    )
    return ref_counts, cur_counts


def psi(
    reference: pd.Series | Sequence | np.ndarray,
    current: pd.Series | Sequence | np.ndarray,
    bins: int = 10,
    *,
    eps: float = _EPS,
) -> float:
    """Population stability index of ``current`` against ``reference``.

    Parameters
    ----------
    reference, current
        One feature, e.g. the champion's training data and today's base. Numeric unless
        either is of a string, boolean, categorical or object dtype.
    bins
        Number of reference quantile bins for a numeric feature.
    eps
        Share given to empty bins.

    Returns
    -------
    float
        PSI >= 0; 0 for identical distributions. NaN when either side is empty.
    """
    if bins < 2:
        raise ValueError("bins must be >= 2")
    ref = pd.Series(reference).reset_index(drop=True)
    cur = pd.Series(current).reset_index(drop=True)
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    if _is_numeric(ref) and _is_numeric(cur):
        ref_counts, cur_counts = _numeric_counts(ref, cur, bins)
    else:
        ref_counts, cur_counts = _categorical_counts(ref, cur)
    r, c = _shares(ref_counts, eps), _shares(cur_counts, eps)
    both_empty = (ref_counts == 0) & (cur_counts == 0)
    terms = np.where(both_empty, 0.0, (c - r) * np.log(c / r))
    return float(max(terms.sum(), 0.0))


def psi_table(
    reference_df: pd.DataFrame,
    current_df: pd.DataFrame,
    columns: Sequence[str] | None = None,
    warn: float = 0.1,
    alert: float = 0.25,
    *,
    bins: int = 10,
) -> pd.DataFrame:
    """PSI of several features, with a status.

    Parameters
    ----------
    reference_df, current_df
        Feature tables (reference: the champion's training data; current: today's base).
    columns
        Features to compare; default: the columns both tables share, less keys, the label
        and personal data (:data:`DEFAULT_EXCLUDED`).
    warn, alert
        Thresholds: ``psi < warn`` is ``ok``, ``warn <= psi < alert`` is ``warn``,
        ``psi >= alert`` is ``alert``.

    Returns
    -------
    DataFrame
        ``feature, psi, status``, most shifted first.
    """
    if not warn <= alert:
        raise ValueError("warn must not exceed alert")
    if columns is None:
        columns = [
            c for c in reference_df.columns if c in current_df.columns and c not in DEFAULT_EXCLUDED
        ]
    missing = [c for c in columns if c not in reference_df.columns or c not in current_df.columns]
    if missing:
        raise KeyError(f"columns missing from the reference or current table: {missing}")
    values = np.array([psi(reference_df[c], current_df[c], bins) for c in columns], dtype=float)
    status = np.where(values >= alert, "alert", np.where(values >= warn, "warn", "ok"))
    status = np.where(np.isnan(values), "n/a", status)
    out = pd.DataFrame({"feature": list(columns), "psi": values, "status": status})
    return out.sort_values("psi", ascending=False, kind="stable", na_position="last").reset_index(
        drop=True
    )
