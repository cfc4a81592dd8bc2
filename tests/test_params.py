"""The trainers' shared pieces, in process: a hyperparameter's checks and schema (`ParamSpec`, the
one source of both), and the record of rounds that picks the best one (`RoundHistory`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from boostream.progress import finite_or_none
from boostream.trainers.base import (
    InvalidParameter,
    ParamSpec,
    RoundHistory,
    TrainingData,
    check_early_stopping,
    params_schema,
    validate_params,
)

RATE = ParamSpec("learning_rate", float, 0.1, "Shrinkage.", minimum=0.0, maximum=1.0, exclusive_minimum=True)
LEAVES = ParamSpec("num_leaves", int, 31, "Leaves.", minimum=2, maximum=100)
THREADS = ParamSpec("threads_per_block", int, 64, "Threads.", minimum=32, maximum=1024, multiple_of=32)
FLAG = ParamSpec("deterministic", bool, False, "Same result every run.")
SPECS = (RATE, LEAVES, THREADS, FLAG)


@pytest.mark.parametrize(
    "spec, given, expected",
    [(RATE, 1, 1.0), (RATE, 0.25, 0.25), (LEAVES, 2, 2), (LEAVES, 100.0, 100), (THREADS, 96, 96), (FLAG, True, True)],
)
def test_a_value_within_bounds_comes_back_as_its_kind(spec, given, expected):
    value = spec.validate(given)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "spec, given, words",
    [
        (RATE, 0.0, "greater than 0.0"),
        (RATE, 1.5, "at most 1.0"),
        (RATE, math.inf, "finite"),
        (RATE, math.nan, "finite"),
        (RATE, "0.1", "must be a number"),
        (RATE, True, "must be a number"),
        (LEAVES, 1, "at least 2"),
        (LEAVES, 101, "at most 100"),
        (LEAVES, 7.5, "must be an integer"),
        (THREADS, 48, "multiple of 32"),
        (FLAG, 1, "true or false"),
    ],
)
def test_a_value_out_of_bounds_or_of_the_wrong_kind_names_the_parameter(spec, given, words):
    with pytest.raises(InvalidParameter) as refused:
        spec.validate(given)
    assert refused.value.field == f"params.{spec.name}" and words in refused.value.message
    assert str(refused.value) == f"params.{spec.name}: {refused.value.message}"


def test_every_parameter_comes_with_its_default_and_an_unknown_one_is_refused():
    assert validate_params(SPECS, {"num_leaves": 8}) == {
        "learning_rate": 0.1,
        "num_leaves": 8,
        "threads_per_block": 64,
        "deterministic": False,
    }
    with pytest.raises(InvalidParameter) as refused:
        validate_params(SPECS, {"num_leafs": 8})
    assert (
        refused.value.field == "params.num_leafs"
        and "known: deterministic, learning_rate, num_leaves" in refused.value.message
    )


def test_the_schema_says_what_the_checks_check():
    schema = params_schema(SPECS)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["properties"]["learning_rate"] == {
        "type": "number", "default": 0.1, "description": "Shrinkage.", "exclusiveMinimum": 0.0, "maximum": 1.0,
    }
    assert schema["properties"]["num_leaves"] == {
        "type": "integer",
        "default": 31,
        "description": "Leaves.",
        "minimum": 2,
        "maximum": 100,
    }
    assert schema["properties"]["threads_per_block"]["multipleOf"] == 32
    assert schema["properties"]["deterministic"] == {
        "type": "boolean",
        "default": False,
        "description": "Same result every run.",
    }


def rounds_of(history: RoundHistory, values: list[float]) -> RoundHistory:
    for value in values:
        history.add({"train_l2": value / 2, "valid_l2": value})
    return history


def test_the_best_round_is_the_lowest_validation_metric_and_patience_stops_after_it():
    history = rounds_of(RoundHistory("valid_l2", patience=2), [5.0, 3.0, 4.0])
    assert history.best_iteration == 2 and not history.should_stop
    history.add({"train_l2": 1.0, "valid_l2": 3.0})  # as good, not better: the best stays the first
    assert history.best_iteration == 2 and history.should_stop
    assert history.final(early_stopped=True) == (2, {"train_l2": 1.5, "valid_l2": 3.0})
    assert history.final(early_stopped=False) == (4, {"train_l2": 1.0, "valid_l2": 3.0})


def test_without_validation_or_patience_nothing_stops_and_the_last_round_is_kept():
    history = rounds_of(RoundHistory(None, patience=0), [5.0, 3.0, 4.0])
    assert history.best_iteration == 0 and not history.should_stop
    assert history.final(early_stopped=False) == (3, {"train_l2": 2.0, "valid_l2": 4.0})
    patient = rounds_of(RoundHistory("valid_l2", patience=0), [5.0, 6.0, 7.0, 8.0])
    assert not patient.should_stop, "patience 0 means no early stopping"


def test_a_round_without_a_validation_value_is_never_the_best():
    history = RoundHistory("valid_l2", patience=1)
    history.add({"train_l2": 1.0, "valid_l2": None})
    assert history.best_iteration == 0 and not history.should_stop
    history.add({"train_l2": 0.5, "valid_l2": 2.0})
    assert history.best_iteration == 2
    assert history.final(early_stopped=True) == (2, {"train_l2": 0.5, "valid_l2": 2.0})


def test_no_round_trained_has_no_best_round_and_no_metrics():
    assert RoundHistory("valid_l2", patience=3).final(early_stopped=False) == (0, {})


def test_early_stopping_needs_validation_data():
    data = TrainingData(X=np.zeros((4, 2)), y=np.zeros(4), feature_names=["a", "b"])
    check_early_stopping(data, {"early_stopping_rounds": 0})  # off: nothing to check
    with pytest.raises(InvalidParameter) as refused:
        check_early_stopping(data, {"early_stopping_rounds": 5})
    assert refused.value.field == "params.early_stopping_rounds" and "needs validation data" in refused.value.message
    data.X_valid, data.y_valid = np.zeros((2, 2)), np.zeros(2)
    check_early_stopping(data, {"early_stopping_rounds": 5})


@pytest.mark.parametrize(
    "value, expected", [(1.5, 1.5), (np.float32(2.5), 2.5), (math.nan, None), (math.inf, None), (-math.inf, None)]
)
def test_a_metric_is_a_plain_float_or_none_where_it_is_not_finite(value, expected):
    metric = finite_or_none(value)
    assert metric == expected and (metric is None or type(metric) is float)
