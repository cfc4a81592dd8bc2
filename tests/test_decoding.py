"""JSON tables larger than one parsing block: the fast path reads them exactly, and anything it
cannot take still reaches the exact path, which names the position at fault."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from boostream.errors import BoostreamError
from boostream.requests import json_body as decoding
from boostream.streaming_server.errors import status_of
from boostream.trainers import create_trainers

TRAINERS = create_trainers(1)


def decode(body: bytes):
    return decoding.decode_train_request(bytearray(body), TRAINERS, {}, 10**9)


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60_000, 7))  # about 8 MB of JSON: several blocks
    return X, rng.normal(size=60_000)


def body_with(X_text: bytes, y) -> bytes:
    return b'{"X": ' + X_text + b', "y": ' + orjson.dumps(y.tolist()) + b'}'


def test_a_table_of_many_blocks_is_read_exactly(table):
    X, y = table
    assert len(orjson.dumps(X, option=orjson.OPT_SERIALIZE_NUMPY)) > 3 * decoding.ROW_BLOCK_BYTES
    spec = decode(orjson.dumps({"X": X, "y": y}, option=orjson.OPT_SERIALIZE_NUMPY))
    np.testing.assert_array_equal(spec.data.X, X)


def test_whitespace_between_rows_and_values_is_allowed(table):
    X, y = table
    text = (
        b"[\n  "
        + b",\n  ".join(b"[ " + b" , ".join(orjson.dumps(float(v)) for v in row) + b" ]" for row in X[:20_000])
        + b"\n]"
    )
    np.testing.assert_array_equal(decode(body_with(text, y[:20_000])).data.X, X[:20_000])


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda rows: rows.__setitem__(50_000, rows[50_000][:-1]), "X[50000] has 6 values, but X[0] has 7"),
        (lambda rows: rows[50_000].__setitem__(3, [1.0]), "X[50000][3] is list"),
        (lambda rows: rows[50_000].__setitem__(3, "a"), "X[50000][3] is 'a'"),
    ],
    ids=["a short row", "a nested list", "a string"],
)
def test_a_bad_row_in_a_late_block_is_named(table, change, words):
    X, y = table
    rows = X.tolist()
    change(rows)
    with pytest.raises(BoostreamError) as error:
        decode(orjson.dumps({"X": rows, "y": y.tolist()}))
    assert status_of(error.value) == 400 and error.value.field == "X" and words in error.value.message


def test_missing_values_in_a_late_block_become_nan(table):
    X, y = table
    rows = X.tolist()
    rows[55_555][2] = None
    decoded = decode(orjson.dumps({"X": rows, "y": y.tolist()})).data.X
    assert np.isnan(decoded[55_555, 2]) and np.isnan(decoded).sum() == 1


def test_a_nan_in_a_late_block_is_named_by_its_row_and_column(table):
    X, y = table
    rows = X.tolist()
    rows[50_000][3] = float("nan")
    text = json.dumps({"X": rows, "y": y.tolist()}).encode()  # as Python writes it by default: a bare NaN
    with pytest.raises(BoostreamError) as error:
        decode(text)
    assert (status_of(error.value), error.value.code, error.value.field) == (400, "invalid_json", "X")
    assert error.value.message.startswith("X[50000][3] is NaN: NaN and Infinity are not JSON"), error.value.message
