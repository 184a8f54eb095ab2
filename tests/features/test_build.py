"""Point-in-time features on a hand-built base whose expected values are computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import schema
from features.build import (
    Snapshotter,
    build_features,
    build_training_set,
    features_for_leads,
    monthly_as_of_dates,
)
from features.config import FeatureConfig

T = pd.Timestamp("2026-03-01")


def _contacts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_id": ["C1", "C2", "C3", "C4"],
            "created_at": pd.to_datetime(["2026-01-01", "2026-02-01", "2026-03-10", "2025-12-01"]),
            "email": ["ann@acme-industries.com", "bob@gmail.com", None, "x@y"],
            "phone": ["+49 30 901820", None, None, None],
            "job_title": ["VP Marketing", "Leiter Einkauf", None, "student"],
            "industry": ["Manufacturing", None, None, "Education"],
            "employees": [120.0, np.nan, np.nan, 3.0],
            "annual_revenue": [2e7, np.nan, np.nan, np.nan],
            "country": ["DE", "DE", None, "FR"],
            "lead_source": ["Web Form", "webinar", None, "trade_show"],
            "company_name": ["Acme", None, None, None],
        }
    )


def _events() -> pd.DataFrame:
    rows = [
        ("C1", "2026-02-28 12:00", "pricing_view", None),
        ("C1", "2026-02-20 00:00", "pricing_view", None),
        ("C1", "2026-02-01 00:00", "email_open", "em-1"),
        ("C1", "2026-02-01 01:00", "email_click", "em-1"),
        ("C1", "2026-01-15 00:00", "content_download", "wp-1"),
        ("C1", "2026-01-16 00:00", "content_download", "wp-1"),
        ("C1", "2026-01-20 00:00", "webinar_registered", "web-9"),
        ("C1", "2026-02-10 00:00", "unsubscribe", None),
        ("C1", "2026-02-27 00:00", "video_play", None),
        ("C4", "2026-01-10 00:00", "demo_request", None),
    ]
    frame = pd.DataFrame(rows, columns=["contact_id", "ts", "event_type", "campaign_id"])
    frame["ts"] = pd.to_datetime(frame["ts"])
    return frame


def _stages() -> pd.DataFrame:
    rows = [
        ("C1", "2026-01-01", "lead"),
        ("C1", "2026-01-20", "mql"),
        ("C1", "2026-02-05", "lead"),
        ("C1", "2026-02-15", "mql"),
        ("C1", "2026-04-01", "opportunity"),
        ("C4", "2026-02-01", "opportunity"),
    ]
    frame = pd.DataFrame(rows, columns=["contact_id", "ts", "stage"])
    frame["ts"] = pd.to_datetime(frame["ts"])
    return frame


@pytest.fixture(scope="module")
def snap() -> Snapshotter:
    return Snapshotter(_contacts(), _events(), _stages())


@pytest.fixture(scope="module")
def feats(snap) -> pd.DataFrame:
    return snap.features_at(T).set_index("contact_id")


def test_eligibility_excludes_future_and_converted_contacts(feats):
    assert list(feats.index) == ["C1", "C2"]  # C3 created after T, C4 already an opportunity
    assert list(feats.columns) == ["as_of", *schema.FEATURES]


def test_window_counts_and_recency(feats):
    c1 = feats.loc["C1"]
    assert (c1["pricing_view_7d"], c1["pricing_view_30d"], c1["pricing_view_90d"]) == (1, 2, 2)
    assert (c1["email_open_30d"], c1["email_click_30d"]) == (1, 1)
    assert (c1["content_download_30d"], c1["content_download_90d"]) == (0, 2)
    assert c1["webinar_registered_90d"] == 1
    assert c1["other_7d"] == 1  # the unknown type "video_play"
    assert c1["days_since_pricing_view"] == pytest.approx(0.5)
    assert np.isnan(c1["days_since_demo_request"])
    assert c1["days_since_last_event"] == pytest.approx(0.5)


def test_decay_trend_activity_content_ctr_negatives(feats):
    c1 = feats.loc["C1"]
    assert c1["pricing_view_decayed"] == pytest.approx(2 ** (-0.5 / 30) + 2 ** (-9 / 30))
    positive_ages = [0.5, 9, 28, 28 - 1 / 24, 45, 44, 40, 2]  # all but the unsubscribe
    assert c1["engagement_decayed"] == pytest.approx(sum(2 ** (-a / 30) for a in positive_ages))
    # last 7 days: pricing view + video_play; days 7..37: pricing view, open, click
    assert c1["engagement_trend"] == pytest.approx(3 / (7 / 30 * 3 + 1))
    assert c1["active_days_30d"] == 5  # 02-28, 02-27, 02-20, 02-10, 02-01
    assert c1["active_days_90d"] == 8  # + 01-15, 01-16, 01-20
    assert c1["distinct_content_90d"] == 2  # wp-1 twice, web-9
    assert c1["email_ctr_90d"] == 1.0
    assert (c1["unsubscribed"], c1["bounced"]) == (1, 0)


def test_lifecycle(feats):
    c1, c2 = feats.loc["C1"], feats.loc["C2"]
    assert (c1["stage"], c1["days_in_stage"], c1["stage_regressions"]) == ("mql", 14, 1)
    assert (c2["stage"], c2["days_in_stage"], c2["stage_regressions"]) == ("lead", 28, 0)


def test_fit_features(feats):
    c1, c2 = feats.loc["C1"], feats.loc["C2"]
    assert (c1["seniority"], c1["department"]) == ("vp", "marketing")
    assert (c2["seniority"], c2["department"]) == ("director", "purchasing")
    assert (c1["employees_band"], c1["revenue_band"]) == ("50-249", "10M-50M")
    assert (c2["employees_band"], c2["revenue_band"]) == ("unknown", "unknown")
    assert (c1["email_quality"], c2["email_quality"]) == ("corporate", "free")
    assert (c1["lead_source"], c1["country"]) == ("web_form", "DE")
    assert c1["has_phone"] == 1 and c2["has_phone"] == 0
    assert c1["contact_age_days"] == 59 and c2["contact_age_days"] == 28
    assert c1["profile_completeness"] == pytest.approx(1.0)


def test_contact_without_events_has_empty_engagement(feats):
    c2 = feats.loc["C2"]
    assert c2["page_view_90d"] == 0 and c2["engagement_decayed"] == 0
    assert np.isnan(c2["days_since_last_event"]) and np.isnan(c2["email_ctr_90d"])
    assert c2["engagement_trend"] == 1.0


def test_label_looks_only_at_the_horizon(snap, feats):
    labels = snap.labels_at(T, pd.Series(["C1", "C2"]))
    assert list(labels) == [1, 0]  # C1 becomes an opportunity 31 days after T
    assert list(snap.labels_at(pd.Timestamp("2025-12-15"), pd.Series(["C1"]))) == [0]


def test_planted_future_events_and_stages_change_nothing(feats):
    future_events = pd.DataFrame(
        {
            "contact_id": ["C1", "C2", "C2"],
            "ts": pd.to_datetime(["2026-03-01 00:00:01", "2026-03-02", "2026-05-01"], format="ISO8601"),
            "event_type": ["demo_request", "pricing_view", "unsubscribe"],
            "campaign_id": [None, None, None],
        }
    )
    future_stages = pd.DataFrame(
        {"contact_id": ["C2", "C2"], "ts": pd.to_datetime(["2026-03-05", "2026-04-01"]),
         "stage": ["disqualified", "cold"]}
    )
    planted = Snapshotter(
        _contacts(),
        pd.concat([_events(), future_events], ignore_index=True),
        pd.concat([_stages(), future_stages], ignore_index=True),
    ).features_at(T).set_index("contact_id")
    pd.testing.assert_frame_equal(planted, feats)


def test_event_order_changes_nothing(feats):
    shuffled = _events().sample(frac=1.0, random_state=3)
    stages = _stages().sample(frac=1.0, random_state=4)
    again = build_features(_contacts(), shuffled, stages, T).set_index("contact_id")
    pd.testing.assert_frame_equal(again, feats)


def test_single_lead_path_equals_batch_path(feats):
    contacts = _contacts()
    records = contacts.iloc[:2].to_dict("records")
    events = [
        {k: v for k, v in r.items() if v is not None}
        for r in _events().query("contact_id in ['C1', 'C2']").to_dict("records")
    ]
    stages = _stages().query("contact_id in ['C1', 'C2']").to_dict("records")
    online = features_for_leads(records, events, stages, as_of=T).set_index("contact_id")
    pd.testing.assert_frame_equal(online, feats)


def test_training_set_stacks_snapshots_with_labels():
    dates = [pd.Timestamp("2026-02-01"), T]
    ts = build_training_set(_contacts(), _events(), _stages(), dates)
    assert set(ts["as_of"]) == set(dates)
    assert ts.groupby("as_of").size().to_dict() == {dates[0]: 2, dates[1]: 2}
    row = ts[(ts["contact_id"] == "C1") & (ts["as_of"] == T)].iloc[0]
    assert row[schema.LABEL] == 1


def test_monthly_dates_leave_room_for_history_and_horizon():
    dates = monthly_as_of_dates(pd.Timestamp("2025-01-01"), pd.Timestamp("2026-07-01"), horizon_days=90)
    assert dates[0] == pd.Timestamp("2025-03-01")
    assert dates[-1] == pd.Timestamp("2026-04-01")


def test_half_life_is_configurable():
    short = build_features(_contacts(), _events(), _stages(), T, config=FeatureConfig(half_life_days=7))
    c1 = short.set_index("contact_id").loc["C1"]
    assert c1["pricing_view_decayed"] == pytest.approx(2 ** (-0.5 / 7) + 2 ** (-9 / 7))


@pytest.mark.parametrize("kind", ["empty_events", "empty_everything_but_contacts", "all_missing_firmographics"])
def test_dirty_or_empty_inputs_do_not_raise(kind):
    contacts, events, stages = _contacts(), _events(), _stages()
    if kind.startswith("empty"):
        events = events.iloc[0:0]
    if kind == "empty_everything_but_contacts":
        stages = stages.iloc[0:0]
    if kind == "all_missing_firmographics":
        contacts = contacts[["contact_id", "created_at"]]
    out = build_features(contacts, events, stages, T)
    assert len(out) >= 2 and out["contact_id"].is_unique


def _many_events(n_contacts: int = 3, n_events: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Thousands of events per contact over two years: enough for float sums to depend on
    their order if anything summed them in input order."""
    rng = np.random.default_rng(seed)
    seconds = rng.integers(0, 2 * 365 * 86_400, n_events)
    return pd.DataFrame({
        "contact_id": rng.choice(["C1", "C2", "C4"][:n_contacts], n_events),
        "ts": T - pd.to_timedelta(seconds, unit="s"),
        "event_type": rng.choice(list(schema.EVENT_TYPES) + ["video_play"], n_events),
        "campaign_id": rng.choice(["a", "b", "c", None], n_events),
    })


def test_event_order_changes_no_bit():
    events = _many_events()
    want = build_features(_contacts(), events, _stages(), T, eligible_only=False)
    for seed in (1, 2):
        shuffled = events.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        got = build_features(_contacts(), shuffled, _stages(), T, eligible_only=False)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    # decay weights are rounded to 2**-32: within 2**-33 per event of the exact sum
    c1 = events[(events["contact_id"] == "C1") & (events["event_type"] == "pricing_view")]
    exact = np.exp2(-((T - c1["ts"]) / pd.Timedelta(days=1)).to_numpy() / 30).sum()
    got = want.set_index("contact_id").loc["C1", "pricing_view_decayed"]
    assert abs(got - exact) <= len(c1) * 2.0**-33


def _as_objects(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing values as None in object columns: one lead alone may leave a text column
    all-missing, which pandas then types as object instead of str."""
    return frame.astype(object).where(frame.notna(), None)


def test_one_lead_at_a_time_equals_the_batch_to_the_bit():
    events, stages = _many_events(seed=5), _stages()
    batch = build_features(_contacts(), events, stages, T, eligible_only=False).set_index("contact_id")
    for record in _contacts().to_dict("records"):
        cid = record["contact_id"]
        record = {k: None if pd.isna(v) else v for k, v in record.items()}  # as JSON gives it
        record["created_at"] = record["created_at"].isoformat()
        evs = [{**e, "ts": e["ts"].isoformat()} for e in
               events[events["contact_id"] == cid].to_dict("records")]
        sts = stages[stages["contact_id"] == cid].to_dict("records")
        online = features_for_leads([record], evs, sts, as_of=T).set_index("contact_id")
        pd.testing.assert_frame_equal(_as_objects(online), _as_objects(batch.loc[[cid]]),
                                      check_exact=True)


def test_leads_with_unknown_or_duplicate_ids():
    records = _contacts().iloc[:2].to_dict("records")
    stray = [{"contact_id": "nobody", "ts": T, "event_type": "demo_request"}]
    alone = features_for_leads(records, [], [], as_of=T)
    pd.testing.assert_frame_equal(features_for_leads(records, stray, [], as_of=T), alone)
    with pytest.raises(ValueError, match="duplicate"):
        features_for_leads(records + records[:1], [], [], as_of=T)


def test_fit_features_of_frames_and_columns_agree():
    """The DataFrame path, the column path (many leads) and the value-by-value path (a few
    leads) of fit_features give the same values, odd inputs included."""
    from features.firmographics import fit_features

    odd = pd.DataFrame({
        "employees": pd.Series(["12", None, "abc", 3.5, " 7 "], dtype=object),
        "annual_revenue": pd.array([1, None, 3, 4, 5], dtype="Int64"),
        "has_phone": pd.Series([1, None, "x", 0, True], dtype=object),
        "do_not_email": pd.array([True, None, False, True, None], dtype="boolean"),
        "email_quality": pd.Series(["free", None, "corporate", np.nan, "invalid"], dtype=object),
        "industry": pd.Series([" Soft  ware ", None, "nan", 3, "X"], dtype=object),
        "country": pd.Series(["de", "", None, "fr", pd.NA], dtype=object),
        "job_title": pd.Series(["VP Sales", None, "", 5, "cto"], dtype=object),
        "company_name": pd.Series(["a", "", None, np.nan, pd.NA], dtype=object),
    })
    many = pd.concat([odd] * 5, ignore_index=True)  # above the value-by-value threshold
    for frame in (odd, many):
        want = fit_features(frame)
        columns = {c: frame[c].to_numpy(dtype=object) for c in frame}
        got = fit_features(columns, n=len(frame))
        assert want.keys() == got.keys()
        for name, values in want.items():
            assert list(_as_objects(pd.Series(got[name]))) == list(_as_objects(pd.Series(values))), name


@pytest.mark.parametrize(("title", "expected"), [
    ("VP Marketing", ("vp", "marketing")),
    ("Leiter Einkauf", ("director", "purchasing")),
    ("Sr. Software Engineer", ("individual", "engineering")),
    (None, ("unknown", "unknown")),
    ("", ("unknown", "unknown")),
    (" N/A ", ("unknown", "unknown")),  # a placeholder says nothing: not an individual contributor
    ("-", ("unknown", "unknown")),
    ("NULL", ("unknown", "unknown")),
    ("12345", ("unknown", "unknown")),
])
def test_job_title_parsing(title, expected) -> None:
    from features.firmographics import parse_job_title

    assert parse_job_title(title) == expected
