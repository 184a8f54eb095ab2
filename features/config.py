"""Feature-building settings: defaults in code, overridable from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: The sections of a ``--config`` YAML file.
SECTIONS = ("features", "training")

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A ``--config`` file that cannot be read or holds an invalid setting (names it)."""


def read_section(path: Path | str | None, section: str, model: type[M]) -> M:
    """The ``section`` of the YAML file at ``path`` validated as ``model`` (defaults when None
    or when the file has other sections only). A file with none of :data:`SECTIONS` is read
    as that one section. Errors name the file and the setting (``training.split.gap_days``)."""
    if path is None:
        return model()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"config {path}: cannot be read ({e.strerror or type(e).__name__})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML ({_yaml_where(e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping with {' / '.join(SECTIONS)} sections")
    values: Any = data.get(section, {}) if any(k in data for k in SECTIONS) else data
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config {path}: {section}: expected a mapping of settings")
    try:
        return model(**values)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in (section, *err['loc']))}: {err['msg']}"
                             for err in e.errors())
        raise ConfigError(f"config {path}: {problems}") from None


def _yaml_where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else type(e).__name__


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
    def from_yaml(cls, path: Path | str | None) -> FeatureConfig:
        """The ``features:`` section of a YAML file (:func:`read_section`); defaults when None."""
        return read_section(path, "features", cls)
