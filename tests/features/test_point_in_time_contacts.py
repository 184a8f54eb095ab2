"""Contact attributes at an as-of date: what a later duplicate record or a later opt-out
brings is not visible in a snapshot before it happened.

The planted base: ``a1`` has a duplicate ``a2`` (same address) created after ``T`` with a job
title, a size, a revenue, a phone and an opt-out flag that ``a1`` lacks; ``b1``'s export flag
``do_not_email`` comes from an unsubscribe after ``T``; ``c1`` is flagged without any
unsubscribe, ``d1`` unsubscribed before ``T``; ``e1`` has a duplicate ``e2`` created at the same
instant. ``z1`` only fixes the data's end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import build_features, features_for_leads
from features.config import FeatureConfig
from features.hygiene import clean
from features.io import validate_tables
from features.synthetic import write_tables
from features.training_set import partitioned_training_set

EXPORT = pd.Timestamp("2024-10-01")
T = pd.Timestamp("2024-03-01")  # after a1's creation, before a2's and before b1's unsubscribe
LATER = pd.Timestamp("2024-05-01")  # after both

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
]
# what the export would hold at T: no a2 yet, b1 not yet unsubscribed nor flagged
_LATER_ROWS = {"contacts": {"a2"}, "events": {("a2", "2024-03-20 09:00"), ("a2", "2024-04-10 15:00"),
                                             ("b1", "2024-03-15 10:05")},
               "stages": {("a2", "2024-03-20 09:00")}}


def _frames(*, known_at_t: bool) -> dict[str, pd.DataFrame]:
    """The planted base as exported at the end, or (``known_at_t``) as it was at ``T``."""
    contacts = pd.DataFrame(_CONTACTS, columns=_CONTACT_COLUMNS)
    events = pd.DataFrame(_EVENTS, columns=["contact_id", "ts", "event_type"])
    stages = pd.DataFrame(_STAGES, columns=["contact_id", "ts", "stage"])
    if known_at_t:
        contacts = contacts[~contacts["contact_id"].isin(_LATER_ROWS["contacts"])]
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


def test_later_duplicate_fills_no_attribute():
    """a2's job title, size, revenue, phone and opt-out are not merged into a1: a snapshot
    before a2 existed must not see them, and one row serves every as-of date. a2 is still
    merged (rejected as a duplicate, its id mapped) and its events and stage changes count
    from their own timestamps."""
    base = _clean()
    a1 = base.contacts.set_index("contact_id").loc["a1"]
    assert pd.isna(a1["job_title"]) and pd.isna(a1["employees"]) and pd.isna(a1["phone"])
    assert pd.isna(a1["annual_revenue"]) and not a1["do_not_email"] and a1["has_phone"] == 0
    dup = base.rejects.loc[base.rejects["reason"] == "duplicate_contact", "contact_id"]
    assert sorted(dup) == ["a2", "e2"]
    assert base.id_map.to_dict("records") == [{"duplicate_id": "a2", "contact_id": "a1"},
                                              {"duplicate_id": "e2", "contact_id": "e1"}]

    at_t, later = _features(T).loc["a1"], _features(LATER).loc["a1"]
    for feats in (at_t, later):
        assert feats["seniority"] == "unknown" and feats["department"] == "unknown"
        assert feats["employees_band"] == "unknown" and np.isnan(feats["employees"])
        assert feats["revenue_band"] == "unknown" and feats["has_phone"] == 0
        assert feats["do_not_email"] == 0
    assert at_t["form_submit_90d"] == 0 and at_t["pricing_view_30d"] == 0
    assert later["form_submit_90d"] == 1 and later["pricing_view_30d"] == 1  # a2's history


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
    contacts = base.contacts.drop(columns=["email_quality", "has_phone"])
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
    assert set(rows[False]["contact_id"]) >= {"a1", "b1", "e1"}
    pd.testing.assert_frame_equal(rows[False], rows[True])
