"""JSON tables larger than one parsing block: the fast path reads them exactly, and anything it
cannot take still reaches the exact path, which names the position at fault."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import orjson
import pytest

from boostream.config import machine_cores
from boostream.errors import BoostreamError
from boostream.requests import json_body as decoding
from boostream.streaming_server.errors import status_of
from boostream.trainers import create_trainers
from boostream.workers.decoding import Decoders, SharedBody, shared_bodies_work

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


@pytest.fixture
def forked(monkeypatch):
    """Tables of any size parsed by three processes, and a count of the tables parsed so."""
    calls = []
    forked_table = decoding._forked_table

    def counted(*args, **kwargs):
        calls.append(args[-1])
        return forked_table(*args, **kwargs)

    monkeypatch.setattr(decoding, "FORKED_TABLE_MIN_BYTES", 0)
    monkeypatch.setattr(decoding, "_forked_table", counted)
    decoding.parse_tables_with(3)
    yield calls
    decoding.parse_tables_with(1)


def test_a_table_parsed_by_several_processes_is_the_one_parsed_by_one(table, forked):
    X, y = table
    body = orjson.dumps({"X": X, "y": y}, option=orjson.OPT_SERIALIZE_NUMPY)
    parallel = decode(body).data.X
    assert forked == [3] and table_maps() == 1  # the table's map holds its memfd open
    decoding.parse_tables_with(1)
    alone = decode(body).data.X
    assert forked == [3] and alone.flags.c_contiguous and parallel.flags.c_contiguous
    np.testing.assert_array_equal(parallel, alone)
    np.testing.assert_array_equal(parallel, X)
    del parallel
    assert table_maps() == 0


def table_maps() -> int:
    """The memfds of tables parsed by several processes that this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:boostream-table")
        except OSError:
            pass  # closed meanwhile
    return count


@pytest.mark.parametrize("row", [10, 30_000, 59_999], ids=["this process's share", "a middle share", "the last row"])
def test_a_missing_value_in_any_share_takes_the_exact_path(table, forked, row):
    X, y = table
    rows = X.tolist()
    rows[row][2] = None
    decoded = decode(orjson.dumps({"X": rows, "y": y.tolist()})).data.X
    assert forked == [3] and np.isnan(decoded[row, 2]) and np.isnan(decoded).sum() == 1
    expected = X.copy()
    expected[row, 2] = np.nan
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("row", [10, 30_000, 59_999])
@pytest.mark.parametrize(
    "change, words",
    [
        (lambda rows, i: rows.__setitem__(i, rows[i][:-1]), "X[{}] has 6 values, but X[0] has 7"),
        (lambda rows, i: rows[i].__setitem__(3, [1.0]), "X[{}][3] is list"),
        (lambda rows, i: rows[i].__setitem__(3, "a"), "X[{}][3] is 'a'"),
    ],
    ids=["a short row", "a nested list", "a string"],
)
def test_a_bad_row_in_any_share_is_named(table, forked, change, words, row):
    X, y = table
    rows = X.tolist()
    change(rows, row)
    with pytest.raises(BoostreamError) as error:
        decode(orjson.dumps({"X": rows, "y": y.tolist()}))
    assert forked == [3]
    assert status_of(error.value) == 400 and error.value.field == "X" and words.format(row) in error.value.message


def test_the_cell_limit_holds_for_a_table_parsed_by_several_processes(table, forked):
    X, y = table
    body = bytearray(orjson.dumps({"X": X, "y": y}, option=orjson.OPT_SERIALIZE_NUMPY))
    with pytest.raises(BoostreamError) as error:
        decoding.decode_train_request(body, TRAINERS, {}, X.size - 1)
    assert forked == [3] and status_of(error.value) == 413
    assert error.value.message == f"X has 60000 x 7 = {X.size} values, more than the limit of {X.size - 1}"


def test_a_share_whose_process_dies_is_parsed_by_this_one(table, forked, monkeypatch):
    X, y = table
    monkeypatch.setattr(decoding, "_parse_share", lambda *args: os._exit(9))  # as the OOM killer would
    body = orjson.dumps({"X": X, "y": y}, option=orjson.OPT_SERIALIZE_NUMPY)
    np.testing.assert_array_equal(decode(body).data.X, X)
    assert forked == [3]


@pytest.mark.skipif(not shared_bodies_work(), reason="decoder processes need memfds and /proc")
def test_a_decoder_process_parses_a_large_table_on_every_core(tmp_path):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(100_000, 20)), rng.normal(size=100_000)
    text = orjson.dumps({"X": X, "y": y}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert len(text) > decoding.FORKED_TABLE_MIN_BYTES
    decoders = Decoders(1, tmp_path, 1)
    try:
        body = SharedBody(len(text))
        body[:] = text
        decoded = asyncio.run(decoders.decode_train(body, {}, 10**9))
        (decoder,) = decoders._executor._processes  # the pool's one process
        with open(f"/proc/{decoder}/stat") as stat:
            children_cpu_ticks = int(stat.read().rsplit(")", 1)[1].split()[13])  # cutime: reaped children
    finally:
        decoders.close()
    np.testing.assert_array_equal(np.load(decoded.folder / "X.npy"), X)
    assert (children_cpu_ticks > 0) == (machine_cores() > 1)
