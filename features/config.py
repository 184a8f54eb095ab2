"""Feature-building settings: defaults in code, overridable from YAML."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class FeatureConfig(BaseModel):
    """Parameters of point-in-time feature building.

    Examples
    --------
    >>> FeatureConfig().half_life_days
    30.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    half_life_days: float = Field(30.0, gt=0, description="half-life of time-decayed engagement")
    horizon_days: int = Field(90, gt=0, description="label: reached opportunity within this many days")
    default_phone_region: str = Field("US", min_length=2, max_length=2)

    @classmethod
    def from_yaml(cls, path: Path | str | None) -> "FeatureConfig":
        """Read the ``features:`` section of a YAML file (or the whole file); defaults when None."""
        if path is None:
            return cls()
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls(**data.get("features", data))
