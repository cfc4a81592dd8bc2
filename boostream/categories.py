"""Categorical features: a column of categories (strings, or numbers named categorical) trains as
its codes, and the categories travel with the model so that predictions take the same values.

A column's categories are its distinct values, sorted (so that a table sent as CSV, Parquet, Arrow
or JSON numbers them alike, whatever order a pandas `category` or an Arrow dictionary had them in);
a value's code is its place among them, a missing value NaN. LightGBM keeps them in its text model
on its own `pandas_categorical:` line, one list per categorical feature in the order of the
features: LightGBM's Python package reads that line back and maps a pandas `category` column by
it, as /predict maps the values it is sent. A value that is not among the categories (unseen in
training) is a missing value there as here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from boostream.errors import InvalidData

# Distinct values one categorical column may have: beyond this, it is an identifier more than a
# category, and the model would carry every value.
MAX_CATEGORIES = 65_536


def is_category_type(type_: pa.DataType) -> bool:
    """Whether a column of this Arrow type trains as categories without being named: strings and
    dictionaries (a pandas `category`, a polars `Categorical`, a Parquet dictionary column)."""
    return bool(
        pa.types.is_dictionary(type_)
        or pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or pa.types.is_string_view(type_)
    )


def encode(column: pa.Array | pa.ChunkedArray, name: str) -> tuple[np.ndarray, list[Any]]:
    """A column's codes (float64, NaN where a value is missing) and its categories, sorted.
    InvalidData naming the column when it holds too many, or values that are no categories."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (is_category_type(column.type) or _is_number(column.type)):
        raise InvalidData(name, f"column {name!r} holds {column.type}: categories are strings or numbers")
    if pa.types.is_floating(column.type):
        column = pc.if_else(pc.is_nan(column), None, column)  # NaN is a missing value, not a category
    categories = pc.unique(column).drop_null()
    if len(categories) > MAX_CATEGORIES:
        raise InvalidData(
            name,
            f"column {name!r} has {len(categories)} distinct values, more than {MAX_CATEGORIES} categories: "
            "it looks like an identifier rather than a category",
        )
    categories = categories.take(pc.array_sort_indices(categories))
    coded = pc.index_in(column, value_set=categories).cast(pa.float64())
    chunks = coded.chunks if isinstance(coded, pa.ChunkedArray) else [coded]
    values = np.concatenate([chunk.to_numpy(zero_copy_only=False) for chunk in chunks] or [np.empty(0)])
    return values, categories.to_pylist()


def encode_values(values: Sequence[Any] | np.ndarray, name: str) -> tuple[np.ndarray, list[Any]]:
    """`encode` for a column of Python values (strings, numbers, None), as a JSON table gives them."""
    try:
        column = pa.array(values, from_pandas=True)  # from_pandas: NaN is missing
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        mixed = f"column {name!r} mixes strings and numbers: its categories must be one or the other"
        raise InvalidData(name, mixed) from None
    return encode(column, name)


def codes(values: np.ndarray, categories: Sequence[Any], at: int) -> np.ndarray:
    """The codes of `values` (a column of X, feature `at`) among a model's `categories`: NaN for a
    missing value and for one the model never saw. A number where the categories are strings, or a
    string where they are numbers, is InvalidData naming it: a code sent for its category, say,
    would otherwise predict as a missing value without a word."""
    index = {category: float(code) for code, category in enumerate(categories)}
    text = all(isinstance(category, str) for category in categories)
    coded = np.empty(len(values))
    for row, value in enumerate(values.tolist()):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            coded[row] = math.nan
        elif isinstance(value, str) != text:
            kind = "strings" if text else "numbers"
            raise InvalidData("X", f"X[{row}][{at}] is {value!r}, but feature {at}'s categories are {kind}")
        else:
            coded[row] = index.get(value, math.nan)
    return coded


def numbers(column: np.ndarray, field: str, at: int, hint: str = "") -> np.ndarray:
    """A column of Python values (numbers, None) as float64; InvalidData naming the first value that
    is no number (`field[row][at]`), followed by `hint`."""
    for row, value in enumerate(column.tolist()):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidData(field, f"{field}[{row}][{at}] is {value!r}, not a number{hint}")
    return np.asarray(column, dtype=np.float64)  # None becomes NaN: a missing value


def check(categories: Any, features: Sequence[int], n_features: int) -> dict[int, list[Any]]:
    """A model's categories as read from its file (`features`: the indices of its categorical
    features, `categories`: their lists, in that order), by feature index; ValueError when they do
    not fit the model."""
    if categories is None or categories == []:
        return {}
    if not isinstance(categories, list) or len(categories) != len(features):
        raise ValueError(f"it lists categories for {_count(categories)} features, but has {len(features)} categorical")
    for listed in categories:
        if not isinstance(listed, list) or not all(_is_category(value) for value in listed):
            raise ValueError("its categories must be lists of strings or finite numbers")
        if len(set(listed)) != len(listed):
            raise ValueError("a feature's categories must be unique")
    if any(not 0 <= feature < n_features for feature in features):
        raise ValueError(f"a categorical feature is beyond its {n_features} features")
    return dict(zip(sorted(features), categories, strict=True))


def by_index(categories: Mapping[str, list[Any]], feature_names: Sequence[str]) -> dict[int, list[Any]]:
    """Categories by feature name, as a training request has them, by the feature's index."""
    return {feature_names.index(name): listed for name, listed in categories.items()}


def _is_number(type_: pa.DataType) -> bool:
    return bool(pa.types.is_integer(type_) or pa.types.is_boolean(type_) or pa.types.is_floating(type_))


def _is_category(value: Any) -> bool:
    return isinstance(value, str) or (type(value) in (int, float, bool) and math.isfinite(value))


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1
