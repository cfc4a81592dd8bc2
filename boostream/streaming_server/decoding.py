"""From a request body to validated training arrays, off the event loop.

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
import queue
import re
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional

import msgspec
import numpy as np
import orjson
import simdjson

from boostream.streaming_server import pages
from boostream.streaming_server.errors import ApiError, quotable
from boostream.trainers.base import OBJECTIVES, InvalidData, InvalidParameter, Trainer, TrainingData, validate_params

VALID_SPLIT_SEED = 0
# A table is parsed this many bytes of rows at a time (see _table_doubles).
ROW_BLOCK_BYTES = 2 * 1024 * 1024
_ROW_BOUNDARY = re.compile(rb"\]\s*,\s*\[")
_JSON_SPACE = frozenset(b" \t\r\n")
_NAME_CHARACTERS_REFUSED = '",:[]{}'
ARTIFACT_FORMATS = ("joblib", "native")
DATA_FIELDS = frozenset({"X", "y", "X_valid", "y_valid", "era", "feature_names"})
MATRIX_FIELDS, LABEL_FIELDS = frozenset({"X", "X_valid"}), frozenset({"y", "y_valid", "era"})
CLASS_LABEL_HINT = "strings are class labels: use a classifier objective"
# msgspec names the byte where the JSON goes wrong: "JSON is malformed: invalid character (byte 26)".
_AT_BYTE = re.compile(r"\(byte (\d+)\)")
# What Python's json.dumps writes for floats that JSON has no numbers for (msgspec points past a '-').
_NOT_JSON_NUMBER = re.compile(rb"NaN|Infinity")
_AFTER_KEY = re.compile(rb'"[ \t\r\n]*:[ \t\r\n]*')
_NOT_JSON = "NaN and Infinity are not JSON (Python's json.dumps writes them unless allow_nan=False)"


class TrainOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A training request's fields other than its arrays, whichever way the table came."""

    model_type: str = "lightgbm"
    objective: str = "regression"
    valid_fraction: Optional[float] = None
    feature_names: Optional[list[str]] = None
    params: dict[str, Any] = {}
    callback_url: Optional[str] = None
    timeout_s: Optional[float] = None
    artifact_format: str = "joblib"


class TrainRequestBody(TrainOptions, forbid_unknown_fields=True, kw_only=True):
    """A JSON training request: the options and the arrays, which msgspec skips over (`Raw`)."""

    expected: ClassVar[str] = "a JSON object with X (a list of rows of numbers) and y (a label per row)"

    X: msgspec.Raw
    y: msgspec.Raw
    # msgspec cannot make a Raw field Optional; an empty Raw marks an absent one.
    X_valid: msgspec.Raw = msgspec.Raw()
    y_valid: msgspec.Raw = msgspec.Raw()
    era: msgspec.Raw = msgspec.Raw()

    def __post_init__(self) -> None:
        for name in ("X_valid", "y_valid", "era"):
            raw = getattr(self, name)
            if len(raw) == 4 and bytes(raw) == b"null":
                setattr(self, name, msgspec.Raw())


@dataclasses.dataclass
class TrainSpec:
    """A validated training request: everything a job needs to run."""

    trainer: Trainer
    objective: str
    params: dict[str, Any]
    data: TrainingData
    callback_url: Optional[str] = None
    timeout_s: Optional[float] = None
    artifact_format: str = "joblib"


class TooLarge(Exception):
    pass


_PARSERS: "queue.SimpleQueue[simdjson.Parser]" = queue.SimpleQueue()


def decode_train_request(
    body: bytes | bytearray, trainers: Mapping[str, Trainer], unavailable: Mapping[str, str], max_cells: int
) -> TrainSpec:
    """Decode and validate; raise ApiError (400, 413, 422, or 503 for a backend in `unavailable`,
    which maps names to reasons) naming the field at fault."""
    request = _decode_json(body, TrainRequestBody)
    return build_spec(request, lambda: _training_data(request, body, max_cells), trainers, unavailable)


def build_spec(
    options: TrainOptions,
    read_data: Callable[[], TrainingData],
    trainers: Mapping[str, Trainer],
    unavailable: Mapping[str, str],
    where: str = "on this server",
) -> TrainSpec:
    """Check the options, then read the arrays with `read_data` (which raises InvalidData,
    InvalidParameter or TooLarge), and check them together; ApiError for whatever is wrong.
    `where` the training would run, for a backend in `unavailable`: "on this machine" without a server."""
    trainer = trainers.get(options.model_type)
    if trainer is None:
        raise ApiError(422, "invalid_parameter", f"unknown model_type {options.model_type!r}; choose one of {sorted(trainers)}", "model_type")
    if options.model_type in unavailable:
        reason = unavailable[options.model_type]
        raise ApiError(503, "backend_unavailable", f"{options.model_type} cannot train {where}: {reason}", "model_type")
    if options.objective not in OBJECTIVES:
        raise ApiError(422, "invalid_parameter", f"unknown objective {options.objective!r}; choose one of {list(OBJECTIVES)}", "objective")
    if options.artifact_format not in ARTIFACT_FORMATS:
        raise ApiError(422, "invalid_parameter", f"artifact_format must be one of {list(ARTIFACT_FORMATS)}, got {options.artifact_format!r}", "artifact_format")
    try:
        params = validate_params(trainer.params, options.params)
        data = read_data()
        trainer.check(data, options.objective, params)
    except InvalidParameter as error:
        raise ApiError(422, "invalid_parameter", error.message, error.field) from None
    except InvalidData as error:
        raise ApiError(400, "invalid_data", error.message, error.field) from None
    except TooLarge as error:
        raise ApiError(413, "too_large", str(error)) from None
    return TrainSpec(trainer, options.objective, params, data, options.callback_url, options.timeout_s, options.artifact_format)


class PredictRequestBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    expected: ClassVar[str] = "a JSON object with X (a list of rows of numbers) and artifact_id (or artifact)"

    X: msgspec.Raw
    artifact_id: Optional[str] = None
    artifact: Optional[str] = None  # base64, as a `complete` event or a download gave it
    artifact_format: str = "joblib"
    signature: Optional[str] = None
    output: str = "value"


def decode_predict_request(body: bytes | bytearray, max_cells: int) -> tuple[PredictRequestBody, np.ndarray]:
    """The request and its rows; ApiError naming the field at fault."""
    request = _decode_json(body, PredictRequestBody)
    if (request.artifact_id is None) == (request.artifact is None):
        raise ApiError(422, "invalid_parameter", "send either artifact_id or artifact (with its artifact_format), not both or neither", "artifact_id")
    if request.artifact_format not in ARTIFACT_FORMATS:
        raise ApiError(422, "invalid_parameter", f"artifact_format must be one of {list(ARTIFACT_FORMATS)}, got {request.artifact_format!r}", "artifact_format")
    if request.output not in ("value", "proba"):
        raise ApiError(422, "invalid_parameter", f"output must be 'value' or 'proba', got {request.output!r}", "output")
    try:
        X = _matrix(request.X, "X", body, max_cells)  # a copy, never a view of the body
    except InvalidData as error:
        raise ApiError(400, "invalid_data", error.message, error.field) from None
    except TooLarge as error:
        raise ApiError(413, "too_large", str(error)) from None
    # Without the raw X, which holds the body: the body may then serve again (pages.give_back).
    return msgspec.structs.replace(request, X=msgspec.Raw()), X


def _decode_json(body: bytes | bytearray, shape: type[msgspec.Struct]) -> Any:
    """The body's fields, the big arrays left as Raw; ApiError naming what is wrong."""
    try:
        return msgspec.json.decode(body, type=shape)
    except msgspec.ValidationError as error:
        raise _shape_error(str(error)) from None
    except msgspec.DecodeError as error:
        raise _syntax_error(body, str(error), shape) from None


def _syntax_error(body: bytes | bytearray, message: str, shape: Any) -> ApiError:
    """msgspec's DecodeError, said so that the client can act on it: an empty body, or a NaN or
    Infinity (which Python's json.dumps writes by default) named by its field and position."""
    if _skip_space(body, 0, len(body)) == len(body):
        return ApiError(400, "invalid_json", f"the body is empty: send {shape.expected}")
    if "truncated" in message:
        return ApiError(400, "invalid_json", f"the body is not valid JSON: it ends, after {len(body)} bytes, before the JSON does")
    at = _AT_BYTE.search(message)
    word = _NOT_JSON_NUMBER.match(body, int(at.group(1))) if at else None
    if word is None:
        return ApiError(400, "invalid_json", f"the body is not valid JSON: {message}")
    start = word.start() - 1 if body[word.start() - 1 : word.start()] == b"-" else word.start()
    field, where = _position(body, start, shape)
    token = body[start : word.end()].decode()
    advice = "null marks a missing value" + (", and a label cannot be missing: drop its row" if field in LABEL_FIELDS else "")
    return ApiError(400, "invalid_json", f"{where} is {token}: {_NOT_JSON}; {advice}", field)


def _position(body: bytes | bytearray, at: int, shape: Any) -> tuple[Optional[str], str]:
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


def _shape_error(message: str) -> ApiError:
    """msgspec says e.g. "Expected `str`, got `int` - at `$.objective`" or names a missing or unknown
    field; turn that into the field and a status: data fields are 400, the rest 422."""
    at = re.search(r"at `\$\.([A-Za-z_]\w*)", message) or re.search(r"field `([^`]+)`", message)
    field = at.group(1) if at else None
    if "unknown field" in message:
        return ApiError(422, "invalid_parameter", f"unknown field {field!r}", field)
    status = 400 if field in DATA_FIELDS else 422
    return ApiError(status, "invalid_data" if status == 400 else "invalid_parameter", message, field)


def _training_data(request: TrainRequestBody, body: bytes | bytearray, max_cells: int) -> TrainingData:
    X = _matrix(request.X, "X", body, max_cells)
    y = _labels(request.y, "y", body, request.objective)
    era = _labels(request.era, "era", body, "multiclass") if request.era else None
    if bool(request.X_valid) != bool(request.y_valid):
        missing = "X_valid" if request.y_valid else "y_valid"
        raise InvalidData(missing, "X_valid and y_valid must be sent together")
    valid = None
    if request.X_valid:
        valid = _matrix(request.X_valid, "X_valid", body, max_cells), _labels(request.y_valid, "y_valid", body, request.objective)
    return assemble_training_data(request, X, y, era=era, valid=valid)


def assemble_training_data(
    options: TrainOptions, X: np.ndarray, y: np.ndarray, era: Optional[np.ndarray] = None, valid: Optional[tuple[np.ndarray, np.ndarray]] = None
) -> TrainingData:
    """Arrays as read, whatever their source, checked against each other and the options: era ids
    numbered, the validation rows split off or checked, class labels encoded."""
    _check_rows("y", y, X)
    feature_names = _feature_names(options.feature_names, X.shape[1])
    if era is not None:
        if options.model_type != "warpgbm":
            raise InvalidParameter("era", "era splitting is a WarpGBM feature; use model_type 'warpgbm'")
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
        X, y, X_valid, y_valid, era = _split(X, y, era, options.valid_fraction)

    data = TrainingData(X=X, y=y, feature_names=feature_names, X_valid=X_valid, y_valid=y_valid, era=era)
    if options.objective != "regression":
        _encode_classes(data, options.objective)
    return data


def _matrix(raw: msgspec.Raw, field: str, body: bytes | bytearray, max_cells: int) -> np.ndarray:
    values = _table_doubles(body, _offset_in(body, raw), len(raw), field, max_cells)
    if values is None:
        values = _exact_matrix(raw, field)
    if np.isinf(values).any():
        row, col = np.argwhere(np.isinf(values))[0]
        raise InvalidData(field, f"{field}[{row}][{col}] is out of the range of a double")
    return values


def _table_doubles(body: bytes | bytearray, start: int, length: int, field: str, max_cells: int) -> Optional[np.ndarray]:
    """The table at body[start:start+length] as a (rows, width) array of doubles, or None where only
    the exact path can say what it holds (null, a string, a nested list, a ragged row...).

    It is parsed a block of rows at a time, each block its own small document: simdjson's buffers
    then stay a few megabytes instead of growing with the table, and no single call holds the
    GIL for long, so the event loop keeps answering while a large body is decoded."""
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
    # Right for a table of numbers (the blocks check it), counted in steps that each hold the GIL briefly.
    rows = sum(body.count(b"[", at, min(at + ROW_BLOCK_BYTES, end)) for at in range(start, end, ROW_BLOCK_BYTES)) - 1
    if rows * width > max_cells:
        raise TooLarge(f"{field} has {rows} x {width} = {rows * width} values, more than the limit of {max_cells}")
    table = pages.empty((rows, width))
    parser = _parser()
    filled = 0
    for block_start, block_end in _row_blocks(body, first, _rows_end(body, start, end)):
        values = _block_doubles(parser, body, block_start, block_end, width)
        if values is None or filled + len(values) > rows:
            return None
        table[filled : filled + len(values)] = values
        filled += len(values)
    _PARSERS.put(parser)  # not after an error: the traceback may still hold proxies into a document
    return table if filled == rows else None


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


def _block_doubles(parser: simdjson.Parser, body: bytes | bytearray, start: int, end: int, width: int) -> Optional[np.ndarray]:
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
        values = np.frombuffer(document.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):
        return None  # null, a string, a bool, a number beyond a double, or not JSON at all
    finally:
        document = None  # the parser is reused only once no proxy into its document is alive
    if len(values) != len(opens) * width:
        return None
    return values.reshape(len(opens), width)


def _flat_doubles(doc: Any, raw: msgspec.Raw, body: bytes | bytearray) -> Optional[np.ndarray]:
    """A flat list of numbers as doubles, or None where only the exact path can say what it holds."""
    if not isinstance(doc, simdjson.Array) or len(doc) == 0:
        return None
    try:
        values = np.frombuffer(doc.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):
        return None  # null, a string, a bool, or a number beyond a double
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


def _exact_matrix(raw: msgspec.Raw, field: str) -> np.ndarray:
    rows = _exact_json(raw, field)
    if not isinstance(rows, list) or not rows:
        raise InvalidData(field, "must be a non-empty list of rows, each a list of numbers")
    width = len(rows[0]) if isinstance(rows[0], list) else 0
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise InvalidData(field, f"{field}[{i}] must be a list of numbers, got {_describe(row)}")
        if len(row) != width:
            raise InvalidData(field, f"{field}[{i}] has {len(row)} values, but {field}[0] has {width}: rows must all be the same length")
        for j, value in enumerate(row):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InvalidData(field, f"{field}[{i}][{j}] is {_describe(value)}, not a number (null marks a missing value)")
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
            raise InvalidData(field, f"{field}[{int(np.flatnonzero(np.isinf(values))[0])}] is out of the range of a double")
        return values
    items = _exact_json(raw, field)
    if not isinstance(items, list) or not items:
        raise InvalidData(field, "must be a non-empty list")
    numeric = objective == "regression" or not isinstance(items[0], str)
    for i, value in enumerate(items):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if numeric else isinstance(value, str)
        if not ok:
            expected = "a number" if numeric else "a string like the first value"
            hint = f" ({CLASS_LABEL_HINT})" if objective == "regression" and isinstance(value, str) else ""
            raise InvalidData(field, f"{field}[{i}] is {_describe(value)}, not {expected}{hint}")
    return np.array(items, dtype=np.float64 if numeric else str)


def _exact_json(raw: msgspec.Raw, field: str) -> Any:
    try:
        return orjson.loads(bytes(raw))
    except orjson.JSONDecodeError as error:
        raise InvalidData(field, f"cannot be read: {error}") from None


def _describe(value: Any) -> str:
    return "null" if value is None else repr(value) if not isinstance(value, (list, dict)) else type(value).__name__


def _check_rows(field: str, values: np.ndarray, X: np.ndarray) -> None:
    if len(values) != len(X):
        x_field = "X_valid" if field == "y_valid" else "X"
        raise InvalidData(field, f"has {len(values)} values, but {x_field} has {len(X)} rows")


def _feature_names(names: Optional[list[str]], width: int) -> list[str]:
    if names is None:
        return [f"f{i}" for i in range(width)]
    if len(names) != width:
        raise InvalidData("feature_names", f"has {len(names)} names, but X has {width} features")
    if len(set(names)) != len(names):
        raise InvalidData("feature_names", "names must be unique")
    for name in names:
        # LightGBM keeps its model as JSON-like text and refuses these; say so before training.
        if not name or any(character in name for character in _NAME_CHARACTERS_REFUSED):
            raise InvalidData("feature_names", f"{name!r} is not a usable feature name: it must be non-empty, without any of {_NAME_CHARACTERS_REFUSED}")
    return list(names)


def _split(X: np.ndarray, y: np.ndarray, era: Optional[np.ndarray], fraction: float):
    if not 0.0 < fraction <= 0.5:
        raise InvalidParameter("valid_fraction", f"must be greater than 0 and at most 0.5, got {fraction}")
    n_valid = int(round(len(X) * fraction))
    if n_valid < 1 or n_valid >= len(X):
        raise InvalidData("X", f"{len(X)} rows are too few to split off valid_fraction={fraction}")
    order = np.random.default_rng(VALID_SPLIT_SEED).permutation(len(X))
    valid, train = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    return X[train], y[train], X[valid], y[valid], None if era is None else era[train]


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
    except ValueError:
        return parser, None
