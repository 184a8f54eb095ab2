"""LightGBM's tree SHAP contributions (``pred_contrib``), tabulated per tree.

Tree SHAP looks at a row only through the way it goes at each split of a tree (left or
right): two rows that go the same way at every split of a tree get the same contributions
from it. A tree of the default size (7 leaves) has 6 splits, so at most 64 such patterns.
:class:`TreeContributions` evaluates the splits of every tree for a block of rows at once
(numpy), reads each tree's contributions from a table indexed by the row's pattern, and sums
them tree by tree. A pattern not seen yet is computed once by LightGBM itself, for that tree
alone (``pred_contrib`` with ``start_iteration``), from a row that has it. So the
numbers are LightGBM's per tree, summed in tree order. They agree with one ``pred_contrib``
call over all the trees to about 1e-15: LightGBM adds every tree's terms into one buffer.

Measured on a 51-tree model (BENCHMARKS.md): 100 rows in about a tenth of the time of
``pred_contrib``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["TreeContributions"]

#: trees with more splits than this are left to ``pred_contrib`` (2 ** splits patterns each)
MAX_SPLITS = 10
_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float): |x| at most this is "zero"
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
_BLOCK_ROWS = 4096  # rows per pass at most: bounds the (rows, trees, features) gather
_BLOCK_CELLS = 1 << 21  # and (rows x splits of all trees) per pass: 16 MB a float64 array
#: larger tables are left to ``pred_contrib`` (sum over trees of 2 ** splits x width x 8 bytes)
MAX_TABLE_BYTES = 256 * 1024 * 1024


class TreeContributions:
    """``pred_contrib`` of a binary LightGBM booster, tabulated by decision pattern.

    Build with :meth:`of` (None when the booster does not suit: more than
    :data:`MAX_SPLITS` splits in a tree, a table over :data:`MAX_TABLE_BYTES`, several trees
    per iteration, averaged output).
    Calling it on a float64 matrix gives what ``booster.predict(X, pred_contrib=True)`` gives
    (features, then the expected value), up to summation order. Thread-safe.
    """

    def __init__(self, booster: Any, dump: dict[str, Any],
                 trees: list[list[dict[str, Any]]]) -> None:
        """``trees``: the splits of each tree of ``dump`` (:func:`_splits`)."""
        import lightgbm as lgb

        # the per-tree calls go to a copy: LightGBM keeps the iteration range of a booster's
        # last prediction in the booster, where its single-row predictors would read it
        self._booster = lgb.Booster(model_str=booster.model_to_string())
        self.n_trees = len(trees)
        self.n_features = int(dump["max_feature_idx"]) + 1
        self.width = self.n_features + 1  # features + expected value
        nodes = [node for tree in trees for node in tree]
        sizes = np.array([len(t) for t in trees], dtype=np.intp)
        self._split_trees = np.flatnonzero(sizes)  # trees without a split: pattern 0
        self._tree_start = (np.cumsum(sizes) - sizes)[self._split_trees]
        self._bit = np.concatenate([np.left_shift(1, np.arange(len(t))) for t in trees if t]
                                   ).astype(np.int64) if nodes else np.zeros(0, np.int64)
        self._feature = np.array([n["split_feature"] for n in nodes], dtype=np.intp)
        categorical = np.array([n["decision_type"] == "==" for n in nodes], dtype=bool)
        missing = np.array([_MISSING[n["missing_type"]] for n in nodes])
        self._threshold = np.array([np.inf if c else float(n["threshold"])
                                    for n, c in zip(nodes, categorical)])
        self._nan_is_zero = missing != 2  # NaN read as 0 (numerical splits)
        self._zero_default = missing == 1
        self._nan_default = missing == 2
        self._default_left = np.array([bool(n["default_left"]) for n in nodes])
        self._cat = np.flatnonzero(categorical)
        cats = [[int(c) for c in str(nodes[i]["threshold"]).split("||")] for i in self._cat]
        self._cat_size = max((max(c) for c in cats), default=-1) + 1
        self._cat_left = np.zeros((len(cats), self._cat_size + 1), dtype=bool)  # last: never
        for k, c in enumerate(cats):
            self._cat_left[k, c] = True
        slots = np.left_shift(1, sizes).astype(np.int64)  # 2 ** splits patterns per tree
        self._offset = (np.cumsum(slots) - slots)[None, :]
        self._table = np.zeros((int(slots.sum()), self.width))
        self._filled = np.zeros(int(slots.sum()), dtype=bool)
        # rows per pass: the (rows, splits) arrays of one pass stay near _BLOCK_CELLS each
        self._block = max(1, min(_BLOCK_ROWS, _BLOCK_CELLS // max(1, len(nodes))))
        self._lock = threading.Lock()

    @classmethod
    def of(cls, booster: Any) -> TreeContributions | None:
        """The tabulated contributions of ``booster``, or None when it does not suit."""
        dump = booster.dump_model()
        if dump.get("num_tree_per_iteration", 1) != 1 or dump.get("average_output"):
            return None
        trees = [_splits(t["tree_structure"]) for t in dump["tree_info"]]
        sizes = [len(t) for t in trees]
        if not sizes or max(sizes) > MAX_SPLITS:
            return None
        table_bytes = sum(2 ** k for k in sizes) * (int(dump["max_feature_idx"]) + 2) * 8
        if table_bytes > MAX_TABLE_BYTES:
            return None
        return cls(booster, dump, trees)

    def patterns(self, X: np.ndarray) -> np.ndarray:
        """``(rows, trees)`` row index into the table: tree t's offset plus the row's pattern
        in tree t (bit k set: the row goes left at the tree's k-th split)."""
        v = X[:, self._feature]  # (rows, splits of all trees)
        nan = np.isnan(v)
        num = np.where(nan & self._nan_is_zero, 0.0, v)
        default = (self._zero_default & (np.abs(num) <= _ZERO)) | (self._nan_default & nan)
        left = np.where(default, self._default_left, num <= self._threshold)
        if len(self._cat):  # NaN and negative categories go right
            c = np.trunc(v[:, self._cat])  # int(), as LightGBM reads a category
            ok = (c >= 0) & (c < self._cat_size)  # (False for NaN)
            code = np.where(ok, c, self._cat_size).astype(np.intp)
            left[:, self._cat] = self._cat_left[np.arange(len(self._cat)), code]
        bits = np.where(left, self._bit, 0)
        pattern = np.zeros((len(X), self.n_trees), dtype=np.int64)
        if len(self._split_trees):
            pattern[:, self._split_trees] = np.add.reduceat(bits, self._tree_start, axis=1)
        return pattern + self._offset

    def one(self, row: np.ndarray) -> np.ndarray:
        """The contributions of one row (1-D float64): the same numbers as a row of
        :meth:`__call__`, with fewer numpy calls."""
        if row.shape != (self.n_features,):
            raise ValueError(f"a row of {self.n_features} features expected, got shape {row.shape}")
        return np.add.reduce(self._table[self._known(row[None, :])[0]], axis=0)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must be rows x {self.n_features} features, got shape {X.shape}")
        out = np.empty((len(X), self.width))
        for lo in range(0, len(X), self._block):
            block = X[lo:lo + self._block]
            # tree by tree in order, whatever the number of rows (one row gets the same sums)
            np.add.reduce(self._table[self._known(block)], axis=1, out=out[lo:lo + len(block)])
        return out

    def warm(self, rows: int = 2048, seed: int = 0) -> None:
        """Fill the table with the patterns of ``rows`` made-up rows: each feature drawn among
        values on either side of its splits, NaN and 0, so that the first leads a server
        sees rarely wait for LightGBM (a new pattern costs a call per tree it is new to).
        The numbers do not depend on which row brought a pattern in."""
        rng = np.random.default_rng(seed)
        X = np.zeros((rows, self.n_features))
        cat_of = dict(zip(self._cat.tolist(), range(len(self._cat))))
        for f in range(self.n_features):
            values = [np.nan, 0.0]
            for k in np.flatnonzero(self._feature == f).tolist():
                if k in cat_of:
                    values += np.flatnonzero(self._cat_left[cat_of[k]]).tolist() + [-1.0]
                else:
                    t = self._threshold[k]
                    values += [t, np.nextafter(t, np.inf)]
            X[:, f] = rng.choice(np.array(values, dtype=np.float64), size=rows)
        self(X)

    def _known(self, X: np.ndarray) -> np.ndarray:
        """:meth:`patterns` of ``X``, each in the table (those not seen yet computed first)."""
        idx = self.patterns(X)
        if not self._filled[idx].all():
            self._fill(X, idx)
        return idx

    def _fill(self, X: np.ndarray, idx: np.ndarray) -> None:
        """Compute the table rows of the patterns of ``X`` not seen yet, with LightGBM."""
        with self._lock:
            # only the trees with a new pattern: a cold row is new to one tree or two, and
            # looking at every tree cost more than the LightGBM calls (5 ms for 300 trees)
            for t in np.flatnonzero((~self._filled[idx]).any(axis=0)).tolist():
                new, first = np.unique(idx[:, t], return_index=True)
                todo = ~self._filled[new]  # some, as the loop picks trees (tables do not overlap)
                rows = X[first[todo]]
                self._table[new[todo]] = self._booster.predict(
                    rows, pred_contrib=True, start_iteration=t, num_iteration=1, num_threads=1)
                self._filled[new[todo]] = True


def _splits(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The splits of a tree of ``Booster.dump_model()``, depth first."""
    out: list[dict[str, Any]] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if "split_index" in n:
            out.append(n)
            stack.extend((n["right_child"], n["left_child"]))
    return out
