"""GET /health latency while the server trains.

The server runs with --cpu-jobs 2 (cores / 2 LightGBM threads per job). After an idle baseline,
two training jobs are posted at once, each sized (calibrated in process) to train for about
--target-s seconds, and while they upload, decode and train, GET /health is called sequentially
on its own keep-alive connection, --interval-ms apart (the pause is between one answer and the
next request). Each sample is labelled with the `queue.cpu.running` count that its answer reports.
Target: p99 <= 50 ms under load.

With --ingest-size (e.g. 1Mx50) a last phase posts one big body (one round) with no other job
running and polls /health while the server uploads, decodes and trains it.

    python bench/health_under_load.py
    python bench/health_under_load.py --target-s 5 --interval-ms 10
    python bench/health_under_load.py --target-s 5 --ingest-size 1Mx50
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from _common import (  # noqa: E402
    Server,
    Watchdog,
    format_summary,
    free_memory,
    lightgbm_seconds_per_round,
    parse_size,
    print_header,
    regression_data,
    size_label,
    stream_train,
    summary,
    train_body,
    verdict,
)

P99_TARGET_MS = 50.0


def poll_health(client: httpx.Client, url: str, interval_s: float, until) -> list[tuple[float, float, int, int]]:
    """(start time, latency s, running, queued) for each GET /health until `until()` is true."""
    samples = []
    while not until():
        started = time.perf_counter()
        response = client.get(url + "/health")
        latency = time.perf_counter() - started
        response.raise_for_status()
        cpu = response.json()["queue"]["cpu"]
        samples.append((started, latency, cpu["running"], cpu["queued"]))
        time.sleep(interval_s)
    return samples


def ingest_phase(client: httpx.Client, server: Server, size: str, interval: float, seed: int, limit_s: float):
    """Post one big body (one round) and poll /health until its stream ends."""
    rows, cols = parse_size(size)
    X, y = regression_data(rows, cols, seed)
    body = train_body("lightgbm", X, y, {"n_estimators": 1})
    del X, y
    result: dict = {}

    def post() -> None:
        try:
            with httpx.Client() as ingest_client:
                result["run"] = stream_train(ingest_client, server.url, body, timeout_s=limit_s)
        except BaseException as error:
            result["error"] = error

    worker = threading.Thread(target=post, daemon=True)
    started_at = time.perf_counter()
    worker.start()
    samples = poll_health(client, server.url, interval, lambda: not worker.is_alive())
    worker.join(10)
    if "error" in result:
        raise result["error"]
    del body
    free_memory()
    return samples, result["run"], size_label(rows, cols), started_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--target-s", type=float, default=15.0, help="about how long each job trains (default 15)")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="pause between two /health calls (default 20)")
    parser.add_argument("--idle-s", type=float, default=3.0, help="idle baseline before the jobs (default 3)")
    parser.add_argument("--ingest-size", default="", help="after the two jobs, also post one body of this size (e.g. 1Mx50, one round) and poll /health while it is uploaded and decoded; off by default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=240.0, help="hard limit for the whole run (default 240)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    threads = max(1, cores // 2)  # what the server gives each of its 2 jobs

    print_header("health_under_load: GET /health latency while 2 jobs train (--cpu-jobs 2)")
    with Watchdog(args.max_seconds):
        X, y = regression_data(args.rows, args.cols, args.seed)
        spr = lightgbm_seconds_per_round(X, y, threads)
        rounds = max(50, int(args.target_s / spr))
        print(f"# calibration ({args.rows} x {args.cols}): {spr * 1000:.2f} ms/round with {threads} thread(s) -> {rounds} rounds per job")
        bodies = [train_body("lightgbm", X, y, {"n_estimators": rounds, "seed": i}) for i in range(2)]
        del X, y

        with Server(cpu_jobs=2) as server, httpx.Client(timeout=10.0) as client:
            print(f"# server: {' '.join(server.command[4:])}")
            interval = args.interval_ms / 1000.0
            client.get(server.url + "/health")  # open the connection
            idle_until = time.perf_counter() + args.idle_s
            idle = poll_health(client, server.url, interval, lambda: time.perf_counter() >= idle_until)

            runs: list = [None, None]
            errors: list[BaseException] = []

            def train(index: int) -> None:
                try:
                    with httpx.Client() as train_client:
                        runs[index] = stream_train(train_client, server.url, bodies[index], timeout_s=args.max_seconds)
                except BaseException as error:
                    errors.append(error)

            workers = [threading.Thread(target=train, args=(i,), daemon=True) for i in range(2)]
            load_started = time.perf_counter()
            for worker in workers:
                worker.start()
            load = poll_health(client, server.url, interval, lambda: errors or not any(w.is_alive() for w in workers))
            load_s = time.perf_counter() - load_started
            for worker in workers:
                worker.join(10)
            if errors:
                raise errors[0]

            ingest = None
            if args.ingest_size:
                ingest = ingest_phase(client, server, args.ingest_size, interval, args.seed, args.max_seconds)

        fits = [run.complete["timings"]["fit_s"] for run in runs]
        decodes = [run.complete["timings"]["decode_s"] for run in runs]
        both = [s[1] for s in load if s[2] == 2]
        before = [s[1] for s in load if s[2] == 0 and s[0] < min(r.first("started").received_perf for r in runs)]
        figures = {
            "idle": summary([s[1] for s in idle]),
            "under load (all)": summary([s[1] for s in load]),
            "before training (upload, decode)": summary(before),
            "both jobs training": summary(both),
        }
        print(f"\n## load: 2 jobs x {rounds} rounds; fit_s {fits[0]:.1f}, {fits[1]:.1f}; decode_s {decodes[0]:.3f}, {decodes[1]:.3f}; {load_s:.1f} s from posting to both complete")
        worst = sorted(load, key=lambda s: s[1], reverse=True)[:3]
        for name, f in figures.items():
            print(f"{name:<34} {format_summary(f)}")
        print("worst under load: " + "; ".join(f"{lat * 1000:.1f} ms at +{start - load_started:.2f} s (running {running})" for start, lat, running, _ in worst))
        if ingest is not None:
            samples, run, label, started_at = ingest
            timings = run.complete["timings"]
            print(f"\n## ingest: one {label} body (1 round), no other job; headers after {run.headers - run.sent:.2f} s, decode_s {timings['decode_s']:.3f}, fit_s {timings['fit_s']:.3f}")
            print(f"{'while it is ingested and trained':<34} {format_summary(summary([s[1] for s in samples]))}")
            worst = sorted(samples, key=lambda s: s[1], reverse=True)[:3]
            print("worst: " + "; ".join(f"{lat * 1000:.0f} ms at +{start - started_at:.2f} s" for start, lat, _, _ in worst))
        print(f"\nunder load p99 {figures['under load (all)']['p99_ms']:.2f} ms -> {verdict(figures['under load (all)']['p99_ms'], P99_TARGET_MS, ' ms')}")
        print(f"both training p99 {figures['both jobs training']['p99_ms']:.2f} ms -> {verdict(figures['both jobs training']['p99_ms'], P99_TARGET_MS, ' ms')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
