"""The training request, described once: its options (`TrainOptions`, which the JSON body, the
table's query and form fields, the MCP tool's schema and the CLI's options are derived from or
tested against), and the checks every way in shares, from options and arrays to a `TrainSpec`.

Nothing here knows how the request came (JSON, CSV, Parquet, MCP arguments) or where it goes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from boostream.errors import InvalidData, InvalidParameter, Unavailable
from boostream.models.artifacts import FORMATS as ARTIFACT_FORMATS
from boostream.trainers.base import OBJECTIVES, Trainer, TrainingData, validate_params

VALID_SPLIT_SEED = 0
_NAME_CHARACTERS_REFUSED = '",:[]{}'
CLASS_LABEL_HINT = "strings are class labels: use a classifier objective"


class TrainOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A training request's fields other than its arrays, whichever way the table came."""

    model_type: str = "lightgbm"
    objective: str = "regression"
    valid_fraction: float | None = None
    feature_names: list[str] | None = None
    # The features whose values are categories (strings or numbers), by name (`feature_names`, or
    # f0, f1, ... without them). A table's string and dictionary columns are categorical unnamed.
    categorical: list[str] | None = None
    params: dict[str, Any] = {}
    callback_url: str | None = None
    timeout_s: float | None = None
    artifact_format: str = "joblib"


# The arrays of a training request, beside its options: a JSON body's fields, a table's columns.
DATA_FIELDS = ("X", "y", "X_valid", "y_valid", "era", "weight", "weight_valid")
# A table request's fields that pick its columns and rows (`boostream.requests.tables`).
TABLE_FIELDS = frozenset({"target", "features", "era", "valid_rows", "weight", "categorical"})
# Where a request names datasets to train on instead of sending a table.
DATASET_FIELDS = frozenset({"dataset_id", "valid_dataset_id"})


@dataclasses.dataclass
class TrainSpec:
    """A validated training request: everything a job needs to run."""

    trainer: Trainer
    objective: str
    params: dict[str, Any]
    data: TrainingData
    callback_url: str | None = None
    timeout_s: float | None = None
    artifact_format: str = "joblib"
    # Where the arrays are kept already, as `jobs.inputs` writes them, when a decoder process
    # wrote them there (`data` is then mapped from those files).
    saved_at: Path | None = None


def build_spec(
    options: TrainOptions,
    read_data: Callable[[], TrainingData],
    trainers: Mapping[str, Trainer],
    unavailable: Mapping[str, str],
    where: str = "on this server",
) -> TrainSpec:
    """Check the options, then read the arrays with `read_data`, and check them together: a
    domain error (InvalidParameter, InvalidData, TooLarge, Unavailable for a backend in
    `unavailable`, which maps names to reasons) naming the field at fault. `where` the training
    would run: "on this machine" without a server."""
    trainer = trainers.get(options.model_type)
    if trainer is None:
        raise InvalidParameter(
            "model_type", f"unknown model_type {options.model_type!r}; choose one of {sorted(trainers)}"
        )
    if options.model_type in unavailable:
        reason = unavailable[options.model_type]
        raise Unavailable(f"{options.model_type} cannot train {where}: {reason}", field="model_type")
    if options.objective not in OBJECTIVES:
        raise InvalidParameter(
            "objective", f"unknown objective {options.objective!r}; choose one of {list(OBJECTIVES)}"
        )
    if options.artifact_format not in ARTIFACT_FORMATS:
        raise InvalidParameter(
            "artifact_format",
            f"artifact_format must be one of {list(ARTIFACT_FORMATS)}, got {options.artifact_format!r}",
        )
    params = validate_params(trainer.params, options.params)
    data = read_data()
    if data.era is not None and not trainer.takes_era:
        raise _not_taken("era", "era splitting", [other for other in trainers.values() if other.takes_era])
    if (data.weight is not None or data.weight_valid is not None) and not trainer.takes_weights:
        takers = [other for other in trainers.values() if other.takes_weights]
        raise _not_taken("weight", "training with sample weights", takers)
    if data.categories and not trainer.takes_categories:
        takers = [other for other in trainers.values() if other.takes_categories]
        name = next(iter(data.categories))
        reason = f"column {name!r} holds categories, and {trainer.title} trains on numbers only"
        raise _not_taken(name, "training on categorical features", takers, f"{reason}: encode it as numbers, or ")
    trainer.check(data, options.objective, params)
    return TrainSpec(
        trainer, options.objective, params, data, options.callback_url, options.timeout_s, options.artifact_format
    )


def _not_taken(field: str, feature: str, takers: list[Trainer], before: str = "") -> InvalidParameter:
    titles, names = " or ".join(other.title for other in takers), " or ".join(repr(other.name) for other in takers)
    if before:
        return InvalidParameter(field, f"{before}use model_type {names} ({feature} is a {titles} feature)")
    return InvalidParameter(field, f"{feature} is a {titles} feature; use model_type {names}")


def assemble_training_data(
    options: TrainOptions,
    X: np.ndarray,
    y: np.ndarray,
    era: np.ndarray | None = None,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    weight: np.ndarray | None = None,
    weight_valid: np.ndarray | None = None,
    categories: dict[str, list[Any]] | None = None,
) -> TrainingData:
    """Arrays as read, whatever their source, checked against each other and the options: era ids
    numbered, the validation rows split off or checked, class labels encoded, weights checked.
    `categories` (by feature name) are those of X's categorical columns, already encoded."""
    _check_rows("y", y, X)
    if weight is not None:
        _check_rows("weight", weight, X)
        _check_weights("weight", weight)
    if weight_valid is not None:
        if valid is None:
            raise InvalidData("weight_valid", "weighs validation rows: send them too (X_valid and y_valid)")
        _check_rows("weight_valid", weight_valid, valid[0])
        _check_weights("weight_valid", weight_valid)
    feature_names = _feature_names(options.feature_names, X.shape[1])
    if era is not None:
        _check_rows("era", era, X)
        era = np.unique(era, return_inverse=True)[1].astype(np.int32)

    X_valid = y_valid = None
    if valid is not None:
        if options.valid_fraction is not None:
            raise InvalidParameter("valid_fraction", "send either valid_fraction or X_valid/y_valid, not both")
        X_valid, y_valid = valid
        if X_valid.shape[1] != X.shape[1]:
            raise InvalidData("X_valid", f"rows have {X_valid.shape[1]} values, but X has {X.shape[1]} features")
        _check_rows("y_valid", y_valid, X_valid)
    elif options.valid_fraction is not None:
        X, y, X_valid, y_valid, era, weight, weight_valid = _split(X, y, era, weight, options.valid_fraction)

    data = TrainingData(
        X=X, y=y, feature_names=feature_names, X_valid=X_valid, y_valid=y_valid, era=era,
        weight=weight, weight_valid=weight_valid, categories=categories or None,
    )  # fmt: skip
    if options.objective != "regression":
        _encode_classes(data, options.objective)
    return data


def _check_rows(field: str, values: np.ndarray, X: np.ndarray) -> None:
    if len(values) != len(X):
        x_field = "X_valid" if field in ("y_valid", "weight_valid") else "X"
        raise InvalidData(field, f"has {len(values)} values, but {x_field} has {len(X)} rows")


def _check_weights(field: str, weight: np.ndarray) -> None:
    """Sample weights: numbers, none negative, not all zero (LightGBM would train on nothing)."""
    if weight.dtype.kind not in "iuf":
        raise InvalidData(field, "sample weights must be numbers")
    negative = np.flatnonzero(weight < 0)
    if len(negative):
        raise InvalidData(field, f"sample weights must be 0 or more; row {negative[0]} has {weight[negative[0]]!r}")
    if not weight.any():
        raise InvalidData(field, "every sample weight is 0: no row would count")


def _feature_names(names: list[str] | None, width: int) -> list[str]:
    if names is None:
        return [f"f{i}" for i in range(width)]
    if len(names) != width:
        raise InvalidData("feature_names", f"has {len(names)} names, but X has {width} features")
    if len(set(names)) != len(names):
        raise InvalidData("feature_names", "names must be unique")
    for name in names:
        # LightGBM keeps its model as JSON-like text and refuses these; say so before training.
        if not name or any(character in name for character in _NAME_CHARACTERS_REFUSED):
            raise InvalidData(
                "feature_names",
                f"{name!r} is not a usable feature name: it must be "
                f"non-empty, without any of {_NAME_CHARACTERS_REFUSED}",
            )
    return list(names)


def _split(
    X: np.ndarray, y: np.ndarray, era: np.ndarray | None, weight: np.ndarray | None, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    if not 0.0 < fraction <= 0.5:
        raise InvalidParameter("valid_fraction", f"must be greater than 0 and at most 0.5, got {fraction}")
    n_valid = int(round(len(X) * fraction))
    if n_valid < 1 or n_valid >= len(X):
        raise InvalidData("X", f"{len(X)} rows are too few to split off valid_fraction={fraction}")
    order = np.random.default_rng(VALID_SPLIT_SEED).permutation(len(X))
    valid, train = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    weights = (None, None) if weight is None else (weight[train], weight[valid])
    return X[train], y[train], X[valid], y[valid], None if era is None else era[train], *weights


def _encode_classes(data: TrainingData, objective: str) -> None:
    classes, data.y = np.unique(data.y, return_inverse=True)
    if len(classes) < 2:
        raise InvalidData("y", f"has a single class ({_label(classes[0])!r}); a classifier needs at least two")
    if objective == "binary" and len(classes) != 2:
        raise InvalidData("y", f"has {len(classes)} classes; the binary objective needs exactly two (use multiclass)")
    data.y = data.y.astype(np.int32)
    data.classes = [_label(c) for c in classes]
    if data.y_valid is not None:
        unseen = np.setdiff1d(data.y_valid, classes)
        if len(unseen):
            raise InvalidData("y_valid", f"has the class {_label(unseen[0])!r}, which y does not have")
        data.y_valid = np.searchsorted(classes, data.y_valid).astype(np.int32)


def _label(value: Any) -> Any:
    """A class label as JSON will show it: 1 rather than 1.0 (but 1e+20 stays a float: JSON
    encoders refuse integers beyond 64 bits), plain str rather than numpy's."""
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**63 else value
