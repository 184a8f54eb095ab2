"""The HTTP scoring service: real ``bentoml serve`` processes, a real trained model in a temp
SQLite MLflow store, a real HTTP client.

The first tests are quick and need no server (access rules, timestamp parsing, the online
feature path and the fast scorer against the batch path); the others start servers and are
marked slow (about two minutes together, most of it training and server start-up).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import warnings

import httpx
import numpy as np
import pandas as pd
import pytest

from features import hygiene, schema
from features.build import (
    Snapshotter,
    _email_quality,
    _has_phone,
    features_for_leads,
    lead_feature_columns,
)
from features.config import FeatureConfig
from serving import api_types as T

with warnings.catch_warnings():  # BentoML's own imports: pathspec and pydantic deprecations
    warnings.filterwarnings("ignore", message=".*GitWildMatchPattern.*", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*__get_pydantic_core_schema__.*")
    from serving.service import authorized, check_bind_allowed, is_loopback, parse_api_keys

EVENT_TYPES = set(schema.ENGAGEMENT_TYPES)


# -- helpers -------------------------------------------------------------------------------------
def _value(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def lead_record(base, contact_id: str) -> dict:
    """A lead of the demo base as the HTTP API takes it: contact fields, events, stages."""
    c = base.contacts.loc[base.contacts["contact_id"] == contact_id].iloc[0]
    contact = {k: _value(c[k]) for k in schema.CONTACTS.columns if k in c.index}
    contact = {k: v for k, v in contact.items() if v is not None}
    ev = base.events.loc[base.events["contact_id"] == contact_id]
    events = []
    for r in ev.to_dict("records"):
        e = {k: _value(r.get(k)) for k in schema.EVENTS.columns if k != "contact_id"}
        if e["event_type"] not in EVENT_TYPES:  # the batch counts unknown types as "other"
            e["event_type"] = schema.OTHER_EVENT
        events.append({k: v for k, v in e.items() if v is not None})
    st = base.stages.loc[base.stages["contact_id"] == contact_id]
    stages = [{"ts": _value(r["ts"]), "stage": r["stage"]} for r in st.to_dict("records")]
    return {"contact": contact, "events": events, "stages": stages}


def sample_ids(base, n: int, seed: int = 3) -> list[str]:
    """Contacts with events and stage changes whose hygiene columns come from their own
    fields (not merged from a duplicate), so the raw fields say what the batch saw."""
    c = base.contacts
    quality = hygiene.email_quality(c["email"]).to_numpy(dtype=object)
    ok = (quality == c["email_quality"].to_numpy(dtype=object))
    busy = set(base.events["contact_id"]) & set(base.stages["contact_id"])
    ids = [i for i, good in zip(c["contact_id"], ok) if good and i in busy]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())


def body_of(leads: list[dict], **extra) -> dict:
    return {"leads": leads, **extra}


# -- access (no server) --------------------------------------------------------------------------
def test_bind_needs_keys_off_loopback():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_bind_allowed(host, "")
    for host in ("0.0.0.0", "10.1.2.3", "::", "example.org"):
        with pytest.raises(PermissionError, match="LEADSCORE_API_KEYS"):
            check_bind_allowed(host, " , ")
        check_bind_allowed(host, "k1")
    assert is_loopback("127.0.0.1") and not is_loopback("0.0.0.0")


def test_numeric_settings_are_checked_by_name(monkeypatch):
    """A setting that is not a finite number in range (a whole one where it counts) stops
    the service at start-up with its name, rather than being ignored."""
    from serving.service import LeadScoringService, _env_number

    name = "LEADSCORE_BATCH_PATIENCE"
    monkeypatch.delenv(name, raising=False)
    assert _env_number(name, 8, high=1000, whole=True) == 8
    for raw, value in (("0", 0), (" 12 ", 12), ("1e3", 1000), ("", 8)):
        monkeypatch.setenv(name, raw)
        got = _env_number(name, 8, high=1000, whole=True)
        assert got == value and type(got) is int
    for raw in ("nan", "inf", "-1", "2.5", "1001", "eight"):
        monkeypatch.setenv(name, raw)
        with pytest.raises(ValueError, match=f"{name}=.*whole number from 0 to 1000"):
            _env_number(name, 8, high=1000, whole=True)
    with pytest.raises(ValueError, match=name):  # the service refuses to start
        LeadScoringService.inner()
    monkeypatch.delenv(name)
    seconds = "LEADSCORE_RELOAD_SECONDS"
    monkeypatch.setenv(seconds, "2.5")
    assert _env_number(seconds, 30.0) == 2.5
    for raw in ("soon", "-1", "inf"):
        monkeypatch.setenv(seconds, raw)
        with pytest.raises(ValueError, match=f"{seconds}=.*number at least 0"):
            LeadScoringService.inner()


def test_bearer_keys_are_compared_exactly():
    keys = parse_api_keys(" a1 ,b2,, ")
    assert keys == (b"a1", b"b2")
    assert authorized(b"Bearer a1", keys) and authorized(b"Bearer b2", keys)
    for header in (None, b"", b"a1", b"Bearer ", b"Bearer a", b"Bearer a1x", b"Basic a1",
                   b"Bearera1", b"Bearer A1", "B\u00e9arer a1".encode()):
        assert not authorized(header, keys), header


def test_bearer_scheme_is_case_insensitive_and_keys_are_bytes():
    """RFC 7235: the scheme in any case; a key with non-ASCII characters matches when the
    client sends it in UTF-8 (the header's received bytes), not in latin-1: a comparison of
    latin-1 text (Starlette's headers) would take that one instead."""
    keys = parse_api_keys("k1,cl\u00e9-\u00fc,\u20ac-3")
    assert keys == (b"k1", "cl\u00e9-\u00fc".encode(), "\u20ac-3".encode())
    for header in (b"bearer k1", b"BEARER k1", b"BeArEr  k1 ", b"Bearer k1"):
        assert authorized(header, keys), header
    for key in ("cl\u00e9-\u00fc", "\u20ac-3"):
        assert authorized(f"Bearer {key}".encode(), keys), key  # what an HTTP client sends
    latin1 = "Bearer cl\u00e9-\u00fc".encode("latin-1")  # every character exists in latin-1
    assert latin1 != "Bearer cl\u00e9-\u00fc".encode() and not authorized(latin1, keys)
    assert not authorized(b"Bearer cle-u", keys)


# -- request parsing (no server) ------------------------------------------------------------------
def test_timestamps_are_utc_whatever_the_offset():
    us, bad = T.timestamps_us(["2026-03-01T10:00:00Z", "2026-03-01T12:00:00+02:00",
                               "2026-03-01T05:00:00-0500", "2026-03-01 10:00:00", "2026-03-01T10:00"])
    assert bad == [] and len(set(us.tolist())) == 1
    us, bad = T.timestamps_us(["2026-02-30T00:00:00", "2026-03-01", "2026-02-29T00:00:00Z"])
    assert bad == [0, 2]


def test_request_validation_names_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        T.SCORE_REQUEST.validate_json(json.dumps({"leads": [{"contact": {"contact_id": "a"},
                                                             "events": [{"ts": "2026-01-01",
                                                                         "event_type": "tweet"}]}]}))
    assert [".".join(map(str, x["loc"])) for x in e.value.errors()] == ["leads.0.events.0.event_type"]


def _same_columns(a: T.LeadColumns, b: T.LeadColumns) -> None:
    assert a.contact_ids == b.contact_ids and a.as_of == b.as_of
    assert np.array_equal(a.created_ns, b.created_ns)
    assert list(a.contacts) == list(b.contacts)
    for k in a.contacts:
        assert list(a.contacts[k]) == list(b.contacts[k]), k
        assert [type(x) for x in a.contacts[k]] == [type(x) for x in b.contacts[k]], k
    for x, y, names in ((a.events, b.events, ("contact", "ts", "type_code", "content")),
                        (a.stages, b.stages, ("contact", "ts", "stage"))):
        assert x.n_contacts == y.n_contacts
        for f in names:
            u, v = getattr(x, f), getattr(y, f)
            assert u.dtype == v.dtype and np.array_equal(u, v), f


NOW = dt.datetime(2030, 1, 1)


def tricky_bodies() -> list[bytes]:
    """Valid, invalid and borderline request bodies (types, limits, timestamps, JSON)."""
    contact = {"contact_id": "c1", "created_at": "2025-01-01T01:50:54", "email": "a@b-c.nl",
               "phone": "+31 581 63058393", "employees": 1700.0, "country": "NL", "do_not_email": False}

    def ev(ts, **kw):
        return {"ts": ts, "event_type": "page_view", **kw}

    def lead(events=(), **changes):
        return {"contact": {**contact, **changes}, "events": list(events)}

    many = [ev(f"2026-0{1 + i % 9}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00",
               campaign_id=f"k{i % 3}" if i % 2 else None) for i in range(300)]
    for e in many:
        if e["campaign_id"] is None:
            del e["campaign_id"]
    bodies = {
        "plain": body_of([lead(many)], as_of="2026-12-01"),
        "many leads": body_of([lead(many[:k], contact_id=f"c{k}") for k in range(25)]
                              + [{"contact": {"contact_id": "bare"}}], reasons="top"),
        "stages": body_of([dict(lead(many[:9]), stages=[{"ts": f"2026-01-0{i}", "stage": "mql"}
                                                         for i in range(1, 8)])] * 3),
        "utc": body_of([lead([ev(f"2026-01-0{i}T10:00:00Z") for i in range(1, 8)])] * 2,
                       as_of="2026-06-30T10:00:00+02:00"),
        "minutes": body_of([lead([ev(f"2026-01-0{i} 10:00") for i in range(1, 8)])]),
        "dates": body_of([lead([ev(f"2026-01-0{i}") for i in range(1, 8)] * 30)]),
        "mixed shapes": body_of([lead([ev("2026-01-01"), ev("2026-01-01T10:00:00+02:00"),
                                       ev("2026-01-01T10:00:00.123"), ev("2026-01-01 10:00:00"),
                                       ev("2026-01-01T10:00:00-0500")])]),
        "30 February": body_of([lead([ev(f"2026-02-{d}T10:00:00") for d in range(24, 31)] * 30)]),
        "hour 24": body_of([lead([ev("2026-01-01T24:00:00")] * 200)]),
        "month 13": body_of([lead([ev("2026-13-01")] * 8)]),
        "final newline": body_of([lead([ev("2026-01-01T10:00:00\n")] * 8)]),
        "lengths adding up": body_of([lead([ev("2026-01-01T10:00:0"), ev("22026-01-01T10:00:00")]
                                           + [ev("2026-01-01T10:00:00")] * 200)]),
        "year 2999": body_of([lead([ev("2999-01-01")] * 300)]),
        "year 0": body_of([lead([ev("0000-01-01T10:00:00")] * 8)]),
        "wide digits": body_of([lead([ev("\uff12026-01-01T10:00:00")] * 8)]),
        "int number": body_of([lead(employees=5)]),
        "text number": body_of([lead(employees="5")]),
        "bool number": body_of([lead(employees=True)]),
        "int flag": body_of([lead(do_not_email=1)]),
        "null events": body_of([dict(lead(), events=None)]),
        "null reasons": body_of([lead()], reasons=None),
        "bad as_of": body_of([lead()], as_of="2026-06-31"),
        "no created_at": body_of([lead(created_at=None), {"contact": {"contact_id": "x"}}]),
        "unknown field": body_of([lead(first_name="Ann")]),
        "other type": body_of([lead([{"ts": "2026-01-01", "event_type": "other"}])]),
        "long text": body_of([lead(company_name="x" * 513)]),
        "512 characters": body_of([lead(company_name="\u00e9" * 512)]),
        "empty id": body_of([lead(contact_id="")]),
        "number id": body_of([lead(contact_id=5)]),
        # created after as_of: rejected; without as_of, up to T.CLOCK_SKEW after now is now
        "created after as_of": body_of([lead()], as_of="2024-12-31T23:59:59"),
        "one of many created after as_of": body_of([lead(contact_id=f"c{k}") for k in range(6)]
                                                   + [lead(created_at="2026-07-01")],
                                                   as_of="2026-06-30"),
        "created at as_of": body_of([lead(created_at="2026-06-30")] * 6, as_of="2026-06-30"),
        "created just after now": body_of([lead(created_at="2030-01-01T00:04:59Z")]),
        "some created just after now": body_of([lead(created_at=f"2030-01-01T00:0{k}:00")
                                                for k in range(5)] + [lead()] * 3),
        "created after now": body_of([lead(created_at="2030-01-01T00:05:01")]),
        "one of many created after now": body_of([lead()] * 7 + [lead(created_at="2030-01-01T01:00")]),
        # the limits and shapes of the whole body
        "too many leads": body_of(_many(1001)),
        "too many bad leads": body_of([{"contact": {"contact_id": ""}}] * 1001, as_of="x"),
        "many bad leads": body_of([lead(employees="x", contact_id=f"c{k}") for k in range(30)],
                                  as_of="x", reasons="x", extra=1),
        "no leads": body_of([], as_of="x"),
        "leads not a list": {"leads": {"contact": {"contact_id": "a"}}},
        "no leads key": {"as_of": "2026-01-01"},
        "only extras": {"leads": [lead()], "zz": [1, 2], "aa": None},
    }
    return [json.dumps(b).encode() for b in bodies.values()] + [
        b'{"leads": [{"contact": {"contact_id": "a", "employees": 1e400}}]}',
        b'{"leads": [{"contact": {"contact_id": "a", "employees": NaN}}]}',
        b'{"leads": [{"contact": {"contact_id": "a", "employees": 123456789012345678901234567890}}]}',
        b'{"leads": [{"contact": {"contact_id": "a"}}], "leads": []}',
        b'{"leads": [], "leads": [{"contact": {"contact_id": "a"}}]}',
        b'{"leads": [{"contact": {"contact_id": "\\ud800"}}]}',
        b'{"leads": [{"contact": {"contact_id": "a\xff"}}]}',
        b'{"leads": [' + b'{"contact": {"contact_id": ""}}, ' * 25 + b'{"contact": {"contact_id": "\xff"}}]}',
        b"[1, 2]", b"", b"{not json", b'{"leads": [{"contact": {"contact_id": "a"}} ',
        b'  {"leads": [{"contact": {"contact_id": "a"}}]}  ']


def one_call(body: bytes):
    """SCORE_REQUEST + to_columns of a body: (columns, reasons mode) or the exception."""
    from pydantic import ValidationError

    try:
        payload = T.SCORE_REQUEST.validate_json(body)
        return T.to_columns(payload, now=NOW), payload.get("reasons", "all")
    except (ValidationError, T.RequestError) as e:
        return e


def test_fast_decoder_takes_what_pydantic_takes_with_the_same_columns():
    """decode_columns either leaves a body to pydantic (None) or gives exactly the columns of
    SCORE_REQUEST + to_columns; it never takes a body that pydantic rejects."""
    taken = 0
    for body in tricky_bodies():
        slow = one_call(body)
        try:
            fast = T.decode_columns(body, now=NOW)
        except T.RequestError as e:  # a lead created after as_of, named as to_columns names it
            assert isinstance(slow, T.RequestError) and e.errors == slow.errors, body[:120]
            continue
        if fast is None:
            continue
        assert not isinstance(slow, Exception), body[:120]
        _same_columns(fast[0], slow[0])
        assert fast[1] == slow[1]
        taken += 1
    assert taken >= 10  # the usual shapes go the fast way


def _errors(e: Exception) -> list[tuple]:
    if isinstance(e, T.RequestError):
        return [(d["field"], d["type"], d["message"]) for d in e.errors]
    return [(tuple(d["loc"]), d["type"], d["msg"]) for d in
            e.errors(include_url=False, include_context=False, include_input=False)][:T.MAX_ERRORS]


def test_large_bodies_decoded_a_lead_at_a_time_answer_as_in_one_call():
    """decode_large (bodies above LARGE_BODY_BYTES, a lead per decoder call, in a worker
    thread) gives the columns, or the first MAX_ERRORS errors, of the one-call path."""
    from pydantic import ValidationError

    seen = set()
    for body in tricky_bodies():
        want = one_call(body)
        try:
            got = T.decode_large(body, now=NOW)
        except (ValidationError, T.BodyInvalid, T.RequestError) as e:
            assert isinstance(want, Exception), (body[:120], e)
            assert _errors(e) == _errors(want), body[:120]
            seen.add(type(e).__name__)
            continue
        assert not isinstance(want, Exception), body[:120]
        _same_columns(got[0], want[0])
        assert got[1] == want[1]
        seen.add("ok")
    assert seen == {"ok", "BodyInvalid", "ValidationError", "RequestError"}


def test_large_table_bodies_validated_a_row_at_a_time_answer_as_in_one_call():
    from pydantic import ValidationError

    row = {"Lead Key": "L-1", "Pages Seen": "5", "Minutes On Site": 12.5, "Won": True, "x": None}
    bodies = [{"rows": [row] * 30, "reasons": "top"}, {"rows": [row, {}, dict(row, y=[1])]},
              {"rows": [dict(row, z="x" * 5000)] * 25, "reasons": "x", "q": 1},
              {"rows": [row] * 1001}, {"rows": []}, {"rows": {"a": 1}}, {"reasons": "all"},
              {"rows": [{"n": float(i)} for i in range(40)]}]
    seen = set()
    for body in [json.dumps(b).encode() for b in bodies] + [b'{"rows": [{"a": NaN}]}', b"[]"]:
        try:
            want = T.TABLE_REQUEST.validate_json(body)
        except ValidationError as e:
            want = e
        try:
            got = T.validate_table_large(body)
        except (ValidationError, T.BodyInvalid) as e:
            assert isinstance(want, Exception) and _errors(e) == _errors(want), body[:100]
            seen.add("error")
            continue
        assert got == want
        seen.add("ok")
    assert seen == {"ok", "error"}


def test_leads_created_after_as_of_are_rejected_by_name():
    """The nightly batch leaves out a lead created after the as-of date
    (``created_after_as_of``): a request naming such a lead is bad input, the field named as
    every other field (``leads.1.contact.created_at``); without as_of, a creation up to
    CLOCK_SKEW after now (a CRM's clock slightly ahead) counts as now."""
    def lead(i, created):
        return {"contact": {"contact_id": f"c{i}", "created_at": created}}

    body = json.dumps(body_of([lead(0, "2026-01-01"), lead(1, "2026-03-01T00:00:01Z"),
                               lead(2, "2026-03-01")], as_of="2026-03-01")).encode()
    for e in (one_call(body), pytest.raises(T.RequestError, T.decode_large, body, now=NOW).value):
        assert isinstance(e, T.RequestError)
        assert [(d["field"], d["type"]) for d in e.errors] == [
            ("leads.1.contact.created_at", "created_after_as_of")]
    fast = pytest.raises(T.RequestError, T.decode_columns, body, now=NOW).value
    assert fast.errors == one_call(body).errors  # named on the fast path, as pydantic's names it
    # with a timestamp pydantic rejects, the fast path leaves the body to it (the answer
    # names that timestamp); with one it leaves to pydantic, the answer is the same either way
    for ts in ("yesterday", "2026-02-01T10:00:00+02:00", "2026-02-30"):
        late_and_more = json.loads(body)
        late_and_more["leads"][2]["events"] = [{"ts": ts, "event_type": "chat"}] * 6
        late_and_more = json.dumps(late_and_more).encode()
        want = one_call(late_and_more)
        try:
            assert T.decode_columns(late_and_more, now=NOW) is None, ts
        except T.RequestError as e:
            assert isinstance(want, T.RequestError) and e.errors == want.errors, ts
        assert isinstance(want, T.RequestError) == (ts != "yesterday"), ts
    soon = NOW + T.CLOCK_SKEW
    cols, _ = one_call(json.dumps(body_of([lead(0, soon.isoformat()), lead(1, "2029-01-01")])).encode())
    assert cols.created_ns.tolist() == [int((NOW - dt.datetime(1970, 1, 1)).total_seconds() * 1e9),
                                        int((dt.datetime(2029, 1, 1) - dt.datetime(1970, 1, 1)).total_seconds() * 1e9)]
    late = one_call(json.dumps(body_of([lead(0, (soon + dt.timedelta(seconds=1)).isoformat())])).encode())
    assert isinstance(late, T.RequestError) and late.errors[0]["field"] == "leads.0.contact.created_at"
    explicit = one_call(json.dumps(body_of([lead(0, "2026-03-01T00:01:00")], as_of="2026-03-01")).encode())
    assert isinstance(explicit, T.RequestError)  # no tolerance for an explicit as_of


def test_column_timestamps_equal_pythons():
    """The column-wise timestamp check and parse (numpy or calendar arithmetic) equals
    datetime's, shape by shape, leap days and range limits included."""
    rng = np.random.default_rng(7)
    lo, hi = (np.datetime64(d, "s").astype(np.int64) for d in ("1900-01-01", "2199-12-31T23:59:59"))
    base = np.array(rng.integers(lo, hi, 3000), dtype="datetime64[s]").astype(str).tolist()
    for form in (str, lambda v: v.replace("T", " "), lambda v: v[:10], lambda v: v[:16],
                 lambda v: v + "Z", lambda v: v[:16] + "Z"):
        values = [form(v) for v in base]
        want = [T._one_us(v) for v in values]
        for n in (T._FEW, 40, 1000, 3000):  # one by one, numpy's parser, arithmetic
            assert T._plain_us(values[:n]).tolist() == want[:n]
    days = np.arange(np.datetime64("1899-12-20"), np.datetime64("2200-01-10")).astype(str).tolist()
    for i in range(0, len(days), 150):
        chunk = days[i:i + 150]
        want = [T._one_us(v) for v in chunk]
        if all(T._MIN_US <= v <= T._MAX_US for v in want):
            assert T._plain_us(chunk).tolist() == want
        else:
            with pytest.raises(T._NotPlain):
                T._plain_us(chunk)
    for value in ("2023-02-29", "2100-02-29", "2026-04-31", "2026-01-01T10:60", "2026-00-10"):
        for n in (8, 300):
            with pytest.raises(T._NotPlain):
                T._plain_us([value] * n)


# -- the online feature path and the fast scorer (no server) ---------------------------------------
def test_online_hygiene_answers_like_the_batch():
    emails = ["ann@acme-industries.com", " Bob@GMAIL.com ", "x@mailinator.com", "x@", "", "a..b@x.com",
              '"q"@x.com', "a@localhost", "a@x--y.com", "a@x.c0m", "n/a", "a" * 65 + "@x.com",
              "züri@bank.ch", None]
    for e in emails:
        one = _email_quality(np.array([e], dtype=object), 1)[0]
        batch = hygiene.email_quality(pd.Series([e], dtype=object))[0]
        assert one == batch, e
    cases = [("+49 30 901820", None), ("030 901820", "DE"), ("(650) 253-0000", "us"), ("12", "FR"),
             ("+44 20 7946 0958", "UK"), ("+1 650-253-0000", "ZZ"), ("abc", None), ("", "DE")]
    for phone, country in cases:
        one = _has_phone(np.array([phone], dtype=object), np.array([country], dtype=object), 1,
                         FeatureConfig())[0]
        batch = hygiene.phone_valid(pd.Series([phone], dtype=object), pd.Series([country], dtype=object),
                                    default_region="US")[0]
        assert bool(one) == bool(batch), (phone, country)


@pytest.mark.slow
def test_online_features_and_fast_scorer_equal_the_batch_path(trained):
    """Lead records -> columns -> kernels -> FastScorer equals Snapshotter.features_at +
    LeadModel.score, one lead at a time and all together; unseen categories included."""
    from training.fastpath import CompiledEncoder, FastScorer

    base, model = trained.base, trained.model
    ids = sample_ids(base, 40)
    as_of = base.until
    batch = Snapshotter(base.contacts, base.events, base.stages).features_at(as_of, eligible_only=False)
    batch = batch.set_index("contact_id", drop=False).loc[ids].reset_index(drop=True)
    payload = T.SCORE_REQUEST.validate_json(json.dumps(
        body_of([lead_record(base, i) for i in ids], as_of=as_of.isoformat())))
    cols = T.to_columns(payload, now=dt.datetime(2030, 1, 1))
    online = lead_feature_columns(cols.contacts, cols.created_ns, cols.events, cols.stages,
                                  as_of=cols.as_of, config=model.feature_config)
    for f in schema.FEATURES:
        got, want = np.asarray(online[f]), batch[f].to_numpy()
        if got.dtype.kind == "f":
            assert np.array_equal(got, want.astype(float), equal_nan=True), f
        else:
            assert [None if pd.isna(x) else x for x in want] == list(got), f
    records = [dict(lead_record(base, i)["contact"]) for i in ids]
    evs = [dict(e, contact_id=i) for i in ids for e in lead_record(base, i)["events"]]
    sts = [dict(s, contact_id=i) for i in ids for s in lead_record(base, i)["stages"]]
    old = features_for_leads(records, evs, sts, as_of=as_of)
    pd.testing.assert_frame_equal(old.drop(columns=["as_of"]), batch.drop(columns=["as_of"]),
                                  check_dtype=False)

    fast = FastScorer(model)
    assert np.array_equal(fast.encoder.matrix(online, len(ids)), model.matrix(batch), equal_nan=True)
    want = model.score(batch, scored_at=pd.Timestamp("2030-01-01"), reasons=True)
    many = fast.score_columns(online, ids, scored_at="t", reasons=True)
    ones = [fast.score_columns({k: np.asarray(v)[k2:k2 + 1] for k, v in online.items()}, [i],
                               scored_at="t", reasons=True)[0] for k2, i in enumerate(ids)]
    # a few leads (an HTTP batch): predicted row by row up to 4, explained row by row up to 16
    few = [g for lo, hi in ((0, 2), (2, 6), (6, 22), (22, 40))
           for g in fast.score_columns({k: np.asarray(v)[lo:hi] for k, v in online.items()},
                                       ids[lo:hi], scored_at="t", reasons=True)]
    for got in (many, ones, few):
        assert [g["probability"] for g in got] == want["probability"].tolist()
        assert [g["score"] for g in got] == want["score"].tolist()
        assert [g["band"] for g in got] == want["band"].tolist()
        assert [g["reasons"] for g in got] == list(want["reasons"])
    top = model.score(batch, scored_at=pd.Timestamp("2030-01-01"),
                      reasons=want["band"].isin(["A", "B"]).to_numpy())
    assert [g["reasons"] for g in fast.score_columns(online, ids, scored_at="t", reasons="top")] \
        == list(top["reasons"])

    # categories never seen in training, and missing ones, code exactly as the pipeline does
    odd = batch.head(3).copy()
    odd.loc[0, "industry"] = "Asteroid mining"
    odd.loc[1, "country"] = None
    odd.loc[2, "lead_source"] = "carrier_pigeon"
    odd.loc[2, "stage"] = "mql"
    columns = {c: odd[c].astype(object).where(odd[c].notna(), None).to_numpy(dtype=object)
               if c in schema.CATEGORICAL_FEATURES else odd[c].to_numpy(dtype=float)
               for c in schema.FEATURES}
    encoder = CompiledEncoder.from_model(model)
    assert np.array_equal(encoder.matrix(columns, 3), model.matrix(odd), equal_nan=True)
    assert np.array_equal(encoder.row({k: v[:1] for k, v in columns.items()}), model.matrix(odd)[0], equal_nan=True)


@pytest.mark.slow
def test_a_failing_prediction_is_answered_by_the_rules(trained, store, monkeypatch):
    """Fault injection: the model's fast path raises -> 200 with scorer "rules", logged by kind."""
    from serving.service import _decode, _now

    svc, state = _service_of(trained, store, monkeypatch)

    def boom(*args, **kwargs):
        raise FloatingPointError("injected")

    monkeypatch.setattr(state.fast, "score_columns", boom)
    ids = sample_ids(trained.base, 3)
    body = json.dumps(body_of([lead_record(trained.base, i) for i in ids])).encode()
    now = _now()
    cols, mode = _decode(body, now)
    out = json.loads(svc.score_columns(cols, mode, now, state))
    assert [s["contact_id"] for s in out["scores"]] == ids
    assert {s["scorer"] for s in out["scores"]} == {"rules"}
    assert all(0 <= s["probability"] <= 1 and s["band"] in schema.BANDS for s in out["scores"])
    assert svc._ready.wait(120)  # let its start-up load finish before other tests use MLflow


def _without_times(answer: bytes | object) -> object:
    """An answer's JSON without ``scored_at`` (the moment it was scored), or the status and
    body of a 4xx."""
    if not isinstance(answer, bytes):
        return answer.status_code, json.loads(answer.body)
    out = json.loads(answer)
    for s in out["scores"]:
        s.pop("scored_at")
    return out


def _service_of(trained, store, monkeypatch):
    """The service class's instance (no server) and a state answering with the trained model."""
    from serving.service import LeadScoringService, ScorerState, _rules_of

    monkeypatch.setenv("LEADSCORE_WORKDIR", str(store))
    monkeypatch.setenv("LEADSCORE_RELOAD_SECONDS", "0")
    svc = LeadScoringService.inner()
    state = ScorerState(trained.model, None, "now")
    state.rules = _rules_of(trained.model, None)
    return svc, state


def _pending(bodies: list[dict], state) -> list:
    from serving.service import _Pending

    items = []
    for b in bodies:
        raw = json.dumps(b).encode()
        items.append(_Pending(raw, T.decode_request(raw), state))
    assert all(item.request is not None for item in items)
    return items


def _spy_merges(monkeypatch) -> list[tuple[int, bool]]:
    """(requests, merged or not) of each ``merged_columns`` call from now on."""
    merged, merge = [], T.merged_columns

    def spy(requests, *, now):
        cols = merge(requests, now=now)
        merged.append((len(requests), cols is not None))
        return cols

    monkeypatch.setattr(T, "merged_columns", spy)
    return merged


def _submit_together(svc, items) -> tuple[list, list[int]]:
    """The answers to ``items`` submitted to the batcher in one pass of the loop, and the
    number of items of each call of its handler."""
    import asyncio

    sizes, handle = [], svc.score_batch

    async def recorded(batch):
        sizes.append(len(batch))
        return await handle(batch)

    async def together():
        svc.batcher._handle = recorded
        return await asyncio.gather(*(svc.batcher.submit(item) for item in items))

    return asyncio.run(together()), sizes


def test_requests_received_together_answer_as_each_alone(trained, store, monkeypatch):
    """Small requests received in one pass of the event loop are scored together
    (``LeadScoringService.score_batch``): each gets the answer it gets alone. Plain requests
    sharing as_of and reasons mode are merged (one featurisation, one scoring call); other
    as_of values, an omitted as_of and each reasons mode make groups of their own; a group
    holding a lead created after as_of and a timestamp with an offset is answered request
    by request (the late lead's own 422 names its field); and the batcher put them all in
    one call."""
    import asyncio

    from serving.service import _now

    svc, state = _service_of(trained, store, monkeypatch)
    base = trained.base
    ids = sample_ids(base, 8, seed=21)
    leads = [lead_record(base, i) for i in ids]
    until = base.until.isoformat()
    until_z = until + "Z"  # the same instant, another as_of string: a group of its own
    earlier = (base.until - pd.Timedelta(days=40)).isoformat()
    late = {"contact": {"contact_id": "late", "created_at": (base.until + pd.Timedelta(days=1)).isoformat()}}
    offset = json.loads(json.dumps(leads[2]))
    for e in offset["events"]:
        e["ts"] = pd.Timestamp(e["ts"]).tz_localize("UTC").tz_convert("Europe/Paris").isoformat()
    converted = {"contact": {"contact_id": "won", "created_at": "2020-01-01"},
                 "stages": [{"ts": "2020-02-01", "stage": "opportunity"}]}
    bodies = [
        # merged: (until, all)
        body_of([leads[0]], as_of=until), body_of([leads[3]], as_of=until),
        body_of(leads[4:7], as_of=until), body_of([converted], as_of=until),
        body_of([leads[7], leads[1]], as_of=until),
        # merged: (until, top)
        body_of([leads[1]], as_of=until, reasons="top"), body_of([leads[5]], as_of=until, reasons="top"),
        # alone: (until, none), (earlier, all), (None, all)
        body_of([leads[2]], as_of=until, reasons="none"), body_of([leads[7]], as_of=earlier),
        body_of([leads[5]]),
        # (until_z, all): a late lead and an offset timestamp, so request by request
        body_of([leads[0], late], as_of=until_z), body_of([offset], as_of=until_z),
        body_of([leads[6]], as_of=until_z),
    ]
    items = _pending(bodies, state)
    now = _now()
    alone = [_without_times(asyncio.run(svc.score_alone(item, now))) for item in items]
    merged = _spy_merges(monkeypatch)
    answers, sizes = _submit_together(svc, items)
    batched = [_without_times(a) for a in answers]
    assert sizes == [len(items)]  # one call: the bodies are far below the batch's byte cap
    assert sorted(merged) == [(2, True), (3, False), (5, True)]
    for i, (got, want) in enumerate(zip(batched, alone)):
        if i == 9:  # as_of omitted: now, a moment later in the batch
            assert got["as_of"] >= want["as_of"]
            got["as_of"] = want["as_of"]
        assert got == want, i
    assert [s["contact_id"] for s in batched[2]["scores"]] == ids[4:7]
    assert [s["contact_id"] for s in batched[4]["scores"]] == [ids[7], ids[1]]
    assert batched[0]["scores"][0]["reasons"] and batched[7]["scores"][0]["reasons"] == []
    assert batched[3]["scores"][0]["not_eligible"] == "converted"
    assert batched[8]["as_of"] != batched[0]["as_of"]
    assert batched[10][0] == 422 and batched[10][1]["detail"][0]["field"] == "leads.1.contact.created_at"
    assert batched[11] == batched[7] | {"as_of": batched[11]["as_of"], "scores": [
        dict(batched[7]["scores"][0], reasons=batched[11]["scores"][0]["reasons"])]}
    assert {s["scorer"] for b in batched if isinstance(b, dict) for s in b["scores"]} == {"model"}
    assert svc._ready.wait(120)


def test_a_model_failing_on_one_request_of_a_batch_fails_only_that_one(trained, store, monkeypatch):
    """The model raises on one lead: scored together, the others keep the model's scores
    (each request is then scored alone); the one it fails on gets the rules', as alone."""
    svc, state = _service_of(trained, store, monkeypatch)
    ids = sample_ids(trained.base, 4, seed=23)
    score_columns = state.fast.score_columns

    def fails_on_the_last(features, contact_ids, **kwargs):
        if ids[-1] in contact_ids:
            raise FloatingPointError("injected")
        return score_columns(features, contact_ids, **kwargs)

    monkeypatch.setattr(state.fast, "score_columns", fails_on_the_last)
    items = _pending([body_of([lead_record(trained.base, i)], as_of=trained.base.until.isoformat())
                      for i in ids], state)
    merged = _spy_merges(monkeypatch)
    answers = [json.loads(a)["scores"][0] for a in _submit_together(svc, items)[0]]
    assert merged == [(4, True)]  # scored together first, then each alone
    assert [a["contact_id"] for a in answers] == ids
    assert [a["scorer"] for a in answers] == ["model", "model", "model", "rules"]
    assert svc._ready.wait(120)


def test_a_batch_call_takes_at_most_64_leads(trained, store, monkeypatch):
    """Tiny requests (a contact each) arriving together are cut into calls of at most 64
    leads, whatever their bytes: the event loop is never held by a thousand leads."""
    svc, state = _service_of(trained, store, monkeypatch)
    items = _pending([body_of([{"contact": {"contact_id": f"c{k}"}}], reasons="none")
                      for k in range(150)], state)
    answers, sizes = _submit_together(svc, items)
    answers = [json.loads(a)["scores"][0]["contact_id"] for a in answers]
    assert answers == [f"c{k}" for k in range(150)]
    # 4,096 bytes a lead plus its body's ~80: 62 of them fit in 256 KB
    assert sum(sizes) == 150 and max(sizes) <= 64 and sizes[0] >= 60 and len(sizes) == 3
    assert svc._ready.wait(120)


@pytest.mark.slow
def test_concurrent_requests_answer_as_sequential_ones(server, trained):
    """The real server under concurrent single-lead requests (scored together when they
    arrive together) answers each as it answers it alone."""
    import asyncio

    base = trained.base
    ids = sample_ids(base, 24, seed=13)
    bodies = [body_of([lead_record(base, i)], as_of=base.until.isoformat(),
                      reasons=("all", "top", "none")[k % 3]) for k, i in enumerate(ids)]
    with server.client() as c:
        alone = [c.post("/score", json=b) for b in bodies]

    async def together():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as c:
            return await asyncio.gather(*(c.post("/score", json=b) for b in bodies * 3))

    answers = asyncio.run(together())
    assert all(r.status_code == 200 for r in alone + answers)
    want = [_without_times(r.content) for r in alone] * 3
    assert [_without_times(r.content) for r in answers] == want


def test_the_alias_back_on_the_serving_version_clears_champion_not_loaded(monkeypatch):
    """Version 2 failed to load while version 1 answers (``champion_not_loaded``); the alias
    moved back to version 1: GET /model no longer names version 2, and the poll would load
    version 2 at once if it were promoted again (no backoff left)."""
    import threading
    from types import SimpleNamespace

    from serving.service import LeadScoringService

    cls = LeadScoringService.inner
    svc = cls.__new__(cls)  # no start-up load: the reload logic alone
    svc.model_uri, svc.reload_seconds, svc._reload_lock = None, 30.0, threading.Lock()
    svc._failed_version, svc._retries, svc._retry_at = "2", 3, time.monotonic() + 600
    state = SimpleNamespace(version="1", info=lambda: {"version": "1"})
    svc._state = state
    for champion, shown in (("2", {"version": "1", "champion_not_loaded": "2"}),
                            (None, {"version": "1", "champion_not_loaded": "2"}),  # unreadable
                            ("1", {"version": "1"})):
        monkeypatch.setattr(svc, "_champion_version", lambda c=champion: (c, None))
        assert svc.reload_report(force=False) == (state, None)
        assert svc.model_info(state) == shown, champion
    assert (svc._failed_version, svc._retries) == (None, 0)


# -- the real server --------------------------------------------------------------------------------
@pytest.mark.slow
def test_health_readiness_and_model(server):
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    with server.client() as c:
        info = c.get("/model").json()
    assert info["scorer"] == "model" and info["name"] == "lead-scoring" and info["version"] == "1"
    assert set(info["band_thresholds"]) == {"A", "B", "C"} and info["trained_at"]


@pytest.mark.slow
def test_scores_in_request_order_and_same_as_batch(server, trained, store):
    """A sample of demo leads scores identically over HTTP and through the batch path."""
    from training.registry import load_scorer
    from training.tracking import configure_tracking

    base = trained.base
    ids = sample_ids(base, 25, seed=5)
    leads = [lead_record(base, i) for i in ids]
    with server.client() as c:
        r = c.post("/score", json=body_of(leads, as_of=base.until.isoformat()))
        singles = [c.post("/score", json=body_of([lead], as_of=base.until.isoformat())).json()["scores"][0]
                   for lead in leads[:5]]
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert [s["contact_id"] for s in scores] == ids
    assert {tuple(s)[:len(schema.OUTPUT_COLUMNS)] for s in scores} == {tuple(schema.OUTPUT_COLUMNS)}

    configure_tracking(store)  # the store the server reads
    scorer = load_scorer(num_threads=1)
    assert scorer.scorer == "model"
    feats = Snapshotter(base.contacts, base.events, base.stages).features_at(base.until, eligible_only=False)
    feats = feats.set_index("contact_id", drop=False).loc[ids].reset_index(drop=True)
    _not_eligible_as_batch(scores, feats)
    want = scorer.score(feats, scored_at=pd.Timestamp.now(), reasons=True)
    assert [s["probability"] for s in scores] == want["probability"].tolist()
    assert [s["score"] for s in scores] == want["score"].tolist()
    assert [s["band"] for s in scores] == want["band"].tolist()
    assert [s["reasons"] for s in scores] == [json.loads(json.dumps(x)) for x in want["reasons"]]
    assert {s["scorer"] for s in scores} == {"model"} and {s["model_version"] for s in scores} == {"1"}
    assert singles == [dict(s, scored_at=one["scored_at"]) for s, one in zip(scores[:5], singles)]


def _not_eligible_as_batch(scores: list[dict], feats: pd.DataFrame) -> None:
    """Each score says ``not_eligible`` exactly where the nightly batch leaves the lead out
    (:func:`serving.batch.eligibility`), with the reason it counts it under."""
    from serving.batch import eligibility

    keep, _ = eligibility(feats)
    stage = feats["stage"].to_numpy(dtype=object)
    want = [None if k else ("converted" if s in schema.CONVERTED_STAGES else "disqualified")
            for k, s in zip(keep, stage)]
    assert [s.get("not_eligible") for s in scores] == want
    assert all(set(s) <= {*schema.OUTPUT_COLUMNS, "not_eligible"} for s in scores)


@pytest.mark.slow
def test_leads_the_batch_would_not_score(server, trained):
    """Converted (opportunity or later) and disqualified leads are scored, each score saying
    why the nightly batch leaves the lead out (``not_eligible``, batch's reasons; absent for
    an eligible lead), by the stage at as_of, one lead or many, model or rules; a lead
    created after as_of is a 422 naming its ``created_at``."""
    base = trained.base
    as_of = base.until
    feats = Snapshotter(base.contacts, base.events, base.stages).features_at(as_of, eligible_only=False)
    picks = []
    for stage in ("opportunity", "customer", "disqualified", "mql", "lead", "cold"):
        picks += feats.loc[(feats["stage"] == stage) & (feats["contact_age_days"] >= 0),
                           "contact_id"].head(3).tolist()
    rows = feats.set_index("contact_id", drop=False).loc[picks].reset_index(drop=True)
    leads = [lead_record(base, i) for i in picks]
    later = {"contact": {"contact_id": "later", "created_at": "2026-01-01T00:00:00Z"},
             "stages": [{"ts": "2026-01-02T00:00:00Z", "stage": "customer"}]}
    with server.client() as c:
        r = c.post("/score", json=body_of(leads, as_of=as_of.isoformat()))
        singles = [c.post("/score", json=body_of([lead], as_of=as_of.isoformat())).json()["scores"][0]
                   for lead in leads]
        late = c.post("/score", json=body_of(leads[:2] + [later], as_of="2025-12-31T23:00:00"))
        schema_ = c.get("/openapi.json").json()
    assert r.status_code == 200, r.text
    assert {"converted", "disqualified", None} == {s.get("not_eligible") for s in r.json()["scores"]}
    _not_eligible_as_batch(r.json()["scores"], rows)
    _not_eligible_as_batch(singles, rows)
    assert late.status_code == 422, late.text
    assert [(d["field"], d["type"]) for d in late.json()["detail"]] == [
        ("leads.2.contact.created_at", "created_after_as_of")]
    prop = schema_["components"]["schemas"]["LeadScore"]["properties"]["not_eligible"]
    assert {"converted", "disqualified"} <= set(json.dumps(prop).replace('"', " ").split())
    assert "not_eligible" not in schema_["components"]["schemas"]["LeadScore"].get("required", [])
    T.ScoreResponse.model_validate(r.json())  # the response model clients read


@pytest.mark.slow
def test_large_bodies_answer_as_small_ones(server, trained, kit):
    """A body above LEADSCORE_LARGE_BODY_BYTES (here: padded with JSON whitespace) is decoded a lead at
    a time in a worker thread and answers what the same request answers in a small body,
    scores or errors."""
    base = trained.base
    ids = sample_ids(base, 6, seed=4)
    small = json.dumps(body_of([lead_record(base, i) for i in ids], as_of=base.until.isoformat(),
                               reasons="top")).encode()
    bad = json.dumps(body_of([{"contact": {"contact_id": "a", "employees": "x"}},
                              {"contact": {"contact_id": "b", "created_at": "2031-01-01"}}])).encode()
    pad = b" " * (kit.large_body + 1)
    headers = {"Content-Type": "application/json"}
    with server.client() as c:
        answers = [c.post("/score", content=body, headers=headers)
                   for body in (small, small[:-1] + pad + b"}", bad, bad[:-1] + pad + b"}")]
    assert [a.status_code for a in answers] == [200, 200, 422, 422]
    one, big = (a.json()["scores"] for a in answers[:2])
    assert [dict(s, scored_at=None) for s in one] == [dict(s, scored_at=None) for s in big]
    assert answers[2].json() == answers[3].json()
    assert {s["scorer"] for s in big} == {"model"}


@pytest.mark.slow
def test_reasons_modes_and_big_requests(server, trained):
    base = trained.base
    ids = sample_ids(base, 120, seed=9)  # > 20 leads: scored off the event loop
    leads = [lead_record(base, i) for i in ids]
    with server.client() as c:
        none = c.post("/score", json=body_of(leads, reasons="none")).json()["scores"]
        top = c.post("/score", json=body_of(leads, reasons="top")).json()["scores"]
        bare = c.post("/score", json={"leads": [{"contact": {"contact_id": "new-lead"}}]}).json()
    assert [s["contact_id"] for s in none] == ids and all(s["reasons"] == [] for s in none)
    assert all(bool(s["reasons"]) == (s["band"] in ("A", "B")) for s in top)
    assert [s["probability"] for s in top] == [s["probability"] for s in none]
    assert bare["scores"][0]["scorer"] == "model" and bare["scores"][0]["reasons"]


@pytest.mark.slow
def test_offsets_and_naive_timestamps_are_the_same_instant(server, trained):
    lead = lead_record(trained.base, sample_ids(trained.base, 1, seed=1)[0])
    shifted = json.loads(json.dumps(lead))
    for e in shifted["events"]:
        t = dt.datetime.fromisoformat(e["ts"]) + dt.timedelta(hours=2)
        e["ts"] = t.isoformat() + "+02:00"
    as_of = trained.base.until.isoformat()
    with server.client() as c:
        a = c.post("/score", json=body_of([lead], as_of=as_of)).json()["scores"][0]
        b = c.post("/score", json=body_of([shifted], as_of=as_of + "Z")).json()["scores"][0]
    assert (a["probability"], a["reasons"]) == (b["probability"], b["reasons"])


@pytest.mark.slow
def test_api_keys(server, kit):
    body = body_of([{"contact": {"contact_id": "x"}}])
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": kit.api_key}):
        r = httpx.post(f"{server.url}/score", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["detail"][0]["field"] == "authorization"
        assert httpx.get(f"{server.url}/model", headers=headers).status_code == 401
    for key in ("test-key-1", "test-key-2"):
        assert httpx.post(f"{server.url}/score", json=body,
                          headers={"Authorization": f"Bearer {key}"}).status_code == 200
    for scheme in ("bearer", "BEARER"):  # RFC 7235: the scheme is case-insensitive
        headers = {"Authorization": f"{scheme} {kit.api_key}"}
        assert httpx.post(f"{server.url}/score", json=body, headers=headers).status_code == 200
        assert httpx.get(f"{server.url}/model", headers=headers).status_code == 200
    # a key with non-ASCII characters: accepted in UTF-8, refused in latin-1 (every character
    # of the key exists there: a comparison of Starlette's latin-1 text would accept it), on
    # /score and on /model alike, both comparing the received bytes
    utf8 = {"Authorization": b"Bearer " + kit.non_ascii_key.encode()}
    latin1 = {"Authorization": b"Bearer " + kit.non_ascii_key.encode("latin-1")}
    assert latin1 != utf8
    assert httpx.post(f"{server.url}/score", json=body, headers=utf8).status_code == 200
    assert httpx.get(f"{server.url}/model", headers=utf8).status_code == 200
    assert httpx.post(f"{server.url}/score", json=body, headers=latin1).status_code == 401
    assert httpx.get(f"{server.url}/model", headers=latin1).status_code == 401


def _many(n: int) -> list[dict]:
    return [{"contact": {"contact_id": f"c{i}"}} for i in range(n)]


BAD_INPUTS = {
    "wrong type": (body_of([{"contact": {"contact_id": "a", "employees": "many"}}]),
                   "leads.0.contact.employees"),
    "missing contact_id": (body_of([{"contact": {"email": "a@b.com"}}]), "leads.0.contact.contact_id"),
    "empty contact_id": (body_of([{"contact": {"contact_id": ""}}]), "leads.0.contact.contact_id"),
    "unknown event type": (body_of([{"contact": {"contact_id": "a"},
                                     "events": [{"ts": "2026-01-01T00:00:00Z", "event_type": "tweet"}]}]),
                           "leads.0.events.0.event_type"),
    "unparseable ts": (body_of([{"contact": {"contact_id": "a"},
                                 "events": [{"ts": "yesterday", "event_type": "chat"}]}]),
                       "leads.0.events.0.ts"),
    "no such date": (body_of([{"contact": {"contact_id": "a"},
                               "events": [{"ts": "2026-01-01", "event_type": "chat"},
                                          {"ts": "2026-02-30T10:00:00", "event_type": "chat"}]}]),
                     "leads.0.events.1.ts"),
    "ts out of range": (body_of([{"contact": {"contact_id": "a"},
                                  "stages": [{"ts": "2999-01-01", "stage": "mql"}]}]),
                        "leads.0.stages.0.ts"),
    "unknown stage": (body_of([{"contact": {"contact_id": "a"},
                                "stages": [{"ts": "2026-01-01", "stage": "hot"}]}]),
                      "leads.0.stages.0.stage"),
    "bad as_of": (body_of([{"contact": {"contact_id": "a"}}], as_of="soon"), "as_of"),
    "unknown field": (body_of([{"contact": {"contact_id": "a", "first_name": "Ann"}}]),
                      "leads.0.contact.first_name"),
    "no leads": (body_of([]), "leads"),
    "too many leads": (body_of(_many(1001)), "leads"),
    "too many events": (body_of([{"contact": {"contact_id": "a"},
                                  "events": [{"ts": "2026-01-01", "event_type": "chat"}] * 2001}]),
                        "leads.0.events"),
    "not an object": ([1, 2, 3], "body"),
    "bad reasons mode": (body_of([{"contact": {"contact_id": "a"}}], reasons="some"), "reasons"),
    "created after as_of": (body_of([{"contact": {"contact_id": "a"}},
                                     {"contact": {"contact_id": "b", "created_at": "2026-03-02"}}],
                                    as_of="2026-03-01T23:59:59Z"), "leads.1.contact.created_at"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_naming_the_field(server, case):
    body, field = BAD_INPUTS[case]
    with server.client() as c:
        r = c.post("/score", json=body)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]]


@pytest.mark.slow
def test_bodies_that_are_not_json_or_too_large(server, kit):
    with server.client() as c:
        for content in (b"{not json", b"", "ünïcode".encode("latin-1"), b"\x00\x01"):
            r = c.post("/score", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and r.json()["detail"][0]["field"] == "body", content
        big = b'{"leads": [' + b" " * (kit.max_body + 10) + b"]}"
        r = c.post("/score", content=big)
        assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"

        def chunks():  # no Content-Length: the limit holds while streaming
            for _ in range(40):
                yield b" " * 50_000

        assert c.post("/score", content=chunks()).status_code == 413
        assert c.get("/healthz").status_code == 200  # the worker survived all of it


@pytest.mark.slow
def test_no_personal_data_in_logs(server):
    lead = {"contact": {"contact_id": "pii-probe", "email": "very.private@acme-industries.com",
                        "phone": "+49 30 901820", "company_name": "Secret GmbH"}}
    with server.client() as c:
        assert c.post("/score", json=body_of([lead])).status_code == 200
        assert c.post("/score", json=body_of([dict(lead, contact=dict(lead["contact"],
                                                                      employees="x"))])).status_code == 422
        r = c.post("/score", json=body_of([dict(lead, contact=dict(lead["contact"], employees="x"))]))
    assert "very.private" not in r.text and "Secret" not in r.text
    time.sleep(0.5)
    log = server.log_text()
    for secret in ("very.private", "901820", "Secret GmbH", "pii-probe"):
        assert secret not in log


@pytest.mark.slow
def test_openapi_property_based_no_5xx(server):
    """Schemathesis against the service's OpenAPI document: valid and invalid requests,
    bounded examples, never a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation import GenerationMode

    schema_ = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    runs = (("/score", "POST", GenerationMode.POSITIVE, 50),
            ("/score", "POST", GenerationMode.NEGATIVE, 50),
            ("/model", "GET", GenerationMode.POSITIVE, 3))
    seen: dict[int, int] = {}
    for path, method, mode, examples in runs:
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=schema_[path][method].as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(base_url=server.url, headers=server.headers, timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (mode, response.status_code, response.text[:300])

        check()
    assert seen.get(200) and any(400 <= s < 500 for s in seen), seen  # both kinds were exercised
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.slow
def test_empty_registry_then_a_new_champion_without_restart(trained, servers, empty_store, kit):
    """No registered model: the rules answer; a champion registered later is picked up by
    the alias poll without restart, /reload answers the current champion, and a newer
    champion that does not load leaves the model answering."""
    srv = servers["empty"]
    kit.wait_ready(srv)
    with srv.client() as c:
        info = c.get("/model").json()
        assert info["scorer"] == "rules" and "no model registered as 'lead-scoring' yet" in info["reason"]
        r = c.post("/score", json=body_of([{"contact": {"contact_id": "a"}}]))
        assert r.status_code == 200 and r.json()["scores"][0]["scorer"] == "rules"
        assert "not_eligible" not in r.json()["scores"][0]
        converted = {"contact": {"contact_id": "b"}, "stages": [{"ts": "2026-01-01", "stage": "customer"}]}
        r = c.post("/score", json=body_of([converted], as_of="2026-02-01"))
        assert r.json()["scores"][0]["scorer"] == "rules"
        assert r.json()["scores"][0]["not_eligible"] == "converted"
        version = kit.register(empty_store, trained.model)
        deadline = time.monotonic() + 60
        while c.get("/model").json()["scorer"] != "model" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert c.get("/model").json()["version"] == version
        r = c.post("/score", json=body_of([{"contact": {"contact_id": "a"}}]))
        assert r.json()["scores"][0]["scorer"] == "model"
        assert c.post("/reload").json()["version"] == version
        # a newer champion whose artifact is broken does not take the model down
        broken = kit.register(empty_store, trained.model, corrupt=True)
        deadline = time.monotonic() + 60
        while "champion_not_loaded" not in c.get("/model").json() and time.monotonic() < deadline:
            time.sleep(0.5)
        info = c.get("/model").json()
        assert info["version"] == version and info["champion_not_loaded"] == broken
        assert c.post("/score", json=body_of([{"contact": {"contact_id": "a"}}])).json()["scores"][0]["scorer"] == "model"
    assert "falling back to the rule scorer" in srv.log_text()


@pytest.mark.slow
def test_corrupt_artifact_falls_back_to_rules(trained, servers):
    srv = servers["corrupt"]
    with srv.client() as c:
        for _ in range(600):
            if httpx.get(f"{srv.url}/readyz").status_code == 200:
                break
            time.sleep(0.2)
        info = c.get("/model").json()
        r = c.post("/score", json=body_of([lead_record(trained.base, sample_ids(trained.base, 1)[0])]))
    assert info["scorer"] == "rules" and "model unavailable" in info["reason"]
    assert r.status_code == 200 and r.json()["scores"][0]["scorer"] == "rules"
    assert r.json()["scores"][0]["reasons"]


@pytest.mark.slow
def test_cli_refuses_a_public_address_without_keys(empty_store):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("LEADSCORE_API_KEYS", "MLFLOW_TRACKING_URI")}
    leadscore = str(Path(sys.executable).with_name("leadscore"))
    r = subprocess.run([leadscore, "serve", "--host", "0.0.0.0", "--port", "9", "--workdir",
                        str(empty_store)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "LEADSCORE_API_KEYS" in r.stdout + r.stderr


# -- CRM table models (issue #7): rows of the export over HTTP ---------------------------------------
def table_rows(frame: pd.DataFrame, columns: list[str] | None = None) -> list[dict]:
    """Rows of a table as read (``training.crm.read_table``) in the JSON a CRM would send:
    text cells as text, empty cells as null."""
    frame = frame if columns is None else frame[columns]
    return [{k: _value(v) for k, v in r.items()} for r in frame.to_dict("records")]


def _same_as_score_table(scores: list[dict], want: pd.DataFrame) -> None:
    assert [s["contact_id"] for s in scores] == want["contact_id"].astype(str).tolist()
    assert [s["probability"] for s in scores] == want["probability"].tolist()
    assert [s["score"] for s in scores] == want["score"].tolist()
    assert [s["band"] for s in scores] == want["band"].tolist()
    assert [s["reasons"] for s in scores] == [json.loads(json.dumps(x)) for x in want["reasons"]]


def test_table_rows_are_checked_against_the_model_columns(shop_table):
    """No server: unknown columns (with a hint), missing columns and empty ids are named;
    the table's other columns (excluded, post-contact, target) are accepted and ignored."""
    spec = T.TableSpec.from_model(shop_table.model)
    assert spec.id_column == "Lead Key"
    assert set(spec.features) == {"Source Channel", "Pages Seen", "Minutes On Site", "Industry Sector"}
    assert {"E-mail Address", "Deal Stage", "Outcome"} <= spec.known
    rows = table_rows(shop_table.frame.head(3))  # every column of the export
    frame = spec.frame(rows)
    assert list(frame.columns) == list(spec.required) and len(frame) == 3
    bad = [dict(rows[0], **{"Source Chanel": "Webinar"}),
           {k: v for k, v in rows[1].items() if k != "Pages Seen"},
           dict(rows[2], **{"Lead Key": None}), dict(rows[2], **{"Lead Key": "   "})]
    with pytest.raises(T.RequestError) as e:
        spec.frame(bad)
    errors = {(d["field"], d["type"]): d["message"] for d in e.value.errors}
    assert "did you mean 'Source Channel'" in errors[("rows.0.Source Chanel", "unknown_column")]
    assert ("rows.1.Pages Seen", "missing_column") in errors
    assert ("rows.2.Lead Key", "missing_id") in errors
    assert ("rows.3.Lead Key", "missing_id") in errors  # spaces only: no id either


def test_table_fast_path_answers_what_score_table_answers(shop_table):
    """No server: the service's fast path for table rows (the model's dataset cleaning, then
    the fast scorer with the table's own reason names) against ``score_table``, every mode."""
    from serving.service import ScorerState, _score_rows, _score_rows_fast

    model = shop_table.model
    state = ScorerState(model, None, "now")
    assert state.fast is not None
    rows = table_rows(shop_table.frame.iloc[100:160])
    frame = state.table.frame(rows)
    now = dt.datetime(2026, 1, 1)
    for mode in ("all", "top", "none"):
        for part in (frame.iloc[:1], frame):
            fast = _score_rows_fast(state, part.reset_index(drop=True), "t", mode)
            slow = _score_rows(model, part.reset_index(drop=True), now, "t", mode, None)
            assert json.loads(json.dumps(fast)) == json.loads(json.dumps(slow)), mode
    # numbers at and beyond the float limit: shown whole, or missing (as "1e400" in a file)
    huge = state.table.frame([dict(rows[0], **{"Minutes On Site": v})
                              for v in (1e308, 1.7976931348623157e308, 10**400, "1e400")])
    fast = _score_rows_fast(state, huge, "t", "all")
    slow = _score_rows(model, huge, now, "t", "all", None)
    assert json.dumps(fast, allow_nan=False) == json.dumps(slow, allow_nan=False)
    minutes = [r["value"] for s in fast for r in s["reasons"] if r["feature"] == "Minutes On Site"]
    assert set(minutes) <= {1e308, 1.7976931348623157e308, None} and 1e308 in minutes


def test_a_failing_table_model_is_answered_by_its_own_rules(shop_table, monkeypatch):
    """Fault injection: the table model raises -> 200 with its table scorecard, scorer "rules"."""
    from serving.service import LeadScoringService, ScorerState, _rules_of

    monkeypatch.setenv("LEADSCORE_WORKDIR", str(shop_table.store))
    monkeypatch.setenv("LEADSCORE_RELOAD_SECONDS", "0")
    svc = LeadScoringService.inner()
    model = shop_table.model
    state = ScorerState(model, None, "now")
    state.rules = _rules_of(model, None)
    assert state.kind == "table" and state.info()["input"] == "table"

    def boom(*args, **kwargs):
        raise FloatingPointError("injected")

    monkeypatch.setattr(model, "score", boom)  # score_table's path
    assert state.fast is not None  # the fast path of a table model
    monkeypatch.setattr(state.fast, "score_columns", boom)
    rows = table_rows(shop_table.frame.head(4))
    payload = T.TABLE_REQUEST.validate_json(json.dumps({"rows": rows}))
    out = json.loads(svc.score_rows(payload, state))
    assert [s["contact_id"] for s in out["scores"]] == [r["Lead Key"] for r in rows]
    assert {s["scorer"] for s in out["scores"]} == {"rules"}
    assert all(0 <= s["probability"] <= 1 and s["reasons"] for s in out["scores"])
    assert svc._ready.wait(120)


@pytest.mark.slow
def test_table_model_serves_rows_like_score_table(table_servers, shop_table):
    """The champion is a table model: GET /model says so and lists the columns; POST /score
    takes the export's rows and answers what ``score_table`` gives on the same rows."""
    from training.crm import score_table
    from training.registry import load_scorer
    from training.tracking import configure_tracking

    srv = table_servers["shop"]
    frame = shop_table.frame.sample(30, random_state=2)
    with srv.client() as c:
        info = c.get("/model").json()
        full = c.post("/score", json={"rows": table_rows(frame)})  # every column of the export
        lean = c.post("/score", json={"rows": table_rows(frame, ["Lead Key", *info["columns"]])})
        top = c.post("/score", json={"rows": table_rows(frame), "reasons": "top"}).json()["scores"]
        none = c.post("/score", json={"rows": table_rows(frame), "reasons": "none"}).json()["scores"]
        one = c.post("/score", json={"rows": table_rows(frame.head(1))}).json()["scores"][0]
    assert info["input"] == "table" and info["id_column"] == "Lead Key"
    assert info["version"] == shop_table.version and info["dataset"] == "shop"
    assert sorted(info["columns"]) == sorted(["Source Channel", "Pages Seen", "Minutes On Site",
                                              "Industry Sector"])
    assert full.status_code == 200, full.text
    scores = full.json()["scores"]
    assert lean.json()["scores"] == [dict(s, scored_at=x["scored_at"])
                                     for s, x in zip(scores, lean.json()["scores"])]
    assert list(scores[0]) == list(schema.OUTPUT_COLUMNS)
    assert {s["scorer"] for s in scores} == {"model"} and {s["model_version"] for s in scores} == {
        shop_table.version}

    configure_tracking(shop_table.store)  # the store the server reads
    model = load_scorer(num_threads=1)
    want = score_table(model, frame, scored_at=pd.Timestamp.now())
    _same_as_score_table(scores, want)
    assert one == dict(scores[0], scored_at=one["scored_at"])
    assert [s["probability"] for s in none] == [s["probability"] for s in scores]
    assert all(s["reasons"] == [] for s in none)
    assert all(bool(s["reasons"]) == (s["band"] in ("A", "B")) for s in top)
    assert [s["reasons"] for s in top if s["reasons"]] == [
        s["reasons"] for s in scores if s["band"] in ("A", "B")]


@pytest.mark.slow
def test_table_rows_over_http_are_validated(table_servers, server, shop_table):
    srv = table_servers["shop"]
    row = table_rows(shop_table.frame.head(1))[0]
    cases = {
        "unknown column": ([dict(row, **{"Source Chanel": "x"})], "rows.0.Source Chanel"),
        "missing column": ([{k: v for k, v in row.items() if k != "Pages Seen"}], "rows.0.Pages Seen"),
        "missing id": ([{k: v for k, v in row.items() if k != "Lead Key"}], "rows.0.Lead Key"),
        "blank id": ([dict(row, **{"Lead Key": "  "})], "rows.0.Lead Key"),
        "nested value": ([dict(row, **{"Pages Seen": {"n": 3}})], "rows.0.Pages Seen"),
        "no rows": ([], "rows"),
    }
    with srv.client() as c:
        for case, (rows, field) in cases.items():
            r = c.post("/score", json={"rows": rows})
            assert r.status_code == 422, (case, r.text)
            assert field in [d["field"] for d in r.json()["detail"]], (case, r.text)
            assert "L-0" not in r.text  # values are never echoed
        # a JSON integer beyond any float is missing, as "1e400" in a file: scored, not a 422
        big = json.dumps({"rows": [dict(row, **{"Minutes On Site": 10**400})]})
        r = c.post("/score", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["scores"][0]["scorer"] == "model", r.text
        r = c.post("/score", json=body_of([{"contact": {"contact_id": "a"}}]))  # event-model body
        assert r.status_code == 422 and "takes table input" in r.json()["error"]
        assert {"rows", "leads"} <= {d["field"] for d in r.json()["detail"]}
        schema_ = c.get("/openapi.json").json()
    refs = [s["$ref"] for s in schema_["paths"]["/score"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["oneOf"]]
    assert refs == ["#/components/schemas/ScoreRequest", "#/components/schemas/TableScoreRequest"]
    assert "rows" in schema_["components"]["schemas"]["TableScoreRequest"]["properties"]
    with server.client() as c:  # the event model refuses table rows, naming the field
        r = c.post("/score", json={"rows": [row]})
        assert r.status_code == 422 and "takes events input" in r.json()["error"]
        assert "rows" in [d["field"] for d in r.json()["detail"]]


@pytest.mark.slow
def test_x_education_rows_over_http(table_servers, x_education_table):
    """The X Education export (where present): raw rows of the file, every column, scored
    over HTTP as ``score_table`` scores them."""
    if x_education_table is None:
        pytest.skip("X Education file absent (../shared/data/x-education-leads/Leads.csv); its "
                    "licence is unknown, so it is not in the repository")
    from training.crm import score_table
    from training.registry import load_scorer
    from training.tracking import configure_tracking

    srv = table_servers["x-education"]
    frame = x_education_table.frame.sample(60, random_state=5)
    with srv.client() as c:
        info = c.get("/model").json()
        r = c.post("/score", json={"rows": table_rows(frame)})
    assert info["input"] == "table" and info["id_column"] == "Prospect ID"
    assert "Tags" not in info["columns"] and "Lead Number" not in info["columns"]
    assert r.status_code == 200, r.text
    configure_tracking(x_education_table.store)
    want = score_table(load_scorer(num_threads=1), frame, scored_at=pd.Timestamp.now())
    _same_as_score_table(r.json()["scores"], want)
