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
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np

# Largest single write(): larger ones made the page cache allocate large blocks (see above).
WRITE_SLICE_BYTES = 256 << 10
# Arrays from this size on are mapped by `empty` itself; smaller ones come from numpy's allocator.
MAPPED_MIN_BYTES = 4 << 20
# How long the memory of an array from `empty` is kept once the array is garbage, and how many such
# blocks at most.
KEEP_S = 60.0
KEEP_MOST = 2
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
    one and two times its size (with that array's values until written) or fresh. Elsewhere, or
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


def keep_memory(seconds: float) -> None:
    """How long `empty` keeps the memory of a garbage array (KEEP_S); 0 keeps none."""
    global KEEP_S
    if seconds < 0:
        raise ValueError(f"keep_memory_s must be 0 or more, not {seconds}")
    KEEP_S = seconds
    if seconds == 0:
        _KEPT.expire()


def _mapped(size: int) -> mmap.mmap:
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping.madvise(MADV_POPULATE_WRITE)
    except OSError:
        pass  # an older kernel (EINVAL): the pages are faulted in as they are written
    return mapping


class _Kept:
    """Blocks of memory from `empty` whose arrays are garbage: at most KEEP_MOST, each for KEEP_S
    seconds. A block is unmapped when the last reference to it goes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blocks: list[tuple[float, mmap.mmap]] = []  # (kept since, block), oldest first

    def take(self, size: int) -> Optional[mmap.mmap]:
        """The smallest kept block of `size` to 2 x `size` bytes; or None, and then every kept
        block is let go first, so that the fresh one does not come on top of them."""
        with self._lock:
            fitting = [entry for entry in self._blocks if size <= len(entry[1]) <= 2 * size]
            if fitting:
                entry = min(fitting, key=lambda entry: len(entry[1]))
                self._blocks.remove(entry)
                return entry[1]
            self._blocks.clear()
            return None

    def keep(self, block: mmap.mmap) -> None:
        if KEEP_S <= 0:
            return
        with self._lock:
            self._blocks.append((time.monotonic(), block))
            del self._blocks[:-KEEP_MOST]
        timer = threading.Timer(KEEP_S, self.expire)
        timer.daemon = True
        try:
            timer.start()
        except RuntimeError:  # the interpreter is shutting down
            pass

    def expire(self) -> None:
        """Let go of the blocks kept for KEEP_S seconds or more."""
        now = time.monotonic()
        with self._lock:
            self._blocks = [entry for entry in self._blocks if now - entry[0] < KEEP_S - 0.01]

    def __len__(self) -> int:
        return len(self._blocks)


_KEPT = _Kept()


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
