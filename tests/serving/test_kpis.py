"""Funnel KPIs and PSI, checked against values computed by hand on a six-contact base.

The base (days from 2024-01-01 in brackets):

=====  ==========  ================================================================
id     source      stage history
=====  ==========  ================================================================
c1     web_form    lead 01-01, mql 01-11, sql 01-16, opportunity 01-26, customer 02-25
c2     web_form    lead 01-05, mql 01-25, sql 02-04, mql 02-14 (a regression)
c3     web_form    lead 02-01, cold 02-11
c4     webinar     lead 02-03, mql 02-07, sql 02-09, opportunity 02-19
c5     webinar     (no stage change: a lead)
c6     webinar     suspect 03-01, lead 03-03, mql 03-08
=====  ==========  ================================================================
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from serving.drift import psi, psi_table
from serving.kpis import (
    band_shares,
    cold_and_regressions,
    leads_by_source_month,
    leads_needed,
    service_level,
    stage_conversion,
    stage_counts_now,
    stage_velocity,
)

HISTORY = {
    "c1": [
        ("2024-01-01", "lead"),
        ("2024-01-11", "mql"),
        ("2024-01-16", "sql"),
        ("2024-01-26", "opportunity"),
        ("2024-02-25", "customer"),
    ],
    "c2": [
        ("2024-01-05", "lead"),
        ("2024-01-25", "mql"),
        ("2024-02-04", "sql"),
        ("2024-02-14", "mql"),
    ],
    "c3": [("2024-02-01", "lead"), ("2024-02-11", "cold")],
    "c4": [
        ("2024-02-03", "lead"),
        ("2024-02-07", "mql"),
        ("2024-02-09", "sql"),
        ("2024-02-19", "opportunity"),
    ],
    "c6": [("2024-03-01", "suspect"), ("2024-03-03", "lead"), ("2024-03-08", "mql")],
}


@pytest.fixture()
def contacts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_id": ["c1", "c2", "c3", "c4", "c5", "c6"],
            "created_at": pd.to_datetime(
                ["2024-01-01", "2024-01-05", "2024-02-01", "2024-02-03", "2024-02-10", "2024-03-01"]
            ),
            "lead_source": ["web_form"] * 3 + ["webinar"] * 3,
            "email": [f"person{i}@example.com" for i in range(6)],
        }
    )


@pytest.fixture()
def stages() -> pd.DataFrame:
    rows = [(cid, ts, st) for cid, hist in HISTORY.items() for ts, st in hist]
    df = pd.DataFrame(rows, columns=["contact_id", "ts", "stage"])
    df["ts"] = pd.to_datetime(df["ts"])
    # input order must not matter
    return df.sample(frac=1.0, random_state=3).reset_index(drop=True)


def _by_stage(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("stage")


# --- stage counts -----------------------------------------------------------


def test_stage_counts_now(stages, contacts):
    out = _by_stage(stage_counts_now(stages, contacts))
    expected = {
        "suspect": 0,
        "lead": 1,
        "mql": 2,
        "sql": 0,
        "opportunity": 1,
        "customer": 1,
        "cold": 1,
        "disqualified": 0,
    }
    assert out["contacts"].to_dict() == expected
    assert out["share"]["mql"] == pytest.approx(2 / 6)
    assert out["share"].sum() == pytest.approx(1.0)


def test_stage_counts_as_of_ignores_later_changes_and_contacts(stages, contacts):
    out = _by_stage(stage_counts_now(stages, contacts, as_of="2024-02-05"))
    # c1..c4 exist; c1 at opportunity, c2 at sql, c3 still lead (cold later), c4 lead
    assert out["contacts"].sum() == 4
    assert out.loc["lead", "contacts"] == 2
    assert out.loc["sql", "contacts"] == 1
    assert out.loc["opportunity", "contacts"] == 1
    assert out.loc["cold", "contacts"] == 0


def test_stage_counts_tie_goes_along_funnel_with_cold_last():
    contacts = pd.DataFrame({"contact_id": [1], "created_at": pd.to_datetime(["2024-01-01"])})
    stages = pd.DataFrame(
        {
            "contact_id": [1, 1],
            "ts": pd.to_datetime(["2024-01-02", "2024-01-02"]),
            "stage": ["cold", "mql"],
        }
    )
    out = _by_stage(stage_counts_now(stages, contacts))
    assert out.loc["cold", "contacts"] == 1


# --- leads per source and month --------------------------------------------


def test_leads_by_source_month(contacts):
    out = leads_by_source_month(contacts)
    got = {(s, m): n for s, m, n in out.itertuples(index=False)}
    assert got == {
        ("web_form", "2024-01"): 2,
        ("web_form", "2024-02"): 1,
        ("webinar", "2024-02"): 2,
        ("webinar", "2024-03"): 1,
    }
    assert list(out["month"]) == sorted(out["month"])


def test_leads_by_source_month_missing_source():
    contacts = pd.DataFrame(
        {
            "contact_id": [1, 2],
            "created_at": pd.to_datetime(["2024-05-31", "2024-06-01"]),
            "lead_source": [None, "referral"],
        }
    )
    out = leads_by_source_month(contacts)
    assert set(zip(out["lead_source"], out["month"], strict=True)) == {
        ("unknown", "2024-05"),
        ("referral", "2024-06"),
    }


# --- stage conversion --------------------------------------------------------


def test_stage_conversion_overall(stages, contacts):
    out = stage_conversion(stages, contacts).set_index(["from_stage", "to_stage"])
    expected = {
        ("lead", "mql"): (6, 4),
        ("mql", "sql"): (4, 3),
        ("sql", "opportunity"): (3, 2),
        ("opportunity", "customer"): (2, 1),
    }
    assert list(out.index) == list(expected)
    for pair, (gen, conv) in expected.items():
        assert out.loc[pair, "generated"] == gen
        assert out.loc[pair, "converted"] == conv
        assert out.loc[pair, "rate"] == pytest.approx(conv / gen)
    # rates multiply to lead -> opportunity (2 of 6)
    chain = out["rate"].iloc[:3].prod()
    assert chain == pytest.approx(2 / 6)


def test_stage_conversion_by_lead_source(stages, contacts):
    out = stage_conversion(stages, contacts, by="lead_source")
    got = {
        (s, a): (g, c)
        for s, a, g, c in out[["lead_source", "from_stage", "generated", "converted"]].itertuples(
            index=False
        )
    }
    assert got == {
        ("web_form", "lead"): (3, 2),
        ("web_form", "mql"): (2, 2),
        ("web_form", "sql"): (2, 1),
        ("web_form", "opportunity"): (1, 1),
        ("webinar", "lead"): (3, 2),
        ("webinar", "mql"): (2, 1),
        ("webinar", "sql"): (1, 1),
        ("webinar", "opportunity"): (1, 0),
    }


def test_stage_conversion_suspect_only_is_not_a_lead_and_skips_count():
    contacts = pd.DataFrame(
        {"contact_id": ["a", "b"], "created_at": pd.to_datetime(["2024-01-01"] * 2)}
    )
    stages = pd.DataFrame(
        {
            "contact_id": ["a", "b", "b"],
            "ts": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-09"]),
            "stage": ["suspect", "lead", "sql"],  # b skips mql
        }
    )
    out = stage_conversion(stages, contacts).set_index("from_stage")
    assert out.loc["lead", "generated"] == 1
    assert out.loc["lead", "converted"] == 1
    assert out.loc["mql", "converted"] == 1
    assert math.isnan(out.loc["opportunity", "rate"])


# --- velocity ---------------------------------------------------------------


def test_stage_velocity(stages):
    out = _by_stage(stage_velocity(stages))
    # lead spells 10 (c1), 20 (c2), 10 (c3), 4 (c4), 5 (c6)
    assert out.loc["lead", "completed_spells"] == 5
    assert out.loc["lead", "median_days"] == pytest.approx(10.0)
    assert out.loc["lead", "p90_days"] == pytest.approx(16.0)  # 10 + 0.6 * (20 - 10)
    assert out.loc["lead", "mean_days"] == pytest.approx(9.8)
    assert out.loc["lead", "open_spells"] == 0
    # mql: 5 (c1), 10 (c2), 2 (c4); open: c2's second spell, c6
    assert out.loc["mql", "completed_spells"] == 3
    assert out.loc["mql", "median_days"] == pytest.approx(5.0)
    assert out.loc["mql", "p90_days"] == pytest.approx(9.0)
    assert out.loc["mql", "open_spells"] == 2
    # open spells so far, to the latest change (03-08): c6 0 days, c2 23 days
    assert out.loc["mql", "open_median_days"] == pytest.approx(11.5)
    assert out.loc["sql", "median_days"] == pytest.approx(10.0)
    assert out.loc["opportunity", "completed_spells"] == 1
    assert out.loc["opportunity", "median_days"] == pytest.approx(30.0)
    assert out.loc["opportunity", "open_spells"] == 1
    assert out.loc["customer", "completed_spells"] == 0
    assert math.isnan(out.loc["customer", "median_days"])
    assert out.loc["customer", "open_spells"] == 1
    assert out.loc["cold", "open_spells"] == 1
    assert out.loc["suspect", "median_days"] == pytest.approx(2.0)


def test_stage_velocity_as_of_opens_running_spells(stages):
    out = _by_stage(stage_velocity(stages, as_of="2024-01-20"))
    # by 01-20: c1 lead 10d then mql 5d, sql open; c2 lead open
    assert out.loc["lead", "completed_spells"] == 1
    assert out.loc["lead", "open_spells"] == 1
    assert out.loc["lead", "open_median_days"] == pytest.approx(15.0)
    assert out.loc["sql", "open_spells"] == 1


def test_stage_velocity_merges_repeated_stage():
    stages = pd.DataFrame(
        {
            "contact_id": [1, 1, 1],
            "ts": pd.to_datetime(["2024-01-01", "2024-01-03", "2024-01-08"]),
            "stage": ["mql", "mql", "sql"],
        }
    )
    out = _by_stage(stage_velocity(stages))
    assert out.loc["mql", "completed_spells"] == 1
    assert out.loc["mql", "median_days"] == pytest.approx(7.0)


# --- cold and regressions -----------------------------------------------------


def test_cold_and_regressions(stages):
    row = cold_and_regressions(stages).iloc[0]
    assert row["contacts"] == 5  # c5 has no stage change
    assert row["went_cold"] == 1
    assert row["regressed"] == 1
    assert row["regression_moves"] == 1
    assert row["regressed_share"] == pytest.approx(1 / 5)


def test_regression_across_cold():
    stages = pd.DataFrame(
        {
            "contact_id": ["x"] * 3,
            "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
            "stage": ["sql", "cold", "mql"],
        }
    )
    row = cold_and_regressions(stages).iloc[0]
    assert (row["went_cold"], row["regressed"]) == (1, 1)


# --- service level and bands --------------------------------------------------


def _scores(bands: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"contact_id": list(bands), "band": list(bands.values())})


def test_service_level_new_a_leads():
    now = _scores({"c1": "A", "c2": "A", "c3": "B", "c4": "C", "c5": "D", "c6": "A"})
    before = _scores({"c1": "A", "c2": "B", "c3": "A", "c4": "C", "c5": "D"})
    row = service_level(now, before).iloc[0]
    assert row["band_a"] == 3
    assert row["band_a_share"] == pytest.approx(0.5)
    assert row["new_a"] == 2  # c2 (was B), c6 (not scored before)
    alone = service_level(now).iloc[0]
    assert pd.isna(alone["new_a"])


def test_band_shares():
    now = _scores({"c1": "A", "c2": "A", "c3": "B", "c4": "D"})
    out = band_shares(now, _scores({"c1": "B"})).set_index("band")
    assert out["contacts"].to_dict() == {"A": 2, "B": 1, "C": 0, "D": 1}
    assert out.loc["A", "share"] == pytest.approx(0.5)
    assert out.loc["B", "previous_share"] == pytest.approx(1.0)


# --- leads needed ---------------------------------------------------------------


def test_leads_needed_from_conversion_table(stages, contacts):
    rates = stage_conversion(stages, contacts)
    out = leads_needed(100, rates).set_index("stage")
    # sql->opp 2/3, mql->sql 3/4, lead->mql 4/6
    assert out.loc["opportunity", "needed"] == pytest.approx(100)
    assert out.loc["sql", "needed"] == pytest.approx(150)
    assert out.loc["mql", "needed"] == pytest.approx(200)
    assert out.loc["lead", "needed"] == pytest.approx(300)
    assert out.loc["lead", "needed_whole"] == 300


def test_leads_needed_mapping_and_rounding_up():
    out = leads_needed(10, {"lead->mql": 0.3, ("mql", "sql"): 0.5, "sql→opportunity": 0.4})
    row = out.set_index("stage").loc["lead"]
    assert row["needed"] == pytest.approx(10 / 0.4 / 0.5 / 0.3)
    assert row["needed_whole"] == 167


def test_leads_needed_zero_rate_names_the_stage():
    with pytest.raises(ValueError, match="mql→sql"):
        leads_needed(10, {"lead->mql": 0.3, "mql->sql": 0.0, "sql->opportunity": 0.4})
    with pytest.raises(ValueError, match="lead→mql"):
        leads_needed(10, {"mql->sql": 0.5, "sql->opportunity": 0.4})


# --- PSI --------------------------------------------------------------------------


def test_psi_identical_is_zero():
    rng = np.random.default_rng(0)
    x = pd.Series(rng.normal(size=2_000))
    assert psi(x, x) == pytest.approx(0.0, abs=1e-12)
    cats = pd.Series(rng.choice(["a", "b", "c"], size=500))
    assert psi(cats, cats) == pytest.approx(0.0, abs=1e-12)


def test_psi_shifted_is_an_alert():
    rng = np.random.default_rng(1)
    ref = pd.Series(rng.normal(size=5_000))
    cur = pd.Series(rng.normal(loc=1.0, size=5_000))
    assert psi(ref, cur) > 0.25
    same_law = pd.Series(rng.normal(size=5_000))
    assert psi(ref, same_law) < 0.1


def test_psi_by_hand_numeric():
    ref = pd.Series(np.arange(1, 11, dtype=float))  # median 5.5: two bins of 50 %
    cur = pd.Series([1.0, 2.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0])  # 25 % / 75 %
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(ref, cur, bins=2) == pytest.approx(expected)  # 0.274653...
    assert expected == pytest.approx(0.274653, abs=1e-6)


def test_psi_by_hand_categorical_with_unseen():
    ref = pd.Series(["a"] * 5 + ["b"] * 5)
    cur = pd.Series(["a"] * 8 + ["b"] * 2)
    expected = 0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5)
    assert psi(ref, cur) == pytest.approx(expected)  # 0.415888...
    # an unseen category is pooled into one bin whose reference share is eps
    cur2 = pd.Series(["a"] * 5 + ["b"] * 4 + ["z"])
    eps = 1e-4
    expected2 = 0.0 + (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - eps) * math.log(0.1 / eps)
    assert psi(ref, cur2) == pytest.approx(expected2)


def test_psi_missing_values_form_a_bin():
    ref = pd.Series([1.0, 2.0, 3.0, 4.0])
    cur = pd.Series([1.0, 2.0, np.nan, np.nan])
    assert psi(ref, cur, bins=2) > 0.25


def test_psi_table_status_and_exclusions():
    rng = np.random.default_rng(2)
    n = 3_000
    ref = pd.DataFrame(
        {
            "contact_id": np.arange(n),
            "email": [f"p{i}@example.com" for i in range(n)],
            "stable": rng.normal(size=n),
            "shifted": rng.normal(size=n),
            "industry": rng.choice(["saas", "retail"], size=n),
        }
    )
    cur = ref.copy()
    cur["shifted"] = cur["shifted"] + 1.5
    out = psi_table(ref, cur)
    assert list(out["feature"]) == ["shifted", "stable", "industry"]
    status = dict(zip(out["feature"], out["status"], strict=True))
    assert status == {"shifted": "alert", "stable": "ok", "industry": "ok"}
    mid = psi_table(ref, cur, ["shifted"], warn=0.1, alert=100.0)
    assert mid["status"].tolist() == ["warn"]


@pytest.mark.slow
def test_kpis_scale_to_a_million_contacts():
    import time

    rng = np.random.default_rng(5)
    n, k = 1_000_000, 3_000_000

    def choice(values: list[str], size: int) -> pd.Series:
        codes = rng.integers(0, len(values), size)
        return pd.Series(pd.Categorical.from_codes(codes, values)).astype(str)

    day = pd.Timestamp("2023-01-01")
    contacts = pd.DataFrame(
        {
            "contact_id": pd.Series(np.arange(n)).astype(str),
            "created_at": day + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
            "lead_source": choice(["web_form", "webinar", "referral"], n),
        }
    )
    stages = pd.DataFrame(
        {
            "contact_id": pd.Series(rng.integers(0, n, k)).astype(str),
            "ts": day + pd.to_timedelta(rng.integers(0, 500 * 86_400, k), unit="s"),
            "stage": choice(["lead", "mql", "sql", "opportunity", "cold"], k),
        }
    )
    t0 = time.perf_counter()
    counts = stage_counts_now(stages, contacts)
    leads_by_source_month(contacts)
    conv = stage_conversion(stages, contacts, by="lead_source")
    stage_velocity(stages)
    cold_and_regressions(stages)
    elapsed = time.perf_counter() - t0
    assert counts["contacts"].sum() == n
    assert conv.groupby("from_stage")["generated"].sum()["lead"] == n
    assert elapsed < 40, f"KPIs on 1M contacts / 3M stage changes took {elapsed:.1f}s"
