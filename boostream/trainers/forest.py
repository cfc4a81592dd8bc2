"""A WarpGBM model as plain numpy arrays: small, picklable anywhere, predicted on the CPU.

A fitted WarpGBM keeps its CUDA training state and holds CUDA tensors inside its trees, so it can
neither be shipped small nor loaded without a GPU. `Forest` keeps only what prediction needs: the
bin edges per feature and each tree as arrays of nodes. Prediction bins each value the way
WarpGBM's binner does (`searchsorted(edges, x, side="right")` on float32), walks every tree at once
for a block of rows (a leaf points at itself, so a fixed number of steps reaches every leaf), and
sums `init_score + learning_rate * leaves` per class.

For classifiers `init_score` holds the log class priors that WarpGBM's training started from, so
these probabilities are the ones its validation loss was computed on. (WarpGBM 2.2's own
`predict_proba` starts from uniform priors instead.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

_ROWS_X_TREES_PER_BLOCK = 1 << 22


@dataclasses.dataclass
class Forest:
    objective: str
    learning_rate: float
    bin_edges: np.ndarray  # (features, bins - 1) float32
    feature: np.ndarray  # (trees, nodes) int32; a leaf's entry is unused
    split_bin: np.ndarray  # (trees, nodes) int32; go left when bin <= split_bin
    left: np.ndarray  # (trees, nodes) int32; a leaf points at itself
    right: np.ndarray  # (trees, nodes) int32
    value: np.ndarray  # (trees, nodes) float64; leaf values, zero elsewhere
    tree_class: np.ndarray  # (trees,) int32: which class's score each tree adds to
    init_score: np.ndarray  # (classes,) float64, or (1,) for regression
    depth: int
    feature_names: list[str]
    classes: Optional[list[Any]] = None

    @classmethod
    def from_trees(
        cls,
        trees: Sequence[tuple[int, dict]],
        *,
        objective: str,
        learning_rate: float,
        bin_edges: np.ndarray,
        init_score: np.ndarray,
        feature_names: list[str],
        classes: Optional[list[Any]] = None,
    ) -> "Forest":
        """`trees` holds (class index, WarpGBM tree dict) pairs in training order."""
        flat = [_flatten(tree) for _, tree in trees]
        width = max((len(nodes) for nodes, _ in flat), default=1)
        arrays = {name: np.zeros((len(flat), width), dtype) for name, dtype in _NODE_FIELDS}
        for t, (nodes, _) in enumerate(flat):
            for name, column in zip(arrays, zip(*nodes)):
                arrays[name][t, : len(column)] = column
        return cls(
            objective=objective,
            learning_rate=float(learning_rate),
            bin_edges=np.asarray(bin_edges, dtype=np.float32),
            tree_class=np.array([k for k, _ in trees], dtype=np.int32),
            init_score=np.asarray(init_score, dtype=np.float64),
            depth=max((depth for _, depth in flat), default=0),
            feature_names=list(feature_names),
            classes=classes,
            **arrays,
        )

    @property
    def n_trees(self) -> int:
        return len(self.tree_class)

    def raw_score(self, X: np.ndarray) -> np.ndarray:
        """Scores before the link function: (rows, classes), or (rows, 1) for regression."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.bin_edges.shape[0]:
            raise ValueError(f"X must have shape (rows, {self.bin_edges.shape[0]}), got {X.shape}")
        scores = np.empty((len(X), len(self.init_score)))
        class_matrix = np.zeros((self.n_trees, len(self.init_score)))
        class_matrix[np.arange(self.n_trees), self.tree_class] = self.learning_rate
        block = max(1, _ROWS_X_TREES_PER_BLOCK // max(self.n_trees, 1))
        for start in range(0, len(X), block):
            leaves = self._leaf_values(self._bins(X[start : start + block]))
            scores[start : start + block] = leaves @ class_matrix + self.init_score
        return scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Values for regression; class labels for classifiers."""
        scores = self.raw_score(X)
        if self.objective == "regression":
            return scores[:, 0]
        labels = np.asarray(self.classes if self.classes is not None else range(scores.shape[1]))
        return labels[np.argmax(scores, axis=1)]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.objective == "regression":
            raise ValueError("predict_proba is for classifiers; this forest is a regression")
        scores = self.raw_score(X)
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    def _bins(self, X: np.ndarray) -> np.ndarray:
        X = X.astype(np.float32, copy=False)
        bins = np.empty(X.shape, dtype=np.int16)
        for f, edges in enumerate(self.bin_edges):
            bins[:, f] = np.searchsorted(edges, X[:, f], side="right")
        return bins

    def _leaf_values(self, bins: np.ndarray) -> np.ndarray:
        rows = np.arange(len(bins))[:, None]
        trees = np.arange(self.n_trees)[None, :]
        node = np.zeros((len(bins), self.n_trees), dtype=np.int32)
        for _ in range(self.depth):
            go_left = bins[rows, self.feature[trees, node]] <= self.split_bin[trees, node]
            node = np.where(go_left, self.left[trees, node], self.right[trees, node])
        return self.value[trees, node]


_NODE_FIELDS = (
    ("feature", np.int32),
    ("split_bin", np.int32),
    ("left", np.int32),
    ("right", np.int32),
    ("value", np.float64),
)


def _flatten(tree: dict) -> tuple[list[tuple[int, int, int, int, float]], int]:
    """A WarpGBM tree dict (with plain numbers) as node rows (feature, split_bin, left, right,
    value), in pre-order, and its depth."""
    nodes: list[Any] = []

    def walk(node: dict, depth: int) -> int:
        index = len(nodes)
        nodes.append(None)
        if "leaf_value" in node:
            nodes[index] = (0, 0, index, index, float(node["leaf_value"]))
            walk.depth = max(walk.depth, depth)
        else:
            left = walk(node["left"], depth + 1)
            right = walk(node["right"], depth + 1)
            nodes[index] = (int(node["feature"]), int(node["bin"]), left, right, 0.0)
        return index

    walk.depth = 0
    walk(tree, 0)
    return nodes, walk.depth
