"""Scale-out: the Redis deployment (API replicas `boostream serve --redis` + `boostream worker`s)
against the one-process server (`boostream serve`, SQLite), every process a real CLI subprocess on
127.0.0.1, with a `redis-server` of this script's own (AOF on, `appendfsync` --redis-fsync,
`maxmemory-policy noeviction`, a temporary folder) started afresh for each Redis deployment.

Sections (--only, comma-separated; all by default), each with deployments of its own:

  throughput  --throughput-jobs small jobs (--throughput-size, --throughput-rounds) POSTed to
              /jobs from --submitters threads, then waited for (GET /jobs?status=queued,running
              every 0.1 s): the one-process server with its defaults (its cpu worker count, read
              from /health, is printed) against one API replica + two workers `--jobs 1`, each
              with the server's threads per job. A few warm-up jobs run first on each, untimed.
              jobs/s = jobs / (the last `finished_at` - the first POST); the ratio redis / one.
  latency     one job (--latency-size, sized in process to train about --target-s with all cores)
              streamed with POST /train/stream: progress delivery latency, the client's
              time.time() at the event's blank line - the event's `ts` (bench/progress_latency.py's
              method and report). One process (`--cpu-jobs 1 --threads-per-job <cores>`) and an API
              replica while a worker (`--jobs 1 --threads-per-job <cores>`) trains it. `ts` is
              taken where the rounds arrive from the training process (the server's process, or
              the `boostream worker`), so the Redis figure spans worker -> Redis -> replica ->
              client. Target p99 <= 50 ms.
  fanout      --subscribers subscribers of one job's GET /jobs/{id}/events, in two subscriber
              processes (bench/fanout.py's raw-socket subscribers, not pinned): on the Redis
              deployment half on each of two API replicas, on the one-process server all on it.
              As in fanout.py, a blocker job holds the only slot (`--jobs 1` /`--cpu-jobs 1`, one
              thread) while the measured job (--fanout-size, about --fanout-target-s) waits
              `queued`; every subscriber reads that first event, then the blocker is cancelled.
              Checked per subscriber against the log replayed afterwards: every event, ids 1..N
              contiguous, no duplicates, ending with `complete`. Delivery lag of progress events
              (receipt - `ts`) over all subscribers, and of `complete` after the final round; the
              CPU seconds of the servers (and redis-server, the worker) and the commands Redis
              processed, from the blocker's cancel to the last subscriber's end.
  e2e         one --parquet-size Parquet table (pyarrow, snappy) POSTed to /train/stream with
              --rounds rounds and --threads LightGBM threads: the one-process server (`--cpu-jobs
              1 --threads-per-job T`) and two Redis deployments (one API replica, one worker
              `--jobs 1 --threads-per-job T`): tables through Redis, and through a shared
              directory (`--shared-dir`), all up at once, requests in turn (a cold one each
              first, then --repeats rounds, alternating the order). Ratio = median redis e2e /
              median one-process e2e, and with the fit's noise taken out: (one e2e + redis (e2e -
              fit_s) - one (e2e - fit_s)) / one e2e. Target <= 1.05.
  failover    per --dead-after value D (the workers' `--dead-after`): an API replica and worker A;
              a long job (--failover-size, 100000 rounds) trains on A; worker B starts (then
              /health shows A busy, B idle); A (the `boostream worker` process) gets SIGKILL.
              Timed from the kill: A gone from /health, `restarted`, `started` with attempt 2 and
              its first progress, as this script's event stream receives them; and how long A's
              own processes (fork server, training process) outlive it. A heartbeat lives D and is
              renewed every D/5, and a live worker looks for dead ones' jobs every D/2: expected
              about 0.8 D - 1.5 D, plus loading the job. --failover-repeats per D.

Every process is started in a session of its own and stopped at the end (SIGTERM, then SIGKILL to
its whole process group), also on an error or Ctrl-C; the watchdog (--max-seconds) kills them
all. The last lines say whether any process of theirs was left, and how long the other processes
of a stopped server or worker (fork server, training and decoding processes) took to go. A section
that fails is reported and the next one runs; the exit status is then 1. --quick sizes every
section down (20 jobs, 3 s jobs, 20 subscribers, 100k x 20 Parquet, one repeat, D = 2) for a check
of the script. To measure another tree of the package (a `git archive` of a commit, say), set
PYTHONPATH=<that tree>: servers and workers start in folders of their own, so that `python -m
boostream` does not put the current folder ahead of it.

    python bench/scale_out.py                                   # everything, full sizes
    python bench/scale_out.py --quick                           # a check, about 4 minutes on 2 cores
    python bench/scale_out.py --only e2e --parquet-size 1Mx50 --repeats 3
    python bench/scale_out.py --only throughput,latency
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from fanout import expect, subscriber_process  # noqa: E402
from progress_latency import report as latency_report  # noqa: E402

from _common import (  # noqa: E402
    REPO_ROOT,
    RedisServer,
    Server,
    SSEEvent,
    TrainRun,
    Watchdog,
    body_chunks,
    format_summary,
    group_pids,
    kill_group,
    lightgbm_seconds_per_round,
    median,
    parse_size,
    percentile,
    print_header,
    regression_data,
    size_label,
    stream_events,
    stream_train,
    summary,
    terminate,
    train_body,
    unwatch_group,
    verdict,
    watch_group,
)

SECTIONS = ("throughput", "latency", "fanout", "e2e", "failover")
TERMINAL = ("complete", "error", "cancelled")
PARQUET = "application/vnd.apache.parquet"
LATENCY_P99_TARGET_MS = 50.0
E2E_RATIO_TARGET = 1.05
LONG_ROUNDS = 100_000  # a job that trains for minutes: cancelled within a round

# Full sizes, and --quick's; an option given on the command line wins over both.
FULL = {
    "throughput_jobs": 100, "throughput_size": "300x10", "throughput_rounds": 20, "submitters": 4,
    "latency_size": "50000x20", "target_s": 10.0,
    "subscribers": 200, "fanout_size": "100000x20", "fanout_target_s": 8.0,
    "parquet_size": "1Mx50", "rounds": 200, "repeats": 3,
    "dead_after": "2,5", "failover_size": "20000x20", "failover_repeats": 1,
}  # fmt: skip
QUICK = FULL | {
    "throughput_jobs": 20, "target_s": 3.0, "subscribers": 20, "fanout_target_s": 3.0,
    "parquet_size": "100kx20", "repeats": 1, "dead_after": "2",
}  # fmt: skip

# Every process group this script started, (what, pgid), for the check at the end; and the
# processes that outlived their group's leader by more than LINGER_S (then killed).
STARTED: list[tuple[str, int]] = []
LINGERED: list[str] = []
LINGER_S = 5.0
EMPTIED: list[tuple[float, str]] = []  # how long each group took to empty after its leader exited
FOLDERS: list[Path] = []  # temporary folders of the processes: removed at the end if still there
_SHIELD = {"depth": 0, "signals": 0}


# ----------------------------------------------------------------------------------------------
# Processes


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO_ROOT)) if p)
    return env


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """While processes are being stopped, Ctrl-C (SIGINT), SIGTERM and SIGHUP wait for the end of
    it, then interrupt: a second Ctrl-C cannot leave half a deployment running."""
    outermost = _SHIELD["depth"] == 0 and threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, Any] = {}
    if outermost:
        _SHIELD["signals"] = 0

        def later(signum: int, frame: Any) -> None:
            _SHIELD["signals"] = signum

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, later)
    _SHIELD["depth"] += 1
    try:
        yield
    finally:
        _SHIELD["depth"] -= 1
        if outermost:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if _SHIELD["signals"]:
                raise KeyboardInterrupt(f"signal {_SHIELD['signals']}")


def stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def started_group(what: str, pgid: int) -> None:
    watch_group(pgid)
    STARTED.append((what, pgid))


def end_group(pgid: int, what: str, linger_s: float = LINGER_S) -> None:
    """After a child's leader has exited: its other processes (a fork server, training or decoding
    processes) have `linger_s` to exit by themselves, as they should once their pipes close; any
    still there is noted in LINGERED, then killed. The group is no longer watched."""
    began = time.monotonic()
    while (pids := group_pids(pgid)) and time.monotonic() < began + linger_s:
        time.sleep(0.05)
    if not pids:
        EMPTIED.append((time.monotonic() - began, what))
    else:
        LINGERED.append(f"{what} (group {pgid}): {len(pids)} process(es) {linger_s:g} s after it stopped")
        kill_group(pgid)
        deadline = time.monotonic() + 10
        while group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    unwatch_group(pgid)


def start_server(what: str, **options: Any) -> Server:
    """A Server (bench/_common.py) watched by group; stopped again if its start fails or is interrupted."""
    server = Server(**options)
    try:
        server.start()
    except BaseException:
        with shielded():
            if server.process is not None:
                started_group(what, server.process.pid)
            stop_server(server, what)
        raise
    finally:
        if server.data_dir is not None:
            FOLDERS.append(server.data_dir)
    assert server.process is not None
    started_group(what, server.process.pid)
    return server


def stop_server(server: Server, what: str) -> None:
    process = server.process
    server.stop()
    if process is not None:
        end_group(process.pid, what)


class Worker:
    """`python -m boostream worker --redis URL --device cpu ...` in a session of its own; its log and
    its temporary folder (TMPDIR: where it keeps a job's input while training it) in a folder of
    this script's, removed at the end."""

    def __init__(
        self, redis_url: str, jobs: int, threads: int, dead_after_s: float | None, name: str, shared: list[str]
    ) -> None:
        self.name = name
        self.folder = Path(tempfile.mkdtemp(prefix="boostream-bench-worker-"))
        FOLDERS.append(self.folder)
        (self.folder / "tmp").mkdir()
        self.options = ["--device", "cpu", "--jobs", str(jobs), "--threads-per-job", str(threads), *shared]
        if dead_after_s is not None:
            self.options += ["--dead-after", f"{dead_after_s:g}"]
        self.command = [sys.executable, "-m", "boostream", "worker", "--redis", redis_url, *self.options]
        self.command += ["--log-level", "info"]
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0

    @property
    def worker_id(self) -> str:
        """As the worker names itself in Redis and in /health."""
        return f"{socket.gethostname()}-{self.pid}"

    def start(self) -> Worker:
        with open(self.folder / "worker.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(TMPDIR=str(self.folder / "tmp")),
                start_new_session=True,
                cwd=self.folder,  # not the current folder, which `-m` would put ahead of PYTHONPATH
            )
        self.pid = self.process.pid
        started_group(f"boostream worker ({self.name})", self.pid)
        return self

    def wait_listed(self, api_url: str, timeout_s: float = 120.0) -> None:
        """Until the API's /health lists this worker (its heartbeat is in Redis)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=10.0) as client:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"worker {self.name} exited with status {self.process.returncode}:\n{self.log_tail()}"
                    )
                if self.worker_id in workers_by_id(client, api_url):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {self.name} not in /health after {timeout_s:.0f} s:\n{self.log_tail()}")
                time.sleep(0.05)

    def kill_9(self) -> float:
        """SIGKILL to the `boostream worker` process alone; time.time() just before it."""
        assert self.process is not None
        at = time.time()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        return at

    def stop(self) -> None:
        process = self.process
        if process is not None:
            terminate(process, grace_s=20)
            end_group(process.pid, f"boostream worker ({self.name})")
        if os.environ.get("BENCH_KEEP_DATA") != "1":
            shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.folder / "worker.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def workers_by_id(client: httpx.Client, api_url: str) -> dict[str, dict[str, Any]]:
    try:
        health = client.get(api_url + "/health").json()
    except (httpx.TransportError, ValueError):
        return {}
    return {view.get("id", ""): view for view in health.get("workers", [])}


@dataclasses.dataclass
class Cluster:
    """A Redis deployment: redis-server, API replicas, workers."""

    redis: RedisServer
    apis: list[Server]
    workers: list[Worker]
    max_queued: int | None
    shared: list[str]  # ["--shared-dir", DIR] when tables go through a shared directory

    def add_worker(self, jobs: int = 1, threads: int = 1, dead_after_s: float | None = None, name: str = "") -> Worker:
        name = name or f"w{len(self.workers) + 1}"
        worker = Worker(self.redis.url, jobs, threads, dead_after_s, name, self.shared)
        self.workers.append(worker)
        worker.start()
        worker.wait_listed(self.apis[0].url)
        return worker

    def describe(self) -> str:
        workers = "; ".join(f"{w.name}: worker --redis URL {' '.join(w.options)}" for w in self.workers) or "none yet"
        replica = "serve --redis URL" + (f" --max-queued {self.max_queued}" if self.max_queued else "")
        replica += " --shared-dir DIR" if self.shared else ""
        return f"{len(self.apis)} API replica(s) ({replica}); workers: {workers}"

    def dump_logs(self) -> None:
        time.sleep(0.5)  # a server logs a failure's traceback just after it answered 500
        print("  ---- logs (tails) ----")
        for api in self.apis:
            print(f"  [API replica :{api.port}]\n{api.log_tail(2000)}")
        for worker in self.workers:
            print(f"  [worker {worker.name} pid {worker.pid}]\n{worker.log_tail(2000)}")
        print(f"  [redis-server]\n{self.redis.log_tail(1000)}")
        sys.stdout.flush()


@contextlib.contextmanager
def redis_deployment(
    args: argparse.Namespace,
    replicas: int = 1,
    workers: Sequence[dict[str, Any]] = (),
    max_queued: int | None = None,
    shared_dir: bool = False,
) -> Iterator[Cluster]:
    """redis-server, then the API replicas, then the workers (each listed in /health before the
    next); stopped in the reverse order, whatever happens. `shared_dir`: tables go through a
    directory they all have (`--shared-dir`), not through Redis."""
    redis = RedisServer(appendfsync=args.redis_fsync)
    shared: list[str] = []
    if shared_dir:
        folder = Path(tempfile.mkdtemp(prefix="boostream-bench-shared-"))
        FOLDERS.append(folder)
        shared = ["--shared-dir", str(folder)]
    cluster = Cluster(redis, [], [], max_queued, shared)
    try:
        try:
            redis.start()
        finally:
            if redis.directory is not None:
                FOLDERS.append(redis.directory)
        STARTED.append(("redis-server", redis.process.pid if redis.process else 0))
        extra = ["--redis", redis.url, *shared] + (["--max-queued", str(max_queued)] if max_queued else [])
        for _ in range(replicas):
            cluster.apis.append(start_server("boostream serve --redis", extra_args=extra))
        for spec in workers:
            cluster.add_worker(**spec)
        yield cluster
    except Exception:
        cluster.dump_logs()
        raise
    finally:
        with shielded():
            for worker in cluster.workers:  # SIGTERM to all first: they stop side by side
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            for worker in cluster.workers:
                worker.stop()
            for api in cluster.apis:
                stop_server(api, "boostream serve --redis")
            redis.stop()


@contextlib.contextmanager
def one_process(**options: Any) -> Iterator[Server]:
    server = start_server("boostream serve", **options)
    try:
        yield server
    except Exception:
        time.sleep(0.5)  # a server logs a failure's traceback just after it answered 500
        print(f"  ---- server log (tail) ----\n{server.log_tail(3000)}")
        raise
    finally:
        with shielded():
            stop_server(server, "boostream serve")


def subscriber_main(conn: Any, port: int, job_id: str, n: int) -> None:
    """fanout.py's subscribers, in a process group of their own (so the watchdog can kill them)."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    subscriber_process(conn, port, job_id, n, 0, False)


def spawn_subscribers(port: int, job_id: str, n: int) -> tuple[Any, Any]:
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=subscriber_main, args=(child, port, job_id, n), daemon=True)
    process.start()
    assert process.pid is not None
    with contextlib.suppress(OSError):
        os.setpgid(process.pid, process.pid)
    started_group("subscribers", process.pid)
    return process, parent


def leftovers() -> list[tuple[str, int, list[int]]]:
    """Processes still alive in any group this script started."""
    return [(what, pgid, pids) for what, pgid in STARTED if pgid and (pids := group_pids(pgid))]


# ----------------------------------------------------------------------------------------------
# HTTP helpers


def health(client: httpx.Client, url: str) -> dict[str, Any]:
    response = client.get(url + "/health")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def post_job(client: httpx.Client, url: str, body: bytes) -> str:
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    content: Any = body_chunks(body)  # memoryview slices: httpx sends them without copying (see _common)
    response = client.post(url + "/jobs", content=content, headers=headers, timeout=120)
    if response.status_code != 202:
        raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text[:1000]}")
    job_id: str = response.json()["job_id"]
    return job_id


def job_status(client: httpx.Client, url: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"{url}/jobs/{job_id}", timeout=60)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def wait_status(client: httpx.Client, url: str, job_id: str, wanted: Sequence[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = job_status(client, url, job_id)
        if job["status"] in wanted:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
        time.sleep(0.05)


def iso_seconds(text: str | None) -> float:
    if text is None:
        return math.nan
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def replay(client: httpx.Client, url: str, job_id: str) -> list[SSEEvent]:
    """A finished job's whole log, read again from the start."""
    with client.stream("GET", f"{url}/jobs/{job_id}/events", params={"after": "0"}, timeout=120) as response:
        if response.status_code != 200:
            raise RuntimeError(f"replaying job {job_id}: {response.status_code}")
        return list(stream_events(response))


class EventFollower(threading.Thread):
    """GET /jobs/{id}/events read to its terminal event, in a thread of its own; each event stamped
    when its blank line is parsed."""

    def __init__(self, url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id = url, job_id
        self.events: list[SSEEvent] = []
        self.error: BaseException | None = None
        self.done = False
        self._changed = threading.Condition()

    def run(self) -> None:
        try:
            timeout = httpx.Timeout(None, connect=10.0)
            with httpx.Client(timeout=timeout) as client:
                path = f"{self.url}/jobs/{self.job_id}/events"
                with client.stream("GET", path, headers={"accept": "text/event-stream"}) as response:
                    if response.status_code != 200:
                        raise RuntimeError(f"GET {path} answered {response.status_code}")
                    for event in stream_events(response):
                        with self._changed:
                            self.events.append(event)
                            self._changed.notify_all()
                        if event.event in TERMINAL:
                            break
        except BaseException as error:  # reported by wait_for
            self.error = error
        finally:
            with self._changed:
                self.done = True
                self._changed.notify_all()

    def wait_for(self, wanted: Callable[[SSEEvent], bool], timeout_s: float, what: str) -> SSEEvent:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = next((event for event in self.events if wanted(event)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if self.done or left <= 0:
                    seen = [e.event for e in self.events][-8:]
                    reason = f" ({self.error!r})" if self.error else ""
                    raise RuntimeError(f"no {what} within {timeout_s:.0f} s{reason}; last events {seen}")
                self._changed.wait(left)


def event_data(event: SSEEvent) -> dict[str, Any]:
    data: dict[str, Any] = event.json()
    return data


# ----------------------------------------------------------------------------------------------
# 1. Throughput


def submit_all(url: str, bodies: Sequence[bytes], submitters: int) -> tuple[list[str], list[float], float]:
    """POST every body to /jobs from `submitters` threads (job i from thread i % submitters); the
    job ids in order, each POST's seconds, and time.time() before the first."""
    ids: list[str] = [""] * len(bodies)
    seconds: list[float] = [math.nan] * len(bodies)
    errors: list[BaseException] = []

    def submit(first: int) -> None:
        try:
            with httpx.Client(timeout=120) as client:
                for index in range(first, len(bodies), submitters):
                    began = time.perf_counter()
                    ids[index] = post_job(client, url, bodies[index])
                    seconds[index] = time.perf_counter() - began
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=submit, args=(i,), daemon=True) for i in range(submitters)]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return ids, seconds, started


def wait_all_finished(client: httpx.Client, url: str, timeout_s: float) -> float:
    """Until no job waits or trains (GET /jobs?status=queued,running every 0.1 s); time.time() then."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(url + "/jobs", params={"status": "queued,running", "limit": "500"}, timeout=60)
        response.raise_for_status()
        if not response.json()["jobs"]:
            return time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs still waiting or training after {timeout_s:.0f} s")
        time.sleep(0.1)


def run_batch(label: str, url: str, bodies: Sequence[bytes], args: argparse.Namespace) -> dict[str, Any]:
    with httpx.Client(timeout=60) as client:
        warm = 4
        began = time.perf_counter()
        submit_all(url, bodies[:warm], min(warm, args.submitters))
        wait_all_finished(client, url, args.max_seconds)
        warm_s = time.perf_counter() - began
        ids, post_s, first_post = submit_all(url, bodies, args.submitters)
        submitted = time.time()
        seen_done = wait_all_finished(client, url, args.max_seconds)
        jobs = [job_status(client, url, job_id) for job_id in ids]
    statuses: dict[str, int] = {}
    for job in jobs:
        statuses[job["status"]] = statuses.get(job["status"], 0) + 1
    created = [iso_seconds(job["created_at"]) for job in jobs]
    started = [iso_seconds(job["started_at"]) for job in jobs]
    finished = [iso_seconds(job["finished_at"]) for job in jobs]
    makespan = max(finished) - first_post
    result: dict[str, Any] = {
        "label": label,
        "jobs": len(jobs),
        "statuses": statuses,
        "warm_s": warm_s,
        "submit_s": submitted - first_post,
        "post": summary(post_s),
        "makespan_s": makespan,
        "seen_done_s": seen_done - first_post,
        "jobs_per_s": len(jobs) / makespan,
        "wait": summary([s - c for c, s in zip(created, started, strict=True)]),
        "run": summary([f - s for s, f in zip(started, finished, strict=True)]),
        "total": summary([f - c for c, f in zip(created, finished, strict=True)]),
    }
    print(
        f"  {label}: {warm} warm-up jobs in {warm_s:.2f} s (untimed); {len(jobs)} jobs POSTed in "
        f"{result['submit_s']:.2f} s (POST p50 {result['post']['p50_ms']:.1f} ms, p99 "
        f"{result['post']['p99_ms']:.1f} ms); last finished {makespan:.2f} s after the first POST "
        f"(seen by the poller at {result['seen_done_s']:.2f} s) -> {result['jobs_per_s']:.2f} jobs/s; {statuses}"
    )
    for key, what in (("wait", "created -> started"), ("run", "started -> finished"), ("total", "created -> finished")):
        print(f"    {what:<20} {format_summary(result[key])}")
    sys.stdout.flush()
    return result


def section_throughput(args: argparse.Namespace) -> dict[str, Any]:
    rows, cols = parse_size(args.throughput_size)
    count = args.throughput_jobs
    X, y = regression_data(rows, cols, args.seed)
    bodies = [train_body("lightgbm", X, y, {"n_estimators": args.throughput_rounds, "seed": i}) for i in range(count)]
    max_queued = max(100, count + 10)
    print(
        f"\n## throughput: {count} jobs of {size_label(rows, cols)}, {args.throughput_rounds} rounds "
        f"({len(bodies[0]) / 1e3:.0f} kB of JSON each), POST /jobs from {args.submitters} threads, then waited "
        f"for; --max-queued {max_queued} on every server"
    )
    with one_process(extra_args=["--max-queued", str(max_queued)]) as server, httpx.Client() as client:
        limit = health(client, server.url)["queue"]["cpu"]["limit"]
        threads = max(1, (os.cpu_count() or 1) // limit)
        print(
            f"# one process: serve with its defaults: cpu worker count (--cpu-jobs) {limit} from /health, "
            f"--threads-per-job 0 = {threads} thread(s) per job"
        )
        one = run_batch("one process", server.url, bodies, args)
    specs = [{"jobs": 1, "threads": threads, "name": f"w{i + 1}"} for i in range(2)]
    with redis_deployment(args, replicas=1, workers=specs, max_queued=max_queued) as cluster:
        print(f"# redis: {cluster.describe()}")
        redis = run_batch("redis", cluster.apis[0].url, bodies, args)
    ratio = redis["jobs_per_s"] / one["jobs_per_s"]
    print(
        f"  jobs/s: one process ({limit} cpu workers) {one['jobs_per_s']:.2f}; redis (1 replica + 2 workers "
        f"--jobs 1) {redis['jobs_per_s']:.2f}; redis / one process = {ratio:.2f}"
    )
    return {"one": one, "redis": redis, "ratio": ratio, "limit": limit, "threads": threads}


# ----------------------------------------------------------------------------------------------
# 2. Progress latency


def section_latency(args: argparse.Namespace) -> dict[str, Any]:
    rows, cols = parse_size(args.latency_size)
    cores = os.cpu_count() or 1
    X, y = regression_data(rows, cols, args.seed)
    spr = lightgbm_seconds_per_round(X, y, cores)
    rounds = max(50, int(args.target_s / spr))
    body = train_body("lightgbm", X, y, {"n_estimators": rounds})
    print(
        f"\n## latency: one stream of {size_label(rows, cols)}, {rounds} rounds ({spr * 1000:.2f} ms/round with "
        f"{cores} threads in process -> about {rounds * spr:.1f} s); POST /train/stream"
    )
    results: dict[str, Any] = {}
    with one_process(cpu_jobs=1, threads_per_job=cores) as server, httpx.Client() as client:
        print(f"### one process: serve --cpu-jobs 1 --threads-per-job {cores}")
        run = stream_train(client, server.url, body, timeout_s=args.max_seconds)
        results["one"] = latency_report("one process", [run]) | {"gaps": event_gaps(run)}
        print_gaps(run)
    spec = {"jobs": 1, "threads": cores, "name": "w1"}
    with redis_deployment(args, replicas=1, workers=[spec]) as cluster, httpx.Client() as client:
        print(f"### redis: {cluster.describe()}; streamed from the replica")
        run = stream_train(client, cluster.apis[0].url, body, timeout_s=args.max_seconds)
        results["redis"] = latency_report("redis", [run]) | {"gaps": event_gaps(run)}
        print_gaps(run)
    return results


def event_gaps(run: TrainRun) -> list[float]:
    progress = run.of_type("progress")
    return [b.received - a.received for a, b in zip(progress, progress[1:], strict=False)]


def print_gaps(run: TrainRun) -> None:
    gaps = event_gaps(run)
    started = run.first("started")
    first = run.of_type("progress")[:1]
    to_started = started.received_perf - run.sent if started else math.nan
    to_first = first[0].received_perf - run.sent if first else math.nan
    print(
        f"  gaps between progress events: p50 {percentile(gaps, 50) * 1000:.0f} ms, max "
        f"{max(gaps, default=math.nan) * 1000:.0f} ms; `started` {to_started:.3f} s and the first progress "
        f"{to_first:.3f} s after sending the request"
    )
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------
# 3. Fan-out


def section_fanout(args: argparse.Namespace) -> dict[str, Any]:
    rows, cols = parse_size(args.fanout_size)
    X, y = regression_data(rows, cols, args.seed)
    spr = lightgbm_seconds_per_round(X, y, 1)
    rounds = max(50, int(args.fanout_target_s / spr))
    body = train_body("lightgbm", X, y, {"n_estimators": rounds})
    blocker_X, blocker_y = regression_data(20_000, 10, args.seed + 1)
    blocker = train_body("lightgbm", blocker_X, blocker_y, {"n_estimators": LONG_ROUNDS})
    n = args.subscribers
    print(
        f"\n## fanout: {n} subscribers of one job's events, in 2 processes; job {size_label(rows, cols)}, "
        f"{rounds} rounds ({spr * 1000:.2f} ms/round with 1 thread in process -> about {rounds * spr:.1f} s), "
        "queued behind a blocker until every subscriber has its first event"
    )
    results: dict[str, Any] = {}
    with one_process(cpu_jobs=1, threads_per_job=1) as server:
        print("### one process: serve --cpu-jobs 1 --threads-per-job 1; every subscriber on it")
        assert server.process is not None
        cpu = {"server": server.process.pid}
        ports = [server.port, server.port]
        results["one"] = fanout_case("one process", server.url, ports, body, blocker, n, args, cpu, None)
    spec = {"jobs": 1, "threads": 1, "name": "w1"}
    with redis_deployment(args, replicas=2, workers=[spec]) as cluster:
        ports = [api.port for api in cluster.apis]
        shares = f"{n // 2} + {n - n // 2} subscribers on replicas :{ports[0]}, :{ports[1]}"
        print(f"### redis: {cluster.describe()}; {shares}")
        cpu = {f"replica {i + 1}": api.process.pid for i, api in enumerate(cluster.apis) if api.process}
        assert cluster.redis.process is not None
        cpu |= {"redis-server": cluster.redis.process.pid, "worker": cluster.workers[0].pid}
        results["redis"] = fanout_case("redis", cluster.apis[0].url, ports, body, blocker, n, args, cpu, cluster.redis)
    return results


def fanout_case(
    label: str,
    url: str,
    ports: list[int],
    body: bytes,
    blocker: bytes,
    n: int,
    args: argparse.Namespace,
    cpu_of: dict[str, int],
    redis: RedisServer | None,
) -> dict[str, Any]:
    """One job, `n` subscribers on `ports`; the CPU seconds of the processes `cpu_of` (their own,
    not their children's) and the commands Redis processed, from the blocker's cancel to the end."""
    shares = [n // 2, n - n // 2]
    processes: list[Any] = []
    with httpx.Client(timeout=60) as client:
        try:
            blocker_id = post_job(client, url, blocker)
            wait_status(client, url, blocker_id, ("running",), 120)
            job_id = post_job(client, url, body)
            conns = []
            for port, share in zip(ports, shares, strict=True):
                process, conn = spawn_subscribers(port, job_id, share)
                processes.append(process)
                conns.append(conn)
            for conn in conns:
                expect(conn, "ready", 180)
            cpu_before = {name: cpu_seconds(pid) for name, pid in cpu_of.items()}
            commands_before = redis_commands(redis)
            client.post(f"{url}/jobs/{blocker_id}/cancel").raise_for_status()
            job = wait_status(client, url, job_id, ("succeeded", "failed", "cancelled"), args.max_seconds)
            done = [expect(conn, "done", 300) for conn in conns]
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in cpu_of.items()}
            commands = redis_commands(redis) - commands_before if redis is not None else -1
            log = [(e.id, e.event) for e in replay(client, url, job_id)]
            result = client.get(f"{url}/jobs/{job_id}/result", timeout=60).json()
        finally:
            with shielded():
                for process in processes:
                    process.join(10)
                    if process.is_alive():
                        kill_group(process.pid)
                    end_group(process.pid, "subscribers")
    delivered = sum(len(events) for _, subscribers, _ in done for events in subscribers)
    figures = fanout_figures(label, [recs for _, recs, _ in done], log)
    figures.update(
        status=job["status"],
        fit_s=result["timings"]["fit_s"],
        artifact_kib=len(result.get("artifact") or "") / 1024,
        client_cpu_s=sum(cpu for _, _, cpu in done),
        events_total=delivered,
        cpu=cpu,
        redis_commands=commands,
    )
    print_fanout(figures)
    return figures


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (not its children); NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15 of stat(5)


def redis_commands(redis: RedisServer | None) -> int:
    """Commands the Redis server has processed so far (INFO stats); -1 without one."""
    return int(redis.info("stats")["total_commands_processed"]) if redis is not None else -1


def fanout_figures(label: str, per_process: list[list[list[Any]]], log: list[tuple[int, str]]) -> dict[str, Any]:
    """Per subscriber (records: id, type, receipt time, ts, iteration): the log it got against the
    replayed one; progress lag over everyone, per event spread, `complete` after the final round."""
    expected_ids = [event_id for event_id, _ in log]
    complete_ok = duplicated = gaps = missing = different = 0
    lags: dict[int, list[float]] = {}  # by subscriber process (replica)
    by_event: dict[int, list[float]] = {}
    complete_lag: list[float] = []
    subscribers = 0
    for process_index, subs in enumerate(per_process):
        for events in subs:
            subscribers += 1
            ids = [int(rec[0]) for rec in events]
            complete_ok += bool(events) and events[-1][1] == "complete"
            duplicated += len(ids) != len(set(ids))
            gaps += ids != list(range(1, len(ids) + 1))
            missing += bool(set(expected_ids) - set(ids))
            different += [(int(rec[0]), rec[1]) for rec in events] != log
            final_ts = None
            for event_id, kind, received, ts, _ in events:
                if kind == "progress":
                    lags.setdefault(process_index, []).append(received - ts)
                    by_event.setdefault(int(event_id), []).append(received)
                    final_ts = ts
                elif kind == "complete" and final_ts is not None:
                    complete_lag.append(received - final_ts)
    spreads = [max(times) - min(times) for times in by_event.values() if len(times) > 1]
    every = [lag for values in lags.values() for lag in values]
    return {
        "label": label,
        "subscribers": subscribers,
        "log_events": len(log),
        "log_ends": log[-1][1] if log else "",
        "complete_ok": complete_ok,
        "duplicated": duplicated,
        "gaps": gaps,
        "missing": missing,
        "different": different,
        "all_ok": subscribers and complete_ok == subscribers and not (duplicated or gaps or missing or different),
        "lag": summary(every),
        "lag_by_process": [summary(lags.get(i, [])) for i in range(len(per_process))],
        "spread": summary(spreads),
        "complete": summary(complete_lag),
    }


def print_fanout(f: dict[str, Any]) -> None:
    ok = "yes" if f["all_ok"] else "NO"
    print(
        f"  {f['label']}: job {f['status']}, fit_s {f['fit_s']:.2f}, {f['log_events']} events in its log (ending "
        f"{f['log_ends']}), artifact {f['artifact_kib']:.0f} KiB of base64; subscribers' CPU {f['client_cpu_s']:.2f} s"
    )
    print(
        f"  every subscriber got every event, ids 1..N contiguous, no duplicate, ending with complete: {ok} "
        f"({f['subscribers']} subscribers: {f['complete_ok']} ended with complete; {f['missing']} missed events, "
        f"{f['gaps']} with a gap, {f['duplicated']} with duplicates, {f['different']} whose log differs)"
    )
    print(f"  progress lag, all subscribers   {format_summary(f['lag'])}")
    for index, lag in enumerate(f["lag_by_process"]):
        print(f"    subscriber process {index + 1}      {format_summary(lag)}")
    print(f"  spread per event (last - first) {format_summary(f['spread'])}")
    print(f"  complete after the final round  {format_summary(f['complete'])}")
    cpu = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in f["cpu"].items())
    print(f"  CPU from the blocker's cancel to the last subscriber's end (own threads, not children): {cpu}")
    if f["redis_commands"] >= 0:
        per = f["redis_commands"] / max(1, f["events_total"])
        print(
            f"  Redis commands processed meanwhile: {f['redis_commands']} ({per:.1f} per event delivered to a "
            "subscriber, the blocker's cancel and the job's own writes included)"
        )
    print(f"  -> progress lag p99 {verdict(f['lag']['p99_ms'], LATENCY_P99_TARGET_MS, ' ms')}")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------
# 4. Parquet end to end


def parquet_body(X: np.ndarray, y: np.ndarray) -> bytes:
    table = pa.table({**{f"f{i}": X[:, i] for i in range(X.shape[1])}, "y": y})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def e2e_request(client: httpx.Client, url: str, body: bytes, rounds: int) -> dict[str, Any]:
    params = {"target": "y", "model_type": "lightgbm", "n_estimators": str(rounds)}
    run = stream_train(client, url, body, timeout_s=1800.0, content_type=PARQUET, params=params)
    complete = run.complete
    timings = complete["timings"]
    started = run.first("started")
    progress = run.of_type("progress")
    return {
        "e2e_s": run.e2e_s,
        "headers_s": run.headers - run.sent,
        "started_s": started.received_perf - run.sent if started else math.nan,
        "decode_s": timings.get("decode_s", math.nan),
        "queued_s": timings.get("queued_s", math.nan),
        "load_s": timings.get("load_s", math.nan),
        "fit_s": timings["fit_s"],
        "artifact_s": timings.get("artifact_s", math.nan),
        "after_s": run.terminal.received_perf - progress[-1].received_perf if progress else math.nan,
        "beyond_s": run.e2e_s - timings["fit_s"],
        "train_l2": complete["metrics"].get("train_l2"),
    }


def print_request(label: str, r: dict[str, Any]) -> None:
    print(
        f"  {label:<14} e2e {r['e2e_s']:7.3f} s | headers {r['headers_s']:6.3f} | started {r['started_s']:6.3f}"
        f" | decode {r['decode_s']:6.3f} | queued {r['queued_s']:6.3f} | load {r['load_s']:6.3f}"
        f" | fit {r['fit_s']:7.3f} | artifact {r['artifact_s']:6.3f} | last progress->complete {r['after_s']:6.3f}"
        f" | e2e - fit {r['beyond_s']:6.3f} s  (train l2 {r['train_l2']:.6g})"
    )
    sys.stdout.flush()


def section_e2e(args: argparse.Namespace) -> dict[str, Any]:
    rows, cols = parse_size(args.parquet_size)
    threads = args.threads
    began = time.perf_counter()
    X, y = regression_data(rows, cols, args.seed)
    body = parquet_body(X, y)
    del X, y
    print(
        f"\n## e2e: Parquet {size_label(rows, cols)} ({len(body) / 1e6:.1f} MB, written in "
        f"{time.perf_counter() - began:.1f} s, not timed), {args.rounds} rounds, {threads} LightGBM thread(s), "
        f"POST /train/stream; a cold request each, then {args.repeats} alternating pair(s)"
    )
    spec = {"jobs": 1, "threads": threads, "name": "w1"}
    keys = ("one", "redis", "shared")
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    cold: dict[str, dict[str, Any]] = {}
    with (
        one_process(cpu_jobs=1, threads_per_job=threads) as server,
        redis_deployment(args, replicas=1, workers=[spec]) as cluster,
        redis_deployment(args, replicas=1, workers=[spec], shared_dir=True) as shared,
        httpx.Client() as client,
    ):
        print(f"### one process: serve --cpu-jobs 1 --threads-per-job {threads}")
        print(f"### redis: {cluster.describe()}")
        print(f"### shared: {shared.describe()}")
        urls = {"one": server.url, "redis": cluster.apis[0].url, "shared": shared.apis[0].url}
        for key in keys:
            cold[key] = e2e_request(client, urls[key], body, args.rounds)
            print_request(f"{key} cold", cold[key])
        for i in range(args.repeats):
            for key in keys if i % 2 == 0 else keys[::-1]:
                runs[key].append(e2e_request(client, urls[key], body, args.rounds))
                print_request(f"{key} {i + 1}", runs[key][-1])
        memory = cluster.redis.info("memory")
        redis_peak = memory.get("used_memory_peak_human", "?")
        aof_mb = cluster.redis.aof_bytes() / 1e6
        persistence = cluster.redis.info("persistence") | cluster.redis.info("stats")
        rewrites = persistence.get("aof_rewrites", "?")
        server_peak = server.peak_rss_mib()
        replica_peak = cluster.apis[0].peak_rss_mib()
    del body
    med = {key: {name: median([r[name] for r in runs[key]]) for name in runs[key][0]} for key in runs}
    for key, label in (("one", "one process"), ("redis", "redis"), ("shared", "shared dir")):
        m = med[key]
        print(
            f"  medians, {label:<11}: e2e {m['e2e_s']:.3f} s | fit (training wall time, fit_s) {m['fit_s']:.3f} s |"
            f" e2e - fit {m['beyond_s']:.3f} s | headers {m['headers_s']:.3f} s | started {m['started_s']:.3f} s"
        )
    print(
        f"  redis: peak memory {redis_peak}, append-only files {aof_mb:.0f} MB at the end ({rewrites} rewrites);"
        f" peak RSS: one-process "
        f"server {server_peak or math.nan:.0f} MiB, API replica {replica_peak or math.nan:.0f} MiB"
    )
    figures: dict[str, Any] = {"median": med}
    for key, label in (("redis", "tables in Redis"), ("shared", "tables in a shared directory")):
        ratio = med[key]["e2e_s"] / med["one"]["e2e_s"]
        adjusted = (med["one"]["e2e_s"] + med[key]["beyond_s"] - med["one"]["beyond_s"]) / med["one"]["e2e_s"]
        pairs = [r["e2e_s"] / o["e2e_s"] for r, o in zip(runs[key], runs["one"], strict=True)]
        cold_ratio = cold[key]["e2e_s"] / cold["one"]["e2e_s"]
        print(f"  {label}: e2e / one-process e2e (medians) = {ratio:.3f}  -> {verdict(ratio, E2E_RATIO_TARGET)}")
        print(f"    per pair: {', '.join(f'{p:.3f}' for p in pairs)}; cold {cold_ratio:.3f}")
        print(
            f"    with the fit's noise taken out (one e2e + {key} (e2e - fit) - one (e2e - fit)) / one e2e = "
            f"{adjusted:.3f}  -> {verdict(adjusted, E2E_RATIO_TARGET)}"
        )
        figures[key] = {"ratio": ratio, "adjusted": adjusted, "cold_ratio": cold_ratio, "pairs": pairs}
    sys.stdout.flush()
    return figures


# ----------------------------------------------------------------------------------------------
# 5. Failover


def section_failover(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows, cols = parse_size(args.failover_size)
    X, y = regression_data(rows, cols, args.seed)
    body = train_body("lightgbm", X, y, {"n_estimators": LONG_ROUNDS})
    values = [float(v) for v in args.dead_after.split(",") if v.strip()]
    print(
        f"\n## failover: a job of {size_label(rows, cols)}, {LONG_ROUNDS} rounds, on worker A; worker B started; "
        f"A killed (SIGKILL); --dead-after {', '.join(f'{v:g}' for v in values)} s; "
        f"{args.failover_repeats} time(s) each"
    )
    header = (
        f"{'D s':>5} {'run':>3} {'A gone /health':>14} {'restarted':>9} {'started #2':>10} {'progress #2':>11}"
        f" {'expected':>11} {'A procs gone':>12} {'attempts':>8}  who trains it after"
    )
    print(header)
    rows_out = []
    for dead_after in values:
        for run in range(args.failover_repeats):
            row = failover_case(args, body, dead_after, run + 1)
            expected = f"{0.8 * dead_after:.1f}-{1.5 * dead_after:.1f} s"
            rows_out.append(row)
            print(
                f"{dead_after:5g} {run + 1:>3} {row['gone_s']:13.2f}s {row['restarted_s']:8.2f}s "
                f"{row['started_s']:9.2f}s {row['progress_s']:10.2f}s {expected:>11}"
                f" {row['children_s']:11.2f}s {row['attempts']:>8}  {row['after']}"
            )
            if row["notes"]:
                print("      " + "; ".join(row["notes"]))
            sys.stdout.flush()
    return rows_out


def failover_case(args: argparse.Namespace, body: bytes, dead_after: float, run: int) -> dict[str, Any]:
    notes: list[str] = []
    with redis_deployment(args, replicas=1) as cluster, httpx.Client(timeout=30) as client:
        url = cluster.apis[0].url
        a = cluster.add_worker(jobs=1, threads=1, dead_after_s=dead_after, name="A")
        job_id = post_job(client, url, body)
        follower = EventFollower(url, job_id)
        follower.start()
        try:
            follower.wait_for(lambda e: e.event == "progress", 120, "first progress on A")
            b = cluster.add_worker(jobs=1, threads=1, dead_after_s=dead_after, name="B")
            deadline = time.monotonic() + 2 * dead_after + 10
            while True:  # A's busy count is renewed with its heartbeat, every D/5
                views = workers_by_id(client, url)
                a_busy, b_busy = views.get(a.worker_id, {}).get("busy"), views.get(b.worker_id, {}).get("busy")
                if (a_busy, b_busy) == (1, 0) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if (a_busy, b_busy) != (1, 0):
                notes.append(f"before the kill /health showed A busy {a_busy}, B busy {b_busy}")
            own = [pid for pid in group_pids(a.pid) if pid != a.pid]
            killed_at = a.kill_9()
            gone = children_gone = math.nan
            limit = time.monotonic() + 3 * dead_after + 60
            while (math.isnan(gone) or math.isnan(children_gone)) and time.monotonic() < limit:
                now = time.time()
                if math.isnan(gone) and a.worker_id not in workers_by_id(client, url):
                    gone = now - killed_at
                if math.isnan(children_gone) and not group_pids(a.pid):
                    children_gone = now - killed_at
                time.sleep(0.02)
            if math.isnan(children_gone):
                alive = group_pids(a.pid)
                notes.append(f"A's other processes {alive} still alive {time.time() - killed_at:.0f} s after")
            elif own:
                notes.append(f"A had {len(own)} other process(es) (fork server, training)")
            wait_s = 3 * dead_after + 60
            restarted = follower.wait_for(lambda e: e.event == "restarted", wait_s, "restarted")
            started = follower.wait_for(
                lambda e: e.event == "started" and event_data(e).get("attempt") == 2, wait_s, "started, attempt 2"
            )
            progress = follower.wait_for(
                lambda e: e.event == "progress" and e.id > started.id, wait_s, "progress of attempt 2"
            )
            job = job_status(client, url, job_id)
            time.sleep(dead_after / 5 + 0.2)  # a worker's busy count is renewed with its heartbeat
            views = workers_by_id(client, url)
            after = ", ".join(f"{'B' if wid == b.worker_id else wid} busy {v.get('busy')}" for wid, v in views.items())
            reason = event_data(restarted).get("reason")
            notes.append(f"restarted: {reason!r}; job {job['status']}, attempt {job['attempts']}")
            started_twice = [e for e in follower.events if e.event == "started" and event_data(e).get("attempt") == 2]
            if len(started_twice) != 1:
                notes.append(f"`started` with attempt 2 came {len(started_twice)} times")
        finally:
            with contextlib.suppress(Exception):
                client.post(f"{url}/jobs/{job_id}/cancel")
            follower.join(30)
    return {
        "dead_after": dead_after,
        "run": run,
        "gone_s": gone,
        "restarted_s": restarted.received - killed_at,
        "started_s": started.received - killed_at,
        "progress_s": progress.received - killed_at,
        "children_s": children_gone,
        "attempts": job["attempts"],
        "after": after,
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------------
# Summary


def print_summary(results: dict[str, Any], failed: dict[str, str]) -> None:
    print("\n## summary")
    t = results.get("throughput")
    if t:
        print(
            f"throughput  {t['one']['jobs']} jobs: one process ({t['limit']} cpu workers, {t['threads']} thread(s) "
            f"each) {t['one']['jobs_per_s']:.2f} jobs/s; redis (1 replica + 2 workers --jobs 1) "
            f"{t['redis']['jobs_per_s']:.2f} jobs/s; redis / one = {t['ratio']:.2f}"
        )
    lat = results.get("latency")
    if lat:
        for key, label in (("one", "one process"), ("redis", "redis")):
            r = lat[key]
            print(
                f"latency     {label:<12} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                f"max {r['max_ms']:6.2f} ms ({r['count']} events)  -> p99 "
                f"{verdict(r['p99_ms'], LATENCY_P99_TARGET_MS, ' ms')}"
            )
    fan = results.get("fanout")
    if fan:
        for key, label in (("one", "one process"), ("redis", "redis")):
            f = fan[key]
            print(
                f"fanout      {label:<12} {f['subscribers']} subscribers, all got every event in order: "
                f"{'yes' if f['all_ok'] else 'NO'}; lag p99 {f['lag']['p99_ms']:.2f} ms, "
                f"max {f['lag']['max_ms']:.2f} ms;"
                f" complete max {f['complete']['max_ms']:.0f} ms  -> p99 "
                f"{verdict(f['lag']['p99_ms'], LATENCY_P99_TARGET_MS, ' ms')}"
            )
    e2e = results.get("e2e")
    if e2e:
        m = e2e["median"]
        for key in ("redis", "shared"):
            r = e2e[key]
            print(
                f"e2e         {key} / one process = {r['ratio']:.3f} ({m[key]['e2e_s']:.3f} s / "
                f"{m['one']['e2e_s']:.3f} s; fit {m[key]['fit_s']:.3f} s / {m['one']['fit_s']:.3f} s) -> "
                f"{verdict(r['ratio'], E2E_RATIO_TARGET)}; noise taken out {r['adjusted']:.3f} -> "
                f"{verdict(r['adjusted'], E2E_RATIO_TARGET)}; cold {r['cold_ratio']:.3f}"
            )
    for row in results.get("failover", []):
        print(
            f"failover    --dead-after {row['dead_after']:g}: kill -> started attempt 2 {row['started_s']:.2f} s "
            f"(A gone from /health {row['gone_s']:.2f} s, restarted {row['restarted_s']:.2f} s)"
        )
    for name, error in failed.items():
        print(f"{name:<11} FAILED: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere: a check of the script")
    parser.add_argument("--throughput-jobs", type=int, help="jobs in the throughput section (100; quick 20)")
    parser.add_argument("--throughput-size", help="ROWSxCOLS of each (300x10)")
    parser.add_argument("--throughput-rounds", type=int, help="rounds of each (20)")
    parser.add_argument("--submitters", type=int, help="threads POSTing the jobs (4)")
    parser.add_argument("--latency-size", help="ROWSxCOLS of the latency job (50000x20)")
    parser.add_argument("--target-s", type=float, help="about how long the latency job trains (10; quick 3)")
    parser.add_argument("--subscribers", type=int, help="subscribers in the fanout section (200; quick 20)")
    parser.add_argument("--fanout-size", help="ROWSxCOLS of the fanout job (100000x20)")
    parser.add_argument("--fanout-target-s", type=float, help="about how long it trains, 1 thread (8; quick 3)")
    parser.add_argument("--parquet-size", help="ROWSxCOLS of the e2e Parquet table (1Mx50; quick 100kx20)")
    parser.add_argument("--rounds", type=int, help="rounds of the e2e job (200)")
    parser.add_argument("--repeats", type=int, help="e2e pairs after the cold requests (3; quick 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="e2e LightGBM threads (all cores)")
    parser.add_argument("--dead-after", help="the workers' --dead-after values, comma-separated (2,5; quick 2)")
    parser.add_argument("--failover-size", help="ROWSxCOLS of the failover job (20000x20)")
    parser.add_argument("--failover-repeats", type=int, help="kills per --dead-after value (1)")
    parser.add_argument(
        "--redis-fsync", default="everysec", choices=("everysec", "always"), help="redis-server's appendfsync"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="hard limit for the whole run (default 1800)")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")

    signal.signal(signal.SIGINT, stop_on_signal)  # also where a shell started this with SIGINT ignored
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGHUP, stop_on_signal)

    import lightgbm

    print_header("scale_out: the Redis deployment (API replicas + workers) against the one-process server")
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    print(
        f"# redis-server: {version.strip()}; a fresh one per Redis deployment: appendonly yes, appendfsync "
        f"{args.redis_fsync}, maxmemory-policy noeviction, no RDB snapshots; lightgbm {lightgbm.__version__}"
    )
    import boostream

    print(
        f"# processes: python -m boostream serve|worker ... ({sys.executable}), all on 127.0.0.1; "
        f"boostream {boostream.__version__} from {Path(boostream.__file__).parent}"
    )
    sys.stdout.flush()
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    runners: dict[str, Callable[[argparse.Namespace], Any]] = {
        "throughput": section_throughput,
        "latency": section_latency,
        "fanout": section_fanout,
        "e2e": section_e2e,
        "failover": section_failover,
    }
    interrupted = False
    try:
        with Watchdog(args.max_seconds):
            for name in sections:
                try:
                    results[name] = runners[name](args)
                except Exception as error:  # the other sections still run
                    traceback.print_exc(file=sys.stdout)
                    failed[name] = f"{type(error).__name__}: {str(error)[:300]}"
                    print(f"  section {name} FAILED: {failed[name]}")
                    sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopped what was started")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # from here on, nothing is left to stop but this
    left = leftovers()
    for _, pgid, _ in left:
        kill_group(pgid)
    if left:
        time.sleep(1.0)
    for folder in FOLDERS:
        if folder.exists() and os.environ.get("BENCH_KEEP_DATA") != "1":
            shutil.rmtree(folder, ignore_errors=True)
    print_summary(results, failed)
    status = "none" if not left else "; ".join(f"{what} (group {pgid}: {pids})" for what, pgid, pids in left)
    lingered = "; ".join(LINGERED) or "none"
    slowest = max(EMPTIED, default=(math.nan, "-"))
    print(f"# process groups started: {len(STARTED)}; left running at the end (then killed): {status}")
    print(
        f"# the other processes of a stopped one (fork servers, workers, decoders) were gone within "
        f"{slowest[0]:.2f} s at most ({slowest[1]}); outlived it by more than {LINGER_S:g} s (then killed): {lingered}"
    )
    sys.stdout.flush()
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
