"""Training requests whose table comes as a file, CSV, Parquet or Arrow IPC (a stream, or the file
format): its columns are the features and
the label; everything else is checked as for a JSON request (`build_spec`, `assemble_training_data`).

The request's fields come as text (a query string, form fields):
- `target` names the label column; `features` the feature columns, comma-separated (default: every
  other column, apart from `era` and a pandas index); `era` the WarpGBM era column. Column names
  become the feature names. `valid_rows=N`: the table's last N rows are the validation set.
  `weight` names a column of sample weights (LightGBM). `categorical` names the feature columns
  whose values are categories, comma-separated (`boostream.categories`).
- `model_type`, `objective`, `valid_fraction`, ...: the fields of TrainOptions, as in JSON.
- any other name is a hyperparameter, read as its ParamSpec's kind ("100", "1e3", "0.05", "true").

Feature columns hold numbers: integers, floats, decimals or booleans (as 0 and 1), or categories. A
missing value becomes NaN, as `null` does in JSON. A Parquet or Arrow column of strings, or a
dictionary column (a pandas `category`), is categorical; a CSV column of text only where
`categorical` names it (text in a column of numbers is more often a mistake); any column that
`categorical` names is, its values (numbers too) the categories. A column of anything else is
refused naming it (the error's `field` is the column's name). The label holds numbers, or strings
for a classifier.

X is allocated once and filled as the file is read: a block of rows at a time from CSV (X in C
order), a few columns at a time from Parquet (X in Fortran order), so the file's table is never held
whole in memory beside X. An Arrow body is mapped, not read: its columns are copied into X (Fortran
order) straight from the map, a column at a time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import simdjson

from boostream import categories, memory
from boostream.errors import InvalidData, InvalidParameter, NotFound, TooLarge, quotable
from boostream.requests.spec import (
    CLASS_LABEL_HINT,
    DATASET_FIELDS,
    TABLE_FIELDS,
    TrainOptions,
    TrainSpec,
    assemble_training_data,
    build_spec,
)
from boostream.trainers.base import Trainer, TrainingData

T = TypeVar("T")
OPTION_FIELDS = frozenset(TrainOptions.__struct_fields__) - {"feature_names", "params", "categorical"}
# Read by the route itself, not training fields: a stream's choice, and the datasets to train on
# instead of a body (`decode_dataset_request`).
ROUTE_FIELDS = frozenset({"on_disconnect", *DATASET_FIELDS})
BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
# pyarrow's default CSV block: 16 MiB blocks were no faster, and the reader holds several at once
# (0.5 GB more at the peak for 1M x 50).
CSV_BLOCK_BYTES = 1 << 20
# Parquet columns decoded together. For 1M x 50, warm: 8 MiB at once took 0.85-1.1 s, 32 MiB
# 0.6-0.8 s; the whole table at once 0.5 s, but with 0.75 GB more at the peak.
PARQUET_GROUP_BYTES = 32 << 20
# Rows laid out at a time on their way into X: a block that stays in the CPU's cache.
COPY_BLOCK_ROWS = 32768
# A table's first bytes, read to tell a file sent as the wrong kind before its parser fails on it.
HEAD_BYTES = 512
PARQUET_MAGIC = b"PAR1"
# An Arrow IPC stream starts with a message's continuation marker; the file format with its magic.
ARROW_STREAM_MAGIC, ARROW_FILE_MAGIC = b"\xff\xff\xff\xff", b"ARROW1"
ARROW_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
EXPECTED = {
    "csv": "CSV text, a header row then a row per sample",
    "parquet": "a Parquet file",
    "arrow": "an Arrow IPC stream (or file)",
}
CSV_HINT = "it is text: a CSV table goes as text/csv (or in a file named .csv)"
PARQUET_HINT = "send it as application/vnd.apache.parquet (or in a file named .parquet)"
# Control characters other than tab, line feed and carriage return: text holds none, binary files many.
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def decode_table_request(
    file: IO[bytes],
    kind: str,
    fields: Mapping[str, str],
    trainers: Mapping[str, Trainer],
    unavailable: Mapping[str, str],
    max_cells: int,
    where: str = "on this server",
) -> TrainSpec:
    """Read and validate a CSV or Parquet (`kind`) training table with its request's `fields`; a
    domain error naming the field or column at fault. `where` as for build_spec."""
    options = _options(fields, trainers)
    read_data = functools.partial(_training_data, file, kind, fields, options, max_cells)
    return build_spec(options, read_data, trainers, unavailable, where)


def _options(fields: Mapping[str, str], trainers: Mapping[str, Trainer]) -> TrainOptions:
    given = {name: text for name, text in fields.items() if name in OPTION_FIELDS}
    try:
        options = msgspec.convert(given, TrainOptions, strict=False)  # not strict: numbers from text
    except msgspec.ValidationError as error:
        at = re.search(r"\$\.(\w+)", str(error))
        field = at.group(1) if at else None
        reason = str(error).split(" - at ")[0]
        value = None if field is None else given.get(field)
        raise InvalidParameter(field, f"cannot read {field}={value!r}: {reason}") from None
    trainer = trainers.get(options.model_type)
    kinds = {spec.name: spec.kind for spec in trainer.params} if trainer else {}
    not_params = OPTION_FIELDS | TABLE_FIELDS | ROUTE_FIELDS
    options.params = {name: _typed(text, kinds.get(name)) for name, text in fields.items() if name not in not_params}
    return options


def _typed(text: str, kind: type | None) -> Any:
    """A hyperparameter's value as JSON would have given it. Text that does not read as `kind` stays
    text, which the parameter's own check then refuses, naming it (`params.<name>`)."""
    if kind is bool:
        return BOOLEANS.get(text.strip().lower(), text)
    if kind in (int, float):
        for number in (int, float):  # an int parameter takes "1e3" as JSON takes 1e3
            try:
                return number(text)
            except ValueError:
                pass
    return text


@dataclasses.dataclass(frozen=True)
class _Columns:
    """The columns a request uses, by name."""

    features: list[str]
    target: str
    era: str | None
    weight: str | None = None
    categorical: frozenset[str] = frozenset()  # the features whose values are categories

    @property
    def all(self) -> list[str]:
        # The era column may be a feature too.
        extra = [name for name in (self.era, self.weight) if name]
        return list(dict.fromkeys([*self.features, self.target, *extra]))


@dataclasses.dataclass
class _Table:
    columns: _Columns
    X: np.ndarray
    target: pa.ChunkedArray
    era: pa.ChunkedArray | None
    weight: pa.ChunkedArray | None = None
    categories: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # by feature name


def _training_data(
    file: IO[bytes], kind: str, fields: Mapping[str, str], options: TrainOptions, max_cells: int
) -> TrainingData:
    if not fields.get("target"):
        raise InvalidData("target", "name the label column with the field `target`")
    read = {"csv": _read_csv, "parquet": _read_parquet, "arrow": _read_arrow}[kind]
    with _read_errors(kind), _arrow_source(file, mapped=kind == "arrow") as source:
        _check_kind(source, kind)
        named_only = kind == "csv"
        choose = functools.partial(_choose_columns, fields=fields, objective=options.objective, named_only=named_only)
        table = read(source, choose, max_cells)
    return _finish(table, fields, options)


@contextlib.contextmanager
def _read_errors(kind: str) -> Iterator[None]:
    """pyarrow's word that a table cannot be read, as InvalidData of the file."""
    try:
        yield
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        # pyarrow reports corrupt data as an OSError without errno; with one, the disk failed.
        if isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno):
            raise
        raise InvalidData("file", f"cannot read the table as {kind.upper()}: {quotable(str(error))}") from None


# Datasets (`boostream.datasets`): a table decoded once and kept as an Arrow file, trained on later.


def decode_dataset(file: IO[bytes], kind: str, max_cells: int, keep: Callable[[pa.Table], T]) -> T:
    """Read an uploaded table (CSV, Parquet or Arrow) whole and hand it, checked, to `keep` (which
    writes it down): every column numbers (integers, floats, decimals, booleans), strings or a
    dictionary, at most `max_cells` values in all. A pandas index is left out."""
    with _read_errors(kind), _arrow_source(file, mapped=kind == "arrow") as source:
        _check_kind(source, kind)
        if kind == "csv":
            table = _csv_dataset(source, max_cells)
        elif kind == "parquet":
            parquet = _parquet_file(source)
            _check_size(parquet.metadata.num_rows, len(parquet.schema_arrow), max_cells)
            table = parquet.read(use_threads=True)
        else:
            table = _arrow_table(source, max_cells)
        table = table.drop_columns(pandas_index(table.schema)).replace_schema_metadata(None)
        return keep(_dataset_table(table.combine_chunks() if kind == "csv" else table, max_cells))


def _csv_dataset(source: pa.NativeFile, max_cells: int) -> pa.Table:
    """A CSV table whole, its columns typed as a training request's CSV reads them (`_csv_type`),
    read a block at a time and refused once past `max_cells`."""
    header = pcsv.open_csv(source, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES)).schema
    _refuse_repeated(header.names, header.names)
    source.seek(0)
    types = {field.name: _csv_type(field.type) for field in header}
    reader = pcsv.open_csv(
        source,
        read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        convert_options=pcsv.ConvertOptions(column_types=types),
    )
    batches, rows = [], 0
    for batch in _csv_batches(reader, header.names):
        rows += batch.num_rows
        if rows * len(header.names) > max_cells:
            raise TooLarge(
                f"the table has at least {rows} rows x {len(header.names)} columns = "
                f"{rows * len(header.names)} values, more than the limit of {max_cells}"
            )
        batches.append(batch)
    return pa.Table.from_batches(batches, reader.schema).combine_chunks()


def decode_json_dataset(body: bytes | bytearray, max_cells: int, keep: Callable[[pa.Table], T]) -> T:
    """A dataset sent as JSON, `{"columns": {"name": [values, ...], ...}}` (numbers, strings,
    booleans, null for a missing value), checked and handed to `keep` as `decode_dataset` does. A
    column of numbers only is read by simdjson straight into doubles; any other as Python values."""
    shape = 'a JSON dataset is {"columns": {"name": [values, ...], ...}}, each column a list as long as the others'
    try:
        document = simdjson.Parser().parse(bytes(body))
    except ValueError as error:
        raise InvalidData("columns", f"the body is not JSON: {error}") from None
    columns = document.get("columns") if isinstance(document, simdjson.Object) and len(document) == 1 else None
    if not isinstance(columns, simdjson.Object) or not len(columns):
        raise InvalidData("columns", shape)
    lists: dict[str, simdjson.Array] = {}
    for name in columns.keys():
        if "\x00" in name:  # simdjson finds no such key (a C string ends there), and no reader wants one
            raise InvalidData("columns", f"column name {quotable(name)!r} holds a NUL character")
        values = columns[name]
        if not isinstance(values, simdjson.Array):
            raise InvalidData("columns", f"column {name!r} is not a list: {shape}")
        lists[name] = values
    lengths = sorted({len(values) for values in lists.values()})
    if len(lengths) > 1:
        raise InvalidData("columns", f"its columns have {lengths} values: {shape}")
    _check_size(lengths[0], len(lists), max_cells)  # before any is converted
    table = pa.table({name: _json_column(values, name) for name, values in lists.items()})
    del lists, columns, document  # the parser's document, before the table is written
    return keep(_dataset_table(table, max_cells))


def _json_column(values: Any, name: str) -> pa.Array:
    try:
        doubles = np.frombuffer(values.as_buffer(of_type="d"), dtype=np.float64)
        if len(doubles) == len(values):  # simdjson flattens nested lists: a count that differs is one
            return pa.array(doubles)
    except (TypeError, ValueError, RuntimeError):
        pass  # null, strings, booleans, or numbers beyond a double
    try:
        return pa.array(values.as_list())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise InvalidData(name, f"column {name!r} mixes kinds of values: a column is numbers, or strings") from None


def _dataset_table(table: pa.Table, max_cells: int) -> pa.Table:
    """`table`, checked as a dataset: within `max_cells`, its column names unique, each column
    numbers, strings or a dictionary."""
    _check_size(table.num_rows, table.num_columns, max_cells)
    _refuse_repeated(table.column_names, table.column_names)
    for field in table.schema:
        if not (_is_numeric(field.type) or categories.is_category_type(field.type)):
            held = f"column {field.name!r} holds {field.type}"
            raise InvalidData(field.name, f"{held}: a dataset's columns hold numbers, strings or categories")
    return table


def decode_dataset_request(
    train: Path,
    valid: Path | None,
    fields: Mapping[str, str],
    trainers: Mapping[str, Trainer],
    unavailable: Mapping[str, str],
    max_cells: int,
    named_only: bool = False,
    where: str = "on this server",
    params: dict[str, Any] | None = None,
) -> TrainSpec:
    """A training request on a dataset (its Arrow file `train`), and `valid`'s rows as the
    validation set where given; its `fields` as those of a table request (`named_only` for a
    dataset made from CSV: its text columns are categorical where `categorical` names them, as
    the CSV sent whole would have them). `params`, where given, are the hyperparameters, as a JSON
    request has them, and `fields` hold none."""
    options = _options(fields, trainers)
    if params is not None:
        options.params = params
    read_data = functools.partial(_dataset_training_data, train, valid, fields, options, max_cells, named_only)
    return build_spec(options, read_data, trainers, unavailable, where)


def _dataset_training_data(
    train: Path, valid: Path | None, fields: Mapping[str, str], options: TrainOptions, max_cells: int, named_only: bool
) -> TrainingData:
    if not fields.get("target"):
        raise InvalidData("target", "name the label column with the field `target`")
    with _mapped(train, "dataset_id") as source:
        table = ipc.open_file(source).read_all()
        columns = _choose_columns(table.schema, fields, options.objective, named_only=named_only)
        valid_count = None
        if valid is not None:
            with _mapped(valid, "valid_dataset_id") as valid_source:
                rows = ipc.open_file(valid_source).read_all()
                table, valid_count = _stacked(table, rows, columns.all), rows.num_rows
        _check_size(table.num_rows, len(columns.features), max_cells)
        return _finish(_from_table(table, columns), fields, options, valid_count)


@contextlib.contextmanager
def _mapped(path: Path, field: str) -> Iterator[pa.MemoryMappedFile]:
    """A dataset's Arrow file, mapped; NotFound naming `field` when it went (deleted, expired) since
    it was found."""
    try:
        source = pa.memory_map(str(path))
    except FileNotFoundError:
        raise NotFound("the dataset is gone (deleted, or expired)", field=field) from None
    with source:
        yield source


def _stacked(table: pa.Table, valid: pa.Table, names: list[str]) -> pa.Table:
    """The validation dataset's rows after the dataset's, in the columns `names`, each column of
    a type that holds both: numbers as the wider, categories as dictionaries (never expanded)."""
    missing = [name for name in names if name not in valid.column_names]
    if missing:
        raise InvalidData("valid_dataset_id", f"the validation dataset has no column {missing[0]!r}")
    parts = [table.select(names), valid.select(names)]
    for name in names:
        types = [part.schema.field(name).type for part in parts]
        if any(_is_text(type_) for type_ in types) and not all(_is_text(type_) for type_ in types):
            raise InvalidData("valid_dataset_id", _types_differ(name, types))
        if _is_text(types[0]):
            parts = [part.set_column(part.column_names.index(name), name, _dictionary(part.column(name)))
                     for part in parts]  # fmt: skip
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        name = next(name for name in names if parts[0].schema.field(name).type != parts[1].schema.field(name).type)
        types = [part.schema.field(name).type for part in parts]
        raise InvalidData("valid_dataset_id", _types_differ(name, types)) from None


def _dictionary(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column of strings, or a dictionary of them, as dictionary<int32, string> (not expanded)."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    return column.cast(pa.dictionary(pa.int32(), pa.string()))


def _types_differ(name: str, types: list[pa.DataType]) -> str:
    return f"column {name!r} holds {types[0]} in the dataset and {types[1]} in the validation dataset"


def _finish(
    table: _Table, fields: Mapping[str, str], options: TrainOptions, valid_count: int | None = None
) -> TrainingData:
    """The training data of a table as read: labels checked, the validation rows (its last
    `valid_count`, or as `valid_rows` says) split off, and the shared checks."""
    columns = table.columns
    y = _labels(table.target, columns.target)
    era = None if table.era is None or columns.era is None else _labels(table.era, columns.era)
    weight = None if table.weight is None or columns.weight is None else _labels(table.weight, columns.weight)
    X, valid, weight_valid = table.X, None, None
    if "valid_rows" in fields:
        if valid_count is not None:
            raise InvalidParameter("valid_rows", "send either valid_rows or valid_dataset_id, not both")
        valid_count = _valid_rows(fields["valid_rows"], len(X), options)
    elif valid_count is not None and options.valid_fraction is not None:
        raise InvalidParameter("valid_fraction", "send either valid_fraction or valid_dataset_id, not both")
    if valid_count is not None:
        X, y, era, weight, valid, weight_valid = _split_last(X, y, era, weight, valid_count)
    try:
        return assemble_training_data(
            msgspec.structs.replace(options, feature_names=columns.features), X, y, era=era, valid=valid,
            weight=weight, weight_valid=weight_valid, categories=table.categories,
        )  # fmt: skip
    except InvalidData as error:
        # The shared checks name the JSON fields; here the label is a column and the rows a file.
        renamed: dict[str | None, str | None] = {
            "y": columns.target, "X": "file", "feature_names": "features", "weight": columns.weight,
            "weight_valid": columns.weight,
        }  # fmt: skip
        field = renamed.get(error.field, error.field)
        raise InvalidData(field, error.message) from None


def _valid_rows(text: str, rows: int, options: TrainOptions) -> int:
    if options.valid_fraction is not None:
        raise InvalidParameter("valid_rows", "send either valid_rows or valid_fraction, not both")
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < rows:
        raise InvalidParameter("valid_rows", f"must be a whole number of rows from 1 to {rows - 1}, not {text!r}")
    return int(text)


def _split_last(
    X: np.ndarray, y: np.ndarray, era: np.ndarray | None, weight: np.ndarray | None, count: int
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, tuple[np.ndarray, np.ndarray], np.ndarray | None
]:
    """The table's rows but the last `count` (X, y, era, weight), then those as the validation set
    (X and y, and their weights)."""
    train = len(X) - count
    weights = (None, None) if weight is None else (weight[:train], weight[train:])
    return X[:train], y[:train], None if era is None else era[:train], weights[0], (X[train:], y[train:]), weights[1]


def _choose_columns(schema: pa.Schema, fields: Mapping[str, str], objective: str, named_only: bool) -> _Columns:
    """The columns the request's `fields` use, checked against the table's `schema`; with
    `named_only` (CSV), text columns are categorical only where `categorical` names them."""
    names = schema.names
    target, era, weight = fields["target"], fields.get("era") or None, fields.get("weight") or None
    for field, name in (("target", target), ("era", era), ("weight", weight)):
        if name is not None and name not in names:
            raise InvalidData(field, f"the table has no column {name!r}; its columns: {_listing(names)}")
    features = _features(schema, fields, target, era, weight)
    named = [name.strip() for name in fields.get("categorical", "").split(",") if name.strip()]
    for name in named:
        if name not in features:
            features_are = f"the features: {_listing(features)}"
            raise InvalidData("categorical", f"names {name!r}, which is no feature column; {features_are}")
    _refuse_repeated(schema.names, _Columns(features, target, era, weight).all)
    automatic = {name for name in features if _automatic_category(schema.field(name).type, named_only)}
    columns = _Columns(features, target, era, weight, frozenset(named) | automatic)
    for name in columns.features:
        type_ = schema.field(name).type
        if name not in columns.categorical and not _is_numeric(type_):
            hint = "; if its values are categories, name it in `categorical`" if _is_text(type_) else ""
            raise InvalidData(
                name,
                f"column {name!r} holds {type_}, not numbers: feature "
                f"columns must be integers, floats, decimals, booleans or categories{hint}",
            )
    _check_label_type(schema, target, "the target", allow_text=objective != "regression")
    if era is not None:
        _check_label_type(schema, era, "era ids", allow_text=True)
    if weight is not None:
        _check_label_type(schema, weight, "sample weights", allow_text=False)
    return columns


def _features(
    schema: pa.Schema, fields: Mapping[str, str], target: str, era: str | None, weight: str | None
) -> list[str]:
    names = schema.names
    if "features" not in fields:
        excluded = {target, era, weight, *pandas_index(schema)}
        features = [name for name in names if name not in excluded]
        if not features:
            raise InvalidData("features", f"the table has no feature columns, only {_listing(names)}")
        return features
    features = [name.strip() for name in fields["features"].split(",")]
    unknown = [name for name in features if name not in names]
    if unknown:
        raise InvalidData("features", f"the table has no column {unknown[0]!r}; its columns: {_listing(names)}")
    if target in features:
        raise InvalidData("features", f"{target!r} is the target; it cannot be a feature too")
    if weight in features:
        raise InvalidData("features", f"{weight!r} holds the sample weights; it cannot be a feature too")
    if len(set(features)) != len(features):
        raise InvalidData("features", "names a column twice")
    return features


def _refuse_repeated(names: Sequence[str], used: Iterable[str]) -> None:
    """InvalidData naming the first of the `used` columns that the table's `names` hold twice or more."""
    counts = collections.Counter(names)
    for name in used:
        if counts[name] > 1:
            raise InvalidData(
                name, f"the table has {counts[name]} columns named {name!r}; a column's name must be unique"
            )


def _automatic_category(type_: pa.DataType, named_only: bool) -> bool:
    """Whether a feature column of this type is categorical unnamed: a dictionary always, text
    unless only named columns are (`named_only`, CSV's rule)."""
    return pa.types.is_dictionary(type_) or (not named_only and categories.is_category_type(type_))


def _check_label_type(schema: pa.Schema, name: str, what: str, allow_text: bool) -> None:
    type_ = schema.field(name).type
    if _is_numeric(type_) or (allow_text and _is_text(type_)):
        return
    expected = "numbers or strings" if allow_text else f"numbers ({CLASS_LABEL_HINT})"
    raise InvalidData(name, f"column {name!r} holds {type_}; {what} must be {expected}")


def pandas_index(schema: pa.Schema) -> list[str]:
    """Columns that pandas wrote for its index: row labels, not features."""
    metadata = schema.pandas_metadata or {}
    return [name for name in metadata.get("index_columns", []) if isinstance(name, str)]


def _is_numeric(type_: pa.DataType) -> bool:
    if pa.types.is_dictionary(type_):
        return _is_numeric(type_.value_type)
    return any(
        check(type_)
        for check in (
            pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal, pa.types.is_null,
        )
    )


def _is_text(type_: pa.DataType) -> bool:
    if pa.types.is_dictionary(type_):
        return _is_text(type_.value_type)
    return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_))


def _check_kind(source: pa.NativeFile, kind: str) -> None:
    """InvalidData for a table that is empty, or plainly not of its `kind` (Parquet sent as CSV, say),
    before a parser says so in its own words, or quotes binary bytes."""
    head = source.read(HEAD_BYTES)
    source.seek(0)
    if not head:
        raise InvalidData("file", f"the table is empty (0 bytes): send {EXPECTED[kind]}")
    control = _BINARY.search(head)
    if kind == "parquet" and not head.startswith(PARQUET_MAGIC):
        seen = f"it starts with the bytes {head[:8].hex(' ')}" if control else CSV_HINT
        raise InvalidData("file", f"the table is not a Parquet file (one starts with {PARQUET_MAGIC.decode()}); {seen}")
    if kind == "arrow" and not head.startswith((ARROW_STREAM_MAGIC, ARROW_FILE_MAGIC)):
        seen = f"it starts with the bytes {head[:8].hex(' ')}" if control else CSV_HINT
        if head.startswith(PARQUET_MAGIC):
            seen = f"it is a Parquet file: {PARQUET_HINT}"
        raise InvalidData("file", f"the table is not an Arrow IPC stream or file; {seen}")
    if kind == "csv" and control and head.startswith(PARQUET_MAGIC):  # not a header that starts "PAR1"
        raise InvalidData("file", f"the table looks like a Parquet file, not CSV text: {PARQUET_HINT}")
    if kind == "csv" and control:
        at = control.start()
        binary = f"byte {at} is 0x{head[at]:02x}, a control character, as in binary files"
        raise InvalidData(
            "file", f"the table does not look like CSV text: {binary}; send {EXPECTED['csv']}, or a Parquet file"
        )


def _listing(names: Sequence[str], most: int = 20) -> str:
    shown = ", ".join(repr(name) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


@contextlib.contextmanager
def _arrow_source(file: IO[bytes], mapped: bool = False) -> Iterator[pa.NativeFile]:
    """The file as pyarrow reads it fastest: opened again by pyarrow itself where the system allows
    (a Python file object costs a GIL-holding Python call per read: a 420 MB Parquet file took
    1.1 s to read that way, 0.2 s by path), and `mapped` into memory if asked (Arrow's buffers are
    then views of the map), else through the file object."""
    try:
        path: str | None = f"/proc/self/fd/{file.fileno()}"  # the temporary file has no name
    except (AttributeError, OSError):
        path = None
    if path is None or not os.path.exists(path):
        file.seek(0)
        yield pa.PythonFile(file, mode="r")  # not closed: that would close `file`, which the caller owns
        return
    with pa.memory_map(path) if mapped else pa.OSFile(path) as source:
        yield source


def _read_csv(source: pa.NativeFile, choose: Callable[[pa.Schema], _Columns], max_cells: int) -> _Table:
    # pyarrow infers a column's type from the first block only; a column of integers there and
    # "2.5" further on would fail. So the first block is read for the names and types, then the
    # file again with every feature column read as double.
    header = pcsv.open_csv(source, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)).schema
    columns = choose(header)
    source.seek(0)
    typed = [*columns.features, columns.target, *([columns.weight] if columns.weight else [])]
    types = {name: _csv_type(header.field(name).type) for name in typed}
    reader = pcsv.open_csv(
        source,
        read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        convert_options=pcsv.ConvertOptions(include_columns=columns.all, column_types=types),
    )
    width = len(columns.features)
    # Room for as many rows as the file can hold (a row takes at least one byte per column) or the
    # limit allows: pages that are never written take no memory, and the rest is cut off at the end.
    # Growing it instead would cost memory: ndarray.resize writes zeros into all it adds.
    X = np.empty((min(source.size() // len(header.names) + 1, max_cells // width), width))
    rows, targets, eras, weights = 0, [], [], []
    texts: dict[str, list[pa.Array]] = {name: [] for name in columns.categorical}
    for batch in _csv_batches(reader, header.names):
        if rows + batch.num_rows > len(X):
            raise TooLarge(
                f"the table has at least {rows + batch.num_rows} rows x {width} features = "
                f"{(rows + batch.num_rows) * width} values, more than the limit of {max_cells}"
            )
        for name, chunks in texts.items():
            chunks.append(batch.column(name))
        # A categorical column's codes are known once every value has been seen: NaN until then.
        nulls = pa.nulls(batch.num_rows, pa.float64())
        arrays = [nulls if name in texts else batch.column(name) for name in columns.features]
        _copy_into(X, rows, 0, columns.features, arrays)
        targets.append(batch.column(columns.target))
        if columns.era:
            eras.append(batch.column(columns.era))
        if columns.weight:
            weights.append(batch.column(columns.weight))
        rows += batch.num_rows
    if rows == 0:
        raise InvalidData("file", "the table has no rows")
    X.resize((rows, width), refcheck=False)  # in place; no view of X remains (a profiler's would fail the check)
    found = {}
    for name, chunks in texts.items():
        X[:, columns.features.index(name)], found[name] = categories.encode(pa.chunked_array(chunks), name)
    return _Table(
        columns,
        X,
        pa.chunked_array(targets),
        pa.chunked_array(eras) if columns.era else None,
        pa.chunked_array(weights) if columns.weight else None,
        found,
    )


def _csv_type(inferred: pa.DataType) -> pa.DataType:
    if pa.types.is_boolean(inferred) or _is_text(inferred):
        return inferred
    return pa.float64()


def _csv_batches(reader: pcsv.CSVStreamingReader, names: list[str]) -> Iterator[pa.RecordBatch]:
    """The reader's batches; a value that does not convert is the fault of its column, named."""
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as error:
            at = re.match(r"In CSV column #(\d+): (.*)", str(error), re.DOTALL)
            if at is None:
                raise
            name = names[int(at.group(1))]
            raise InvalidData(name, f"column {name!r}: {quotable(at.group(2))}") from None
        yield batch


def _parquet_file(source: pa.NativeFile) -> pq.ParquetFile:
    """The file, its string columns read as dictionaries: a page of one long string repeated
    stays one string, where read plain it would be copied for every row (a few kilobytes of zstd
    could make gigabytes)."""
    schema = pq.ParquetFile(source).schema_arrow
    texts = [field.name for field in schema if _is_text(field.type) and not pa.types.is_dictionary(field.type)]
    source.seek(0)
    return pq.ParquetFile(source, read_dictionary=texts or None)


def _read_parquet(source: pa.NativeFile, choose: Callable[[pa.Schema], _Columns], max_cells: int) -> _Table:
    parquet = _parquet_file(source)
    columns = choose(parquet.schema_arrow)
    rows, width = parquet.metadata.num_rows, len(columns.features)
    _check_size(rows, width, max_cells)
    # Fortran order: each column is copied whole and in place (LightGBM takes either order, and
    # trains the same model): 0.40-0.47 s for 1M x 50 against 0.56-0.62 s gathering rows into C order.
    size = max(1, PARQUET_GROUP_BYTES // (8 * rows))
    groups = [columns.features[first : first + size] for first in range(0, width, size)]
    # The next group is read (pyarrow, without the GIL) while this one is copied into X, and the
    # first while X is mapped.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="parquet") as reader:
        reading = reader.submit(parquet.read, columns=groups[0], use_threads=True)
        X = memory.empty((rows, width), order="F")
        first, found = 0, dict[str, list[Any]]()
        for index, names in enumerate(groups):
            table = reading.result()
            if index + 1 < len(groups):
                reading = reader.submit(parquet.read, columns=groups[index + 1], use_threads=True)
            for offset, name in enumerate(names):
                _copy_column(X[:, first + offset], name, table.column(offset), columns.categorical, found)
            first += len(names)
            del table
    target = parquet.read(columns=[columns.target]).column(0)
    era = parquet.read(columns=[columns.era]).column(0) if columns.era else None
    weight = parquet.read(columns=[columns.weight]).column(0) if columns.weight else None
    return _Table(columns, X, target, era, weight, found)


def _check_size(rows: int, width: int, max_cells: int) -> None:
    """A table whose size is known before it is read (Parquet's metadata, Arrow's messages): not
    empty, and within `max_cells`."""
    if rows == 0:
        raise InvalidData("file", "the table has no rows")
    if rows * width > max_cells:
        raise TooLarge(
            f"the table has {rows} rows x {width} features = {rows * width} values, more than the limit of {max_cells}"
        )


def _read_arrow(source: pa.NativeFile, choose: Callable[[pa.Schema], _Columns], max_cells: int) -> _Table:
    """An Arrow IPC stream or file, its buffers those of the map `_arrow_source` gives it (no copy),
    its feature columns copied into X one at a time. Its messages are checked before any is
    decoded: the rows they declare against `max_cells`, and no compressed buffers (a few kB of zstd
    could decode to gigabytes in this process; uncompressed, the table is mapped, not read)."""
    reader, rows = _arrow_reader(source)
    columns = choose(reader.schema)
    _check_size(rows, len(columns.features), max_cells)
    return _from_table(reader.read_all(), columns)


def _arrow_table(source: pa.NativeFile, max_cells: int) -> pa.Table:
    """The whole of an Arrow IPC stream or file, mapped, checked as `_read_arrow` checks it."""
    reader, rows = _arrow_reader(source)
    _check_size(rows, len(reader.schema), max_cells)
    return reader.read_all()


def _arrow_reader(source: pa.NativeFile) -> tuple[ipc.RecordBatchStreamReader | ipc.RecordBatchFileReader, int]:
    """A reader of the stream or file, and the rows its messages declare; InvalidData for a stream
    cut short or compressed."""
    is_file = source.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
    if not is_file:
        size = source.size()
        source.seek(max(0, size - len(ARROW_END_OF_STREAM)))
        if source.read(len(ARROW_END_OF_STREAM)) != ARROW_END_OF_STREAM:
            cut = "the Arrow stream has no end-of-stream marker: it was cut short, or its writer was not closed"
            raise InvalidData("file", cut)
    rows, compressed = _arrow_batches(source, 8 if is_file else 0)
    source.seek(0)
    if compressed:
        raise InvalidData("file", "the Arrow stream's buffers are compressed: send it uncompressed (it is then mapped)")
    return (ipc.open_file(source) if is_file else ipc.open_stream(source)), rows


def _from_table(table: pa.Table, columns: _Columns) -> _Table:
    """A table in memory (mapped), its feature columns copied into X one at a time."""
    rows, width = table.num_rows, len(columns.features)
    X = memory.empty((rows, width), order="F")
    found: dict[str, list[Any]] = {}
    for index, name in enumerate(columns.features):
        _copy_column(X[:, index], name, table.column(name), columns.categorical, found)
    era = table.column(columns.era) if columns.era else None
    weight = table.column(columns.weight) if columns.weight else None
    return _Table(columns, X, table.column(columns.target), era, weight, found)


def _arrow_batches(source: pa.NativeFile, start: int) -> tuple[int, bool]:
    """The rows that an IPC stream's record batches declare, and whether any message's buffers are
    compressed, read from the messages' metadata (flatbuffers) without decoding their bodies."""
    source.seek(start)
    messages = ipc.MessageReader.open_stream(source)
    rows, compressed = 0, False
    while True:
        try:
            message = messages.read_next_message()
        except StopIteration:
            break
        if message.type not in ("record batch", "dictionary"):
            continue
        meta = _Flatbuffer(message.metadata.to_pybytes())
        header = meta.table(meta.root, 2)  # Message.header
        if message.type == "dictionary":
            header = meta.table(header, 1)  # DictionaryBatch.data, a RecordBatch
        else:
            rows += meta.int64(header, 0)  # RecordBatch.length
        compressed = compressed or meta.has(header, 3)  # RecordBatch.compression
    return rows, compressed


class _Flatbuffer:
    """Just enough of the flatbuffers format to read a field of an Arrow message's metadata."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.root = self._u32(0)

    def has(self, table: int, field: int) -> bool:
        return self._offset(table, field) != 0

    def int64(self, table: int, field: int) -> int:
        offset = self._offset(table, field)
        return int.from_bytes(self.data[table + offset : table + offset + 8], "little", signed=True) if offset else 0

    def table(self, table: int, field: int) -> int:
        offset = self._offset(table, field)
        if not offset:
            raise InvalidData("file", "an Arrow message's metadata lacks a field it needs")
        return table + offset + self._u32(table + offset)

    def _offset(self, table: int, field: int) -> int:
        vtable = table - int.from_bytes(self.data[table : table + 4], "little", signed=True)
        size = int.from_bytes(self.data[vtable : vtable + 2], "little")
        at = vtable + 4 + 2 * field
        return int.from_bytes(self.data[at : at + 2], "little") if at + 2 <= vtable + size else 0

    def _u32(self, at: int) -> int:
        return int.from_bytes(self.data[at : at + 4], "little")


def _copy_column(
    into: np.ndarray, name: str, column: pa.ChunkedArray, categorical: frozenset[str], found: dict[str, list[Any]]
) -> None:
    """A feature column into one column of X, as doubles, nulls as NaN (LightGBM's missing value);
    a categorical one as its codes, its categories into `found`."""
    if name in categorical:
        codes, found[name] = categories.encode(column, name)
        column = pa.chunked_array([codes])
    elif column.type != pa.float64():
        column = pc.cast(column, pa.float64())
    row = 0
    for chunk in column.chunks:
        into[row : row + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
        row += len(chunk)
    if row != len(into):  # every row of X must be written: its memory is not zeroed
        raise InvalidData(name, f"column {name!r} has {row} values where the file's metadata says {len(into)} rows")
    _refuse_infinite(into[:, np.newaxis], [name], 0)


def _copy_into(X: np.ndarray, row: int, column: int, names: Sequence[str], arrays: Sequence[pa.Array]) -> None:
    """Copy equal-length feature columns into X from (row, column) on. pyarrow gathers a block of
    rows into one array (nulls as NaN, LightGBM's missing value) and numpy copies it into X at once:
    for CSV's short batches 10x faster than a numpy copy per column. Gathered column by column,
    not row by row: 1.5x faster, numpy transposing better than pyarrow."""
    doubles = [array if array.type == pa.float64() else pc.cast(array, pa.float64()) for array in arrays]
    batch = pa.RecordBatch.from_arrays(doubles, names=list(names))
    for start in range(0, batch.num_rows, COPY_BLOCK_ROWS):
        block = np.asarray(batch.slice(start, COPY_BLOCK_ROWS).to_tensor(row_major=False, null_to_nan=True))
        _refuse_infinite(block, names, row + start)
        X[row + start : row + start + len(block), column : column + len(names)] = block


def _refuse_infinite(block: np.ndarray, names: Sequence[str], first_row: int) -> None:
    """InvalidData naming the first infinite value of `block` (rows from `first_row` on, one column
    per name) by its column and row."""
    infinite = np.isinf(block)
    if infinite.any():
        at_row, at_column = np.argwhere(infinite)[0]
        name = names[at_column]
        raise InvalidData(name, f"column {name!r} is infinite in row {first_row + int(at_row)} (rows count from 0)")


def _text_labels(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """String labels as an array of Python strings, each distinct one made once (a dictionary's
    value repeated a million times is not copied a million times); none longer than a category."""
    encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    encoded = encoded.unify_dictionaries() if isinstance(encoded, pa.ChunkedArray) else pa.chunked_array([encoded])
    dictionary = encoded.chunk(0).dictionary if encoded.num_chunks else pa.array([], pa.string())
    categories.check_lengths(dictionary, name, "a label")
    indices = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in encoded.chunks] or [[]])
    labels: np.ndarray = np.asarray(dictionary.cast(pa.string()).to_pylist(), dtype=object)[indices.astype(np.intp)]
    return labels


def _labels(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """The target's or the era's values: numbers as doubles, or strings; none may be missing."""
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise InvalidData(name, f"column {name!r} has no value in row {row} (rows count from 0)")
    if _is_text(column.type):
        return _text_labels(column, name)
    values: np.ndarray = pc.cast(column, pa.float64()).to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
        raise InvalidData(
            name,
            f"column {name!r} is {values[np.argmax(bad)]} in row "
            f"{int(np.argmax(bad))}: its values must be finite numbers",
        )
    return values
