"""Learned transformations of the feature table, as scikit-learn pipelines.

They are fitted on training data and saved inside the logged model, so serving applies
exactly what training fitted. Unknown categories at scoring time never raise: rare and
unseen labels become ``rare`` and then a code LightGBM treats as missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from feature_engine.encoding import OneHotEncoder, OrdinalEncoder, RareLabelEncoder
from feature_engine.imputation import AddMissingIndicator, CategoricalImputer, MeanMedianImputer
from feature_engine.wrappers import SklearnTransformerWrapper
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from features import schema

MISSING = "missing"
RARE = "rare"


class ColumnSelector(TransformerMixin, BaseEstimator):
    """Keep the given columns, in order, as object (categorical) and float (numeric) dtypes.

    Parameters
    ----------
    categorical, numeric : sequence of str
        Column names. A missing column is an error that names it.

    Examples
    --------
    >>> ColumnSelector(["a"], ["b"]).fit_transform(pd.DataFrame({"b": [1], "a": ["x"]})).columns.tolist()
    ['a', 'b']
    """

    def __init__(self, categorical: Sequence[str] = (), numeric: Sequence[str] = ()) -> None:
        self.categorical = categorical
        self.numeric = numeric

    def fit(self, X: pd.DataFrame, y=None) -> ColumnSelector:
        self._check(X)
        self.feature_names_in_ = np.asarray(list(self.categorical) + list(self.numeric), dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "feature_names_in_")
        self._check(X)
        out = {c: X[c].astype("object").where(X[c].notna(), np.nan) for c in self.categorical}
        out.update({c: pd.to_numeric(X[c], errors="coerce").astype("float64") for c in self.numeric})
        return pd.DataFrame(out, index=X.index)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return self.feature_names_in_

    def _check(self, X: pd.DataFrame) -> None:
        missing = [c for c in (*self.categorical, *self.numeric) if c not in X.columns]
        if missing:
            raise KeyError(f"feature table: missing column(s) {missing}")


def lightgbm_preprocessor(
    categorical: Sequence[str] = schema.CATEGORICAL_FEATURES,
    numeric: Sequence[str] = schema.NUMERIC_FEATURES,
    *,
    rare_tol: float = 0.002,
) -> Pipeline:
    """Categories to integer codes for LightGBM's native categorical handling.

    Missing values become ``missing``, labels rarer than ``rare_tol`` become ``rare``, and
    labels never seen in training get the code -1, which LightGBM treats as missing.
    Numeric columns pass through (LightGBM handles NaN itself).
    """
    steps: list[tuple[str, object]] = [("select", ColumnSelector(categorical, numeric))]
    if categorical:
        cats = list(categorical)
        steps += [
            ("impute", CategoricalImputer(fill_value=MISSING, variables=cats, ignore_format=True)),
            ("rare", RareLabelEncoder(tol=rare_tol, n_categories=1, variables=cats,
                                      replace_with=RARE, ignore_format=True)),
            ("codes", OrdinalEncoder(encoding_method="arbitrary", variables=cats,
                                     unseen="encode", ignore_format=True)),
        ]
    return Pipeline(steps)


def linear_preprocessor(
    categorical: Sequence[str] = schema.CATEGORICAL_FEATURES,
    numeric: Sequence[str] = schema.NUMERIC_FEATURES,
    *,
    rare_tol: float = 0.01,
) -> Pipeline:
    """One-hot categories, missing indicators, median imputation, log1p and scaling — the
    preparation a logistic-regression baseline needs."""
    cats, nums = list(categorical), list(numeric)
    steps: list[tuple[str, object]] = [("select", ColumnSelector(cats, nums))]
    if cats:
        steps += [
            ("impute_cat", CategoricalImputer(fill_value=MISSING, variables=cats, ignore_format=True)),
            ("rare", RareLabelEncoder(tol=rare_tol, n_categories=1, variables=cats,
                                      replace_with=RARE, ignore_format=True)),
            ("onehot", OneHotEncoder(variables=cats, ignore_format=True)),
        ]
    if nums:
        steps += [
            ("missing_flags", AddMissingIndicator(variables=nums, missing_only=True)),
            ("impute_num", MeanMedianImputer(imputation_method="median", variables=nums)),
            ("log", SignedLog1p(variables=nums)),
        ]
    steps.append(("scale", SklearnTransformerWrapper(StandardScaler())))
    return Pipeline(steps)


class SignedLog1p(TransformerMixin, BaseEstimator):
    """``sign(x) * log1p(|x|)`` on the given columns: tames heavy-tailed counts and sizes."""

    def __init__(self, variables: Sequence[str] = ()) -> None:
        self.variables = variables

    def fit(self, X: pd.DataFrame, y=None) -> SignedLog1p:
        self.variables_ = [v for v in self.variables if v in X.columns]
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "variables_")
        X = X.copy()
        for v in self.variables_:
            x = X[v].to_numpy(dtype="float64")
            X[v] = np.sign(x) * np.log1p(np.abs(x))
        return X

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return self.feature_names_in_
