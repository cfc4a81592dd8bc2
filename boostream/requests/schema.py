"""The training request as JSON Schema, built from the same descriptions the server checks with
(`TrainOptions`, each backend's `ParamSpec`s): the MCP `train` tool's input and the OpenAPI
document's request body are this one schema."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from boostream.models.artifacts import FORMATS as ARTIFACT_FORMATS
from boostream.requests.spec import DATA_FIELDS, DATASET_FIELDS, TABLE_FIELDS, TrainOptions
from boostream.trainers.base import OBJECTIVES, Trainer, params_schema
from boostream.tuning import MAX_TRIALS, PRUNERS, SAMPLERS

DEFAULTS = TrainOptions()


def closed_object(properties: dict[str, Any], required: list[str], closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if closed:
        schema["additionalProperties"] = False
    return schema


def with_properties(schema: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "properties": {**schema["properties"], **properties}}


def table_schema(description: str) -> dict[str, Any]:
    row = {"type": "array", "minItems": 1, "items": {"type": ["number", "string", "null"]}}
    return {"type": "array", "minItems": 1, "items": row, "description": description}


def labels_schema(description: str) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "items": {"type": ["number", "string"]}, "description": description}


def _weights_schema(description: str) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "items": {"type": "number", "minimum": 0}, "description": description}


def train_request_schema(trainers: Mapping[str, Trainer], max_training_s: float) -> dict[str, Any]:
    """A training request, as the HTTP API takes it; `params` checked against the chosen backend's."""
    properties = {
        "X": table_schema(
            "Training rows, each a list of numbers; null marks a missing value (LightGBM only). "
            "A feature that `categorical` names may hold strings."
        ),
        "y": labels_schema("One target per row: numbers, or for classifiers numbers or strings."),
        "model_type": {"type": "string", "enum": list(trainers), "default": DEFAULTS.model_type},
        "objective": {"type": "string", "enum": list(OBJECTIVES), "default": DEFAULTS.objective},
        "params": {
            "type": "object",
            "description": "The backend's hyperparameters (see list_models); each "
            "is checked against its bounds, an unknown one is refused.",
        },
        "X_valid": table_schema(
            "Validation rows: their metrics are reported each round, and early stopping watches them."
        ),
        "y_valid": labels_schema("One target per validation row."),
        "valid_fraction": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 0.5,
            "description": "Instead of X_valid/y_valid: this share of the "
            "rows is held out for validation, with a fixed seed.",
        },
        "feature_names": {
            "type": "array",
            "items": {"type": "string"},
            "uniqueItems": True,
            "description": "One name per column of X.",
        },
        "categorical": {
            "type": "array",
            "items": {"type": "string"},
            "uniqueItems": True,
            "description": "LightGBM only: the features (by feature_names, or f0, f1, ...) whose values are "
            "categories, strings or numbers; the model keeps them, and /predict takes the same values.",
        },
        "era": labels_schema("WarpGBM only: one era id per row, for its directional era splitting."),
        "weight": _weights_schema("LightGBM only: a sample weight per row of X (0 or more)."),
        "weight_valid": _weights_schema("LightGBM only: a sample weight per row of X_valid."),
        "timeout_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": max_training_s,
            "description": "Stop the job (failed, timeout) if it trains longer.",
        },
        "artifact_format": {"type": "string", "enum": list(ARTIFACT_FORMATS), "default": DEFAULTS.artifact_format},
        "callback_url": {
            "type": "string",
            "format": "uri",
            "description": "POSTed to when the job ends; only hosts the operator allows.",
        },
    }
    schema = closed_object(properties, ["X", "y"])
    schema["dependentRequired"] = {"X_valid": ["y_valid"], "y_valid": ["X_valid"]}
    schema["allOf"] = [_params_rule(name, trainer, name == DEFAULTS.model_type) for name, trainer in trainers.items()]
    return schema


def _params_rule(name: str, trainer: Trainer, default: bool) -> dict[str, Any]:
    """`params` follows this backend's schema when model_type names it (or, for the default, is absent)."""
    when: dict[str, Any] = {"properties": {"model_type": {"const": name}}}
    if not default:
        when["required"] = ["model_type"]
    return {"if": when, "then": {"properties": {"params": params_schema(trainer.params)}}}


def tune_request_schema(train_request: dict[str, Any]) -> dict[str, Any]:
    """A search request: a training request (its `timeout_s` the search's) and the search's fields."""
    space = {
        "oneOf": [
            {
                "type": "object",
                "required": ["low", "high"],
                "additionalProperties": False,
                "properties": {"low": {"type": "number"}, "high": {"type": "number"}, "log": {"type": "boolean"}},
            },
            {"type": "array", "minItems": 1, "items": {"type": ["number", "boolean"]}},
        ]
    }
    schema = with_properties(
        train_request,
        {
            "search": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": space,
                "description": 'Per hyperparameter: a range {"low", "high", "log"} or a list of choices.',
            },
            "n_trials": {"type": "integer", "minimum": 1, "maximum": MAX_TRIALS, "default": 20},
            "parallel": {"type": "integer", "minimum": 1, "default": 1, "description": "Trials at once."},
            "sampler": {"type": "string", "enum": list(SAMPLERS), "default": "tpe"},
            "pruner": {"type": "string", "enum": list(PRUNERS), "default": "median"},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
            "dataset": {
                "type": "object",
                "required": ["dataset_id"],
                "additionalProperties": False,
                "properties": {
                    name: {"type": ["string", "integer"] if name == "valid_rows" else "string"}
                    for name in sorted(TABLE_FIELDS | DATASET_FIELDS)
                },
                "description": "Instead of X and y: an uploaded dataset to search on (POST /datasets), and "
                "the fields a training request on it takes in its query string (target, features, "
                "valid_dataset_id, ...).",
            },
        },
    )
    # The table: X and y, or a dataset, whose columns are named in it (nothing of a JSON table beside it).
    required = [name for name in schema["required"] if name not in ("X", "y")]
    beside_a_dataset = [*DATA_FIELDS, "feature_names", "categorical"]
    tables = [
        {"required": ["X", "y"], "not": {"required": ["dataset"]}},
        {"required": ["dataset"], "not": {"anyOf": [{"required": [name]} for name in beside_a_dataset]}},
    ]
    return {**schema, "required": [*required, "search"], "oneOf": tables}
