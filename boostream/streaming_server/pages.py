"""How the server writes large files and allocates large arrays, so that fresh memory is cheap.

On a virtual machine whose free memory goes back to the host (virtio-balloon free page reporting,
in 2 MiB blocks), memory that was freed a few seconds ago costs far more to use again in large
blocks than in small pages. Measured on a 2-core VM of that kind, after 20 s idle
(`bench/fresh_memory.py`, docs/benchmarks.md section 10; `bench/ingest.py` sees the same, as each
of its requests follows a 20 s in-process fit):
- writing 420 MB to a file in 8 MiB `write()` calls took 1.1-1.3 s (0.09-0.12 s warm); in 256 KiB
  calls 0.12 s, cold or warm (the page cache takes large folios for large writes);
- filling a fresh 400 MB numpy array took 0.86 s with numpy's default `madvise(MADV_HUGEPAGE)`
  (0.04 s warm), and 0.16-0.21 s without it, cold or warm; decoding a 1M x 50 Parquet body,
  1.05-1.34 s against 0.47-0.62 s.
The arrays the server allocates are written once and read a few times (LightGBM bins them into its
own structures), so huge pages buy them nothing back.

Fresh memory costs most inside the server itself, between jobs: mapping the 400 MB of a 1M x 50 X
took 0.57-0.98 s of CPU there (timed in the server's decoding thread), against 0.13-0.18 s in a
small process (`bench/fresh_memory.py`). So `empty`, which allocates the large arrays the server
fills whole (X, decoded from JSON or Parquet), maps them in one call (`MADV_POPULATE_WRITE`, Linux
5.14; for Parquet, while the first columns are read) and, when such an array is garbage, keeps its
memory for KEEP_S seconds for the next array of about its size. A sweep that sends the same table
again and again decodes it into memory already mapped: 1M x 50 from Parquet in 0.15-0.27 s
instead of 0.8-1.3 s (`bench/ingest.py`, docs/benchmarks.md section 9).
A JSON body's buffer is kept the same way (`buffer`, `give_back`): it is the largest fresh block
of a JSON request.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import queue
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import BinaryIO, Callable, Generic, Optional, TypeVar

import numpy as np

# Largest single write(): larger ones made the page cache allocate large blocks (see above).
WRITE_SLICE_BYTES = 256 << 10
# Arrays from this size on are mapped by `empty` itself; smaller ones come from numpy's allocator.
MAPPED_MIN_BYTES = 4 << 20
# How long the memory of an array from `empty` (or a body given back) is kept once nothing uses it,
# how many such blocks of each kind at most, and how much larger than asked one may be to serve.
KEEP_S = 60.0
KEEP_MOST = 2
KEEP_FIT = 1.25
Block = TypeVar("Block", mmap.mmap, bytearray)
# Not in Python's mmap module before 3.13; the value is Linux's own.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def write_all(file: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """file.write(data), in slices of WRITE_SLICE_BYTES."""
    with memoryview(data) as view:
        if view.nbytes == 0:
            return
        with view.cast("B") as raw:
            for start in range(0, len(raw), WRITE_SLICE_BYTES):
                file.write(raw[start : start + WRITE_SLICE_BYTES])


def empty(shape: tuple[int, ...], dtype: np.dtype | type = np.float64, order: str = "C") -> np.ndarray:
    """np.empty(shape, dtype, order), for an array about to be written whole: from MAPPED_MIN_BYTES
    on, on Linux, in memory that is mapped at once, either kept from an earlier array of between
    one and KEEP_FIT (1.25) times its size (with that array's values until written) or fresh. Elsewhere, or
    for smaller arrays, plain np.empty."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < MAPPED_MIN_BYTES or not sys.platform.startswith("linux"):
        return np.empty(shape, dtype, order=order)
    mapping = _KEPT.take(size) or _mapped(size)
    # Every view of the array, however derived, has `owner` as its base (numpy collapses a view's
    # base to the first array that is not itself a view of an array): when `owner` is garbage, no
    # array is left that can reach the memory, and it may be handed out again.
    owner = np.frombuffer(mapping, np.uint8, count=size)
    weakref.finalize(owner, _KEPT.keep, mapping).atexit = False
    return owner.view(dtype).reshape(shape, order=order)


def buffer(size: int) -> bytearray:
    """bytearray(size), for a body about to be written whole: from MAPPED_MIN_BYTES on, one that
    `give_back` kept, of between one and KEEP_FIT times `size` (with its old bytes until written), when
    there is one."""
    kept = _KEPT_BUFFERS.take(size) if size >= MAPPED_MIN_BYTES else None
    if kept is None:
        return bytearray(size)
    if size <= len(kept):
        del kept[size:]  # in place: a bytearray keeps its memory when it shrinks by less than half
    else:
        kept.extend(bytes(size - len(kept)))  # within its memory, which holds at least `size`
    return kept


def give_back(body: bytearray) -> None:
    """Keep `body` for `buffer`, if nothing but the caller holds it, and in one place: call it as
    `give_back(name)` and then `del name`. Not kept while another reference or a view (memoryview,
    array, msgspec.Raw) of it is left."""
    if len(body) < MAPPED_MIN_BYTES or _references(body) > _UNSHARED:
        return
    try:
        last = body.pop()  # BufferError while a memoryview or an array still reads it
    except BufferError:
        return
    body.append(last)  # both in place: within the memory the bytearray has
    _KEPT_BUFFERS.keep(body)


def _references(body: bytearray) -> int:
    return sys.getrefcount(body)


def _as_give_back_counts(body: bytearray) -> int:
    return _references(body)  # from the same depth of calls as in give_back


def _calibrated() -> int:
    """What `_references` counts in give_back for an object that only give_back's caller holds."""
    probe = bytearray()  # held by this frame alone
    return _as_give_back_counts(probe)


def keep_memory(seconds: float) -> None:
    """How long `empty` and `give_back` keep memory (KEEP_S); 0 keeps none."""
    global KEEP_S
    if not 0 <= seconds < 1e9:  # not NaN or infinity either: kept blocks must go some day
        raise ValueError(f"keep_memory_s must be 0 or more (in seconds), not {seconds}")
    KEEP_S = seconds
    if seconds == 0:
        _KEPT.expire()
        _KEPT_BUFFERS.expire()


def kept_memory() -> dict[str, float | int]:
    """What is kept for reuse now: for /health."""
    arrays, bodies = _KEPT.usage(), _KEPT_BUFFERS.usage()
    return {"keep_s": KEEP_S, "kept_blocks": arrays[0] + bodies[0], "kept_bytes": arrays[1] + bodies[1]}


def _mapped(size: int) -> mmap.mmap:
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if _madvise is not None:
        # Through ctypes, which lets go of the GIL (mmap.madvise holds it: up to 1 s for 400 MB in
        # the server, with the event loop stopped). An older kernel refuses (EINVAL): then the pages
        # are faulted in as they are written.
        address = np.frombuffer(mapping, np.uint8).ctypes.data  # the array goes at once: no export left
        _madvise(ctypes.c_void_p(address), ctypes.c_size_t(size), MADV_POPULATE_WRITE)
    return mapping


def _libc_madvise() -> Optional[Callable[..., int]]:
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _libc_madvise() if sys.platform.startswith("linux") else None


class _Kept(Generic[Block]):
    """Blocks of memory that nothing uses any more (mappings from `empty`, bodies from
    `give_back`): at most KEEP_MOST, each for KEEP_S seconds. `capacity` tells how many bytes a
    block can hold. A block's memory goes when the last reference to it does.

    `keep` runs in finalizers, which the garbage collector may call in any thread at any
    allocation, even in this class while it holds its lock: so `keep` takes no lock, and only
    queues the block (SimpleQueue.put is safe there); the others take the queued blocks in under
    the lock. Blocks let go are dropped after the lock is released (unmapping takes time). One
    timer at a time lets blocks go once they are KEEP_S old."""

    def __init__(self, capacity: Callable[[Block], int]) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._arriving: queue.SimpleQueue[tuple[float, Block]] = queue.SimpleQueue()
        self._blocks: list[tuple[float, Block]] = []  # (kept since, block), oldest first
        self._timer: Optional[threading.Timer] = None

    def take(self, size: int) -> Optional[Block]:
        """The smallest kept block that holds `size` to KEEP_FIT x `size` bytes; or None, and then
        every kept block is let go first, so that the fresh one does not come on top of them."""
        taken: Optional[Block] = None
        dropped: list[tuple[float, Block]] = []
        with self._lock:
            self._take_in()
            fitting = [entry for entry in self._blocks if size <= self._capacity(entry[1]) <= KEEP_FIT * size]
            if fitting:
                entry = min(fitting, key=lambda entry: self._capacity(entry[1]))
                self._blocks.remove(entry)
                taken = entry[1]
            else:
                dropped, self._blocks = self._blocks, []
        del dropped  # unmapped here, outside the lock
        self._arm()  # for a block a finalizer queued while the lock was held
        return taken

    def keep(self, block: Block) -> None:
        if KEEP_S > 0:
            self._arriving.put((time.monotonic(), block))
            self._arm()

    def expire(self) -> None:
        """Let go of the blocks kept for KEEP_S seconds or more; wait for the next one to be."""
        now = time.monotonic()
        with self._lock:
            self._take_in()
            self._timer = None
            dropped = [entry for entry in self._blocks if now - entry[0] >= KEEP_S - 0.01]
            self._blocks = [entry for entry in self._blocks if now - entry[0] < KEEP_S - 0.01]
        del dropped
        self._arm()

    def _take_in(self) -> None:
        """Move queued blocks into the list, the oldest let go beyond KEEP_MOST; under the lock."""
        while not self._arriving.empty():
            self._blocks.append(self._arriving.get_nowait())
        if KEEP_S <= 0 or KEEP_MOST <= 0:
            self._blocks.clear()
        elif len(self._blocks) > KEEP_MOST:
            del self._blocks[: len(self._blocks) - KEEP_MOST]

    def _arm(self) -> None:
        """Start the timer, unless one is waiting, for when the oldest block is KEEP_S old. Not in
        a finalizer's thread if the lock is taken: the timer that waits will see to it."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._take_in()
            if self._timer is not None or not self._blocks:
                return
            oldest = self._blocks[0][0]
            timer = threading.Timer(max(0.0, oldest + KEEP_S - time.monotonic()), self.expire)
            timer.daemon = True
            try:
                timer.start()
            except RuntimeError:  # the interpreter is shutting down
                return
            self._timer = timer
        finally:
            self._lock.release()

    def __len__(self) -> int:
        return self.usage()[0]

    def usage(self) -> tuple[int, int]:
        """How many blocks are kept, and how many bytes they hold."""
        with self._lock:
            self._take_in()
            return len(self._blocks), sum(self._capacity(block) for _, block in self._blocks)


_KEPT: _Kept[mmap.mmap] = _Kept(len)
_KEPT_BUFFERS: _Kept[bytearray] = _Kept(lambda body: body.__alloc__() - 1)  # less its trailing NUL
_UNSHARED = _calibrated()


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save(path, array, allow_pickle=False), writing the data with write_all; C or Fortran order
    is kept, so np.load reads back the same array."""
    if array.dtype.hasobject:
        raise ValueError("arrays of Python objects are not saved")
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        array = np.ascontiguousarray(array)
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, np.lib.format.header_data_from_array_1_0(array))
        # The data in the order the header names: the transpose of a Fortran-ordered array is C-ordered.
        write_all(file, array if array.flags.c_contiguous else array.T)


def avoid_huge_pages() -> None:
    """Stop numpy from asking for transparent huge pages for large arrays, unless the operator chose
    with NUMPY_MADVISE_HUGEPAGE (numpy's own switch, read when numpy is imported)."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)
