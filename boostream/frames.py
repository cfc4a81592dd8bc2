"""Tables as a notebook holds them (pandas or polars DataFrames, Arrow tables, numpy arrays), made
into the Arrow table a training request sends: the client's side of "data in, fast".

pandas and polars are not dependencies: a DataFrame is recognised by its own conversion method
(`to_arrow`, polars) or by its module (pandas), so neither is imported unless the caller has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

# The label column's name where the label comes as an array beside the features; the sample
# weights' likewise.
TARGET_COLUMN = "__target__"
WEIGHT_COLUMN = "__weight__"


def as_table(data: Any) -> pa.Table:
    """`data` as an Arrow table: a pandas or polars DataFrame (a pandas index is left out), an Arrow
    table or record batch, or a 2-D numpy array (columns f0, f1, ...). TypeError for anything else."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    if hasattr(data, "to_arrow") and callable(data.to_arrow):  # polars
        table = data.to_arrow()
        if isinstance(table, pa.Table):
            return table
    if isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise TypeError(f"a numpy array of features must have 2 dimensions (rows, features), not {data.ndim}")
        return pa.table({f"f{i}": np.ascontiguousarray(data[:, i]) for i in range(data.shape[1])})
    raise TypeError(
        f"cannot send a {type(data).__name__} as a table: give a pandas or polars DataFrame, an Arrow table, "
        "a numpy array (with the labels as `target`), or the path of a CSV, Parquet or Arrow file"
    )


def with_target(data: Any, target: Any) -> tuple[pa.Table, str]:
    """The table and the name of its label column: `target` names a column of `data`, or holds the
    labels themselves (a sequence, numpy array or Series as long as the table), which are then
    added as a column named TARGET_COLUMN."""
    table = as_table(data)
    if isinstance(target, str):
        if target not in table.column_names:
            raise ValueError(f"the table has no column {target!r}; its columns: {', '.join(table.column_names[:20])}")
        return table, target
    return with_column(table, TARGET_COLUMN, target), TARGET_COLUMN


def with_column(table: pa.Table, name: str, values: Any) -> pa.Table:
    """The table with `values` (as long as it) added as the column `name`, which it must not have."""
    array = _labels(values)
    if len(array) != table.num_rows:
        raise ValueError(f"{name} has {len(array)} values, but the table has {table.num_rows} rows")
    if name in table.column_names:
        raise ValueError(f"the table has a column named {name!r} already")
    return table.append_column(name, array)


def stacked(train: pa.Table, valid: pa.Table) -> pa.Table:
    """The validation rows after the training rows, in one table of the training table's columns."""
    missing = [name for name in train.column_names if name not in valid.column_names]
    if missing:
        raise ValueError(f"the validation table has no column {missing[0]!r}")
    valid = valid.select(train.column_names)
    # An integer column in one and fractions in the other, say: both as the type that holds either.
    schema = pa.unify_schemas([train.schema, valid.schema], promote_options="permissive")
    return pa.concat_tables([train.cast(schema), valid.cast(schema)])


def feature_rows(table: pa.Table, feature_names: Sequence[str]) -> np.ndarray:
    """The table's columns that a model's features name, in their order, as rows to predict: float64,
    or Python values where a column holds categories (strings, a dictionary), for the model to look
    up among its own. ValueError naming a feature the table lacks."""
    from boostream.categories import is_category_type

    missing = [name for name in feature_names if name not in table.column_names]
    if missing:
        raise ValueError(f"the table has no column {missing[0]!r}, a feature of the model")
    columns = [
        np.array(column.to_pylist(), dtype=object)
        if is_category_type(column.type)
        else column.to_numpy(zero_copy_only=False).astype(np.float64)
        for column in (table.column(name) for name in feature_names)
    ]
    return np.column_stack(columns) if columns else np.empty((table.num_rows, 0))


def ipc_stream(table: pa.Table) -> bytes:
    """The table as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def parquet(table: pa.Table) -> bytes:
    """The table as a Parquet file, for a server that takes no Arrow."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue())


def _labels(target: Any) -> pa.Array:
    if isinstance(target, pa.ChunkedArray):
        return target.combine_chunks()
    if isinstance(target, pa.Array):
        return target
    if hasattr(target, "to_arrow") and callable(target.to_arrow):  # a polars Series
        return pa.array(target.to_arrow())
    if type(target).__module__.startswith("pandas"):
        return pa.Array.from_pandas(target)
    if isinstance(target, np.ndarray | Sequence):
        return pa.array(np.asarray(target))
    kind = type(target).__name__
    raise TypeError(f"expected a column's name or its values (an array as long as the table), not a {kind}")
