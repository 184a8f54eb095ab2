"""Bring your own CRM export: train and score a one-row-per-lead table.

Many teams have no event log, only a CRM export: one row per lead, footprints already
aggregated (total visits, time on site, last activity) and a "converted" column. This module
takes such a table as it is:

* :class:`DatasetConfig` — a small YAML file naming the id column, the target and its
  positive value(s), the separator, the placeholder values that mean "missing" (``Select``),
  the columns to exclude, and the columns **known only after sales contact** (``post_contact``:
  they leak the outcome and are excluded from training unless ``include_post_contact``).
  :func:`load_dataset_config` validates it; :func:`check_config` checks it against a table and
  fails with a message naming the key (unknown column, one-class target, non-binary target
  without a positive value, ...).
* :func:`infer_config` — without a config: numeric vs categorical, identifier-like columns
  (also numbers a spreadsheet kept as text, ``'0002262``), personal data (a personal field's
  name in English, German, French, Spanish or Italian, however few its values; email
  addresses or international phone numbers as values), dates (``2024-03-05``, ``05.03.2024``,
  ``Mar 5, 2024``), constant columns and probable leaks (``training.leakage``) are detected
  and written out (:func:`dump_dataset_config`) for review and reuse, with the file's
  separator and encoding (:func:`infer_file_config`). A header naming a column twice is
  logged with what each copy is read as.
* :func:`table_features` — the cleaning, the same at training and at scoring time (the model
  stores its dataset config, so batch, pyfunc and HTTP scoring clean raw rows identically):
  placeholders and blanks are missing; numbers may carry thousands separators, a currency
  sign or a decimal comma; ``TRUE``/``true``/``True`` and a boolean are one value; dates are
  read in one day/month order per column.
* :func:`table_rejects` — rows not trained on, each with its reason (no target, an open deal
  with ``target.negative``, no time, a repeated id under ``duplicate_ids``): never a silent drop.
* :class:`TableRuleScorer` — the rule scorer for tables: points per column value and numeric
  thresholds. Given in the config (``rules:``) or, by default, a **learned scorecard**: on the
  training rows only, each value's points are its smoothed log-odds of conversion relative to
  the base rate (10 points = e-fold odds), rounded to integers, for the few most informative
  columns. It needs no LightGBM.
* :func:`train_table` — the platform's training (``training.train.train``): stratified random
  split (or the config's time column), LightGBM cross-fitted on every labelled row outside the
  test set, calibration, the logistic baseline and the rule scorer, evaluated on the same
  held-out rows. :func:`score_table` scores raw rows with a loaded model.
* :func:`train_table_command` — ``leadscore train --table FILE --config dataset.yaml``.

Steps compute, callers log: nothing here writes files except the CLI entry points.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import itertools
import json
import logging
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.config import read_section
from features.schema import LABEL, OUTPUT_COLUMNS
from training.config import TrainConfig
from training.leakage import probable_leaks, single_feature_auc
from training.rules import RulePoints
from training.scoring import ScoreScale, format_reasons
from training.split import Split, random_split

log = logging.getLogger(__name__)

__all__ = [
    "TABLE_LGBM_PARAMS",
    "ColumnRules",
    "DatasetConfig",
    "DatasetConfigError",
    "TableRuleScorer",
    "TableRulesConfig",
    "TableTrainResult",
    "check_config",
    "dump_dataset_config",
    "infer_config",
    "learn_scorecard",
    "load_dataset_config",
    "parse_dataset_config",
    "read_table",
    "score_table",
    "table_column",
    "table_features",
    "table_rejects",
    "table_time_split",
    "table_training_config",
    "train_table",
    "train_table_command",
]

ID = "contact_id"  # the id column inside the model's frame (the output contract's name)
RESERVED = (ID, LABEL)

#: LightGBM settings for small one-row-per-lead tables (thousands of rows, tens of columns):
#: slower learning, smaller trees, stronger smoothing of categories than the event model's.
#: A category with at most ``max_cat_to_onehot`` levels is split one level against the rest
#: rather than by LightGBM's sorted many-vs-many partitions, which overfit a few thousand rows:
#: in repeated 5-fold cross-validation on the training 80% of the X Education file (the
#: held-out 20% unused) ROC AUC 0.8817 against 0.8805, better on 9 folds of 10. Other settings
#: moved it by less than the folds' noise (``BENCHMARKS.md``), as did ``--tune N`` searches.
TABLE_LGBM_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.02,
    "num_leaves": 15,
    "min_child_samples": 20,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 255,
    "max_cat_to_onehot": 32,
    "cat_smooth": 10.0,
    "cat_l2": 10.0,
    "min_data_per_group": 20,
    "max_cat_threshold": 16,
    "verbosity": -1,
}

#: Values that mean "not filled in" in exports, proposed by :func:`infer_config` when seen.
KNOWN_PLACEHOLDERS: tuple[str, ...] = (
    "select", "please select", "-- select --", "--select--", "choose", "choose one",
    "not provided", "not specified", "not available", "n/a", "na", "#n/a", "none", "null",
    "nil", "-", "--", "?", "(blank)", "blank", "undefined", "unknown",
)

_POSITIVE_WORDS = ("1", "true", "yes", "y", "t", "won", "converted", "customer", "success", "positive")
_NEGATIVE_WORDS = ("0", "false", "no", "n", "f", "lost", "not converted", "failure", "negative")
_TARGET_NAME = re.compile(r"convert|target|label|outcome|\bwon\b|is.?customer|closed", re.IGNORECASE)
_ID_NAME = re.compile(r"(^|[^a-z])(id|uuid|guid|key|number|no)([^a-z]|$)|_id$|id$", re.IGNORECASE)
_PII_NAME = re.compile(
    r"e-?mail|phone|mobile|\bcell\b|telephone|\bfax\b|first.?name|last.?name|full.?name|"
    r"surname|given.?name|contact.?name|^name$|street|address|postal|post.?code|zip|"
    r"ip.?addr|linkedin|birth|passport|social.?security|\bssn\b|person|"
    r"vorname|nachname|telefon|pr[ée]nom|apellido|courriel|geburts|adresse|stra(ss|ß)e|"
    r"(company|account|organi[sz]ation|business|employer|firmen).?name|"
    r"^(company|account|organi[sz]ation|employer|firma|unternehmen|entreprise|soci[ée]t[ée]|empresa)$",
    re.IGNORECASE)
_POST_CONTACT_NAME = re.compile(
    r"\btags?\b|quality|status|\bstage\b|disposition|\bowner\b|assigned|sales.?rep|"
    r"last.?(notable.?)?activity|lost|\bwon\b|closed|deal.?(stage|status|value|amount)|opportunit|\bscore\b|"
    r"\bgrade\b|rating|bewertung|statut|qualif|call.?(outcome|result)|outcome|\bresult\b", re.IGNORECASE)
_CREATED_NAME = re.compile(r"creat|cr[ée]{2}|erstellt|angelegt|added|signup|sign.?up|registered|received|first.?seen|lead.?date", re.IGNORECASE)
#: Column names (letters only, accents dropped, case-folded) that name a personal field
#: outright: left out however few distinct values they hold. English, German, French,
#: Spanish and Italian spellings of the fields CRMs export.
_PERSONAL_FIELDS = frozenset("""
    email emailaddress emailadresse mail courriel correo correoelectronico
    phone phonenumber telephone telephonenumber tel mobile mobilephone mobilenumber cell cellphone
    fax telefon telefonnummer handy mobil mobilnummer telefono numerodetelephone
    name fullname firstname lastname surname givenname familyname contactname leadname personname
    vorname nachname nom prenom nomcomplet apellido apellidos nombre nombrecompleto cognome
    address streetaddress street adresse strasse anschrift direccion indirizzo
    zip zipcode postcode postalcode plz codepostal
    birthdate dateofbirth dob geburtsdatum linkedin linkedinurl ipaddress ssn passport
""".split())  # noqa: SIM905 - a word list reads best as words
_EMAIL_VALUE = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.IGNORECASE)
#: international phone numbers: +49 30 ..., or 0049 30 ... with a separator (not a 0034645034 id)
_PHONE_VALUE = re.compile(r"^\+[\d\s().\-/]{6,}$|^00\d*[\s().\-/][\d\s().\-/]{4,}$")
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_DATE_VALUE = re.compile(  # 2024-03-05, 05.03.2024, 3/5/24; Mar 5, 2024; 5 March 2024
    rf"\d{{1,4}}[-/.]\d{{1,2}}[-/.]\d{{1,4}}|\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"
    rf"|\b\d{{1,2}}\.?\s+{_MONTH},?\s+\d{{4}}\b", re.IGNORECASE)

LEAK_FLAG_AUC = 0.90  # a single column alone this good: probably filled in after the fact
STRONG_AUC = 0.80  # worth a note: check when it is filled in


class DatasetConfigError(ValueError):
    """An invalid dataset config, or one that does not fit the table; names the key."""


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

Scalar = bool | int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ColumnRules(_Strict):
    """Points of one column for the table rule scorer.

    ``values`` (categorical): points per value, matched after trimming and case-folding;
    values not listed score ``other``. ``thresholds`` (numeric): ``[[min, points], ...]``
    sorted by ``min``; a value scores the points of the highest ``min`` it reaches, ``below``
    when under the first. Missing values score ``missing``.
    """

    values: dict[str, float] = Field(default_factory=dict)
    other: float = 0.0
    thresholds: list[tuple[float, float]] = Field(default_factory=list)
    below: float = 0.0
    missing: float = 0.0

    @model_validator(mode="after")
    def _one_kind(self) -> ColumnRules:
        if self.values and self.thresholds:
            raise ValueError("give either values (categorical) or thresholds (numeric), not both")
        edges = [t[0] for t in self.thresholds]
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"thresholds must be sorted by strictly increasing min, got {edges}")
        return self

    @property
    def kind(self) -> Literal["categorical", "numeric"]:
        return "numeric" if self.thresholds else "categorical"


class TableRulesConfig(_Strict):
    """Rule points of a CRM table: per column, values or thresholds (see :class:`ColumnRules`)."""

    columns: dict[str, ColumnRules] = Field(default_factory=dict)


class TargetConfig(_Strict):
    """The outcome column and the value(s) that count as converted."""

    column: str = Field(min_length=1)
    positive: Scalar | list[Scalar] | None = Field(
        None, description="value(s) meaning converted; optional for 0/1, true/false, yes/no, won/lost")
    negative: Scalar | list[Scalar] | None = Field(
        None, description="value(s) meaning not converted; when given, any other value (an open "
                          "deal) is unlabelled: not trained on, listed in the rejects")

    @model_validator(mode="after")
    def _disjoint(self) -> TargetConfig:
        def keys(v: Any) -> set[str]:
            return set() if v is None else {_key(x) for x in (v if isinstance(v, list) else [v])}
        both = sorted(keys(self.positive) & keys(self.negative))
        if both:
            raise ValueError(f"values both positive and negative: {both}")
        return self


def _reasons(value: Any, default: str) -> dict[str, str]:
    """A list of columns, or a mapping column -> reason, as a mapping with reasons."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {value: default}
    if isinstance(value, Mapping):
        return {str(k).strip(): (str(v) if v not in (None, "") else default) for k, v in value.items()}
    if isinstance(value, Sequence):
        return {str(k).strip(): default for k in value}
    raise ValueError("expected a list of column names or a mapping column: reason")


class DatasetConfig(_Strict):
    """How to read a one-row-per-lead CRM export and what to learn from it.

    Examples
    --------
    >>> cfg = DatasetConfig(target={"column": "Converted"}, placeholders=["Select"])
    >>> cfg.target.column, cfg.placeholders
    ('Converted', ['Select'])
    """

    name: str | None = Field(None, description="dataset name (MLflow tags, model info)")
    id_column: str | None = Field(None, description="unique lead id; default: the row number")
    target: TargetConfig
    separator: str | None = Field(None, description="CSV separator; default: sniffed")
    encoding: str = "utf-8"
    decimal: str = Field(".", min_length=1, max_length=1)
    thousands: str | None = Field(None, min_length=1, max_length=1)
    placeholders: list[str] = Field(default_factory=list,
                                    description="values meaning missing (case-insensitive)")
    exclude: dict[str, str] = Field(default_factory=dict, description="column: reason")
    post_contact: dict[str, str] = Field(
        default_factory=dict, description="columns known only after sales contact: reason")
    include_post_contact: bool = False
    use: list[str] | None = Field(None, description="only these columns as features")
    time_column: str | None = Field(None, description="lead creation time: time split")
    dayfirst: bool | None = Field(
        None, description="dates as 31/12/2024 (true) or 12/31/2024 (false); default: from the values")
    duplicate_ids: Literal["first", "last", "error"] = Field(
        "first", description="rows repeating an id_column value: keep the first or the last "
                             "(the others go to the rejects), or fail")
    categorical: list[str] = Field(default_factory=list, description="force categorical")
    numeric: list[str] = Field(default_factory=list, description="force numeric")
    rules: TableRulesConfig | None = Field(None, description="rule points; default: learned")
    scorecard_columns: int = Field(8, ge=1, description="columns of a learned scorecard")
    cross_fit_folds: int = Field(5, ge=0, le=20, description="0/1: one train/validation split")
    registered_model: str = Field("lead-scoring", min_length=1)
    training: dict[str, Any] = Field(default_factory=dict,
                                     description="overrides of TrainConfig (training/config.py)")
    notes: dict[str, str] = Field(default_factory=dict, description="free notes, e.g. from inference")

    @field_validator("exclude", mode="before")
    @classmethod
    def _exclude(cls, v: Any) -> dict[str, str]:
        return _reasons(v, "excluded in the dataset config")

    @field_validator("post_contact", mode="before")
    @classmethod
    def _post_contact(cls, v: Any) -> dict[str, str]:
        return _reasons(v, "known only after sales contact")

    @field_validator("separator")
    @classmethod
    def _separator(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = {"tab": "\t", "\\t": "\t", "semicolon": ";", "comma": ",", "pipe": "|"}.get(v.lower(), v)
        if len(v) != 1:
            raise ValueError(f"a single character (or tab), got {v!r}")
        return v

    @field_validator("training")
    @classmethod
    def _training(cls, v: dict[str, Any]) -> dict[str, Any]:
        table_training_config(v)  # raises naming the key
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DatasetConfig:
        both = sorted(set(self.categorical) & set(self.numeric))
        if both:
            raise ValueError(f"columns both categorical and numeric: {both}")
        special = {self.target.column: "target.column", **({self.id_column: "id_column"} if self.id_column else {}),
                   **({self.time_column: "time_column"} if self.time_column else {})}
        for key, cols in (("categorical", self.categorical), ("numeric", self.numeric),
                          ("use", self.use or [])):
            for c in cols:
                if c in special:
                    raise ValueError(f"{key}: {c!r} is the {special[c]}, not a feature")
        if self.id_column and self.id_column == self.target.column:
            raise ValueError("id_column and target.column are the same column")
        if self.separator and self.separator in (self.decimal, self.thousands):
            raise ValueError(f"separator {self.separator!r} is also the decimal or thousands mark")
        if self.thousands and self.thousands == self.decimal:
            raise ValueError(f"decimal and thousands are the same mark {self.decimal!r}")
        return self

    @property
    def positive_values(self) -> list[Scalar] | None:
        p = self.target.positive
        return None if p is None else list(p) if isinstance(p, list) else [p]

    @property
    def negative_values(self) -> list[Scalar] | None:
        p = self.target.negative
        return None if p is None else list(p) if isinstance(p, list) else [p]


def table_training_config(overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """:class:`TrainConfig` for tables: :data:`TABLE_LGBM_PARAMS`, 3000 rounds, one thread
    (a small table gains nothing from more, and OpenMP threads spinning on a busy machine cost
    20x), then the overrides (``lgbm_params`` are merged key by key)."""
    overrides = dict(overrides or {})
    params = {**TABLE_LGBM_PARAMS, **overrides.pop("lgbm_params", {})}
    try:
        return TrainConfig(**{"num_boost_round": 3000, "num_threads": 1, **overrides,
                              "lgbm_params": params})
    except ValidationError as err:
        raise ValueError(_describe(err, "training")) from None


def _describe(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        lines.append(f"{loc or '<root>'}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def parse_dataset_config(data: Mapping[str, Any] | None) -> DatasetConfig:
    """Validate a dataset config mapping (e.g. parsed YAML).

    Raises
    ------
    DatasetConfigError
        Naming each offending key, e.g. ``target: Field required``.
    """
    if not isinstance(data, Mapping):
        raise DatasetConfigError("invalid dataset config: the top level must be a mapping")
    try:
        return DatasetConfig.model_validate(dict(data))
    except ValidationError as err:
        raise DatasetConfigError("invalid dataset config: " + _describe(err)) from None


def load_dataset_config(path: Path | str) -> DatasetConfig:
    """Read and validate a dataset config YAML file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DatasetConfigError(f"invalid dataset config {Path(path).name}: not valid YAML ({err})") from None
    return parse_dataset_config(data)


def is_dataset_config(path: Path | str) -> bool:
    """Whether a YAML file is a dataset config (has a ``target`` key) rather than a training one."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, Mapping) and "target" in data


_HEADER = """\
# Dataset config of a one-row-per-lead CRM export (leadscore train --table FILE --config THIS).
# Keys: id_column, target {column, positive}, separator, placeholders (values meaning missing),
# exclude and post_contact (column: reason; post-contact columns are filled in after sales
# contact, leak the outcome, and are left out of training unless include_post_contact: true),
# time_column (time split instead of a stratified random one; dayfirst for 31/12 dates),
# duplicate_ids (first | last | error), categorical / numeric
# (force a column's kind), use (only these columns), rules (points per value / threshold for
# the rule scorer; default: a scorecard learned on the training rows), training (TrainConfig
# overrides), notes (free text).
"""


def dump_dataset_config(config: DatasetConfig, header: str = "") -> str:
    """The config as YAML text (defaults left out), with an explanatory header."""
    data = config.model_dump(mode="json", exclude_defaults=True)
    data.setdefault("target", config.target.model_dump(mode="json"))
    order = ["name", "id_column", "duplicate_ids", "target", "separator", "encoding", "decimal",
             "thousands", "placeholders", "time_column", "dayfirst", "exclude", "post_contact",
             "include_post_contact", "use", "categorical", "numeric", "rules", "scorecard_columns", "cross_fit_folds",
             "registered_model", "training", "notes"]
    ordered = {k: data[k] for k in order if k in data}
    text = yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, width=100)
    return _HEADER + (header if header.endswith("\n") or not header else header + "\n") + text


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

PARQUET_SUFFIXES = (".parquet", ".pq")


def sniff_separator(sample: str) -> str:
    """The CSV separator of a text sample: ``,``, ``;``, tab or ``|``."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        header = sample.splitlines()[0] if sample else ""
        counts = {d: header.count(d) for d in ",;\t|"}
        return max(counts, key=counts.get) if any(counts.values()) else ","


def read_table(path: Path | str, config: DatasetConfig | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Read a CRM export: Parquet as typed, CSV with every cell as text (cleaning decides).

    ``config`` (a :class:`DatasetConfig`, or a model's stored ``dataset`` mapping) gives the
    separator and encoding; without them the separator is sniffed (also in a ``.gz`` file) and
    the encoding is UTF-8, else Windows-1252 (also when the config leaves the encoding at UTF-8:
    logged). A config's separator that leaves one column is replaced by the sniffed one
    (logged). Column names are trimmed; unnamed, empty trailing columns (a stray separator at
    line ends) are dropped.
    """
    path = Path(path)
    if isinstance(config, Mapping):
        config = DatasetConfig.model_validate(config)
    if not path.exists():
        raise FileNotFoundError(f"table not found: {path}")
    if path.suffix.lower() in PARQUET_SUFFIXES or path.is_dir():
        frame = pd.read_parquet(path)
    elif path.suffix.lower() in (".csv", ".txt", ".tsv", ".gz", ".zip", ""):
        # an encoding the config names is the file's; UTF-8, the default, falls back to
        # Windows-1252 (next month's export may come from a spreadsheet), and says so
        explicit = config is not None and config.encoding.lower().replace("-", "").replace("_", "") != "utf8"
        encodings = [config.encoding] if explicit else ["utf-8", "cp1252"]
        sep = config.separator if config and config.separator else None
        for i, encoding in enumerate(encodings):
            try:
                if sep is None:
                    sep = _sniff_file(path, encoding)
                frame = _read_csv(path, sep or ",", encoding)
                if frame.shape[1] == 1 and config is not None and config.separator:
                    sniffed = _sniff_file(path, encoding, errors="replace")
                    if sniffed and sniffed != sep and sniffed in str(frame.columns[0]):
                        try:  # one column, the header split by another: the export changed
                            other = _read_csv(path, sniffed, encoding)
                        except ValueError:
                            other = frame
                        if other.shape[1] > 1:
                            log.warning("%s: one column when read with the dataset config's "
                                        "separator %r; read with %r, as the file looks",
                                        path.name, sep, sniffed)
                            frame, sep = other, sniffed
                frame.attrs.update(encoding=encoding, separator=sep or ",")
                if i and config is not None:
                    log.warning("%s: not UTF-8; read as Windows-1252 (set encoding in the dataset "
                                "config if it is another)", path.name)
                break
            except UnicodeDecodeError:
                if i == len(encodings) - 1:
                    raise ValueError(f"{path.name}: cannot decode as {encoding}; set encoding "
                                     "in the dataset config") from None
    else:
        raise ValueError(f"unsupported table file {path.name}: CSV (any separator) or Parquet")
    if "encoding" in frame.attrs and path.suffix.lower() != ".zip":
        _warn_repeated_names(path, sep or ",", frame.attrs["encoding"], list(frame.columns))
    frame.columns = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
    empty = [c for c in frame.columns if (not c or c.startswith("Unnamed: ")) and frame[c].isna().all()]
    out = frame.drop(columns=empty)
    out.attrs = dict(frame.attrs)  # the encoding and separator read, for an inferred config
    return out


def _read_csv(path: Path, sep: str, encoding: str) -> pd.DataFrame:
    """Every cell as text; a file that is not CSV with ``sep`` is an error naming it."""
    try:
        return pd.read_csv(path, sep=sep, dtype=str, encoding=encoding, keep_default_na=False,
                           na_values=[""], engine="c")
    except pd.errors.ParserError as e:
        detail = str(e).strip().splitlines()[-1]
        raise ValueError(f"{path.name}: not readable as CSV with separator {sep!r} ({detail}); "
                         "set separator in the dataset config") from None


def _open_text(path: Path, encoding: str, errors: str = "strict"):
    """A CSV file opened as text, gzip-compressed or not."""
    import gzip

    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors=errors, newline="")
    return open(path, encoding=encoding, errors=errors, newline="")


def _sniff_file(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str | None:
    """The separator of a CSV file (gzip-compressed or not); None for a zip archive."""
    if path.suffix.lower() == ".zip":
        return None
    with _open_text(path, encoding, errors) as f:
        return sniff_separator(f.read(65536))


def table_name(path: Path) -> str:
    """A table's name from its file: ``leads`` for ``leads.csv``, ``leads.csv.gz``."""
    name = path.name
    for suffix in (".gz", ".zip", ".csv", ".tsv", ".txt", ".parquet", ".pq"):
        name = name.removesuffix(suffix) if name.lower().endswith(suffix) else name
    return name or path.stem


def _warn_repeated_names(path: Path, sep: str, encoding: str, read_as: list[str]) -> None:
    """Log the header's names that occur more than once, and what each copy is read as."""
    with _open_text(path, encoding) as f:
        header = [str(c).strip().lstrip("\ufeff") for c in next(csv.reader(f, delimiter=sep), [])]
    for name in sorted({c for c in header if c and header.count(c) > 1}):
        copies = [read_as[i] for i, c in enumerate(header) if c == name and i < len(read_as)]
        log.warning("%s: the header names column %r %d times; the copies are read as %s "
                    "(each one a column of its own: rename them in the export, or exclude them)",
                    path.name, name, len(copies), copies)


# ---------------------------------------------------------------------------
# Cleaning (the same at training and at scoring time)
# ---------------------------------------------------------------------------


def _fold(value: object) -> str:
    return re.sub(r"\s+", " ", str(value)).strip().casefold()


def _key(value: object) -> str:
    """Comparable text of a target or rule value: ``1``, ``1.0`` and ``"1"`` are the same."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = _fold(value)
    try:
        f = float(text)
    except ValueError:
        return text
    return str(int(f)) if math.isfinite(f) and f.is_integer() and re.fullmatch(r"[-+]?\d+(\.0*)?", text) else text


def _missing_mask(s: pd.Series, placeholders: set[str]) -> np.ndarray:
    """Missing cells: NA, blank text, or a placeholder (case-insensitive, trimmed)."""
    miss = s.isna().to_numpy()
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        bad = np.array([(_fold(u) == "" or _fold(u) in placeholders) for u in uniques] + [True])
        miss = miss | bad[codes]
    return miss


def parse_numbers(s: pd.Series, *, decimal: str = ".", thousands: str | None = None) -> pd.Series:
    """Numbers of a column given as numbers or text (``decimal``/``thousands`` as exported);
    anything else is NaN."""
    if pd.api.types.is_bool_dtype(s):
        return s.astype("float64")
    if pd.api.types.is_numeric_dtype(s):
        return pd.to_numeric(s, errors="coerce").astype("float64")
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    lut = np.full(len(uniques) + 1, np.nan)
    todo = np.arange(len(uniques))
    if decimal == "." and not thousands:  # plain numbers at C speed, the rest one by one
        try:
            plain = pd.to_numeric(pd.Series(uniques, dtype=object), errors="coerce").to_numpy(dtype="float64")
        except OverflowError:  # an integer beyond any float (JSON allows it): one by one
            plain = np.full(len(uniques), np.nan)
        done = np.isfinite(plain)
        lut[:-1][done] = plain[done]
        todo = np.flatnonzero(~done)
    for i in todo.tolist():
        lut[i] = _parse_number(uniques[i], decimal, thousands)
    return pd.Series(lut[codes], index=s.index, dtype="float64")


_CURRENCY = "$€£¥₹"
_GROUPED = {",": re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?"),
            ".": re.compile(r"[-+]?\d{1,3}(\.\d{3})+(,\d+)?")}
_CODES = "USD|EUR|GBP|CHF|JPY|CNY|INR|AUD|CAD|SEK|NOK|DKK|PLN|CZK|HUF|BRL|MXN|ZAR|SGD|HKD|NZD|TRY|AED"
_CURRENCY_CODE = re.compile(rf"^(?:{_CODES})(?=[-+\d(.,])|(?<=[\d.,)])(?:{_CODES})$")  # EUR 1.234,50, 12 CHF


def _number_core(text: str) -> str:
    """A cell's number as bare text: no spaces, currency sign or code, percent sign;
    ``(1,234)``, ``(EUR 1.234,50)`` and ``-EUR 5`` as negatives."""
    for ch in (" ", "\u00a0", "\u202f", "'", "\u2019"):
        text = text.replace(ch, "")
    negative = False
    for _ in range(2):  # "(EUR 1.234,50)" and "EUR (1.234,50)" alike
        if len(text) > 2 and text[0] == "(" and text[-1] == ")":  # accounting negative
            negative, text = not negative, text[1:-1]
        if len(text) > 1 and text[0] in "+-" and not (text[1].isdigit() or text[1] in ".,"):
            negative, text = negative != (text[0] == "-"), text[1:]  # a sign before the currency
        text = _CURRENCY_CODE.sub("", text).strip(_CURRENCY)
    text = text.removesuffix("%")
    return "-" + text if negative else text


def _parse_number(value: object, decimal: str, thousands: str | None) -> float:
    """One cell as a number: ``decimal`` is the decimal mark; digit groups are separated by
    ``thousands``, spaces or apostrophes, or by the other of ``,``/``.`` when every group has
    three digits (``1,234,567.5`` with decimal ``.``, ``1.234,5`` with decimal ``,``); a
    currency sign or code (``EUR 1.234,50``, ``12 CHF``) or a trailing ``%`` is ignored,
    ``(1,234)`` is negative; ``true``/``false`` are 1 and 0 (a boolean
    column of a Parquet file arrives as text from a CSV or a JSON request). Anything else is NaN."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            v = float(value)
        except OverflowError:  # an integer beyond any float: missing, as "1e400" is
            return np.nan
        return v if math.isfinite(v) else np.nan
    text = str(value).strip()
    if text.casefold() in ("true", "false"):  # a boolean column read as text (CSV, JSON)
        return float(text.casefold() == "true")
    text = _number_core(text)
    if thousands:
        text = text.replace(thousands, "")
    else:
        group = "," if decimal == "." else "." if decimal == "," else None
        if group and group in text and _GROUPED[group].fullmatch(text):
            text = text.replace(group, "")
    if decimal != ".":
        if "." in text:
            return np.nan
        text = text.replace(decimal, ".")
    try:
        v = float(text)
    except ValueError:
        return np.nan
    return v if math.isfinite(v) else np.nan


def _category_text(s: pd.Series) -> pd.Series:
    """Category labels as trimmed text; integral numbers without ``.0`` (``3.0`` -> ``"3"``);
    booleans and their text in any case as ``True``/``False`` (a CSV's ``TRUE`` and a JSON
    request's ``true`` are the same value)."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    labels = []
    for u in uniques:
        if isinstance(u, (bool, np.bool_)):
            labels.append(str(bool(u)))
        elif isinstance(u, str) and u.strip().casefold() in ("true", "false"):
            labels.append(u.strip().capitalize())  # TRUE / true / True: one label, as a boolean's
        elif isinstance(u, (float, np.floating)) and float(u).is_integer():
            labels.append(str(int(u)))
        else:
            labels.append(re.sub(r"\s+", " ", str(u)).strip())
    lut = np.asarray(labels + [None], dtype=object)
    return pd.Series(lut[codes], index=s.index, dtype=object)


def feature_name(column: str) -> str:
    """Name of a table column inside the model frame (the reserved names get a suffix)."""
    return f"{column} (column)" if column in RESERVED else column


def table_column(name: str) -> str:
    """Inverse of :func:`feature_name`: the table column behind a model feature."""
    base = name.removesuffix(" (column)")
    return base if base != name and base in RESERVED else name


def table_features(
    frame: pd.DataFrame,
    config: DatasetConfig,
    categorical: Sequence[str],
    numeric: Sequence[str],
    *,
    with_target: bool = False,
) -> pd.DataFrame:
    """Clean raw table rows into the model's frame: ``contact_id``, the features[, ``converted``].

    Placeholders and blanks become missing; categories become trimmed text, numbers floats
    (with the config's decimal and thousands separators). ``categorical``/``numeric`` are
    table column names. A feature column absent from ``frame`` is all missing (logged);
    the id column must be present when the config names one. Without an id column the
    ``contact_id`` is the row's index label: its row number in the table as read, also in
    a slice of it (``frame.iloc[a:b]`` keeps the labels).

    Parameters
    ----------
    with_target
        Add ``converted`` (0/1, NaN where the target is missing).
    """
    placeholders = {_fold(p) for p in config.placeholders}
    out: dict[str, Any] = {}
    if config.id_column:
        if config.id_column not in frame.columns:
            raise ValueError(f"id column {config.id_column!r} is missing from the rows to score")
        ids = _category_text(frame[config.id_column])
    else:
        ids = pd.Series([str(i) for i in frame.index], index=frame.index, dtype=object)
    out[ID] = ids
    absent = [c for c in (*categorical, *numeric) if c not in frame.columns]
    if absent and len(absent) == len(categorical) + len(numeric):
        raise ValueError(f"none of the model's {len(absent)} feature columns is in the table "
                         f"(first: {absent[:3]}); is this the right file?")
    if absent:
        log.warning("%d feature column(s) absent, scored as missing: %s", len(absent), absent[:10])
    for c in categorical:
        if c not in frame.columns:
            out[feature_name(c)] = pd.Series(None, index=frame.index, dtype=object)
            continue
        s = frame[c]
        text = _category_text(s)
        out[feature_name(c)] = text.where(~_missing_mask(s, placeholders), None)
    for c in numeric:
        if c not in frame.columns:
            out[feature_name(c)] = pd.Series(np.nan, index=frame.index, dtype="float64")
            continue
        s = frame[c]
        v = parse_numbers(s, decimal=config.decimal, thousands=config.thousands)
        out[feature_name(c)] = v.where(~_missing_mask(s, placeholders), np.nan)
    result = pd.DataFrame(out, index=frame.index)
    if with_target:
        result[LABEL] = target_labels(frame[config.target.column], config)
    return result.reset_index(drop=True)


def target_labels(s: pd.Series, config: DatasetConfig) -> pd.Series:
    """0/1 labels of the target column (NaN where missing or a placeholder).

    Raises
    ------
    DatasetConfigError
        Non-binary target without ``target.positive``, or a positive value not in the column.
    """
    placeholders = {_fold(p) for p in config.placeholders}
    miss = _missing_mask(s, placeholders)
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    lut = np.asarray([_key(u) for u in uniques] + [None], dtype=object)
    keys = pd.Series(lut[codes], index=s.index, dtype=object).where(~miss, None)
    present = sorted({k for k in keys.dropna().unique()})
    col = config.target.column
    positive = config.positive_values
    negative = config.negative_values
    if positive is None and negative is not None:
        neg = {_key(v) for v in negative}
        positive = [k for k in present if k not in neg]
    if positive is None:
        pos = [k for k in present if k in _POSITIVE_WORDS]
        neg = [k for k in present if k in _NEGATIVE_WORDS]
        if len(pos) <= 1 and len(neg) <= 1 and len(pos) + len(neg) == len(present):
            positive = pos  # 1/0, true/false, yes/no, won/lost, converted/not converted, ...
        else:
            shown = ", ".join(present[:6]) + (", ..." if len(present) > 6 else "")
            raise DatasetConfigError(
                f"target.positive is required: column {col!r} has {len(present)} distinct "
                f"values ({shown}); name the value(s) that mean converted")
    pos_keys = {_key(p) for p in positive}
    unknown = sorted(pos_keys - set(present))
    if config.positive_values is not None and unknown and len(unknown) == len(pos_keys):
        shown = ", ".join(present[:6]) + (", ..." if len(present) > 6 else "")
        raise DatasetConfigError(
            f"target.positive: {unknown} not found in column {col!r} (values: {shown}): "
            "one class only; a model needs converted and non-converted leads")
    y = keys.isin(pos_keys).astype("float64")
    labelled = keys.notna()
    if negative is not None:
        labelled &= keys.isin(pos_keys | {_key(v) for v in negative})
    return y.where(labelled, np.nan)


def negatives_note(s: pd.Series, config: DatasetConfig) -> str | None:
    """A warning when a target's positive value is given without ``target.negative`` and
    several other values all count as not converted (``Closed Lost`` and ``Open``): an open
    deal is not a lost one. None otherwise."""
    if config.positive_values is None or config.negative_values is not None:
        return None
    placeholders = {_fold(p) for p in config.placeholders}
    present = {_key(v) for v in s[~_missing_mask(s, placeholders)].dropna().unique()}
    others = sorted(present - {_key(p) for p in config.positive_values})
    if len(others) < 2:
        return None
    shown = ", ".join(others[:6]) + (", ..." if len(others) > 6 else "")
    unknown = [v for v in others if v in KNOWN_PLACEHOLDERS]
    hint = (f"if {', '.join(unknown)} mean unknown, add them to placeholders; " if unknown else "")
    return (f"target {config.target.column!r}: {len(others)} values count as not converted "
            f"({shown}); {hint}if some are still open (an open deal is not a lost one), list "
            "the lost ones under target.negative: the others are then left out")


# ---------------------------------------------------------------------------
# Resolving the columns: what is a feature, of which kind, and why the others are not
# ---------------------------------------------------------------------------


@dataclass
class Columns:
    """The features of a table and why every other column is left out."""

    categorical: list[str]
    numeric: list[str]
    excluded: dict[str, str]  # column -> reason
    flags: dict[str, str] = field(default_factory=dict)  # column -> warning (kept or not)

    @property
    def features(self) -> list[str]:
        return [*self.categorical, *self.numeric]


def _unknown(key: str, col: str, columns: Sequence[str]) -> str:
    close = difflib.get_close_matches(col, list(columns), n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{key}: unknown column {col!r} (not in the table){hint}"


def _numeric_share(s: pd.Series, config: DatasetConfig, placeholders: set[str]) -> float:
    """Share of the non-missing cells of ``s`` that parse as numbers."""
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return 1.0
    present = ~_missing_mask(s, placeholders)
    if not present.any():
        return 0.0
    v = parse_numbers(s[present], decimal=config.decimal, thousands=config.thousands)
    return float(v.notna().mean())


def _identifier_reason(s: pd.Series, name: str, numbers: pd.Series | None) -> str | None:
    """Why a column looks like an identifier (unique per row), or None. ``numbers``: the
    column's cells parsed as numbers when it is numeric (``'0002262`` as 2262)."""
    present = s.dropna()
    if len(present) < 20 or present.nunique() < 0.98 * len(s):
        return None
    if numbers is None:
        return "identifier-like: a distinct text value on every row"
    v = numbers.dropna()
    if len(v) < len(present) or not np.all(np.mod(v, 1) == 0):
        return None
    span = float(v.max() - v.min() + 1)
    if _ID_NAME.search(name) or span <= 2 * len(v):
        return ("identifier-like: a distinct integer on every row (a sequence number also "
                "encodes arrival order, which a random split would leak)")
    return None


def _name_key(name: str) -> str:
    """``"E-Mail"`` -> ``"email"``, ``"Prénom"`` -> ``"prenom"``: letters only, no accents."""
    plain = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", plain.casefold())


def _phone_share(sample: pd.Series) -> float:
    """Share of ``sample`` that are possible international phone numbers (``+49 30 ...``)."""
    import phonenumbers

    def possible(text: str) -> bool:
        if not _PHONE_VALUE.match(text):
            return False
        try:
            number = phonenumbers.parse("+" + text[2:] if text.startswith("00") else text, None)
        except phonenumbers.NumberParseException:
            return False
        return phonenumbers.is_possible_number(number)

    return float(np.mean([possible(t) for t in sample])) if len(sample) else 0.0


def _personal_reason(s: pd.Series, name: str, numbers: pd.Series | None) -> str | None:
    """Why a column looks like personal data, or None: a name that is a personal field
    (``Last Name``, ``E-Mail``, ``Telefon``), email addresses or international phone numbers
    as values, or a personal-sounding name with many distinct values that are not figures
    (a contact-person column, not an ``Email open rate``; numbers of seven digits or more,
    as phone numbers without their country code, count as personal). ``numbers``: the cells
    parsed as numbers when the column is numeric."""
    name = str(name)
    present = s.dropna()
    levels = present.nunique()
    if _name_key(name) in _PERSONAL_FIELDS and levels > 2:  # two values: a flag (Mobile: yes/no)
        return ("personal data (by its name): never a feature; if it is not personal, list it "
                "under categorical or numeric")
    sample = present.astype(str).str.strip().head(200)
    if len(sample) and sample.str.match(_EMAIL_VALUE).mean() > 0.5:
        return "personal data (holds email addresses): never a feature"
    if _phone_share(sample) > 0.5:
        return "personal data (holds phone numbers): never a feature"
    long_whole = False  # figures are personal only as whole numbers of 7+ digits (phones)
    if numbers is not None and len(v := numbers.dropna()):
        long_whole = float(((v % 1 == 0) & (v.abs() >= 1e6)).mean()) > 0.5
    if (_PII_NAME.search(name) and (numbers is None or long_whole)
            and (levels > 100 or levels > 0.5 * max(len(present), 1))):
        return "personal data (by its name and its many distinct values): never a feature"
    return None


_TIME_NAME = re.compile(  # a column named as a time: "Created (ms)", "updated_at", "Close Date"
    r"\b(date|time|timestamp|datum|zeit)\b|creat(ed|ion)|erstellt|_at$|\bts\b|epoch|\(ms\)|_ms$|"
    r"\bms$|\bupdated\b|modified|(first|last).?seen", re.IGNORECASE)


def epoch_unit(s: pd.Series) -> Literal["s", "ms"] | None:
    """``"s"`` or ``"ms"`` when nearly every value of ``s`` (numbers, or text of numbers) is a
    whole Unix time between 2001 and 2039 in that unit; else None."""
    v = parse_numbers(s.dropna().head(500))
    if not len(v) or v.isna().mean() > 0.02:
        return None
    v = v.dropna()
    if not bool((v % 1 == 0).all()):
        return None
    for unit, lo, hi in (("s", 1e9, 2.2e9), ("ms", 1e12, 2.2e12)):
        if float(((v >= lo) & (v <= hi)).mean()) >= 0.98:
            return unit
    return None


def _date_share(s: pd.Series) -> float:
    if pd.api.types.is_datetime64_any_dtype(s):
        return 1.0
    if pd.api.types.is_numeric_dtype(s):
        return 0.0
    sample = s.dropna().astype(str).head(500)
    if not len(sample) or sample.str.contains(_DATE_VALUE).mean() < 0.9:
        return 0.0
    try:  # utc: offsets may differ within a column (daylight saving time)
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed", utc=True)
    except (ValueError, OverflowError):
        return 0.0
    return float(parsed.notna().mean())


def resolve_columns(frame: pd.DataFrame, config: DatasetConfig, *, auto: bool = True) -> Columns:
    """Features of ``frame`` under ``config``, and the reason for every column left out.

    The config decides first: id, target and time columns, ``exclude``, ``post_contact``
    (unless ``include_post_contact``), ``use``. With ``auto`` the rest is checked too:
    personal data, identifier-like, constant and free-text columns are left out unless the
    config lists them under ``categorical``/``numeric``/``use``.
    """
    placeholders = {_fold(p) for p in config.placeholders}
    special = {config.target.column: "target", config.id_column: "id column",
               config.time_column: "time column (used to split, not as a feature)"}
    excluded: dict[str, str] = {}
    categorical: list[str] = []
    numeric: list[str] = []
    forced = set(config.categorical) | set(config.numeric) | set(config.use or [])
    for col in frame.columns:
        if col in special and col is not None:
            if special[col] != "target":
                excluded[col] = special[col]
            continue
        if col in config.exclude:
            excluded[col] = config.exclude[col]
            continue
        if col in config.post_contact and not config.include_post_contact:
            excluded[col] = f"known only after sales contact: {config.post_contact[col]}"
            continue
        if config.use is not None and col not in config.use:
            excluded[col] = "not listed under use"
            continue
        s = frame[col]
        present = s[~_missing_mask(s, placeholders)]
        if present.empty:  # even when the config lists it: nothing to learn from
            excluded[col] = "empty: no value on any row (blank or a placeholder)"
            if col in forced:
                log.warning("column %r is listed in the dataset config but empty: left out", col)
            continue
        # parsed once: whether the column is numeric, and its figures for the checks below
        parsed = (None if col in config.categorical else
                  parse_numbers(present, decimal=config.decimal, thousands=config.thousands))
        is_num = col in config.numeric or (parsed is not None and float(parsed.notna().mean()) >= 0.98)
        numbers = parsed if is_num else None
        if auto and col not in forced:
            reason = _personal_reason(present, col, numbers)
            if reason is None and present.nunique() <= 1:
                reason = "constant: one value on every row"
            if reason is None and ((not is_num and _date_share(present) >= 0.9) or (
                    is_num and _TIME_NAME.search(str(col)) and not _ID_NAME.search(str(col))
                    and present.nunique() > 0.1 * len(present) and epoch_unit(present))):
                reason = ("date/time column: when it was recorded is unknown (it may postdate "
                          "the outcome); name it time_column to split by it")
            if reason is None:
                reason = _identifier_reason(present.reset_index(drop=True), col,
                                            None if numbers is None else numbers.reset_index(drop=True))
            if reason is None and not is_num:
                n_levels = present.nunique()
                if n_levels > 100 and n_levels > 0.5 * len(present):
                    reason = f"free text or identifier: {n_levels} distinct values"
            if reason is not None:
                excluded[col] = reason
                continue
        (numeric if is_num else categorical).append(col)
    return Columns(categorical, numeric, excluded)


def check_config(frame: pd.DataFrame, config: DatasetConfig) -> Columns:
    """Check ``config`` against ``frame`` and resolve the features.

    Raises
    ------
    DatasetConfigError
        Every problem, each naming its key: unknown columns, a target with one class or
        without a positive value when not binary, a numeric column that is not numeric, an
        unparseable time column, no feature left.
    """
    cols = list(frame.columns)
    errors: list[str] = []
    named: list[tuple[str, str]] = [("target.column", config.target.column)]
    if config.id_column:
        named.append(("id_column", config.id_column))
    if config.time_column:
        named.append(("time_column", config.time_column))
    for key in ("exclude", "post_contact"):
        named += [(key, c) for c in getattr(config, key)]
    for key in ("categorical", "numeric"):
        named += [(key, c) for c in getattr(config, key)]
    named += [("use", c) for c in config.use or []]
    named += [("rules.columns", c) for c in (config.rules.columns if config.rules else {})]
    errors += [_unknown(key, c, cols) for key, c in named if c not in cols]
    if errors:
        raise DatasetConfigError("dataset config does not fit the table: " + "; ".join(errors))

    y = target_labels(frame[config.target.column], config)
    labelled = y.dropna()
    if labelled.nunique() < 2:
        only = "converted" if len(labelled) and labelled.iloc[0] == 1 else "not converted"
        raise DatasetConfigError(
            f"target.column {config.target.column!r}: one class only ({len(labelled)} labelled "
            f"rows, all {only}); a model needs converted and non-converted leads")
    if config.id_column and config.duplicate_ids == "error":
        ids = _category_text(frame[config.id_column]).reset_index(drop=True)
        dup = ids.notna() & ids.duplicated(keep="first")
        if dup.any():
            first = int(np.flatnonzero(dup)[0])
            same = int(np.flatnonzero((ids == ids[first]).to_numpy())[0])
            raise DatasetConfigError(
                f"id_column {config.id_column!r}: {int(dup.sum())} row(s) repeat an id (first: "
                f"row {first} repeats row {same}, counting from 0); remove the duplicates or set "
                "duplicate_ids: first (or last) to keep one row per id")
    if config.time_column:
        try:
            t = parse_times(frame[config.time_column], config.dayfirst, config.time_column)
        except ValueError as e:
            raise DatasetConfigError(f"time_column: {e}") from None
        if t.notna().mean() < 0.9:
            errors.append(f"time_column {config.time_column!r}: only {t.notna().mean():.0%} of "
                          "the rows hold a date/time")
    placeholders = {_fold(p) for p in config.placeholders}
    for c in config.numeric:
        share = _numeric_share(frame[c], config, placeholders)
        if share < 0.5 and (~_missing_mask(frame[c], placeholders)).any():
            errors.append(f"numeric: column {c!r} is not numeric (only {share:.0%} of its values "
                          f"parse as numbers with decimal {config.decimal!r})")
    if config.rules:
        for c, r in config.rules.columns.items():
            if r.thresholds and _numeric_share(frame[c], config, placeholders) < 0.5:
                errors.append(f"rules.columns.{c}: thresholds on a column that is not numeric")
    if errors:
        raise DatasetConfigError("dataset config does not fit the table: " + "; ".join(errors))
    columns = resolve_columns(frame, config)
    if not columns.features:
        raise DatasetConfigError("dataset config leaves no feature column: every column is "
                                 f"excluded ({len(columns.excluded)} columns)")
    return columns


_NUMERIC_DATE = re.compile(r"^\s*(\d{1,2})[-/.](\d{1,2})[-/.](\d{2,4})\b")


def date_order(s: pd.Series, column: str = "") -> bool | None:
    """Whether the text dates of ``s`` put the day first (``31/12/2024``): True, False, or
    None when no value says (ISO dates, or every day and month at most 12).

    Raises
    ------
    ValueError
        Naming the column, when some values have a day over 12 in the first place and others
        in the second (mixed orders cannot be parsed safely).
    """
    if pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return None
    parts = s.dropna().astype(str).str.extract(_NUMERIC_DATE).dropna().astype("int64")
    if parts.empty:
        return None
    day_first = bool((parts[0] > 12).any())
    month_first = bool((parts[1] > 12).any())
    if day_first and month_first:
        raise ValueError(f"column {column!r}: dates in both day/month and month/day order "
                         "(e.g. 31/01 and 01/31): fix the export")
    return True if day_first else False if month_first else None


def parse_times(s: pd.Series, dayfirst: bool | None = None, column: str = "") -> pd.Series:
    """Timestamps (naive, UTC) of a column; NaT where unparseable.

    Numeric dates (``03/04/2024``) are read in one order for the whole column: ``dayfirst``,
    else the order the values show (:func:`date_order`), else month first (logged). Whole
    numbers in the range of Unix times (:func:`epoch_unit`) are seconds or milliseconds.
    """
    if pd.api.types.is_datetime64_any_dtype(s):
        t = s
    elif unit := epoch_unit(s):  # Unix time, as an API export gives it
        t = pd.to_datetime(parse_numbers(s), unit=unit, errors="coerce", utc=True)
    elif pd.api.types.is_numeric_dtype(s):
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    else:
        if dayfirst is None:
            dayfirst = date_order(s, column)
            if dayfirst is None and s.dropna().astype(str).str.match(r"\s*\d{1,2}[-/.]\d{1,2}[-/.]").any():
                log.warning("column %r: dates could be day/month or month/day; read as "
                            "month/day (set dayfirst in the dataset config)", column)
        t = pd.to_datetime(s, errors="coerce", format="mixed", utc=True, dayfirst=bool(dayfirst))
    if getattr(t.dt, "tz", None) is not None:
        t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    return t


# ---------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------


_OUTCOME_PAIRS = ({"won", "lost"}, {"converted", "not converted"}, {"success", "failure"})


def _guess_target(frame: pd.DataFrame) -> str:
    """The one binary column with an outcome-like name, else the one column whose two values
    are an outcome pair (won/lost, converted/not converted, ...), whatever its name."""
    candidates = [c for c in frame.columns if _TARGET_NAME.search(c) and frame[c].dropna().nunique() == 2]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        by_values = [c for c in frame.columns if frame[c].dropna().nunique() == 2 and
                     {_key(v) for v in frame[c].dropna().unique()} in _OUTCOME_PAIRS]
        if len(by_values) == 1:
            return by_values[0]
    listed = f" (candidates: {candidates})" if candidates else ""
    raise DatasetConfigError("target.column: cannot tell which column is the outcome"
                             f"{listed}; give it (--target COLUMN)")


def _guess_positive(values: Sequence[object]) -> Scalar | None:
    """The positive one of two target values when one is a positive word (1, true, yes, won,
    converted, ...) and the other a negative one (0, false, no, lost, ...); else None."""
    keys = {_key(v): v for v in values}
    pos = [k for k in keys if k in _POSITIVE_WORDS]
    neg = [k for k in keys if k in _NEGATIVE_WORDS]
    if len(keys) == 2 and len(pos) == 1 and len(neg) == 1:
        v = keys[pos[0]]
        return int(_key(v)) if _key(v) in ("0", "1") else str(v)  # 1, "1", 1.0 and "1.0" alike
    return None


def _guess_placeholders(frame: pd.DataFrame) -> list[str]:
    seen: dict[str, str] = {}
    for c in frame.columns:
        s = frame[c]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            continue
        for u in s.dropna().unique()[:5000]:
            k = _fold(u)
            if k in KNOWN_PLACEHOLDERS and k not in seen:
                seen[k] = str(u).strip()
    return sorted(seen.values())


def _guess_decimal(frame: pd.DataFrame, separator: str | None) -> str:
    """``,`` when the text cells look like European numbers (``12,5``, ``1.234,5``) and never
    like ``12.5``; ``1,234`` (three digits after the comma) is a thousands group, no evidence.
    Only ``1.234``-like groups in a ``;``-separated file (a European spreadsheet's export): ``,``."""
    comma = dot = dot_groups = 0
    for c in frame.columns:
        s = frame[c]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            continue
        sample = s.dropna().astype(str).str.strip().head(500).map(_number_core)
        grouped_comma = sample.str.fullmatch(_GROUPED[","].pattern)
        grouped_dot = sample.str.fullmatch(_GROUPED["."].pattern)
        comma += int((sample.str.fullmatch(r"[-+]?\d+,\d+") & ~grouped_comma).sum())
        comma += int((grouped_dot & sample.str.contains(",", regex=False)).sum())
        dot += int((sample.str.fullmatch(r"[-+]?\d+\.\d+") & ~grouped_dot).sum())
        dot += int((grouped_comma & sample.str.contains(".", regex=False)).sum())
        dot_groups += int(grouped_dot.sum())
    if separator == "," or dot > 0:
        return "."
    return "," if comma > 0 or (separator == ";" and dot_groups > 0) else "."


def infer_config(
    frame: pd.DataFrame,
    *,
    target: str | None = None,
    positive: Scalar | list[Scalar] | None = None,
    name: str | None = None,
    separator: str | None = None,
    seed: int = 0,
) -> DatasetConfig:
    """A dataset config for ``frame`` inferred where it is safe, for review and reuse.

    The target is ``target`` or the one binary column with an outcome-like name; its positive
    value is ``positive`` or the obvious one (1, true, yes, won, ...). Detected and written
    with their reasons: the id column, placeholders (``Select``, ``N/A``, ...), the decimal
    separator, personal-data, identifier-like, constant, free-text and date columns
    (``exclude``), a creation-date ``time_column``, and probable leaks (``post_contact``):
    columns whose name says they are filled in after contact (status, tags, quality, last
    activity, ...) or that alone separate converters with ROC AUC >= 0.90
    (:func:`training.leakage.single_feature_auc`, in-sample, errs towards flagging).
    Strong single-column predictors (AUC >= 0.80) get a note.

    Raises
    ------
    DatasetConfigError
        When the target cannot be found or its positive value is ambiguous.
    """
    frame = frame.copy()
    target = target or _guess_target(frame)
    if target not in frame.columns:
        raise DatasetConfigError(_unknown("target.column", target, list(frame.columns)))
    if positive is None:
        positive = _guess_positive(frame[target].dropna().unique()[:50])
    placeholders = _guess_placeholders(frame.drop(columns=[target]))
    base = DatasetConfig(target=TargetConfig(column=target, positive=positive), name=name,
                         separator=separator, placeholders=placeholders,
                         decimal=_guess_decimal(frame, separator))
    y = target_labels(frame[target], base)  # raises for a non-binary target without positive
    if y.dropna().nunique() < 2:
        raise DatasetConfigError(f"target.column {target!r}: one class only; a model needs "
                                 "converted and non-converted leads")

    auto = resolve_columns(frame, base, auto=True)
    exclude = dict(auto.excluded)
    target_note = negatives_note(frame[target], base)
    id_column = next((c for c, why in exclude.items() if why.startswith("identifier") and
                      _ID_NAME.search(c) and not pd.api.types.is_float_dtype(frame[c])), None)
    if id_column is None:
        id_column = next((c for c, why in exclude.items() if why.startswith("identifier")), None)
    if id_column:
        exclude.pop(id_column)
    notes: dict[str, str] = {}
    dates = [c for c, why in exclude.items() if why.startswith("date/time")]
    time_column = next((c for c in dates if _CREATED_NAME.search(c)), None)
    dayfirst = None
    if time_column:
        exclude.pop(time_column)
        try:
            dayfirst = date_order(frame[time_column], time_column)
        except ValueError as e:
            notes[time_column] = f"not usable as time_column: {e}"
            exclude[time_column] = "date/time column with mixed day/month orders"
            time_column = None

    post_contact: dict[str, str] = {}
    features = auto.features
    for c in features:
        if _POST_CONTACT_NAME.search(c):
            post_contact[c] = ("name suggests it is filled in after sales contact (status, tags, "
                               "quality, last activity, score...): review, then keep here or move")
    labelled = y.notna().to_numpy()
    prepared = table_features(frame[labelled], base, auto.categorical, auto.numeric)
    aucs = single_feature_auc(prepared, y[labelled].to_numpy(dtype="int64"),
                              [feature_name(c) for c in features], seed=seed)
    for c in features:
        auc = float(aucs.get(feature_name(c), np.nan))
        if not np.isfinite(auc):
            continue
        if auc >= LEAK_FLAG_AUC:
            why = next(iter(probable_leaks(pd.Series({c: auc}), LEAK_FLAG_AUC).values()))
            post_contact[c] = why + ("; and its " + post_contact[c] if c in post_contact else "")
        elif auc >= STRONG_AUC:
            notes[c] = (f"strong single-column predictor (ROC AUC {auc:.3f}, in-sample): check "
                        "that it is known before the first sales contact")
    if target_note:
        notes[target] = target_note
    return DatasetConfig(
        name=name, id_column=id_column,
        target=TargetConfig(column=target, positive=positive),
        separator=separator, decimal=base.decimal, placeholders=placeholders,
        exclude=exclude, post_contact=post_contact, time_column=time_column, dayfirst=dayfirst,
        notes=notes,
    )


# ---------------------------------------------------------------------------
# Rule scorer for tables
# ---------------------------------------------------------------------------


def _round_edge(x: float) -> float:
    """Two significant digits: readable thresholds (``937.4`` -> ``940``)."""
    if x == 0 or not math.isfinite(x):
        return 0.0
    digits = 1 - math.floor(math.log10(abs(x)))
    return float(round(x, digits))


def learn_scorecard(
    frame: pd.DataFrame,
    y: np.ndarray,
    categorical: Sequence[str],
    numeric: Sequence[str],
    *,
    max_columns: int = 8,
    bins: int = 5,
    prior: float = 20.0,
    min_count: int = 30,
    points_per_logit: float = 10.0,
) -> TableRulesConfig:
    """A points table learned from labelled rows (the training split only).

    Every value (categories with at least ``min_count`` rows; numbers cut at their quantiles,
    rounded to two significant digits; missing) gets ``round(points_per_logit * (logit(rate)
    - logit(base rate)))`` points, where ``rate`` is its conversion rate shrunk towards the
    base rate by ``prior`` pseudo-rows. The ``max_columns`` columns with the largest
    information value are kept. Points of different columns simply add up (as a marketer's
    scorecard does), so correlated columns count twice: the calibration of the total, not the
    points, gives the probability.

    ``frame`` holds the model frame's columns (:func:`feature_name` of the table columns).
    """
    y = np.asarray(y, dtype="float64")
    base = float(np.clip(y.mean(), 1e-4, 1 - 1e-4))
    base_logit = math.log(base / (1 - base))
    n_pos, n_neg = y.sum(), len(y) - y.sum()

    def points_of(groups: pd.Series) -> tuple[dict[Any, float], float]:
        stats = pd.DataFrame({"g": groups, "y": y}).groupby("g", dropna=False)["y"].agg(["sum", "count"])
        pts, iv = {}, 0.0
        for g, (pos, cnt) in stats.iterrows():
            rate = (pos + prior * base) / (cnt + prior)
            woe = math.log(rate / (1 - rate)) - base_logit
            p = round(points_per_logit * woe)
            pts[g] = float(p)
            iv += ((pos / n_pos) - ((cnt - pos) / n_neg)) * woe
        return pts, iv

    candidates: list[tuple[float, str, ColumnRules]] = []
    for col in categorical:
        s = frame[feature_name(col)].astype(object)
        counts = s.value_counts()
        common = set(counts[counts >= min_count].index)
        groups = s.where(s.isin(common), "__other__").where(s.notna(), "__missing__")
        pts, iv = points_of(groups)
        values = {str(k): v for k, v in pts.items() if k not in ("__missing__", "__other__") and v}
        rules = ColumnRules(values=values, other=pts.get("__other__", 0.0),
                            missing=pts.get("__missing__", 0.0))
        candidates.append((iv, col, rules))
    for col in numeric:
        v = pd.to_numeric(frame[feature_name(col)], errors="coerce").to_numpy(dtype="float64")
        present = v[np.isfinite(v)]
        if present.size < 2 * min_count:
            continue
        edges = sorted({_round_edge(q) for q in np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])})
        edges = [e for e in edges if present.min() < e <= present.max()]
        if not edges:
            continue
        idx = np.where(np.isfinite(v), np.searchsorted(edges, v, side="right"), -1)
        pts, iv = points_of(pd.Series(idx))
        rules = ColumnRules(thresholds=[(e, pts.get(i + 1, 0.0)) for i, e in enumerate(edges)],
                            below=pts.get(0, 0.0), missing=pts.get(-1, 0.0))
        candidates.append((iv, col, rules))
    candidates.sort(key=lambda t: -t[0])
    return TableRulesConfig(columns={col: r for _, col, r in candidates[:max_columns]})


class TableRuleScorer:
    """Points per column value / numeric threshold of a CRM table (``scorer="rules"``).

    Same interface as :class:`training.rules.RuleScorer`: :meth:`points`, :meth:`calibrate`,
    :meth:`predict_proba`, :meth:`score_frame`, :meth:`to_dict` / :meth:`from_dict`. Reads
    the model frame (:func:`table_features`); missing columns and values score ``missing``.
    Never raises on data; needs no LightGBM.

    Parameters
    ----------
    config
        The points; its column names are table column names.
    learned
        Whether the points were learned from the training rows (:func:`learn_scorecard`)
        rather than given in the dataset config.
    """

    name = "rules"

    def __init__(self, config: TableRulesConfig, *, learned: bool = False,
                 calibration: Mapping[str, Any] | None = None, scale: ScoreScale | None = None) -> None:
        self.config = config
        self.learned = learned
        self.calibration: dict[str, Any] | None = dict(calibration) if calibration else None
        self.scale = scale
        self._values = {c: {_fold(k): float(v) for k, v in r.values.items()}
                        for c, r in config.columns.items()}

    # -- points -------------------------------------------------------------
    def _column_points(self, frame: pd.DataFrame, col: str, rules: ColumnRules) -> np.ndarray:
        name = feature_name(col)
        n = len(frame)
        if name not in frame.columns:
            return np.full(n, rules.missing)
        s = frame[name]
        if rules.kind == "numeric":
            v = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64")
            edges = np.asarray([t[0] for t in rules.thresholds])
            pts = np.asarray([rules.below] + [t[1] for t in rules.thresholds])
            out = pts[np.searchsorted(edges, np.nan_to_num(v, nan=-np.inf), side="right")]
            return np.where(np.isfinite(v), out, rules.missing)
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        table = self._values[col]
        lut = [table.get(_fold(u), rules.other) for u in uniques] + [rules.missing]
        return np.asarray(lut, dtype="float64")[codes]

    def points(self, frame: pd.DataFrame) -> RulePoints:
        """Total points per row and the contribution of every column (named as in the frame)."""
        cols = list(self.config.columns)
        contrib = (np.column_stack([self._column_points(frame, c, self.config.columns[c]) for c in cols])
                   if cols else np.zeros((len(frame), 0))) + 0.0
        total = contrib.sum(axis=1)
        return RulePoints(total=total, fit=total, engagement=np.zeros(len(frame)),
                          contributions=pd.DataFrame(contrib, columns=[feature_name(c) for c in cols],
                                                     index=frame.index))

    # -- probability --------------------------------------------------------
    def calibrate(self, points: np.ndarray | Sequence[float], y: np.ndarray | Sequence[int], *,
                  thresholds: Mapping[str, float] | None = None) -> TableRuleScorer:
        """Learn the monotone points -> probability map (isotonic) and the score scale."""
        from sklearn.isotonic import IsotonicRegression

        t = np.asarray(points, dtype="float64")
        yy = np.asarray(y, dtype="float64")
        if len(np.unique(yy)) < 2:
            raise ValueError("calibration needs both converted and non-converted leads")
        iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4).fit(t, yy)
        self.calibration = {"kind": "isotonic", "x": iso.X_thresholds_.tolist(),
                            "y": iso.y_thresholds_.tolist(), "n": len(yy), "positives": int(yy.sum())}
        self.scale = ScoreScale.fit(self.probability_from_points(t), thresholds)
        return self

    def probability_from_points(self, total: np.ndarray | Sequence[float]) -> np.ndarray:
        t = np.nan_to_num(np.asarray(total, dtype="float64"))
        if self.calibration is None:  # uncalibrated: 10 points = e-fold odds around 50%
            return 1.0 / (1.0 + np.exp(-t / 10.0))
        return np.interp(t, self.calibration["x"], self.calibration["y"])

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.probability_from_points(self.points(frame).total)

    # -- output -------------------------------------------------------------
    def score_frame(self, frame: pd.DataFrame, *, scored_at: Any, top_k: int = 3) -> pd.DataFrame:
        """The common scorer output (``features.schema.OUTPUT_COLUMNS``); the band is cut on
        the score like the model's."""
        pts = self.points(frame)
        p = self.probability_from_points(pts.total)
        scale = self.scale or ScoreScale.identity()
        score = scale.score(p)
        reasons = format_reasons(pts.contributions, values=frame.reset_index(drop=True), top_k=top_k,
                                 names={feature_name(c): c for c in self.config.columns})
        ids = frame[ID].to_numpy(dtype=object) if ID in frame.columns else frame.index.to_numpy()
        out = pd.DataFrame({
            "contact_id": ids, "probability": p, "score": score, "band": scale.band(score),
            "reasons": pd.Series(reasons, dtype=object).to_numpy(), "scorer": "rules",
            "model_name": "rules", "model_version": self.model_version,
            "scored_at": pd.Timestamp(scored_at),
        })
        return out[list(OUTPUT_COLUMNS)]

    def bands(self, frame: pd.DataFrame) -> np.ndarray:
        scale = self.scale or ScoreScale.identity()
        return scale.band(scale.score(self.predict_proba(frame)))

    def band_info(self) -> dict[str, Any]:
        return {"method": "score percentile of the training population",
                "score_band_thresholds": dict(self.scale.band_thresholds) if self.scale else None}

    # -- persistence --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": "table_rules", "learned": self.learned,
                "config": self.config.model_dump(mode="json"), "calibration": self.calibration,
                "scale": self.scale.to_dict() if self.scale else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TableRuleScorer:
        return cls(TableRulesConfig.model_validate(d["config"]), learned=bool(d.get("learned")),
                   calibration=d.get("calibration"),
                   scale=ScoreScale.from_dict(d["scale"]) if d.get("scale") else None)

    def to_yaml(self) -> str:
        """The points as a ``rules:`` section for the dataset config (to review or freeze)."""
        return yaml.safe_dump({"rules": self.config.model_dump(mode="json", exclude_defaults=True)},
                              sort_keys=False, allow_unicode=True)

    @property
    def model_version(self) -> str:
        blob = json.dumps({k: v for k, v in self.to_dict().items() if k != "kind"}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    version = model_version


# ---------------------------------------------------------------------------
# Training and scoring
# ---------------------------------------------------------------------------


def table_time_split(times: pd.Series, test_fraction: float, validation_fraction: float) -> Split:
    """Oldest rows train, then validation, newest ``test_fraction`` test.

    Rows sharing a timestamp stay on one side (the later one), so no training row is as
    recent as a test row.
    """
    t = pd.to_datetime(times).to_numpy()
    order = np.sort(t)
    n = len(t)
    test_from = order[min(n - 1, math.floor(n * (1 - test_fraction)))]
    val_from = order[min(n - 1, math.floor(n * (1 - test_fraction - validation_fraction)))]
    test = t >= test_from
    validation = (t >= val_from) & ~test
    train = ~test & ~validation
    if not train.any() or not validation.any() or not test.any():
        raise ValueError("time split: too few distinct times for train, validation and test")

    def describe(m: np.ndarray) -> str:
        return (f"{pd.Timestamp(t[m].min()).date()}..{pd.Timestamp(t[m].max()).date()} "
                f"({int(m.sum())} rows)")

    return Split(train, validation, test,
                 {"train": describe(train), "validation": describe(validation), "test": describe(test)})


def _split_with_test(y: pd.Series, test: np.ndarray, config: TrainConfig, *, seed: int) -> Split:
    """A given test set; the other rows split into train and validation (stratified)."""
    from sklearn.model_selection import train_test_split

    rest = np.flatnonzero(~test)
    if not test.any() or len(rest) < 2:
        raise ValueError("test_rows: the test set and the rows left for training must not be empty")
    share = config.split.validation_fraction / (1 - config.split.test_fraction)
    train, val = train_test_split(rest, test_size=share, stratify=y.iloc[rest], random_state=seed)

    def mask(i: np.ndarray) -> np.ndarray:
        m = np.zeros(len(y), dtype=bool)
        m[i] = True
        return m

    def describe(m: np.ndarray, how: str) -> str:
        return f"{int(m.sum())} rows ({m.mean():.0%}, {how})"

    return Split(mask(train), mask(val), test.copy(), {
        "train": describe(mask(train), f"stratified, seed {seed}"),
        "validation": describe(mask(val), f"stratified, seed {seed}"),
        "test": describe(test, "given rows"),
    })


def table_rejects(frame: pd.DataFrame, config: DatasetConfig, data: pd.DataFrame,
                  times: pd.Series | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Which rows of a table are trained on, and why each of the others is not.

    ``data`` is :func:`table_features` of ``frame`` with the target. Left out: rows without a
    target value (missing, a placeholder, or with ``target.negative`` a value that is neither
    positive nor negative, e.g. an open deal), rows without a time when the config has a
    ``time_column``, and rows repeating the id of another kept row (``duplicate_ids``: the
    first or the last row of each id is kept; rows without an id are all kept).

    Returns
    -------
    keep, rejects
        A boolean mask over the rows, and a frame ``row`` (0-based position in the table),
        ``reason``: one line per row left out, no cell values (ids may be personal data).
    """
    n = len(data)
    reasons = np.full(n, None, dtype=object)
    raw_target = frame[config.target.column].reset_index(drop=True)
    no_target = data[LABEL].isna().to_numpy()
    placeholders = {_fold(p) for p in config.placeholders}
    blank = _missing_mask(raw_target, placeholders)
    reasons[no_target & blank] = "target missing"
    reasons[no_target & ~blank] = ("target value neither positive nor negative "
                                   "(not an outcome yet)")
    if times is not None:
        no_time = times.isna().to_numpy() & pd.isna(reasons)
        reasons[no_time] = f"time_column {config.time_column!r} missing or not a date"
    if config.id_column:
        ids = data[ID].reset_index(drop=True)
        candidates = pd.isna(reasons) & ids.notna().to_numpy()
        sub = ids[candidates]
        keep_which = "last" if config.duplicate_ids == "last" else "first"
        dup = sub.duplicated(keep=keep_which)
        if dup.any():
            kept_row = pd.Series(sub.index, index=sub.index).groupby(sub).transform(
                "max" if keep_which == "last" else "min")
            y = data[LABEL].reset_index(drop=True)
            conflict = dup & (y[sub.index].to_numpy() != y[kept_row.to_numpy()].to_numpy())
            for r in sub.index[dup.to_numpy()]:
                reasons[r] = (f"duplicate id (same {config.id_column!r} as row {int(kept_row[r])}, "
                              f"the {keep_which} one kept)")
            if conflict.any():
                log.warning("id_column %r: %d repeated id(s) with a different target value; the "
                            "%s row of each id is kept", config.id_column, int(conflict.sum()), keep_which)
    keep = np.asarray(pd.isna(reasons))
    left = np.flatnonzero(~keep)
    rejects = pd.DataFrame({"row": left.astype("int64"), "reason": reasons[left].astype(object)})
    return keep, rejects


def reject_counts(rejects: pd.DataFrame) -> pd.Series:
    """Rows left out per kind of reason (:func:`table_rejects`' ``reason`` without its
    row-specific part, e.g. the row a duplicate id repeats), most frequent first."""
    return rejects["reason"].str.replace(r" \(same .*", "", regex=True).value_counts()


@dataclass
class TableTrainResult:
    """A trained table model with what it was trained on."""

    result: Any  # training.train.TrainResult
    config: DatasetConfig
    columns: Columns
    frame: pd.DataFrame  # the model frame: contact_id, features, converted
    dropped_rows: int  # rows left out: no target (or time) value, a repeated id
    flags: dict[str, str]  # column -> warning (probable leaks that were kept, ...)
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["row", "reason"]))

    @property
    def model(self):
        return self.result.model

    @property
    def comparison(self) -> pd.DataFrame:
        return self.result.comparison


def _table_comparison(comparison: pd.DataFrame) -> pd.DataFrame:
    out = comparison.copy()
    out["top_decile_conversion"] = out["top_decile_lift"] * out["positive_rate"]
    return out


def train_table(
    frame: pd.DataFrame,
    config: DatasetConfig,
    *,
    train_config: TrainConfig | None = None,
    tune_trials: int = 0,
    test_rows: np.ndarray | Sequence[bool] | None = None,
) -> TableTrainResult:
    """Train the platform's model on a CRM table (rows as read by :func:`read_table`).

    Checks the config (:func:`check_config`), cleans (:func:`table_features`), leaves out the
    rows :func:`table_rejects` lists (``TableTrainResult.rejects``), splits (the
    config's time column, else stratified random with ``train_config.seed``; test share
    ``split.test_fraction``), learns the table rule scorer on the training rows when the
    config gives no points, and runs :func:`training.train.train` with cross-fitting
    (``config.cross_fit_folds``, random split only). Columns excluded by the config are logged
    with their reason; single columns that alone separate converters with ROC AUC >= 0.90 are
    flagged (and excluded by training above ``leak_auc_threshold``).

    Parameters
    ----------
    test_rows
        A boolean mask over the rows of ``frame``: these rows are the held-out test set instead
        of a random one (e.g. the folds of a cross-validation); the other labelled rows are
        split into train and validation as usual. Not with a time column.
    """
    from training.train import train

    train_config = train_config or table_training_config(config.training)
    columns = check_config(frame, config)
    for col, why in columns.excluded.items():
        log.info("column %r left out: %s", col, why)
    if note := negatives_note(frame[config.target.column], config):
        log.warning(note)
    data = table_features(frame, config, columns.categorical, columns.numeric, with_target=True)
    times = (parse_times(frame[config.time_column], config.dayfirst, config.time_column).reset_index(drop=True)
             if config.time_column else None)
    keep, rejects = table_rejects(frame, config, data, times)
    dropped = int((~keep).sum())
    for why, n in reject_counts(rejects).items():
        log.warning("%d row(s) left out: %s", n, why)
    data = data[keep].reset_index(drop=True)
    data[LABEL] = data[LABEL].astype("int64")
    cat = [feature_name(c) for c in columns.categorical]
    num = [feature_name(c) for c in columns.numeric]

    if test_rows is not None:
        test_mask = np.asarray(test_rows, dtype=bool)
        if test_mask.shape != (len(frame),):
            raise ValueError(f"test_rows: a boolean mask of the table's {len(frame)} rows, "
                             f"got shape {test_mask.shape}")
        if times is not None:
            raise ValueError("test_rows: not with a time_column (the time split decides)")
        split = _split_with_test(data[LABEL], test_mask[keep], train_config, seed=train_config.seed)
        folds = config.cross_fit_folds
    elif times is not None:
        try:
            split = table_time_split(times[keep].reset_index(drop=True), train_config.split.test_fraction,
                                     train_config.split.validation_fraction)
        except ValueError as e:
            raise DatasetConfigError(f"time_column {config.time_column!r}: {e}") from None
        folds = 0
    else:
        split = random_split(data[LABEL], train_config.split, seed=train_config.seed)
        folds = config.cross_fit_folds
    fit_rows = split.train | split.validation if folds > 1 else split.train

    flags: dict[str, str] = {}
    aucs = single_feature_auc(data.loc[fit_rows], data.loc[fit_rows, LABEL].to_numpy(), cat + num,
                              seed=train_config.seed)
    for c, why in probable_leaks(aucs, LEAK_FLAG_AUC).items():
        flags[c] = why + "; if it is filled in after contact, list it under post_contact"
        log.warning("column %r: %s", c, flags[c])

    if config.rules and config.rules.columns:
        rules = TableRuleScorer(config.rules, learned=False)
    else:
        y_fit = data.loc[fit_rows, LABEL].to_numpy()
        dropped_by_training = probable_leaks(aucs, train_config.leak_auc_threshold)  # as train() will
        card = learn_scorecard(data.loc[fit_rows].reset_index(drop=True), y_fit,
                               [c for c in columns.categorical if feature_name(c) not in dropped_by_training],
                               [c for c in columns.numeric if feature_name(c) not in dropped_by_training],
                               max_columns=config.scorecard_columns)
        rules = TableRuleScorer(card, learned=True)

    result = train(data, config=train_config, categorical=cat, numeric=num, label=LABEL,
                   time_column=None, rules=rules, tune_trials=tune_trials, split=split,
                   cross_fit=folds, baseline_numeric="quantile_bins")
    result.comparison = _table_comparison(result.comparison)
    excluded = {**columns.excluded, **result.excluded}
    result.excluded = excluded
    model = result.model
    model.dataset = config.model_dump(mode="json")
    model.model_name = config.registered_model
    model.metadata["metrics"] = {k: float(v) for k, v in result.comparison.loc["model"].items()
                                 if isinstance(v, (int, float, np.integer, np.floating))}
    model.metadata["excluded_features"] = excluded
    model.metadata["leak_flags"] = flags
    model.metadata["dataset"] = config.name
    return TableTrainResult(result=result, config=config, columns=columns, frame=data,
                            dropped_rows=dropped, flags=flags, rejects=rejects)


def score_table(
    model: Any,
    frame: pd.DataFrame,
    *,
    dataset: DatasetConfig | None = None,
    scored_at: pd.Timestamp | None = None,
    reasons: bool | np.ndarray = True,
) -> pd.DataFrame:
    """Score raw rows of a CRM table (as exported: its own column names) with a loaded model.

    Parameters
    ----------
    model
        A :class:`training.model.LeadModel` trained by :func:`train_table` (it carries its
        dataset config), or a :class:`training.model.RulesOnly` / ``LeadModel`` of another
        kind together with ``dataset`` (a config with ``rules:`` for the rules-only case).
    frame
        Rows to score; extra columns are ignored, absent feature columns count as missing.
    scored_at
        Default: now (UTC, naive).
    reasons
        ``True``/``False`` or a boolean mask: which rows get reasons.

    Returns
    -------
    DataFrame
        ``features.schema.OUTPUT_COLUMNS``, one row per input row, in input order;
        ``contact_id`` is the id column's value (without one: the row's index label).
    """
    scored_at = scored_at if scored_at is not None else pd.Timestamp.now(tz="UTC").tz_localize(None)
    stored = getattr(model, "dataset", None)
    if stored:
        config = DatasetConfig.model_validate(stored)
        feats = table_features(frame, config, [table_column(c) for c in model.categorical],
                               [table_column(c) for c in model.numeric])
        return model.score(feats, scored_at=scored_at, reasons=reasons)
    if dataset is None:
        if getattr(model, "scorer", None) != "model":  # the registry had no model to give
            raise ValueError(f"no model to score the table with: {model.info().get('reason')} "
                             "(and no dataset config with rules was given)")
        raise ValueError("this model was not trained on a CRM table and no dataset config was "
                         "given: score the table with a model trained by `leadscore train --table`")
    rules = getattr(model, "rules", None)
    if not isinstance(rules, TableRuleScorer):
        if not (dataset.rules and dataset.rules.columns):
            raise ValueError("no table model to score with, and the dataset config has no rules: "
                             "train one with `leadscore train --table`")
        rules = TableRuleScorer(dataset.rules)
    cat = [c for c, r in rules.config.columns.items() if r.kind == "categorical"]
    num = [c for c, r in rules.config.columns.items() if r.kind == "numeric"]
    feats = table_features(frame, dataset, cat, num)
    out = rules.score_frame(feats, scored_at=scored_at, top_k=getattr(model, "top_k", 3))
    if reasons is not True:
        keep = np.zeros(len(out), dtype=bool) if reasons is False else np.asarray(reasons)
        out["reasons"] = [r if k else [] for r, k in zip(out["reasons"], keep)]
    return out


def summary_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """The headline figures of a comparison, with short column names (for a terminal)."""
    cols = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "ece": "ECE",
            "top_decile_conversion": "top 10% conv.", "top_decile_lift": "top 10% lift",
            "brier": "Brier"}
    out = comparison[[c for c in cols if c in comparison.columns]].rename(columns=cols)
    out.index.name = "scorer"
    return out


def group_reasons(reasons: Mapping[str, str]) -> dict[str, list[str]]:
    """``column -> reason`` as ``reason -> columns`` (for printing)."""
    out: dict[str, list[str]] = {}
    for col, why in reasons.items():
        out.setdefault(why, []).append(col)
    return out


def table_input_example(frame: pd.DataFrame, config: DatasetConfig, columns: Columns,
                        n: int = 3) -> pd.DataFrame:
    """A few rows in the raw table shape for the MLflow signature, made up column by column
    (no real row leaves the table): the i-th most frequent value of each categorical column,
    the quartiles of each numeric one, and made-up ids."""
    cleaned = table_features(frame, config, columns.categorical, columns.numeric)
    made_up: dict[str, Any] = {}  # column by column, then one frame (a wide table stays whole)
    for c in columns.categorical:
        common = cleaned[feature_name(c)].dropna().astype(str).value_counts(sort=True).index[:n].tolist()
        if common:
            made_up[c] = [common[i % len(common)] for i in range(n)]
    for c in columns.numeric:
        values = cleaned[feature_name(c)].astype("float64").dropna()
        if len(values):
            made_up[c] = np.quantile(values, np.linspace(0.25, 0.75, n)).astype("float64")
    out = pd.DataFrame({c: made_up[c] for c in columns.features if c in made_up}, index=range(n))
    if config.id_column:
        out.insert(0, config.id_column, [f"example-{i + 1}" for i in range(len(out))])
    return out


# ---------------------------------------------------------------------------
# CLI entry points (the only functions here that read or write files)
# ---------------------------------------------------------------------------


def _training_config(dataset: DatasetConfig, config_path: Path | None) -> TrainConfig:
    overrides = dict(dataset.training)
    extra = read_section(config_path, "training", dict)  # {} without a file; ConfigError is a ValueError
    params = {**overrides.get("lgbm_params", {}), **extra.get("lgbm_params", {})}
    overrides = {**overrides, **extra, **({"lgbm_params": params} if params else {})}
    return table_training_config(overrides)


def infer_file_config(table: Path, frame: pd.DataFrame, *, target: str | None = None,
                      positive: Scalar | None = None) -> DatasetConfig:
    """:func:`infer_config` for ``frame`` as :func:`read_table` read it from ``table``, with
    the separator and encoding it was read with written into the config (so that it reads the
    file again as it is)."""
    config = infer_config(frame, target=target, positive=positive, name=table_name(table),
                          separator=frame.attrs.get("separator"))
    return config.model_copy(update={"encoding": frame.attrs.get("encoding", config.encoding)})


def infer_config_command(table: Path, out: Path, target: str | None = None,
                         positive: str | None = None) -> DatasetConfig:
    """``leadscore infer-config``: infer a dataset config and write it to ``out``."""
    from training.cli import console

    frame = read_table(table)
    config = infer_file_config(table, frame, target=target, positive=positive)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_dataset_config(config, f"# Inferred from {table.name}: review before reuse.\n"))
    for col, why in {**config.exclude, **config.post_contact}.items():
        console.print(f"[yellow]left out[/] {col}: {why}")
    for col, why in config.notes.items():
        console.print(f"[cyan]note[/] {col}: {why}")
    console.print(f"inferred dataset config written to {out}")
    return config


def log_table_run(
    trained: TableTrainResult,
    frame: pd.DataFrame,
    *,
    source: str,
    gate_config: Any = None,
) -> dict[str, Any]:
    """Log a table training to MLflow (run, plots, model, the dataset config and the rule
    points), register it under ``config.registered_model`` and apply the gate.

    ``frame`` is the table as given to :func:`train_table`. The gate scores the current
    champion on this training's held-out rows, read raw from ``frame`` and cleaned by the
    champion's own dataset config (:func:`score_table`), and compares the paired figures. A
    champion of another dataset or target, or of the event log, cannot be scored there: the
    new version is then registered as challenger and the reason says why. Returns
    :func:`training.tracking.log_training`'s summary.
    """
    import mlflow
    from mlflow import MlflowClient

    from training.tracking import log_training

    config = trained.config
    name = config.name or "table"
    client = MlflowClient()
    gate_config = gate_config or table_training_config(config.training).gate
    result = trained.result
    kept = np.setdiff1d(np.arange(len(frame)), trained.rejects["row"].to_numpy(dtype="int64"))
    if len(kept) != len(trained.frame):
        raise ValueError(f"frame: {len(frame)} rows with {len(trained.rejects)} rejected do not make "
                         f"the {len(trained.frame)} training rows; give the table train_table read")
    test_raw = frame.iloc[kept[result.test_rows]].reset_index(drop=True)

    def champion_score(model: Any, rows: pd.DataFrame) -> np.ndarray:
        return score_table(model, rows, reasons=False)["probability"].to_numpy()

    summary = log_training(
        result, training_set=trained.frame.drop(columns=[ID]), source=source,
        input_example=table_input_example(frame, config, trained.columns),
        gate_config=gate_config, registered_name=config.registered_model,
        extra_params={"input": "table", "dataset": name, "rows": len(trained.frame),
                      "features": len(trained.columns.features),
                      "rules": "learned scorecard" if result.rules.learned else "config",
                      "rejected_rows": len(trained.rejects)},
        champion_input=test_raw, champion_score=champion_score,
    )
    with mlflow.start_run(run_id=summary["run_id"]):
        mlflow.log_text(dump_dataset_config(config), "dataset/dataset.yaml")
        mlflow.log_text(result.rules.to_yaml(), "dataset/rules.yaml")
        if trained.flags:
            mlflow.log_dict(trained.flags, "dataset/leak_flags.json")
        if len(trained.rejects):
            mlflow.log_text(trained.rejects.to_csv(index=False), "dataset/rejects.csv")
        mlflow.set_tags({"input": "table", "dataset": name})
    client.set_model_version_tag(config.registered_model, summary["version"], "dataset", name)
    client.set_model_version_tag(config.registered_model, summary["version"], "input", "table")
    return summary


def train_table_command(
    table: Path,
    dataset_config: Path | None,
    config: Path | None,
    tune: int,
    workdir: Path,
    target: str | None = None,
) -> dict[str, Any] | None:
    """``leadscore train --table FILE [--config dataset.yaml]``: read, (infer,) train, log,
    register and gate. ``--config`` names the dataset config when it is one (it may carry a
    ``training:`` section); with ``--dataset-config`` as well, ``--config`` is the training
    config. Without a dataset config one is inferred and written to ``workdir``."""
    import time

    from training.cli import console, fail, print_auc_intervals, print_frame
    from training.tracking import configure_tracking
    from training.train import NotEnoughData

    t0 = time.perf_counter()
    table = Path(table)
    if dataset_config is None and config is not None and is_dataset_config(config):
        dataset_config, config = config, None
    try:
        if dataset_config is not None:
            dataset = load_dataset_config(dataset_config)
            frame = read_table(table, dataset)
        else:
            frame = read_table(table)
            dataset = infer_file_config(table, frame, target=target)
            out = Path(workdir) / f"{table_name(table)}.dataset.yaml"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(dump_dataset_config(dataset, f"# Inferred from {table.name}: review before reuse.\n"))
            console.print(f"no dataset config given: inferred one, written to {out} (review it)")
        if target and dataset.target.column != target:
            fail(f"--target {target!r} differs from the dataset config's target.column "
                 f"{dataset.target.column!r}")
        tcfg = _training_config(dataset, config)
    except (DatasetConfigError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    dataset = dataset.model_copy(update={"name": dataset.name or table_name(table)})
    t_load = time.perf_counter() - t0
    try:
        with console.status("training"):
            trained = train_table(frame, dataset, train_config=tcfg, tune_trials=tune)
    except DatasetConfigError as e:
        fail(str(e))
    except NotEnoughData as e:
        console.print(f"[yellow]no model trained: {e}. Nothing was registered, so `leadscore "
                      "score --table` has no model for this table; a small table can lower "
                      "training.gate.min_train_positives in its dataset config.[/]")
        return None
    t_train = time.perf_counter() - t0 - t_load
    result = trained.result
    console.print(f"table: {len(frame):,} rows x {frame.shape[1]} columns; "
                  f"{len(trained.frame):,} labelled, {trained.frame[LABEL].mean():.2%} converted; "
                  f"{len(trained.columns.features)} features "
                  f"({len(trained.columns.categorical)} categorical, {len(trained.columns.numeric)} numeric)")
    for why, cols in group_reasons(result.excluded).items():
        console.print(f"[yellow]excluded[/] {', '.join(cols)}: {why}")
    for col, why in trained.flags.items():
        console.print(f"[red]probable leak[/] {col}: {why}")
    if len(trained.rejects):
        for why, n in reject_counts(trained.rejects).items():
            console.print(f"[yellow]rows left out[/] {n:,}: {why}")
    uri = configure_tracking(workdir)
    with console.status("logging to MLflow"):
        summary = log_table_run(trained, frame, source=str(table.resolve()), gate_config=tcfg.gate)
    elapsed = time.perf_counter() - t0
    print_frame(summary_table(result.comparison), f"held-out test: {result.split.description['test']}")
    print_auc_intervals(result.comparison)
    verdict = "[green]champion[/]" if summary["promoted"] else "[yellow]challenger[/]"
    console.print(f"registered {dataset.registered_model} version {summary['version']} as {verdict}: "
                  f"{summary['reason']}")
    console.print(f"run {summary['run_id']} in {uri}; {elapsed:.1f} s (load {t_load:.1f} s, "
                  f"train+evaluate {t_train:.1f} s, log {elapsed - t_load - t_train:.1f} s)")
    return {**summary, "seconds": elapsed, "comparison": result.comparison}
