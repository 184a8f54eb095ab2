"""Output helpers shared by every scorer (model and rules).

Every scorer answers, per contact, ``contact_id, probability, score, band, reasons,
scorer, model_name, model_version, scored_at`` (``features.schema.OUTPUT_COLUMNS``).
This module turns probabilities into the 0..100 score and the A-D band
(:class:`ScoreScale`) and per-feature effects into reason codes
(:func:`format_reasons`), with business-readable feature names (:func:`readable`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.schema import BANDS, FEATURES, OTHER_EVENT

__all__ = [
    "DEFAULT_BAND_THRESHOLDS",
    "READABLE_NAMES",
    "ScoreScale",
    "format_reasons",
    "json_safe",
    "readable",
    "top_effects",
]

# ---------------------------------------------------------------------------
# Score scale and bands
# ---------------------------------------------------------------------------

#: Score cut-offs of the bands A, B, C (anything below C is D): top 5% / next 15% /
#: next 30% / rest of the training population.
DEFAULT_BAND_THRESHOLDS: dict[str, int] = {"A": 95, "B": 80, "C": 50}

_PERCENTILES = np.arange(101, dtype=float)


def check_band_thresholds(thresholds: Mapping[str, float]) -> dict[str, int]:
    keys = tuple(BANDS[:-1])
    if set(thresholds) != set(keys):
        raise ValueError(
            f"band_thresholds must have exactly the keys {list(keys)}, got {sorted(thresholds)}"
        )
    out = {k: int(thresholds[k]) for k in keys}
    values = [out[k] for k in keys]
    if any(v < 0 or v > 100 for v in values):
        raise ValueError(f"band_thresholds must lie in 0..100, got {out}")
    if any(a <= b for a, b in itertools.pairwise(values)):
        raise ValueError(f"band_thresholds must be strictly decreasing A > B > C, got {out}")
    return out


@dataclass(frozen=True)
class ScoreScale:
    """Maps calibrated probabilities to a 0..100 score and an A-D band.

    The score is the percentile rank of a probability in the training population
    (learned with :meth:`fit`): 95 means "higher than 95% of the training leads".
    Bands are cut on the score, so their sizes on the training population are the
    threshold gaps (defaults: A top 5%, B next 15%, C next 30%, D the rest).

    Parameters
    ----------
    quantiles
        101 probabilities, the 0th..100th percentiles of the training probabilities
        (non-decreasing).
    band_thresholds
        Minimum score of bands A, B and C; anything lower is D.

    Notes
    -----
    Ties (many training leads with the same probability, typical of rule scores)
    get their mid-rank; a probability strictly below the training minimum scores 0
    and one strictly above the maximum scores 100. ``score`` is deterministic and
    monotone non-decreasing in ``p``; NaN probabilities score 0.
    """

    quantiles: tuple[float, ...]
    band_thresholds: dict[str, int] = field(
        default_factory=lambda: dict(DEFAULT_BAND_THRESHOLDS)
    )

    def __post_init__(self) -> None:
        q = np.asarray(self.quantiles, dtype=float)
        if q.shape != (101,):
            raise ValueError(f"quantiles must hold 101 values, got {q.size}")
        if not np.all(np.isfinite(q)):
            raise ValueError("quantiles must be finite")
        if np.any(np.diff(q) < 0):
            raise ValueError("quantiles must be non-decreasing")
        object.__setattr__(self, "quantiles", tuple(float(v) for v in q))
        object.__setattr__(self, "band_thresholds", check_band_thresholds(self.band_thresholds))

    # -- construction -------------------------------------------------------
    @classmethod
    def fit(
        cls,
        probabilities: np.ndarray | Sequence[float],
        thresholds: Mapping[str, float] | None = None,
    ) -> ScoreScale:
        """Learn the scale from the probabilities of the training population.

        Parameters
        ----------
        probabilities
            Calibrated probabilities of the training population; non-finite values
            are ignored.
        thresholds
            Band score cut-offs ``{"A": .., "B": .., "C": ..}``; defaults to
            :data:`DEFAULT_BAND_THRESHOLDS`.
        """
        p = np.asarray(probabilities, dtype=float).ravel()
        p = p[np.isfinite(p)]
        if p.size == 0:
            raise ValueError("ScoreScale.fit needs at least one finite probability")
        q = np.quantile(p, _PERCENTILES / 100.0)
        q = np.maximum.accumulate(q)  # guard against float round-off
        return cls(
            quantiles=tuple(q),
            band_thresholds=dict(thresholds or DEFAULT_BAND_THRESHOLDS),
        )

    @classmethod
    def identity(cls, thresholds: Mapping[str, float] | None = None) -> ScoreScale:
        """Scale for an untrained scorer: ``score = round(100 * p)``."""
        return cls(
            quantiles=tuple(_PERCENTILES / 100.0),
            band_thresholds=dict(thresholds or DEFAULT_BAND_THRESHOLDS),
        )

    # -- use ----------------------------------------------------------------
    def score(self, p: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """Percentile rank (0..100, int64) of ``p`` in the training distribution."""
        x = np.atleast_1d(np.asarray(p, dtype=float))
        q = np.asarray(self.quantiles)
        uniq, first = np.unique(q, return_index=True)
        last = np.append(first[1:] - 1, q.size - 1)
        mid_rank = (first + last) / 2.0
        raw = np.interp(x, uniq, mid_rank)
        raw = np.where(x < uniq[0], 0.0, raw)
        raw = np.where(x > uniq[-1], 100.0, raw)
        raw = np.where(np.isnan(x), 0.0, raw)
        # truncated, not rounded: a score of 95 is a percentile of at least 95, so band A
        # (score >= 95) is the top 5 % and not 5.5 % (the cut-offs of band_probability_cutoffs)
        return np.clip(np.floor(raw), 0, 100).astype(np.int64)

    def band(self, score: np.ndarray | Sequence[int] | int) -> np.ndarray:
        """Band letter per score: ``A`` if score >= threshold A, ... else ``D``."""
        s = np.atleast_1d(np.asarray(score, dtype=float))
        t = self.band_thresholds
        idx = np.full(s.shape, len(BANDS) - 1, dtype=np.int64)
        for i, b in reversed(list(enumerate(BANDS[:-1]))):
            idx = np.where(s >= t[b], i, idx)
        return np.asarray(BANDS, dtype=object)[idx]

    def band_probability_cutoffs(self) -> dict[str, float]:
        """Training-population probability at each band's score cut-off (for reports)."""
        q = self.quantiles
        return {b: float(q[self.band_thresholds[b]]) for b in BANDS[:-1]}

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"quantiles": list(self.quantiles), "band_thresholds": dict(self.band_thresholds)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreScale:
        """Inverse of :meth:`to_dict`."""
        return cls(
            quantiles=tuple(d["quantiles"]),
            band_thresholds=dict(d.get("band_thresholds") or DEFAULT_BAND_THRESHOLDS),
        )


# ---------------------------------------------------------------------------
# Business-readable feature names
# ---------------------------------------------------------------------------

# event type -> (plural used for counts, singular used after "Days since last")
_EVENT_NOUNS: dict[str, tuple[str, str]] = {
    "page_view": ("Page views", "page view"),
    "pricing_view": ("Pricing page views", "pricing page view"),
    "content_download": ("Content downloads", "content download"),
    "webinar_registered": ("Webinar registrations", "webinar registration"),
    "webinar_attended": ("Webinars attended", "webinar attendance"),
    "email_open": ("Email opens", "email open"),
    "email_click": ("Email clicks", "email click"),
    "form_submit": ("Form submissions", "form submission"),
    "demo_request": ("Demo requests", "demo request"),
    "chat": ("Chats", "chat"),
    "unsubscribe": ("Unsubscribes", "unsubscribe"),
    "email_bounce": ("Email bounces", "email bounce"),
    OTHER_EVENT: ("Other activities", "other activity"),
}

_OVERRIDES: dict[str, str] = {
    "industry": "Industry",
    "employees_band": "Company size (employees)",
    "revenue_band": "Annual revenue band",
    "country": "Country",
    "lead_source": "Lead source",
    "seniority": "Seniority",
    "department": "Department",
    "email_quality": "Email quality",
    "stage": "Lifecycle stage",
    "employees": "Employees",
    "annual_revenue": "Annual revenue",
    "has_phone": "Has a phone number",
    "do_not_email": "Do not email",
    "profile_completeness": "Profile completeness",
    "contact_age_days": "Days since contact created",
    "days_since_last_event": "Days since last activity",
    "engagement_decayed": "Engagement (time-decayed)",
    "engagement_trend": "Engagement trend (last 7 days vs before)",
    "distinct_content_90d": "Distinct content pieces (90 days)",
    "email_ctr_90d": "Email click-through rate (90 days)",
    "unsubscribed": "Unsubscribed",
    "bounced": "Email bounced",
    "days_in_stage": "Days in current stage",
    "stage_regressions": "Stage regressions",
    "active_days_30d": "Active days (30 days)",
    "active_days_90d": "Active days (90 days)",
}

_WINDOW_RE = re.compile(r"^(?P<base>.+)_(?P<days>\d+)d$")


def _generated_name(feature: str) -> str:
    """Name from the feature naming pattern; generic fallback for anything else."""
    if feature in _OVERRIDES:
        return _OVERRIDES[feature]
    if feature.startswith("days_since_") and feature[len("days_since_"):] in _EVENT_NOUNS:
        return f"Days since last {_EVENT_NOUNS[feature[len('days_since_'):]][1]}"
    if feature.endswith("_decayed") and feature[: -len("_decayed")] in _EVENT_NOUNS:
        return f"{_EVENT_NOUNS[feature[: -len('_decayed')]][0]} (time-decayed)"
    m = _WINDOW_RE.match(feature)
    if m:
        base = m.group("base")
        days = int(m.group("days"))
        noun = _EVENT_NOUNS[base][0] if base in _EVENT_NOUNS else _generic(base)
        return f"{noun} ({days} days)"
    if feature in _EVENT_NOUNS:
        return _EVENT_NOUNS[feature][0]
    return _generic(feature)


def _generic(feature: str) -> str:
    words = str(feature).replace("_", " ").strip()
    return words[:1].upper() + words[1:] if words else str(feature)


#: Business-readable name of every feature in ``features.schema.FEATURES``.
READABLE_NAMES: dict[str, str] = {f: _generated_name(f) for f in FEATURES}


def readable(feature: str) -> str:
    """Business-readable name of a feature, e.g. ``pricing_view_30d`` ->
    ``"Pricing page views (30 days)"``; unknown names are de-snake-cased."""
    name = READABLE_NAMES.get(feature)
    return name if name is not None else _generated_name(str(feature))


# ---------------------------------------------------------------------------
# Reason codes
# ---------------------------------------------------------------------------


_CHUNK_ROWS = 65_536


def _largest_k(a: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest values per row, descending (ties: lower index).

    Repeated ``argmax`` beats ``argpartition`` along rows for the small ``k`` of reasons.
    """
    if k >= 8:
        part = np.argpartition(-a, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(a, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)
        return np.take_along_axis(part, order, axis=1)
    work = a.copy()
    rows = np.arange(a.shape[0])
    out = np.empty((a.shape[0], k), dtype=np.int64)
    for i in range(k):
        j = work.argmax(axis=1)
        out[:, i] = j
        work[rows, j] = -np.inf
    return out


def _top_effects_block(e: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e = np.nan_to_num(e, nan=0.0, posinf=0.0, neginf=0.0)
    idx = np.concatenate(
        [_largest_k(np.maximum(e, 0.0), k), _largest_k(np.maximum(-e, 0.0), k)], axis=1
    )
    eff = np.take_along_axis(e, idx, axis=1)
    valid = np.concatenate([eff[:, :k] > 0, eff[:, k:] < 0], axis=1)
    order = np.argsort(np.where(valid, -np.abs(eff), np.inf), axis=1, kind="stable")
    return (
        np.take_along_axis(idx, order, axis=1),
        np.take_along_axis(eff, order, axis=1),
        np.take_along_axis(valid, order, axis=1),
    )


def top_effects(effects: np.ndarray, top_k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised selection of the top-k positive and top-k negative effects per row.

    Parameters
    ----------
    effects
        ``(n_rows, n_features)`` effects (log-odds or points); NaN counts as 0.
    top_k
        How many positive and how many negative effects to keep per row.

    Returns
    -------
    idx, eff, valid
        ``(n_rows, 2 * k)`` arrays (``k = min(top_k, n_features)``): feature index,
        effect and whether the slot holds a factor. Per row, valid slots come first,
        sorted by ``|effect|`` descending (ties: positive before negative, then lower
        feature index). Processed in row blocks to bound memory.
    """
    e = np.asarray(effects, dtype=float)
    if e.ndim != 2:
        raise ValueError(f"effects must be 2-D (rows x features), got shape {e.shape}")
    n, f = e.shape
    k = min(int(top_k), f)
    if k <= 0 or n == 0:
        return (
            np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0)), np.zeros((n, 0), dtype=bool)
        )
    idx = np.empty((n, 2 * k), dtype=np.int64)
    eff = np.empty((n, 2 * k))
    valid = np.empty((n, 2 * k), dtype=bool)
    for lo in range(0, n, _CHUNK_ROWS):
        hi = min(lo + _CHUNK_ROWS, n)
        idx[lo:hi], eff[lo:hi], valid[lo:hi] = _top_effects_block(e[lo:hi], k)
    return idx, eff, valid


def json_safe(value: Any, decimals: int = 4) -> str | float | int | None:
    """A lead's feature value as a JSON-safe scalar (missing -> None, floats rounded)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return None if not math.isfinite(v) else round(v, decimals)
    if isinstance(value, str):
        return value
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.isoformat()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def rounded_floats(values: np.ndarray, decimals: int) -> list[float | None]:
    """Floats for JSON, rounded to ``decimals`` as numpy rounds; missing or infinite -> None.
    A value too large to round (numpy's rounding overflows near 1e308) is kept whole."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.round(v, decimals)
    r = np.where(np.isfinite(r), r, v)
    return [x if math.isfinite(x) else None for x in r.tolist()]


def _json_values(col: pd.Series, rows: np.ndarray, decimals: int) -> np.ndarray:
    """JSON-safe values of ``col`` at positions ``rows``, as an object array."""
    dtype = col.dtype
    out = np.empty(rows.size, dtype=object)
    exact_int = pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype)
    if exact_int and not col.hasnans:
        out[:] = col.to_numpy(dtype=np.int64)[rows].tolist()
    elif pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        out[:] = rounded_floats(col.to_numpy(dtype=float, na_value=np.nan)[rows], decimals)
    elif pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        out[:] = col.to_numpy(dtype=object, na_value=None)[rows].tolist()
    else:
        vals = col.to_numpy(dtype=object)[rows]
        out[:] = [json_safe(v, decimals) for v in vals]
    return out


def _value_column(values: pd.DataFrame | None, name: str, n: int) -> pd.Series | None:
    if values is None or name not in values.columns:
        return None
    col = values[name]
    if isinstance(col, pd.DataFrame):  # duplicated column name
        col = col.iloc[:, 0]
    if len(col) != n:
        raise ValueError(f"values has {len(col)} rows, effects has {n}")
    return col


def format_reasons(
    effects: np.ndarray | pd.DataFrame,
    values: pd.DataFrame | None = None,
    feature_names: Sequence[str] | None = None,
    *,
    top_k: int = 3,
    names: Mapping[str, str] | None = None,
    decimals: int = 4,
) -> list[list[dict[str, Any]]]:
    """Reason codes per row: the top-k positive and top-k negative factors.

    Parameters
    ----------
    effects
        ``(n_rows, n_features)`` per-feature effects in log-odds or points (e.g. SHAP
        contributions without the bias column, or rule points). A DataFrame supplies
        ``feature_names`` from its columns.
    values
        The leads' feature values, one row per effects row (by position); a feature
        missing from it gets ``value=None``.
    feature_names
        Column names of ``effects`` (required for an ndarray).
    top_k
        Number of positive and of negative factors per row.
    names
        Overrides of the business-readable names (default :func:`readable`).
    decimals
        Rounding of effects and float values.

    Returns
    -------
    list of list of dict
        Per row, up to ``2 * top_k`` dicts ``{"feature", "value", "effect"}`` sorted
        by ``|effect|`` descending; zero effects never appear.
    """
    if isinstance(effects, pd.DataFrame):
        feature_names = list(effects.columns) if feature_names is None else feature_names
        effects = effects.to_numpy(dtype=float)
    e = np.asarray(effects, dtype=float)
    if feature_names is None:
        raise ValueError("feature_names is required when effects is an array")
    feature_names = [str(c) for c in feature_names]
    if e.ndim != 2 or e.shape[1] != len(feature_names):
        raise ValueError(
            f"effects shape {e.shape} does not match {len(feature_names)} feature names"
        )
    n = e.shape[0]
    idx, eff, valid = top_effects(e, top_k)
    width = idx.shape[1]

    # Gather the values of the selected (row, feature) pairs, one feature at a time.
    shown = np.full((n, width), None, dtype=object)
    for j in np.unique(idx[valid]):
        col = _value_column(values, feature_names[j], n)
        if col is None:
            continue
        rows, slots = np.nonzero(valid & (idx == j))
        shown[rows, slots] = _json_values(col, rows, decimals)

    label = dict(names or {})
    readable_names = np.asarray([label.get(f) or readable(f) for f in feature_names], dtype=object)
    counts = valid.sum(axis=1).tolist()
    name_l = readable_names[idx].tolist()
    eff_l = np.round(eff, decimals).tolist()
    shown_l = shown.tolist()
    out: list[list[dict[str, Any]]] = []
    append = out.append
    for fn, ee, vv, c in zip(name_l, eff_l, shown_l, counts):
        append([{"feature": fn[m], "value": vv[m], "effect": ee[m]} for m in range(c)])
    return out

