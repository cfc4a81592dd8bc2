"""What every trainer is: arrays and validated parameters in, a fitted model out, rounds reported.

Trainers know nothing about HTTP. A trainer declares its hyperparameters as `ParamSpec`s (the same
records produce the validation and the JSON Schema of `GET /models`), says whether it can run on
this machine, and fits on a `TrainingData` while reporting each round to a `Reporter`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from boostream.errors import InvalidData, InvalidParameter

__all__ = ["InvalidData", "InvalidParameter"]  # raised by trainers, defined with the other domain errors

OBJECTIVES = ("regression", "binary", "multiclass")
# The metric each backend reports for an objective, on the training rows (`train_<metric>`) and the
# validation rows (`valid_<metric>`, which early stopping and a search watch; lower is better).
OBJECTIVE_METRICS = {"regression": "l2", "binary": "binary_logloss", "multiclass": "multi_logloss"}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: type  # int, float or bool
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    multiple_of: int | None = None

    def validate(self, value: Any) -> Any:
        field = f"params.{self.name}"
        if self.kind is bool:
            if not isinstance(value, bool):
                raise InvalidParameter(field, f"must be true or false, got {value!r}")
            return value
        # bool is a subclass of int in Python; in JSON it is not a number.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidParameter(field, f"must be a number, got {value!r}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise InvalidParameter(field, f"must be an integer, got {value!r}")
            value = int(value)  # a plain int: WarpGBM rejects numpy integers
        else:
            value = float(value)
            if not math.isfinite(value):
                raise InvalidParameter(field, f"must be finite, got {value!r}")
        if self.minimum is not None:
            if self.exclusive_minimum and value <= self.minimum:
                raise InvalidParameter(field, f"must be greater than {self.minimum}, got {value!r}")
            if value < self.minimum:
                raise InvalidParameter(field, f"must be at least {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidParameter(field, f"must be at most {self.maximum}, got {value!r}")
        if self.multiple_of and value % self.multiple_of:
            raise InvalidParameter(field, f"must be a multiple of {self.multiple_of}, got {value!r}")
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": {bool: "boolean", int: "integer", float: "number"}[self.kind],
            "default": self.default,
            "description": self.description,
        }
        if self.minimum is not None:
            schema["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.multiple_of:
            schema["multipleOf"] = self.multiple_of
        return schema


def validate_params(specs: Sequence[ParamSpec], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter with its default filled in; an unknown name is an error, never ignored."""
    by_name = {spec.name: spec for spec in specs}
    for name in given:
        if name not in by_name:
            known = ", ".join(sorted(by_name))
            raise InvalidParameter(f"params.{name}", f"unknown parameter; known: {known}")
    return {spec.name: spec.validate(given[spec.name]) if spec.name in given else spec.default for spec in specs}


def params_schema(specs: Sequence[ParamSpec]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {spec.name: spec.json_schema() for spec in specs},
    }


@dataclasses.dataclass
class TrainingData:
    """Validated arrays. For classifiers `y` holds class indices 0..K-1 and `classes` the labels."""

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    X_valid: np.ndarray | None = None
    y_valid: np.ndarray | None = None
    classes: list[Any] | None = None
    era: np.ndarray | None = None
    # Sample weights (float64, one per row, >= 0), of the training and the validation rows.
    weight: np.ndarray | None = None
    weight_valid: np.ndarray | None = None
    # Categorical features by name: their categories, sorted; X holds each value's index among
    # them, NaN where it is missing (`boostream.categories`).
    categories: dict[str, list[Any]] | None = None

    @property
    def has_validation(self) -> bool:
        return self.X_valid is not None


@dataclasses.dataclass
class FitResult:
    model: Any  # what the artifact holds: picklable, and it predicts on a CPU machine
    iterations: int
    best_iteration: int
    metrics: dict[str, float | None]
    cancelled: bool = False
    curve: list[dict[str, float | None]] = dataclasses.field(default_factory=list)  # every round's metrics, in order


@dataclasses.dataclass(frozen=True)
class Availability:
    available: bool
    reason: str | None = None
    device_name: str | None = None


class Reporter(Protocol):
    @property
    def cancelled(self) -> bool: ...

    def report(self, iteration: int, metrics: Mapping[str, float | None]) -> None:
        """Called once per round, in order from round 1."""


class Trainer(Protocol):
    name: str  # as requests name it: `model_type`
    title: str  # as people write it, in messages
    device: str  # "cpu" or "gpu": which concurrency limit the job counts against
    params: Sequence[ParamSpec]
    takes_era: bool  # whether `TrainingData.era` means something to it
    takes_weights: bool  # whether it trains with `TrainingData.weight`
    takes_categories: bool  # whether it trains with `TrainingData.categories`

    def rounds(self, params: Mapping[str, Any]) -> int:
        """The boosting rounds that `params` ask for: the `total` of the job's progress."""

    def availability(self) -> Availability: ...

    def check(self, data: TrainingData, objective: str, params: Mapping[str, Any]) -> None:
        """Raise InvalidParameter for combinations that the bounds alone cannot express."""

    def memory(
        self, data: TrainingData, objective: str, params: Mapping[str, Any], look: bool = False
    ) -> list[MemoryTerm]:
        """What training on `data` with `params` would take of the memory of the process that
        trains (its table, mapped from disk, aside), term by term; none where the trainer cannot
        tell (a GPU's memory is its own). With `look`, closer, from the data's values (slower)."""

    def fit(self, data: TrainingData, objective: str, params: Mapping[str, Any], reporter: Reporter) -> FitResult: ...


@dataclasses.dataclass(frozen=True)
class MemoryTerm:
    what: str  # "histograms: num_leaves 4096 x 20 features x 255 bins"
    bytes: int
    params: tuple[str, ...]  # the parameters that would make it smaller


class Predictor(Protocol):
    """What a backend does with a fitted model, on the CPU: this is all `/predict` needs."""

    name: str
    native_media_type: str  # of the backend's own format, which is data, never code
    native_extension: str

    def owns(self, model: Any) -> bool:
        """Whether `model` (loaded from a signed artifact) is this backend's."""

    def recognizes(self, blob: bytes) -> bool:
        """Whether `blob` looks like this backend's native format (before parsing it)."""

    def to_native(self, model: Any) -> bytes: ...

    def from_native(self, blob: bytes, trusted: bool = False) -> Any:
        """Parse the backend's own format; ValueError when it is not one. A blob that is not
        `trusted` (this server did not write it) may be anything, and must not harm the process."""

    def describe(self, model: Any) -> ModelShape: ...

    def scores(self, model: Any, X: np.ndarray) -> np.ndarray:
        """Values (rows,) for regression; class probabilities (rows, classes) for classifiers."""


class Backend(Trainer, Predictor, Protocol):
    """A backend as `create_trainers` makes them: it trains, and predicts with what it fitted."""


@dataclasses.dataclass(frozen=True)
class ModelShape:
    objective: str
    n_features: int
    n_classes: int = 1  # 1 for regression
    classes: list[Any] | None = None  # where the model itself knows its labels
    categories: dict[int, list[Any]] | None = None  # of its categorical features, by index


def check_early_stopping(data: TrainingData, params: Mapping[str, Any]) -> None:
    if params["early_stopping_rounds"] and not data.has_validation:
        raise InvalidParameter(
            "params.early_stopping_rounds",
            "needs validation data: send X_valid and y_valid, or valid_fraction",
        )


class RoundHistory:
    """Per-round metrics, with the best round on the first validation metric (lower is better)."""

    def __init__(self, valid_metric: str | None, patience: int) -> None:
        self.valid_metric = valid_metric
        self.patience = patience
        self.rounds: list[dict[str, float | None]] = []
        self.best_iteration = 0
        self._best_value = math.inf

    def add(self, metrics: dict[str, float | None]) -> None:
        self.rounds.append(metrics)
        value = metrics.get(self.valid_metric) if self.valid_metric else None
        if value is not None and value < self._best_value:
            self._best_value = value
            self.best_iteration = len(self.rounds)

    @property
    def should_stop(self) -> bool:
        return (
            bool(self.patience)
            and bool(self.best_iteration)
            and len(self.rounds) - self.best_iteration >= self.patience
        )

    def final(self, early_stopped: bool) -> tuple[int, dict[str, float | None]]:
        """The iteration the model predicts with, and that round's metrics."""
        best = self.best_iteration if early_stopped and self.best_iteration else len(self.rounds)
        return best, (self.rounds[best - 1] if best else {})
