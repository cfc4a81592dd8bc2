"""A JSON request body (training or prediction) to validated arrays, off the event loop.

JSON is the slow part of a training request: a 1M x 50 table is about 1 GB of text, and a generic
parser builds 50 million Python floats before numpy sees one. Here msgspec checks the request's
shape and skips over the big arrays without decoding them (`msgspec.Raw`); each array is then
decoded by simdjson straight into a buffer of doubles. A parser keeps its buffers between requests,
so parsers are pooled. Whatever the fast path cannot take as it is (missing values as `null`,
string labels, or anything malformed) goes through an exact, slower path that names the position
at fault.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import queue
import re
import signal
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, NoReturn

import msgspec
import numpy as np
import orjson
import simdjson

from boostream import categories, memory
from boostream.errors import BoostreamError, InvalidData, InvalidJson, InvalidParameter, TooLarge, quotable
from boostream.models.artifacts import FORMATS as ARTIFACT_FORMATS
from boostream.models.predicting import OUTPUTS
from boostream.requests.spec import (
    CLASS_LABEL_HINT,
    DATA_FIELDS,
    DATASET_FIELDS,
    TABLE_FIELDS,
    TrainOptions,
    TrainSpec,
    assemble_training_data,
    build_spec,
)
from boostream.trainers.base import Trainer, TrainingData
from boostream.tuning import TUNE_FIELDS, TuneOptions

# A table is parsed this many bytes of rows at a time (see _table_doubles).
ROW_BLOCK_BYTES = 2 * 1024 * 1024
_ROW_BOUNDARY = re.compile(rb"\]\s*,\s*\[")
_JSON_SPACE = frozenset(b" \t\r\n")
# Fields whose wrong shape is the data's fault (400), not the options' (422).
BAD_DATA_FIELDS = frozenset({*DATA_FIELDS, "feature_names"})
MATRIX_FIELDS, LABEL_FIELDS = frozenset({"X", "X_valid"}), frozenset({"y", "y_valid", "era"})
# msgspec names the byte where the JSON goes wrong: "JSON is malformed: invalid character (byte 26)".
_AT_BYTE = re.compile(r"\(byte (\d+)\)")
# What Python's json.dumps writes for floats that JSON has no numbers for (msgspec points past a '-').
_NOT_JSON_NUMBER = re.compile(rb"NaN|Infinity")
_AFTER_KEY = re.compile(rb'"[ \t\r\n]*:[ \t\r\n]*')
_NOT_JSON = "NaN and Infinity are not JSON (Python's json.dumps writes them unless allow_nan=False)"


class TrainRequestBody(TrainOptions, forbid_unknown_fields=True, kw_only=True):
    """A JSON training request: the options and the arrays, which msgspec skips over (`Raw`)."""

    expected: ClassVar[str] = "a JSON object with X (a list of rows of numbers) and y (a label per row)"

    X: msgspec.Raw
    y: msgspec.Raw
    # msgspec cannot make a Raw field Optional; an empty Raw marks an absent one.
    X_valid: msgspec.Raw = msgspec.Raw()
    y_valid: msgspec.Raw = msgspec.Raw()
    era: msgspec.Raw = msgspec.Raw()
    weight: msgspec.Raw = msgspec.Raw()
    weight_valid: msgspec.Raw = msgspec.Raw()

    def __post_init__(self) -> None:
        for name in ("X_valid", "y_valid", "era", "weight", "weight_valid"):
            raw = getattr(self, name)
            if len(raw) == 4 and bytes(raw) == b"null":
                setattr(self, name, msgspec.Raw())




class TuneRequestBody(TrainRequestBody, forbid_unknown_fields=True, kw_only=True):
    """A JSON search request: a training request's fields and its arrays, and the search's own
    (`boostream.tuning.TuneOptions`; `timeout_s` is the search's)."""

    X: msgspec.Raw = msgspec.Raw()  # absent where `dataset` names the table
    y: msgspec.Raw = msgspec.Raw()
    # A search on an uploaded dataset, instead of X and y: the fields that a training request on
    # a dataset takes in its query string (`dataset_id`, `target`, `features`, `valid_dataset_id`, ...).
    dataset: dict[str, str | int | float] | None = None
    search: dict[str, Any]
    n_trials: int = 20
    parallel: int = 1
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None

    def tune_options(self) -> TuneOptions:
        return TuneOptions(**{name: getattr(self, name) for name in TUNE_FIELDS})

    def dataset_fields(self) -> dict[str, str]:
        """A search on a dataset as a training request on it: its fields as its query string
        would have them, the hyperparameters aside (`params`)."""
        assert self.dataset is not None
        options = {"model_type": self.model_type, "objective": self.objective, "artifact_format": self.artifact_format}
        if self.valid_fraction is not None:
            options["valid_fraction"] = repr(self.valid_fraction)
        return {**{name: str(value) for name, value in self.dataset.items()}, **options}


_PARSERS: queue.SimpleQueue[simdjson.Parser] = queue.SimpleQueue()


def decode_train_request(
    body: bytes | bytearray, trainers: Mapping[str, Trainer], unavailable: Mapping[str, str], max_cells: int
) -> TrainSpec:
    """Decode and validate; a domain error naming the field at fault (see build_spec)."""
    request = _decode_json(body, TrainRequestBody)
    return build_spec(request, lambda: _training_data(request, body, max_cells), trainers, unavailable)


def decode_tune_request(
    body: bytes | bytearray, trainers: Mapping[str, Trainer], unavailable: Mapping[str, str], max_cells: int
) -> tuple[TrainSpec | None, TuneRequestBody]:
    """A search request: its training part as `decode_train_request` checks it (its `timeout_s`,
    the search's, is not the trials'), and the request, whose search fields are checked later
    (`tuning.check_search`) against the backend and the server. No spec where the request names
    a dataset: the caller finds it (`TuneRequestBody.dataset_fields`)."""
    request = _decode_json(body, TuneRequestBody)
    if request.dataset is not None:
        _check_dataset_fields(request)
        return None, request
    for name in ("X", "y"):
        if not getattr(request, name):
            raise InvalidData(name, f"send the table as X and y, or name an uploaded one as dataset: no {name}")
    spec = build_spec(request, lambda: _training_data(request, body, max_cells), trainers, unavailable)
    # Without its arrays, views of the body: the caller may let the body go.
    return spec, msgspec.structs.replace(request, **{name: msgspec.Raw() for name in DATA_FIELDS})


def _check_dataset_fields(request: TuneRequestBody) -> None:
    """A search on a dataset names its columns in `dataset`, as a training request on one does in
    its query string; the arrays and column options of a JSON table have no place beside it."""
    assert request.dataset is not None
    for name in DATA_FIELDS:
        if getattr(request, name):
            raise InvalidData(name, "a search on a dataset takes its table from the dataset: send dataset or X")
    for name, instead in (("feature_names", "dataset.features"), ("categorical", "dataset.categorical")):
        if getattr(request, name) is not None:
            raise InvalidParameter(name, f"a search on a dataset names its columns in {instead}")
    for name in request.dataset:
        if name not in TABLE_FIELDS | DATASET_FIELDS:
            allowed = ", ".join(sorted(TABLE_FIELDS | DATASET_FIELDS))
            raise InvalidParameter(f"dataset.{name}", f"not a field of a search on a dataset: it takes {allowed}")
    if not request.dataset.get("dataset_id"):
        raise InvalidParameter("dataset.dataset_id", "name the dataset to search on (POST /datasets made it)")


class PredictRequestBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    expected: ClassVar[str] = "a JSON object with X (a list of rows of numbers) and artifact_id (or artifact)"

    X: msgspec.Raw = msgspec.Raw()  # empty where `dataset_id` names the rows instead
    dataset_id: str | None = None  # every row of a dataset, its columns picked by the model's feature names
    artifact_id: str | None = None
    artifact: str | None = None  # base64, as a `complete` event or a download gave it
    artifact_format: str = "joblib"
    signature: str | None = None
    output: str = "value"


def decode_predict_request(
    body: bytes | bytearray, max_cells: int
) -> tuple[PredictRequestBody, np.ndarray | None]:
    """The request and its rows (None where a dataset holds them); a domain error naming the field
    at fault."""
    request = _decode_json(body, PredictRequestBody)
    if bool(request.X) == (request.dataset_id is not None):
        raise InvalidData("X", "send the rows to predict as X, or name a dataset of them as dataset_id: one of the two")
    if request.dataset_id is not None and request.artifact_id is None:
        needs = "predicting a dataset takes artifact_id: its feature names pick the columns"
        raise InvalidParameter("dataset_id", needs)
    if (request.artifact_id is None) == (request.artifact is None):
        raise InvalidParameter(
            "artifact_id", "send either artifact_id or artifact (with its artifact_format), not both or neither"
        )
    if request.artifact_format not in ARTIFACT_FORMATS:
        raise InvalidParameter(
            "artifact_format",
            f"artifact_format must be one of {list(ARTIFACT_FORMATS)}, got {request.artifact_format!r}",
        )
    if request.output not in OUTPUTS:
        raise InvalidParameter("output", f"output must be 'value' or 'proba', got {request.output!r}")
    if request.dataset_id is not None:
        return request, None
    X = _matrix(request.X, "X", body, max_cells, text=True)  # a copy, never a view of the body
    # Without the raw X, which is a view of the body: the caller may let the body go.
    return msgspec.structs.replace(request, X=msgspec.Raw()), X


def _decode_json(body: bytes | bytearray, shape: type[msgspec.Struct]) -> Any:
    """The body's fields, the big arrays left as Raw; a domain error naming what is wrong."""
    try:
        request = msgspec.json.decode(body, type=shape)
    except msgspec.ValidationError as error:
        raise _shape_error(str(error)) from None
    except msgspec.DecodeError as error:
        raise _syntax_error(body, str(error), shape) from None
    except RecursionError:  # msgspec's own limit on nesting, as a Python error
        raise InvalidJson(None, "the body nests arrays or objects too deeply to be read") from None
    _refuse_repeated_keys(body, request)
    return request


# What a JSON request may hold besides its arrays (its options, parameters, feature names).
MAX_OPTIONS_BYTES = 16 * 1024**2


def _refuse_repeated_keys(body: bytes | bytearray, request: msgspec.Struct) -> None:
    """InvalidJson for a key that an object of the body has twice: msgspec keeps the last, another
    reader the first, so the request would mean different things to different readers. The body
    is read again without its arrays (each Raw span stands as 0): its options and parameters, a
    few hundred bytes, unless a repeated array is what is there."""
    spans = sorted(
        (_offset_in(body, raw), len(raw))
        for raw in (getattr(request, name) for name in request.__struct_fields__)
        if isinstance(raw, msgspec.Raw) and len(raw)
    )
    parts, position = [], 0
    for start, length in spans:
        parts += [bytes(body[position:start]), b"0"]
        position = start + length
    parts.append(bytes(body[position:]))
    if sum(len(part) for part in parts) > MAX_OPTIONS_BYTES:  # read as Python objects, it would take seconds
        raise InvalidJson(
            None,
            f"more than {MAX_OPTIONS_BYTES // 1024**2} MB of the body is outside its arrays (X, y, X_valid, y_valid, "
            "era): an array sent twice under one key?",
        )

    def once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidJson(key, f"the key {quotable(key)!r} appears twice in one object; send each key once")
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(b"".join(parts), object_pairs_hook=once)
    except RecursionError:
        raise InvalidJson(None, "the body nests arrays or objects too deeply to be read") from None


def _syntax_error(body: bytes | bytearray, message: str, shape: Any) -> InvalidJson:
    """msgspec's DecodeError, said so that the client can act on it: an empty body, or a NaN or
    Infinity (which Python's json.dumps writes by default) named by its field and position."""
    if _skip_space(body, 0, len(body)) == len(body):
        return InvalidJson(None, f"the body is empty: send {shape.expected}")
    if "truncated" in message:
        return InvalidJson(None, f"the body is not valid JSON: it ends, after {len(body)} bytes, before the JSON does")
    at = _AT_BYTE.search(message)
    word = _NOT_JSON_NUMBER.match(body, int(at.group(1))) if at else None
    if word is None:
        return InvalidJson(None, f"the body is not valid JSON: {message}")
    start = word.start() - 1 if body[word.start() - 1 : word.start()] == b"-" else word.start()
    field, where = _position(body, start, shape)
    token = body[start : word.end()].decode()
    advice = "null marks a missing value" + (
        ", and a label cannot be missing: drop its row" if field in LABEL_FIELDS else ""
    )
    return InvalidJson(field, f"{where} is {token}: {_NOT_JSON}; {advice}")


def _position(body: bytes | bytearray, at: int, shape: Any) -> tuple[str | None, str]:
    """The field of the value at body[at] and where it is in it, as the text before it shows at the
    cost of a few scans: the key just before it, and in an array of numbers the row and column."""
    key_end = body.rfind(b'"', 0, at)
    key_start = body.rfind(b'"', 0, key_end) if key_end > 0 else -1
    after_key = _AFTER_KEY.match(body, key_end) if key_start >= 0 else None
    if after_key is None:
        return None, f"the value at byte {at}"
    key = body[key_start + 1 : key_end].decode(errors="replace")
    top_level = body.count(b"{", 0, key_start) - body.count(b"}", 0, key_start) == 1
    if key not in shape.__struct_fields__ or not top_level:
        return None, f"the value at byte {at} (under {quotable(key)!r})"  # in params, say
    start = after_key.end()
    if start == at:
        return key, key
    opens, closes = body.count(b"[", start, at), body.count(b"]", start, at)
    if key in MATRIX_FIELDS and opens - closes == 2:
        return key, f"{key}[{closes}][{body.count(b',', body.rfind(b'[', start, at), at)}]"
    if key in LABEL_FIELDS and (opens, closes) == (1, 0):
        return key, f"{key}[{body.count(b',', start, at)}]"
    return key, f"a value in {key}"


def _shape_error(message: str) -> BoostreamError:
    """msgspec says e.g. "Expected `str`, got `int` - at `$.objective`" or names a missing or unknown
    field; turn that into the field and a status: data fields are 400, the rest 422."""
    at = re.search(r"at `\$\.([A-Za-z_]\w*)", message) or re.search(r"field `([^`]+)`", message)
    field = at.group(1) if at else None
    if "unknown field" in message:
        return InvalidParameter(field, f"unknown field {field!r}")
    return InvalidData(field, message) if field in BAD_DATA_FIELDS else InvalidParameter(field, message)


def _training_data(request: TrainRequestBody, body: bytes | bytearray, max_cells: int) -> TrainingData:
    text = request.categorical is not None  # strings may then be categories
    X = _matrix(request.X, "X", body, max_cells, text)
    y = _labels(request.y, "y", body, request.objective)
    era = _labels(request.era, "era", body, "multiclass") if request.era else None
    if bool(request.X_valid) != bool(request.y_valid):
        missing = "X_valid" if request.y_valid else "y_valid"
        raise InvalidData(missing, "X_valid and y_valid must be sent together")
    valid = None
    if request.X_valid:
        X_valid = _matrix(request.X_valid, "X_valid", body, max_cells, text)
        if X.size + X_valid.size > max_cells:  # the limit is on the table: both its parts
            raise TooLarge(
                f"X and X_valid have {X.size} + {X_valid.size} values, more than the limit of {max_cells}",
                field="X_valid",
            )
        valid = (X_valid, _labels(request.y_valid, "y_valid", body, request.objective))
    weight, weight_valid = (
        _labels(raw, field, body, "regression") if raw else None
        for field, raw in (("weight", request.weight), ("weight_valid", request.weight_valid))
    )
    found: dict[str, list[Any]] = {}
    if request.categorical is not None:
        X, coded_valid, found = _encode_categorical(request, X, None if valid is None else valid[0])
        valid = None if valid is None or coded_valid is None else (coded_valid, valid[1])
    return assemble_training_data(
        request, X, y, era=era, valid=valid, weight=weight, weight_valid=weight_valid, categories=found
    )


def _encode_categorical(
    request: TrainRequestBody, X: np.ndarray, X_valid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, list[Any]]]:
    """X and X_valid as doubles, the columns that `categorical` names as their codes (the
    categories of both together), with those categories by name."""
    names = request.feature_names or [f"f{i}" for i in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise InvalidData("feature_names", f"has {len(names)} names, but X has {X.shape[1]} features")
    named = {}
    for name in request.categorical or []:
        if name not in names:
            raise InvalidData("categorical", f"names {name!r}, which is no feature; the features: {names[:20]}")
        named[names.index(name)] = name
    parts = [(X, "X")] + ([] if X_valid is None else [(X_valid, "X_valid")])
    doubles = [np.empty(part.shape) if part.dtype == object else part for part, _ in parts]
    found: dict[str, list[Any]] = {}
    for at in range(X.shape[1]):
        if at in named:
            values = np.concatenate([part[:, at] for part, _ in parts]) if X_valid is not None else X[:, at]
            coded, found[named[at]] = categories.encode_values(values, named[at])
            doubles[0][:, at] = coded[: len(X)]
            if X_valid is not None:
                doubles[1][:, at] = coded[len(X) :]
            continue
        hint = f": name its feature ({names[at]!r}) in categorical if its values are categories"
        for (part, field), into in zip(parts, doubles, strict=True):
            if part.dtype == object:
                into[:, at] = categories.numbers(part[:, at], field, at, hint)
    return doubles[0], doubles[1] if X_valid is not None else None, found



def _matrix(raw: msgspec.Raw, field: str, body: bytes | bytearray, max_cells: int, text: bool = False) -> np.ndarray:
    """The rows of numbers as doubles; with `text`, rows that hold strings too (categories) as an
    array of Python values instead."""
    values = _table_doubles(body, _offset_in(body, raw), len(raw), field, max_cells)
    if values is None:
        values = _exact_matrix(raw, field, text)
    if values.dtype == object:
        return values
    if np.isinf(values).any():
        row, col = np.argwhere(np.isinf(values))[0]
        raise InvalidData(field, f"{field}[{row}][{col}] is out of the range of a double")
    return values


def _table_doubles(body: bytes | bytearray, start: int, length: int, field: str, max_cells: int) -> np.ndarray | None:
    """The table at body[start:start+length] as a (rows, width) array of doubles, or None where only
    the exact path can say what it holds (null, a string, a nested list, a ragged row...).

    It is parsed a block of rows at a time, each block its own small document: simdjson's buffers
    then stay a few megabytes instead of growing with the table, and no single call holds the
    GIL for long, so the event loop keeps answering while a large body is decoded. A large table's
    blocks are parsed by several processes at once where this process allows it (`_forked_table`)."""
    end = start + length
    if body[start : start + 1] != b"[":
        raise InvalidData(field, "must be a list of rows, each a list of numbers")
    first = _skip_space(body, start + 1, end)
    if body[first : first + 1] == b"]":
        raise InvalidData(field, "is empty: send at least one row")
    if body[first : first + 1] != b"[":
        raise InvalidData(field, f"must be a list of rows, each a list of numbers; {field}[0] is not a list")
    first_end = body.find(b"]", first, end)
    if first_end < 0:
        return None
    if not body[first + 1 : first_end].strip():
        raise InvalidData(field, f"{field}[0] is an empty row: rows need at least one value")
    width = body.count(b",", first, first_end) + 1
    last = _rows_end(body, start, end)
    blocks = list(_row_blocks(body, first, last))
    processes = min(_TABLE_PROCESSES.processes, len(blocks)) if length >= FORKED_TABLE_MIN_BYTES else 1
    if processes > 1:
        try:
            return _forked_table(body, blocks, width, field, max_cells, processes)
        except _ShareFailed:
            pass  # a process died (out of memory, say): this one parses the table alone
    rows = _rows_in(body, blocks)
    _refuse_cells(field, rows, width, max_cells)
    table = memory.empty((rows, width))
    filled = _fill(table, 0, body, blocks, width)
    return table if filled == rows else None


def _refuse_cells(field: str, rows: int, width: int, max_cells: int) -> None:
    if rows * width > max_cells:
        raise TooLarge(
            f"{field} has {rows} x {width} = {rows * width} values, more than the limit of {max_cells}", field=field
        )


def _fill(
    table: np.ndarray, at: int, body: bytes | bytearray, blocks: Iterable[tuple[int, int]], width: int
) -> int | None:
    """Parse the row blocks `blocks` into `table` from its row `at`: the row after the last one
    written, or None where a block is not rows of `width` numbers or would run past the table."""
    parser = _parser()
    for block_start, block_end in blocks:
        values = _block_doubles(parser, body, block_start, block_end, width)
        if values is None or at + len(values) > len(table):
            return None
        table[at : at + len(values)] = values
        at += len(values)
    _PARSERS.put(parser)  # not after an error: the traceback may still hold proxies into a document
    return at


# Tables from this size on are parsed by several processes where `parse_tables_with` allowed it:
# below it, forking saves a few tens of milliseconds at best, and costs more on a busy machine
# (docs/benchmarks.md, section 19).
FORKED_TABLE_MIN_BYTES = 32 * 1024 * 1024


@dataclasses.dataclass
class _TableProcesses:
    processes: int = 1


_TABLE_PROCESSES = _TableProcesses()


def parse_tables_with(processes: int) -> None:
    """Parse each large table with `processes` processes at once from now on, this one and others
    forked from it (1, the default: this one alone). Only for a process that forks safely, with no
    thread that a fork could catch holding a lock its children need: a decoder process
    (`workers/decoding.py`), not the server with its event loop and thread pools."""
    _TABLE_PROCESSES.processes = max(1, processes) if hasattr(os, "fork") and hasattr(os, "memfd_create") else 1


class _ShareFailed(Exception):
    """A process to parse a share of a table could not start, or died: the table is then parsed by
    this process alone."""


def _forked_table(
    body: bytes | bytearray, blocks: list[tuple[int, int]], width: int, field: str, max_cells: int, processes: int
) -> np.ndarray | None:
    """The table of `_table_doubles` from its row blocks, parsed by `processes` processes at once:
    this one and processes forked from it, which read the body where it is (a fork copies none of
    its pages) and write their rows into memory that this one maps too (a memfd). simdjson holds
    the GIL while it parses, so threads would take turns (docs/benchmarks.md, section 19).
    Each process counts the rows of its share of the blocks; this one adds them up, checks the limit
    and tells each where its rows start. None where a block is not rows of numbers, as one process
    would find."""
    shares = _shares(blocks, processes)
    output = os.memfd_create("boostream-table", os.MFD_CLOEXEC)
    children: list[_Share] = []
    try:
        for share in shares[1:]:
            children.append(_Share(body, share, width, output, children))
        counts = [_rows_in(body, shares[0]), *(child.rows() for child in children)]
        rows = sum(counts)
        _refuse_cells(field, rows, width, max_cells)
        os.ftruncate(output, rows * width * 8)
        mapping = mmap.mmap(output, rows * width * 8)
        at = counts[0]
        for child, count in zip(children, counts[1:], strict=True):
            child.start_at(at)
            at += count
        table = np.frombuffer(mapping, np.float64).reshape(rows, width)  # keeps the map alive
        _populate_rows(mapping, 0, counts[0], width)
        if _fill(table, 0, body, shares[0], width) != counts[0]:
            return None
        for child in children:
            if not child.wait():
                return None
        return table
    finally:
        for child in children:
            child.end()  # and stop those still parsing, when a share was not rows of numbers
        os.close(output)


def _shares(blocks: list[tuple[int, int]], processes: int) -> list[list[tuple[int, int]]]:
    """The blocks in `processes` runs of about as many bytes each, in order."""
    first, size = blocks[0][0], blocks[-1][1] - blocks[0][0]
    shares: list[list[tuple[int, int]]] = [[] for _ in range(processes)]
    for block in blocks:
        shares[min(processes - 1, (block[0] - first) * processes // size)].append(block)
    return [share for share in shares if share]


def _rows_in(body: bytes | bytearray, blocks: list[tuple[int, int]]) -> int:
    """The rows in `blocks`, as their '[' count them: right for rows of numbers, which the blocks
    then check. numpy counts twice as fast as bytes.count, and lets go of the GIL while it does."""
    opens = (np.frombuffer(body, np.uint8, end - start, start) == ord("[") for start, end in blocks)
    return sum(int(np.count_nonzero(block)) for block in opens)


def _populate_rows(mapping: mmap.mmap, start: int, end: int, width: int) -> None:
    """Fault in the pages of rows start to end of a table in `mapping` at once (`memory.populate`)."""
    first, last = start * width * 8, end * width * 8
    memory.populate(mapping, first - first % mmap.PAGESIZE, last)


class _Share:
    """A process forked to parse a share of a table's row blocks (see `_forked_table`), and the
    pipes to it: it sends its count of rows up, and is sent the row where they start."""

    pid: int
    _counts: int
    _starts: int

    def __init__(
        self, body: bytes | bytearray, blocks: list[tuple[int, int]], width: int, output: int, others: list[_Share]
    ) -> None:
        count_read, count_write = os.pipe()
        start_read, start_write = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # no room for another process
            for fd in (count_read, count_write, start_read, start_write):
                os.close(fd)
            raise _ShareFailed from None
        if pid == 0:
            # The other ends, its siblings' too: each share sees the end of its pipe when this process goes.
            others_ends = [count_read, start_write, *(fd for other in others for fd in (other._counts, other._starts))]
            _parse_share(body, blocks, width, output, count_write, start_read, others_ends)
        os.close(count_write)
        os.close(start_read)
        self.pid, self._counts, self._starts = pid, count_read, start_write

    def rows(self) -> int:
        count = os.read(self._counts, 8)
        if len(count) != 8:  # it died before it counted
            raise _ShareFailed
        return int.from_bytes(count, "little")

    def start_at(self, row: int) -> None:
        try:
            os.write(self._starts, row.to_bytes(8, "little"))
        except BrokenPipeError:  # it died after it counted
            raise _ShareFailed from None

    def wait(self) -> bool:
        """Whether its blocks were rows of numbers."""
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 1):
            raise _ShareFailed
        return code == 0

    def end(self) -> None:
        for fd in (self._counts, self._starts):
            os.close(fd)
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0


def _parse_share(
    body: bytes | bytearray,
    blocks: list[tuple[int, int]],
    width: int,
    output: int,
    counts: int,
    starts: int,
    others_ends: list[int],
) -> NoReturn:
    """In a forked process: count the rows of `blocks`, then parse them into the table in `output`
    from the row it is sent. It exits 0 when they were rows of numbers, 1 when not, 2 on a failure,
    and leaves nothing else: no exit handlers, no flushing of what its parent had buffered."""
    code = 2
    try:
        for fd in others_ends:
            os.close(fd)
        rows = _rows_in(body, blocks)
        os.write(counts, rows.to_bytes(8, "little"))
        start = os.read(starts, 8)
        if len(start) != 8:  # the limit refused the table, or the parent went
            code = 0
        else:
            row = int.from_bytes(start, "little")
            mapping = mmap.mmap(output, 0)
            _populate_rows(mapping, row, row + rows, width)
            table = np.frombuffer(mapping, np.float64).reshape(-1, width)
            code = 0 if _fill(table, row, body, blocks, width) == row + rows else 1
    finally:
        os._exit(code)


def _row_blocks(body: bytes | bytearray, first: int, last: int) -> Iterator[tuple[int, int]]:
    """Spans of whole rows, about ROW_BLOCK_BYTES each, in body[first:last] (the rows and the
    separators between them): a block ends at a row's ']' and the next starts at the next '['."""
    position = first
    while position < last:
        boundary = _ROW_BOUNDARY.search(body, min(position + ROW_BLOCK_BYTES, last), last)
        if boundary is None:
            yield position, last
            return
        yield position, boundary.start() + 1
        position = boundary.end() - 1


def _block_doubles(
    parser: simdjson.Parser, body: bytes | bytearray, start: int, end: int, width: int
) -> np.ndarray | None:
    """The rows in body[start:end] as a (rows, width) array, or None unless every row is a flat
    list of exactly `width` numbers. simdjson flattens nested lists silently, so the brackets and
    commas are checked too."""
    text = np.frombuffer(body, np.uint8, end - start, start)
    opens, closes = np.flatnonzero(text == ord("[")), np.flatnonzero(text == ord("]"))
    if len(opens) != len(closes) or not (opens < closes).all() or not (closes[:-1] < opens[1:]).all():
        return None
    commas = np.flatnonzero(text == ord(","))
    if ((np.searchsorted(commas, closes) - np.searchsorted(commas, opens)) != width - 1).any():
        return None
    try:
        document = parser.parse(b"[" + body[start:end] + b"]")
        assert isinstance(document, simdjson.Array)  # the brackets make it one
        values = np.frombuffer(document.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):
        # null, a string, a bool, a number beyond a double or an integer beyond 64 bits (simdjson's
        # BIGINT_ERROR is a RuntimeError), or not JSON at all
        return None
    finally:
        document = None  # the parser is reused only once no proxy into its document is alive
    if len(values) != len(opens) * width:
        return None
    return values.reshape(len(opens), width)


def _flat_doubles(doc: Any, raw: msgspec.Raw, body: bytes | bytearray) -> np.ndarray | None:
    """A flat list of numbers as doubles, or None where only the exact path can say what it holds."""
    if not isinstance(doc, simdjson.Array) or len(doc) == 0:
        return None
    try:
        values = np.frombuffer(doc.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):
        return None  # null, a string, a bool, a number beyond a double, or an integer beyond 64 bits
    # simdjson flattens nested lists silently: only the outer '[' may be there.
    if len(values) != len(doc) or _count_in(body, raw, b"[") != 1:
        return None
    return values


def _skip_space(body: bytes | bytearray, position: int, end: int) -> int:
    while position < end and body[position] in _JSON_SPACE:
        position += 1
    return position


def _rows_end(body: bytes | bytearray, start: int, end: int) -> int:
    """Just after the last row's ']': the outer list's ']' is at end - 1."""
    position = end - 2
    while position > start and body[position] in _JSON_SPACE:
        position -= 1
    return position + 1


def _offset_in(body: bytes | bytearray, raw: msgspec.Raw) -> int:
    """Where `raw`, a view into `body`, starts in it."""
    return np.frombuffer(raw, np.uint8).ctypes.data - np.frombuffer(body, np.uint8).ctypes.data


def _count_in(body: bytes | bytearray, raw: msgspec.Raw, byte: bytes) -> int:
    """Occurrences of `byte` in the part of `body` that `raw` spans, without copying it."""
    start = _offset_in(body, raw)
    return body.count(byte, start, start + len(raw))


def _exact_matrix(raw: msgspec.Raw, field: str, text: bool = False) -> np.ndarray:
    rows = _exact_json(raw, field)
    if not isinstance(rows, list) or not rows:
        raise InvalidData(field, "must be a non-empty list of rows, each a list of numbers")
    width = len(rows[0]) if isinstance(rows[0], list) else 0
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise InvalidData(field, f"{field}[{i}] must be a list of numbers, got {_describe(row)}")
        if len(row) != width:
            raise InvalidData(
                field,
                f"{field}[{i}] has {len(row)} values, but {field}[0] has {width}: rows must all be the same length",
            )
        for j, value in enumerate(row):
            if value is None or (text and isinstance(value, str)):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidData(
                    field, f"{field}[{i}][{j}] is {_describe(value)}, not a number (null marks a missing value)"
                )
            if isinstance(value, float) and math.isinf(value):
                raise InvalidData(field, f"{field}[{i}][{j}] is out of the range of a double")
    if text and any(isinstance(value, str) for row in rows for value in row):
        return np.array(rows, dtype=object)
    return np.array(rows, dtype=np.float64)  # None becomes NaN: LightGBM's missing value


def _labels(raw: msgspec.Raw, field: str, body: bytes | bytearray, objective: str) -> np.ndarray:
    """A 1-D array: numbers, or (for classifiers and eras) strings too."""
    values = None
    parser, doc = _parse(raw)
    if doc is not None:
        values = _flat_doubles(doc, raw, body)
        del doc  # simdjson reuses a parser only once no proxy into its document is alive
        _PARSERS.put(parser)  # not after an error: the traceback may still hold such proxies
    if values is not None:
        if np.isinf(values).any():
            raise InvalidData(
                field, f"{field}[{int(np.flatnonzero(np.isinf(values))[0])}] is out of the range of a double"
            )
        return values
    items = _exact_json(raw, field)
    if not isinstance(items, list) or not items:
        raise InvalidData(field, "must be a non-empty list")
    numeric = objective == "regression" or not isinstance(items[0], str)
    for i, value in enumerate(items):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if numeric else isinstance(value, str)
        if not ok:
            expected = "a number" if numeric else "a string like the first value"
            labels = field in ("y", "y_valid")
            hint = f" ({CLASS_LABEL_HINT})" if labels and objective == "regression" and isinstance(value, str) else ""
            raise InvalidData(field, f"{field}[{i}] is {_describe(value)}, not {expected}{hint}")
    return np.array(items, dtype=np.float64 if numeric else str)


def _exact_json(raw: msgspec.Raw, field: str) -> Any:
    try:
        return orjson.loads(bytes(raw))
    except orjson.JSONDecodeError as error:
        raise InvalidData(field, f"cannot be read: {error}") from None


def _describe(value: Any) -> str:
    return "null" if value is None else repr(value) if not isinstance(value, (list, dict)) else type(value).__name__







def _parser() -> simdjson.Parser:
    try:
        return _PARSERS.get_nowait()
    except queue.Empty:
        return simdjson.Parser()


def _parse(raw: msgspec.Raw) -> tuple[simdjson.Parser, Any]:
    """A pooled parser and the parsed document, or None for a document simdjson refuses
    (a number beyond a double, say), which the exact path then reads and explains."""
    parser = _parser()
    try:
        return parser, parser.parse(memoryview(raw))
    except (ValueError, RuntimeError):
        return parser, None
