"""ScoreScale (percentile score, bands) and reason codes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features.schema import FEATURES
from training.scoring import (
    READABLE_NAMES,
    ScoreScale,
    format_reasons,
    readable,
    top_effects,
)

# -- ScoreScale ---------------------------------------------------------------


def test_score_is_percentile_on_uniform_population() -> None:
    scale = ScoreScale.fit(np.linspace(0.0, 1.0, 1001))
    got = scale.score(np.array([0.0, 0.25, 0.5, 0.953, 1.0]))
    assert got.tolist() == [0, 25, 50, 95, 100]
    assert got.dtype == np.int64
    # outside the training range: clipped to 0 / 100
    assert scale.score(np.array([-1.0, 2.0])).tolist() == [0, 100]


def test_score_matches_empirical_percentile_on_skewed_population() -> None:
    rng = np.random.default_rng(7)
    train = rng.beta(1.0, 20.0, size=20_000)
    scale = ScoreScale.fit(train)
    probes = np.quantile(train, [0.1, 0.33, 0.5, 0.8, 0.97])
    expected = 100 * np.array([(train <= x).mean() for x in probes])
    assert np.abs(scale.score(probes) - expected).max() <= 1


def test_score_is_monotone_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    scale = ScoreScale.fit(rng.beta(2, 30, size=5_000))
    p = np.sort(rng.random(2_000) * 0.3)
    s = scale.score(p)
    assert np.all(np.diff(s) >= 0)
    assert np.array_equal(s, scale.score(p))
    assert s.min() >= 0 and s.max() <= 100


def test_ties_get_mid_rank_and_nan_scores_zero() -> None:
    # 60% of the population at exactly 0.01, the rest spread above
    train = np.concatenate([np.full(600, 0.01), np.linspace(0.02, 0.5, 400)])
    scale = ScoreScale.fit(train)
    assert scale.score(0.01)[0] == 29  # mid-rank of percentiles 0..59 (29.5), truncated
    assert scale.score(0.005)[0] == 0  # below everything seen
    assert scale.score(np.nan)[0] == 0
    s = scale.score(np.array([0.005, 0.01, 0.011, 0.02, 0.3]))
    assert np.all(np.diff(s) >= 0)


def test_default_bands_and_their_shares() -> None:
    scale = ScoreScale.identity()
    assert scale.band(np.array([100, 95, 94, 80, 79, 50, 49, 0])).tolist() == list("AABBCCDD")
    train = np.random.default_rng(3).random(10_000)
    fitted = ScoreScale.fit(train)
    bands = pd.Series(fitted.band(fitted.score(train)))
    shares = bands.value_counts(normalize=True)
    # the scores are truncated percentiles: the shares are the threshold gaps
    assert shares["A"] == pytest.approx(0.05, abs=0.002)
    assert shares["B"] == pytest.approx(0.15, abs=0.002)
    assert shares["C"] == pytest.approx(0.30, abs=0.002)
    assert shares["D"] == pytest.approx(0.50, abs=0.002)


def test_custom_and_invalid_thresholds() -> None:
    scale = ScoreScale.identity({"A": 90, "B": 70, "C": 30})
    assert scale.band([90, 89, 70, 30, 29]).tolist() == ["A", "B", "B", "C", "D"]
    with pytest.raises(ValueError, match="decreasing"):
        ScoreScale.identity({"A": 50, "B": 80, "C": 10})
    with pytest.raises(ValueError, match="keys"):
        ScoreScale.identity({"A": 90, "B": 70})
    with pytest.raises(ValueError, match="finite"):
        ScoreScale.fit([np.nan, np.inf])


def test_scale_round_trips_through_json() -> None:
    scale = ScoreScale.fit(np.random.default_rng(1).random(500), {"A": 90, "B": 75, "C": 40})
    back = ScoreScale.from_dict(json.loads(json.dumps(scale.to_dict())))
    assert back == scale
    p = np.linspace(0, 1, 50)
    assert np.array_equal(back.score(p), scale.score(p))
    cut = scale.band_probability_cutoffs()
    assert cut["A"] >= cut["B"] >= cut["C"]


# -- readable names -------------------------------------------------------------


def test_readable_names_examples() -> None:
    assert readable("pricing_view_30d") == "Pricing page views (30 days)"
    assert readable("days_since_demo_request") == "Days since last demo request"
    assert readable("email_quality") == "Email quality"
    assert readable("engagement_decayed") == "Engagement (time-decayed)"
    assert readable("demo_request_decayed") == "Demo requests (time-decayed)"
    assert readable("some_new_thing") == "Some new thing"


def test_every_feature_has_a_distinct_plain_name() -> None:
    assert set(READABLE_NAMES) == set(FEATURES)
    names = list(READABLE_NAMES.values())
    assert len(set(names)) == len(names)
    assert not [n for n in names if "_" in n or not n[0].isupper()]


# -- reasons -------------------------------------------------------------------


def test_reasons_top_k_ordering_and_values() -> None:
    effects = np.array(
        [
            [0.5, -0.2, 0.1, -0.9, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.3, 0.3, np.nan, 0.0, -0.12345678],
        ]
    )
    names = ["pricing_view_30d", "email_quality", "industry", "unsubscribed", "employees"]
    values = pd.DataFrame(
        {
            "pricing_view_30d": [3.0, 0.0, 1.0],
            "email_quality": pd.Series(["free", None, "corporate"], dtype="str"),
            "unsubscribed": np.array([1, 0, 0], dtype=np.int64),
            "employees": [np.nan, 5.0, 12.5],
        }
    )
    one = format_reasons(effects, values, names, top_k=1)
    assert [[r["effect"] for r in row] for row in one] == [[-0.9, 0.5], [], [0.3, -0.1235]]
    assert one[0][0] == {"feature": "Unsubscribed", "value": 1, "effect": -0.9}
    assert one[0][1] == {"feature": "Pricing page views (30 days)", "value": 3.0, "effect": 0.5}
    assert one[2][1]["value"] == 12.5

    two = format_reasons(effects, values, names, top_k=2)
    assert [r["effect"] for r in two[0]] == [-0.9, 0.5, -0.2, 0.1]
    assert two[0][2]["value"] == "free"
    assert two[0][3] == {"feature": "Industry", "value": None, "effect": 0.1}  # not in values
    # tie on |effect|: lower feature index first
    assert [r["feature"] for r in two[2][:2]] == ["Pricing page views (30 days)", "Email quality"]
    json.dumps(two)  # JSON-safe
    for row in two:
        for r in row:
            assert isinstance(r["effect"], float)
            assert r["value"] is None or isinstance(r["value"], (str, int, float))


def test_reasons_from_dataframe_effects_and_errors() -> None:
    eff = pd.DataFrame({"chat_7d": [1.0, -2.0], "country": [0.5, 0.0]})
    out = format_reasons(eff, pd.DataFrame({"country": ["DE", "FR"]}), top_k=3)
    assert out[0] == [
        {"feature": "Chats (7 days)", "value": None, "effect": 1.0},
        {"feature": "Country", "value": "DE", "effect": 0.5},
    ]
    assert out[1] == [{"feature": "Chats (7 days)", "value": None, "effect": -2.0}]
    assert format_reasons(np.zeros((0, 3)), None, ["a", "b", "c"]) == []
    with pytest.raises(ValueError, match="feature names"):
        format_reasons(np.zeros((2, 3)), None, ["a", "b"])


@pytest.mark.parametrize("k", [2, 9])
def test_top_effects_matches_naive_sort(k: int) -> None:
    rng = np.random.default_rng(11)
    e = rng.normal(size=(300, 20)).round(2)
    e[rng.random(e.shape) < 0.3] = 0.0
    idx, eff, valid = top_effects(e, k)
    assert idx.shape == eff.shape == valid.shape == (300, 2 * k)
    for i in range(300):
        row = e[i]
        pos = sorted(row[row > 0], reverse=True)[:k]
        neg = sorted(row[row < 0])[:k]
        want = sorted(pos + neg, key=lambda v: -abs(v))
        got = eff[i][valid[i]]
        assert sorted(np.abs(got), reverse=True) == pytest.approx([abs(v) for v in want])
        assert np.all(np.diff(np.abs(got)) <= 0)
        assert np.array_equal(row[idx[i][valid[i]]], got)
        assert not valid[i][valid[i].sum():].any()  # valid slots first
