"""The server's estimate of a LightGBM job's memory against the peak a real fit reaches.

For each case (synthetic regression data, fixed seed), the estimate is what the server computes
before it accepts a job (`LightGBMTrainer.memory`, with `look`, as the server does where the rough
estimate is too much); the peak is what the worker's memory limit measures: the highest anonymous
resident memory (RssAnon, sampled every 5 ms; the input, mapped from its file as a worker maps it,
is not counted) of a fresh Python process that builds the same LightGBM Dataset and trains the same
rounds. The estimate counts the process itself (PROCESS_BYTES), so the two are compared whole.
Reported: both, and their ratio; an estimate well under its peak lets through a job that the hard
limit then stops (`out_of_memory`), one well over it refuses a job that would have fit.

    python bench/memory_estimate.py                      # the default cases, a few minutes
    python bench/memory_estimate.py --cases 20000x20:4096:255:5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from boostream.trainers.base import TrainingData, validate_params  # noqa: E402
from boostream.trainers.lightgbm import LightGBMTrainer  # noqa: E402

from _common import print_header  # noqa: E402

# rows x features : num_leaves : max_bin : rounds
DEFAULT_CASES = "20000x20:4096:255:5,20000x20:255:255:50,200000x50:31:255:20,4x1:131072:255:100"

FIT = textwrap.dedent(
    """
    import json, sys, threading, time
    import numpy as np, lightgbm
    folder, leaves, bins, rounds = sys.argv[1], *(int(v) for v in sys.argv[2:5])
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    X, y = np.load(folder + "/X.npy", mmap_mode="r"), np.load(folder + "/y.npy", mmap_mode="r")
    params = {"objective": "regression", "num_leaves": leaves, "max_bin": bins, "verbose": -1,
              "min_data_in_leaf": 1, "min_sum_hessian_in_leaf": 0.0, "num_threads": 1}
    data = lightgbm.Dataset(X, y, params={"max_bin": bins, "verbose": -1})
    lightgbm.train(params, data, num_boost_round=rounds, valid_sets=[data])
    done.set()
    sampler.join()
    print(json.dumps({"peak_bytes": peak[0]}))
    """
)


def parse_case(text: str) -> tuple[int, int, int, int, int]:
    shape, leaves, bins, rounds = text.split(":")
    rows, cols = shape.lower().split("x")
    return int(rows), int(cols), int(leaves), int(bins), int(rounds)


def table(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, cols))
    np.round(X, 4, out=X)
    return X, X[:, 0] + rng.normal(size=rows)


def estimate(X: np.ndarray, y: np.ndarray, leaves: int, bins: int, rounds: int) -> int:
    data = TrainingData(X=X, y=y, feature_names=[f"f{i}" for i in range(X.shape[1])])
    params = validate_params(
        LightGBMTrainer.params,
        {"num_leaves": leaves, "max_bin": bins, "n_estimators": rounds, "min_data_in_leaf": 1},
    )
    return sum(term.bytes for term in LightGBMTrainer(1).memory(data, "regression", params, look=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="ROWSxCOLS:LEAVES:BINS:ROUNDS, comma-separated")
    args = parser.parse_args()
    print_header("memory_estimate: the server's estimate of a LightGBM job against a real fit's peak RSS")
    print(f"{'case':<44} {'estimate MiB':>12} {'peak MiB':>9} {'estimate/peak':>13}")
    for text in args.cases.split(","):
        rows, cols, leaves, bins, rounds = parse_case(text)
        X, y = table(rows, cols)
        guess = estimate(X, y, leaves, bins, rounds)
        with tempfile.TemporaryDirectory() as folder:
            np.save(f"{folder}/X.npy", X)
            np.save(f"{folder}/y.npy", y)
            del X, y
            run = subprocess.run(
                [sys.executable, "-c", FIT, folder, *(str(v) for v in (leaves, bins, rounds))],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
        peak = json.loads(run.stdout.strip().splitlines()[-1])["peak_bytes"]
        label = f"{rows}x{cols}, {leaves} leaves, {bins} bins, {rounds} rounds"
        print(f"{label:<44} {guess / 2**20:12.0f} {peak / 2**20:9.0f} {guess / peak:13.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
