"""Evaluation metrics on hand-computed toy sets."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from training.metrics import (
    METRIC_NAMES,
    binary_metrics,
    compare,
    decile_table,
    ece_by_chance,
    expected_calibration_error,
    reliability_curve,
    roc_auc_intervals,
)


def _calibrated_toy() -> tuple[np.ndarray, np.ndarray]:
    """Three groups whose predicted probability equals their observed rate."""
    p = np.repeat([0.2, 0.5, 0.8], 10)
    y = np.concatenate(
        [[1] * 2 + [0] * 8, [1] * 5 + [0] * 5, [1] * 8 + [0] * 2]
    )
    return y, p


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_ece_of_calibrated_toy_is_zero_and_of_shifted_is_the_shift(strategy: str) -> None:
    y, p = _calibrated_toy()
    assert expected_calibration_error(y, p, n_bins=5, strategy=strategy) == pytest.approx(0.0)
    assert expected_calibration_error(y, p + 0.1, n_bins=5, strategy=strategy) == pytest.approx(
        0.1
    )
    assert expected_calibration_error(y, p - 0.15, strategy=strategy) == pytest.approx(0.15)


def test_reliability_curve_matches_sklearn_and_counts_add_up() -> None:
    rng = np.random.default_rng(5)
    p = rng.beta(2, 8, size=2_000)
    y = (rng.random(2_000) < p).astype(int)
    for strategy in ("quantile", "uniform"):
        curve = reliability_curve(y, p, n_bins=10, strategy=strategy)
        assert list(curve.columns) == ["bin", "mean_predicted", "observed_rate", "count"]
        prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
        np.testing.assert_allclose(curve["observed_rate"], prob_true)
        np.testing.assert_allclose(curve["mean_predicted"], prob_pred)
        assert curve["count"].sum() == 2_000
    y3, p3 = _calibrated_toy()
    toy = reliability_curve(y3, p3, n_bins=5, strategy="uniform")
    assert toy["count"].tolist() == [10, 10, 10]
    assert toy["observed_rate"].tolist() == pytest.approx([0.2, 0.5, 0.8])


def test_decile_table_on_handmade_example() -> None:
    # 20 leads, distinct scores, best first; 5 positives: ranks 1, 2, 3, 7, 15
    p = np.linspace(0.95, 0.0, 20)
    y = np.zeros(20, dtype=int)
    y[[0, 1, 2, 6, 14]] = 1
    order = np.random.default_rng(0).permutation(20)  # input order must not matter
    table = decile_table(y[order], p[order])
    assert table["decile"].tolist() == list(range(1, 11))
    assert table["count"].tolist() == [2] * 10
    assert table["positives"].tolist() == [2, 1, 0, 1, 0, 0, 0, 1, 0, 0]
    assert table["conversion_rate"].tolist() == pytest.approx(
        [1.0, 0.5, 0, 0.5, 0, 0, 0, 0.5, 0, 0]
    )
    assert table["lift"].tolist() == pytest.approx([4.0, 2.0, 0, 2.0, 0, 0, 0, 2.0, 0, 0])
    assert table["cumulative_recall"].tolist() == pytest.approx(
        [0.4, 0.6, 0.6, 0.8, 0.8, 0.8, 0.8, 1.0, 1.0, 1.0]
    )
    assert table["mean_probability"].iloc[0] == pytest.approx((0.95 + 0.9) / 2)


def test_decile_table_shares_ties_in_expectation() -> None:
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 0] * 3)
    table = decile_table(y, np.full(30, 0.3))
    assert table["count"].tolist() == [3] * 10
    assert table["positives"].tolist() == pytest.approx([0.9] * 10)
    assert table["lift"].tolist() == pytest.approx([1.0] * 10)


def test_binary_metrics_hand_computed() -> None:
    # 10 leads; the top decile (1 lead) is a positive; 2 positives in total
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    m = binary_metrics(y, p)
    assert list(m) == list(METRIC_NAMES)
    assert m["n"] == 10
    assert m["positive_rate"] == pytest.approx(0.2)
    assert m["recall_top10"] == pytest.approx(0.5)
    assert m["recall_top20"] == pytest.approx(0.5)
    assert m["top_decile_lift"] == pytest.approx(1.0 / 0.2)
    assert m["roc_auc"] == pytest.approx(15 / 16)  # one of 16 pairs misordered
    assert m["log_loss"] == pytest.approx(log_loss(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert 0 <= m["ece"] <= 1


def test_binary_metrics_one_class_and_empty_do_not_raise() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(np.zeros(20), np.full(20, 0.1))
        empty = binary_metrics([], [])
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"])
    assert np.isnan(m["recall_top10"]) and np.isnan(m["top_decile_lift"])
    assert m["brier"] == pytest.approx(0.01)
    assert m["ece"] == pytest.approx(0.1)
    assert empty["n"] == 0 and np.isnan(empty["roc_auc"])
    all_pos = binary_metrics(np.ones(5), np.full(5, 0.9))
    assert np.isnan(all_pos["roc_auc"]) and all_pos["recall_top10"] == pytest.approx(0.2)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="length"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_metrics([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="missing"):
        binary_metrics([0, 1], [0.5, np.nan])
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0.5, 0.5])


def test_compare_one_row_per_scorer_in_order() -> None:
    rng = np.random.default_rng(2)
    truth = rng.random(500)
    y = (rng.random(500) < truth).astype(int)
    table = compare({"oracle": truth, "constant": np.full(500, y.mean())}, y)
    assert isinstance(table, pd.DataFrame)
    assert table["scorer"].tolist() == ["oracle", "constant"]
    assert list(table.columns) == ["scorer", *METRIC_NAMES, "ece_by_chance", "roc_auc_low", "roc_auc_high"]
    assert table["n"].tolist() == [500, 500]
    oracle, constant = table.iloc[0], table.iloc[1]
    assert oracle["roc_auc"] > 0.7 and constant["roc_auc"] == pytest.approx(0.5)
    assert constant["top_decile_lift"] == pytest.approx(1.0)
    assert oracle["roc_auc_low"] < oracle["roc_auc"] < oracle["roc_auc_high"]
    assert compare({"oracle": truth}, np.ones(500))[["roc_auc_low", "roc_auc_high"]].isna().all(axis=None)



def test_roc_auc_intervals_match_sklearn_and_a_hand_computed_delong_variance() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.4, 0.4, 0.4, 0.2, 0.1, 0.5])  # ties across the classes count half
    row = roc_auc_intervals({"s": s}, y).loc["s"]
    assert row["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    # DeLong by hand: per positive, the share of negatives below (ties half); per negative,
    # the share of positives above; variance = var(v10) / m + var(v01) / n
    v10 = np.array([1.0, 2.5 / 4, 2.5 / 4])
    v01 = np.array([2 / 3, 1.0, 1.0, 1 / 3])
    assert v10.mean() == pytest.approx(row["roc_auc"])
    assert row["se"] ** 2 == pytest.approx(v10.var(ddof=1) / 3 + v01.var(ddof=1) / 4)


def test_roc_auc_intervals_cover_the_true_auc_about_as_often_as_stated() -> None:
    """Binormal scores (positives shifted by d): the true ROC AUC is Phi(d / sqrt 2)."""
    rng = np.random.default_rng(4)
    d, n1, n0, trials = 1.2, 120, 180, 400
    truth = norm.cdf(d / np.sqrt(2))
    covered = 0
    for _ in range(trials):
        y = np.r_[np.ones(n1), np.zeros(n0)]
        s = np.r_[rng.normal(d, 1, n1), rng.normal(0, 1, n0)]
        row = roc_auc_intervals({"s": s}, y).loc["s"]
        assert row["low"] < row["roc_auc"] < row["high"]
        covered += row["low"] <= truth <= row["high"]
    assert 0.91 <= covered / trials <= 0.98


def test_roc_auc_intervals_pair_the_scorers() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(600) < 0.4).astype(int)
    good = rng.normal(size=600) + 1.5 * y
    worse = good + rng.normal(size=600)  # the same signal, blurred
    table = roc_auc_intervals({"good": good, "worse": worse, "same": good.copy()}, y, baseline="worse")
    assert table.index.tolist() == ["good", "worse", "same"]
    assert list(table.columns) == ["roc_auc", "se", "low", "high", "minus_baseline", "minus_low",
                                   "minus_high", "p_value"]
    assert table.loc["good", "roc_auc"] == pytest.approx(roc_auc_score(y, good))
    assert table.loc["same"].equals(table.loc["good"])
    assert table.loc["worse", ["minus_baseline", "minus_low", "minus_high", "p_value"]].tolist() == [0, 0, 0, 1]
    good_row = table.loc["good"]
    assert good_row["minus_low"] > 0 and good_row["p_value"] < 1e-3
    # paired: the gain is known more precisely than the two AUCs apart would suggest
    assert good_row["minus_high"] - good_row["minus_low"] < good_row["high"] - good_row["low"]


def test_roc_auc_intervals_bad_inputs_are_named() -> None:
    two = ([0, 0, 1, 1], [0.1, 0.3, 0.2, 0.4])
    with pytest.raises(ValueError, match="two rows of each class"):
        roc_auc_intervals({"s": [0.1, 0.2, 0.3]}, [0, 0, 1])  # a variance needs two
    with pytest.raises(ValueError, match="baseline 'x'"):
        roc_auc_intervals({"s": two[1]}, two[0], baseline="x")
    with pytest.raises(ValueError, match="length"):
        roc_auc_intervals({"s": [0.1]}, two[0])
    with pytest.raises(ValueError, match="level"):
        roc_auc_intervals({"s": two[1]}, two[0], level=95)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by a zero count on the way
        table = compare({"s": [0.1, 0.2, 0.3]}, [0, 0, 1])
    assert table["roc_auc"].item() == 1.0 and table[["roc_auc_low", "roc_auc_high"]].isna().all(axis=None)


@pytest.mark.parametrize("n", [300, 3000])
def test_ece_by_chance_is_what_calibrated_labels_exceed_one_time_in_twenty(n: int) -> None:
    rng = np.random.default_rng(n)
    p = rng.beta(1, 2.5, n)
    chance = ece_by_chance(p)
    eces = np.array([expected_calibration_error(rng.random(n) < p, p) for _ in range(300)])
    assert 0.015 <= np.mean(eces > chance) <= 0.10
    assert ece_by_chance(p, seed=1) == pytest.approx(chance, rel=0.1)
    assert np.isnan(ece_by_chance([]))
