"""WarpGBM on the GPU: the cost of streaming progress, the end-to-end overhead of POST
/train/stream, and the delivery latency of progress events. Needs an NVIDIA GPU with PyTorch
and WarpGBM; elsewhere it stops at once with a message saying what is missing (exit status 2).

  1. in process, interleaved: plain `warpgbm.core.WarpGBM(...).fit(X, y)` on the float64 X as
     given; the same on X already converted to Fortran-order float32 (what our trainer hands
     WarpGBM; the conversion not timed); and our `WarpGBMTrainer().fit(data, objective, params,
     reporter)` with a reporter that only records. Overhead = trainer / plain - 1 (target <= 3%).
  2. end to end, like e2e_overhead.py: the body serialized before timing, the timer from just
     before sending to the receipt of `complete`; the first request reported as cold; plain
     in-process fits and requests interleaved; ratio e2e / in-process (target <= 1.5) and
     (e2e - decode_s - fit_s) as % of fit_s (target <= 5%).
  3. progress latency, like progress_latency.py: client receipt time - event `ts`, from the
     requests of part 2, from one job of about --latency-s seconds, and from --streams streams
     posted at once (one GPU job at a time: the others wait). Target p99 <= 50 ms.

Repeats stop early rather than overrun the time budget (about 30 s short of --max-seconds, a
hard limit); the output says so when they do.

    python bench/gpu_warpgbm.py            # 1M x 50, 200 rounds, max_depth 6, num_bins 63
    python bench/gpu_warpgbm.py --quick    # 200k x 50, 100 rounds, fewer repeats
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import (  # noqa: E402
    Server,
    Watchdog,
    e2e_figures,
    format_summary,
    free_memory,
    median,
    print_e2e,
    print_header,
    progress_latencies,
    regression_data,
    size_label,
    stream_train,
    summary,
    train_body,
    verdict,
)

OVERHEAD_TARGET_PCT = 3.0
RATIO_TARGET = 1.5
OUTSIDE_TARGET_PCT = 5.0
P99_TARGET_MS = 50.0


def fail(message: str) -> None:
    sys.stderr.write(f"gpu_warpgbm: cannot run here: {message}\n")
    sys.exit(2)


def check_gpu():
    """Fail fast, before any data is made, with the reason WarpGBM cannot train here."""
    try:
        from boostream.trainers.warpgbm import WarpGBMTrainer
    except ImportError as error:
        fail(f"boostream is not importable ({error}); run from the project's environment")
    availability = WarpGBMTrainer().availability()
    if not availability.available:
        fail(availability.reason or "WarpGBM is unavailable")
    from boostream.trainers import warpgbm as module

    torch, core, _ = module._library()  # also silences WarpGBM's prints, for every fit below
    return torch, core, WarpGBMTrainer, availability.device_name


class RecordingReporter:
    """The Reporter protocol (boostream/trainers/base.py), recording only."""

    cancelled = False

    def __init__(self) -> None:
        self.rounds: list[tuple[int, float]] = []

    def report(self, iteration: int, metrics) -> None:
        self.rounds.append((iteration, time.perf_counter()))


class Bench:
    def __init__(self, torch, core, trainer_class, rounds: int, max_depth: int, num_bins: int) -> None:
        from boostream.trainers.base import validate_params

        self.torch, self.core, self.trainer_class = torch, core, trainer_class
        self.params = validate_params(
            trainer_class.params, {"n_estimators": rounds, "max_depth": max_depth, "num_bins": num_bins}
        )
        self.request_params = {"n_estimators": rounds, "max_depth": max_depth, "num_bins": num_bins}

    def _warpgbm(self, rounds: int):
        from boostream.trainers.warpgbm import estimator_arguments

        return self.core.WarpGBM(**estimator_arguments("regression", self.params | {"n_estimators": rounds}))

    def plain(self, X: np.ndarray, y: np.ndarray, rounds: int | None = None) -> float:
        torch = self.torch
        model = self._warpgbm(rounds or self.params["n_estimators"])
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.fit(X, y)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        del model
        torch.cuda.empty_cache()
        return elapsed

    def trainer(self, X: np.ndarray, y: np.ndarray, rounds: int | None = None) -> tuple[float, RecordingReporter]:
        from boostream.trainers.base import TrainingData

        torch = self.torch
        params = dict(self.params, n_estimators=rounds or self.params["n_estimators"])
        data = TrainingData(X=X, y=y, feature_names=[f"f{i}" for i in range(X.shape[1])])
        reporter = RecordingReporter()
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = self.trainer_class().fit(data, "regression", params, reporter)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        assert result.iterations == params["n_estimators"] and len(reporter.rounds) == params["n_estimators"]
        return elapsed, reporter


class Budget:
    """The soft time budget of the whole run: later repeats are skipped rather than overrun it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)


def part_in_process(
    bench: Bench, X: np.ndarray, y: np.ndarray, repeats: int, budget: Budget, until_left: float
) -> dict:
    """Up to `repeats` interleaved repeats, fewer if one more would leave less than `until_left`
    seconds of the budget."""
    print(f"\n## 1. in process: plain WarpGBM.fit vs WarpGBMTrainer.fit (up to {repeats} interleaved repeats)")
    small = slice(0, min(len(X), 50_000))
    started = time.perf_counter()
    bench.plain(X[small], y[small], rounds=10)
    bench.trainer(X[small], y[small], rounds=10)
    print(f"  warm-up (CUDA context, kernels) {time.perf_counter() - started:.2f} s")
    XF = np.asfortranarray(X, dtype=np.float32)
    plain, plain_f32, ours = [], [], []
    reporter = None
    last_repeat_s = 0.0
    for i in range(repeats):
        if i and budget.left() - last_repeat_s < until_left:
            print(f"  (stopping after {i} repeats to stay within the time budget)")
            break
        repeat_started = time.perf_counter()
        plain.append(bench.plain(X, y))
        plain_f32.append(bench.plain(XF, y))
        seconds, reporter = bench.trainer(X, y)
        ours.append(seconds)
        last_repeat_s = time.perf_counter() - repeat_started
        print(
            f"  repeat {i + 1}: plain {plain[-1]:.3f} s | plain on Fortran "
            f"float32 {plain_f32[-1]:.3f} s | trainer {ours[-1]:.3f} s"
        )
        sys.stdout.flush()
    del XF
    stamps = [t for _, t in reporter.rounds]
    per_round = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    m_plain, m_f32, m_ours = median(plain), median(plain_f32), median(ours)
    overhead = 100.0 * (m_ours / m_plain - 1.0)
    overhead_f32 = 100.0 * (m_ours / m_f32 - 1.0)
    print(
        f"  medians: plain {m_plain:.3f} s, plain on float32 {m_f32:.3f} s, "
        f"trainer {m_ours:.3f} s ({per_round * 1000:.2f} ms/round in the trainer)"
    )
    print(f"  trainer overhead vs plain fit(X): {overhead:+.2f}%  -> {verdict(overhead, OVERHEAD_TARGET_PCT, '%')}")
    print(f"  trainer overhead vs plain fit(float32 Fortran X): {overhead_f32:+.2f}%")
    return {
        "plain": m_plain,
        "plain_f32": m_f32,
        "trainer": m_ours,
        "overhead_pct": overhead,
        "overhead_f32_pct": overhead_f32,
        "per_round_s": per_round,
    }


def e2e_once(client, server: Server, body: bytes) -> dict:
    run = stream_train(client, server.url, body)
    return e2e_figures(run) | {"latencies": progress_latencies(run)}


def part_e2e(
    bench: Bench, server: Server, X: np.ndarray, y: np.ndarray, repeats: int, budget: Budget, until_left: float
) -> dict:
    import httpx

    print(
        "\n## 2. end to end: POST /train/stream vs plain in-process "
        f"fit (up to {repeats} interleaved repeats after a cold request)"
    )
    started = time.perf_counter()
    body = train_body("warpgbm", X, y, bench.request_params)
    print(f"  body: {len(body) / 1e6:.1f} MB of JSON, serialized in {time.perf_counter() - started:.2f} s (not timed)")
    latencies: list[float] = []
    with httpx.Client() as client:
        cold = e2e_once(client, server, body)
        print_e2e("cold", cold)
        latencies += cold["latencies"]
        inproc, runs = [], []
        pair_s = 0.0
        for i in range(repeats):
            if i and budget.left() - pair_s < until_left:
                print(f"  (stopping after {i} repeats to stay within the time budget)")
                break
            pair_started = time.perf_counter()
            free_memory()
            inproc.append(bench.plain(X, y))
            print(f"  in-proc {i + 1} {inproc[-1]:7.3f} s")
            free_memory()
            runs.append(e2e_once(client, server, body))
            print_e2e(f"e2e {i + 1}", runs[-1])
            latencies += runs[-1]["latencies"]
            pair_s = time.perf_counter() - pair_started
    del body
    free_memory()
    med = {
        key: median([r[key] for r in runs])
        for key in ("e2e_s", "decode_s", "fit_s", "artifact_s", "outside_s", "outside_pct")
    }
    med["inproc_s"] = median(inproc)
    med["ratio"] = med["e2e_s"] / med["inproc_s"]
    med["cold_e2e_s"] = cold["e2e_s"]
    print(
        f"  medians: in-process {med['inproc_s']:.3f} s | e2e {med['e2e_s']:.3f} s | decode "
        f"{med['decode_s']:.3f} s | fit {med['fit_s']:.3f} s | artifact {med['artifact_s']:.4f} s"
    )
    print(f"  ratio e2e / in-process = {med['ratio']:.3f}  -> {verdict(med['ratio'], RATIO_TARGET)}")
    print(
        f"  outside fit apart from decode = {med['outside_pct']:.1f}% of "
        f"fit  -> {verdict(med['outside_pct'], OUTSIDE_TARGET_PCT, '%')}"
    )
    med["latencies"] = latencies
    return med


def part_latency(bench: Bench, server: Server, latency_s: float, streams: int, seed: int, budget: Budget) -> dict:
    import httpx

    # One job of latency_s, then `streams` jobs of latency_s / streams in all, plus uploads.
    latency_s = max(2.0, min(latency_s, (budget.left() - 20.0) / 2.5))
    rows, cols = 200_000, 50
    X, y = regression_data(rows, cols, seed + 1)
    seconds, reporter = bench.trainer(X, y, rounds=50)
    stamps = [t for _, t in reporter.rounds]
    per_round = (stamps[-1] - stamps[5]) / (len(stamps) - 6)
    rounds = max(50, int(latency_s / per_round))
    print(
        f"\n## 3. progress latency: {size_label(rows, cols)}, {per_round * 1000:.2f} "
        f"ms/round in process -> {rounds} rounds (~{latency_s:.0f} s) for one stream"
    )
    body = train_body("warpgbm", X, y, dict(bench.request_params, n_estimators=rounds))
    with httpx.Client() as client:
        single = progress_latencies(stream_train(client, server.url, body))
    print(f"  one stream:    {format_summary(summary(single))}")

    short = max(50, rounds // streams)
    bodies = [
        train_body("warpgbm", X, y, dict(bench.request_params, n_estimators=short, seed=i)) for i in range(streams)
    ]
    results: list = [None] * streams
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with httpx.Client() as client:
                results[i] = stream_train(client, server.url, bodies[i])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    if errors:
        raise errors[0]
    several = [lat for run in results for lat in progress_latencies(run)]
    print(f"  {streams} streams ({short} rounds each, one GPU job at a time): {format_summary(summary(several))}")
    sys.stdout.flush()
    return {"single": single, "several": several}


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # not installed as a distribution (e.g. on PYTHONPATH only)
        return getattr(sys.modules.get(name), "__version__", "?")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200k x 50, 100 rounds, 2 repeats, shorter latency jobs")
    parser.add_argument("--rows", type=int, default=None, help="default 1,000,000 (200,000 with --quick)")
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=None, help="default 200 (100 with --quick)")
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--num-bins", type=int, default=63)
    parser.add_argument("--repeats", type=int, default=None, help="in-process repeats (default 3; 2 with --quick)")
    parser.add_argument("--e2e-repeats", type=int, default=2, help="e2e repeats after the cold request (default 2)")
    parser.add_argument(
        "--latency-s", type=float, default=None, help="length of the latency job (default 10; 4 with --quick)"
    )
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="hard limit (default 285; 180 with --quick); repeats are cut to end about 30 s before it",
    )
    args = parser.parse_args()
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    rounds = args.rounds or (100 if args.quick else 200)
    repeats = args.repeats or (2 if args.quick else 3)
    latency_s = args.latency_s or (4.0 if args.quick else 10.0)
    max_seconds = args.max_seconds or (180.0 if args.quick else 285.0)

    torch, core, trainer_class, device = check_gpu()  # fails fast without a GPU
    print_header(
        f"gpu_warpgbm: WarpGBM {size_label(rows, args.cols)}, {rounds} "
        f"rounds, max_depth {args.max_depth}, num_bins {args.num_bins}"
    )
    print(f"# GPU: {device}; torch {torch.__version__}; warpgbm {_version('warpgbm')}")
    sys.stdout.flush()
    bench = Bench(torch, core, trainer_class, rounds, args.max_depth, args.num_bins)
    budget = Budget(max_seconds - 30.0)
    with Watchdog(max_seconds):
        server = Server(gpu_jobs=1, startup_timeout_s=180.0)
        start_errors: list[BaseException] = []

        def start_server() -> None:
            try:
                server.start()
            except BaseException as error:
                start_errors.append(error)

        server_ready = threading.Thread(target=start_server, daemon=True)  # torch loads while we work
        server_ready.start()
        try:
            X, y = regression_data(rows, args.cols, args.seed)
            # Leave about 60% of the budget for the requests and the latency jobs.
            inproc = part_in_process(bench, X, y, repeats, budget, until_left=0.6 * budget.seconds)
            server_ready.join(180)
            if start_errors:
                raise start_errors[0]
            if server_ready.is_alive() or server.process is None or server.process.poll() is not None:
                raise RuntimeError(f"the server did not start:\n{server.log_tail()}")
            print(f"# server: {' '.join(server.command[4:])}")
            e2e = part_e2e(bench, server, X, y, args.e2e_repeats, budget, until_left=40.0)
            del X, y
            free_memory()
            latency = part_latency(bench, server, latency_s, args.streams, args.seed, budget)
        finally:
            server.stop()

    e2e_lat = summary(e2e["latencies"])
    print("\n## summary")
    print(
        f"progress cost in process: trainer {inproc['trainer']:.3f} s vs plain {inproc['plain']:.3f} s = "
        f"{inproc['overhead_pct']:+.2f}%  -> {verdict(inproc['overhead_pct'], OVERHEAD_TARGET_PCT, '%')}"
        f"  (vs plain on float32 input: {inproc['overhead_f32_pct']:+.2f}%)"
    )
    print(
        f"e2e: {e2e['e2e_s']:.3f} s vs in-process {e2e['inproc_s']:.3f} s, ratio {e2e['ratio']:.3f}  "
        f"-> {verdict(e2e['ratio'], RATIO_TARGET)}; cold e2e {e2e['cold_e2e_s']:.3f} s"
    )
    print(
        f"e2e timings: decode {e2e['decode_s']:.3f} s, fit {e2e['fit_s']:.3f} s, "
        f"artifact {e2e['artifact_s']:.4f} s; outside fit apart from decode "
        f"{e2e['outside_pct']:.1f}%  -> {verdict(e2e['outside_pct'], OUTSIDE_TARGET_PCT, '%')}"
    )
    for name, values in (
        ("e2e requests", e2e["latencies"]),
        ("one stream", latency["single"]),
        (f"{args.streams} streams", latency["several"]),
    ):
        figures = summary(values) if values is not e2e["latencies"] else e2e_lat
        print(
            f"progress latency, {name:<13} {format_summary(figures)}  "
            f"-> p99 {verdict(figures['p99_ms'], P99_TARGET_MS, ' ms')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
