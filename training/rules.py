"""Rule-based lead scorer: the baseline every model must beat and the serving fallback.

Marketing-automation style. Points come from a YAML file (defaults in
``training/rules.yaml``, validated by :class:`RulesConfig`):

* **fit** points per value of ``industry``, ``employees_band``, ``revenue_band``,
  ``country``, ``seniority``, ``department``, ``email_quality`` and ``lead_source``;
  fit is capped (``fit.cap``): when it binds, the positive fit contributions are
  scaled down so the fit total equals the cap;
* **engagement** points per event type, applied to the time-decayed counts
  ``{event_type}_decayed`` of the feature table (each event weighs
  ``0.5 ** (age_days / half_life)``), capped per event type (``engagement.caps``) and in
  total (``engagement.total_cap``, positive contributions scaled down proportionally);
* **negative** points (``unsubscribed``, ``bounced``, ``do_not_email``; <= 0), added
  to engagement after the caps.

``total = fit + engagement``. The fit grade (A-D) and the engagement level (1-4, 1 =
most engaged) come from thresholds on fit and engagement points, and the priority band
from the ``band_matrix`` (e.g. A1, A2, B1 -> A).

Probability: without history, ``p = 1 / (1 + exp(-(total - midpoint) / scale))``
(``probability.midpoint`` / ``probability.scale``). With history,
:meth:`RuleScorer.calibrate` learns a monotone map from points to conversion:
isotonic regression when there are at least ``probability.min_positives_isotonic``
positives and negatives, Platt scaling otherwise.

The scorer needs no training and never raises on missing feature columns (taken as
0 / unknown) or missing values: the service falls back to it when all else failed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from scipy.special import expit

from features.schema import (
    BANDS,
    DEPARTMENTS,
    EMAIL_QUALITIES,
    EMPLOYEE_BANDS,
    EVENT_TYPES,
    LEAD_SOURCES,
    OUTPUT_COLUMNS,
    REVENUE_BANDS,
    SENIORITIES,
)
from training.scoring import ScoreScale, format_reasons

__all__ = [
    "DEFAULT_RULES_FILE",
    "RulePoints",
    "RuleScorer",
    "RulesConfig",
    "RulesConfigError",
    "decay_weight",
    "load_rules_config",
    "normalise_category",
    "parse_rules_config",
]

#: Name of the packaged default rules file (``training/rules.yaml``).
DEFAULT_RULES_FILE = "rules.yaml"

MODEL_NAME = "rules"
_PROB_EPS = 1e-4  # learned probabilities are kept inside [eps, 1 - eps]
_TRUE_STRINGS = frozenset({"1", "true", "t", "yes", "y"})

Band = Literal["A", "B", "C", "D"]


class RulesConfigError(ValueError):
    """An invalid rules configuration; the message names the offending key."""


def normalise_category(value: object) -> str:
    """Matching key of a categorical value: lower case, trimmed, runs of spaces, ``&``
    and ``/`` turned into one ``_`` (``"Financial Services"`` -> ``financial_services``)."""
    s = re.sub(r"[\s&/_]+", "_", str(value).strip().lower())
    return s.strip("_")


def decay_weight(age_days: float | np.ndarray, half_life_days: float) -> float | np.ndarray:
    """Weight of an event ``age_days`` old: ``0.5 ** (age_days / half_life_days)``.

    The definition behind the ``{event_type}_decayed`` features.
    """
    if not half_life_days > 0:
        raise ValueError("half_life_days must be > 0")
    return np.exp2(-np.asarray(age_days, dtype=float) / half_life_days)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _normalised_vocab(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(normalise_category(v) for v in values)


# Allowed keys of the fit point maps that have a vocabulary (industry and country are free).
_FIT_VOCAB: dict[str, tuple[str, ...]] = {
    "employees_band": _normalised_vocab(EMPLOYEE_BANDS),
    "revenue_band": _normalised_vocab(REVENUE_BANDS),
    "seniority": _normalised_vocab(SENIORITIES),
    "department": _normalised_vocab(DEPARTMENTS),
    "email_quality": _normalised_vocab(EMAIL_QUALITIES + ("unknown",)),
    "lead_source": _normalised_vocab(LEAD_SOURCES + ("other", "unknown")),
}


class FitRules(_Strict):
    """Fit points per categorical value, and the fit cap."""

    industry: dict[str, float] = Field(default_factory=dict)
    employees_band: dict[str, float] = Field(default_factory=dict)
    revenue_band: dict[str, float] = Field(default_factory=dict)
    country: dict[str, float] = Field(default_factory=dict)
    seniority: dict[str, float] = Field(default_factory=dict)
    department: dict[str, float] = Field(default_factory=dict)
    email_quality: dict[str, float] = Field(default_factory=dict)
    lead_source: dict[str, float] = Field(default_factory=dict)
    cap: NonNegativeFloat | None = None

    @field_validator(
        "industry", "employees_band", "revenue_band", "country", "seniority",
        "department", "email_quality", "lead_source",
    )
    @classmethod
    def _normalise_keys(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        vocab = _FIT_VOCAB.get(info.field_name or "")
        out: dict[str, float] = {}
        for key, points in v.items():
            k = normalise_category(key)
            if not k:
                raise ValueError(f"empty key {key!r}")
            if vocab is not None and k not in vocab:
                raise ValueError(f"unknown value {key!r}; expected one of {list(vocab)}")
            if k in out:
                raise ValueError(f"key {key!r} duplicates another key once normalised")
            out[k] = float(points)
        return out

    @property
    def tables(self) -> dict[str, dict[str, float]]:
        """Feature column -> (normalised value -> points), non-empty maps only."""
        names = ("industry", "employees_band", "revenue_band", "country", "seniority",
                 "department", "email_quality", "lead_source")
        return {n: getattr(self, n) for n in names if getattr(self, n)}


def _check_event_keys(v: dict[str, float]) -> dict[str, float]:
    for key in v:
        if key not in EVENT_TYPES:
            raise ValueError(f"unknown event type {key!r}; expected one of {list(EVENT_TYPES)}")
    return v


class EngagementRules(_Strict):
    """Points per time-decayed event, per event type caps and a total cap."""

    points: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    caps: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    total_cap: NonNegativeFloat | None = None

    _keys = field_validator("points", "caps")(_check_event_keys)


class NegativeRules(_Strict):
    """Points (<= 0) when a flag is set."""

    unsubscribed: float = Field(0.0, le=0)
    bounced: float = Field(0.0, le=0)
    do_not_email: float = Field(0.0, le=0)


class FitGrades(_Strict):
    """Minimum fit points of grades A, B, C (below C: D)."""

    A: float = 35.0
    B: float = 20.0
    C: float = 5.0

    @model_validator(mode="after")
    def _decreasing(self) -> FitGrades:
        if not self.A > self.B > self.C:
            raise ValueError("fit grade thresholds must decrease: A > B > C")
        return self


class EngagementLevels(_Strict):
    """Minimum engagement points of levels 1, 2, 3 (below level_3: 4)."""

    level_1: float = 40.0
    level_2: float = 20.0
    level_3: float = 5.0

    @model_validator(mode="after")
    def _decreasing(self) -> EngagementLevels:
        if not self.level_1 > self.level_2 > self.level_3:
            raise ValueError("engagement thresholds must decrease: level_1 > level_2 > level_3")
        return self


class Grades(_Strict):
    fit: FitGrades = Field(default_factory=FitGrades)
    engagement: EngagementLevels = Field(default_factory=EngagementLevels)


class BandMatrix(_Strict):
    """Band per fit grade (row) and engagement level 1..4 (position)."""

    A: tuple[Band, Band, Band, Band] = ("A", "A", "B", "C")
    B: tuple[Band, Band, Band, Band] = ("A", "B", "C", "C")
    C: tuple[Band, Band, Band, Band] = ("B", "C", "C", "D")
    D: tuple[Band, Band, Band, Band] = ("C", "D", "D", "D")

    def as_array(self) -> np.ndarray:
        return np.array([self.A, self.B, self.C, self.D], dtype=object)


class ProbabilityDefaults(_Strict):
    """Default logistic mapping of points, and the isotonic/Platt switch."""

    midpoint: float = 70.0
    scale: PositiveFloat = 15.0
    min_positives_isotonic: PositiveInt = 50


class RulesConfig(_Strict):
    """Validated rules configuration (see ``training/rules.yaml``).

    ``RulesConfig()`` has no points at all; :func:`load_rules_config` gives the
    packaged defaults.
    """

    decay_half_life_days: PositiveFloat = 30.0
    fit: FitRules = Field(default_factory=FitRules)
    engagement: EngagementRules = Field(default_factory=EngagementRules)
    negative: NegativeRules = Field(default_factory=NegativeRules)
    grades: Grades = Field(default_factory=Grades)
    band_matrix: BandMatrix = Field(default_factory=BandMatrix)
    probability: ProbabilityDefaults = Field(default_factory=ProbabilityDefaults)


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "invalid rules config: " + "; ".join(lines)


def parse_rules_config(data: Mapping[str, Any] | None) -> RulesConfig:
    """Validate a rules mapping (e.g. parsed YAML).

    Raises
    ------
    RulesConfigError
        Naming each offending key, e.g. ``decay_half_life_days: Input should be
        greater than 0``.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RulesConfigError("invalid rules config: the top level must be a mapping")
    try:
        return RulesConfig.model_validate(dict(data))
    except ValidationError as err:
        raise RulesConfigError(_describe(err)) from None


def load_rules_config(path: str | Path | None = None) -> RulesConfig:
    """Read and validate a rules YAML file; ``None`` reads the packaged defaults."""
    if path is None:
        # Next to this module (not resources.files("training"): a tests/training
        # package on sys.path can shadow the name).
        text = Path(__file__).with_name(DEFAULT_RULES_FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RulesConfigError(f"invalid rules config: not valid YAML ({err})") from None
    return parse_rules_config(data)


# ---------------------------------------------------------------------------
# Feature access (never raises: missing column -> unknown / 0)
# ---------------------------------------------------------------------------


def _category_points(features: pd.DataFrame, col: str, table: Mapping[str, float]) -> np.ndarray:
    n = len(features)
    unknown = float(table.get("unknown", 0.0))
    if col not in features.columns:
        return np.full(n, unknown)
    s = features[col]
    if isinstance(s, pd.DataFrame):  # duplicated column name
        s = s.iloc[:, 0]
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    lut = []
    for u in uniques:
        key = normalise_category(u)
        lut.append(float(table.get(key, 0.0)) if key else unknown)
    lut.append(unknown)  # code -1 (missing) indexes the last entry
    return np.asarray(lut, dtype=float)[codes]


def _to_float(value: object) -> float:
    if value is None:
        return np.nan
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip().lower()
    try:
        return float(text)
    except ValueError:
        return 1.0 if text in _TRUE_STRINGS else np.nan


def _numeric(features: pd.DataFrame, col: str) -> np.ndarray:
    n = len(features)
    if col not in features.columns:
        return np.zeros(n)
    s = features[col]
    if isinstance(s, pd.DataFrame):  # duplicated column name
        s = s.iloc[:, 0]
    if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        out = s.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    else:  # text or mixed: map the distinct values
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        lut = np.asarray([_to_float(u) for u in uniques] + [np.nan], dtype=float)
        out = lut[codes]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


# ---------------------------------------------------------------------------
# Scorer
# ---------------------------------------------------------------------------


class RulePoints(NamedTuple):
    """Points per lead: totals and the contribution of every rule.

    ``contributions`` has one column per rule, named after the feature it reads
    (``industry``, ``demo_request_decayed``, ``unsubscribed``, ...); its rows sum to
    ``total``.
    """

    total: np.ndarray
    fit: np.ndarray
    engagement: np.ndarray
    contributions: pd.DataFrame


def _scale_positive(contrib: np.ndarray, cap: float | None) -> np.ndarray:
    """Scale positive contributions of rows whose sum exceeds ``cap`` down to it."""
    if cap is None or contrib.shape[1] == 0:
        return contrib
    total = contrib.sum(axis=1)
    pos = np.where(contrib > 0, contrib, 0.0).sum(axis=1)
    neg = total - pos
    over = total > cap
    factor = np.where(over, (cap - neg) / np.where(pos > 0, pos, 1.0), 1.0)
    return np.where(contrib > 0, contrib * factor[:, None], contrib)


class RuleScorer:
    """Points-based scorer with the common output contract (``scorer="rules"``).

    Parameters
    ----------
    config
        Validated configuration; ``None`` uses the packaged ``training/rules.yaml``.
    calibration
        Learned points -> probability map (from :meth:`calibrate` or :meth:`to_dict`);
        ``None`` uses the default logistic map of the config.
    scale
        Score scale; ``None`` gives ``score = round(100 * probability)``.
    """

    name = MODEL_NAME

    def __init__(
        self,
        config: RulesConfig | None = None,
        *,
        calibration: Mapping[str, Any] | None = None,
        scale: ScoreScale | None = None,
    ) -> None:
        self.config = config if config is not None else load_rules_config()
        self.calibration: dict[str, Any] | None = dict(calibration) if calibration else None
        self.scale = scale

    # -- construction / persistence ------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path | None = None) -> RuleScorer:
        """Scorer from a rules YAML file (``None``: the packaged defaults)."""
        return cls(load_rules_config(path))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: config, learned calibration and score scale."""
        return {
            "kind": MODEL_NAME,
            "config": self.config.model_dump(mode="json"),
            "calibration": self.calibration,
            "scale": self.scale.to_dict() if self.scale is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuleScorer:
        """Inverse of :meth:`to_dict`."""
        scale = d.get("scale")
        return cls(
            parse_rules_config(d.get("config")),
            calibration=d.get("calibration"),
            scale=ScoreScale.from_dict(scale) if scale else None,
        )

    @property
    def model_version(self) -> str:
        """Short hash of the config, calibration and scale (12 hex digits)."""
        blob = json.dumps(
            {k: v for k, v in self.to_dict().items() if k != "kind"},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def version(self) -> str:
        """Alias of :attr:`model_version`."""
        return self.model_version

    def band_info(self) -> dict[str, Any]:
        """How bands are assigned (for ``GET /model`` and reports), JSON-serialisable."""
        g = self.config.grades
        return {
            "method": "fit grade x engagement level",
            "fit_grade_min_points": g.fit.model_dump(),
            "engagement_level_min_points": {
                "1": g.engagement.level_1, "2": g.engagement.level_2, "3": g.engagement.level_3,
            },
            "band_matrix": {k: list(v) for k, v in self.config.band_matrix.model_dump().items()},
            "score_band_thresholds": (
                dict(self.scale.band_thresholds) if self.scale is not None else None
            ),
        }

    def check_half_life(self, half_life_days: float) -> None:
        """Raise if features were built with another decay half-life than the points expect."""
        expected = self.config.decay_half_life_days
        if not math.isclose(float(half_life_days), expected, rel_tol=1e-9):
            raise ValueError(
                f"features use a decay half-life of {half_life_days} days, the rules "
                f"expect {expected} (decay_half_life_days)"
            )

    # -- points -------------------------------------------------------------
    def points(self, features: pd.DataFrame) -> RulePoints:
        """Fit, engagement and total points per row, and per-rule contributions.

        Missing columns count as unknown (categorical) or 0 (numeric); NaN likewise.
        """
        cfg = self.config
        hl = features.attrs.get("half_life_days") if hasattr(features, "attrs") else None
        if isinstance(hl, (int, float)) and not math.isclose(hl, cfg.decay_half_life_days):
            warnings.warn(
                f"features use a decay half-life of {hl} days, the rules expect "
                f"{cfg.decay_half_life_days}",
                stacklevel=2,
            )
        n = len(features)

        fit_names = list(cfg.fit.tables)
        fit_c = np.column_stack(
            [_category_points(features, c, t) for c, t in cfg.fit.tables.items()]
        ) if fit_names else np.zeros((n, 0))
        fit_c = _scale_positive(fit_c, cfg.fit.cap)

        eng_types = [t for t in EVENT_TYPES if cfg.engagement.points.get(t, 0.0) > 0]
        eng_cols = []
        for t in eng_types:
            raw = np.maximum(_numeric(features, f"{t}_decayed"), 0.0) * cfg.engagement.points[t]
            cap = cfg.engagement.caps.get(t)
            eng_cols.append(np.minimum(raw, cap) if cap is not None else raw)
        eng_c = np.column_stack(eng_cols) if eng_cols else np.zeros((n, 0))
        eng_c = _scale_positive(eng_c, cfg.engagement.total_cap)

        neg_rules = {k: v for k, v in cfg.negative.model_dump().items() if v != 0}
        neg_c = np.column_stack(
            [(_numeric(features, k) > 0) * float(v) for k, v in neg_rules.items()]
        ) if neg_rules else np.zeros((n, 0))

        names = fit_names + [f"{t}_decayed" for t in eng_types] + list(neg_rules)
        contrib = np.concatenate([fit_c, eng_c, neg_c], axis=1) + 0.0  # no -0.0
        fit = fit_c.sum(axis=1)
        engagement = eng_c.sum(axis=1) + neg_c.sum(axis=1)
        return RulePoints(
            total=fit + engagement,
            fit=fit,
            engagement=engagement,
            contributions=pd.DataFrame(contrib, columns=names, index=features.index),
        )

    def grades(self, features: pd.DataFrame | RulePoints) -> pd.DataFrame:
        """Points, fit grade (A-D), engagement level (1-4) and band per row."""
        pts = features if isinstance(features, RulePoints) else self.points(features)
        g = self.config.grades
        fit_idx = np.select(
            [pts.fit >= g.fit.A, pts.fit >= g.fit.B, pts.fit >= g.fit.C], [0, 1, 2], 3
        )
        e = g.engagement
        lvl_idx = np.select(
            [pts.engagement >= e.level_1, pts.engagement >= e.level_2,
             pts.engagement >= e.level_3], [0, 1, 2], 3,
        )
        return pd.DataFrame(
            {
                "fit_points": pts.fit,
                "engagement_points": pts.engagement,
                "total_points": pts.total,
                "fit_grade": np.asarray(BANDS, dtype=object)[fit_idx],
                "engagement_level": (lvl_idx + 1).astype(np.int64),
                "band": self.config.band_matrix.as_array()[fit_idx, lvl_idx],
            },
            index=pts.contributions.index,
        )

    def bands(self, features: pd.DataFrame | RulePoints) -> np.ndarray:
        """Band per row from the fit grade x engagement level matrix."""
        return self.grades(features)["band"].to_numpy(dtype=object)

    # -- probability --------------------------------------------------------
    def probability_from_points(self, total: np.ndarray | Sequence[float]) -> np.ndarray:
        """Conversion probability of total points (learned map if any, else default)."""
        t = np.nan_to_num(np.asarray(total, dtype=float), nan=0.0)
        cal = self.calibration
        if cal is None:
            d = self.config.probability
            return expit((t - d.midpoint) / d.scale)
        kind = cal.get("kind")
        if kind == "logistic":
            return expit((t - float(cal["midpoint"])) / float(cal["scale"]))
        if kind == "isotonic":
            return np.interp(t, np.asarray(cal["x"], float), np.asarray(cal["y"], float))
        if kind == "constant":
            return np.full(t.shape, float(cal["p"]))
        raise ValueError(f"unknown calibration kind {kind!r}")

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Probability of conversion per row (1-D)."""
        return self.probability_from_points(self.points(features).total)

    def calibrate(
        self,
        points: np.ndarray | Sequence[float],
        y: np.ndarray | Sequence[int],
        *,
        fit_scale: bool = True,
        thresholds: Mapping[str, float] | None = None,
    ) -> RuleScorer:
        """Learn a monotone (non-decreasing) points -> probability map from history.

        Isotonic regression (clipped outside the seen range, probabilities kept in
        ``[1e-4, 1 - 1e-4]``) when positives and negatives both number at least
        ``probability.min_positives_isotonic``; Platt scaling (logistic regression on
        points) otherwise. With ``fit_scale`` the score scale is then fitted on the
        calibrated probabilities of the same population.

        Parameters
        ----------
        points
            Total points of the history's leads (``self.points(X).total``).
        y
            Their conversion labels (0/1).

        Returns
        -------
        RuleScorer
            ``self``, calibrated.
        """
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        t = np.asarray(points, dtype=float).ravel()
        yy = np.asarray(y, dtype=float).ravel()
        if t.size != yy.size:
            raise ValueError(f"points and labels differ in length ({t.size} vs {yy.size})")
        keep = np.isfinite(t) & np.isfinite(yy)
        t, yy = t[keep], yy[keep]
        if not np.all((yy == 0) | (yy == 1)):
            raise ValueError("labels must be 0/1")
        n_pos = int(yy.sum())
        n_neg = int(yy.size - n_pos)
        if n_pos == 0 or n_neg == 0:
            raise ValueError("calibration needs both converted and non-converted leads")
        info = {"n": int(yy.size), "positives": n_pos}
        if min(n_pos, n_neg) >= self.config.probability.min_positives_isotonic:
            iso = IsotonicRegression(
                out_of_bounds="clip", increasing=True, y_min=_PROB_EPS, y_max=1 - _PROB_EPS
            ).fit(t, yy)
            cal: dict[str, Any] = {
                "kind": "isotonic",
                "x": [float(v) for v in iso.X_thresholds_],
                "y": [float(v) for v in iso.y_thresholds_],
            }
        else:
            sd = float(t.std())
            a = 0.0
            if sd > 0:
                z = ((t - t.mean()) / sd).reshape(-1, 1)
                lr = LogisticRegression(C=1.0).fit(z, yy)
                a = float(lr.coef_[0, 0]) / sd
                b = float(lr.intercept_[0]) - float(lr.coef_[0, 0]) * t.mean() / sd
            if a > 0:
                cal = {"kind": "logistic", "midpoint": -b / a, "scale": 1.0 / a}
            else:  # points carry no (increasing) signal: the base rate
                cal = {"kind": "constant", "p": n_pos / yy.size}
        self.calibration = {**cal, **info}
        if fit_scale:
            keep_thr = thresholds or (self.scale.band_thresholds if self.scale else None)
            self.scale = ScoreScale.fit(self.probability_from_points(t), thresholds=keep_thr)
        return self

    def fit(self, features: pd.DataFrame, y: np.ndarray | Sequence[int]) -> RuleScorer:
        """:meth:`calibrate` on the points of a feature table."""
        return self.calibrate(self.points(features).total, y)

    # -- output -------------------------------------------------------------
    def score_frame(
        self,
        features: pd.DataFrame,
        *,
        scored_at: pd.Timestamp | str | Any,
        top_k: int = 3,
    ) -> pd.DataFrame:
        """The common scorer output (``features.schema.OUTPUT_COLUMNS``), one row per lead.

        ``band`` is the rules band (fit grade x engagement level); ``score`` is the
        percentile of the probability on the calibration population when a scale
        was fitted, else ``round(100 * probability)``; ``reasons`` are the rules that
        fired, top ``top_k`` positive and negative, with their points as ``effect``.
        ``contact_id`` comes from the column of that name, else from the index.
        """
        pts = self.points(features)
        proba = self.probability_from_points(pts.total)
        scale = self.scale if self.scale is not None else ScoreScale.identity()
        ids = (
            features["contact_id"].to_numpy()
            if "contact_id" in features.columns
            else features.index.to_numpy()
        )
        reasons = np.empty(len(features), dtype=object)
        for i, r in enumerate(format_reasons(pts.contributions, values=features, top_k=top_k)):
            reasons[i] = r
        out = pd.DataFrame(
            {
                "contact_id": ids,
                "probability": proba.astype(float),
                "score": scale.score(proba),
                "band": self.bands(pts),
                "reasons": reasons,
                "scorer": MODEL_NAME,
                "model_name": MODEL_NAME,
                "model_version": self.model_version,
                "scored_at": pd.Timestamp(scored_at),
            },
            index=features.index,
        )
        return out[list(OUTPUT_COLUMNS)]
