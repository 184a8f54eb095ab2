"""The scoring model as one object: transformers, booster, calibrator, score scale, rules.

:class:`LeadModel` turns a feature table into the design brief's outputs. It is what
training produces, what MLflow stores (as files in one directory, see :meth:`save`), and
what batch rescoring and the HTTP service load. :class:`RulesOnly` answers the same calls
with the rule scorer alone: the fallback when there is no usable model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from features.config import FeatureConfig
from training.calibration import Calibrator
from training.contributions import TreeContributions
from training.rules import RuleScorer
from training.scoring import ScoreScale, format_reasons

_FILES = {
    "booster": "booster.txt",
    "preprocessor": "preprocessor.joblib",
    "meta": "model.json",
}


class Scorer(Protocol):
    """What batch rescoring and the service need from a scorer."""

    scorer: str
    model_name: str
    model_version: str

    def score(self, features: pd.DataFrame, *, scored_at: pd.Timestamp,
              reasons: bool | np.ndarray = True) -> pd.DataFrame: ...


def outputs_frame(
    contact_id: pd.Series, probability: np.ndarray, scale: ScoreScale, reasons: list,
    *, scorer: str, model_name: str, model_version: str, scored_at: pd.Timestamp,
) -> pd.DataFrame:
    """Assemble the design brief's output columns."""
    score = scale.score(probability)
    return pd.DataFrame(
        {
            "contact_id": contact_id.to_numpy(dtype=object),
            "probability": probability.astype("float64"),
            "score": score.astype("int64"),
            "band": scale.band(score),
            "reasons": reasons,
            "scorer": scorer,
            "model_name": model_name,
            "model_version": model_version,
            "scored_at": pd.Timestamp(scored_at),
        }
    )


def _reasons_for(mask: bool | np.ndarray, n: int, compute) -> list:
    """Reasons for the rows in ``mask`` (all, none, or a boolean array), [] elsewhere."""
    rows = np.arange(n) if mask is True else np.flatnonzero(mask) if mask is not False else np.arange(0)
    out: list = [[] for _ in range(n)]
    if len(rows):
        for i, r in zip(rows, compute(rows)):
            out[i] = r
    return out


@dataclass
class LeadModel:
    """A trained LightGBM lead scorer with everything it needs to score raw features."""

    feature_config: FeatureConfig
    categorical: list[str]
    numeric: list[str]
    preprocessor: Pipeline
    booster: lgb.Booster
    calibrator: Calibrator
    scale: ScoreScale
    rules: RuleScorer
    metadata: dict[str, Any] = field(default_factory=dict)
    model_name: str = "lead-scoring"
    model_version: str = "unregistered"
    num_threads: int = 0
    top_k: int = 3
    scorer: str = "model"
    #: The dataset config of a model trained on a CRM table (``training.crm.DatasetConfig`` as
    #: JSON), ``None`` for the event-based model. Scoring raw table rows applies its cleaning.
    dataset: dict[str, Any] | None = None

    @property
    def input_kind(self) -> str:
        """``"table"`` (one row per lead, see :func:`training.crm.score_table`) or ``"events"``."""
        return "table" if self.dataset else "events"

    @property
    def reason_names(self) -> dict[str, str] | None:
        """Names shown in reasons: a CRM table's own column names; ``None``: the readable
        names of the event features (``training.scoring.readable``)."""
        if not self.dataset:
            return None
        from training.crm import table_column

        return {c: table_column(c) for c in self.columns}

    @property
    def columns(self) -> list[str]:
        return [*self.categorical, *self.numeric]

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        """The booster's input: transformed features as a float64 matrix."""
        return self.preprocessor.transform(features).to_numpy(dtype="float64")

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        return self.booster.predict(X, num_threads=self.num_threads)

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of converting within the horizon."""
        return self.calibrator.transform(self.predict_raw(self.matrix(features)))

    @cached_property
    def tree_contributions(self) -> TreeContributions | None:
        """The booster's ``pred_contrib`` tabulated per tree (built on first use, not saved
        or pickled), or None for a booster it does not suit."""
        return TreeContributions.of(self.booster)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("tree_contributions", None)  # rebuilt where it is used (a lock inside)
        return state

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature log-odds contributions: LightGBM's tree SHAP (``pred_contrib``), tree
        by tree (:mod:`training.contributions`)."""
        table = self.tree_contributions
        full = table(X) if table is not None else \
            self.booster.predict(X, pred_contrib=True, num_threads=self.num_threads)
        return full[:, :-1]

    def score(self, features: pd.DataFrame, *, scored_at: pd.Timestamp,
              reasons: bool | np.ndarray = True) -> pd.DataFrame:
        """Outputs for every row of ``features``; reasons where ``reasons`` says."""
        X = self.matrix(features)
        p = self.calibrator.transform(self.predict_raw(X))

        def explain(rows: np.ndarray) -> list:
            return format_reasons(self.contributions(X[rows]), features.iloc[rows].reset_index(drop=True),
                                  self.columns, top_k=self.top_k, names=self.reason_names)

        return outputs_frame(
            features["contact_id"], p, self.scale, _reasons_for(reasons, len(features), explain),
            scorer="model", model_name=self.model_name, model_version=self.model_version,
            scored_at=scored_at,
        )

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` and the batch summary say about this model."""
        return {
            "scorer": "model",
            "name": self.model_name,
            "version": self.model_version,
            "trained_at": self.metadata.get("trained_at"),
            "metrics": self.metadata.get("metrics", {}),
            "band_thresholds": self.scale.band_thresholds,
            "band_probability_cutoffs": self.scale.band_probability_cutoffs(),
            "features": len(self.columns),
            "input": self.input_kind,
            **({"dataset": self.dataset.get("name"), "id_column": self.dataset.get("id_column"),
                "columns": list((self.reason_names or {}).values())} if self.dataset else {}),
        }

    # -- persistence -----------------------------------------------------------
    def save(self, path: Path | str) -> Path:
        """Write the model as files in ``path`` (a directory)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(path / _FILES["booster"]))
        joblib.dump(self.preprocessor, path / _FILES["preprocessor"])
        meta = {
            "feature_config": self.feature_config.model_dump(),
            "categorical": self.categorical,
            "numeric": self.numeric,
            "calibrator": self.calibrator.to_dict(),
            "scale": self.scale.to_dict(),
            "rules": self.rules.to_dict(),
            "metadata": self.metadata,
            "model_name": self.model_name,
            "top_k": self.top_k,
            "dataset": self.dataset,
        }
        (path / _FILES["meta"]).write_text(json.dumps(meta, indent=1, default=str))
        return path

    @classmethod
    def load(cls, path: Path | str, *, num_threads: int = 0) -> LeadModel:
        """Read a model written by :meth:`save`."""
        path = Path(path)
        meta = json.loads((path / _FILES["meta"]).read_text())
        booster = lgb.Booster(model_file=str(path / _FILES["booster"]))
        return cls(
            feature_config=FeatureConfig(**meta["feature_config"]),
            categorical=meta["categorical"],
            numeric=meta["numeric"],
            preprocessor=joblib.load(path / _FILES["preprocessor"]),
            booster=booster,
            calibrator=Calibrator.from_dict(meta["calibrator"]),
            scale=ScoreScale.from_dict(meta["scale"]),
            rules=rules_from_dict(meta["rules"]),
            metadata=meta["metadata"],
            model_name=meta.get("model_name", "lead-scoring"),
            num_threads=num_threads,
            top_k=meta.get("top_k", 3),
            dataset=meta.get("dataset"),
        )


def rules_from_dict(d: dict[str, Any]) -> Any:
    """A rule scorer from its ``to_dict()``: the event rules, or a CRM table's scorecard."""
    if d.get("kind") == "table_rules":
        from training.crm import TableRuleScorer  # the table path imports this module

        return TableRuleScorer.from_dict(d)
    return RuleScorer.from_dict(d)


@dataclass
class RulesOnly:
    """The rule scorer behind the same interface: the fallback that needs no training."""

    rules: RuleScorer
    feature_config: FeatureConfig = field(default_factory=FeatureConfig)
    reason: str = "no model"
    top_k: int = 3
    scorer: str = "rules"
    model_name: str = "rules"

    @property
    def model_version(self) -> str:
        return self.rules.version

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """The rule scorer's calibrated probability."""
        return self.rules.predict_proba(features)

    def score(self, features: pd.DataFrame, *, scored_at: pd.Timestamp,
              reasons: bool | np.ndarray = True) -> pd.DataFrame:
        out = self.rules.score_frame(features, scored_at=scored_at, top_k=self.top_k)
        if reasons is not True:
            keep = np.zeros(len(out), dtype=bool) if reasons is False else np.asarray(reasons)
            out["reasons"] = [r if k else [] for r, k in zip(out["reasons"], keep)]
        return out

    def info(self) -> dict[str, Any]:
        return {"scorer": "rules", "name": self.model_name, "version": self.model_version,
                "reason": self.reason, "band_thresholds": self.rules.band_info()}
