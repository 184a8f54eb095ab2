"""Contact attributes at an as-of date: what a later duplicate record or a later opt-out
brings is not visible in a snapshot before it happened, and is from then on.

The planted base: ``a1`` has a duplicate ``a2`` (same address) created after ``T`` with a job
title, a size, a revenue, a phone and an opt-out flag that ``a1`` lacks; ``f1``'s address
came with a second ``f1`` row created after ``T``; ``g1``'s national phone number is readable
once a later ``g1`` row brings its country; ``b1``'s export flag ``do_not_email`` comes from an
unsubscribe after ``T``; ``c1`` is flagged without any unsubscribe, ``d1`` unsubscribed before
``T``; ``e1`` has a duplicate ``e2`` created at the same instant. ``z1`` only fixes the data's
end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import schema
from features.build import build_features, build_training_set, features_for_leads
from features.config import FeatureConfig
from features.feature_table import write_feature_table
from features.hygiene import clean
from features.io import validate_tables
from features.loading import load_base
from features.synthetic import write_tables
from features.training_set import partitioned_training_set

EXPORT = pd.Timestamp("2024-10-01")
T = pd.Timestamp("2024-03-01")  # after a1's creation, before a2's and before b1's unsubscribe
BETWEEN = pd.Timestamp("2024-03-22")  # after a2's creation, before the later f1 and g1 rows
LATER = pd.Timestamp("2024-05-01")  # after all of them

_CONTACT_COLUMNS = ["contact_id", "created_at", "email", "phone", "company_name", "job_title",
                    "industry", "employees", "annual_revenue", "country", "lead_source",
                    "do_not_email"]
_CONTACTS = [
    ("a1", "2024-01-10 10:00", "ann@acme-industries.com", None, "Acme", None,
     "Manufacturing", np.nan, np.nan, "DE", "web_form", False),
    # the same person fills in a form again, after T, with what a1 lacks
    ("a2", "2024-03-20 09:00", " ANN@acme-industries.com", "+49 30 901820", "Acme",
     "VP Marketing", "Manufacturing", 1200.0, 5e7, "DE", "web_form", True),
    ("b1", "2024-01-05 10:00", "bob@beta-corp.com", None, "Beta", "IT Manager",
     "Software", 80.0, np.nan, "NL", "webinar", True),  # flag from b1's unsubscribe after T
    ("c1", "2024-01-05 11:00", "cy@gamma-corp.com", None, "Gamma", None,
     "Retail", np.nan, np.nan, "FR", "trade_show", True),  # flag without any unsubscribe
    ("d1", "2024-01-05 12:00", "di@delta-corp.com", None, "Delta", None,
     "Retail", np.nan, np.nan, "FR", "trade_show", True),  # unsubscribed before T
    ("e1", "2024-01-08 09:00", "eve@epsilon-corp.com", None, "Epsilon", None,
     None, np.nan, np.nan, "DE", "referral", False),
    ("e2", "2024-01-08 09:00", "Eve@epsilon-corp.com", "+49 30 901820", "Epsilon",
     "Head of IT", "Software", 300.0, np.nan, "DE", "referral", True),  # same instant
    ("z1", "2024-01-02 10:00", "zed@zeta-corp.com", None, "Zeta", None,
     None, np.nan, np.nan, "US", "partner", False),
    ("f1", "2024-01-12 09:00", None, None, "Phi", "Buyer",
     "Retail", 20.0, np.nan, "FR", "web_form", False),
    # the same id again, after T: the address arrives with it
    ("f1", "2024-03-25 09:00", "fay@phi-corp.com", None, "Phi", None,
     None, np.nan, np.nan, None, "web_form", False),
    ("g1", "2024-01-15 09:00", "gil@gamma-ray.com", "030 901820", "Ray", None,
     None, np.nan, np.nan, None, "referral", False),  # a Berlin number, no country: unreadable
    ("g1", "2024-04-01 09:00", None, None, "Ray", None,
     None, np.nan, np.nan, "DE", "referral", False),  # the country comes later
]
_EVENTS = [
    ("a1", "2024-02-01 10:00", "page_view"),
    ("a2", "2024-03-20 09:00", "form_submit"),
    ("a2", "2024-04-10 15:00", "pricing_view"),
    ("b1", "2024-02-01 10:00", "email_open"),
    ("b1", "2024-03-15 10:05", "unsubscribe"),
    ("d1", "2024-02-10 10:00", "unsubscribe"),
    ("e2", "2024-02-12 10:00", "content_download"),
]
_STAGES = [
    ("a1", "2024-01-10 10:00", "lead"),
    ("a2", "2024-03-20 09:00", "lead"),
    ("b1", "2024-01-05 10:00", "lead"),
    ("c1", "2024-01-05 11:00", "lead"),
    ("d1", "2024-01-05 12:00", "lead"),
    ("e1", "2024-01-08 09:00", "lead"),
    ("z1", "2024-01-02 10:00", "lead"),
    ("z1", "2024-09-30 10:00", "mql"),  # the data's end
    ("f1", "2024-01-12 09:00", "lead"),
    ("g1", "2024-01-15 09:00", "lead"),
]
# what the export would hold at T: no a2 nor later f1 / g1 rows yet, b1 not yet unsubscribed
# nor flagged
_LATER_ROWS = {"contacts": {("a2", "2024-03-20 09:00"), ("f1", "2024-03-25 09:00"),
                            ("g1", "2024-04-01 09:00")},
               "events": {("a2", "2024-03-20 09:00"), ("a2", "2024-04-10 15:00"),
                          ("b1", "2024-03-15 10:05")},
               "stages": {("a2", "2024-03-20 09:00")}}


def _frames(*, known_at_t: bool) -> dict[str, pd.DataFrame]:
    """The planted base as exported at the end, or (``known_at_t``) as it was at ``T``."""
    contacts = pd.DataFrame(_CONTACTS, columns=_CONTACT_COLUMNS)
    events = pd.DataFrame(_EVENTS, columns=["contact_id", "ts", "event_type"])
    stages = pd.DataFrame(_STAGES, columns=["contact_id", "ts", "stage"])
    if known_at_t:
        keys = list(zip(contacts["contact_id"], contacts["created_at"]))
        contacts = contacts[[k not in _LATER_ROWS["contacts"] for k in keys]]
        contacts.loc[contacts["contact_id"] == "b1", "do_not_email"] = False
        keys = list(zip(events["contact_id"], events["ts"]))
        events = events[[k not in _LATER_ROWS["events"] for k in keys]]
        keys = list(zip(stages["contact_id"], stages["ts"]))
        stages = stages[[k not in _LATER_ROWS["stages"] for k in keys]]
    return {"contacts": contacts.reset_index(drop=True),
            "events": events.assign(ts=pd.to_datetime(events["ts"])).reset_index(drop=True),
            "stages": stages.assign(ts=pd.to_datetime(stages["ts"])).reset_index(drop=True)}


def _clean(*, known_at_t: bool = False):
    f = _frames(known_at_t=known_at_t)
    return clean(validate_tables(f["contacts"], f["events"], f["stages"]), export_date=EXPORT)


def _features(as_of: pd.Timestamp, *, known_at_t: bool = False) -> pd.DataFrame:
    base = _clean(known_at_t=known_at_t)
    feats = build_features(base.contacts, base.events, base.stages, as_of, eligible_only=False)
    return feats.set_index("contact_id").sort_index()


def test_planted_later_record_and_opt_out_change_no_feature_at_t():
    """The export at the end (a2 created, b1 unsubscribed and flagged, all after T) and the
    export as it was at T give the same feature table at T, to the bit."""
    pd.testing.assert_frame_equal(_features(T), _features(T, known_at_t=True))


def test_later_duplicate_fills_the_record_and_says_since_when(filled_of):
    """a2's job title, size, revenue, phone and opt-out fill a1's gaps (the record at the
    data's end), and hygiene records which fields came from a later record and when it was
    created. a2 is merged (rejected as a duplicate, its id mapped)."""
    base = _clean()
    contacts = base.contacts.set_index("contact_id")
    a1 = contacts.loc["a1"]
    assert a1["job_title"] == "VP Marketing" and a1["employees"] == 1200.0
    assert a1["annual_revenue"] == 5e7 and a1["phone"] == "+49 30 901820" and a1["has_phone"] == 1
    assert bool(a1["do_not_email"]) is True
    assert filled_of(a1) == {"phone", "job_title", "employees", "annual_revenue", "do_not_email"}
    assert a1["filled_at"] == pd.Timestamp("2024-03-20 09:00")
    f1, g1 = contacts.loc["f1"], contacts.loc["g1"]
    assert f1["email"] == "fay@phi-corp.com" and f1["email_quality"] == "corporate"
    assert filled_of(f1) == {"email"} and f1["filled_at"] == pd.Timestamp("2024-03-25 09:00")
    assert filled_of(g1) == {"country"} and g1["has_phone"] == 1
    # same instant (e2): filled, nothing to date; no duplicate: nothing filled
    for cid in ("e1", "b1", "z1"):
        assert contacts.loc[cid, "filled_fields"] == 0 and pd.isna(contacts.loc[cid, "filled_at"])
    dup = base.rejects.loc[base.rejects["reason"] == "duplicate_contact", "contact_id"]
    assert sorted(dup) == ["a2", "e2", "f1", "g1"]
    assert base.id_map.to_dict("records") == [{"duplicate_id": "a2", "contact_id": "a1"},
                                              {"duplicate_id": "e2", "contact_id": "e1"}]


def test_later_duplicate_is_invisible_before_its_creation_and_visible_after():
    """At T (before a2, f1's and g1's later rows) a1 has no title, size, revenue, phone nor
    opt-out, f1 no address and g1 no readable phone; once each later record exists (and at the
    data's end, what ``leadscore score`` sees) its values count. a2's events count from their
    own timestamps."""
    at_t, between, later = _features(T), _features(BETWEEN), _features(LATER)
    a1 = at_t.loc["a1"]
    assert a1["seniority"] == "unknown" and a1["department"] == "unknown"
    assert a1["employees_band"] == "unknown" and np.isnan(a1["employees"])
    assert a1["revenue_band"] == "unknown" and np.isnan(a1["annual_revenue"])
    assert a1["has_phone"] == 0 and a1["do_not_email"] == 0
    assert a1["form_submit_90d"] == 0 and a1["pricing_view_30d"] == 0
    for feats in (between.loc["a1"], later.loc["a1"]):
        assert (feats["seniority"], feats["department"]) == ("vp", "marketing")
        assert feats["employees_band"] == "1000-4999" and feats["employees"] == 1200.0
        assert feats["annual_revenue"] == 5e7 and feats["has_phone"] == 1
        assert feats["do_not_email"] == 1
        assert feats["profile_completeness"] > a1["profile_completeness"]
    assert later.loc["a1", "form_submit_90d"] == 1 and later.loc["a1", "pricing_view_30d"] == 1

    for feats in (at_t, between):
        assert feats.loc["f1", "email_quality"] == "missing"
        assert feats.loc["g1", "has_phone"] == 0 and pd.isna(feats.loc["g1", "country"])
    assert later.loc["f1", "email_quality"] == "corporate"
    assert later.loc["g1", "has_phone"] == 1 and later.loc["g1", "country"] == "DE"

    end = _features(EXPORT)
    assert end.loc["a1", "seniority"] == "vp" and end.loc["f1", "email_quality"] == "corporate"
    assert end.loc["a1", "do_not_email"] == 1 and end.loc["g1", "has_phone"] == 1


def test_same_instant_duplicate_fills_at_every_date():
    """e2, created at e1's instant, was known whenever e1 was: its values fill e1's gaps
    (its opt-out too) at every as-of date."""
    e1 = _clean().contacts.set_index("contact_id").loc["e1"]
    assert e1["job_title"] == "Head of IT" and e1["employees"] == 300.0 and e1["has_phone"] == 1
    for as_of in (T, LATER):
        feats = _features(as_of).loc["e1"]
        assert (feats["seniority"], feats["department"]) == ("director", "it")
        assert feats["employees_band"] == "250-999" and feats["industry"] == "Software"
        assert feats["has_phone"] == 1 and feats["do_not_email"] == 1
        assert feats["content_download_90d"] == 1


@pytest.mark.parametrize(("as_of", "expected"), [
    (T, {"b1": 0.0, "c1": 1.0, "d1": 1.0, "z1": 0.0}),
    (LATER, {"b1": 1.0, "c1": 1.0, "d1": 1.0, "z1": 0.0}),
])
def test_do_not_email_is_dated_by_the_unsubscribe_it_traces(as_of, expected):
    """b1's flag comes from its unsubscribe after T: 0 at T, 1 once it happened. A flag
    without any unsubscribe (c1) or with one before T (d1) holds at T. Batch and one lead at
    a time (the service's and the pyfunc's path) agree."""
    feats = _features(as_of)
    assert feats["do_not_email"].loc[list(expected)].to_dict() == expected
    assert feats.loc["b1", "unsubscribed"] == (1.0 if as_of == LATER else 0.0)

    base = _clean()
    contacts = base.contacts.drop(columns=["email_quality", "has_phone", "filled_fields", "filled_at"])
    for cid in expected:
        record = {k: (None if not isinstance(v, str | bool) and pd.isna(v) else v)
                  for k, v in contacts.loc[contacts["contact_id"] == cid].iloc[0].items()}
        events = base.events.loc[base.events["contact_id"] == cid].to_dict("records")
        one = features_for_leads([record], events, as_of=as_of, config=FeatureConfig())
        assert one["do_not_email"].iloc[0] == expected[cid]


def test_training_set_of_a_data_dir_sees_nothing_later_at_t(tmp_path: Path):
    """The bucketed build of ``leadscore train``: the rows at T are the same whether the
    data directory holds the later record and opt-out or not."""
    rows = {}
    for known_at_t in (False, True):
        data = tmp_path / f"data-{known_at_t}"
        write_tables(_frames(known_at_t=known_at_t), data)
        built = partitioned_training_set(data, chunk_size=2, workers=1)
        assert T in built.as_of_dates and LATER in built.as_of_dates
        frame = built.frame
        rows[known_at_t] = frame.loc[frame["as_of"] == T].reset_index(drop=True)
    assert set(rows[False]["contact_id"]) >= {"a1", "b1", "e1", "f1", "g1"}
    pd.testing.assert_frame_equal(rows[False], rows[True])


def test_partitioned_training_set_equals_the_in_memory_one(tmp_path: Path):
    """Bucket by bucket (the later records in other slices and buckets of two contacts) the
    training set is the in-memory one at every date, fills and their dates included."""
    data = tmp_path / "data"
    write_tables(_frames(known_at_t=False), data)
    built = partitioned_training_set(data, chunk_size=2, workers=1)
    base = _clean()
    expected = build_training_set(base.contacts, base.events, base.stages, built.as_of_dates)
    pd.testing.assert_frame_equal(built.frame, expected)
    at = built.frame.set_index(["as_of", "contact_id"])
    assert at.loc[(T, "a1"), "seniority"] == "unknown"
    assert at.loc[(LATER, "a1"), "seniority"] == "vp"


@pytest.mark.parametrize("as_of", [T, BETWEEN, None])
def test_partitioned_feature_table_equals_the_in_memory_one(tmp_path: Path, as_of):
    """``leadscore features`` bucket by bucket: at T, between the later records and at the
    data's end (the default), the same rows as the in-memory table; the file holds the
    feature table's columns only (hygiene's bookkeeping stays internal)."""
    data = tmp_path / "data"
    write_tables(_frames(known_at_t=False), data)
    out = tmp_path / "features.parquet"
    write_feature_table(data, out, as_of=as_of, chunk_size=2, workers=1)
    base = load_base(data, until=as_of)
    expected = build_features(base.contacts, base.events, base.stages, as_of or base.until)
    got = pd.read_parquet(out)
    pd.testing.assert_frame_equal(got, expected)
    assert list(got.columns) == list(schema.KEY_COLUMNS) + list(schema.FEATURES)
    assert "a1" in set(got["contact_id"])
