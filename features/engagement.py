"""Engagement features: what the contact did, as of a point in time.

The work is done on flat numpy arrays (one entry per event, the contact as an integer
index) with ``bincount`` and ``ufunc.at``, so the same code serves one online lead with a
few hundred events in well under a millisecond and a nightly batch of tens of millions of
events in seconds. Only events with ``ts <= as_of`` count; the order of events never
matters, to the bit (see :data:`_GRID`), so events are never sorted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import schema

_TYPES = schema.ENGAGEMENT_TYPES  # the 12 known types + "other"
_NT = len(_TYPES)
_TYPE_CODE = {t: i for i, t in enumerate(_TYPES)}
_OTHER = _TYPE_CODE[schema.OTHER_EVENT]
_NEGATIVE = np.array([_TYPE_CODE["unsubscribe"], _TYPE_CODE["email_bounce"]])
_CONTENT = np.array(
    [_TYPE_CODE[t] for t in ("content_download", "webinar_registered", "webinar_attended")]
)
_NS_PER_DAY = 86_400 * 10**9
_POSITIVE = np.ones(_NT, dtype=bool)  # every type but the negative signals
_POSITIVE[_NEGATIVE] = False
_IS_CONTENT = np.zeros(_NT, dtype=bool)
_IS_CONTENT[_CONTENT] = True
_WINDOW_NAMES = {w: tuple(f"{t}_{w}d" for t in _TYPES) for w in schema.WINDOWS_DAYS}
_SINCE_NAMES = tuple(f"days_since_{t}" for t in schema.EVENT_TYPES)
_DECAYED_NAMES = tuple(f"{t}_decayed" for t in schema.EVENT_TYPES)


# Decay weights are rounded to multiples of 1/_GRID (at most 2**-33 off per event): float64
# sums of up to 2**21 such weights are exact, hence the same whatever the events' order.
_GRID = 2.0**32
# the longest look-back of the windowed features (counts, active days, content; trend: 37)
_RECENT_DAYS = max(*schema.WINDOWS_DAYS, 90)
_CHUNK = 1 << 22  # events per pass over the whole history
_TYPE_VALUES = pa.array(_TYPES, type=pa.large_string())


@dataclass(frozen=True)
class EventArrays:
    """Events encoded for the kernels: one entry per event (in any order), contacts as row
    positions."""

    contact: np.ndarray  # int64 row position of the contact, 0..n_contacts-1
    ts: np.ndarray  # int64 nanoseconds since the epoch
    type_code: np.ndarray  # int8 index into schema.ENGAGEMENT_TYPES
    content: np.ndarray  # int64 code of campaign_id, -1 when missing
    n_contacts: int


def as_text(values: pd.Series | pd.Index) -> pa.Array | pa.ChunkedArray:
    """A column as Arrow text (no copy for pandas' Arrow-backed ``str`` dtype); missing
    values stay missing."""
    return pa.array(values.astype("str"))


def positions(values: pd.Series, ids: pa.Array) -> np.ndarray:
    """Position of each value (as text) in the unique ``ids``, -1 when absent.

    Arrow's hash lookup: about 4x cheaper than ``pd.Index.get_indexer`` on tens of
    millions of Arrow-backed strings, which first turns them into Python objects.
    """
    return pc.index_in(as_text(values), value_set=ids).fill_null(-1).to_numpy()


def type_codes(event_type: pd.Series) -> np.ndarray:
    """Index of each event type in :data:`schema.ENGAGEMENT_TYPES`; unknown types are 'other'."""
    codes = pc.index_in(as_text(event_type), value_set=_TYPE_VALUES).fill_null(_OTHER)
    return codes.to_numpy().astype(np.int8)


def encode_events(events: pd.DataFrame, contact_ids: pd.Index) -> EventArrays:
    """Encode an events table against the contacts it belongs to (unknown contacts dropped)."""
    pos = positions(events["contact_id"], as_text(contact_ids))
    ts = pd.to_datetime(events["ts"]).to_numpy(dtype="datetime64[ns]").view("int64")
    if "campaign_id" in events:
        content, _ = pd.factorize(events["campaign_id"], use_na_sentinel=True)
    else:
        content = np.full(len(events), -1)
    return _known(pos, ts, type_codes(events["event_type"]), content, len(contact_ids))


def encode_event_records(
    contact: np.ndarray,
    ts: np.ndarray,
    event_type: list[object],
    campaign_id: list[object] | None,
    n_contacts: int,
) -> EventArrays:
    """Encode events given as plain columns (the online path: no DataFrame, same arrays).

    Parameters
    ----------
    contact : int array
        Row position of each event's contact (0..n_contacts-1; -1 drops the event).
    ts : int64 array
        Nanoseconds since the epoch (``NaT``'s int64 value drops the event).
    event_type, campaign_id : list
        One entry per event; unknown or missing types are "other", missing campaigns -1.
    n_contacts : int
        Number of contacts.
    """
    tcode = np.array([_TYPE_CODE.get(t, _OTHER) if isinstance(t, str) else _OTHER
                      for t in event_type], dtype=np.int8).reshape(len(event_type))
    if campaign_id is None:
        content = np.full(len(event_type), -1, dtype=np.int64)
    else:  # codes in order of first appearance, as pd.factorize
        seen: dict[object, int] = {}
        content = np.array([-1 if c is None or c != c else seen.setdefault(c, len(seen))
                            for c in campaign_id], dtype=np.int64).reshape(len(campaign_id))
    return _known(np.asarray(contact), np.asarray(ts, dtype=np.int64), tcode, content, n_contacts)


def _known(pos: np.ndarray, ts: np.ndarray, tcode: np.ndarray, content: np.ndarray,
           n_contacts: int) -> EventArrays:
    """The events of known contacts with a timestamp."""
    keep = (pos >= 0) & (ts != np.iinfo(np.int64).min)  # unknown contact or NaT
    content = np.asarray(content, dtype=np.int64)
    if not keep.all():
        pos, ts, tcode, content = pos[keep], ts[keep], tcode[keep], content[keep]
    return EventArrays(pos.astype(np.int64, copy=False), ts, tcode, content, n_contacts)


_SMALL = 256  # up to this many values, Python sets beat numpy's set machinery (same results)


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values of an int64 array (in no particular order)."""
    if len(values) <= _SMALL:
        return np.fromiter(set(values.tolist()), dtype=np.int64)
    return np.unique(values)


def _sums(idx: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """``np.bincount`` with weights, always float64 (it answers int64 for no values)."""
    if not len(idx):
        return np.zeros(size)
    return np.bincount(idx, weights=weights, minlength=size)


def _decay_weights(age: np.ndarray, half_life_days: float) -> np.ndarray:
    """``2 ** (-age / half_life_days)`` on the :data:`_GRID` (one array allocated)."""
    w = age / -half_life_days
    np.exp2(w, out=w)
    w *= _GRID
    np.rint(w, out=w)
    w /= _GRID
    return w


def as_of_ns(as_of: pd.Timestamp | str) -> int:
    """``as_of`` in nanoseconds since the epoch (no conversion when it is already in ns)."""
    if type(as_of) is pd.Timestamp and as_of.unit == "ns":
        return as_of.value
    return pd.Timestamp(as_of).as_unit("ns").value


def all_true(mask: np.ndarray) -> bool:
    """``mask.all()``, without its Python-level dispatch (the online path calls it often)."""
    return np.count_nonzero(mask) == mask.size


# Cumulative age buckets: row i of the windowed counts holds the events with age < _EDGES[i]
# (the count windows, the trend's 7 and 37 days and the look-back of everything windowed).
# The edges are whole days, so an event's bucket is that of its whole days of age (age >= 0:
# age < d exactly when int(age) < d): _DAY_BUCKET[int(age)], the last entry for any older.
_TREND_SPLIT, _TREND_END = 7, 37  # trend: the last 7 days against the 30 before them
_EDGES = tuple(sorted({*schema.WINDOWS_DAYS, _TREND_SPLIT, _TREND_END, _RECENT_DAYS}))
_ROW = {d: i for i, d in enumerate(_EDGES)}
_DAY_BUCKET = np.searchsorted(np.array(_EDGES), np.arange(_RECENT_DAYS + 1), side="right")
_POSITIVE_ROWS = _POSITIVE[:, None]  # reduction mask over a (type, contact) array
# the negative signals as a slice of rows (they are neighbours in schema.EVENT_TYPES)
_NEGATIVE_ROWS = slice(int(_NEGATIVE[0]), int(_NEGATIVE[-1]) + 1)
assert np.array_equal(np.arange(_NT)[_NEGATIVE_ROWS], _NEGATIVE)
_OPEN, _CLICK = _TYPE_CODE["email_open"], _TYPE_CODE["email_click"]
# active days: rows 0-30 of the (day back, contact) flags are the last 30 days' events' days,
# rows 31-121 the last 90 days' (an event less than d days old is at most d days back)
_DAYS_30, _DAYS_90 = 31, 91


def _chunks(ev: EventArrays) -> Iterable[tuple[np.ndarray, ...]]:
    """(contact, ts, type_code, content) of the events, _CHUNK at a time (no copies)."""
    arrays = (ev.contact, ev.ts, ev.type_code, ev.content)
    if len(ev.ts) <= _CHUNK:
        return (arrays,)
    return (tuple(a[lo:lo + _CHUNK] for a in arrays) for lo in range(0, len(ev.ts), _CHUNK))


@lru_cache(maxsize=16)
def _per_size(n: int) -> tuple[np.int64, np.ndarray]:
    """``n`` as an int64 scalar (the type code times it stays int64) and the offset of each
    whole day of age in the windowed counts' index (age bucket times _NT * n)."""
    offset = _DAY_BUCKET * (_NT * n)
    offset.flags.writeable = False
    return np.int64(n), offset


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def engagement_features(
    ev: EventArrays, as_of: pd.Timestamp, *, half_life_days: float
) -> dict[str, np.ndarray]:
    """Engagement features of every contact at ``as_of`` (column name -> array of length n).

    Counts by type over 7/30/90 days, days since the last event of each type, time-decayed
    counts, active days, trend, distinct content, email click-through rate and the negative
    signals. Events after ``as_of`` are ignored.

    The same few whole-array passes whatever the number of contacts, so that one online
    lead costs a few dozen small numpy calls: results by (type, contact) are arrays of
    shape (types, contacts) indexed by ``type * n + contact``, whose rows are the output
    columns; the windowed counts are one ``bincount`` over (age bucket, type, contact).
    """
    n = ev.n_contacts
    size = _NT * n
    n64, bucket_offset = _per_size(n)
    t_ns = as_of_ns(as_of)
    t_day = t_ns // _NS_PER_DAY
    # one pass over the events, _CHUNK at a time (small temporaries): days since the last
    # event and decayed counts of each type over the whole history; the windowed features
    # look at most _RECENT_DAYS back (in a long history, only those events are kept)
    last = np.empty(size)
    last.fill(np.inf)
    decayed = None  # set by the first chunk (there is always one, maybe empty)
    days = np.zeros((_DAYS_30 + _DAYS_90) * n, dtype=bool)  # (day back, contact) flags
    windowed, content_contact, content_code = [], [], []
    for contact, ts, tcode, content in _chunks(ev):
        known = ts <= t_ns
        if not all_true(known):
            contact, ts, tcode, content = contact[known], ts[known], tcode[known], content[known]
        age = (t_ns - ts) / _NS_PER_DAY  # float days, >= 0
        key = tcode * n64 + contact
        np.minimum.at(last, key, age)
        part = _sums(key, _decay_weights(age, half_life_days), size)
        decayed = part if decayed is None else np.add(decayed, part, out=decayed)
        if len(ts) > _SMALL:  # (below that, copies cost more than they save)
            r = age < _RECENT_DAYS
            if not all_true(r):
                key, age, ts, contact, tcode, content = (
                    a[r] for a in (key, age, ts, contact, tcode, content))
        whole_days = age.astype(np.intp)
        windowed.append(bucket_offset.take(whole_days, mode="clip") + key)
        cell = (t_day - ts // _NS_PER_DAY) * n + contact  # (calendar days back, contact)
        days[cell[whole_days < 30]] = True
        days[cell[whole_days < 90] + _DAYS_30 * n] = True
        m = _IS_CONTENT[tcode] & (content >= 0) & (whole_days < 90)
        content_contact.append(contact[m])
        content_code.append(content[m])
    last = last.reshape(_NT, n)
    decayed = decayed.reshape(_NT, n)

    out: dict[str, np.ndarray] = {}
    negative = np.isfinite(last[_NEGATIVE_ROWS]).astype(np.float64)
    out["unsubscribed"] = negative[0]
    out["bounced"] = negative[1]
    last[last == np.inf] = np.nan  # now days since the last event of each type
    out["days_since_last_event"] = np.fmin.reduce(last, axis=0)  # NaN when no event at all
    out.update(zip(_SINCE_NAMES, last))
    out.update(zip(_DECAYED_NAMES, decayed))
    out["engagement_decayed"] = np.add.reduce(decayed, axis=0, where=_POSITIVE_ROWS)

    # windowed counts: one bincount over (age bucket, type, contact), cumulated over the
    # buckets (float sums of integers: exact); events older than every window fall in a
    # last bucket, dropped
    index = _joined(windowed)
    nb = len(_EDGES)
    cum = _sums(index, np.ones(len(index)), nb * size)[:nb * size].reshape(nb, _NT, n)
    for i in range(1, nb):
        cum[i] += cum[i - 1]
    for w in schema.WINDOWS_DAYS:
        out.update(zip(_WINDOW_NAMES[w], cum[_ROW[w]]))

    days = days.reshape(_DAYS_30 + _DAYS_90, n)
    out["active_days_30d"] = np.add.reduce(days[:_DAYS_30], axis=0, dtype=np.float64)
    out["active_days_90d"] = np.add.reduce(days[_DAYS_30:], axis=0, dtype=np.float64)

    s, e = _ROW[_TREND_SPLIT], _ROW[_TREND_END]
    last7, to37 = np.add.reduce(cum[s:e + 1:e - s], axis=1, where=_POSITIVE_ROWS)
    before = to37 - last7  # positive events 7 to 37 days back
    out["engagement_trend"] = (last7 + 1.0) / (7.0 / 30.0 * before + 1.0)

    content_code = _joined(content_code)
    if len(content_code):
        span = int(content_code.max()) + 1
        pairs = _distinct(_joined(content_contact) * span + content_code)
        out["distinct_content_90d"] = np.bincount(pairs // span, minlength=n).astype(np.float64)
    else:
        out["distinct_content_90d"] = np.zeros(n)

    opens, clicks = cum[_ROW[90], _OPEN], cum[_ROW[90], _CLICK]
    # NaN without opens (divided by NaN, not by zero: no warning to silence)
    out["email_ctr_90d"] = clicks / np.where(opens > 0, opens, np.nan)
    return out
