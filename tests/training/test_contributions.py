"""Tree SHAP contributions tabulated per tree (training.contributions) against LightGBM's own
``pred_contrib``: numerical splits with each missing-value rule, categorical splits, values
exactly at thresholds, NaN, zeros and negative categories."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from training.contributions import TreeContributions


def _data(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack([
        rng.normal(size=n),                                   # plain numeric
        np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),  # NaN as missing
        np.where(rng.random(n) < 0.3, 0.0, rng.exponential(size=n)),  # zeros
        np.where(rng.random(n) < 0.1, np.nan, rng.integers(0, 12, size=n)),  # categorical
        rng.integers(0, 5, size=n).astype(float),             # small integer numeric
    ])
    logit = X[:, 0] + np.nan_to_num(X[:, 1]) * 0.8 - X[:, 2] + (np.nan_to_num(X[:, 3]) % 3 == 0) * 1.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def _booster(X, y, **params) -> lgb.Booster:
    base = {"objective": "binary", "num_leaves": 7, "learning_rate": 0.2, "verbose": -1,
            "min_data_in_leaf": 20, "seed": 1, "deterministic": True, "num_threads": 1,
            "max_cat_to_onehot": 4}
    return lgb.train({**base, **params}, lgb.Dataset(X, y, categorical_feature=[3]),
                     num_boost_round=40)


def _adversarial(X: np.ndarray, table: TreeContributions, seed: int = 1) -> np.ndarray:
    """Rows with NaN, zeros, negatives, values exactly at split thresholds and just above,
    unseen and negative categories."""
    rng = np.random.default_rng(seed)
    Z = np.repeat(X[:200], 10, axis=0)
    thresholds = table._threshold[np.isfinite(table._threshold)]
    m = rng.random(Z.shape)
    Z[m < 0.1] = np.nan
    Z[(m >= 0.1) & (m < 0.2)] = 0.0
    Z[(m >= 0.2) & (m < 0.25)] = -1.0
    at = (m >= 0.25) & (m < 0.4)
    Z[at] = rng.choice(thresholds, size=at.sum())
    above = (m >= 0.4) & (m < 0.5)
    Z[above] = np.nextafter(rng.choice(thresholds, size=above.sum()), np.inf)
    Z[(m >= 0.5) & (m < 0.55)] = 1e-40  # "zero" for a Zero-missing split
    Z[(m >= 0.55) & (m < 0.6)] = float(np.float32(1e-35))  # LightGBM's zero threshold (a float32)
    Z[(m >= 0.6) & (m < 0.65)] = -float(np.float32(1e-35))
    cats = rng.integers(-3, 20, size=len(Z)).astype(float)
    cats[rng.random(len(Z)) < 0.05] = 2.7  # truncated as LightGBM does
    Z[:, 3] = cats
    return Z


@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}])
def test_tabulated_contributions_are_lightgbms(params):
    X, y = _data()
    booster = _booster(X, y, **params)
    table = TreeContributions.of(booster)
    assert table is not None
    for rows in (X[:500], _adversarial(X, table)):
        want = booster.predict(rows, pred_contrib=True)
        got = table(rows)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        # each tree's table row is LightGBM's own number for that tree and row
        idx = table.patterns(rows[:50])
        for t in (0, 7, booster.num_trees() - 1):
            per_tree = booster.predict(rows[:50], pred_contrib=True, start_iteration=t, num_iteration=1)
            assert np.array_equal(table._table[idx[:, t]], per_tree)


def test_a_row_gets_the_same_numbers_alone_or_in_a_block():
    X, y = _data()
    table = TreeContributions.of(_booster(X, y))
    block = table(X[:300])
    alone = np.vstack([table(X[i:i + 1]) for i in range(0, 300, 7)])
    assert np.array_equal(alone, block[::7])
    assert np.array_equal(TreeContributions.of(_booster(X, y))(X[:300][::-1]), block[::-1])


def test_large_trees_are_left_to_pred_contrib():
    from training.contributions import MAX_SPLITS

    X, y = _data()
    assert TreeContributions.of(_booster(X, y, num_leaves=MAX_SPLITS + 2, min_data_in_leaf=5)) is None
    assert TreeContributions.of(_booster(X, y, num_leaves=MAX_SPLITS + 1)) is not None


def test_filling_the_table_leaves_the_boosters_single_row_predictions_alone():
    """LightGBM keeps the iteration range of a booster's last prediction in the booster: the
    per-tree calls that fill the table must not make a single-row predictor use one tree."""
    from training.fastpath import _C_API_PREDICT_NORMAL, _SingleRow

    X, y = _data()
    booster = _booster(X, y)
    one = _SingleRow(booster, _C_API_PREDICT_NORMAL, 1, X.shape[1])
    want = booster.predict(X[:5])
    table = TreeContributions.of(booster)
    table(_adversarial(X, table))  # fills many patterns, tree by tree
    assert np.allclose([one(x)[0] for x in X[:5]], want, rtol=0, atol=1e-12)


def test_trees_without_a_split_in_a_merged_cross_fit_booster():
    """A cross-fitting fold whose booster is a constant (a tree without a split), first or
    last among the merged trees."""
    from training.train import merge_boosters

    X, y = _data()
    normal = _booster(X, y)
    constant = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1,
                          "min_data_in_leaf": len(y)}, lgb.Dataset(X, y), num_boost_round=2)
    assert constant.dump_model()["tree_info"][-1]["num_leaves"] == 1
    for merged in (merge_boosters([normal, constant]), merge_boosters([constant, normal])):
        table = TreeContributions.of(merged)
        rows = _adversarial(X, table)
        np.testing.assert_allclose(table(rows), merged.predict(rows, pred_contrib=True),
                                   rtol=0, atol=1e-12)


def test_blocks_of_rows_warm_up_a_wrong_width_and_the_size_cap(monkeypatch):
    from training import contributions

    X, y = _data(n=9000)
    booster = _booster(X, y)
    table = TreeContributions.of(booster)
    table._block = 1000  # several passes, the last one short
    np.testing.assert_allclose(table(X), booster.predict(X, pred_contrib=True), rtol=0, atol=1e-12)

    cold = TreeContributions.of(booster)
    cold.warm()
    assert cold._filled.sum() > 0.5 * table._filled.sum()  # made-up rows found most patterns
    assert np.array_equal(cold(X[:100]), table(X[:100]))  # whoever brought a pattern in
    with pytest.raises(ValueError, match="5 features"):
        table(X[:, :4])
    with pytest.raises(ValueError, match="5 features"):
        table.one(X[0, :4])
    table_bytes = table._table.nbytes
    monkeypatch.setattr(contributions, "MAX_TABLE_BYTES", table_bytes)
    assert TreeContributions.of(booster) is not None
    monkeypatch.setattr(contributions, "MAX_TABLE_BYTES", table_bytes - 1)
    assert TreeContributions.of(booster) is None  # left to pred_contrib


def test_a_row_new_to_one_tree_asks_lightgbm_about_that_tree_only():
    X, y = _data()
    booster = _booster(X, y)
    table = TreeContributions.of(booster)
    table(X)  # every pattern of the training rows is in
    calls: list[int] = []
    predict = table._booster.predict

    def counted(rows, **kw):  # LightGBM still computes; the calls are counted
        calls.append(kw["start_iteration"])
        return predict(rows, **kw)

    table._booster.predict = counted
    table(X[:50])
    assert calls == []  # all known: no call
    rng = np.random.default_rng(3)
    met_new = 0
    for row in X[rng.choice(len(X), 200)] * rng.normal(0, 3, (200, X.shape[1])):
        new_trees = set(np.flatnonzero(~table._filled[table.patterns(row[None, :])[0]]).tolist())
        met_new += bool(new_trees)
        calls.clear()
        np.testing.assert_allclose(table.one(row), booster.predict(row[None, :], pred_contrib=True)[0],
                                   rtol=0, atol=1e-12)
        assert sorted(calls) == sorted(new_trees)  # one call per tree the row is new to, no other
    assert met_new > 20  # the rows did meet new patterns
