"""What fresh memory costs on this machine: the measurements behind `boostream/memory.py`.

    python bench/fresh_memory.py                 # about 3 minutes here
    python bench/fresh_memory.py --idle-s 5 --mb 100

On a virtual machine that hands freed memory back to its host (virtio-balloon free page reporting),
memory used again after a pause can cost far more than memory reused at once. Each case runs
`--idle-s` seconds after the previous one (`after idle`), then again at once (`at once`):

- writing `--mb` MB to a new temporary file in 8 MiB `write()` calls, and in 256 KiB calls
  (`memory.WRITE_SLICE_BYTES`, what the server uses for spooled uploads and saved inputs);
- filling a fresh numpy array of `--mb` MB, with numpy's default `madvise(MADV_HUGEPAGE)` for large
  arrays and without it (`memory.avoid_huge_pages`, what `boostream serve` does);
- filling an array whose memory is first mapped in one call (`madvise(MADV_POPULATE_WRITE)`, what
  `memory.empty` does for fresh memory); Linux only.

No target: the figures explain choices made in the server (docs/benchmarks.md, section 10).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Watchdog, print_header  # noqa: E402

if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

import numpy as np  # noqa: E402

from boostream import memory  # noqa: E402


def write_file(folder: str, size: int, write_bytes: int) -> float:
    data = bytearray(os.urandom(min(size, 8 << 20)))
    started = time.perf_counter()
    with tempfile.TemporaryFile(dir=folder) as file:
        written = 0
        while written < size:
            view = memoryview(data)[: min(len(data), size - written)]
            for start in range(0, len(view), write_bytes):
                file.write(view[start : start + write_bytes])
            written += len(view)
    return time.perf_counter() - started


def fill_array(size: int, huge_pages: bool) -> float:
    core = getattr(np, "_core", None) or np.core
    core.multiarray._set_madvise_hugepage(huge_pages)
    started = time.perf_counter()
    array = np.empty(size // 8)
    array.fill(1.0)
    elapsed = time.perf_counter() - started
    del array
    return elapsed


def fill_mapped(size: int) -> float:
    started = time.perf_counter()
    array = memory.empty((size // 8,))
    array.fill(1.0)
    elapsed = time.perf_counter() - started
    del array
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=420, help="MB written or filled per case (default 420)")
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds idle before each case (default 20)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="folder for the temporary files")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    print_header("fresh_memory: writing files and filling arrays, after idle and at once")
    size = args.mb * 1_000_000
    cases = {
        "file, 8 MiB writes": lambda: write_file(args.dir, size, 8 << 20),
        f"file, {memory.WRITE_SLICE_BYTES >> 10} KiB writes": lambda: write_file(
            args.dir, size, memory.WRITE_SLICE_BYTES
        ),
        "array, huge pages (numpy's default)": lambda: fill_array(size, True),
        "array, no huge pages (boostream serve)": lambda: fill_array(size, False),
    }
    if sys.platform.startswith("linux"):
        cases["array, mapped in one call (memory.empty)"] = lambda: fill_mapped(size)
    with Watchdog(args.max_seconds):
        print(f"\n## {args.mb} MB per case; {args.idle_s:g} s idle before each 'after idle'")
        print(f"{'case':<42} {'repeat':>6} {'after idle s':>12} {'at once s':>10}")
        for name, run in cases.items():
            for repeat in range(args.repeats):
                time.sleep(args.idle_s)
                idle = run()
                warm = run()
                print(f"{name:<42} {repeat + 1:>6} {idle:12.3f} {warm:10.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
