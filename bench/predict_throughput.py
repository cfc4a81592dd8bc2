"""CPU prediction throughput: boostream's `Forest` (how a WarpGBM model predicts on a CPU) against
LightGBM's own `Booster.predict`, on forests of the same trees, on the same rows and cores.

Target: a 100-tree depth-6 WarpGBM model predicts at least half as fast as LightGBM's predict on a
LightGBM forest of the same size, on the same cores (Forest rows/s >= 0.5 x LightGBM rows/s).

The script trains a LightGBM regression on synthetic data (`--train-rows`, `--trees` rounds,
`max_depth` `--depth`, `num_leaves` 2^depth, `max_bin` `--bins`) and converts that very forest into
a `Forest`: each feature's bin edges are the thresholds LightGBM split it at (float32, padded to
bins - 1 by repeating the last), each split's bin the index of its threshold, each leaf its value
(LightGBM's leaves already hold the learning rate and the initial score). So both predict the same
trees; a LightGBM split compares the float64 value (x <= threshold), a Forest split the float32
one (x < edge), so a value within float32 rounding of a threshold may take the other branch (the
script counts such rows). Then, for each thread count in `--threads`, it times
`Booster.predict(X, num_threads=n)` and `Forest.predict(X, threads=n)` on the same float64 C-order
rows, alternating, `--repeats` times after one untimed call each, and reports the medians. Forest
splits the rows into blocks walked on a thread pool (numpy releases the GIL inside each step).

    python bench/predict_throughput.py                  # 1M x 50 rows, 100 trees of depth 6; about 2 minutes on 2 cores
    python bench/predict_throughput.py --rows 200000 --repeats 3
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import Watchdog, free_memory, median, print_header, regression_data, size_label  # noqa: E402

TARGET_RATIO = 0.5  # Forest rows/s over LightGBM rows/s


def train_lightgbm(X: np.ndarray, y: np.ndarray, args: argparse.Namespace, threads: int) -> Any:
    import lightgbm

    params = {
        "objective": "regression",
        "max_depth": args.depth,
        "num_leaves": 2**args.depth,
        "max_bin": args.bins,
        "num_threads": threads,
        "seed": args.seed,
        "verbose": -1,
    }
    return lightgbm.train(params, lightgbm.Dataset(X, y), num_boost_round=args.trees)


def forest_of(booster: Any, bins: int) -> Any:
    """The booster's trees as a `Forest`, split for split and leaf for leaf."""
    from boostream.trainers.forest import Forest

    trees = [info["tree_structure"] for info in booster.dump_model()["tree_info"]]
    n_features = booster.num_feature()
    thresholds: list[set[float]] = [set() for _ in range(n_features)]
    for tree in trees:
        _collect_thresholds(tree, thresholds)
    edges = _edges(thresholds, bins)
    return Forest.from_trees(
        [(0, _warpgbm_tree(tree, edges)) for tree in trees],
        objective="regression",
        learning_rate=1.0,
        bin_edges=edges,
        init_score=np.zeros(1),
        feature_names=booster.feature_name(),
    )


def _collect_thresholds(node: dict, thresholds: list[set[float]]) -> None:
    if "leaf_value" not in node:
        thresholds[node["split_feature"]].add(float(np.float32(node["threshold"])))
        _collect_thresholds(node["left_child"], thresholds)
        _collect_thresholds(node["right_child"], thresholds)


def _edges(thresholds: list[set[float]], bins: int) -> np.ndarray:
    """Sorted thresholds per feature, each row padded to the same length with its last edge (an
    edge repeated changes no bin below it, and the splits use the first copy)."""
    width = max(bins - 1, *(len(t) for t in thresholds))
    edges = np.empty((len(thresholds), width), dtype=np.float32)
    for f, values in enumerate(thresholds):
        row = sorted(values) or [0.0]
        edges[f] = row + [row[-1]] * (width - len(row))
    return edges


def _warpgbm_tree(node: dict, edges: np.ndarray) -> dict:
    if "leaf_value" in node:
        return {"leaf_value": node["leaf_value"]}
    feature = node["split_feature"]
    split_bin = int(np.searchsorted(edges[feature], np.float32(node["threshold"]), side="left"))
    return {
        "feature": feature,
        "bin": split_bin,
        "left": _warpgbm_tree(node["left_child"], edges),
        "right": _warpgbm_tree(node["right_child"], edges),
    }


def describe(booster: Any, forest: Any) -> str:
    leaves = [info["num_leaves"] for info in booster.dump_model()["tree_info"]]
    forest_leaves = (forest.left == np.arange(forest.left.shape[1])).sum(axis=1)  # padding points at node 0
    return (
        f"LightGBM {len(leaves)} trees, {min(leaves)}-{max(leaves)} leaves (mean {np.mean(leaves):.1f}); "
        f"Forest {forest.n_trees} trees, depth {forest.depth}, {min(forest_leaves)}-{max(forest_leaves)} leaves, "
        f"{forest.bin_edges.shape[0]} features x {forest.bin_edges.shape[1] + 1} bins"
    )


def timed(function: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def compare(booster: Any, forest: Any, X: np.ndarray, threads: int, repeats: int) -> dict[str, float]:
    predictors = {
        "lightgbm": lambda: booster.predict(X, num_threads=threads),
        "forest": lambda: forest.predict(X, threads=threads),
    }
    _, expected = timed(predictors["lightgbm"])
    _, got = timed(predictors["forest"])
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for repeat in range(repeats):
        for name, predict in predictors.items():
            seconds, _ = timed(predict)
            times[name].append(seconds)
            free_memory()
        print(
            f"  threads {threads} repeat {repeat + 1}: LightGBM "
            f"{times['lightgbm'][-1]:.3f} s | Forest {times['forest'][-1]:.3f} s"
        )
        sys.stdout.flush()
    differing = int(np.count_nonzero(~np.isclose(got, expected, rtol=1e-9, atol=1e-9)))
    return {
        "lightgbm_s": median(times["lightgbm"]),
        "forest_s": median(times["forest"]),
        "differing_rows": differing,
        "max_abs_diff": float(np.abs(got - expected).max()),
    }


def report(results: dict[int, dict[str, float]], rows: int) -> None:
    print(f"\n## medians, {rows} rows")
    print(
        f"{'threads':>7}  {'LightGBM s':>10}  {'rows/s':>10}  "
        f"{'Forest s':>9}  {'rows/s':>10}  {'Forest / LightGBM rows/s':>24}"
    )
    for threads, figures in results.items():
        ratio = figures["lightgbm_s"] / figures["forest_s"]
        print(
            f"{threads:>7}  {figures['lightgbm_s']:>10.3f}  {rows / figures['lightgbm_s']:>10,.0f}  "
            f"{figures['forest_s']:>9.3f}  {rows / figures['forest_s']:>10,.0f}  {ratio:>24.2f}"
        )
    for threads, figures in results.items():
        ratio = figures["lightgbm_s"] / figures["forest_s"]
        verdict = "MET" if ratio >= TARGET_RATIO else "MISSED"
        print(
            f"{threads} thread(s): Forest / LightGBM = {ratio:.2f} -> {verdict} (target >= {TARGET_RATIO}); "
            f"predictions differing by more than 1e-9: {figures['differing_rows']} "
            f"of {rows} rows (max {figures['max_abs_diff']:.3g})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows predicted (default 1000000)")
    parser.add_argument("--train-rows", type=int, default=200_000, help="rows LightGBM trains on (default 200000)")
    parser.add_argument("--features", type=int, default=50, help="features (default 50)")
    parser.add_argument("--trees", type=int, default=100, help="boosting rounds (default 100)")
    parser.add_argument("--depth", type=int, default=6, help="max_depth; num_leaves is 2^depth (default 6)")
    parser.add_argument(
        "--bins", type=int, default=63, help="LightGBM max_bin, and the Forest's bins per feature (default 63)"
    )
    parser.add_argument(
        "--threads",
        default=",".join(map(str, sorted({1, cores}))),
        help=f"comma-separated thread counts, the same for both (default 1,{cores}: 1 and all cores)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed calls of each predictor per thread count (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard limit for the whole run (default 900)")
    args = parser.parse_args()
    thread_counts = [int(n) for n in args.threads.split(",")]

    import lightgbm

    print_header(
        "predict_throughput: Forest vs LightGBM predict, "
        f"{size_label(args.rows, args.features)}, {args.trees} trees, depth {args.depth}"
    )
    print(f"# lightgbm {lightgbm.__version__}, numpy {np.__version__}")
    with Watchdog(args.max_seconds):
        X_train, y_train = regression_data(args.train_rows, args.features, args.seed)
        seconds, booster = timed(functools.partial(train_lightgbm, X_train, y_train, args, max(thread_counts)))
        forest = forest_of(booster, args.bins)
        print(
            f"# trained on {size_label(args.train_rows, args.features)} in {seconds:.1f} s; {describe(booster, forest)}"
        )
        del X_train, y_train
        X, _ = regression_data(args.rows, args.features, args.seed + 1)
        results = {}
        for threads in thread_counts:
            print(f"## {threads} thread(s)")
            results[threads] = compare(booster, forest, X, threads, args.repeats)
        report(results, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
