"""The CPU predictor of WarpGBM models, against a plain recursive walk of the same trees; its
portable document, and the reference predictor in docs/formats.md."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import pickle
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from boostream.trainers import forest as forest_module
from boostream.trainers.forest import MAX_DEPTH, Forest, InvalidForest

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
    bins = np.stack(
        [np.searchsorted(edges[f], X[:, f].astype(np.float32), side="right") for f in range(N_FEATURES)], axis=1
    )
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
    scores = priors + 0.3 * np.array(
        [[sum(reference_leaf(r[k], row) for r in rounds) for k in range(3)] for row in bins]
    )
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


# ----------------------------------------------------------------------------------------------
# The portable document


def forest_for(objective: str, rng: np.random.Generator, edges: np.ndarray) -> Forest:
    """A forest as the WarpGBM trainer exports one: one tree per class each round."""
    classes = {"regression": None, "binary": ["no", "yes"], "multiclass": [3, 1.5, "x"]}[objective]
    n_scores = 1 if classes is None else len(classes)
    counts = np.array([0.6, 0.4] if n_scores == 2 else [0.5, 0.3, 0.2][:n_scores])
    return Forest.from_trees(
        [(k, random_tree(rng, 5)) for _ in range(12) for k in range(n_scores)], objective=objective,
        learning_rate=0.3, bin_edges=edges, init_score=np.log(counts / counts.sum() + 1e-10),
        feature_names=[f"f{i}" for i in range(N_FEATURES)], classes=classes,
    )


def awkward_rows(rng: np.random.Generator, edges: np.ndarray) -> np.ndarray:
    """Rows with values on edges, just off them, and NaN and infinities."""
    X = rng.normal(size=(400, N_FEATURES))
    X[:N_FEATURES] = edges[:, 2]
    X[N_FEATURES : 2 * N_FEATURES] = np.nextafter(edges[:, 2], -np.inf).astype(np.float64)
    X[50:60, 0], X[60:70, 1], X[70:80, 2] = np.nan, np.inf, -np.inf
    return X


@pytest.mark.parametrize("objective", ["regression", "binary", "multiclass"])
def test_the_portable_round_trip_is_exact(setting, objective):
    rng, edges, _, _ = setting
    forest = forest_for(objective, rng, edges)
    back = Forest.from_json(forest.to_json())
    for field in dataclasses.fields(Forest):
        original, restored = getattr(forest, field.name), getattr(back, field.name)
        assert type(original) is type(restored)
        if isinstance(original, np.ndarray):
            assert original.dtype == restored.dtype and np.array_equal(original, restored), field.name
        else:
            assert original == restored, field.name
    X = awkward_rows(rng, edges)
    assert np.array_equal(back.raw_score(X), forest.raw_score(X))
    assert np.array_equal(back.predict(X), forest.predict(X))


def node_count(tree: dict) -> int:
    return 1 if "leaf_value" in tree else 1 + node_count(tree["left"]) + node_count(tree["right"])


def test_the_document_is_plain_data_without_padding(setting):
    rng, edges, _, _ = setting
    trees = [{"leaf_value": 1.5}, random_tree(rng, 4), random_tree(rng, 6)]
    forest = Forest.from_trees(
        [(0, t) for t in trees], objective="regression", learning_rate=0.1, bin_edges=edges,
        init_score=np.array([0.0]), feature_names=list("abcdef"),
    )
    document = json.loads(json.dumps(forest.to_portable()))  # the standard library takes it as is
    assert document["trees"][0] == {
        "class": 0,
        "feature": [0],
        "split_bin": [0],
        "left": [0],
        "right": [0],
        "value": [1.5],
    }
    assert [len(tree["value"]) for tree in document["trees"]] == [node_count(tree) for tree in trees]
    assert (document["format"], document["version"]) == ("boostream-forest", 1)


def test_a_forest_without_trees_predicts_its_initial_scores(setting):
    _, edges, X, _ = setting
    forest = Forest.from_trees(
        [], objective="multiclass", learning_rate=0.1, bin_edges=edges, init_score=np.log([0.7, 0.3]),
        feature_names=list("abcdef"), classes=["a", "b"],
    )
    back = Forest.from_portable(forest.to_portable())
    np.testing.assert_allclose(back.predict_proba(X), np.tile([0.7, 0.3], (len(X), 1)))


def test_a_classifier_without_labels_is_written_with_the_labels_predict_gives(setting):
    rng, edges, X, _ = setting
    forest = Forest.from_trees(
        [(k, random_tree(rng, 3)) for _ in range(4) for k in range(3)], objective="multiclass",
        learning_rate=0.2, bin_edges=edges, init_score=np.zeros(3), feature_names=list("abcdef"),
    )
    back = Forest.from_portable(forest.to_portable())
    assert back.classes == [0, 1, 2]
    assert np.array_equal(back.predict(X), forest.predict(X))


def small_document() -> dict:
    """Regression on 6 features, 15 edges each; tree 0 is: node 0 splits into leaf 1 and node 2,
    which splits into leaves 3 and 4."""
    edges = np.sort(np.random.default_rng(3).normal(size=(N_FEATURES, N_BINS - 1)), axis=1).astype(np.float32)
    tree = {"feature": 1, "bin": 2, "left": {"leaf_value": 1.0},
            "right": {"feature": 0, "bin": 1, "left": {"leaf_value": 2.0}, "right": {"leaf_value": 3.0}}}
    return Forest.from_trees(
        [(0, tree), (0, {"leaf_value": -1.0})], objective="regression", learning_rate=0.1, bin_edges=edges,
        init_score=np.array([0.5]), feature_names=list("abcdef"),
    ).to_portable()


DELETE = object()


def changed(document: dict, path: tuple, value) -> dict:
    """A deep copy of the document with the field at `path` set to `value` (or to value(old),
    for a callable), or removed for `DELETE`."""
    document = copy.deepcopy(document)
    *parents, last = path
    container = functools.reduce(lambda node, key: node[key], parents, document)
    if value is DELETE:
        del container[last]
    else:
        container[last] = value(container[last]) if callable(value) else value
    return document

MALFORMED = [
    ((), [], "document must be an object, got a list"),
    (("format",), "lightgbm", "format must be 'boostream-forest', got 'lightgbm'"),
    (("version",), 2, "version = 2 is not supported: this reader knows version 1"),
    (("version",), True, "version = True is not supported"),
    (("extra",), 1, "document has an unknown field 'extra'"),
    (("trees",), DELETE, "document lacks the field 'trees'"),
    (("objective",), "poisson", "objective must be one of ['regression', 'binary', 'multiclass'], got 'poisson'"),
    (("learning_rate",), "0.1", "learning_rate must be a finite number, got '0.1'"),
    (("learning_rate",), 0, "learning_rate = 0.0 is out of range: (0, 1]"),
    (("init_score",), [0.5, 0.5], "init_score has 2 scores; this forest needs 1"),
    (("init_score", 0), float("nan"), "init_score[0] = nan is not a finite float64"),
    (("classes",), ["a", "b"], "classes must be null for a regression, got a list"),
    (("feature_names", 3), "a", "feature_names[3] = 'a' repeats feature_names[0]; names are unique"),
    (("feature_names",), lambda names: names[:-1], "bin_edges has 6 rows; feature_names names 5 features"),
    (
        ("bin_edges", 1),
        lambda row: row[:-1],
        "bin_edges[1] has 14 edges; bin_edges[0] has 15, and every feature has as many",
    ),
    (("bin_edges", 2, 4), float("inf"), "bin_edges[2][4] = inf is not a finite float32"),
    (("bin_edges", 2, 4), 1e39, "bin_edges[2][4] = 1e+39 is not a finite float32"),
    (("bin_edges", 2, 4), -5.0, "bin_edges[2][4] = -5.0 is below bin_edges[2][3]"),
    (("bin_edges", 0), lambda row: row * 20, "bin_edges[0] has 300 items; 1 to 255 are allowed"),
    (("trees", 0, "class"), 1, "trees[0].class = 1 is out of range: 0 to 0"),
    (("trees", 0, "kind"), "split", "trees[0] has an unknown field 'kind'"),
    (("trees", 1, "value"), DELETE, "trees[1] lacks the field 'value'"),
    (("trees", 0, "left"), lambda left: left[:-1], "trees[0].left has 4 nodes; trees[0].value has 5"),
    (("trees", 0, "left", 0), 1.0, "trees[0].left[0] must be an integer, got a number"),
    (("trees", 0, "right", 0), 99, "trees[0].right[0] = 99 is out of range: 0 to 4"),
    (("trees", 0, "feature", 2), 6, "trees[0].feature[2] = 6 is out of range: 0 to 5"),
    (("trees", 0, "split_bin", 2), -1, "trees[0].split_bin[2] = -1 is out of range: 0 to 14"),
    (("trees", 0, "value", 3), float("inf"), "trees[0].value[3] = inf is not a finite float64"),
    # A cycle: node 2's left child back at the root.
    (("trees", 0, "left", 2), 0, "trees[0].left[2] = 0 is out of range: a split's children come after it"),
    (("trees", 0, "right", 2), 2, "trees[0].right[2] = 2 is out of range: a split's children come after it"),
    (("trees", 0, "right", 1), 3, "trees[0].right[1] = 3 is not 1: node 1 is a leaf (left[1] = 1)"),
    (("trees", 0, "right", 0), 3, "trees[0] names node 3 as a child more than once (at nodes 0, 2)"),
]


@pytest.mark.parametrize("path, value, message", MALFORMED, ids=[m for _, _, m in MALFORMED])
def test_a_malformed_document_is_refused_naming_the_field(path, value, message):
    document = changed(small_document(), path, value) if path else value
    with pytest.raises(InvalidForest) as refused:
        Forest.from_portable(document)
    assert str(refused.value).startswith(message)


def test_the_small_document_itself_is_accepted():
    forest = Forest.from_portable(small_document())
    assert (forest.n_trees, forest.depth) == (2, 2)


def chain_tree(splits: int) -> dict:
    """A tree in portable form where split 2i has leaf 2i+1 on its left and split 2i+2 (or, at the
    end, a leaf) on its right: as deep as it has splits."""
    n = 2 * splits + 1
    is_split = [i % 2 == 0 and i < n - 1 for i in range(n)]
    return {
        "class": 0, "feature": [0] * n, "split_bin": [0] * n, "value": [0.0] * n,
        "left": [i + 1 if is_split[i] else i for i in range(n)],
        "right": [i + 2 if is_split[i] else i for i in range(n)],
    }


def test_a_tree_deeper_than_the_limit_is_refused():
    at_limit = Forest.from_portable(changed(small_document(), ("trees", 1), chain_tree(MAX_DEPTH)))
    assert at_limit.depth == MAX_DEPTH
    with pytest.raises(InvalidForest, match=rf"^trees\[1\] is more than {MAX_DEPTH} splits deep"):
        Forest.from_portable(changed(small_document(), ("trees", 1), chain_tree(MAX_DEPTH + 1)))


def test_too_many_padded_nodes_are_refused(monkeypatch):
    monkeypatch.setattr(forest_module, "MAX_NODE_CELLS", 9)
    with pytest.raises(
        InvalidForest, match=r"^trees has 2 trees of up to 5 nodes; padded to the largest, that is over 9"
    ):
        Forest.from_portable(small_document())


def test_text_that_is_not_json_is_refused_as_a_value_error():
    with pytest.raises(ValueError):
        Forest.from_json(b'{"format": NaN}')


# ----------------------------------------------------------------------------------------------
# The format's documentation


def doc_block(language: str, after_heading: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "docs" / "formats.md").read_text()
    section = text[text.index(after_heading) :]
    return re.search(rf"```{language}\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.parametrize("objective", ["regression", "binary", "multiclass"])
def test_the_reference_in_the_docs_predicts_what_the_forest_does(setting, objective):
    rng, edges, _, _ = setting
    reference: dict = {}
    exec(doc_block("python", "### Reference implementation"), reference)
    forest = forest_for(objective, rng, edges)
    document = orjson.loads(forest.to_json())
    X = awkward_rows(rng, edges)
    assert np.array_equal(reference["raw_score"](document, X), forest.raw_score(X))
    assert np.array_equal(reference["predict"](document, X), forest.predict(X))
    if objective != "regression":
        assert np.array_equal(reference["predict_proba"](document, X), forest.predict_proba(X))


def test_the_example_in_the_docs_predicts_as_it_says():
    forest = Forest.from_json(doc_block("json", "### Example"))
    assert forest.predict(np.array([[50.0, 3000.0]]))[0] == pytest.approx(2.7)


# ----------------------------------------------------------------------------------------------
# Prediction details


def test_a_row_scores_the_same_alone_in_a_batch_and_on_any_threads(setting):
    rng, edges, _, _ = setting
    forest = Forest.from_trees(  # enough trees for several blocks of rows
        [(k, random_tree(rng, 6)) for _ in range(100) for k in range(3)], objective="multiclass",
        learning_rate=0.1, bin_edges=edges, init_score=np.zeros(3), feature_names=list("abcdef"),
    )
    X = awkward_rows(rng, edges)
    scores = forest.raw_score(X, threads=4)
    assert np.array_equal(forest.raw_score(X, threads=1), scores)
    assert np.array_equal(forest.raw_score(X[::-1], threads=2), scores[::-1])
    for row in (0, 55, 399):
        assert np.array_equal(forest.raw_score(X[row : row + 1]), scores[row : row + 1])
    # One row of a regression is a single column of leaves, which numpy would add pairwise.
    regression = Forest.from_trees(
        [(0, random_tree(rng, 6)) for _ in range(200)], objective="regression", learning_rate=0.1,
        bin_edges=edges, init_score=np.array([0.0]), feature_names=list("abcdef"),
    )
    scores = regression.raw_score(X)
    assert all(np.array_equal(regression.raw_score(X[row : row + 1]), scores[row : row + 1]) for row in range(100))


def test_nan_goes_where_infinity_goes(setting):
    rng, edges, _, _ = setting
    forest = forest_for("regression", rng, edges)
    X = rng.normal(size=(50, N_FEATURES))
    with_nan, with_inf = X.copy(), X.copy()
    with_nan[:, ::2], with_inf[:, ::2] = np.nan, np.inf
    assert np.array_equal(forest.predict(with_nan), forest.predict(with_inf))
