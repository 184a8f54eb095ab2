"""Rule-based scorer: points, decay, caps, bands, probability, output contract."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features.schema import OUTPUT_COLUMNS
from training.rules import (
    RulePoints,
    RulesConfigError,
    RuleScorer,
    decay_weight,
    load_rules_config,
    parse_rules_config,
)

BASE: dict = {
    "decay_half_life_days": 30,
    "fit": {
        "industry": {"software": 20, "government": -10},
        "seniority": {"vp": 15, "student": -10, "unknown": -1},
        "email_quality": {"corporate": 5, "free": -5},
        "cap": 30,
    },
    "engagement": {
        "points": {"demo_request": 20, "pricing_view": 5, "page_view": 1},
        "caps": {"pricing_view": 15},
        "total_cap": 40,
    },
    "negative": {"unsubscribed": -25, "bounced": -10, "do_not_email": -5},
    "grades": {
        "fit": {"A": 25, "B": 15, "C": 5},
        "engagement": {"level_1": 30, "level_2": 15, "level_3": 5},
    },
    "probability": {"midpoint": 40, "scale": 10, "min_positives_isotonic": 20},
}


def _scorer(**overrides: object) -> RuleScorer:
    cfg = copy.deepcopy(BASE)
    for dotted, value in overrides.items():
        node = cfg
        *head, last = dotted.split("__")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    return RuleScorer(parse_rules_config(cfg))


# -- configuration ----------------------------------------------------------------


def test_packaged_defaults_load_and_score_an_empty_profile() -> None:
    cfg = load_rules_config()
    assert cfg.decay_half_life_days == 30
    assert cfg.engagement.points["demo_request"] > cfg.engagement.points["page_view"]
    assert cfg.negative.unsubscribed < 0
    scorer = RuleScorer()
    p = scorer.predict_proba(pd.DataFrame({"contact_id": ["x", "y"]}))
    d = cfg.probability
    expected = 1 / (1 + np.exp(-(0 - d.midpoint) / d.scale))
    assert p == pytest.approx([expected, expected])


@pytest.mark.parametrize(
    ("patch", "pattern"),
    [
        ({"decay_half_life_days": -3}, r"decay_half_life_days: .*greater than 0"),
        ({"colour": 1}, r"colour: Extra inputs are not permitted"),
        ({"fit": {"industri": {"software": 1}}}, r"fit\.industri: Extra inputs"),
        ({"fit": {"seniority": {"ceo": 5}}}, r"fit\.seniority: unknown value 'ceo'"),
        ({"engagement": {"points": {"pricing": 5}}}, r"engagement\.points: unknown event type"),
        ({"engagement": {"caps": {"chat": -1}}}, r"engagement\.caps\.chat: .*greater than or equal"),
        ({"negative": {"bounced": 5}}, r"negative\.bounced: .*less than or equal to 0"),
        ({"grades": {"fit": {"A": 5, "B": 10, "C": 1}}}, r"grades\.fit: .*decrease"),
        ({"band_matrix": {"A": ["A", "A", "E", "C"]}}, r"band_matrix\.A\.2"),
        ({"probability": {"scale": 0}}, r"probability\.scale"),
    ],
)
def test_invalid_config_names_the_key(patch: dict, pattern: str) -> None:
    with pytest.raises(RulesConfigError, match=pattern):
        parse_rules_config(patch)


def test_from_yaml_path_override(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(BASE))
    scorer = RuleScorer.from_yaml(path)
    assert scorer.config.fit.industry == {"software": 20.0, "government": -10.0}
    path.write_text("fit: [1, 2\n")
    with pytest.raises(RulesConfigError, match="YAML"):
        load_rules_config(path)


# -- points -----------------------------------------------------------------------


def test_demo_request_30_days_ago_with_half_life_30_counts_half() -> None:
    scorer = _scorer()
    assert decay_weight(30, 30) == pytest.approx(0.5)
    frame = pd.DataFrame({"demo_request_decayed": [decay_weight(30, 30), 1.0, 0.0]})
    pts = scorer.points(frame)
    assert isinstance(pts, RulePoints)
    assert pts.contributions["demo_request_decayed"].tolist() == pytest.approx([10.0, 20.0, 0.0])
    # no fit columns: seniority is unknown for everybody (-1)
    assert pts.fit.tolist() == pytest.approx([-1.0, -1.0, -1.0])
    assert pts.engagement.tolist() == pytest.approx([10.0, 20.0, 0.0])
    assert pts.total.tolist() == pytest.approx([9.0, 19.0, -1.0])


def test_per_type_total_and_fit_caps_bind() -> None:
    scorer = _scorer()
    frame = pd.DataFrame(
        {
            "pricing_view_decayed": [2.0, 10.0, 10.0],  # 10, 50 -> capped 15, 15
            "demo_request_decayed": [0.0, 0.0, 2.0],  # 0, 0, 40
            "page_view_decayed": [0.0, 0.0, 5.0],  # 5
            "industry": ["Software", "Software", "Government"],
            "seniority": ["vp", "vp", "vp"],  # fit 35 -> capped 30
            "email_quality": ["free", "corporate", "free"],
        }
    )
    pts = scorer.points(frame)
    c = pts.contributions
    assert c["pricing_view_decayed"].tolist()[:2] == pytest.approx([10.0, 15.0])
    # row 2: 15 + 40 + 5 = 60 > total cap 40 -> scaled by 2/3
    assert c.loc[2, ["pricing_view_decayed", "demo_request_decayed", "page_view_decayed"]].tolist() \
        == pytest.approx([10.0, 80 / 3, 10 / 3])
    assert pts.engagement.tolist() == pytest.approx([10.0, 15.0, 40.0])
    # row 0: 20 + 15 - 5 = 30 (cap not exceeded); row 1: 20 + 15 + 5 = 40 -> 30
    assert pts.fit.tolist() == pytest.approx([30.0, 30.0, 0.0])
    assert c.loc[1, ["industry", "seniority", "email_quality"]].tolist() == pytest.approx(
        [15.0, 11.25, 3.75]
    )
    # contributions always add up to the total
    assert c.sum(axis=1).to_numpy() == pytest.approx(pts.total)


def test_negative_points_flags_of_any_type() -> None:
    scorer = _scorer()
    frame = pd.DataFrame(
        {
            "unsubscribed": [1.0, 0.0, np.nan, 0.0],
            "bounced": pd.array([True, False, None, False], dtype="boolean"),
            "do_not_email": pd.Series(["true", "false", None, "1"], dtype="str"),
        }
    )
    pts = scorer.points(frame)
    assert pts.engagement.tolist() == pytest.approx([-40.0, 0.0, 0.0, -5.0])


def test_missing_columns_nan_unknown_and_normalised_categories() -> None:
    scorer = _scorer(fit__cap=None)
    frame = pd.DataFrame(
        {
            "industry": ["  SOFTWARE ", "Basket weaving", None, np.nan],
            "seniority": ["VP", None, "nonsense", "student"],
            "email_quality": [np.nan, "Corporate", "free", "free"],
            "demo_request_decayed": [np.nan, -1.0, 0.5, np.inf],
        }
    )
    pts = scorer.points(frame)
    assert pts.contributions["industry"].tolist() == [20.0, 0.0, 0.0, 0.0]
    assert pts.contributions["seniority"].tolist() == [15.0, -1.0, 0.0, -10.0]
    assert pts.contributions["email_quality"].tolist() == [0.0, 5.0, -5.0, -5.0]
    assert pts.contributions["demo_request_decayed"].tolist() == [0.0, 0.0, 10.0, 0.0]
    assert np.isfinite(pts.total).all()


def test_band_from_fit_grade_and_engagement_level() -> None:
    scorer = _scorer()
    frame = pd.DataFrame(
        {  # fit: 35 -> cap 30 (A), 30 (A), 15 (B), -10 (D), 5 (C), -10 (D)
            "industry": ["software", "software", None, "government", None, "government"],
            "seniority": ["vp", "vp", "vp", None, None, None],
            "email_quality": [None, None, None, None, "corporate", None],
            # engagement: 40 (1), 0 (4), 20 (2), 40 (1), 5 (3), 0 (4)
            "demo_request_decayed": [2.0, 0.0, 1.0, 2.0, 0.25, 0.0],
        }
    )
    frame.loc[[3, 5], "seniority"] = "individual"  # no points, not "unknown"
    frame.loc[4, "seniority"] = "individual"
    grades = scorer.grades(frame)
    assert grades["fit_points"].tolist() == pytest.approx([30, 30, 15, -10, 5, -10])
    assert grades["fit_grade"].tolist() == ["A", "A", "B", "D", "C", "D"]
    assert grades["engagement_level"].tolist() == [1, 4, 2, 1, 3, 4]
    # default matrix: A1 A, A4 C, B2 B, D1 C, C3 C, D4 D
    assert grades["band"].tolist() == ["A", "C", "B", "C", "C", "D"]
    custom = _scorer(band_matrix={"D": ["B", "D", "D", "D"]})
    assert custom.bands(frame)[3] == "B"


# -- probability ---------------------------------------------------------------------


def test_default_logistic_mapping() -> None:
    scorer = _scorer()
    p = scorer.probability_from_points(np.array([40.0, 50.0, 30.0, -1e6, 1e6]))
    assert p[0] == pytest.approx(0.5)
    assert p[1] == pytest.approx(1 / (1 + np.exp(-1)))
    assert p[2] == pytest.approx(1 - p[1])
    assert p[3] == pytest.approx(0.0) and p[4] == pytest.approx(1.0)


def _history(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = rng.integers(-20, 100, size=n).astype(float)
    truth = 1 / (1 + np.exp(-(points - 50) / 12))
    return points, (rng.random(n) < truth).astype(int)


def test_isotonic_calibration_is_monotone_and_learns_the_rate() -> None:
    points, y = _history(4_000, seed=1)
    scorer = _scorer().calibrate(points, y)
    assert scorer.calibration["kind"] == "isotonic"
    grid = np.linspace(-100, 200, 601)
    p = scorer.probability_from_points(grid)
    assert np.all(np.diff(p) >= 0)
    assert p.min() > 0 and p.max() < 1
    high = points >= 80
    assert scorer.probability_from_points(np.array([90.0]))[0] == pytest.approx(
        y[high].mean(), abs=0.08
    )
    # the score scale is learned on the same population
    assert scorer.scale is not None
    s = scorer.scale.score(scorer.probability_from_points(points))
    assert s.min() <= 5 and s.max() >= 95


def test_few_positives_use_platt_and_degenerate_history_raises() -> None:
    points = np.array([0, 5, 10, 20, 30, 40, 50, 60, 70, 80], dtype=float)
    y = np.array([0, 0, 0, 0, 1, 0, 0, 1, 1, 1])
    scorer = _scorer().calibrate(points, y)
    assert scorer.calibration["kind"] == "logistic"
    p = scorer.probability_from_points(np.linspace(-50, 150, 50))
    assert np.all(np.diff(p) > 0)
    anti = _scorer().calibrate(points, y[::-1])
    assert anti.calibration["kind"] == "constant"
    assert anti.predict_proba(pd.DataFrame(index=range(3))) == pytest.approx([0.4] * 3)
    with pytest.raises(ValueError, match="both"):
        _scorer().calibrate(points, np.zeros(10))


# -- output contract ----------------------------------------------------------------


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_id": ["c1", "c2", "c3"],
            "industry": pd.Series(["Software", "Government", None], dtype="str"),
            "seniority": ["vp", "student", None],
            "email_quality": ["corporate", "free", None],
            "demo_request_decayed": [decay_weight(30, 30), 0.0, 0.0],
            "pricing_view_decayed": [1.0, 0.0, 0.0],
            "unsubscribed": [0, 1, 0],
        }
    )


def test_score_frame_contract_and_reasons() -> None:
    scorer = _scorer()
    out = scorer.score_frame(_frame(), scored_at="2024-06-30T02:00:00Z", top_k=2)
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert out["contact_id"].tolist() == ["c1", "c2", "c3"]
    assert set(out["scorer"]) == {"rules"} and set(out["model_name"]) == {"rules"}
    assert re.fullmatch(r"[0-9a-f]{12}", out["model_version"].iloc[0])
    assert out["score"].dtype == np.int64 and out["score"].between(0, 100).all()
    assert out["probability"].between(0, 1).all()
    assert out["probability"].iloc[0] > out["probability"].iloc[2] > out["probability"].iloc[1]
    assert set(out["band"]) <= set("ABCD")
    assert out["scored_at"].iloc[0] == pd.Timestamp("2024-06-30T02:00:00Z")

    # fit 20 + 15 + 5 = 40 capped to 30 (x 0.75); demo request 30 days ago 10, pricing 5
    r1 = out["reasons"].iloc[0]
    assert r1 == [
        {"feature": "Industry", "value": "Software", "effect": 15.0},
        {"feature": "Seniority", "value": "vp", "effect": 11.25},
    ]
    r1_all = scorer.score_frame(_frame(), scored_at="2024-06-30", top_k=5)["reasons"].iloc[0]
    assert [r["effect"] for r in r1_all] == [15.0, 11.25, 10.0, 5.0, 3.75]
    assert r1_all[2] == {"feature": "Demo requests (time-decayed)", "value": 0.5, "effect": 10.0}
    r2 = out["reasons"].iloc[1]  # unsubscribed -25, government -10, student -10, free -5
    assert r2 == [  # top 2 negatives; ties: the rule listed first (industry) wins
        {"feature": "Unsubscribed", "value": 1, "effect": -25.0},
        {"feature": "Industry", "value": "Government", "effect": -10.0},
    ]
    assert out["reasons"].iloc[2] == [{"feature": "Seniority", "value": None, "effect": -1.0}]
    json.dumps(out["reasons"].tolist())


def test_score_frame_survives_an_empty_or_bare_frame() -> None:
    scorer = RuleScorer()
    empty = scorer.score_frame(pd.DataFrame({"contact_id": []}), scored_at="2024-01-01")
    assert list(empty.columns) == list(OUTPUT_COLUMNS) and len(empty) == 0
    bare = scorer.score_frame(pd.DataFrame(index=["a", "b"]), scored_at="2024-01-01")
    assert bare["contact_id"].tolist() == ["a", "b"]
    assert bare["band"].tolist() == ["D", "D"]


def test_round_trip_through_json_keeps_predictions_and_version() -> None:
    points, y = _history(2_000, seed=3)
    scorer = _scorer().calibrate(points, y)
    back = RuleScorer.from_dict(json.loads(json.dumps(scorer.to_dict())))
    frame = _frame()
    assert back.model_version == scorer.model_version
    np.testing.assert_allclose(back.predict_proba(frame), scorer.predict_proba(frame))
    a = back.score_frame(frame, scored_at="2024-01-01")
    b = scorer.score_frame(frame, scored_at="2024-01-01")
    pd.testing.assert_frame_equal(a, b)
    # the version follows the points and the calibration
    assert _scorer().model_version != scorer.model_version
    assert _scorer(fit__cap=31).model_version != _scorer().model_version
    assert _scorer().model_version == _scorer().model_version


def test_half_life_mismatch_is_reported() -> None:
    scorer = _scorer()
    scorer.check_half_life(30.0)
    with pytest.raises(ValueError, match="half-life of 14"):
        scorer.check_half_life(14)
    frame = pd.DataFrame({"demo_request_decayed": [1.0]})
    frame.attrs["half_life_days"] = 7.0
    with pytest.warns(UserWarning, match="half-life"):
        scorer.points(frame)
