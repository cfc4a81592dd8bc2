"""Large files written in slices, a job's arrays saved as .npy files that np.load reads back, and
large arrays whose memory is kept for the next one."""

from __future__ import annotations

import gc
import io
import sys
import threading
import time

import numpy as np
import orjson
import pytest

from boostream.streaming_server import pages


class Recording(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data) -> int:
        self.sizes.append(len(data))
        return super().write(data)


def test_write_all_writes_every_byte_in_small_slices():
    data = np.random.default_rng(0).bytes(3 * pages.WRITE_SLICE_BYTES + 123)
    file = Recording()
    pages.write_all(file, bytearray(data))
    assert file.getvalue() == data
    assert max(file.sizes) == pages.WRITE_SLICE_BYTES and len(file.sizes) == 4


ARRAYS = {
    "C order": np.arange(600.0).reshape(200, 3),
    "Fortran order": np.asfortranarray(np.arange(600.0).reshape(200, 3)),
    "a strided view": np.arange(1200.0).reshape(200, 6)[:, ::2],
    "one dimension": np.linspace(0, 1, 1001),
    "strings": np.array(["setosa", "versicolor", "virginica"]),
    "integers": np.arange(10, dtype=np.int64),
    "empty": np.empty((0, 4)),
}


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
def test_a_saved_array_loads_back_the_same(tmp_path, array):
    path = tmp_path / "a.npy"
    pages.save_array(path, array)
    loaded = np.load(path, allow_pickle=False, mmap_mode="r" if array.size else None)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)
    if array.ndim == 2 and array.flags.f_contiguous and not array.flags.c_contiguous:
        assert loaded.flags.f_contiguous  # kept as it was: no transposing copy


def test_an_array_of_objects_is_not_saved(tmp_path):
    with pytest.raises(ValueError, match="objects"):
        pages.save_array(tmp_path / "a.npy", np.array([{"a": 1}], dtype=object))


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mapped and kept on Linux only")
ROWS = 4 * pages.MAPPED_MIN_BYTES // (8 * 10)  # a 10-column array of doubles, 4x the threshold


@pytest.fixture()
def nothing_kept(monkeypatch):
    monkeypatch.setattr(pages, "_KEPT", pages._Kept(len))
    monkeypatch.setattr(pages, "_KEPT_BUFFERS", pages._Kept(lambda body: body.__alloc__() - 1))
    return pages._KEPT


BODY = 3 * pages.MAPPED_MIN_BYTES


def test_a_body_given_back_serves_the_next_body_of_about_its_size(nothing_kept):
    body = pages.buffer(BODY)
    assert len(body) == BODY and body == bytes(BODY)  # fresh: zeros
    body[:] = b"a" * BODY
    identity = id(body)
    pages.give_back(body)
    del body
    smaller = pages.buffer(BODY - 1000)
    assert id(smaller) == identity and len(smaller) == BODY - 1000
    assert smaller[-1:] == b"a"  # the same memory, with its old bytes until written
    pages.give_back(smaller)
    del smaller
    larger = pages.buffer(BODY - 10)  # grows again within its memory
    assert id(larger) == identity and len(larger) == BODY - 10
    larger[:] = b"b" * len(larger)
    assert larger.count(b"b") == BODY - 10


def test_a_body_still_held_or_viewed_is_not_kept(nothing_kept):
    body = pages.buffer(BODY)
    view = memoryview(body)[10:20]
    pages.give_back(body)
    assert len(pages._KEPT_BUFFERS) == 0
    view.release()
    alias = [body]
    pages.give_back(body)
    assert len(pages._KEPT_BUFFERS) == 0
    alias.clear()
    pages.give_back(body)
    assert len(pages._KEPT_BUFFERS) == 1


def test_small_or_far_larger_bodies_are_not_served_from_kept_ones(nothing_kept):
    small = pages.buffer(pages.MAPPED_MIN_BYTES // 2)
    pages.give_back(small)
    assert len(pages._KEPT_BUFFERS) == 0
    body = pages.buffer(BODY)
    body[:] = b"a" * BODY
    pages.give_back(body)
    del body
    assert pages.buffer(BODY // 3).count(0) == BODY // 3  # fresh zeros: the kept one would leave two thirds unused
    assert len(pages._KEPT_BUFFERS) == 0


@pytest.mark.parametrize("order", ["C", "F"])
def test_empty_gives_a_writable_array_of_the_shape_type_and_order_asked(order, nothing_kept):
    for shape, dtype in [((ROWS, 10), np.float64), ((ROWS * 2, 10), np.float32), ((7, 3), np.float64)]:
        array = pages.empty(shape, dtype, order=order)
        assert array.shape == shape and array.dtype == dtype and array.flags.writeable
        assert array.flags.f_contiguous if order == "F" else array.flags.c_contiguous
        array[:] = np.arange(array.size, dtype=dtype).reshape(shape)
        assert array[-1, -1] == array.size - 1


@linux_only
def test_the_memory_of_a_garbage_array_goes_to_the_next_of_about_its_size(nothing_kept):
    first = pages.empty((ROWS, 10))
    first[:] = 1.0
    address = first.ctypes.data
    column = first[:, 3]
    del first
    gc.collect()
    assert len(nothing_kept) == 0, "kept while a view of the array could still read or write it"
    other = pages.empty((ROWS, 10))
    assert other.ctypes.data != address  # nor given out again
    del column
    assert len(nothing_kept) == 1
    again = pages.empty((ROWS - 1000, 10), order="F")  # smaller, but more than half as large
    assert again.ctypes.data == address and len(nothing_kept) == 0
    assert again.shape == (ROWS - 1000, 10) and again.flags.f_contiguous


@linux_only
def test_a_kept_block_twice_too_large_or_too_small_is_let_go_for_a_fresh_one(nothing_kept):
    block = pages.empty((ROWS, 10))
    address = block.ctypes.data
    del block
    assert len(nothing_kept) == 1
    small = pages.empty((ROWS // 3, 10))  # would leave two thirds of the block unused
    assert small.ctypes.data != address and len(nothing_kept) == 0
    del small
    large = pages.empty((ROWS * 3, 10))
    assert len(nothing_kept) == 0 and large.shape == (ROWS * 3, 10)


@linux_only
def test_kept_memory_is_let_go_after_keep_s_and_at_most_keep_most_blocks(nothing_kept, monkeypatch):
    monkeypatch.setattr(pages, "KEEP_S", 0.2)
    arrays = [pages.empty((ROWS, 10)) for _ in range(pages.KEEP_MOST + 2)]
    del arrays
    assert len(nothing_kept) == pages.KEEP_MOST
    deadline = time.monotonic() + 10
    while len(nothing_kept) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(nothing_kept) == 0


@linux_only
def test_keep_memory_0_keeps_nothing_and_lets_go_of_what_was_kept(nothing_kept, monkeypatch):
    monkeypatch.setattr(pages, "KEEP_S", pages.KEEP_S)  # restored after the test
    pages.empty((ROWS, 10))  # garbage at once
    assert len(nothing_kept) == 1
    pages.keep_memory(0)
    assert len(nothing_kept) == 0
    pages.empty((ROWS, 10))  # garbage at once
    assert len(nothing_kept) == 0
    with pytest.raises(ValueError, match="0 or more"):
        pages.keep_memory(-1)


@linux_only
def test_an_array_freed_by_the_garbage_collector_while_the_keeper_is_busy_does_not_hang_it(nothing_kept):
    # Finalizers run wherever the collector does: here, inside the keeper's own lock.
    class Cycle:
        pass

    cycle = Cycle()
    cycle.me, cycle.array = cycle, pages.empty((ROWS, 10))
    del cycle

    def collect_inside_the_lock():
        with nothing_kept._lock:
            gc.collect()

    thread = threading.Thread(target=collect_inside_the_lock, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the keeper deadlocked on its own lock"
    assert len(nothing_kept) == 1
    assert pages.empty((ROWS, 10)) is not None and len(nothing_kept) == 0


@linux_only
def test_many_kept_blocks_share_one_timer_thread(nothing_kept):
    before = threading.active_count()
    arrays = [pages.empty((ROWS, 10)) for _ in range(10)]
    del arrays  # ten blocks kept at once, the oldest let go beyond KEEP_MOST
    assert threading.active_count() <= before + 1
    assert len(nothing_kept) == pages.KEEP_MOST


def test_a_predict_body_is_free_to_serve_again_once_decoded(nothing_kept):
    from boostream.streaming_server.decoding import decode_predict_request

    rows = np.random.default_rng(0).random((60_000, 10))
    body = bytearray(orjson.dumps({"artifact_id": "a", "X": rows.tolist()}))
    assert len(body) >= pages.MAPPED_MIN_BYTES
    _, X = decode_predict_request(body, 10**9)
    np.testing.assert_array_equal(X, rows)
    pages.give_back(body)
    del body
    assert len(pages._KEPT_BUFFERS) == 1
