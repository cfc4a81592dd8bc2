"""How long decoding a training body stops every other Python thread of the server.

The server decodes bodies in a worker thread (anyio.to_thread), which keeps the event loop free
only if the decoding releases the GIL. This script runs the server's `decode_train_request` on
one body, in process, while another thread ticks every millisecond, and reports each step's
duration and the longest gap between two ticks (the longest stall of any other thread: the event
loop, /health, other jobs' progress). No server and no network.

    python bench/decode_stalls.py                 # 1M x 50 (a 1 GB body)
    python bench/decode_stalls.py --size 100kx20
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import Watchdog, parse_size, print_header, regression_data, size_label, train_body  # noqa: E402


class Ticker:
    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop:
            time.sleep(0.001)
            now = time.perf_counter()
            self.gaps.append(now - last)
            last = now

    def measure(self, name: str, function):
        self.gaps.clear()
        started = time.perf_counter()
        result = function()
        elapsed = time.perf_counter() - started
        time.sleep(0.005)  # let the ticker see the end of a stall
        stall = max(self.gaps) if self.gaps else elapsed
        print(f"  {name:<34} {elapsed:7.3f} s   longest stall of another thread {stall * 1000:8.1f} ms")
        sys.stdout.flush()
        return result

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1Mx50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=240.0)
    args = parser.parse_args()
    rows, cols = parse_size(args.size)

    import msgspec
    import simdjson

    from boostream.requests import json_body as decoding
    from boostream.trainers import create_trainers

    print_header(f"decode_stalls: decoding a {size_label(rows, cols)} body in process")
    with Watchdog(args.max_seconds):
        X, y = regression_data(rows, cols, args.seed)
        body = bytearray(train_body("lightgbm", X, y, {"n_estimators": 200}))
        del X, y
        print(f"# body: {len(body) / 1e6:.1f} MB")
        trainers = create_trainers(1)
        ticker = Ticker()
        try:
            print("## the whole decode_train_request (the server's decoding thread)")
            for label in ("first (cold parser pool)", "second (warm)"):
                spec = ticker.measure(label, lambda: decoding.decode_train_request(body, trainers, {}, 10**10))
                del spec
            print("## its steps (a fresh parser first, then the same one again)")
            request = ticker.measure(
                "msgspec.json.decode (shape, Raw)", lambda: msgspec.json.decode(body, type=decoding.TrainRequestBody)
            )
            simd = simdjson.Parser()
            for label in ("cold", "warm"):
                doc = ticker.measure(f"simdjson Parser.parse, {label}", lambda: simd.parse(memoryview(request.X)))
                values = ticker.measure(
                    f"Document.as_buffer, {label}",
                    lambda doc=doc: np.frombuffer(doc.as_buffer(of_type="d"), dtype=np.float64),
                )
                if label == "warm":
                    ticker.measure("row lengths (Python loop)", lambda doc=doc: any(len(row) != cols for row in doc))
                    ticker.measure("np.isinf(values).any()", lambda values=values: np.isinf(values).any())
                del doc, values
            ticker.measure("bytearray.count(b'[') over X", lambda: decoding._count_in(body, request.X, b"["))
        finally:
            ticker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
