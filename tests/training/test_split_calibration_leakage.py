"""Time split with gaps, calibration chosen by measurement, leak detection, promotion gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.calibration import Calibrator, choose_calibration
from training.config import GateConfig, SplitConfig
from training.leakage import probable_leaks, single_feature_auc
from training.metrics import ece_by_chance, expected_calibration_error
from training.split import random_split, time_split
from training.tracking import ChampionComparison, gate


def test_time_split_keeps_a_horizon_gap_between_windows():
    dates = pd.Series(pd.date_range("2025-01-01", periods=13, freq="MS")).repeat(3).reset_index(drop=True)
    s = time_split(dates, SplitConfig(test_dates=1, validation_dates=2), horizon_days=90)
    train, val, test = (np.unique(dates[m]) for m in (s.train, s.validation, s.test))
    assert list(test) == [np.datetime64("2026-01-01")]
    assert list(val) == [np.datetime64("2025-09-01"), np.datetime64("2025-10-01")]
    assert train.max() <= val.min() - np.timedelta64(90, "D")
    assert val.max() <= test.min() - np.timedelta64(90, "D")
    assert not (s.train & s.validation).any() and not (s.validation & s.test).any()


def test_time_split_without_a_gap_never_shares_a_date_between_windows():
    dates = pd.Series(pd.date_range("2025-01-01", periods=8, freq="MS")).repeat(3).reset_index(drop=True)
    s = time_split(dates, SplitConfig(test_dates=1, validation_dates=2, gap_days=0), horizon_days=90)
    assert not (s.train & s.validation).any() and not (s.validation & s.test).any()
    train, val, test = (np.unique(dates[m]) for m in (s.train, s.validation, s.test))
    assert list(test) == [np.datetime64("2025-08-01")]
    assert list(val) == [np.datetime64("2025-06-01"), np.datetime64("2025-07-01")]
    assert train.max() == np.datetime64("2025-05-01")


def test_calibration_folds_keep_a_contacts_rows_together():
    # pure noise, each contact twice with the same score and outcome (two validation dates):
    # with rows in separate folds isotonic "predicts" the twin and wins; by contact it loses
    rng = np.random.default_rng(1)
    raw = np.repeat(rng.random(3000), 2)
    y = np.repeat((rng.random(3000) < 0.3).astype(int), 2)
    contacts = np.repeat([f"C{i}" for i in range(3000)], 2)
    assert choose_calibration(raw, y, seed=3)[0] == "isotonic"
    method, losses = choose_calibration(raw, y, seed=3, groups=contacts)
    assert method == "sigmoid" and losses["isotonic"] > losses["sigmoid"]


def test_time_split_with_too_few_dates_says_why():
    dates = pd.Series(pd.date_range("2025-01-01", periods=3, freq="MS"))
    with pytest.raises(ValueError, match="too few"):
        time_split(dates, SplitConfig(), horizon_days=90)


def test_random_split_is_stratified_and_deterministic():
    y = pd.Series(np.r_[np.ones(100), np.zeros(900)].astype(int))
    a, b = random_split(y, SplitConfig(), seed=1), random_split(y, SplitConfig(), seed=1)
    assert (a.test == b.test).all()
    assert y[a.test].mean() == pytest.approx(0.1, abs=0.01)
    assert (a.train.astype(int) + a.validation + a.test == 1).all()


def test_calibration_fixes_a_distorted_model():
    rng = np.random.default_rng(0)
    p_true = rng.beta(1, 12, 40_000)
    y = (rng.random(p_true.size) < p_true).astype(int)
    raw = np.sqrt(p_true)  # over-confident, monotone distortion
    method, losses = choose_calibration(raw, y, seed=0)
    assert set(losses) == {"sigmoid", "isotonic"} and method == min(losses, key=losses.get)
    cal = Calibrator.fit(raw, y, method)
    assert abs(cal.transform(raw).mean() - y.mean()) < 0.003
    again = Calibrator.from_dict(cal.to_dict())
    assert np.array_equal(again.transform(raw[:100]), cal.transform(raw[:100]))
    assert np.all(np.diff(cal.transform(np.linspace(0, 1, 50))) >= 0)


def test_a_planted_label_copy_is_flagged_as_a_leak():
    rng = np.random.default_rng(1)
    y = (rng.random(5000) < 0.1).astype(int)
    frame = pd.DataFrame({
        "honest": y * 0.3 + rng.normal(size=5000),
        "leak": y + rng.normal(scale=0.01, size=5000),
        "leak_cat": np.where(y == 1, "won", "open"),
    })
    aucs = single_feature_auc(frame, y, ["honest", "leak", "leak_cat"])
    leaks = probable_leaks(aucs, 0.97)
    assert set(leaks) == {"leak", "leak_cat"} and "probable leak" in leaks["leak"]


def test_gate_promotes_only_a_model_that_beats_rules_and_champion():
    cfg = GateConfig(max_loss_vs_champion=0.005)
    rules = {"roc_auc": 0.70, "ece": 0.01}
    assert gate({"roc_auc": 0.80, "ece": 0.01}, rules, None, cfg).promoted
    assert not gate({"roc_auc": 0.69, "ece": 0.01}, rules, None, cfg).promoted
    champion = ChampionComparison("1", metrics={"roc_auc": 0.81})
    assert not gate({"roc_auc": 0.80, "ece": 0.01}, rules, champion, cfg).promoted
    assert gate({"roc_auc": 0.806, "ece": 0.01}, rules, champion, cfg).promoted
    assert not gate({"roc_auc": 0.80, "ece": 0.2}, rules, None, cfg).promoted


def test_the_calibration_gate_allows_what_chance_gives_on_few_test_rows():
    """A calibrated model's ECE on a few hundred rows is about 0.05 by chance alone (labels
    drawn from the model's own probabilities): that alone must not keep it from champion."""
    rng = np.random.default_rng(3)
    cfg, rules = GateConfig(), {"roc_auc": 0.60, "ece": 0.01}
    p = rng.beta(1, 2.5, 360)
    eces = [expected_calibration_error(rng.random(360) < p, p) for _ in range(200)]
    chance = ece_by_chance(p)
    assert np.mean(np.array(eces) > cfg.max_ece) > 0.3  # the fixed bar alone fails a third or more
    assert 0.01 < np.mean(np.array(eces) > chance) < 0.10  # the chance bar about one in twenty
    assert gate({"roc_auc": 0.80, "ece": 0.06, "ece_by_chance": chance}, rules, None, cfg).promoted
    off = gate({"roc_auc": 0.80, "ece": chance + 0.01, "ece_by_chance": chance}, rules, None, cfg)
    assert not off.promoted and "by chance" in off.reason
    big = gate({"roc_auc": 0.80, "ece": 0.06, "ece_by_chance": 0.012}, rules, None, cfg)  # many rows
    assert not big.promoted
    # on a hundred rows chance allows 0.15; the allowance stops at twice max_ece
    assert not gate({"roc_auc": 0.80, "ece": 0.12, "ece_by_chance": 0.156}, rules, None, cfg).promoted
    assert gate({"roc_auc": 0.80, "ece": 0.09, "ece_by_chance": 0.156}, rules, None, cfg).promoted
    assert not gate({"roc_auc": 0.80, "ece": 0.06, "ece_by_chance": float("nan")}, rules, None, cfg).promoted
