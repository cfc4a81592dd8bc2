"""How large files are written and large arrays allocated, so that fresh memory is cheap.

On a virtual machine whose free memory goes back to the host (virtio-balloon free page reporting,
in 2 MiB blocks), memory that was freed a few seconds ago costs far more to use again in large
blocks than in small pages (`bench/fresh_memory.py`, docs/benchmarks.md section 10):
- writing 420 MB to a file in 8 MiB `write()` calls took 1.1-1.3 s (0.09-0.12 s warm); in 256 KiB
  calls 0.12 s, cold or warm (the page cache takes large folios for large writes);
- filling a fresh 400 MB numpy array took 0.86 s with numpy's default `madvise(MADV_HUGEPAGE)`
  (0.04 s warm), and 0.16-0.21 s without it, cold or warm.
The arrays decoded from a request are written once and read a few times (LightGBM bins them into
its own structures), so huge pages buy them nothing back. `empty` maps such an array in one call
(`MADV_POPULATE_WRITE`, Linux 5.14) instead of one page fault at a time, without the GIL.

An earlier version also kept the memory of a decoded table for the next one of its size; it gained
less than the 10% end to end it had to show (docs/benchmarks.md, section 12), and was removed.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

# Largest single write(): larger ones made the page cache allocate large blocks (see above).
WRITE_SLICE_BYTES = 256 << 10
# Arrays from this size on are mapped by `empty` itself; smaller ones come from numpy's allocator.
MAPPED_MIN_BYTES = 4 << 20
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


def empty(
    shape: tuple[int, ...], dtype: np.dtype[Any] | type = np.float64, order: Literal["C", "F"] = "C"
) -> np.ndarray:
    """np.empty(shape, dtype, order), for an array about to be written whole: from MAPPED_MIN_BYTES
    on, on Linux, in memory mapped at once. Elsewhere, or for smaller arrays, plain np.empty."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < MAPPED_MIN_BYTES or not sys.platform.startswith("linux"):
        return np.empty(shape, dtype, order=order)
    # The array keeps the mapping alive; it is unmapped when the last view of it goes.
    mapped = np.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), np.uint8, count=size)
    populate(mapped)
    return mapped.view(dtype).reshape(shape, order=order)


def populate(buffer: np.ndarray | mmap.mmap, start: int = 0, end: int | None = None) -> None:
    """Fault in the pages of a fresh writable mapping in one call (MADV_POPULATE_WRITE), where the
    system can: all of them, or those of a map from `start` (a multiple of the page size) to `end`.
    Through ctypes, which lets go of the GIL: mmap.madvise holds it, up to 1 s for 400 MB in the
    server, with the event loop stopped. An older kernel refuses (EINVAL): then the pages are
    faulted in as they are written."""
    if _madvise is None:
        return
    if isinstance(buffer, np.ndarray):
        _madvise(ctypes.c_void_p(buffer.ctypes.data), ctypes.c_size_t(buffer.nbytes), MADV_POPULATE_WRITE)
        return
    end = len(buffer) if end is None else end
    anchor = ctypes.c_char.from_buffer(buffer)  # holds the map open while it is advised
    try:
        _madvise(ctypes.c_void_p(ctypes.addressof(anchor) + start), ctypes.c_size_t(end - start), MADV_POPULATE_WRITE)
    finally:
        del anchor


def _libc_madvise() -> Callable[..., int] | None:
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _libc_madvise() if sys.platform.startswith("linux") else None


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
        write_all(file, (array if array.flags.c_contiguous else array.T).data)


def avoid_huge_pages() -> None:
    """Stop numpy from asking for transparent huge pages for large arrays, unless the operator chose
    with NUMPY_MADVISE_HUGEPAGE (numpy's own switch, read when numpy is imported)."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)

