"""GET /health latency while the server trains.

The server runs with --cpu-jobs 2 (cores / 2 LightGBM threads per job). After an idle baseline,
two training jobs are posted at once, each sized (calibrated in process) to train for about
--target-s seconds, and while they upload, decode and train, GET /health is sent on a fixed
schedule: one request every --interval-ms, due at start + k x interval, whether or not earlier
ones have been answered (asyncio, up to --connections keep-alive connections; see HealthClient).
Latency runs from the time a request was due, not from when it went out, as wrk2 and HdrHistogram
measure it: a server that stalls for 2 s is charged for every request the schedule held in those
2 s, not for one slow sample. (A poller that waits for each answer before sending the next hides
the stall: coordinated omission. This script did that before: docs/benchmarks.md, section 3.)
The service time, from the moment a request was written to its connection, is printed beside it,
with how late requests went out and the longest silences (no answer while requests were due).
Each sample is labelled with the `queue.cpu.running` count that its answer reports. Target: p99
<= 50 ms under load; the max is printed beside p50 and p99.

With --ingest-size (e.g. 1Mx50) a last phase posts one big body (one round) with no other job
running and polls /health while the server uploads, decodes and trains it.

    python bench/health_under_load.py
    python bench/health_under_load.py --target-s 3 --interval-ms 10
    python bench/health_under_load.py --target-s 5 --ingest-size 1Mx50
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402

from _common import (  # noqa: E402
    HOST,
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
REQUEST_TIMEOUT_S = 60.0  # far longer than any stall seen (docs/benchmarks.md), so a stall is measured, not cut off


@dataclasses.dataclass
class HealthSample:
    """One scheduled GET /health; times are time.perf_counter() values, in seconds."""

    due: float  #: when the schedule said to send it
    issued: float  #: when the poller issued it (later than `due` only if the poller fell behind)
    sent: float  #: when it was written to a connection (later than `issued` while all were busy)
    answered: float  #: when its answer (or its failure) was read
    running: int  #: `queue.cpu.running` in the answer; -1 if it failed
    error: str = ""  #: why it failed; empty if it was answered 200

    @property
    def latency(self) -> float:
        """From the time it was due: what a client on this schedule waited."""
        return self.answered - self.due

    @property
    def service(self) -> float:
        """From the time it was written: what a poller that waits for each answer measures."""
        return self.answered - self.sent


class HealthClient:
    """GET /health over at most `limit` keep-alive HTTP/1.1 connections, opened as needed.

    A minimal client on asyncio streams, not httpx: httpx's AsyncClient added 2-3 ms to every
    request here (/health itself answers in under 1 ms), which would be measured as the server's.
    A request waits for a free connection when all are busy; its latency still runs from its due
    time. The most recently used connection is reused first; one idle longer than KEEP_IDLE_S is
    closed rather than reused, well inside uvicorn's keep-alive timeout (5 s)."""

    KEEP_IDLE_S = 1.0

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self._request = f"GET /health HTTP/1.1\r\nhost: {host}:{port}\r\naccept: application/json\r\n\r\n".encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(limit)

    async def get(self) -> tuple[int, bytes, float]:
        """(status, body, the time the request was written) of one GET /health."""
        async with self._slots:
            reader, writer = await self._connection()
            try:
                sent = time.perf_counter()
                writer.write(self._request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(
                    int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
            except BaseException:
                writer.close()
                raise
            self._idle.append((reader, writer, time.perf_counter()))
            return status, body, sent

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer, used = self._idle.pop()
            if time.perf_counter() - used < self.KEEP_IDLE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def _get_health(client: HealthClient, due: float) -> HealthSample:
    issued = sent = time.perf_counter()
    try:
        status, body, sent = await asyncio.wait_for(client.get(), REQUEST_TIMEOUT_S)
        if status != 200:
            raise ValueError(f"status {status}: {body[:200]!r}")
        running = int(orjson.loads(body)["queue"]["cpu"]["running"])
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, KeyError, ValueError, StopIteration) as error:
        return HealthSample(due, issued, sent, time.perf_counter(), -1, f"{type(error).__name__}: {error}"[:200])
    return HealthSample(due, issued, sent, time.perf_counter(), running)


async def _poll_on_schedule(
    server: Server, interval_s: float, until: Callable[[], bool], connections: int
) -> list[HealthSample]:
    client = HealthClient(HOST, server.port, connections)
    try:
        await client.get()  # open one connection before the schedule starts
        pending: list[asyncio.Task[HealthSample]] = []
        due = time.perf_counter()
        while not until():
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # Late or not, each request keeps its due time: a poller that falls behind sends at
            # once and is charged from the schedule; it never skips a send.
            pending.append(asyncio.create_task(_get_health(client, due)))
            due += interval_s
        return list(await asyncio.gather(*pending))
    finally:
        client.close()


def poll_health(server: Server, interval_s: float, until: Callable[[], bool], connections: int) -> list[HealthSample]:
    """GET /health every `interval_s` on a fixed schedule until `until()` is true, then wait for
    the answers still due (each at most REQUEST_TIMEOUT_S)."""
    return asyncio.run(_poll_on_schedule(server, interval_s, until, connections))


def describe(samples: list[HealthSample]) -> str:
    """Latency figures from the due time, and how many requests failed."""
    text = format_summary(summary([s.latency for s in samples]))
    failed = sum(1 for s in samples if s.error)
    if failed:
        text += f"  FAILED {failed}"
    return text


def service_line(samples: list[HealthSample]) -> str:
    """Latency from the time each request was written, and how late requests went out: the
    poller's own lateness (asyncio wakes on whole milliseconds; more when its process is busy),
    then waiting for a free connection. Both count in the latency from the due time."""
    late = summary([s.issued - s.due for s in samples])
    waited = summary([s.sent - s.issued for s in samples])
    return (
        f"{format_summary(summary([s.service for s in samples]))}"
        f"  (issued late by p50 {late['p50_ms']:.1f} ms, max {late['max_ms']:.1f} ms;"
        f" waited for a connection up to {waited['max_ms']:.1f} ms)"
    )


def worst(samples: list[HealthSample], origin: float, count: int = 3) -> str:
    ranked = sorted(samples, key=lambda s: s.latency, reverse=True)[:count]
    return "; ".join(f"{s.latency * 1000:.1f} ms, due at +{s.due - origin:.2f} s (running {s.running})" for s in ranked)


def silences(samples: list[HealthSample], origin: float, count: int = 3) -> str:
    """The longest times in which no answer came while requests were due (a request is due
    every interval, so any gap between two answers is one): the server's stalls as a client sees them."""
    answers = sorted(s.answered for s in samples if not s.error)
    gaps = sorted(((b - a, a) for a, b in itertools.pairwise(answers)), reverse=True)[:count]
    return "; ".join(f"{gap * 1000:.0f} ms from +{start - origin:.2f} s" for gap, start in gaps)


def verdict_line(name: str, samples: list[HealthSample]) -> str:
    f = summary([s.latency for s in samples])
    return (
        f"{name}: p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms, max {f['max_ms']:.2f} ms "
        f"-> p99 {verdict(f['p99_ms'], P99_TARGET_MS, ' ms')}"
    )


def ingest_phase(server: Server, size: str, interval: float, connections: int, seed: int, limit_s: float):
    """Post one big body (one round) and poll /health until its stream ends."""
    rows, cols = parse_size(size)
    X, y = regression_data(rows, cols, seed)
    body = train_body("lightgbm", X, y, {"n_estimators": 1})
    del X, y
    result: dict = {}

    def post(body: bytes) -> None:
        try:
            with httpx.Client() as ingest_client:
                result["run"] = stream_train(ingest_client, server.url, body, timeout_s=limit_s)
        except BaseException as error:
            result["error"] = error

    worker = threading.Thread(target=post, args=(body,), daemon=True)
    started_at = time.perf_counter()
    worker.start()
    samples = poll_health(server, interval, lambda: not worker.is_alive(), connections)
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
    parser.add_argument(
        "--interval-ms", type=float, default=20.0, help="one GET /health every this many ms (default 20)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="connections the poller may open, so that a slow answer does not hold the next request (default 8)",
    )
    parser.add_argument("--idle-s", type=float, default=3.0, help="idle baseline before the jobs (default 3)")
    parser.add_argument(
        "--ingest-size",
        default="",
        help="after the two jobs, also post one body of this size (e.g. 1Mx50, one "
        "round) and poll /health while it is uploaded and decoded; off by default",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=240.0, help="hard limit for the whole run (default 240)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    threads = max(1, cores // 2)  # what the server gives each of its 2 jobs
    interval = args.interval_ms / 1000.0

    print_header("health_under_load: GET /health latency while 2 jobs train (--cpu-jobs 2)")
    print(
        f"# poller: GET /health every {args.interval_ms:g} ms on a fixed schedule, "
        f"up to {args.connections} connections; latency from each due time"
    )
    with Watchdog(args.max_seconds):
        X, y = regression_data(args.rows, args.cols, args.seed)
        spr = lightgbm_seconds_per_round(X, y, threads)
        rounds = max(50, int(args.target_s / spr))
        print(
            f"# calibration ({args.rows} x {args.cols}): {spr * 1000:.2f} "
            f"ms/round with {threads} thread(s) -> {rounds} rounds per job"
        )
        bodies = [train_body("lightgbm", X, y, {"n_estimators": rounds, "seed": i}) for i in range(2)]
        del X, y

        with Server(cpu_jobs=2) as server:
            print(f"# server: {' '.join(server.command[4:])}")
            idle_until = time.perf_counter() + args.idle_s
            idle = poll_health(server, interval, lambda: time.perf_counter() >= idle_until, args.connections)

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

            def trained() -> bool:
                return bool(errors) or not any(w.is_alive() for w in workers)

            load = poll_health(server, interval, trained, args.connections)
            load_s = time.perf_counter() - load_started
            for worker in workers:
                worker.join(10)
            if errors:
                raise errors[0]

            ingest = None
            if args.ingest_size:
                ingest = ingest_phase(server, args.ingest_size, interval, args.connections, args.seed, args.max_seconds)

        fits = [run.complete["timings"]["fit_s"] for run in runs]
        decodes = [run.complete["timings"]["decode_s"] for run in runs]
        first_started = min(run.first("started").received_perf for run in runs)
        phases = {
            "idle": idle,
            "under load (all)": load,
            "before training (upload, decode)": [s for s in load if s.running == 0 and s.due < first_started],
            "both jobs training": [s for s in load if s.running == 2],
        }
        print(
            f"\n## load: 2 jobs x {rounds} rounds; fit_s {fits[0]:.1f}, {fits[1]:.1f}; decode_s "
            f"{decodes[0]:.3f}, {decodes[1]:.3f}; {load_s:.1f} s from posting to both complete"
        )
        print("latency from the time each request was due:")
        for name, samples in phases.items():
            print(f"{name:<34} {describe(samples)}")
        print(f"{'under load, service time':<34} {service_line(load)}")
        print("worst under load: " + worst(load, load_started))
        print("longest silences under load: " + silences(load, load_started))
        if ingest is not None:
            samples, run, label, started_at = ingest
            timings = run.complete["timings"]
            print(
                f"\n## ingest: one {label} body (1 round), no other job; headers after "
                f"{run.headers - run.sent:.2f} s, decode_s {timings['decode_s']:.3f}, fit_s {timings['fit_s']:.3f}"
            )
            print(f"{'while it is ingested and trained':<34} {describe(samples)}")
            print(f"{'the same, service time':<34} {service_line(samples)}")
            print("worst: " + worst(samples, started_at))
            print("longest silences: " + silences(samples, started_at))
        print()
        for name in ("under load (all)", "both jobs training"):
            print(verdict_line(name, phases[name]))
        if ingest is not None:
            print(verdict_line("while ingested", ingest[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
