"""The CPU predictor of WarpGBM models, against a plain recursive walk of the same trees."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from boostream.trainers.forest import Forest

N_FEATURES, N_BINS = 6, 16


def random_tree(rng: np.random.Generator, depth: int) -> dict:
    """A tree in WarpGBM's own form: dicts with feature/bin/left/right, or a leaf_value."""
    if depth == 0 or rng.random() < 0.2:
        return {"leaf_value": float(rng.normal())}
    return {
        "feature": int(rng.integers(N_FEATURES)),
        "bin": int(rng.integers(N_BINS - 1)),
        "left": random_tree(rng, depth - 1),
        "right": random_tree(rng, depth - 1),
    }


def reference_leaf(tree: dict, bins: np.ndarray) -> float:
    while "leaf_value" not in tree:
        tree = tree["left"] if bins[tree["feature"]] <= tree["bin"] else tree["right"]
    return tree["leaf_value"]


@pytest.fixture
def setting():
    rng = np.random.default_rng(7)
    edges = np.sort(rng.normal(size=(N_FEATURES, N_BINS - 1)), axis=1).astype(np.float32)
    X = rng.normal(size=(500, N_FEATURES))
    X[:5] = edges[:, 3]  # values exactly on an edge go right of it, as in WarpGBM's binner
    bins = np.stack([np.searchsorted(edges[f], X[:, f].astype(np.float32), side="right") for f in range(N_FEATURES)], axis=1)
    return rng, edges, X, bins


def test_regression_equals_the_recursive_walk(setting):
    rng, edges, X, bins = setting
    trees = [random_tree(rng, 5) for _ in range(40)]
    forest = Forest.from_trees(
        [(0, t) for t in trees], objective="regression", learning_rate=0.1, bin_edges=edges,
        init_score=np.array([2.5]), feature_names=[f"f{i}" for i in range(N_FEATURES)],
    )
    expected = 2.5 + 0.1 * np.array([[reference_leaf(t, row) for t in trees] for row in bins]).sum(axis=1)
    np.testing.assert_allclose(forest.predict(X), expected, rtol=1e-12, atol=1e-12)


def test_classifier_probabilities_and_labels(setting):
    rng, edges, X, bins = setting
    classes = ["a", "b", "c"]
    rounds = [[random_tree(rng, 4) for _ in classes] for _ in range(15)]
    priors = np.log(np.array([0.5, 0.3, 0.2]))
    forest = Forest.from_trees(
        [(k, t) for per_class in rounds for k, t in enumerate(per_class)], objective="multiclass",
        learning_rate=0.3, bin_edges=edges, init_score=priors, feature_names=list("abcdef"), classes=classes,
    )
    scores = priors + 0.3 * np.array([[sum(reference_leaf(r[k], row) for r in rounds) for k in range(3)] for row in bins])
    expected = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    proba = forest.predict_proba(X)
    np.testing.assert_allclose(proba, expected, rtol=1e-10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(forest.predict(X)) == [classes[i] for i in expected.argmax(axis=1)]


def test_a_forest_pickles_and_predicts_the_same_after(setting):
    rng, edges, X, _ = setting
    forest = Forest.from_trees(
        [(0, random_tree(rng, 6)) for _ in range(10)], objective="regression", learning_rate=0.2,
        bin_edges=edges, init_score=np.array([0.0]), feature_names=list("abcdef"),
    )
    assert np.array_equal(pickle.loads(pickle.dumps(forest)).predict(X), forest.predict(X))


def test_wrong_width_is_refused(setting):
    rng, edges, X, _ = setting
    forest = Forest.from_trees(
        [(0, random_tree(rng, 2))], objective="regression", learning_rate=0.1,
        bin_edges=edges, init_score=np.array([0.0]), feature_names=list("abcdef"),
    )
    with pytest.raises(ValueError, match=r"\(rows, 6\)"):
        forest.predict(X[:, :4])
