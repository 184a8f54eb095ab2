"""Training settings: defaults in code, overridable from the ``training:`` section of YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from features.config import read_section

REGISTERED_MODEL = "lead-scoring"
CHAMPION = "champion"
CHALLENGER = "challenger"


def _default_lgbm_params() -> dict[str, Any]:
    # Small trees, chosen by measurement on 100k demo contacts (BENCHMARKS.md, training):
    # 7 leaves matched or beat 31 on the validation window, and the per-lead reasons
    # (``pred_contrib``, TreeSHAP: cost grows with the square of tree depth) got 14x cheaper.
    return {
        "objective": "binary",
        "learning_rate": 0.1,
        "num_leaves": 7,
        "min_child_samples": 200,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "max_bin": 255,
        "cat_smooth": 10.0,
        "min_data_per_group": 100,
        "verbosity": -1,
    }


class SplitConfig(BaseModel):
    """Time split of the point-in-time training set.

    The latest ``test_dates`` as-of dates are the test window, the ``validation_dates``
    before them the validation window and everything earlier the training window. A gap of
    ``gap_days`` (default: the label horizon) separates the windows, so no training label
    looks into the validation or test period.
    """

    model_config = ConfigDict(extra="forbid")

    test_dates: int = Field(1, ge=1)
    validation_dates: int = Field(2, ge=1)
    gap_days: int | None = Field(None, ge=0, description="default: the label horizon")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="random split (tables without time)")
    validation_fraction: float = Field(0.2, gt=0, lt=1)


class GateConfig(BaseModel):
    """Promotion gate: what a new version must show to become ``champion``."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["roc_auc", "pr_auc"] = "roc_auc"
    min_gain_over_rules: float = 0.0
    max_loss_vs_champion: float = 0.005
    max_ece: float = 0.05
    min_train_positives: int = Field(200, ge=1)


class TrainConfig(BaseModel):
    """Everything ``leadscore train`` needs besides the data."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 42
    num_boost_round: int = Field(2000, ge=1)
    early_stopping_rounds: int = Field(100, ge=1)
    num_threads: int = Field(2, ge=1)
    lgbm_params: dict[str, Any] = Field(default_factory=_default_lgbm_params)
    calibration: Literal["auto", "isotonic", "sigmoid"] = "auto"
    band_thresholds: dict[str, float] = Field(default_factory=lambda: {"A": 95, "B": 80, "C": 50})
    leak_auc_threshold: float = Field(0.97, gt=0.5, le=1.0)
    max_baseline_rows: int = Field(200_000, ge=1000)
    reasons_top_k: int = Field(3, ge=1)
    split: SplitConfig = Field(default_factory=SplitConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @field_validator("band_thresholds")
    @classmethod
    def _valid_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        from training.scoring import (
            check_band_thresholds,  # at load, not hours later after training
        )

        check_band_thresholds(value)
        return value

    @classmethod
    def from_yaml(cls, path: Path | str | None) -> TrainConfig:
        """The ``training:`` section of a YAML file (:func:`features.config.read_section`);
        defaults when None."""
        return read_section(path, "training", cls)
