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

import dataclasses
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
# Bytes of one category: a longer string is text, not a category (and would weigh on the model).
MAX_CATEGORY_BYTES = 1024


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
    InvalidData naming the column when it holds too many, values too long, or values that are no
    categories. A dictionary column is encoded from its dictionaries, never expanded: a few
    kilobytes of Parquet may hold a long string repeated a million times."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if pa.types.is_dictionary(column.type):
        # Each chunk's values that its indices use (a pandas category may list unused ones).
        values = [chunk.dictionary.take(pc.unique(chunk.indices).drop_null()) for chunk in chunks]
    else:
        values = list(chunks)
    value_type = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (is_category_type(value_type) or _is_number(value_type)):
        raise InvalidData(name, f"column {name!r} holds {column.type}: categories are strings or numbers")
    values = [_normalized(part) for part in values]
    categories = pc.unique(pa.chunked_array(values, value_type)).drop_null() if values else pa.array([], value_type)
    _check_categories(categories, name)
    categories = categories.take(pc.array_sort_indices(categories))
    coded = []
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):  # the dictionary's codes, then each index's
            of_dictionary = pc.index_in(_normalized(chunk.dictionary), value_set=categories)
            coded.append(of_dictionary.take(chunk.indices).cast(pa.float64()))
        else:
            coded.append(pc.index_in(_normalized(chunk), value_set=categories).cast(pa.float64()))
    out = np.concatenate([part.to_numpy(zero_copy_only=False) for part in coded] or [np.empty(0)])
    return out, categories.to_pylist()


def _normalized(values: pa.Array) -> pa.Array:
    """Floats as categories: NaN is a missing value, and -0.0 the same category as 0.0."""
    if not pa.types.is_floating(values.type):
        return values
    values = pc.add(values, pa.scalar(0.0, values.type))  # -0.0 + 0.0 is 0.0
    return pc.if_else(pc.is_nan(values), None, values)


def _check_categories(categories: pa.Array, name: str) -> None:
    if len(categories) > MAX_CATEGORIES:
        raise InvalidData(
            name,
            f"column {name!r} has {len(categories)} distinct values, more than {MAX_CATEGORIES} categories: "
            "it looks like an identifier rather than a category",
        )
    if is_category_type(categories.type):
        check_lengths(categories, name, "a category")
    if pa.types.is_integer(categories.type) and len(categories):
        bounds = pc.min_max(categories).as_py()
        if max(abs(bounds["min"]), abs(bounds["max"])) > 2**53:
            raise InvalidData(
                name,
                f"column {name!r} has integers beyond 2**53, which a double (as predictions take them) "
                "cannot tell apart: send them as strings",
            )


def check_lengths(values: pa.Array, name: str, what: str) -> None:
    """InvalidData naming column `name` when one of its distinct `values` (strings) is longer than
    MAX_CATEGORY_BYTES: text, not `what` ("a category", "a label")."""
    if len(values):
        longest = pc.max(pc.binary_length(values.cast(pa.large_string()))).as_py()
        if longest > MAX_CATEGORY_BYTES:
            raise InvalidData(
                name, f"column {name!r} has a value of {longest} bytes: {what} is at most {MAX_CATEGORY_BYTES}"
            )


def encode_values(values: Sequence[Any] | np.ndarray, name: str) -> tuple[np.ndarray, list[Any]]:
    """`encode` for a column of Python values (strings, numbers, None), as a JSON table gives them."""
    try:
        column = pa.array(values, from_pandas=True)  # from_pandas: NaN is missing
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        mixed = f"column {name!r} mixes strings and numbers: its categories must be one or the other"
        raise InvalidData(name, mixed) from None
    return encode(column, name)


@dataclasses.dataclass(frozen=True)
class Lookup:
    """A model's categories of one feature, ready to look values up in."""

    index: dict[Any, float]
    text: bool  # whether its categories are strings (else numbers)


def lookup(categories: Sequence[Any]) -> Lookup:
    return Lookup(
        {category: float(code) for code, category in enumerate(categories)},
        all(isinstance(category, str) for category in categories),
    )


def codes(values: np.ndarray, found: Lookup, at: int) -> np.ndarray:
    """The codes of `values` (a column of X, feature `at`) among a model's categories: NaN for a
    missing value and for one the model never saw. A number where the categories are strings, or a
    string where they are numbers, is InvalidData naming it: a code sent for its category, say,
    would otherwise predict as a missing value without a word."""
    coded = np.empty(len(values))
    for row, value in enumerate(values.tolist()):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            coded[row] = math.nan
        elif isinstance(value, str) != found.text:
            kind = "strings" if found.text else "numbers"
            raise InvalidData("X", f"X[{row}][{at}] is {value!r}, but feature {at}'s categories are {kind}")
        else:
            coded[row] = found.index.get(value, math.nan)
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
        if len(listed) > MAX_CATEGORIES:
            raise ValueError(f"a feature has {len(listed)} categories, more than {MAX_CATEGORIES}")
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
