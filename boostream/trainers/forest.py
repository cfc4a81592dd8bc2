"""A WarpGBM model as plain numpy arrays: small, picklable anywhere, predicted on the CPU.

A fitted WarpGBM keeps its CUDA training state and holds CUDA tensors inside its trees, so it can
neither be shipped small nor loaded without a GPU. `Forest` keeps only what prediction needs: the
bin edges per feature and each tree as arrays of nodes. A row goes left at a split when its bin,
`searchsorted(edges, x, side="right")` on float32 as WarpGBM's binner computes it, is at most the
split's bin. As the edges are sorted, that is exactly when `x < edges[split_bin]`, so prediction
compares values with edges and never bins them. It walks every tree at once for a block of rows
(a leaf points at itself, so a fixed number of steps reaches every leaf); a class's score is
`init_score + learning_rate * (its trees' leaves, added in tree order)`.

For classifiers `init_score` holds the log class priors that WarpGBM's training started from, so
these probabilities are the ones its validation loss was computed on. (WarpGBM 2.2's own
`predict_proba` starts from uniform priors instead.)

`to_portable` / `from_portable` (and `to_json` / `from_json`) give a forest as plain data, in the
format that docs/formats.md describes; `from_portable` checks a document that anyone may send.
"""

from __future__ import annotations

import dataclasses
import reprlib
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import numpy as np
import orjson

from boostream.config import machine_cores

FORMAT = "boostream-forest"
FORMAT_VERSION = 1
OBJECTIVES = ("regression", "binary", "multiclass")

# Limits on a portable document, so that a small upload cannot ask for huge arrays or long walks.
MAX_FEATURES = 100_000
MAX_EDGES = 255  # per feature, so 256 bins at most (WarpGBM allows 127)
MAX_CLASSES = 10_000
MAX_DEPTH = 32
MAX_NODES_PER_TREE = 2**17 - 1  # a full depth-16 tree, the deepest our WarpGBM trainer grows
MAX_NODE_CELLS = 2**24  # trees x the largest tree's nodes: the size of the padded node arrays

# Rows x trees walked at once: small enough for the block's index arrays to stay in a core's L2
# cache, large enough for numpy's per-call overhead to vanish beside the work of each call.
_CELLS_PER_BLOCK = 1 << 16
_MIN_ROWS_PER_BLOCK = 16


class InvalidForest(ValueError):
    """A portable document that does not describe a forest; the message starts with the path of
    the field at fault, e.g. `trees[3].left[5] = 99 is out of range ...`."""


@dataclasses.dataclass
class Forest:
    objective: str
    learning_rate: float
    bin_edges: np.ndarray  # (features, bins - 1) float32, sorted per feature
    feature: np.ndarray  # (trees, nodes) int32; a leaf's entry is unused
    split_bin: np.ndarray  # (trees, nodes) int32; go left when bin <= split_bin
    left: np.ndarray  # (trees, nodes) int32; a leaf points at itself
    right: np.ndarray  # (trees, nodes) int32
    value: np.ndarray  # (trees, nodes) float64; leaf values, zero elsewhere
    tree_class: np.ndarray  # (trees,) int32: which class's score each tree adds to
    init_score: np.ndarray  # (classes,) float64, or (1,) for regression
    depth: int
    feature_names: list[str]
    classes: list[Any] | None = None

    @classmethod
    def from_trees(
        cls,
        trees: Sequence[tuple[int, dict[str, Any]]],
        *,
        objective: str,
        learning_rate: float,
        bin_edges: np.ndarray,
        init_score: np.ndarray,
        feature_names: list[str],
        classes: list[Any] | None = None,
    ) -> Forest:
        """`trees` holds (class index, WarpGBM tree dict) pairs in training order."""
        flat = [_flatten(tree) for _, tree in trees]
        width = max((len(nodes) for nodes, _ in flat), default=1)
        arrays = {name: np.zeros((len(flat), width), dtype) for name, dtype in _NODE_FIELDS}
        for t, (nodes, _) in enumerate(flat):
            for name, column in zip(arrays, zip(*nodes, strict=True), strict=True):
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

    @classmethod
    def from_portable(cls, document: Any) -> Forest:
        """The forest that a portable document (`to_portable`'s form) describes. The document may
        come from anyone: every field is checked, and `InvalidForest` (a ValueError) names the
        first one at fault."""
        _check_fields(document, "document", _DOCUMENT_FIELDS)
        _check_format(document["format"], document["version"])
        objective = document["objective"]
        if not isinstance(objective, str) or objective not in OBJECTIVES:
            _refuse("objective", f"must be one of {list(OBJECTIVES)}, got {_shown(objective)}")
        learning_rate = _number(document["learning_rate"], "learning_rate")
        if not 0.0 < learning_rate <= 1.0:
            _refuse("learning_rate", f"= {learning_rate!r} is out of range: (0, 1] as WarpGBM accepts")
        feature_names = _feature_names(document["feature_names"])
        classes = _classes(document["classes"], objective)
        init_score = _init_score(document["init_score"], classes)
        bin_edges = _bin_edges(document["bin_edges"], len(feature_names))
        trees = _trees(document["trees"], len(init_score), bin_edges.shape)
        return cls(
            objective=objective,
            learning_rate=learning_rate,
            bin_edges=bin_edges,
            init_score=init_score,
            feature_names=feature_names,
            classes=classes,
            **trees,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Forest:
        """`from_portable` of a JSON text; a text that is not JSON raises ValueError too."""
        return cls.from_portable(orjson.loads(data))

    def to_portable(self) -> dict[str, Any]:
        """The forest as plain data (dicts, lists, numbers, strings) in the format that
        docs/formats.md describes; each tree without the padding that the arrays give it."""
        labels = self.classes
        if labels is None and self.objective != "regression":
            labels = list(range(len(self.init_score)))  # the labels `predict` gives
        node_counts = _node_counts(self.left, self.right)
        trees = [
            {"class": int(k), **{name: getattr(self, name)[t, :n].tolist() for name, _ in _NODE_FIELDS}}
            for t, (k, n) in enumerate(zip(self.tree_class, node_counts, strict=True))
        ]
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "objective": self.objective,
            "learning_rate": float(self.learning_rate),
            "init_score": self.init_score.tolist(),
            "classes": None if labels is None else [_plain(label) for label in labels],
            "feature_names": list(self.feature_names),
            "bin_edges": self.bin_edges.tolist(),
            "trees": trees,
        }

    def to_json(self) -> bytes:
        """`to_portable` as JSON; floats are written in their shortest exact form, so `from_json`
        gives back the same forest, bit for bit."""
        return orjson.dumps(self.to_portable())

    @property
    def n_trees(self) -> int:
        return len(self.tree_class)

    def raw_score(self, X: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Scores before the link function: (rows, classes), or (rows, 1) for regression.

        Blocks of rows are walked on `threads` threads (default: one per available core); numpy
        releases the GIL inside each step of the walk, so the threads run at the same time."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.bin_edges.shape[0]:
            raise ValueError(f"X must have shape (rows, {self.bin_edges.shape[0]}), got {X.shape}")
        walk = _Walk(self)
        rows_per_block = max(_MIN_ROWS_PER_BLOCK, _CELLS_PER_BLOCK // len(walk.roots))
        starts = range(0, len(X), rows_per_block)
        scores = np.empty((len(X), len(self.init_score)))

        def score_block(start: int) -> None:
            block = slice(start, start + rows_per_block)
            scores[block] = walk.raw_score(X[block])

        workers = min(threads or machine_cores(), len(starts))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(score_block, starts))  # list() re-raises a block's exception
        else:
            for start in starts:
                score_block(start)
        return scores

    def predict(self, X: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Values for regression; class labels for classifiers."""
        scores = self.raw_score(X, threads)
        if self.objective == "regression":
            return scores[:, 0]
        labels = np.asarray(self.classes if self.classes is not None else range(scores.shape[1]))
        predicted: np.ndarray = labels[np.argmax(scores, axis=1)]
        return predicted

    def predict_proba(self, X: np.ndarray, threads: int | None = None) -> np.ndarray:
        if self.objective == "regression":
            raise ValueError("predict_proba is for classifiers; this forest is a regression")
        scores = self.raw_score(X, threads)
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores


_NODE_FIELDS = (
    ("feature", np.int32), ("split_bin", np.int32), ("left", np.int32), ("right", np.int32), ("value", np.float64),
)
_DOCUMENT_FIELDS = (
    "format", "version", "objective", "learning_rate", "init_score", "classes", "feature_names", "bin_edges", "trees",
)
_TREE_FIELDS = ("class",) + tuple(name for name, _ in _NODE_FIELDS)


def _flatten(tree: dict[str, Any]) -> tuple[list[tuple[int, int, int, int, float]], int]:
    """A WarpGBM tree dict (with plain numbers) as node rows (feature, split_bin, left, right,
    value), in pre-order, and its depth."""
    nodes: list[Any] = []
    deepest = 0

    def walk(node: dict[str, Any], depth: int) -> int:
        nonlocal deepest
        index = len(nodes)
        nodes.append(None)
        if "leaf_value" in node:
            nodes[index] = (0, 0, index, index, float(node["leaf_value"]))
            deepest = max(deepest, depth)
        else:
            left = walk(node["left"], depth + 1)
            right = walk(node["right"], depth + 1)
            nodes[index] = (int(node["feature"]), int(node["bin"]), left, right, 0.0)
        return index

    walk(tree, 0)
    return nodes, deepest


# ----------------------------------------------------------------------------------------------
# Prediction


class _Walk:
    """A forest laid out for walking blocks of rows through every tree at once.

    Nodes are numbered breadth first over all trees, with a split's two children side by side
    (left, then right), so that one step is `node = right[node] - (x < threshold[node])`. A split's
    threshold is the edge that its bin stands for. A leaf's is -inf, which no value is below, so a
    row stays at its leaf; NaN is below no threshold either, so it goes right at every split, as
    its bin (one past the last edge, where searchsorted puts NaN) does."""

    def __init__(self, forest: Forest) -> None:
        tree, node, is_split, right = _breadth_first(forest.left, forest.right)
        feature = forest.feature[tree, node]
        edge = forest.bin_edges[feature, forest.split_bin[tree, node]]
        # One node more, after all the others: a leaf worth 0 that fills the empty class slots.
        zero_leaf = len(tree)
        self.column = np.append(np.where(is_split, feature, 0), 0).astype(np.intp)
        self.threshold = np.append(np.where(is_split, edge, -np.inf), -np.inf).astype(np.float32)
        self.right = np.append(right, zero_leaf)
        self.value = np.append(forest.value[tree, node], 0.0)
        self.n_classes = len(forest.init_score)
        # The first level of the order is every tree's root, so a tree's root is its index.
        self.roots = _class_slots(forest.tree_class, self.n_classes, zero_leaf).ravel()
        self.depth = forest.depth
        self.learning_rate = forest.learning_rate
        self.init_score = forest.init_score

    def raw_score(self, X: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(X, dtype=np.float32)  # WarpGBM compares float32 values
        cells = values.ravel()
        row_start = np.arange(0, values.size, values.shape[1], dtype=np.intp)[None, :]
        node = np.repeat(self.roots[:, None], len(values), axis=1)  # (class slots, rows)
        column, right = np.empty_like(node), np.empty_like(node)
        x, threshold = np.empty(node.shape, np.float32), np.empty(node.shape, np.float32)
        goes_left = np.empty(node.shape, bool)
        # mode="clip" skips numpy's check of every index (ours are in range by construction),
        # which halves the time of each take; `out=` keeps the buffers in cache.
        for _ in range(self.depth):
            np.take(self.column, node, out=column, mode="clip")
            column += row_start
            np.take(cells, column, out=x, mode="clip")
            np.take(self.threshold, node, out=threshold, mode="clip")
            np.less(x, threshold, out=goes_left)
            np.take(self.right, node, out=right, mode="clip")
            np.subtract(right, goes_left, out=node)
        leaves = np.take(self.value, node, mode="clip").reshape(-1, self.n_classes * len(values))
        scores: np.ndarray = self.init_score + self.learning_rate * _sum_in_order(leaves).reshape(self.n_classes, -1).T
        return scores


def _sum_in_order(rows: np.ndarray) -> np.ndarray:
    """The sum of the rows of a 2-D array, added one row after another, as a plain loop over the
    trees adds their leaves, so that a score does not depend on the rows scored with it.
    np.add.reduce over the first axis adds in that order, fast, except over a single column,
    where it adds pairwise; np.add.accumulate is always in order, but slow."""
    sums: np.ndarray
    if rows.shape[1] == 1:
        sums = np.add.accumulate(rows, axis=0)[-1]
    else:
        sums = np.add.reduce(rows, axis=0)
    return sums


def _levels(left: np.ndarray, right: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every tree's nodes, level by level from the roots, as (tree, node, is_split) arrays; each
    level lists the children of the previous level's splits in their order, left child first.
    Ends for well-formed trees only (where a split's children come after it)."""
    tree = np.arange(len(left), dtype=np.intp)
    node = np.zeros(len(left), dtype=np.intp)
    while True:
        lefts, rights = left[tree, node], right[tree, node]
        is_split = lefts != node
        yield tree, node, is_split
        if not is_split.any():
            return
        tree = np.repeat(tree[is_split], 2)
        node = np.stack([lefts[is_split], rights[is_split]], axis=1).ravel().astype(np.intp)


def _breadth_first(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, ...]:
    """All trees' nodes in the order of `_levels`: for each, its tree, its index in that tree,
    whether it splits, and the position of its right child in this order (its own for a leaf)."""
    levels: list[tuple[np.ndarray, ...]] = []
    start = 0
    for tree, node, is_split in _levels(left, right):
        stop = start + len(tree)
        # The next level starts at `stop` and holds each split's two children, in split order.
        right_child = np.where(is_split, stop + 2 * np.cumsum(is_split) - 1, np.arange(start, stop))
        levels.append((tree, node, is_split, right_child.astype(np.intp)))
        start = stop
    return tuple(np.concatenate(parts) for parts in zip(*levels, strict=True))


def _class_slots(tree_class: np.ndarray, n_classes: int, empty: int) -> np.ndarray:
    """(rounds, classes) tree indices: each class's trees in order down its column, and `empty`
    below a class's last tree. WarpGBM grows one tree per class a round, so for its forests this
    is the trees' own order."""
    order = np.argsort(tree_class, kind="stable")
    counts = np.bincount(tree_class, minlength=n_classes)
    rank_in_class = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    slots = np.full((max(counts.max(initial=0), 1), n_classes), empty, dtype=np.intp)
    slots[rank_in_class, tree_class[order]] = order
    return slots


def _node_counts(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per tree, one more than the largest node index reachable from the root: the nodes that
    are not padding."""
    counts = np.zeros(len(left), dtype=np.intp)
    for tree, node, _ in _levels(left, right):
        np.maximum.at(counts, tree, node + 1)
    return counts


# ----------------------------------------------------------------------------------------------
# Reading a portable document


def _refuse(path: str, problem: str) -> NoReturn:
    raise InvalidForest(f"{path} {problem}")


def _json_type(value: Any) -> str:
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def _check_fields(value: Any, path: str, names: Sequence[str]) -> None:
    if not isinstance(value, dict):
        _refuse(path, f"must be an object, got {_json_type(value)}")
    missing = [name for name in names if name not in value]
    if missing:
        _refuse(path, f"lacks the field {missing[0]!r}")
    unknown = [name for name in value if name not in names]
    if unknown:
        _refuse(path, f"has an unknown field {_shown(unknown[0])}; its fields are {list(names)}")


def _check_format(name: Any, version: Any) -> None:
    if name != FORMAT:
        _refuse("format", f"must be {FORMAT!r}, got {_shown(name)}")
    if type(version) is not int or version != FORMAT_VERSION:
        _refuse("version", f"= {_shown(version)} is not supported: this reader knows version {FORMAT_VERSION}")


def _list(value: Any, path: str, min_length: int, max_length: int) -> list[Any]:
    if not isinstance(value, list):
        _refuse(path, f"must be a list, got {_json_type(value)}")
    if not min_length <= len(value) <= max_length:
        _refuse(path, f"has {len(value)} items; {min_length} to {max_length} are allowed")
    return value


def _shown(value: Any) -> str:
    """A value from the document for a message: short, whatever the document holds."""
    if type(value) is int and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return reprlib.repr(value)


def _number(value: Any, path: str) -> float:
    if type(value) in (int, float) and value == value and abs(value) <= sys.float_info.max:
        return float(value)
    _refuse(path, f"must be a finite number, got {_shown(value)}")


def _integer(value: Any, path: str, low: int, high: int) -> int:
    """An integer in [low, high)."""
    if type(value) is not int:
        _refuse(path, f"must be an integer, got {_json_type(value)}")
    if not low <= value < high:
        _refuse(path, f"= {_shown(value)} is out of range: {low} to {high - 1}")
    return value


def _first(bad: np.ndarray) -> int | None:
    """The index of the first True, or None."""
    return int(np.argmax(bad)) if bad.any() else None


def _numbers(values: list[Any], path: str, dtype: type = np.float64) -> np.ndarray:
    """Finite numbers in `dtype` (for float32, a value beyond its range is refused too)."""
    if not set(map(type, values)) <= {int, float}:
        i = next(i for i, v in enumerate(values) if type(v) not in (int, float))
        _refuse(f"{path}[{i}]", f"must be a number, got {_json_type(values[i])}")
    try:
        with np.errstate(over="ignore"):  # overflow to inf is what the check below finds
            array: np.ndarray = np.array(values, dtype=np.float64).astype(dtype)
    except OverflowError:
        _refuse(path, "holds an integer beyond the range of a double")
    if (at := _first(~np.isfinite(array))) is not None:
        _refuse(f"{path}[{at}]", f"= {_shown(values[at])} is not a finite {np.dtype(dtype).name}")
    return array


def _integers(values: list[Any], path: str, low: int, high: int) -> np.ndarray:
    """Integers in [low, high)."""
    if not set(map(type, values)) <= {int}:
        i = next(i for i, v in enumerate(values) if type(v) is not int)
        _refuse(f"{path}[{i}]", f"must be an integer, got {_json_type(values[i])}")
    if values and not low <= min(values) <= max(values) < high:
        i = next(i for i, v in enumerate(values) if not low <= v < high)
        _refuse(f"{path}[{i}]", f"= {_shown(values[i])} is out of range: {low} to {high - 1}")
    return np.array(values, dtype=np.int64)


def _feature_names(value: Any) -> list[str]:
    names = _list(value, "feature_names", 1, MAX_FEATURES)
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            _refuse(f"feature_names[{i}]", f"must be a string, got {_json_type(name)}")
        if name in seen:
            _refuse(f"feature_names[{i}]", f"= {_shown(name)} repeats feature_names[{seen[name]}]; names are unique")
        seen[name] = i
    return list(names)


def _classes(value: Any, objective: str) -> list[Any] | None:
    if objective == "regression":
        if value is not None:
            _refuse("classes", f"must be null for a regression, got {_json_type(value)}")
        return None
    labels = _list(value, "classes", 2, 2 if objective == "binary" else MAX_CLASSES)
    seen: dict[Any, int] = {}
    for i, label in enumerate(labels):
        if type(label) not in (str, int, float) or (type(label) is float and not np.isfinite(label)):
            _refuse(f"classes[{i}]", f"must be a string or a finite number, got {_shown(label)}")
        if label in seen:
            _refuse(f"classes[{i}]", f"= {_shown(label)} repeats classes[{seen[label]}]; labels are unique")
        seen[label] = i
    return list(labels)


def _init_score(value: Any, classes: list[Any] | None) -> np.ndarray:
    count = 1 if classes is None else len(classes)
    scores = _list(value, "init_score", 0, MAX_CLASSES)
    if len(scores) != count:
        _refuse(
            "init_score",
            f"has {len(scores)} scores; this forest needs {count} (one per class, or one for a regression)",
        )
    return _numbers(scores, "init_score")


def _bin_edges(value: Any, n_features: int) -> np.ndarray:
    rows = _list(value, "bin_edges", 1, MAX_FEATURES)
    if len(rows) != n_features:
        _refuse("bin_edges", f"has {len(rows)} rows; feature_names names {n_features} features, and each has one row")
    first = _list(rows[0], "bin_edges[0]", 1, MAX_EDGES)
    edges = np.empty((n_features, len(first)), dtype=np.float32)
    for f, row in enumerate(rows):
        path = f"bin_edges[{f}]"
        if len(_list(row, path, 1, MAX_EDGES)) != len(first):
            _refuse(path, f"has {len(row)} edges; bin_edges[0] has {len(first)}, and every feature has as many")
        edges[f] = _numbers(row, path, np.float32)
        if (i := _first(np.diff(edges[f]) < 0)) is not None:
            _refuse(
                f"{path}[{i + 1}]",
                f"= {_shown(row[i + 1])} is below {path}[{i}] = {_shown(row[i])}; edges are sorted (as float32)",
            )
    return edges


def _trees(value: Any, n_scores: int, edges_shape: tuple[int, int]) -> dict[str, Any]:
    """The node arrays (padded to the largest tree), tree_class and depth."""
    trees = _list(value, "trees", 0, MAX_NODE_CELLS)
    for t, tree in enumerate(trees):
        _check_fields(tree, f"trees[{t}]", _TREE_FIELDS)
    node_counts = [
        len(_list(tree["value"], f"trees[{t}].value", 1, MAX_NODES_PER_TREE)) for t, tree in enumerate(trees)
    ]
    width = max(node_counts, default=1)
    if len(trees) * width > MAX_NODE_CELLS:
        _refuse(
            "trees",
            f"has {len(trees)} trees of up to {width} nodes; padded "
            f"to the largest, that is over {MAX_NODE_CELLS} nodes",
        )
    arrays = {name: np.zeros((len(trees), width), dtype) for name, dtype in _NODE_FIELDS}
    tree_class = np.empty(len(trees), dtype=np.int32)
    for t, tree in enumerate(trees):
        tree_class[t] = _integer(tree["class"], f"trees[{t}].class", 0, n_scores)
        for name, column in _tree_nodes(tree, f"trees[{t}]", edges_shape).items():
            arrays[name][t, : len(column)] = column
    return {"tree_class": tree_class, "depth": _depth(arrays["left"], arrays["right"]), **arrays}


def _tree_nodes(tree: dict[str, Any], path: str, edges_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """One tree's node arrays, with every index in range and the nodes forming a tree."""
    n = len(tree["value"])
    n_features, n_edges = edges_shape
    for name in ("feature", "split_bin", "left", "right"):
        if len(_list(tree[name], f"{path}.{name}", 0, MAX_NODES_PER_TREE)) != n:
            _refuse(
                f"{path}.{name}", f"has {len(tree[name])} nodes; {path}.value has {n}, and every node array has as many"
            )
    nodes = {
        "feature": _integers(tree["feature"], f"{path}.feature", 0, n_features),
        "split_bin": _integers(tree["split_bin"], f"{path}.split_bin", 0, n_edges),
        "left": _integers(tree["left"], f"{path}.left", 0, n),
        "right": _integers(tree["right"], f"{path}.right", 0, n),
        "value": _numbers(tree["value"], f"{path}.value"),
    }
    _check_links(nodes["left"], nodes["right"], path)
    return nodes


def _check_links(left: np.ndarray, right: np.ndarray, path: str) -> None:
    """A leaf points at itself with both children; a split's children come after it (so that no
    walk can loop), and no node is the child of two splits (so that the nodes form a tree)."""
    index = np.arange(len(left))
    is_leaf = left == index
    if (i := _first(is_leaf & (right != index))) is not None:
        _refuse(
            f"{path}.right[{i}]",
            f"= {right[i]} is not {i}: node {i} is a leaf (left[{i}] "
            f"= {i}), and a leaf points at itself with both children",
        )
    for name, child in (("left", left), ("right", right)):
        if (i := _first(~is_leaf & (child <= index))) is not None:
            _refuse(
                f"{path}.{name}[{i}]",
                f"= {child[i]} is out of range: a split's children come "
                f"after it (index above {i}), so that no walk can loop",
            )
    children = np.concatenate([left[~is_leaf], right[~is_leaf]])
    counts = np.bincount(children, minlength=len(left))
    if (c := _first(counts > 1)) is not None:
        parents = np.flatnonzero(~is_leaf & ((left == c) | (right == c)))
        _refuse(
            path,
            f"names node {c} as a child more than once (at nodes "
            f"{', '.join(map(str, parents))}); each node has one parent",
        )


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    """The number of splits on the longest path from a root: the steps a walk needs."""
    depth = 0
    for tree, _, is_split in _levels(left, right):
        if is_split.any():
            if depth == MAX_DEPTH:
                _refuse(f"trees[{tree[is_split][0]}]", f"is more than {MAX_DEPTH} splits deep")
            depth += 1
    return depth


def _plain(label: Any) -> Any:
    """A class label as a JSON scalar: numpy's scalars as Python's."""
    return label.item() if isinstance(label, np.generic) else label
