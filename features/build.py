"""Point-in-time feature tables: one code path for training sets, nightly batches and one lead.

A :class:`Snapshotter` encodes contacts, events and stage changes once; ``features_at(T)``
then builds the feature row of every contact as it was known at ``T`` (only events and stage
changes with timestamps ``<= T``; attributes are those of the contact's record, which hygiene
fills from its duplicates: a field filled from a duplicate created after ``T`` (hygiene's
``filled_fields`` and ``filled_at``) reads as missing at ``T``, through fit features computed
once, when a snapshot first needs them, without those fields for the few contacts concerned
(:func:`unfilled_fit`); from the last ``filled_at`` on (the data's end) everything is filled;
``do_not_email`` is also dated by the unsubscribe it traces, :func:`do_not_email_at`), and
``labels_at(T)`` tells who reached opportunity within the horizon after ``T``.
:func:`build_features` (batch) and :func:`build_training_set` (many as-of dates) go through
it; :func:`lead_feature_columns` (the HTTP service) and :func:`features_for_leads` (the
MLflow pyfunc) encode a few leads from plain values and run the same kernels
(:func:`snapshot_columns`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import pandas as pd

from features import schema
from features.config import FeatureConfig
from features.engagement import (
    _TYPE_CODE,
    EventArrays,
    encode_event_records,
    encode_events,
    engagement_features,
)
from features.firmographics import fit_features
from features.lifecycle import (
    _TIE_RANK,
    StageArrays,
    converted_within,
    encode_stages,
    lifecycle_features,
    scorable,
)

_NS_PER_DAY = 86_400 * 10**9
_STAGE_CODE = {s: i for i, s in enumerate(schema.STAGES)}


def with_hygiene_columns(contacts: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """Add ``email_quality`` and ``has_phone`` where hygiene has not added them yet."""
    out = contacts
    if "email_quality" not in out:
        from features.hygiene import email_quality

        emails = out["email"] if "email" in out else pd.Series([None] * len(out), index=out.index)
        out = out.assign(email_quality=email_quality(emails).to_numpy())
    if "has_phone" not in out:
        from features.hygiene import phone_valid

        phones = out["phone"] if "phone" in out else pd.Series([None] * len(out), index=out.index)
        countries = out["country"] if "country" in out else None
        valid = phone_valid(phones, countries, default_region=config.default_phone_region)
        out = out.assign(has_phone=valid.to_numpy().astype("int8"))
    return out


class Snapshotter:
    """Contacts with their history, encoded once, viewed at any as-of date.

    Parameters
    ----------
    contacts, events, stages : DataFrame
        Clean tables (one row per ``contact_id`` in ``contacts``).
    config : FeatureConfig
        Half-life and horizon.
    """

    def __init__(
        self,
        contacts: pd.DataFrame,
        events: pd.DataFrame,
        stages: pd.DataFrame,
        config: FeatureConfig | None = None,
    ) -> None:
        self.config = config or FeatureConfig()
        contacts = with_hygiene_columns(contacts.reset_index(drop=True), self.config)
        self.ids = pd.Index(contacts["contact_id"].astype("str"))
        if not self.ids.is_unique:
            raise ValueError("contacts.contact_id: duplicate ids; run hygiene (deduplication) first")
        self.created_ns = (
            pd.to_datetime(contacts["created_at"]).to_numpy(dtype="datetime64[ns]").view("int64")
        )
        self.fit = fit_features(contacts)
        self._contacts = contacts
        self._filled_until_ns = last_filled_ns(contacts)
        self.events = encode_events(events, self.ids)
        self.stages = encode_stages(stages, self.ids)

    @cached_property
    def unfilled(self) -> UnfilledFit | None:
        """:func:`unfilled_fit` of the contacts, built on first use: only snapshots before the
        last ``filled_at`` need it, never those at the data's end."""
        return unfilled_fit(self._contacts, self.config)

    def features_at(self, as_of: pd.Timestamp | str, *, eligible_only: bool = True) -> pd.DataFrame:
        """Feature table at ``as_of``: ``contact_id``, ``as_of`` and :data:`schema.FEATURES`.

        With ``eligible_only`` (the default) only contacts created by ``as_of`` and not yet
        converted nor disqualified are kept, as for training and nightly scoring.
        """
        t = pd.Timestamp(as_of).as_unit("ns")
        fit = self.fit
        if self._filled_until_ns is not None and t.value < self._filled_until_ns:
            fit = self.unfilled.at(fit, t.value)
        columns, keep = snapshot_columns(fit, self.created_ns, self.stages, self.events, t,
                                         half_life_days=self.config.half_life_days)
        return feature_table(self.ids.array, t, columns, keep if eligible_only else None)

    def labels_at(self, as_of: pd.Timestamp | str, contact_ids: pd.Series) -> np.ndarray:
        """Label of the given contacts: reached opportunity within the horizon after ``as_of``."""
        hit = converted_within(self.stages, pd.Timestamp(as_of), self.config.horizon_days)
        return hit[self.ids.get_indexer(contact_ids)].astype("int8")


class UnfilledFit:
    """The fit features of the contacts hygiene filled from a later duplicate, computed with
    those fields missing (as the contact's own record had them), and since when the filled
    values are known (``filled_at``, ns since the epoch).

    Built once (:func:`unfilled_fit`) for the few contacts concerned; :meth:`at` puts them in
    place of the filled rows in a snapshot before ``filled_at``.
    """

    def __init__(self, rows: np.ndarray, filled_at_ns: np.ndarray, fit: dict[str, np.ndarray]):
        self.rows = rows
        self.filled_at_ns = filled_at_ns
        self.fit = fit

    def at(self, fit: dict[str, np.ndarray], as_of_ns: int) -> dict[str, np.ndarray]:
        """``fit`` (every contact, filled) as known at ``as_of``: the unfilled rows of the
        contacts whose ``filled_at`` is after it."""
        before = self.filled_at_ns > as_of_ns
        if not before.any():
            return fit
        rows = self.rows[before]
        out = dict(fit)
        for name, values in self.fit.items():
            col = fit[name].copy()
            col[rows] = values[before]
            out[name] = col
        return out


def _filled_bits(contacts: pd.DataFrame) -> np.ndarray | None:
    """Hygiene's ``filled_fields`` as int64 (None when it or ``filled_at`` is absent)."""
    if "filled_fields" not in contacts or "filled_at" not in contacts:
        return None
    return contacts["filled_fields"].to_numpy(dtype=np.int64, na_value=0)


def _filled_at_ns(filled_at: pd.Series) -> np.ndarray:
    return pd.to_datetime(filled_at).to_numpy(dtype="datetime64[ns]").view("int64")


def last_filled_ns(contacts: pd.DataFrame) -> int | None:
    """The latest ``filled_at`` (ns since the epoch) of the contacts hygiene filled from a
    later duplicate: snapshots from then on need no :func:`unfilled_fit`. None when none was
    filled (or the columns are absent)."""
    bits = _filled_bits(contacts)
    if bits is None or not bits.any():
        return None
    return int(_filled_at_ns(contacts["filled_at"])[bits != 0].max())


def unfilled_fit(contacts: pd.DataFrame, config: FeatureConfig) -> UnfilledFit | None:
    """:class:`UnfilledFit` of clean contacts (with hygiene's ``filled_fields`` and
    ``filled_at``, :func:`features.hygiene.clean`); None when no field was filled from a later
    duplicate or the columns are absent (the online paths: no duplicates)."""
    bits = _filled_bits(contacts)
    if bits is None:
        return None
    rows = np.flatnonzero(bits != 0)
    if not len(rows):
        return None
    from features.hygiene import FILLABLE_FIELDS, filled_field_mask

    own = contacts.iloc[rows].copy()
    for field in FILLABLE_FIELDS:
        mask = filled_field_mask(bits[rows], field)
        if field in own and mask.any():
            if field == "do_not_email":
                own[field] = own[field].where(~mask, False)
            else:
                own[field] = own[field].mask(mask)
    # email quality and phone validity of the record's own email, phone and country
    own = with_hygiene_columns(own.drop(columns=["email_quality", "has_phone"], errors="ignore"),
                               config)
    at_ns = _filled_at_ns(own["filled_at"])
    return UnfilledFit(rows, at_ns, fit_features(own.reset_index(drop=True)))


def snapshot_columns(
    fit: dict[str, np.ndarray],
    created_ns: np.ndarray,
    stages: StageArrays,
    events: EventArrays,
    as_of: pd.Timestamp,
    *,
    half_life_days: float,
    eligibility: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The feature columns (:data:`schema.FEATURES`, name -> array) of encoded contacts at
    ``as_of``, and the eligibility mask (created by then, not converted nor disqualified;
    None without ``eligibility``).

    The one place where fit, lifecycle and engagement kernels meet: the batch
    (:meth:`Snapshotter.features_at`) and the online path (:func:`lead_feature_columns`).
    """
    t = pd.Timestamp(as_of).as_unit("ns")
    age = (t.value - created_ns) / _NS_PER_DAY
    life = lifecycle_features(stages, t)
    eng = engagement_features(events, t, half_life_days=half_life_days)
    days_in_stage = np.where(np.isnan(life["days_in_stage"]), age, life["days_in_stage"])
    columns: dict[str, Any] = {
        **fit,
        "do_not_email": do_not_email_at(fit["do_not_email"], events, eng["unsubscribed"]),
        "contact_age_days": age,
        "stage": life["stage"],
        "days_in_stage": days_in_stage,
        "stage_regressions": life["stage_regressions"],
        **eng,
    }
    keep = (age >= 0) & scorable(life["stage_code"]) if eligibility else None
    return columns, keep


def do_not_email_at(flag: np.ndarray, events: EventArrays, unsubscribed: np.ndarray
                    ) -> np.ndarray:
    """The ``do_not_email`` feature at an as-of date: the contact's flag as known then.

    The flag is the state at the export. When the contact has unsubscribe events but none
    by ``as_of`` (all of them later), the flag is the trace of that later unsubscribe and was
    not set yet: 0. A flag with an unsubscribe by then stays, and so does a flag without
    any unsubscribe (set at import or by hand: no date to place it, taken as the record's).
    At the data's end (no later events) this is the flag itself.

    ``flag``: 0/1 per contact (:func:`~features.firmographics.fit_features`); ``unsubscribed``:
    0/1 per contact, unsubscribed by ``as_of`` (:func:`~features.engagement.engagement_features`):
    a contact with unsubscribe events not unsubscribed by then has all of them later.
    """
    if not flag.any():
        return flag
    dated_later = np.zeros(len(flag), dtype=bool)
    dated_later[events.contact[events.type_code == _TYPE_CODE["unsubscribe"]]] = True
    dated_later &= unsubscribed == 0
    return np.where(dated_later, 0.0, flag) if dated_later.any() else flag


def feature_table(ids: pd.api.extensions.ExtensionArray, as_of: pd.Timestamp,
                  columns: Mapping[str, np.ndarray], rows: np.ndarray | None) -> pd.DataFrame:
    """The feature table (:data:`schema.KEY_COLUMNS` then :data:`schema.FEATURES`) of the
    contacts ``ids`` with feature ``columns`` (name -> array), keeping the ``rows`` mask
    (all rows when None). The numeric features form one float64 block, filled in place."""
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    numeric = np.empty((len(ids) if rows is None else int(rows.sum()),
                        len(schema.NUMERIC_FEATURES)), order="F")
    for j, name in enumerate(schema.NUMERIC_FEATURES):
        numeric[:, j] = pick(columns[name])
    head = pd.DataFrame({"contact_id": pick(ids),
                         "as_of": np.full(len(numeric), as_of.as_unit("us").to_datetime64()),
                         **{name: pick(columns[name]) for name in schema.CATEGORICAL_FEATURES}})
    tail = pd.DataFrame(numeric, columns=list(schema.NUMERIC_FEATURES), copy=False)
    return pd.concat([head, tail], axis=1)


def encode_stage_records(contact: np.ndarray, ts: np.ndarray, stage: list[object],
                         n_contacts: int) -> StageArrays:
    """Stage changes given as plain columns, encoded as :func:`encode_stages` does (unknown
    stages dropped; sorted by contact, time and funnel rank)."""
    code = np.fromiter((_STAGE_CODE.get(s, -1) if isinstance(s, str) else -1 for s in stage),
                       dtype=np.int64, count=len(stage))
    pos = np.asarray(contact, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    keep = (pos >= 0) & (code >= 0)
    pos, ts, code = pos[keep], ts[keep], code[keep].astype(np.int8)
    order = np.lexsort((_TIE_RANK[code], ts, pos))
    return StageArrays(pos[order], ts[order], code[order], n_contacts)


def lead_feature_columns(
    contacts: Mapping[str, Sequence[Any]],
    created_ns: np.ndarray,
    events: EventArrays,
    stages: StageArrays,
    *,
    as_of: pd.Timestamp | str,
    config: FeatureConfig | None = None,
) -> dict[str, np.ndarray]:
    """Feature columns (name -> array, :data:`schema.FEATURES`) of leads given as columns.

    The online path without DataFrames: ``contacts`` maps contact columns to one value per
    lead (None when missing; ``email_quality`` and ``has_phone`` are derived from ``email``,
    ``phone`` and ``country`` when absent), ``created_ns`` is each lead's creation time in ns
    since the epoch, ``events`` and ``stages`` come from :func:`~features.engagement.encode_event_records`
    and :func:`encode_stage_records`. Same kernels as :meth:`Snapshotter.features_at`, with
    every lead kept whatever its stage (as :func:`features_for_leads`).
    """
    config = config or FeatureConfig()
    n = len(created_ns)
    cols = {k: np.asarray(v, dtype=object) if not isinstance(v, np.ndarray) else v
            for k, v in contacts.items()}
    if "email_quality" not in cols:
        cols["email_quality"] = _email_quality(cols.get("email"), n)
    if "has_phone" not in cols:
        cols["has_phone"] = _has_phone(cols.get("phone"), cols.get("country"), n, config)
    columns, _ = snapshot_columns(fit_features(cols, n=n), np.asarray(created_ns, dtype=np.int64),
                                  stages, events, pd.Timestamp(as_of),
                                  half_life_days=config.half_life_days, eligibility=False)
    return columns


def _all_missing(values: np.ndarray | None) -> bool:
    return values is None or all(v is None for v in values)


def _email_quality(emails: np.ndarray | None, n: int) -> np.ndarray:
    """:func:`features.hygiene.email_quality` of a few addresses (same answers, tested)."""
    if _all_missing(emails):  # what email_quality answers for missing addresses
        return np.full(n, "missing", dtype=object)
    from features import hygiene

    if n <= _SCALAR_MAX and all(v is None or (isinstance(v, str) and v.isascii()) for v in emails):
        return np.array([_email_quality_cached(v) for v in emails], dtype=object).reshape(n)
    return hygiene.email_quality(pd.Series(emails, dtype=object)).to_numpy(dtype=object)


def _has_phone(phones: np.ndarray | None, countries: np.ndarray | None, n: int,
               config: FeatureConfig) -> np.ndarray:
    """:func:`features.hygiene.phone_valid` of a few numbers, as int8 (same answers, tested)."""
    if _all_missing(phones):  # phone_valid is False for missing numbers
        return np.zeros(n, dtype="int8")
    from features import hygiene

    countries_ok = countries is None or all(c is None or (isinstance(c, str) and c.isascii())
                                            for c in countries)
    if n <= _SCALAR_MAX and countries_ok and all(v is None or (isinstance(v, str) and v.isascii())
                                            for v in phones):
        default = config.default_phone_region
        region = [_region_cached(c, default) for c in (countries if countries is not None else [None] * n)]
        return np.array([_phone_valid_cached(p, r) for p, r in zip(phones, region)],
                        dtype="int8").reshape(n)
    c = None if countries is None else pd.Series(countries, dtype=object)
    valid = hygiene.phone_valid(pd.Series(phones, dtype=object), c,
                                default_region=config.default_phone_region)
    return valid.to_numpy().astype("int8")


# --- one value at a time, for the online path ---------------------------------------------
# features.hygiene classifies columns with Arrow kernels whose fixed cost (regex compilation)
# is milliseconds per call, and takes the verdict of email-validator / phonenumbers, with
# vectorised shortcuts that give the same answers. For a few ASCII values the libraries are
# asked directly (a few us an address, ~40 us a phone number); anything else goes through
# hygiene itself. Hygiene's column kernels pay off from thousands of values on.
_SCALAR_MAX = 5000


# A plain address (ASCII dot-atom local part, ordinary host name) that email-validator
# accepts without doubt; anything else is left to the library.
_PLAIN_LOCAL = re.compile(r"[a-z0-9_!#$%&'*+\-/=?^`{|}~]+(?:\.[a-z0-9_!#$%&'*+\-/=?^`{|}~]+)*\Z")
_PLAIN_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z")


@lru_cache(maxsize=1)
def _special_use() -> tuple[str, ...]:
    import email_validator

    return tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)


def _plainly_valid(local: str, domain: str, address: str) -> bool:
    return (0 < len(local) <= 64 and len(address) <= 254 and len(domain) <= 253
            and _PLAIN_LOCAL.match(local) is not None and _PLAIN_HOST.match(domain) is not None
            and "--" not in domain
            and not any(domain == s or domain.endswith("." + s) for s in _special_use()))


def _email_quality_one(email: str | None, hygiene: Any) -> str:
    """Quality of one ASCII address: missing, invalid, or the kind of its domain."""
    corporate, free, disposable, invalid, missing = schema.EMAIL_QUALITIES
    text = email.strip() if email is not None else ""
    if not text:
        return missing
    lower = text.lower()
    if "@" not in lower:
        return invalid
    local, _, domain = lower.rpartition("@")
    if not _plainly_valid(local, domain, lower):
        import email_validator

        try:
            email_validator.validate_email(lower, check_deliverability=False)
        except email_validator.EmailNotValidError:
            return invalid
    lists = hygiene.email_domains()
    suffixes = [domain] + [domain[i + 1:] for i, ch in enumerate(domain) if ch == "."]
    if any(d in lists["disposable"] for d in suffixes):
        return disposable
    if any(d in lists["free"] for d in suffixes):
        return free
    return corporate


def _phone_region(country: str | None, config: FeatureConfig, hygiene: Any) -> str | None:
    """Region in which a national-format number of this contact is read."""
    import phonenumbers

    default = config.default_phone_region.upper() if config.default_phone_region else None
    code = country.strip().upper() if isinstance(country, str) else ""
    if not code:
        return default
    region = getattr(hygiene, "_REGION_ALIASES", {"UK": "GB"}).get(code, code)
    return region if region in phonenumbers.SUPPORTED_REGIONS else default


def _phone_valid_one(phone: str | None, region: str | None, hygiene: Any) -> bool:
    import phonenumbers

    text = phone.strip() if phone is not None else ""
    if not text:
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(text, region))
    except phonenumbers.NumberParseException:
        return False


# Verdicts of values seen recently (a CRM re-sends the same lead as it moves): bounded
# caches in memory, keyed by the raw value; values are never logged.
_HYGIENE_CACHE = 16_384


@lru_cache(maxsize=_HYGIENE_CACHE)
def _email_quality_cached(email: str | None) -> str:
    """:func:`_email_quality_one`, remembered (the domain lists are loaded once)."""
    from features import hygiene

    return _email_quality_one(email, hygiene)


@lru_cache(maxsize=1024)
def _region_cached(country: str | None, default_region: str | None) -> str | None:
    """:func:`_phone_region` of a country with this default region, remembered."""
    from features import hygiene

    return _phone_region(country, FeatureConfig(default_phone_region=default_region), hygiene)


@lru_cache(maxsize=_HYGIENE_CACHE)
def _phone_valid_cached(phone: str | None, region: str | None) -> bool:
    """:func:`_phone_valid_one`, remembered."""
    from features import hygiene

    return _phone_valid_one(phone, region, hygiene)


def build_features(
    contacts: pd.DataFrame,
    events: pd.DataFrame,
    stages: pd.DataFrame,
    as_of: pd.Timestamp | str,
    *,
    config: FeatureConfig | None = None,
    eligible_only: bool = True,
) -> pd.DataFrame:
    """The feature table of a base at one as-of date (the nightly batch's path)."""
    return Snapshotter(contacts, events, stages, config).features_at(as_of, eligible_only=eligible_only)


def monthly_as_of_dates(
    start: pd.Timestamp, end: pd.Timestamp, *, horizon_days: int, min_history_days: int = 60
) -> list[pd.Timestamp]:
    """First-of-month dates with ``min_history_days`` of history before and a full horizon after."""
    first = (pd.Timestamp(start) + pd.Timedelta(days=min_history_days)).to_period("M").to_timestamp()
    last = pd.Timestamp(end) - pd.Timedelta(days=horizon_days)
    return list(pd.date_range(first + pd.offsets.MonthBegin(0), last, freq="MS"))


def build_training_set(
    contacts: pd.DataFrame,
    events: pd.DataFrame,
    stages: pd.DataFrame,
    as_of_dates: Iterable[pd.Timestamp | str],
    *,
    config: FeatureConfig | None = None,
) -> pd.DataFrame:
    """Stacked point-in-time snapshots with the label :data:`schema.LABEL`, one row per
    eligible (contact, as_of)."""
    snap = Snapshotter(contacts, events, stages, config)
    parts = []
    for t in as_of_dates:
        frame = snap.features_at(t)
        frame[schema.LABEL] = snap.labels_at(t, frame["contact_id"])
        parts.append(frame)
    if not parts:
        raise ValueError("no as-of dates: the history is shorter than the horizon")
    return pd.concat(parts, ignore_index=True)


def features_for_leads(
    contacts: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]] = (),
    stages: Sequence[dict[str, Any]] = (),
    *,
    as_of: pd.Timestamp | str,
    config: FeatureConfig | None = None,
) -> pd.DataFrame:
    """Feature rows for leads given as plain records (the MLflow pyfunc's path), in order.

    ``events`` and ``stages`` carry the ``contact_id`` they belong to. Every lead is
    featurised at ``as_of`` whatever its stage, with the batch's kernels through
    :func:`lead_feature_columns` (the same values as :meth:`Snapshotter.features_at`, tested);
    a lead without ``created_at`` is taken as created at ``as_of``.
    """
    t = pd.Timestamp(as_of)
    ids = [_text(c.get("contact_id")) for c in contacts]
    row = {cid: i for i, cid in enumerate(ids) if cid is not None}  # missing ids match nothing
    if len(row) < sum(cid is not None for cid in ids):
        raise ValueError("contacts.contact_id: duplicate ids; run hygiene (deduplication) first")
    created = _timestamps_ns([c.get("created_at") for c in contacts], fill=t)
    columns = {k: np.array([c.get(k) for c in contacts], dtype=object).reshape(len(contacts))
               for k in dict.fromkeys(k for c in contacts for k in c)
               if k not in ("contact_id", "created_at")}
    ev = encode_event_records(
        _rows(events, row), _timestamps_ns([e.get("ts") for e in events]),
        [e.get("event_type") for e in events],
        [e.get("campaign_id") for e in events] if any("campaign_id" in e for e in events) else None,
        len(ids))
    st = encode_stage_records(_rows(stages, row), _timestamps_ns([s.get("ts") for s in stages]),
                              [s.get("stage") for s in stages], len(ids))
    features = lead_feature_columns(columns, created, ev, st, as_of=t, config=config)
    return feature_table(pd.array(ids, dtype="str"), t, features, None)


def _text(value: object) -> str | None:
    """An id as text, as ``astype("str")`` gives it; None when missing."""
    if isinstance(value, str):
        return value
    return None if value is None or pd.isna(value) else str(value)


def _rows(records: Sequence[dict[str, Any]], row: dict[str, int]) -> np.ndarray:
    """Row of each record's contact (ids compared as text, as the batch does), -1 when unknown."""
    return np.array([row.get(_text(r.get("contact_id")), -1) for r in records],
                    dtype=np.int64).reshape(len(records))


def _timestamps_ns(values: list[object], fill: pd.Timestamp | None = None) -> np.ndarray:
    """Nanoseconds since the epoch, parsed as the batch parses a column (missing: ``fill``,
    or NaT's int64 value, which drops the row)."""
    if not values:
        return np.zeros(0, dtype=np.int64)
    ts = pd.to_datetime(values)
    if fill is not None:
        ts = ts.fillna(fill)
    return ts.to_numpy(dtype="datetime64[ns]").view("int64")
