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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from feature_engine.encoding import OrdinalEncoder, RareLabelEncoder
from feature_engine.imputation import CategoricalImputer

from features.transformers import ColumnSelector
from training.model import LeadModel
from training.scoring import json_safe, readable, top_effects

__all__ = ["CompiledEncoder", "FastScorer"]

_DECIMALS = 4  # format_reasons' default, used by LeadModel.score


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
    def from_model(cls, model: LeadModel) -> "CompiledEncoder":
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

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of the rows of the booster matrix ``X``."""
        return self.model.calibrator.transform(self.model.predict_raw(X))

    def score_columns(
        self,
        features: Mapping[str, np.ndarray],
        contact_ids: Sequence[str],
        *,
        scored_at: str,
        reasons: bool | np.ndarray = True,
    ) -> list[dict[str, Any]]:
        """Outputs (one dict per lead, :data:`features.schema.OUTPUT_COLUMNS`) of the leads
        whose feature columns are ``features``; reasons where ``reasons`` says."""
        n = len(contact_ids)
        X = self.encoder.matrix(features, n)
        p = self.probabilities(X)
        score = self.model.scale.score(p)
        band = self.model.scale.band(score)
        rows = np.arange(n) if reasons is True else np.flatnonzero(reasons) if reasons is not False \
            else np.arange(0)
        explained: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        if len(rows):
            for i, r in zip(rows.tolist(), self.reasons(X[rows], features, rows)):
                explained[i] = r
        name, version = self.model_name, self.model_version
        return [
            {"contact_id": cid, "probability": pi, "score": si, "band": bi, "reasons": ri,
             "scorer": "model", "model_name": name, "model_version": version, "scored_at": scored_at}
            for cid, pi, si, bi, ri in zip(contact_ids, p.astype("float64").tolist(), score.tolist(),
                                           band.tolist(), explained)
        ]

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


def _json_values(values: np.ndarray | Sequence[Any], rows: np.ndarray) -> list[Any]:
    """JSON-safe feature values at ``rows``, as ``format_reasons`` shows them for the
    column's dtype in the feature DataFrame (floats rounded, non-finite -> None)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        v = arr[rows].astype("float64")
        out = np.round(v, _DECIMALS).tolist()
        return [x if math.isfinite(x) else None for x in out]
    if arr.dtype.kind in "iub":
        return arr[rows].astype(np.int64).tolist()
    return [json_safe(v, _DECIMALS) for v in arr[rows].tolist()]
