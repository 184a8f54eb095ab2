"""Tests of the synthetic B2B contact base (features/synthetic.py).

One base of 20,000 contacts is generated once per module; the determinism tests generate
small extra bases. Everything is checked through the public tables only.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from features.schema import (
    CONTACTS,
    EVENT_TYPES,
    EVENTS,
    LEAD_SOURCES,
    PAGE_CATEGORIES,
    STAGE_CHANGES,
    STAGES,
    TRUTH,
)
from features.synthetic import CHANNELS, HORIZON_DAYS, generate, write_tables

N = 20_000
SEED = 11
END = pd.Timestamp("2026-07-01")
MONTHS = 18
START = END - pd.DateOffset(months=MONTHS)
HORIZON = pd.Timedelta(days=HORIZON_DAYS)
NACE = {
    "Manufacturing", "Information and communication", "Financial and insurance",
    "Wholesale and retail trade", "Professional, scientific and technical",
    "Public administration", "Education", "Human health and social work", "Construction",
    "Transportation and storage",
}
VALID_EMAIL = re.compile(r"^[^@\s\[\]]+@[^@\s\[\]]+\.[a-z]{2,}$", re.IGNORECASE)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return generate(N, SEED)


@pytest.fixture(scope="module")
def first_conversion(tables: dict[str, pd.DataFrame]) -> pd.Series:
    st = tables["stages"]
    return st[st["stage"].isin(["opportunity", "customer"])].groupby("contact_id")["ts"].min()


@pytest.fixture(scope="module")
def labelled(tables: dict[str, pd.DataFrame], first_conversion: pd.Series) -> pd.DataFrame:
    """Truth rows whose 90-day window ends before the export, with the realised label."""
    tr = tables["truth"]
    tr = tr[tr["as_of"] + HORIZON <= END].copy()
    conv = tr["contact_id"].map(first_conversion)
    tr["y"] = ((conv >= tr["as_of"]) & (conv < tr["as_of"] + HORIZON)).astype(int)
    return tr


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- shape


def test_tables_follow_schema(tables: dict[str, pd.DataFrame]) -> None:
    for name, schema in (("contacts", CONTACTS), ("events", EVENTS), ("stages", STAGE_CHANGES),
                         ("truth", TRUTH)):
        df = tables[name]
        assert list(df.columns) == list(schema.columns), name
        assert len(df) > 0
        for col, kind in schema.columns.items():
            dtype = df[col].dtype
            if kind == "timestamp":
                assert dtype == "datetime64[us]", (name, col, dtype)
            elif kind in ("id", "str"):
                assert dtype == "str", (name, col, dtype)
            elif kind == "float":
                assert dtype == np.float64, (name, col, dtype)
            elif kind == "bool":
                assert dtype == bool, (name, col, dtype)
        assert isinstance(df.index, pd.RangeIndex)


def test_contact_ids(tables: dict[str, pd.DataFrame]) -> None:
    ids = tables["contacts"]["contact_id"]
    assert ids.is_unique
    assert ids.str.fullmatch(r"C\d{7}").all()
    # one row per canonical contact plus a few percent duplicates
    assert N < len(ids) < 1.05 * N


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = generate(2_000, 3), generate(2_000, 3), generate(2_000, 4)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    pa_, pb, pc_ = (write_tables(t, tmp_path / d) for t, d in ((a, "a"), (b, "b"), (c, "c")))
    assert set(pa_) == {"contacts", "events", "stages", "truth"}
    for name in pa_:
        assert pa_[name] == tmp_path / "a" / f"{name}.parquet"
        assert _sha256(pa_[name]) == _sha256(pb[name]), name
        assert _sha256(pa_[name]) != _sha256(pc_[name]), name
    assert not a["events"].equals(c["events"])


def test_parquet_round_trip(tables: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    small = {k: v.head(5_000) for k, v in tables.items()}
    paths = write_tables(small, tmp_path)
    for name, path in paths.items():
        back = pd.read_parquet(path)
        pd.testing.assert_frame_equal(back, small[name].reset_index(drop=True))


def test_tiny_bases_work() -> None:
    for n in (1, 7):
        t = generate(n, 1, months=3)
        assert len(t["contacts"]) >= n
        assert set(t) == {"contacts", "events", "stages", "truth"}


# --------------------------------------------------------------------------- firmographics


def test_created_at_spread_recent_denser(tables: dict[str, pd.DataFrame]) -> None:
    created = tables["contacts"]["created_at"]
    assert created.min() >= START
    assert created.max() < END
    first6 = (created < START + pd.DateOffset(months=6)).sum()
    last6 = (created >= END - pd.DateOffset(months=6)).sum()
    assert last6 > 1.2 * first6
    # contact ids follow creation order
    c = tables["contacts"]
    assert c["created_at"].is_monotonic_increasing


def test_heavy_tailed_correlated_size(tables: dict[str, pd.DataFrame]) -> None:
    c = tables["contacts"]
    emp = c["employees"].dropna()
    assert emp.max() / emp.median() > 100
    assert emp.skew() > 3
    rev = c["annual_revenue"].dropna()
    assert rev.max() / rev.median() > 100
    both = c[["employees", "annual_revenue"]].dropna()
    assert np.corrcoef(np.log(both["employees"]), np.log(both["annual_revenue"]))[0, 1] > 0.75


def test_industry_skewed_nace_names(tables: dict[str, pd.DataFrame]) -> None:
    ind = tables["contacts"]["industry"].value_counts(normalize=True)
    assert NACE <= set(ind.index)
    assert ind.index[0] == "Manufacturing"
    assert ind.iloc[0] > 5 * ind.median()


def test_countries_sources_titles(tables: dict[str, pd.DataFrame]) -> None:
    c = tables["contacts"]
    country = c["country"].value_counts(normalize=True)
    assert country.index[0] == "DE"
    assert country[country.index.str.fullmatch(r"[A-Z]{2}")].sum() > 0.97
    src = c["lead_source"].value_counts(normalize=True)
    assert set(LEAD_SOURCES) <= set(src.index)
    assert src["web_form"] > 3 * src["referral"]
    titles = set(c["job_title"].dropna())
    for t in ("CEO & Founder", "Sr. Data Engineer", "Leiter Einkauf", "Directeur Commercial",
              "marketing assistant", "IT-Administrator", "student", "VP Marketing",
              "Head of IT", "Purchasing Manager"):
        assert t in titles, t
    assert c["job_title"].nunique() > 200
    assert c["do_not_email"].mean() == pytest.approx(0.04, abs=0.02)


def test_emails_and_phones(tables: dict[str, pd.DataFrame]) -> None:
    c = tables["contacts"]
    email = c["email"].str.strip().str.lower()
    domain = email.str.extract(r"@([^@]+)$")[0]
    corporate = (domain == c["company_domain"].str.lower()) & email.str.match(VALID_EMAIL)
    assert corporate.mean() > 0.5
    for free in ("gmail.com", "outlook.com", "yahoo.com", "gmx.de", "web.de"):
        assert (domain == free).any(), free
    assert (domain == "mailinator.com").any() or domain.isin(
        ["10minutemail.com", "guerrillamail.com", "trashmail.com", "yopmail.com"]).any()
    phone = c["phone"]
    assert 0.15 < phone.isna().mean() < 0.4
    assert phone.str.fullmatch(r"\+\d{8,15}").any()  # E.164
    assert phone.str.fullmatch(r"0\d{2,3} \d{3} \d+").any()  # national with spaces
    assert phone.str.fullmatch(r"\(\d{3}\) \d{3}-\d{4}").any()  # US
    assert phone.isin(["n/a", "tbd", "0", "123", "-"]).any()  # garbage


# --------------------------------------------------------------------------- events


def test_event_mix(tables: dict[str, pd.DataFrame]) -> None:
    ev = tables["events"]
    share = ev["event_type"].value_counts(normalize=True)
    assert set(EVENT_TYPES) <= set(share.index)
    assert share.index[0] == "page_view"
    assert share["demo_request"] < 0.02
    assert share["pricing_view"] < share["page_view"]
    assert share["email_open"] > share["email_click"] > share["unsubscribe"]
    per_contact = len(ev) / len(tables["contacts"])
    assert 15 <= per_contact <= 40


def test_event_attributes(tables: dict[str, pd.DataFrame]) -> None:
    ev = tables["events"]
    et = ev["event_type"]
    assert (ev.loc[et == "pricing_view", "page_category"] == "pricing").all()
    pv = ev.loc[et == "page_view", "page_category"]
    assert pv.notna().all() and set(pv) == set(PAGE_CATEGORIES) - {"pricing"}
    assert ev.loc[~et.isin(["page_view", "pricing_view", *_unknown_types(ev)]),
                  "page_category"].isna().all()
    email = et.isin(["email_open", "email_click", "unsubscribe", "email_bounce"])
    assert ev.loc[email, "campaign_id"].str.fullmatch(r"em-\d{4}-\d{2}").all()
    assert (ev.loc[email, "channel"] == "email").all()
    assert ev.loc[et == "content_download", "campaign_id"].str.fullmatch(
        r"(wp|eb|cs)-\d{3}").all()
    web = et.isin(["webinar_registered", "webinar_attended"])
    assert ev.loc[web, "campaign_id"].str.fullmatch(r"wb-\d{4}-\d").all()
    assert ev.loc[et.isin(["page_view", "demo_request", "chat"]), "campaign_id"].isna().all()
    assert set(ev["channel"].dropna()) == set(CHANNELS)


def _unknown_types(ev: pd.DataFrame) -> list[str]:
    return sorted(set(ev["event_type"]) - set(EVENT_TYPES))


def test_page_views_come_in_sessions(tables: dict[str, pd.DataFrame]) -> None:
    ev = tables["events"]
    pv = ev[ev["event_type"].isin(["page_view", "pricing_view"])].sort_values(
        ["contact_id", "ts"])
    same = pv["contact_id"].eq(pv["contact_id"].shift())
    gap = pv["ts"].diff()[same]
    assert (gap < pd.Timedelta(minutes=10)).mean() > 0.4  # pages of one session
    same_day = pv["ts"].dt.floor("D").eq(pv["ts"].dt.floor("D").shift())[same]
    assert ((gap > pd.Timedelta(hours=1)) & same_day).sum() > 100  # several sessions a day


def test_events_between_creation_and_export(tables: dict[str, pd.DataFrame]) -> None:
    ev = tables["events"]
    created = ev["contact_id"].map(tables["contacts"].set_index("contact_id")["created_at"])
    known = created.notna()
    assert (ev.loc[known, "ts"] >= created[known]).all()
    assert ev["ts"].min() >= START


def test_intent_rises_before_conversion(tables: dict[str, pd.DataFrame],
                                        first_conversion: pd.Series) -> None:
    c = tables["contacts"].set_index("contact_id")["created_at"]
    ev = tables["events"]
    ev = ev[ev["ts"] < END]
    window = pd.Timedelta(days=30)
    conv = first_conversion[first_conversion - window >= first_conversion.index.map(c)]
    rng = np.random.default_rng(0)
    never = c.index.difference(first_conversion.index)
    ref = pd.Series(rng.choice(conv.to_numpy(), never.size), index=never)
    ref = ref[ref - window >= c[never]]
    assert len(conv) > 300 and len(ref) > 5_000

    def counts(ref_t: pd.Series) -> pd.Series:
        e = ev[["contact_id", "ts"]].merge(ref_t.rename("ref"), left_on="contact_id",
                                           right_index=True)
        inside = (e["ts"] < e["ref"]) & (e["ts"] >= e["ref"] - window)
        return e[inside].groupby("contact_id").size().reindex(ref_t.index, fill_value=0)

    conv_rate, base_rate = counts(conv).mean(), counts(ref).mean()
    assert conv_rate > 3 * base_rate, (conv_rate, base_rate)


# --------------------------------------------------------------------------- stages


def test_stage_history(tables: dict[str, pd.DataFrame]) -> None:
    st = tables["stages"]
    assert set(st["stage"]) == set(STAGES)
    first = st.groupby("contact_id", sort=False).first()
    assert first["stage"].isin(["lead", "suspect"]).all()
    created = tables["contacts"].set_index("contact_id")["created_at"]
    assert (first["ts"] == created[first.index]).all()
    assert set(created.index) == set(first.index)
    prev = st.groupby("contact_id")["stage"].shift()
    assert ((prev == "mql") & (st["stage"] == "lead")).sum() > 50  # moves back
    assert ((prev == "sql") & (st["stage"] == "mql")).sum() > 10
    # customers were opportunities first; disqualified contacts never convert afterwards
    cust = st.loc[st["stage"] == "customer", "contact_id"]
    opp = st.loc[st["stage"] == "opportunity"].set_index("contact_id")["ts"]
    assert cust.isin(opp.index).all()
    dq = st.loc[st["stage"] == "disqualified"].set_index("contact_id")["ts"]
    conv = st[st["stage"].isin(["opportunity", "customer"])]
    later = conv["contact_id"].map(dq)
    assert not (later.notna() & (conv["ts"] > later)).any()
    # students are mostly disqualified
    c = tables["contacts"]
    students = c.loc[c["job_title"].str.strip().str.lower() == "student", "contact_id"]
    assert students.isin(dq.index).mean() > 0.4


# --------------------------------------------------------------------------- truth


def test_truth_rows_are_the_eligible_contacts(tables: dict[str, pd.DataFrame],
                                              first_conversion: pd.Series) -> None:
    tr = tables["truth"]
    st = tables["stages"]
    as_of = sorted(tr["as_of"].unique())
    assert as_of == list(pd.date_range(START + pd.DateOffset(months=1), END, freq="MS"))
    assert tr["p_convert_90d"].between(0, 1).all()
    assert not tr.duplicated(["contact_id", "as_of"]).any()
    created = tr["contact_id"].map(tables["contacts"].set_index("contact_id")["created_at"])
    assert (created < tr["as_of"]).all()
    conv = tr["contact_id"].map(first_conversion)
    assert not (conv < tr["as_of"]).any()
    dq = tr["contact_id"].map(st[st["stage"] == "disqualified"].groupby("contact_id")["ts"].min())
    assert not (dq < tr["as_of"]).any()
    # and every eligible canonical contact is there: at the last as-of date, all contacts
    # created before it with no conversion/disqualification before it, except duplicates
    last = tr[tr["as_of"] == END]
    c = tables["contacts"]
    elig = c.loc[(c["created_at"] < END) & ~c["contact_id"].isin(first_conversion.index)
                 & ~c["contact_id"].isin(dq.dropna().index), "contact_id"]
    assert set(last["contact_id"]) <= set(elig)
    assert len(last) > 0.9 * len(elig)
    assert (tr["p_convert_90d"] == 0).any()  # junk contacts


def test_positive_rate_band(labelled: pd.DataFrame) -> None:
    assert len(labelled) > 50_000
    assert 0.02 <= labelled["y"].mean() <= 0.08


def test_truth_calibrated(labelled: pd.DataFrame) -> None:
    resid = labelled["y"] - labelled["p_convert_90d"]
    # standard error clustered by contact (one contact appears at many as-of dates)
    per_contact = resid.groupby(labelled["contact_id"]).sum()
    se = np.sqrt((per_contact**2).sum()) / len(labelled)
    assert abs(resid.mean()) < 4 * se, (resid.mean(), se)
    # calibrated along the range too: deciles of p
    dec = pd.qcut(labelled["p_convert_90d"].rank(method="first"), 10, labels=False)
    by = labelled.groupby(dec)[["p_convert_90d", "y"]].mean()
    assert by["y"].iloc[-1] == pytest.approx(by["p_convert_90d"].iloc[-1], rel=0.15)
    assert by["y"].iloc[:5].mean() < 0.3 * by["y"].iloc[-1]


def test_oracle_discriminates(labelled: pd.DataFrame) -> None:
    auc = roc_auc_score(labelled["y"], labelled["p_convert_90d"])
    assert 0.78 < auc < 0.95, auc


# --------------------------------------------------------------------------- dirt


def test_dirt_duplicate_contacts(tables: dict[str, pd.DataFrame]) -> None:
    c = tables["contacts"]
    key = c["email"].str.strip().str.lower()
    ok = key.str.match(VALID_EMAIL).fillna(False).astype(bool)
    groups = c[ok].groupby(key[ok])
    raw_variants = groups["email"].nunique()
    dup_keys = raw_variants[raw_variants > 1].index
    assert len(dup_keys) > 0.01 * N
    dups = c[ok & key.isin(dup_keys)].sort_values("created_at")
    k = key[dups.index]
    later = dups[k.duplicated(keep="first")]
    assert later["email"].str.contains(r"^\s|\s$|[A-Z]", regex=True).mean() > 0.9
    first_created = dups.groupby(k)["created_at"].transform("min")
    assert (later["created_at"] > first_created[later.index] + pd.Timedelta(days=1)).mean() > 0.3
    # some of the person's events are attached to the duplicate id
    assert later["contact_id"].isin(tables["events"]["contact_id"].unique()).mean() > 0.2


def test_dirt_emails(tables: dict[str, pd.DataFrame]) -> None:
    email = tables["contacts"]["email"]
    assert 0.03 < email.isna().mean() < 0.2
    present = email.dropna().str.strip()
    invalid = present[~present.str.match(VALID_EMAIL)]
    assert 0.02 < len(invalid) / len(present) < 0.1
    assert present.isin(["n/a", "test@test"]).any()
    assert present.str.endswith("@").any()


def test_dirt_missing_firmographics(tables: dict[str, pd.DataFrame]) -> None:
    c = tables["contacts"]
    for col, lo, hi in (("industry", 0.03, 0.2), ("employees", 0.05, 0.25),
                        ("annual_revenue", 0.1, 0.4), ("job_title", 0.05, 0.2),
                        ("country", 0.01, 0.1)):
        assert lo < c[col].isna().mean() < hi, col


def test_dirt_unknown_categories(tables: dict[str, pd.DataFrame]) -> None:
    c = tables["contacts"]
    ind = c["industry"].dropna()
    unknown = set(ind) - NACE
    assert {"IT services", "n/a"} & unknown
    assert ind.isin(unknown).mean() > 0.02
    src = c["lead_source"].dropna()
    assert "podcast" in set(src)
    assert 0.005 < (~src.isin(LEAD_SOURCES)).mean() < 0.05


def test_dirt_events(tables: dict[str, pd.DataFrame]) -> None:
    ev = tables["events"]
    known = ev["contact_id"].isin(tables["contacts"]["contact_id"])
    assert 0 < (~known).sum() < 0.01 * len(ev)  # events of unknown contacts
    assert ev.loc[~known, "contact_id"].str.fullmatch(r"C\d{7}").all()
    assert not ev["ts"].is_monotonic_increasing  # out of order
    assert (ev["ts"].diff() < pd.Timedelta(0)).mean() > 0.2
    future = ev["ts"] >= END
    assert 0 < future.sum() < 0.005 * len(ev)  # a few from the future
    unknown_types = _unknown_types(ev)
    assert "video_play" in unknown_types
    assert 0 < ev["event_type"].isin(unknown_types).mean() < 0.01
