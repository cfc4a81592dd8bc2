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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Largest single write(): larger ones made the page cache allocate large blocks (see above).
WRITE_SLICE_BYTES = 256 << 10


def write_all(file: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """file.write(data), in slices of WRITE_SLICE_BYTES."""
    with memoryview(data) as view:
        if view.nbytes == 0:
            return
        with view.cast("B") as raw:
            for start in range(0, len(raw), WRITE_SLICE_BYTES):
                file.write(raw[start : start + WRITE_SLICE_BYTES])


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
