"""LightGBM on the CPU: `lightgbm.train` with one after-iteration callback that reports each round,
stops early on the validation metric and stops when the job is cancelled.

A classifier's labels travel with the model in both formats: as the booster's `classes_` attribute
(a pickle keeps it), and in the text model as one line of JSON, `boostream_classes:[...]`, after
LightGBM's `end of parameters` where LightGBM's own readers skip it (docs/formats.md).
"""

from __future__ import annotations

import ctypes
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import lightgbm
import numpy as np
import orjson

from boostream import categories
from boostream.progress import finite_or_none
from boostream.trainers.base import (
    OBJECTIVE_METRICS,
    Availability,
    FitResult,
    InvalidParameter,
    MemoryTerm,
    ModelShape,
    ParamSpec,
    Reporter,
    RoundHistory,
    TrainingData,
    check_early_stopping,
)

# A training worker before its table and model: Python, numpy and LightGBM loaded.
PROCESS_BYTES = 128 * 1024**2
TREE_BYTES_PER_LEAF = 88
BIN_SAMPLE_ROWS = 200_000  # LightGBM's bin_construct_sample_cnt
SAMPLE_VALUES = 2_000_000  # at most this many values of X are looked at to count bins
FEW_VALUES = 32


class LightGBMTrainer:
    name = "lightgbm"
    title = "LightGBM"
    device = "cpu"
    native_media_type = "text/plain"  # LightGBM's text model: lightgbm.Booster(model_str=...)
    native_extension = "txt"
    takes_era = False
    takes_weights = True
    takes_categories = True
    params: Sequence[ParamSpec] = (
        ParamSpec("n_estimators", int, 100, "Boosting rounds.", minimum=1, maximum=100_000),
        ParamSpec(
            "learning_rate", float, 0.1, "Shrinkage per round.", minimum=0.0, maximum=1.0, exclusive_minimum=True
        ),
        ParamSpec("num_leaves", int, 31, "Maximum leaves per tree.", minimum=2, maximum=131_072),
        ParamSpec("max_depth", int, -1, "Maximum tree depth; -1 for no limit.", minimum=-1, maximum=255),
        ParamSpec("min_data_in_leaf", int, 20, "Minimum rows in a leaf.", minimum=1, maximum=10**9),
        ParamSpec("min_sum_hessian_in_leaf", float, 1e-3, "Minimum hessian sum in a leaf.", minimum=0.0),
        ParamSpec(
            "feature_fraction",
            float,
            1.0,
            "Share of features tried per tree.",
            minimum=0.0,
            maximum=1.0,
            exclusive_minimum=True,
        ),
        ParamSpec(
            "bagging_fraction",
            float,
            1.0,
            "Share of rows sampled per bagging round (needs bagging_freq > 0).",
            minimum=0.0,
            maximum=1.0,
            exclusive_minimum=True,
        ),
        ParamSpec(
            "bagging_freq", int, 0, "Resample rows every k rounds; 0 disables bagging.", minimum=0, maximum=100_000
        ),
        ParamSpec("lambda_l1", float, 0.0, "L1 regularisation.", minimum=0.0),
        ParamSpec("lambda_l2", float, 0.0, "L2 regularisation.", minimum=0.0),
        ParamSpec("min_gain_to_split", float, 0.0, "Minimum gain to make a split.", minimum=0.0),
        ParamSpec("max_bin", int, 255, "Maximum histogram bins per feature.", minimum=2, maximum=65_535),
        ParamSpec(
            "early_stopping_rounds",
            int,
            0,
            "Stop when the validation metric has not improved for this many rounds; 0 disables.",
            minimum=0,
            maximum=100_000,
        ),
        ParamSpec("seed", int, 0, "Random seed.", minimum=0, maximum=2**31 - 1),
    )

    def __init__(self, num_threads: int) -> None:
        self.num_threads = num_threads

    def rounds(self, params: Mapping[str, Any]) -> int:
        return int(params["n_estimators"])

    def availability(self) -> Availability:
        return Availability(True, device_name="cpu")

    def check(self, data: TrainingData, objective: str, params: Mapping[str, Any]) -> None:
        check_early_stopping(data, params)
        if params["bagging_fraction"] < 1.0 and params["bagging_freq"] == 0:
            raise InvalidParameter(
                "params.bagging_fraction", "has no effect while bagging_freq is 0; set bagging_freq too"
            )

    def memory(
        self, data: TrainingData, objective: str, params: Mapping[str, Any], look: bool = False
    ) -> list[MemoryTerm]:
        """LightGBM's main allocations, measured here (4.x, 2026-11-30): the rows it samples to find
        its bins (up to 200,000, some 12 bytes a value); its binned table; a histogram per leaf, 16
        bytes per bin, a feature never having more bins than a third of the rows (`min_data_in_bin`
        3); each tree's arrays, about 88 bytes per leaf it may have, allocated for `num_leaves`
        whatever it grows to (100 trees of 131,072 leaves on 4 rows took 1.1 GB). Within a few
        percent of the peaks measured for 20,000 x 20 rows with 4,096 leaves and 255 or 4,096 bins
        (344 MiB, 5.2 GiB), 1M x 50 (310 MiB) and 200,000 x 1,000 (2.9 GiB).

        With `look`, the bins of each feature are counted on a sample of rows (a column of a few
        values, one-hot say, has as many bins, not `max_bin`): milliseconds to a second for
        thousands of features, so only where the estimate without it is too much."""
        rows = len(data.X) + (0 if data.X_valid is None else len(data.X_valid))
        features, leaves, bins = data.X.shape[1], params["num_leaves"], params["max_bin"]
        classes = len(data.classes or ()) if objective == "multiclass" else 1
        trees = params["n_estimators"] * classes
        most = max(2, min(bins, len(data.X) // 3))
        total_bins = _bins_seen(data.X, most) if look else features * most
        sampled = min(len(data.X), BIN_SAMPLE_ROWS) * features
        return [
            MemoryTerm("the process itself", PROCESS_BYTES, ()),
            MemoryTerm(f"the rows sampled for bins: {sampled // features} x {features} features", 12 * sampled, ()),
            MemoryTerm(
                f"the binned table: {rows} rows x {features} features", rows * features * (1 if bins < 256 else 2), ()
            ),
            MemoryTerm(
                f"histograms: num_leaves {leaves} x {total_bins} bins of {features} features",
                16 * leaves * total_bins,
                ("num_leaves", "max_bin"),
            ),
            MemoryTerm(
                f"trees: {trees} trees x num_leaves {leaves}",
                TREE_BYTES_PER_LEAF * trees * leaves,
                ("num_leaves", "n_estimators"),
            ),
            # A score per row and class (a double), and a gradient and a hessian (floats).
            MemoryTerm(f"scores and gradients: {rows} rows x {classes} classes", 16 * rows * classes, ()),
        ]

    def fit(self, data: TrainingData, objective: str, params: Mapping[str, Any], reporter: Reporter) -> FitResult:
        booster_params = {k: v for k, v in params.items() if k not in ("n_estimators", "early_stopping_rounds")}
        booster_params.update(
            objective=objective,
            metric=OBJECTIVE_METRICS[objective],
            num_threads=self.num_threads,
            verbose=-1,
        )
        if objective == "multiclass":
            booster_params["num_class"] = len(data.classes or ())
        dataset_params = {"max_bin": params["max_bin"], "verbose": -1, "num_threads": self.num_threads}
        categorical = sorted(categories.by_index(data.categories or {}, data.feature_names))
        train_set = lightgbm.Dataset(
            data.X, data.y, weight=data.weight, feature_name=data.feature_names, params=dataset_params,
            categorical_feature=categorical or "auto",
        )  # fmt: skip
        valid_sets, valid_names = [train_set], ["train"]
        if data.has_validation:
            valid_set = lightgbm.Dataset(data.X_valid, data.y_valid, weight=data.weight_valid, reference=train_set)
            valid_sets.append(valid_set)
            valid_names.append("valid")
        history = RoundHistory(
            f"valid_{OBJECTIVE_METRICS[objective]}" if data.has_validation else None,
            params["early_stopping_rounds"],
        )
        stop = _StopState()
        booster = lightgbm.train(
            booster_params,
            train_set,
            num_boost_round=params["n_estimators"],
            valid_sets=valid_sets,
            valid_names=valid_names,
            callbacks=[_ReportRounds(reporter, history, stop)],
        )
        best_iteration, metrics = history.final(early_stopped=stop.early_stopped)
        booster.best_iteration = best_iteration
        booster.classes_ = data.classes  # type: ignore[attr-defined]  # ours, on LightGBM's object
        if categorical:  # written on the text model's last line, read back by LightGBM's Python package
            listed = categories.by_index(data.categories or {}, data.feature_names)
            booster.pandas_categorical = [listed[index] for index in categorical]
        return FitResult(
            booster, len(history.rounds), best_iteration, metrics, cancelled=stop.cancelled, curve=history.rounds
        )

    # Prediction

    def recognizes(self, blob: bytes) -> bool:
        # LightGBM's text model starts with "tree"; anything else that is not a JSON object is
        # read as one too, so that its parser says what is wrong with it.
        return blob.lstrip()[:1] != b"{"

    def owns(self, model: Any) -> bool:
        return isinstance(model, lightgbm.Booster)

    def to_native(self, model: lightgbm.Booster) -> bytes:
        text = model.model_to_string()  # at the best iteration, which the booster knows
        classes = getattr(model, "classes_", None)
        if classes is None:
            return text.encode()
        # Before the last line: LightGBM's Python package reads `pandas_categorical:` from the last line.
        body, _, last = text.rstrip("\n").rpartition("\n")
        return f"{body}\n{CLASSES_LINE}{orjson.dumps(classes).decode()}\n{last}\n".encode()

    def from_native(self, blob: bytes, trusted: bool = False) -> lightgbm.Booster:
        try:
            text = blob.decode("utf-8")
            if not trusted:
                _check_in_a_process_of_its_own(text)
            model = lightgbm.Booster(model_str=text)
        except (UnicodeDecodeError, lightgbm.basic.LightGBMError) as error:
            raise ValueError(f"not a LightGBM text model: {error}") from None
        model.classes_ = _read_classes(text, self.describe(model).n_classes)  # type: ignore[attr-defined]  # ours
        if not trusted:
            self._categories(model)  # ValueError where they do not fit the model
        return model

    def describe(self, model: lightgbm.Booster) -> ModelShape:
        objective = _OBJECTIVE_NAMES.get(str(model.params.get("objective", "regression")).split()[0], "regression")
        n_classes = {"regression": 1, "binary": 2}.get(objective, model.num_model_per_iteration())
        return ModelShape(
            objective, model.num_feature(), n_classes, getattr(model, "classes_", None), self._categories(model) or None
        )

    @staticmethod
    def _categories(model: lightgbm.Booster) -> dict[int, list[Any]]:
        """The model's categories by feature index, from LightGBM's `pandas_categorical` and its
        `categorical_feature` parameter. A model whose categorical features come without their
        categories (trained on integer codes) has none: it is sent the codes."""
        features = model.params.get("categorical_feature") or []
        features = [int(index) for index in (features if isinstance(features, list) else [features])]
        return categories.check(model.pandas_categorical, features, model.num_feature())

    def scores(self, model: lightgbm.Booster, X: np.ndarray) -> np.ndarray:
        # An array for dense X (LightGBM's annotation also allows the sparse and list results of
        # other inputs); np.asarray returns that same array.
        predicted = np.asarray(model.predict(X, num_threads=self.num_threads))
        if self.describe(model).objective == "binary":
            return np.column_stack([1.0 - predicted, predicted])
        return predicted


CLASSES_LINE = "boostream_classes:"
# LightGBM's parser aborts the whole process on some malformed models (`[Fatal] Model format error`,
# then `terminate called`): a text model a client sent is read first by a Python of its own.
_READ_MODEL = "import sys, lightgbm; lightgbm.Booster(model_str=sys.stdin.read())"
READ_CHECK_TIMEOUT_S = 60


def _check_in_a_process_of_its_own(text: str) -> None:
    """ValueError, with LightGBM's own last words, unless a separate process reads `text` as a model."""
    try:
        read = subprocess.run(
            [sys.executable, "-c", _READ_MODEL],
            input=text,
            capture_output=True,
            text=True,
            timeout=READ_CHECK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"LightGBM did not read it within {READ_CHECK_TIMEOUT_S} s") from None
    if read.returncode != 0:
        said = [line for line in read.stderr.splitlines() if "Fatal" in line or "Error" in line]
        raise ValueError(said[-1] if said else f"LightGBM could not read it (exit status {read.returncode})")


def _read_classes(text: str, n_classes: int) -> list[Any] | None:
    """The labels a text model carries on its `boostream_classes:` line, checked; None without one."""
    start = text.rfind("\n" + CLASSES_LINE)
    if start < 0:
        return None
    line = text[start + 1 + len(CLASSES_LINE) :].split("\n", 1)[0]
    try:
        labels = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ValueError(f"its {CLASSES_LINE} line is not JSON") from None
    if (
        not isinstance(labels, list)
        or not all(isinstance(label, str) or (type(label) in (int, float) and math.isfinite(label)) for label in labels)
        or len(labels) != n_classes
        or len(set(labels)) != n_classes
    ):
        raise ValueError(f"its {CLASSES_LINE} line must list {n_classes} unique labels (strings or finite numbers)")
    return labels


# What LightGBM calls the objectives it may have written into a model, as this service names them.
_OBJECTIVE_NAMES = {
    "regression": "regression",
    "l2": "regression",
    "binary": "binary",
    "multiclass": "multiclass",
    "softmax": "multiclass",
}


class _StopState:
    cancelled = False
    early_stopped = False


class _ReportRounds:
    """The after-iteration callback: LightGBM calls it with each round's evaluation."""

    order = 30  # after LightGBM has evaluated the round

    def __init__(self, reporter: Reporter, history: RoundHistory, stop: _StopState) -> None:
        self.reporter = reporter
        self.history = history
        self.stop = stop

    def __call__(self, env: lightgbm.callback.CallbackEnv) -> None:
        results = env.evaluation_result_list
        assert results is not None  # lightgbm.train evaluates every round: the valid_sets hold the training set
        metrics = {f"{entry[0]}_{entry[1]}": finite_or_none(entry[2]) for entry in results}
        self.history.add(metrics)
        self.reporter.report(env.iteration + 1, metrics)
        if self.reporter.cancelled:
            self.stop.cancelled = True
        elif self.history.should_stop:
            self.stop.early_stopped = True
        else:
            return
        # The documented way to end lightgbm.train early and still get a usable booster.
        raise lightgbm.callback.EarlyStopException(env.iteration, results)


def _bins_seen(X: np.ndarray, most: int) -> int:
    """The bins LightGBM would make for X's features, `most` at the most each: a feature of a few
    values (32 or fewer in a sample of rows) gets one per value, and one for missing; any other
    gets `most`."""
    rows, features = X.shape
    count = max(100, min(rows, SAMPLE_VALUES // max(1, features)))
    sample = np.sort(np.nan_to_num(X[:: max(1, rows // count)][:count], nan=np.inf), axis=0)
    distinct = 1 + (np.diff(sample, axis=0) != 0).sum(axis=0)
    return int(np.where(distinct <= FEW_VALUES, np.minimum(distinct + 1, most), most).sum())


def limit_threads(threads: int) -> None:
    """Cap the threads of LightGBM's parallel regions in this process, from its next one on
    (`LGBM_SetMaxThreads`, LightGBM 4.2; where it is missing, a job keeps its `num_threads`)."""
    set_max = getattr(lightgbm.basic._LIB, "LGBM_SetMaxThreads", None)  # type: ignore[attr-defined]
    if set_max is not None:
        set_max(ctypes.c_int(threads))
