"""Evaluation metrics on hand-computed toy sets."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from training.metrics import (
    METRIC_NAMES,
    binary_metrics,
    compare,
    decile_table,
    expected_calibration_error,
    reliability_curve,
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
    assert list(table.columns) == ["scorer", *METRIC_NAMES]
    assert table["n"].tolist() == [500, 500]
    oracle, constant = table.iloc[0], table.iloc[1]
    assert oracle["roc_auc"] > 0.7 and constant["roc_auc"] == pytest.approx(0.5)
    assert constant["top_decile_lift"] == pytest.approx(1.0)
