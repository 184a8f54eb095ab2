"""The online fast path of a :class:`~training.model.LeadModel`: feature columns in, outputs out.

:meth:`LeadModel.score` works on a feature DataFrame: the fitted feature-engine pipeline,
then the booster, the calibrator, the score scale and :func:`~training.scoring.format_reasons`.
For one lead that costs milliseconds of pandas overhead around 0.1 ms of trees. This module
does the same arithmetic on plain arrays:

* :class:`CompiledEncoder` reads the fitted pipeline once (imputation label, frequent labels,
  ordinal codes) and turns the feature columns into the booster's matrix with dictionary
  look-ups; it equals :meth:`LeadModel.matrix` exactly, unseen and missing categories
  included (tested).
* :class:`FastScorer` scores that matrix with the model's own booster, calibrator and scale,
  and formats reasons from ``pred_contrib`` exactly as :func:`format_reasons` does.

A pipeline of another shape raises :class:`NotImplementedError` in
:meth:`CompiledEncoder.from_model`; callers then keep using :meth:`LeadModel.score`.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from feature_engine.encoding import OrdinalEncoder, RareLabelEncoder
from feature_engine.imputation import CategoricalImputer

from features.schema import BANDS
from features.transformers import ColumnSelector
from training.model import LeadModel
from training.scoring import json_safe, readable, rounded_floats, top_effects

__all__ = ["CompiledEncoder", "FastScorer"]

_DECIMALS = 4  # format_reasons' default, used by LeadModel.score
#: Up to this many leads, each takes the single-lead path (one single-row C call, scalar
#: calibration and scale: ~40 µs a lead without reasons) rather than the matrix path (~150 µs
#: of set-up: ``Booster.predict``, the vectorised scale); up to the second, the matrix path
#: explains one lead at a time (``contributions_one`` + ``_reasons_one``), cheaper than the
#: vectorised :meth:`FastScorer.reasons` (measured with a 51-tree model).
_ROW_BY_ROW = 4
_ROW_BY_ROW_REASONS = 16
TOP_BANDS = ("A", "B")  # reasons="top": the bands sales calls, as `leadscore score --reasons top`


@dataclass(frozen=True)
class _Category:
    """Codes of one categorical column after imputation, rare grouping and ordinal coding."""

    codes: dict[str, float]  # frequent label -> code
    other: float  # code of anything else (grouped as rare, or never seen: -1)
    missing: float  # code of a missing value


class CompiledEncoder:
    """The fitted ``lightgbm_preprocessor`` as look-up tables: columns -> booster matrix.

    Parameters
    ----------
    categorical, numeric : sequence of str
        Column order of the matrix (categorical first), as in the model.
    categories : dict
        Per categorical column, its codes.
    """

    def __init__(self, categorical: Sequence[str], numeric: Sequence[str],
                 categories: dict[str, _Category]) -> None:
        self.categorical = list(categorical)
        self.numeric = list(numeric)
        self.categories = categories

    @classmethod
    def from_model(cls, model: LeadModel) -> CompiledEncoder:
        """Read the fitted pipeline of ``model``; NotImplementedError for another shape."""
        steps = dict(model.preprocessor.steps)
        select = steps.get("select")
        if not isinstance(select, ColumnSelector) or list(select.categorical) != list(model.categorical) \
                or list(select.numeric) != list(model.numeric):
            raise NotImplementedError("preprocessor: first step is not the expected ColumnSelector")
        cats = list(model.categorical)
        if not cats:
            if set(steps) != {"select"}:
                raise NotImplementedError(f"preprocessor: unexpected steps {list(steps)}")
            return cls([], model.numeric, {})
        impute, rare, codes = steps.get("impute"), steps.get("rare"), steps.get("codes")
        if list(steps) != ["select", "impute", "rare", "codes"] \
                or not isinstance(impute, CategoricalImputer) \
                or not isinstance(rare, RareLabelEncoder) \
                or not isinstance(codes, OrdinalEncoder) \
                or impute.imputation_method != "missing" \
                or codes.unseen != "encode":
            raise NotImplementedError(f"preprocessor: unexpected steps {list(steps)}")
        categories: dict[str, _Category] = {}
        for c in cats:
            fill = impute.imputer_dict_[c]
            frequent = list(rare.encoder_dict_[c])
            ordinal = codes.encoder_dict_[c]
            unseen = float(codes._unseen)  # -1: LightGBM reads a negative category as missing

            def code(label: object, ordinal: dict = ordinal, unseen: float = unseen) -> float:
                return float(ordinal[label]) if label in ordinal else unseen

            table = {str(v): code(v) for v in frequent if isinstance(v, str)}
            other = code(rare.replace_with)
            categories[c] = _Category(table, other, table.get(fill, other) if isinstance(fill, str) else other)
        return cls(cats, model.numeric, categories)

    def row(self, columns: Mapping[str, np.ndarray | Sequence[Any]], i: int = 0) -> np.ndarray:
        """The booster's input for lead ``i`` of ``columns``, as a float64 vector."""
        values = []
        for c in self.categorical:
            cat = self.categories[c]
            v = columns[c][i]
            values.append(cat.missing if v is None or (isinstance(v, float) and math.isnan(v))
                          else cat.codes.get(v, cat.other) if isinstance(v, str) else cat.other)
        values += [columns[c][i] for c in self.numeric]
        return np.array(values, dtype="float64")

    def matrix(self, columns: Mapping[str, np.ndarray | Sequence[Any]], n: int) -> np.ndarray:
        """The booster's float64 input ``(n, len(categorical) + len(numeric))``."""
        X = np.empty((n, len(self.categorical) + len(self.numeric)), dtype="float64")
        for j, c in enumerate(self.categorical):
            cat = self.categories[c]
            codes, other, missing = cat.codes, cat.other, cat.missing
            X[:, j] = [missing if v is None or (isinstance(v, float) and math.isnan(v))
                       else codes.get(v, other) if isinstance(v, str) else other
                       for v in columns[c]]
        k = len(self.categorical)
        if self.numeric:
            X[:, k:] = np.array([np.asarray(columns[c], dtype="float64") for c in self.numeric]).T
        return X


class FastScorer:
    """A :class:`LeadModel` scoring feature columns without pandas (same results).

    One lead (the common HTTP request) takes a path of its own: LightGBM's single-row C API
    (``LGBM_BoosterPredictForMatSingleRowFast``: the same predictor without the per-call
    set-up of ``Booster.predict``) and plain Python for the score scale and the reasons; so
    do up to four leads (an HTTP batch), one at a time. More go through ``Booster.predict``
    and the vectorised scale, and up to 16 of them are explained one at a time.

    Parameters
    ----------
    model : LeadModel
        Loaded with the wanted ``num_threads`` (1 in a server).
    """

    scorer = "model"

    def __init__(self, model: LeadModel) -> None:
        self.model = model
        self.encoder = CompiledEncoder.from_model(model)
        self.columns = model.columns
        self.names = [readable(f) for f in self.columns]
        self.model_name = model.model_name
        self.model_version = model.model_version
        self.top_k = model.top_k
        q = np.asarray(model.scale.quantiles)  # ScoreScale.score's tables, computed once
        self._uniq, first = np.unique(q, return_index=True)
        last = np.append(first[1:] - 1, q.size - 1)
        self._mid_rank = (first + last) / 2.0
        self._lo, self._hi = float(self._uniq[0]), float(self._uniq[-1])
        self._thresholds = [(b, float(model.scale.band_thresholds[b])) for b in BANDS[:-1]]
        n_features = len(self.columns)
        self._predict_one = _SingleRow(model.booster, _C_API_PREDICT_NORMAL, 1, n_features)
        # reasons as LeadModel.contributions gives them, whatever the number of rows
        table = model.tree_contributions
        if table is not None:  # online, a lead's first reasons should not wait
            table.warm()
        self._contrib_one = table.one if table is not None else _SingleRow(
            model.booster, _C_API_PREDICT_CONTRIB, n_features + 1, n_features)

    def score_columns(
        self,
        features: Mapping[str, np.ndarray],
        contact_ids: Sequence[str],
        *,
        scored_at: str,
        reasons: bool | np.ndarray | str = True,
    ) -> list[dict[str, Any]]:
        """Outputs (one dict per lead, :data:`features.schema.OUTPUT_COLUMNS`) of the leads
        whose feature columns are ``features``; reasons where ``reasons`` says (all, none, a
        boolean mask, or ``"top"``: leads in bands A and B, as ``leadscore score``)."""
        n = len(contact_ids)
        if isinstance(reasons, str) and reasons != "top":
            raise ValueError(f"reasons: expected True, False, a mask or 'top', got {reasons!r}")
        if n <= _ROW_BY_ROW:
            return [self._score_one(features, contact_ids[i], scored_at,
                                    reasons if isinstance(reasons, (bool, str)) else bool(reasons[i]), i)
                    for i in range(n)]
        X = self.encoder.matrix(features, n)
        p = self.model.calibrator.transform(self.model.predict_raw(X))
        score = self.model.scale.score(p)
        band = self.model.scale.band(score)
        if isinstance(reasons, str):
            reasons = np.isin(band, TOP_BANDS)
        rows = np.arange(n) if reasons is True else np.flatnonzero(reasons) if reasons is not False \
            else np.arange(0)
        explained: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        if len(rows) <= _ROW_BY_ROW_REASONS:
            for i in rows.tolist():
                explained[i] = self._reasons_one(self.contributions_one(X[i]), features, i)
        else:
            for i, r in zip(rows.tolist(), self.reasons(X[rows], features, rows)):
                explained[i] = r
        name, version = self.model_name, self.model_version
        return [
            {"contact_id": cid, "probability": pi, "score": si, "band": bi, "reasons": ri,
             "scorer": "model", "model_name": name, "model_version": version, "scored_at": scored_at}
            for cid, pi, si, bi, ri in zip(contact_ids, p.astype("float64").tolist(), score.tolist(),
                                           band.tolist(), explained)
        ]

    def _score_one(self, features: Mapping[str, np.ndarray], contact_id: str, scored_at: str,
                   reasons: bool | str, i: int = 0) -> dict[str, Any]:
        """Lead ``i`` of ``features``: the same numbers as the matrix path, with less machinery
        (``reasons``: True, False or ``"top"``)."""
        x = self.encoder.row(features, i)
        raw = self.predict_one(x)
        p = self._probability(raw)
        score = self._score(p)
        band = self._band(score)
        explain = band in TOP_BANDS if isinstance(reasons, str) else reasons
        return {"contact_id": contact_id, "probability": p, "score": score, "band": band,
                "reasons": self._reasons_one(self.contributions_one(x), features, i) if explain else [],
                "scorer": "model", "model_name": self.model_name,
                "model_version": self.model_version, "scored_at": scored_at}

    def predict_one(self, row: np.ndarray) -> float:
        """The booster's raw output for one encoded lead (thread-safe)."""
        return float(self._predict_one(row)[0])

    def contributions_one(self, row: np.ndarray) -> np.ndarray:
        """:meth:`LeadModel.contributions` of one encoded lead, bias last (thread-safe)."""
        return self._contrib_one(row)

    def _probability(self, raw: float) -> float:
        return float(self.model.calibrator.transform(np.array([raw]))[0])

    def _band(self, score: int) -> str:
        for b, t in self._thresholds:
            if score >= t:
                return b
        return BANDS[-1]

    def _score(self, p: float) -> int:
        """:meth:`ScoreScale.score` of one probability (same arithmetic)."""
        if p != p:
            return 0
        raw = float(np.interp(p, self._uniq, self._mid_rank))
        if p < self._lo:
            raw = 0.0
        if p > self._hi:
            raw = 100.0
        return int(min(max(math.floor(raw), 0), 100))

    def _reasons_one(self, contributions: np.ndarray, features: Mapping[str, np.ndarray],
                     row: int = 0) -> list[dict[str, Any]]:
        """Reasons of lead ``row`` of ``features`` from its contributions, as
        :func:`top_effects` + :func:`format_reasons` give them."""
        c = contributions[:-1]
        e = np.where(np.isfinite(c), c, 0.0)  # non-finite effects count as 0 (never shown)
        k = min(self.top_k, len(e))
        # stable sorts: ties keep the lower feature index first, as top_effects does
        pos = [j for j in np.argsort(-e, kind="stable")[:k].tolist() if e[j] > 0]
        neg = [j for j in np.argsort(e, kind="stable")[:k].tolist() if e[j] < 0]
        if not pos and not neg:
            return []
        el = e.tolist()
        chosen = sorted(pos + neg, key=lambda j: -abs(el[j]))  # stable: positives first on ties
        effects = np.round(e[chosen], _DECIMALS).tolist()
        values = [features[self.columns[j]][row] for j in chosen]
        floats = [i for i, v in enumerate(values) if isinstance(v, (float, np.floating))]
        if floats:  # rounded together, as _json_value rounds each
            for i, x in zip(floats, rounded_floats([values[i] for i in floats], _DECIMALS)):
                values[i] = x
        values = [v if i in floats else _json_value(v) for i, v in enumerate(values)] \
            if len(floats) < len(values) else values
        return [{"feature": self.names[j], "value": v, "effect": x}
                for j, v, x in zip(chosen, values, effects)]

    def reasons(self, X: np.ndarray, features: Mapping[str, np.ndarray], rows: np.ndarray
                ) -> list[list[dict[str, Any]]]:
        """Reason codes of the matrix rows ``X`` (leads ``rows`` of ``features``), exactly as
        :meth:`LeadModel.score` formats them."""
        idx, eff, valid = top_effects(self.model.contributions(X), self.model.top_k)
        n, width = idx.shape
        shown = np.full((n, width), None, dtype=object)
        for j in np.unique(idx[valid]).tolist():
            r, slots = np.nonzero(valid & (idx == j))
            shown[r, slots] = _json_values(features[self.columns[j]], rows[r])
        names = np.asarray(self.names, dtype=object)[idx].tolist()
        effects = np.round(eff, _DECIMALS).tolist()
        counts = valid.sum(axis=1).tolist()
        return [[{"feature": fn[m], "value": vv[m], "effect": ee[m]} for m in range(c)]
                for fn, ee, vv, c in zip(names, effects, shown.tolist(), counts)]


_C_API_PREDICT_NORMAL = 0
_C_API_PREDICT_CONTRIB = 3
_C_API_DTYPE_FLOAT64 = 1


class _SingleRow:
    """LightGBM's single-row fast prediction (``...SingleRowFastInit`` once, then one C call
    per row): the same predictor as ``Booster.predict`` on a one-row matrix, without its
    per-call set-up. A lock makes it safe to share between threads."""

    def __init__(self, booster: Any, predict_type: int, width: int, n_features: int) -> None:
        from lightgbm.basic import _LIB, _c_str, _safe_call

        self._lib, self._check = _LIB, _safe_call
        self._booster = booster  # keeps the model alive as long as the handle
        self._handle = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(predict_type), ctypes.c_int(0), ctypes.c_int(-1),
            ctypes.c_int(_C_API_DTYPE_FLOAT64), ctypes.c_int32(n_features),
            _c_str("num_threads=1"), ctypes.byref(self._handle)))
        # the row goes in, and the output comes out, through buffers made once: a call costs
        # the C prediction and two copies, not numpy's ctypes conversions
        self._in = np.zeros(n_features, dtype=np.float64)
        self._out = np.zeros(width, dtype=np.float64)
        self._out_len = ctypes.c_int64()
        self._predict = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        self._args = (self._handle, ctypes.c_void_p(self._in.ctypes.data), ctypes.byref(self._out_len),
                      ctypes.c_void_p(self._out.ctypes.data))
        self._lock = threading.Lock()

    def __call__(self, row: np.ndarray) -> np.ndarray:
        with self._lock:
            self._in[:] = row
            status = self._predict(*self._args)
            if status:
                self._check(status)
            return self._out.copy()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            try:
                self._lib.LGBM_FastConfigFree(handle)
            except Exception:  # interpreter shutting down
                pass


def _json_value(v: Any) -> Any:
    """One feature value as :func:`_json_values` shows it."""
    if isinstance(v, (float, np.floating)):
        return rounded_floats([v], _DECIMALS)[0]
    if isinstance(v, (bool, np.bool_, int, np.integer)):
        return int(v)
    return json_safe(v, _DECIMALS)


def _json_values(values: np.ndarray | Sequence[Any], rows: np.ndarray) -> list[Any]:
    """JSON-safe feature values at ``rows``, as ``format_reasons`` shows them for the
    column's dtype in the feature DataFrame (floats rounded, non-finite -> None)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        return rounded_floats(arr[rows], _DECIMALS)
    if arr.dtype.kind in "iub":
        return arr[rows].astype(np.int64).tolist()
    return [json_safe(v, _DECIMALS) for v in arr[rows].tolist()]
