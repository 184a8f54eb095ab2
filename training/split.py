"""Train / validation / test splits that never let a label look across a boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from training.config import SplitConfig


@dataclass(frozen=True)
class Split:
    """Row masks of the three windows and a human-readable description of each."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    description: dict[str, str]


def clear_before(dates: np.ndarray, boundary: Any, gap: pd.Timedelta) -> np.ndarray:
    """Mask of the ``dates`` a window ending before ``boundary`` may hold: at least ``gap``
    before it and strictly earlier, whatever the gap (a gap of 0 days must not put the
    boundary date on both sides)."""
    return (dates <= boundary - gap) & (dates < boundary)


def time_split(as_of: pd.Series, config: SplitConfig, *, horizon_days: int) -> Split:
    """Split stacked snapshots by as-of date: train < validation < test, separated by a gap.

    Rows of the same as-of date are always on one side, so the same contact never sits on
    both sides of a boundary at the same date; the gap (default: the label horizon) keeps
    training labels from seeing the validation period and validation labels the test period.
    """
    dates = np.sort(pd.to_datetime(as_of).unique())
    gap = pd.Timedelta(days=horizon_days if config.gap_days is None else config.gap_days)
    test_dates = dates[-config.test_dates:]
    val_pool = dates[clear_before(dates, test_dates[0], gap)]
    val_dates = val_pool[-config.validation_dates:]
    train_dates = dates[clear_before(dates, val_dates[0], gap)] if len(val_dates) else dates[:0]
    if len(train_dates) == 0 or len(val_dates) == 0:
        raise ValueError(
            f"time split: {len(dates)} as-of date(s) are too few for {config.test_dates} test, "
            f"{config.validation_dates} validation date(s) and a {gap.days}-day gap; "
            "give a longer history or lower split.gap_days"
        )
    t = pd.to_datetime(as_of).to_numpy()

    def describe(d: np.ndarray) -> str:
        return f"{pd.Timestamp(d[0]).date()}..{pd.Timestamp(d[-1]).date()} ({len(d)} date(s))"

    return Split(
        train=np.isin(t, train_dates),
        validation=np.isin(t, val_dates),
        test=np.isin(t, test_dates),
        description={"train": describe(train_dates), "validation": describe(val_dates),
                     "test": describe(test_dates)},
    )


def random_split(y: pd.Series, config: SplitConfig, *, seed: int) -> Split:
    """Stratified random split for tables without a time column."""
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=config.test_fraction, stratify=y, random_state=seed)
    val_share = config.validation_fraction / (1 - config.test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y.iloc[rest], random_state=seed)

    def mask(i: np.ndarray) -> np.ndarray:
        m = np.zeros(len(y), dtype=bool)
        m[i] = True
        return m

    pct = lambda m: f"{m.sum()} rows ({m.mean():.0%}, stratified, seed {seed})"
    return Split(mask(train), mask(val), mask(test),
                 {"train": pct(mask(train)), "validation": pct(mask(val)), "test": pct(mask(test))})
