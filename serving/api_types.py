"""Request and response types of the HTTP scoring service, built from ``features/schema.py``.

A request for the event model is ``{"leads": [{"contact": {...}, "events": [...], "stages":
[...]}, ...], "as_of": optional, "reasons": "all" | "top" | "none"}``. The contact carries the columns of
:data:`features.schema.CONTACTS`, events those of :data:`~features.schema.EVENTS` and stage
changes those of :data:`~features.schema.STAGE_CHANGES` (without ``contact_id``: they belong
to their lead). Types, vocabularies and limits are enforced by pydantic in one pass over the
raw JSON (:data:`SCORE_REQUEST`); every error names its field (``leads.0.events.3.ts``).

Request types are ``TypedDict`` s (validated into plain dicts: half the cost of model
instances for thousands of events); response types are pydantic models, used for the
OpenAPI document and by clients and tests (the service writes the same JSON directly).

:func:`to_columns` turns a validated request into the column arrays the feature kernels
take (:func:`features.build.lead_feature_columns`). :func:`decode_columns` does both at once
with msgspec: the body decoded into typed structs in C (the same types, limits
and vocabularies as :data:`SCORE_REQUEST`), the timestamps checked against :data:`TS_PATTERN`
column by column; a body it does not take goes through pydantic as above, which accepts
exactly what it accepted before and names the fields of what it rejects. Bodies above
:data:`LARGE_BODY_BYTES` go through :func:`decode_large` (:func:`validate_table_large` for
table rows): the same results, one lead or row per decoder call, so that the service's
event loop gets the GIL back between calls. A lead created after ``as_of`` is rejected,
naming its ``created_at`` (the nightly batch leaves it out: ``created_after_as_of``).

A model trained on a CRM export (``leadscore train --table``) takes the table's own rows
instead: ``{"rows": [{column: value, ...}, ...], "reasons": ...}`` (:data:`TABLE_REQUEST`).
Cells are text, numbers, booleans or null, as exported; :class:`TableSpec` checks the columns
against the model (unknown and missing columns are named) and :meth:`TableSpec.frame` builds
the DataFrame that :func:`training.crm.score_table` cleans and scores.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter, methodcaller
from typing import Annotated, Any, Literal, NotRequired, Optional, Required

import msgspec
import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from typing_extensions import TypedDict

from features import schema
from features.build import encode_stage_records
from features.engagement import EventArrays, encode_event_records
from features.lifecycle import StageArrays

# -- limits ------------------------------------------------------------------------------
MAX_LEADS = 1000
MAX_EVENTS_PER_LEAD = 2000
MAX_STAGES_PER_LEAD = 200
MAX_TEXT = 512  # characters of any free-text field
MAX_ID = 256
MAX_BODY_BYTES = 32 * 1024 * 1024  # 1,000 leads x 2,000 events would need far more
MAX_COLUMNS = 1000  # columns of one table row
MAX_CELL = 4096  # characters of one table cell
#: Timestamps outside this range are rejected (the kernels work in int64 nanoseconds).
MIN_TS = dt.datetime(1900, 1, 1)
MAX_TS = dt.datetime(2200, 1, 1)

#: Why the nightly batch leaves out a lead that a request may still score (the reasons of
#: :func:`serving.batch.eligibility`; a lead created after ``as_of`` is rejected instead).
NOT_ELIGIBLE_REASONS = ("converted", "disqualified")

ReasonsMode = Literal["all", "top", "none"]
"""Which leads get reasons: every lead, leads in bands A and B (as ``leadscore score
--reasons top``), or none. Reasons cost one ``pred_contrib`` per lead (see BENCHMARKS.md)."""

#: ISO 8601 / RFC 3339 timestamps: a date, optionally a time (``T`` or a space), optionally a
#: UTC offset (``Z``, ``+02:00``, ``-0500``); without an offset the time is UTC.
TS_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
    r"(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?)?$"
)
_Timestamp = Annotated[str, Field(pattern=TS_PATTERN, json_schema_extra={"format": "date-time"},
                                  examples=["2026-03-01T09:30:00Z"])]
_Text = Annotated[str, Field(max_length=MAX_TEXT)]
_Id = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
_Number = Annotated[float, Field(allow_inf_nan=False)]

_KIND_TYPES: dict[str, Any] = {
    "id": _Id,
    "str": _Text,
    "float": _Number,
    "int": int,
    "bool": bool,
    "timestamp": _Timestamp,
}


def _fields(table: schema.TableSchema, *, drop: tuple[str, ...] = (),
            override: dict[str, Any] | None = None) -> dict[str, Any]:
    """TypedDict fields of a table: required columns Required, optional ones NotRequired
    and nullable."""
    override = override or {}
    out: dict[str, Any] = {}
    for name, kind in table.columns.items():
        if name in drop:
            continue
        tp = override.get(name, _KIND_TYPES[kind])
        out[name] = Required[tp] if name in table.required else NotRequired[Optional[tp]]
    return out


def _typed_dict(name: str, fields: dict[str, Any], doc: str) -> type:
    td = TypedDict(name, fields)  # type: ignore[operator]
    td.__doc__ = doc
    td.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return td


Contact = _typed_dict(
    "Contact",
    _fields(schema.CONTACTS) | {
        "created_at": NotRequired[Optional[_Timestamp]],  # missing: created at as_of
    },
    "A contact's fields (features.schema.CONTACTS); only contact_id is required.",
)
Event = _typed_dict(
    "Event",
    _fields(schema.EVENTS, drop=("contact_id",),
            override={"event_type": Literal[schema.ENGAGEMENT_TYPES]}),  # type: ignore[valid-type]
    "One digital footprint of the lead (features.schema.EVENTS, without contact_id).",
)
StageChange = _typed_dict(
    "StageChange",
    _fields(schema.STAGE_CHANGES, drop=("contact_id",),
            override={"stage": Literal[schema.STAGES]}),  # type: ignore[valid-type]
    "One lifecycle stage change of the lead (features.schema.STAGE_CHANGES).",
)
Lead = _typed_dict(
    "Lead",
    {
        "contact": Required[Contact],
        "events": NotRequired[Annotated[list[Event], Field(max_length=MAX_EVENTS_PER_LEAD)]],
        "stages": NotRequired[Annotated[list[StageChange], Field(max_length=MAX_STAGES_PER_LEAD)]],
    },
    "A lead to score: its contact fields, its recent events and optionally its stage changes.",
)
ScoreRequest = _typed_dict(
    "ScoreRequest",
    {
        "leads": Required[Annotated[list[Lead], Field(min_length=1, max_length=MAX_LEADS)]],
        "as_of": NotRequired[Optional[_Timestamp]],
        "reasons": NotRequired[ReasonsMode],
    },
    "1 to 1,000 leads, scored as of `as_of` (default: now, UTC); naive timestamps are UTC.",
)

#: Validates raw JSON bytes into a :data:`ScoreRequest` dict in one pass.
SCORE_REQUEST: TypeAdapter = TypeAdapter(ScoreRequest)

def _cell(value: Any) -> Any:
    """A table cell: text (at most :data:`MAX_CELL` characters), a finite number, a boolean
    or null."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_CELL:
            raise ValueError(f"text longer than {MAX_CELL} characters")
        return value
    raise ValueError("expected text, a number, a boolean or null")


_Cell = Annotated[Any, AfterValidator(_cell), WithJsonSchema({"anyOf": [
    {"type": "string", "maxLength": MAX_CELL}, {"type": "number"}, {"type": "boolean"},
    {"type": "null"}]})]
_ColumnName = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
TableRow = Annotated[
    dict[_ColumnName, _Cell],
    Field(min_length=1, max_length=MAX_COLUMNS,
          description="One row of the CRM export, by the table's own column names (GET /model "
                      "lists them): text, numbers or booleans as exported, null when empty.",
          examples=[{"Lead Key": "L-00042", "Source Channel": "Webinar", "Pages Seen": "5",
                     "Minutes On Site": "12,5", "Industry Sector": None}]),
]
TableScoreRequest = _typed_dict(
    "TableScoreRequest",
    {
        "rows": Required[Annotated[list[TableRow], Field(min_length=1, max_length=MAX_LEADS)]],
        "reasons": NotRequired[ReasonsMode],
    },
    "1 to 1,000 rows of a CRM export, for a model trained on that table (`leadscore train "
    "--table`; GET /model says `input: table`). Every row carries the id column (when the "
    "dataset names one) and every feature column (null when empty); other columns of the "
    "table are ignored, columns the table never had are rejected.",
)

#: Validates raw JSON bytes into a :data:`TableScoreRequest` dict in one pass.
TABLE_REQUEST: TypeAdapter = TypeAdapter(TableScoreRequest)
#: One lead, one table row: :func:`validate_large` validates big bodies item by item.
_LEAD_ADAPTER: TypeAdapter = TypeAdapter(Lead)
_ROW_ADAPTER: TypeAdapter = TypeAdapter(TableRow)


# -- responses -----------------------------------------------------------------------------
class Reason(BaseModel):
    """One factor behind a score: a readable feature name, the lead's value, its effect
    (log-odds for the model, points for the rules)."""

    feature: str
    value: str | float | int | None
    effect: float


class LeadScore(BaseModel):
    """The design brief's outputs for one lead, and ``not_eligible`` when the nightly batch
    would not score it."""

    contact_id: str
    probability: float = Field(ge=0, le=1)
    score: int = Field(ge=0, le=100)
    band: Literal[schema.BANDS]  # type: ignore[valid-type]
    reasons: list[Reason]
    scorer: Literal["model", "rules"]
    model_name: str
    model_version: str
    scored_at: str
    not_eligible: Literal[NOT_ELIGIBLE_REASONS] | None = Field(  # type: ignore[valid-type]
        None, description="Why the nightly batch would not score this lead (its stage at the "
                          "as-of date is opportunity or later: converted, or disqualified); "
                          "absent when the lead is eligible. Its score is computed all the same.")


class ScoreResponse(BaseModel):
    """Scores in request order, and the as-of date they were computed at (for table rows:
    the scoring time, the rows describing the leads as they are)."""

    scores: list[LeadScore]
    as_of: str


class ErrorDetail(BaseModel):
    field: str
    message: str
    type: str


class ErrorResponse(BaseModel):
    """A 4xx answer: what is wrong and which fields (dotted paths into the body)."""

    error: str
    detail: list[ErrorDetail] = []


class ModelInfo(BaseModel):
    """Which scorer answers: ``GET /model``."""

    model_config = ConfigDict(extra="allow")

    scorer: Literal["model", "rules"]
    name: str
    version: str
    input: Literal["events", "table"] = Field(
        "events", description='the request POST /score takes: "events" {"leads": [...]}, '
                              '"table" {"rows": [...]} with the columns below')
    band_thresholds: dict[str, Any]
    trained_at: str | None = None
    metrics: dict[str, Any] = {}
    reason: str | None = None
    loaded_at: str | None = None
    dataset: str | None = Field(None, description="table models: the dataset's name")
    id_column: str | None = Field(None, description="table models: the id column of each row")
    columns: list[str] | None = Field(None, description="table models: the feature columns "
                                                        "each row carries")
    champion_not_loaded: str | None = Field(
        None, description="a champion version that did not load (the scorer above answers)")
    reload_error: str | None = Field(
        None, description="POST /reload: why the champion was not loaded (kind of failure "
                          "only); the scorer above keeps answering")


# -- request -> feature inputs ---------------------------------------------------------------
class RequestError(ValueError):
    """Valid JSON of the right shape whose values cannot be used (field paths in ``errors``)."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass
class LeadColumns:
    """A request as the feature kernels take it."""

    contact_ids: list[str]
    contacts: dict[str, np.ndarray]  # contact column -> object array (None when missing)
    created_ns: np.ndarray
    events: EventArrays
    stages: StageArrays
    as_of: dt.datetime  # naive UTC


_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
_MIN_US = (MIN_TS - _EPOCH) // _US
_MAX_US = (MAX_TS - _EPOCH) // _US
_CONTACT_FIELDS = tuple(c for c in schema.CONTACTS.columns if c not in ("contact_id", "created_at"))
#: Without ``as_of`` (scored as of now), a ``created_at`` at most this far in the future is
#: taken as created now: the CRM's clock may run a little ahead of the service's.
CLOCK_SKEW = dt.timedelta(minutes=5)
_SKEW_US = CLOCK_SKEW // _US


def _us(d: dt.datetime) -> int:
    """Microseconds since the epoch, UTC (naive timestamps are UTC)."""
    return (d - (_EPOCH if d.tzinfo is None else _EPOCH_UTC)) // _US


def naive_utc(d: dt.datetime) -> dt.datetime:
    return d if d.tzinfo is None else d.astimezone(dt.UTC).replace(tzinfo=None)


def _has_offset(value: str) -> bool:
    return value[-1] == "Z" or "+" in value or "-" in value[10:]


def _one_us(value: str) -> int | None:
    """One validated timestamp string as UTC microseconds; None when it is no real date."""
    try:
        return _us(dt.datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        return None


_FEW = 4  # up to this many timestamps, Python's parser beats numpy's call overhead


def timestamps_us(values: list[str]) -> tuple[np.ndarray, list[int]]:
    """UTC microseconds of :data:`TS_PATTERN` strings, and the positions of those that are
    not real dates (30 February, ...). Offset-free strings are parsed by numpy in one call."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64), []
    if n > _FEW:
        joined = "|".join(values)
        if "Z" not in joined and "+" not in joined and joined.count("-") == 2 * n:
            try:
                return np.array(values, dtype="datetime64[us]").view(np.int64), []
            except ValueError:
                pass
    parsed = [_one_us(v) for v in values]
    bad = [i for i, v in enumerate(parsed) if v is None]
    return np.array([0 if v is None else v for v in parsed], dtype=np.int64), bad


def _check(us: np.ndarray, bad: list[int], where) -> None:
    """RequestError naming the timestamps that are no dates or are out of range."""
    if not bad and (not len(us) or (us.min() >= _MIN_US and us.max() <= _MAX_US)):
        return
    errors = [{"field": where(i), "type": "timestamp_parsing", "message": "not a valid date"}
              for i in bad[:10]]
    out = np.flatnonzero((us < _MIN_US) | (us > _MAX_US))
    errors += [{"field": where(int(i)), "type": "timestamp_range",
                "message": f"timestamp outside {MIN_TS.date()}..{MAX_TS.date()}"}
               for i in out[:10] if int(i) not in bad]
    if errors:
        raise RequestError(errors)


def _one_timestamp(value: str, field: str) -> int:
    """UTC microseconds of one timestamp (RequestError naming ``field`` when unusable)."""
    us = _one_us(value)
    if us is not None and _MIN_US <= us <= _MAX_US:
        return us
    _check(np.array([us or 0]), [0] if us is None else [], lambda i: field)
    raise AssertionError("unreachable")  # _check raised


def _created_by_as_of(created_us: np.ndarray, as_of_us: int, as_of_given: bool,
                      where: Any) -> np.ndarray:
    """``created_us`` when every lead exists at ``as_of`` (a creation up to :data:`CLOCK_SKEW`
    after an omitted ``as_of`` counts as at ``as_of``); else a RequestError naming
    ``where(i)`` for the leads created later. The nightly batch leaves such leads out
    (``created_after_as_of``)."""
    if not as_of_given:
        created_us = np.where(created_us - as_of_us <= _SKEW_US,
                              np.minimum(created_us, as_of_us), created_us)
    late = np.flatnonzero(created_us > as_of_us)
    if not len(late):
        return created_us
    raise RequestError([{"field": where(int(i)), "type": "created_after_as_of",
                         "message": "created after as_of (now when as_of is omitted): the lead "
                                    "did not exist at the scoring date"} for i in late[:10]])


def _created_field(i: int) -> str:
    return f"leads.{i}.contact.created_at"


_TS = itemgetter("ts")
_EVENT_TYPE = itemgetter("event_type")
_STAGE = itemgetter("stage")
_CAMPAIGN = methodcaller("get", "campaign_id")
_EMPTY_STAGES: list[Any] = []


def to_columns(request: dict[str, Any], *, now: dt.datetime) -> LeadColumns:
    """Columns of a validated :data:`ScoreRequest` (``now``: the default as-of, naive UTC).

    Raises
    ------
    RequestError
        A timestamp that is no date (30 February) or lies outside :data:`MIN_TS`..:data:`MAX_TS`.
    """
    leads = request["leads"]
    n = len(leads)
    as_of_value = request.get("as_of")
    as_of_us = _us(now) if as_of_value is None else _one_timestamp(as_of_value, "as_of")
    contacts = [lead["contact"] for lead in leads]
    ids = [c["contact_id"] for c in contacts]
    block = np.empty((len(_CONTACT_FIELDS), n), dtype=object)  # one allocation, row views
    if n == 1:
        c = contacts[0]
        block[:, 0] = [c.get(f) for f in _CONTACT_FIELDS]
        created = c.get("created_at")
        created_one = as_of_us if created is None else _one_timestamp(created, _created_field(0))
        late = created_one > as_of_us
        created_us = np.array([created_one], dtype=np.int64)
        evs = leads[0].get("events") or _EMPTY_STAGES
        sts = leads[0].get("stages") or _EMPTY_STAGES
        ev_counts, st_counts = [len(evs)], [len(sts)]
    else:
        for j, f in enumerate(_CONTACT_FIELDS):
            block[j] = [c.get(f) for c in contacts]
        created = [c.get("created_at") for c in contacts]
        has_created = [i for i, v in enumerate(created) if v is not None]
        created_us = np.full(n, as_of_us, dtype=np.int64)
        if has_created:
            us, bad = timestamps_us([created[i] for i in has_created])
            _check(us, bad, lambda k: _created_field(has_created[k]))
            created_us[has_created] = us
        late = bool(has_created) and created_us.max() > as_of_us
        per_lead = [lead.get("events") or _EMPTY_STAGES for lead in leads]
        ev_counts = [len(e) for e in per_lead]
        evs = [e for lead_events in per_lead for e in lead_events]
        per_lead = [lead.get("stages") or _EMPTY_STAGES for lead in leads]
        st_counts = [len(s) for s in per_lead]
        sts = [s for lead_stages in per_lead for s in lead_stages]
    if late:
        created_us = _created_by_as_of(created_us, as_of_us, as_of_value is not None, _created_field)
    ev_us, bad = timestamps_us(list(map(_TS, evs)))
    _check(ev_us, bad, lambda k: _nested(ev_counts, k, "events"))
    st_us, bad = timestamps_us(list(map(_TS, sts)))
    _check(st_us, bad, lambda k: _nested(st_counts, k, "stages"))
    return _assemble(ids, block, created_us, as_of_us,
                     ev_counts, ev_us, list(map(_EVENT_TYPE, evs)), list(map(_CAMPAIGN, evs)),
                     st_counts, st_us, list(map(_STAGE, sts)))


def _assemble(ids: list[str], block: np.ndarray, created_us: np.ndarray, as_of_us: int,
              ev_counts: list[int], ev_us: np.ndarray, ev_types: list[str], ev_campaign: list[Any],
              st_counts: list[int], st_us: np.ndarray, st_stages: list[str]) -> LeadColumns:
    """The :class:`LeadColumns` of checked request values (both decoders end here)."""
    n = len(ids)
    if ev_campaign.count(None) == len(ev_campaign):
        ev_campaign = None
    ev_rows = np.zeros(len(ev_us), dtype=np.int64) if n == 1 else np.repeat(np.arange(n), ev_counts)
    st_rows = np.zeros(len(st_us), dtype=np.int64) if n == 1 else np.repeat(np.arange(n), st_counts)
    events = encode_event_records(ev_rows, ev_us * 1000, ev_types, ev_campaign, n)
    stages = encode_stage_records(st_rows, st_us * 1000, st_stages, n)
    as_of = _EPOCH + dt.timedelta(microseconds=as_of_us)
    return LeadColumns(ids, dict(zip(_CONTACT_FIELDS, block)), created_us * 1000, events, stages, as_of)


# -- the fast decoder (msgspec) -----------------------------------------------------------------
# The same request types as the TypedDicts above, as msgspec structs built from the same
# schema tables, decoded straight from the body in C. Timestamps are plain strings here and
# checked after decoding, a column at a time (:func:`_plain_us`): msgspec would run Python's
# ``re`` once per string, four times the cost of the whole decode. Whatever this path does not
# take (a type or a limit msgspec rejects, a timestamp not of the plain shapes, a date that does
# not exist or lies out of range, msgspec missing) goes to pydantic and :func:`to_columns`: the
# accepted requests are the same and every rejection is pydantic's (tested).

class _NotPlain(Exception):
    """A request the fast decoder leaves to pydantic."""


_TS_RE = re.compile(TS_PATTERN[:-1] + r"\Z")  # "$" would also match before a final newline


def _shape(template: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Lowest and highest byte allowed at each position of a fixed-width timestamp shape
    (``d`` a digit, ``T`` the date-time separator, anything else itself) followed by the
    ``|`` that joins the values, and whether the shape ends in ``Z``."""
    lo = [0x30 if ch == "d" else 0x20 if ch == "T" else ord(ch) for ch in template + "|"]
    hi = [0x39 if ch == "d" else 0x54 if ch == "T" else ord(ch) for ch in template + "|"]
    return np.array(lo, dtype=np.uint8), np.array(hi, dtype=np.uint8), template.endswith("Z")


#: The shapes of TS_PATTERN checked column-wise, by width: date; date, hours and minutes;
#: with seconds; either of the last two in UTC ("Z"). Other shapes are checked one by one.
_SHAPES = {len(t): _shape(t) for t in ("dddd-dd-dd", "dddd-dd-ddTdd:dd", "dddd-dd-ddTdd:dd:dd",
                                       "dddd-dd-ddTdd:ddZ", "dddd-dd-ddTdd:dd:ddZ")}
_SEP = 10  # position of the date-time separator: "T" or " "


def _ts_one(value: str) -> int:
    """UTC microseconds of one timestamp the pattern takes, in range; else _NotPlain."""
    if _TS_RE.match(value) is None:
        raise _NotPlain
    us = _one_us(value)
    if us is None or not _MIN_US <= us <= _MAX_US:
        raise _NotPlain
    return us


def _each_us(values: list[str]) -> np.ndarray:
    return np.array([_ts_one(v) for v in values], dtype=np.int64).reshape(len(values))


def _plain_us(values: list[str]) -> np.ndarray:
    """UTC microseconds of timestamp strings, checked against :data:`TS_PATTERN` and the
    range; _NotPlain for anything else (pydantic then names it).

    Values all of one fixed-width shape of :data:`_SHAPES` are joined by ``|`` into one byte
    matrix (a value of another length puts a ``|`` out of its column) and checked a column at
    a time; their fields are read by calendar arithmetic (:func:`_civil_us`) or, for a few
    values, numpy's parser. Other values are checked and parsed one by one.
    """
    n = len(values)
    shape = _SHAPES.get(len(values[0])) if n > _FEW else None
    if shape is None:
        return _each_us(values)
    width = len(values[0])
    try:
        raw = ("|".join(values) + "|").encode("ascii")
    except UnicodeEncodeError:
        return _each_us(values)
    if len(raw) != n * (width + 1):
        return _each_us(values)
    lo, hi, utc = shape
    c = np.frombuffer(raw, dtype=np.uint8).reshape(n, width + 1)
    if n >= _ARITHMETIC:  # column-major from here: one contiguous row per character position
        c = np.ascontiguousarray(c.T)
        bad = ((c < lo[:, None]) | (c > hi[:, None])).any()
        sep = c[_SEP] if width > _SEP else None
    else:
        bad = ((c < lo) | (c > hi)).any()
        sep = c[:, _SEP] if width > _SEP else None
    if bad:
        return _each_us(values)
    if sep is not None and not (sep == 0x54).all() and not ((sep == 0x54) | (sep == 0x20)).all():
        raise _NotPlain
    if n >= _ARITHMETIC:
        us = _civil_us(c, width - utc)
    else:
        try:  # naive is UTC: the same instants without the "Z"
            us = np.array([v[:-1] for v in values] if utc else values,
                          dtype="datetime64[us]").view(np.int64)
        except ValueError:  # month 13, 30 February, ...
            raise _NotPlain from None
    if us.min() < _MIN_US or us.max() > _MAX_US:
        raise _NotPlain
    return us


_ARITHMETIC = 128  # from this many timestamps on, arithmetic beats numpy's string parser
_FIRST_YEAR, _LAST_YEAR = MIN_TS.year, MAX_TS.year
_YEARS = np.arange(_FIRST_YEAR, _LAST_YEAR + 1)
_LEAP = ((_YEARS % 4 == 0) & (_YEARS % 100 != 0)) | (_YEARS % 400 == 0)
#: days from 1970-01-01 to 1 January of each year in range, and to the first of each month
_YEAR_DAYS = (_YEARS - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
_MONTH_LENGTHS = np.array([[0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31],
                           [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]], dtype=np.int64)
_MONTH_DAYS = np.concatenate([np.zeros((2, 1), dtype=np.int64),
                              np.cumsum(_MONTH_LENGTHS, axis=1)[:, :-1]], axis=1)
_MONTH_LENGTHS_FLAT, _MONTH_DAYS_FLAT = _MONTH_LENGTHS.ravel(), _MONTH_DAYS.ravel()


def _civil_us(c: np.ndarray, width: int) -> np.ndarray:
    """Microseconds since the epoch of the columns of a checked, column-major byte matrix
    (digits where digits belong; ``width`` characters of date and time), proleptic Gregorian
    as numpy and ``datetime``; _NotPlain for a field out of range (month 13, 30 February,
    hour 24) or a year outside MIN_TS..MAX_TS."""
    x = c[:width].astype(np.int64) - 0x30

    def two(i: int) -> np.ndarray:
        return x[i] * 10 + x[i + 1]

    year = x[0] * 1000 + x[1] * 100 + two(2)
    month, day = two(5), two(8)
    if year.min() < _FIRST_YEAR or year.max() > _LAST_YEAR or month.min() < 1 or month.max() > 12 \
            or day.min() < 1:
        raise _NotPlain
    k = year - _FIRST_YEAR
    key = _LEAP.take(k) * 13 + month  # (leap, month) in the flat month tables
    if (day > _MONTH_LENGTHS_FLAT.take(key)).any():
        raise _NotPlain
    us = (_YEAR_DAYS.take(k) + _MONTH_DAYS_FLAT.take(key) + day - 1) * 86_400_000_000
    if width >= 16:
        hh, mm = two(11), two(14)
        ss = two(17) if width >= 19 else 0
        if hh.max() > 23 or mm.max() > 59 or (width >= 19 and ss.max() > 59):
            raise _NotPlain
        us += ((hh * 60 + mm) * 60 + ss) * 1_000_000
    return us


def _fast_type(kind: str) -> Any:
    import msgspec as ms

    return {
        "id": Annotated[str, ms.Meta(min_length=1, max_length=MAX_ID)],
        "str": Annotated[str, ms.Meta(max_length=MAX_TEXT)],
        # finite: bounds reject the infinities (pydantic's allow_inf_nan=False)
        "float": Annotated[float, ms.Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)],
        "int": int,
        "bool": bool,
        "timestamp": str,  # checked by _plain_us
    }[kind]


def _fast_struct(name: str, table: schema.TableSchema, *, drop: tuple[str, ...] = (),
                 override: dict[str, Any] | None = None, optional: tuple[str, ...] = ()) -> type:
    """A msgspec struct of a table's columns, as :func:`_fields` types them (``optional``:
    required columns that a request may leave out or null)."""
    import msgspec as ms

    override = override or {}
    fields: list[Any] = []
    for col, kind in table.columns.items():
        if col in drop:
            continue
        tp = override.get(col, _fast_type(kind))
        if col in table.required and col not in optional:
            fields.append((col, tp))
        else:
            fields.append((col, Optional[tp], None))
    required = [f for f in fields if len(f) == 2]
    return ms.defstruct(name, required + [f for f in fields if len(f) == 3],
                        forbid_unknown_fields=True, gc=False)


def _fast_decoders() -> tuple[Any, Any, Any]:
    """The msgspec decoders of a :data:`ScoreRequest`, of one lead, and of a request whose
    leads are left undecoded (``msgspec.Raw``, for :func:`decode_large`)."""
    ms = msgspec
    contact = _fast_struct("Contact", schema.CONTACTS, optional=("created_at",))
    event = _fast_struct("Event", schema.EVENTS, drop=("contact_id",),
                         override={"event_type": Literal[schema.ENGAGEMENT_TYPES]})  # type: ignore[valid-type]
    stage = _fast_struct("StageChange", schema.STAGE_CHANGES, drop=("contact_id",),
                         override={"stage": Literal[schema.STAGES]})  # type: ignore[valid-type]
    lead = ms.defstruct("Lead", [
        ("contact", contact),
        ("events", Annotated[list[event], ms.Meta(max_length=MAX_EVENTS_PER_LEAD)], []),
        ("stages", Annotated[list[stage], ms.Meta(max_length=MAX_STAGES_PER_LEAD)], []),
    ], forbid_unknown_fields=True, gc=False)
    request = ms.defstruct("ScoreRequest", [
        ("leads", Annotated[list[lead], ms.Meta(min_length=1, max_length=MAX_LEADS)]),
        ("as_of", Optional[str], None),
        ("reasons", ReasonsMode, "all"),
    ], forbid_unknown_fields=True, gc=False)
    order = [f for f in contact.__struct_fields__ if f not in ("contact_id", "created_at")]
    assert order == list(_CONTACT_FIELDS), order  # astuple() below relies on this order
    assert contact.__struct_fields__[:2] == ("contact_id", "created_at")
    envelope = ms.defstruct("ScoreRequestLeadsRaw", [
        ("leads", Annotated[list[ms.Raw], ms.Meta(min_length=1, max_length=MAX_LEADS)]),
        ("as_of", str | None, None),
        ("reasons", ReasonsMode, "all"),
    ], forbid_unknown_fields=True, gc=False)
    return ms.json.Decoder(request), ms.json.Decoder(lead), ms.json.Decoder(envelope)


_DECODER, _LEAD_DECODER, _ENVELOPE_DECODER = _fast_decoders()
_A_TS = attrgetter("ts")
_A_EVENT_TYPE = attrgetter("event_type")
_A_CAMPAIGN = attrgetter("campaign_id")
_A_STAGE = attrgetter("stage")
_A_CONTACT = attrgetter("contact")
_A_EVENTS = attrgetter("events")
_A_STAGES = attrgetter("stages")


def decode_request(body: bytes) -> Any | None:
    """A raw :data:`ScoreRequest` body decoded and type-checked by msgspec (a struct with
    ``leads``, ``as_of`` and ``reasons``); None for any body it leaves to
    :data:`SCORE_REQUEST`, which names what is wrong."""
    try:
        return _DECODER.decode(body)
    except Exception:  # DecodeError, ValidationError, UnicodeDecodeError: pydantic names it
        return None


def request_columns(request: Any, *, now: dt.datetime) -> tuple[LeadColumns, str] | None:
    """The columns and reasons mode of a request :func:`decode_request` gave; None when a
    timestamp is left to :data:`SCORE_REQUEST` and :func:`to_columns` (unusual shapes).

    Raises
    ------
    RequestError
        A lead created after ``as_of``, as :func:`to_columns` names it.
    """
    try:
        return _struct_columns(request, now), request.reasons
    except _NotPlain:
        return None


def decode_columns(body: bytes, *, now: dt.datetime) -> tuple[LeadColumns, str] | None:
    """:func:`request_columns` of :func:`decode_request`: the columns and reasons mode of a
    raw :data:`ScoreRequest` body, decoded and checked in one pass; None for any body left to
    :data:`SCORE_REQUEST` and :func:`to_columns` (invalid ones, unusual timestamp shapes).

    Raises
    ------
    RequestError
        A lead created after ``as_of``, as :func:`to_columns` names it.
    """
    request = decode_request(body)
    return None if request is None else request_columns(request, now=now)


def merged_columns(requests: list[Any], *, now: dt.datetime) -> LeadColumns | None:
    """One :class:`LeadColumns` of the leads of several requests from :func:`decode_request`
    that share ``as_of`` (the first request's), in request order: what the service scores
    in one go. None when any of them must be answered on its own (a timestamp left to
    pydantic, or a lead created after ``as_of``: its own error names it)."""
    leads = [lead for request in requests for lead in request.leads]
    try:
        return _struct_columns(_Chunked(leads, requests[0].as_of, requests[0].reasons), now)
    except (_NotPlain, RequestError):
        return None


# -- large bodies: a lead (or row) at a time ---------------------------------------------------
# msgspec and pydantic hold the GIL for the whole of one decode: a 30 MB body validated in one
# call stalls the event loop for up to a second even from a worker thread. Above
# LARGE_BODY_BYTES the service decodes in a worker thread and one lead or row per call: the
# thread gives the GIL back between calls (the switch interval) and the loop answers meanwhile.
# The accepted bodies, their columns and the errors reported are those of the one-call path
# (tested).

#: Bodies larger than this are decoded a lead or row at a time, in a worker thread. Below it,
#: one inline decode stalls the loop ~25 ms at most for a body msgspec takes (~3.4 ms for
#: 100 leads x 50 events, 563 KB); a body left to pydantic (timestamps with offsets, bodies
#: answered by a 4xx) is validated inline too, at about a second per 30 MB: ~130 ms at 4 MB.
#: A 256 KB threshold sent common requests through the thread and cost a third of their
#: throughput (BENCHMARKS.md, HTTP service).
LARGE_BODY_BYTES = 4 * 1024 * 1024
#: At most this many errors are reported for a body (the rest of it is not validated).
MAX_ERRORS = 20


class BodyInvalid(ValueError):
    """Pydantic's errors of a body validated a lead or row at a time (as
    ``ValidationError.errors(include_url=False, include_context=False, include_input=False)``
    gives them: ``loc`` into the whole body, ``msg``, ``type``; never an input value)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self._errors = errors

    def errors(self, **_: Any) -> list[dict[str, Any]]:
        return self._errors


@dataclass
class _Chunked:
    """A request decoded a lead at a time (what :func:`_struct_columns` reads)."""

    leads: list[Any]
    as_of: str | None
    reasons: str


def decode_large(body: bytes, *, now: dt.datetime) -> tuple[LeadColumns, str]:
    """The columns and reasons mode of a :data:`ScoreRequest` body, one lead per decoder call
    (msgspec, else pydantic): the result of :func:`decode_columns`, or of
    :data:`SCORE_REQUEST` and :func:`to_columns`, for bodies above :data:`LARGE_BODY_BYTES`.

    Raises
    ------
    pydantic.ValidationError, BodyInvalid
        The body is not a valid request (the first :data:`MAX_ERRORS` errors).
    RequestError
        As :func:`to_columns`.
    """
    try:
        envelope = _ENVELOPE_DECODER.decode(body)
        leads = [_LEAD_DECODER.decode(raw) for raw in envelope.leads]
    except Exception:  # as decode_columns: pydantic names what is wrong
        envelope = None
    if envelope is not None:
        try:
            return _struct_columns(_Chunked(leads, envelope.as_of, envelope.reasons), now), \
                envelope.reasons
        except _NotPlain:
            pass
    payload = validate_large(body, SCORE_REQUEST, "leads", _LEAD_ADAPTER,
                             b'{"contact":{"contact_id":"x"}}')
    return to_columns(payload, now=now), payload.get("reasons", "all")


def validate_table_large(body: bytes) -> dict[str, Any]:
    """:data:`TABLE_REQUEST` validation one row per call (bodies above
    :data:`LARGE_BODY_BYTES`): the same payload, or the same errors (see :func:`validate_large`)."""
    return validate_large(body, TABLE_REQUEST, "rows", _ROW_ADAPTER, b'{"x":null}')


_TOP_DECODER = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_LIST_DECODER = msgspec.json.Decoder(list[msgspec.Raw])


def validate_large(body: bytes, whole: TypeAdapter, key: str, item: TypeAdapter,
                   placeholder: bytes) -> dict[str, Any]:
    """``whole.validate_json(body)`` with the list ``body[key]`` validated one item per call
    (``item``: the adapter of one item; ``placeholder``: a valid item, standing for the list
    while the rest of the body is validated). The same payload, or the same first
    :data:`MAX_ERRORS` errors (list errors first, then the other fields', as pydantic orders
    them). A body that is no JSON object, or whose ``key`` is missing or no list, goes to
    ``whole`` in one call (it fails there early, or is small).

    Raises
    ------
    pydantic.ValidationError, BodyInvalid
    """
    try:
        body.decode()  # msgspec leaves the insides of Raw values unchecked
        top = _TOP_DECODER.decode(body)
        items = _RAW_LIST_DECODER.decode(top[key])
    except Exception:  # no UTF-8 object with a list under key, or JSON msgspec does not take
        return whole.validate_json(body)
    limit = MAX_LEADS  # of leads, or of rows
    errors: list[dict[str, Any]] = []
    if len(items) > limit:
        errors.append({"type": "too_long", "loc": (key,),
                       "msg": f"List should have at most {limit} items after validation, "
                              f"not {len(items)}"})
    rest = b"{" + b",".join(
        msgspec.json.encode(k) + b":" + (
            (b"[" + placeholder + b"]" if items else b"[]") if k == key else bytes(v))
        for k, v in top.items()) + b"}"
    validated = []
    if not errors:
        for i, raw in enumerate(items):
            try:
                validated.append(item.validate_json(bytes(raw)))
            except ValidationError as e:
                found = e.errors(include_url=False, include_context=False, include_input=False)
                if any(d["type"] == "json_invalid" for d in found):  # not JSON after all
                    return whole.validate_json(body)
                errors += [dict(d, loc=(key, i, *d["loc"])) for d in found]
                if len(errors) >= MAX_ERRORS:
                    break
    try:
        payload = whole.validate_json(rest)
    except ValidationError as e:
        found = e.errors(include_url=False, include_context=False, include_input=False)
        if any(d["type"] == "json_invalid" for d in found):
            return whole.validate_json(body)
        errors += found
    if errors:
        raise BodyInvalid(errors)
    payload[key] = validated
    return payload


def _struct_columns(request: Any, now: dt.datetime) -> LeadColumns:
    """:func:`to_columns` of a decoded struct (_NotPlain for timestamps left to pydantic;
    RequestError for leads created after ``as_of``)."""
    astuple = msgspec.structs.astuple
    leads = request.leads
    n = len(leads)
    as_of_us = _us(now) if request.as_of is None else _ts_one(request.as_of)
    if n == 1:
        lead = leads[0]
        values = astuple(lead.contact)
        ids = [values[0]]
        block = np.empty((len(_CONTACT_FIELDS), 1), dtype=object)
        block[:, 0] = values[2:]
        created = values[1]
        created_one = as_of_us if created is None else _ts_one(created)
        late = created_one > as_of_us
        created_us = np.array([created_one], dtype=np.int64)
        evs, sts = lead.events, lead.stages
        ev_counts, st_counts = [len(evs)], [len(sts)]
    else:
        rows = list(map(astuple, map(_A_CONTACT, leads)))
        ids = [r[0] for r in rows]
        block = np.empty((n, len(_CONTACT_FIELDS) + 2), dtype=object)
        block[:] = rows
        created = block[:, 1].tolist()
        block = np.ascontiguousarray(block[:, 2:].T)
        has_created = [i for i, v in enumerate(created) if v is not None]
        created_us = np.full(n, as_of_us, dtype=np.int64)
        if has_created:
            created_us[has_created] = _plain_us([created[i] for i in has_created])
        late = bool(has_created) and created_us.max() > as_of_us
        per_lead = list(map(_A_EVENTS, leads))
        ev_counts = list(map(len, per_lead))
        evs = list(chain.from_iterable(per_lead))
        per_lead = list(map(_A_STAGES, leads))
        st_counts = list(map(len, per_lead))
        sts = list(chain.from_iterable(per_lead))
    # every timestamp checked first: one pydantic would reject goes there (_NotPlain) before
    # a late lead is named, as in SCORE_REQUEST + to_columns
    ev_us, st_us = _plain_us(list(map(_A_TS, evs))), _plain_us(list(map(_A_TS, sts)))
    if late:
        created_us = _created_by_as_of(created_us, as_of_us, request.as_of is not None,
                                       _created_field)
    return _assemble(ids, block, created_us, as_of_us,
                     ev_counts, ev_us, list(map(_A_EVENT_TYPE, evs)), list(map(_A_CAMPAIGN, evs)),
                     st_counts, st_us, list(map(_A_STAGE, sts)))


def _blank(value: Any) -> bool:
    """An id cell with nothing in it: null, or text of spaces only."""
    return value is None or (isinstance(value, str) and not value.strip())


def _object_array(values: list[Any]) -> np.ndarray:
    """A 1-d object array of ``values`` (never a 2-d one, whatever the values are)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _nested(counts: list[int], k: int, name: str) -> str:
    """Field path of the k-th flattened event or stage change."""
    ends = np.cumsum(counts)
    i = int(np.searchsorted(ends, k, side="right"))
    j = k - (int(ends[i - 1]) if i else 0)
    return f"leads.{i}.{name}.{j}.ts"


# -- table rows -> a CRM frame ------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    """What rows of a CRM table must look like for a model trained on it.

    ``required``: the id column (when the dataset names one) and the feature columns, as the
    table names them; ``known``: every column the table had when the model was trained (the
    others are ignored: excluded, post-contact, the target, ...).
    """

    id_column: str | None
    features: tuple[str, ...]
    known: frozenset[str]

    @property
    def required(self) -> tuple[str, ...]:
        return ((self.id_column,) if self.id_column else ()) + self.features

    @classmethod
    def from_model(cls, model: Any) -> TableSpec:
        """The spec of a :class:`training.model.LeadModel` trained by ``train_table``."""
        from training.crm import table_column

        dataset = model.dataset or {}
        features = tuple(table_column(c) for c in model.columns)
        id_column = dataset.get("id_column")
        target = (dataset.get("target") or {}).get("column")
        excluded = (getattr(model, "metadata", None) or {}).get("excluded_features") or {}
        known = {*features, *(c for c in (id_column, target, dataset.get("time_column")) if c),
                 *dataset.get("exclude", {}), *dataset.get("post_contact", {}),
                 *(table_column(c) for c in excluded)}
        return cls(id_column, features, frozenset(known))

    def check(self, rows: list[dict[str, Any]]) -> None:
        """RequestError naming unknown and missing columns (``rows.3.Lead Source``) and rows
        without an id; at most 20 errors, never a value."""
        errors: list[dict[str, str]] = []
        required = self.required
        shapes: dict[frozenset[str], tuple[list[str], list[str]]] = {}
        for i, row in enumerate(rows):
            keys = frozenset(row)
            shape = shapes.get(keys)
            if shape is None:
                unknown = sorted(keys - self.known)
                missing = [c for c in required if c not in keys]
                shape = shapes[keys] = (unknown, missing)
            for c in shape[0]:
                close = difflib.get_close_matches(c, sorted(self.known), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                errors.append({"field": f"rows.{i}.{c}", "type": "unknown_column",
                               "message": f"not a column of the table the model was trained on{hint}"})
            errors += [{"field": f"rows.{i}.{c}", "type": "missing_column",
                        "message": "missing column (send null for an empty value)"}
                       for c in shape[1]]
            if self.id_column and self.id_column in keys and _blank(row[self.id_column]):
                errors.append({"field": f"rows.{i}.{self.id_column}", "type": "missing_id",
                               "message": "the id column is empty"})
            if len(errors) >= 20:
                break
        if errors:
            raise RequestError(errors[:20])

    def frame(self, rows: list[dict[str, Any]]) -> Any:
        """The rows as a DataFrame of object columns (the id and feature columns only), as
        :func:`training.crm.score_table` takes raw rows; checked first (:meth:`check`)."""
        import pandas as pd

        self.check(rows)
        return pd.DataFrame({c: _object_array([row[c] for row in rows]) for c in self.required})
