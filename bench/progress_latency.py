"""Delivery latency of `progress` events: the client's time.time() when the event is parsed
minus the event's `ts` (the server's time.time() when that round finished). Client and server
run on the same machine, so they share one clock.

Scenarios (each with its own server; job lengths calibrated in process first):
  single          one stream; --cpu-jobs 1, the job gets every core; lasts about --target-s
  queued          --streams streams at once on the default layout (--cpu-jobs 2, cores/2
                  threads each): two train, the others wait their turn
  oversubscribed  --streams streams at once, all training: --cpu-jobs N --threads-per-job 1,
                  N = --streams (more busy threads than cores)
  ingest          (not run by default) one stream training for about 2.5 x --target-s on the
                  default layout (--cpu-jobs 2) while another client posts one --ingest-size
                  body (one round): how the ingest of a big body delays another job's events

The server delivers at most one progress event per 0.1 s per job (it coalesces rounds), so a
10 s job gives about 100 events. Target: p99 <= 50 ms.

    python bench/progress_latency.py
    python bench/progress_latency.py --scenarios single --target-s 5
    python bench/progress_latency.py --scenarios ingest --ingest-size 1Mx50
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from _common import (  # noqa: E402
    Server,
    TrainRun,
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
SCENARIOS = ("single", "queued", "oversubscribed")
OPTIONAL_SCENARIOS = ("ingest",)


def run_streams(server: Server, bodies: list[bytes], deadline_s: float) -> list[TrainRun]:
    """POST every body at once, one thread and one connection each; read every stream to its end."""
    runs: list = [None] * len(bodies)
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            with httpx.Client() as client:
                runs[index] = stream_train(client, server.url, bodies[index], timeout_s=deadline_s)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline_s)
    if errors:
        raise errors[0]
    if any(run is None for run in runs):
        raise RuntimeError(f"a stream did not finish within {deadline_s:.0f} s")
    return runs


def report(name: str, runs: list[TrainRun]) -> dict:
    samples = []  # (latency s, stream, iteration)
    for index, run in enumerate(runs):
        _ = run.complete  # raises if the job did not complete
        for event in run.of_type("progress"):
            data = event.json()
            samples.append((event.received - data["ts"], index, data["iteration"]))
    figures = summary([s[0] for s in samples])
    # The final round is reported through another path when the throttle timer is pending
    # (see docs/benchmarks.md), so it is shown apart as well.
    final = [
        lat
        for run_index, run in enumerate(runs)
        for lat, s, it in samples
        if s == run_index and it == run.complete["iterations"]
    ]
    others = [
        lat
        for run_index, run in enumerate(runs)
        for lat, s, it in samples
        if s == run_index and it != run.complete["iterations"]
    ]
    gaps = []  # receipt of the final round's event minus receipt of the one before it
    for run in runs:
        progress = run.of_type("progress")
        if len(progress) >= 2:
            gaps.append(progress[-1].received - progress[-2].received)
    figures["note"] = (
        f"without the final rounds p99 {summary(others)['p99_ms']:.2f} ms; "
        f"worst final round {max(final) * 1000 if final else float('nan'):.2f} ms"
    )
    fits = [run.complete["timings"]["fit_s"] for run in runs]
    queued = [run.complete["timings"]["queued_s"] for run in runs]
    per_stream = [len(run.of_type("progress")) for run in runs]
    print(
        f"  streams {len(runs)}; fit_s per job {', '.join(f'{f:.1f}' for f in fits)}; queued_s "
        f"{', '.join(f'{q:.1f}' for q in queued)}; progress events per stream {per_stream}"
    )
    print(f"  latency  {format_summary(figures)}  -> p99 {verdict(figures['p99_ms'], P99_TARGET_MS, ' ms')}")
    print(f"  all but the final round: {format_summary(summary(others))}")
    print(
        f"  final round only:        {format_summary(summary(final))}; its event "
        f"came {', '.join(f'{g * 1000:.0f}' for g in gaps)} ms after the one before"
    )
    worst = sorted(samples, reverse=True)[:3]
    print("  worst: " + "; ".join(f"{lat * 1000:.1f} ms (stream {s}, iteration {it})" for lat, s, it in worst))
    sys.stdout.flush()
    return {"name": name, **figures}


def ingest_scenario(X, y, spr_one: float, cores: int, args: argparse.Namespace) -> dict:
    """One job streams while another client posts a big body; the job's events are split by
    whether their round finished while the big body was being uploaded or decoded."""
    rows, cols = parse_size(args.ingest_size)
    threads = max(1, cores // 2)
    spr = spr_one if threads == 1 else lightgbm_seconds_per_round(X, y, threads)
    rounds = max(50, int(2.5 * args.target_s / spr))
    body = train_body("lightgbm", X, y, {"n_estimators": rounds})
    big_X, big_y = regression_data(rows, cols, args.seed + 1)
    big = train_body("lightgbm", big_X, big_y, {"n_estimators": 1})
    del big_X, big_y
    free_memory()
    with Server(cpu_jobs=2) as server:
        print(
            f"\n## ingest: 1 stream of {args.rows} x {args.cols}, {rounds} rounds, and "
            f"one {size_label(rows, cols)} body ({len(big) / 1e6:.0f} MB, 1 round) "
            f"posted after its 10th progress event; server {' '.join(server.command[4:])}"
        )
        sys.stdout.flush()
        tenth = threading.Event()
        counted = [0]

        def on_event(event) -> None:
            if event.event == "progress":
                counted[0] += 1
                if counted[0] == 10:
                    tenth.set()

        result: dict = {}

        def follow(body: bytes) -> None:
            try:
                with httpx.Client() as client:
                    result["run"] = stream_train(
                        client, server.url, body, timeout_s=args.max_seconds, on_event=on_event
                    )
            except BaseException as error:
                result["error"] = error
                tenth.set()

        def ingest(big: bytes) -> None:
            try:
                with httpx.Client() as client:
                    result["big"] = stream_train(client, server.url, big, timeout_s=args.max_seconds)
            except BaseException as error:
                result["big_error"] = error

        follower = threading.Thread(target=follow, args=(body,), daemon=True)
        follower.start()
        tenth.wait(args.max_seconds)
        ingester = threading.Thread(target=ingest, args=(big,), daemon=True)
        ingest_started = time.time()
        ingester.start()
        ingester.join(args.max_seconds)
        follower.join(args.max_seconds)
        for key in ("error", "big_error"):
            if key in result:
                raise result[key]
    run, big_run = result["run"], result["big"]
    ingest_decoded = ingest_started + (big_run.headers - big_run.sent)  # wall clock of the big body's response headers
    during, outside = [], []
    for event in run.of_type("progress"):
        data = event.json()
        (during if ingest_started <= data["ts"] <= ingest_decoded else outside).append(event.received - data["ts"])
    # Delivery latency cannot show a stall of the whole process: `ts` is taken in the training
    # thread's callback, which needs the GIL too. The gaps between events can.
    progress = run.of_type("progress")
    gaps_during = [
        b.received - a.received
        for a, b in itertools.pairwise(progress)
        if ingest_started <= b.received and a.received <= ingest_decoded
    ]
    gaps_outside = [
        b.received - a.received
        for a, b in itertools.pairwise(progress)
        if not (ingest_started <= b.received and a.received <= ingest_decoded)
    ]
    timings = big_run.complete["timings"]
    print(
        "  gaps between consecutive progress events (0.1 s expected): during "
        f"the ingest max {max(gaps_during, default=float('nan')) * 1000:.0f} ms, "
        f"otherwise max {max(gaps_outside, default=float('nan')) * 1000:.0f} ms"
    )
    print(
        f"  the stream trained {rounds} rounds in fit_s "
        f"{run.complete['timings']['fit_s']:.1f} s; in process, alone: {rounds * spr:.1f} s"
    )
    print(
        f"  big body: response headers after {big_run.headers - big_run.sent:.2f} s (upload + decode), "
        f"decode_s {timings['decode_s']:.3f}; the stream's fit_s {run.complete['timings']['fit_s']:.1f}"
    )
    print(f"  rounds that ended while the big body was uploaded/decoded: {format_summary(summary(during))}")
    print(f"  the other rounds:                                         {format_summary(summary(outside))}")
    figures = summary(during + outside)
    print(f"  all    {format_summary(figures)}  -> p99 {verdict(figures['p99_ms'], P99_TARGET_MS, ' ms')}")
    sys.stdout.flush()
    del body, big
    free_memory()
    note = (
        f"rounds that ended during the ingest p99 {summary(during)['p99_ms']:.2f} ms, max "
        f"{summary(during)['max_ms']:.2f} ms; the others p99 {summary(outside)['p99_ms']:.2f} ms;"
        f" longest gap between events during the ingest {max(gaps_during, default=float('nan')) * 1000:.0f} ms"
    )
    return {"name": "ingest", **figures, "note": note}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--target-s", type=float, default=10.0, help="about how long each job trains (default 10)")
    parser.add_argument(
        "--streams",
        type=int,
        default=4,
        help="concurrent streams in the queued and oversubscribed scenarios (default 4)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS + OPTIONAL_SCENARIOS)} (default: {','.join(SCENARIOS)})",
    )
    parser.add_argument("--ingest-size", default="1Mx50", help="the big body of the ingest scenario (default 1Mx50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="hard limit for the whole run (default 300)")
    args = parser.parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS) - set(OPTIONAL_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    cores = os.cpu_count() or 1

    print_header("progress_latency: progress event delivery latency (client receipt - event ts)")
    results = []
    with Watchdog(args.max_seconds):
        X, y = regression_data(args.rows, args.cols, args.seed)
        spr_all = lightgbm_seconds_per_round(X, y, cores)
        spr_one = lightgbm_seconds_per_round(X, y, 1)
        print(
            f"# calibration ({args.rows} x {args.cols}): {spr_all * 1000:.2f} ms/round "
            f"with {cores} threads, {spr_one * 1000:.2f} ms/round with 1 thread"
        )

        for name in scenarios:
            if name == "ingest":
                results.append(ingest_scenario(X, y, spr_one, cores, args))
                continue
            if name == "single":
                server_options = {"cpu_jobs": 1, "threads_per_job": cores}
                streams, rounds = 1, args.target_s / spr_all
            elif name == "queued":
                jobs = min(2, args.streams)
                threads = max(1, cores // jobs)
                server_options = {"cpu_jobs": jobs}
                streams, rounds = args.streams, args.target_s / (spr_one if threads == 1 else spr_all)
            else:
                server_options = {"cpu_jobs": args.streams, "threads_per_job": 1}
                streams, rounds = args.streams, args.target_s / (spr_one * max(1.0, args.streams / cores))
            rounds = max(50, int(rounds))
            bodies = [train_body("lightgbm", X, y, {"n_estimators": rounds, "seed": i}) for i in range(streams)]
            with Server(**server_options) as server:
                print(
                    f"\n## {name}: {streams} stream(s) of {args.rows} x {args.cols}, "
                    f"{rounds} rounds each; server {' '.join(server.command[4:])}"
                )
                sys.stdout.flush()
                runs = run_streams(server, bodies, deadline_s=args.max_seconds)
                results.append(report(name, runs))
            del bodies, runs

    print("\n## summary (ms)")
    for r in results:
        print(f"{r['name']:<15} {format_summary(r)}  -> p99 {verdict(r['p99_ms'], P99_TARGET_MS, ' ms')}")
        print(f"{'':<15} {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
