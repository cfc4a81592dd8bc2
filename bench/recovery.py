"""Time to recover after a restart: how soon a server killed with SIGKILL answers again on its
data directory, with K finished jobs in it and one job that was training when it died.

For each K in --finished, on a fresh data directory:
  1. populate: a server runs K small real jobs through POST /train/stream (--workers at once,
     --cpu-jobs 2), each --rows x --cols with --rounds rounds. So that each job leaves about one
     `progress` event per round in the store, as a job of several seconds would (at most 10 a
     second), this server runs with BOOSTREAM_PROGRESS_INTERVAL_S=0; the restarted ones do not.
  2. that server is stopped (SIGTERM) and one with the default settings takes the directory
     over; one job of --running-size with 100000 rounds is posted to it, and once its input is
     kept on disk and it has reported progress, the server is killed with SIGKILL.
  3. the same command starts a server on the same directory and port (the clock starts just
     before the process is spawned), polled every --poll-ms:
       health    GET /health answers 200
       finished  GET /jobs/{id} of a finished job (the oldest) answers 200
       running   GET /jobs/{id} of the interrupted job says `running` with one more attempt:
                 its `restarted` event is in the log and it trains again from the start
       progress  the same shows an iteration > 0 of that attempt
     then, once: GET /jobs?limit=50, and a full replay of the oldest finished job's events.
     Steps 2-3 are repeated --restarts times (the interrupted job is killed again each time; the
     server gives up on a job after 3 attempts, so at most 2).
The store's size is shown as the server left it at the kill (jobs.sqlite3 and its WAL) and
after a clean stop. `imports` is how long a Python process takes to import what the server
imports and build its app (`create_app`, not started), measured between the kill and the
restart: the floor under `health` (on this shared machine it varies by a few tenths of a
second from one run to the next, so compare `health` with it rather than subtract).

    python bench/recovery.py                                 # about 2 minutes here
    python bench/recovery.py --finished 0,3000 --restarts 1
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from _common import (  # noqa: E402
    REPO_ROOT,
    Server,
    Watchdog,
    body_chunks,
    parse_size,
    print_header,
    regression_data,
    stream_train,
    train_body,
)

MAX_RESTARTS = 2  # the server stops re-running a job that was running at its 3rd start


# ----------------------------------------------------------------------------------------------
# Populating a data directory


def populate(server: Server, count: int, body: bytes, workers: int) -> tuple[list[str], int, float]:
    """Run `count` jobs to completion; (their ids in order of completion, events stored, seconds)."""
    ids: list[str] = []
    events = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()
    remaining = [count]

    def worker() -> None:
        with httpx.Client() as client:
            while True:
                with lock:
                    if remaining[0] == 0 or errors:
                        return
                    remaining[0] -= 1
                try:
                    run = stream_train(client, server.url, body, timeout_s=60)
                    complete = run.complete
                except BaseException as error:
                    errors.append(error)
                    return
                with lock:
                    ids.append(complete["job_id"])
                    events[0] += len(run.events)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return ids, events[0], time.perf_counter() - started


def start_interrupted_job(server: Server, body: bytes) -> str:
    """Post the job that will be running at the kill; return once it trains with its input on disk."""
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    with httpx.Client(timeout=60) as client:
        response = client.post(server.url + "/jobs", content=body_chunks(body), headers=headers)
        response.raise_for_status()
        job_id = response.json()["job_id"]
        wait_for(lambda: client.get(f"{server.url}/jobs/{job_id}").json()["progress"]["iteration"] > 0, 60, 0.05)
    wait_for(lambda: (server.data_dir / "data" / "inputs" / job_id / "meta.json").exists(), 60, 0.05)
    return job_id


# ----------------------------------------------------------------------------------------------
# Killing and restarting


def wait_for(condition: Callable[[], bool], timeout_s: float, interval_s: float) -> None:
    """Until `condition()` is true; connection errors count as not yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not reached within {timeout_s:.0f} s")
        time.sleep(interval_s)


def kill_9(server: Server) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)


def stop_gently(server: Server) -> None:
    """SIGTERM, keeping the data directory (unlike Server.stop)."""
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=30)


def spawn_again(server: Server, log_name: str) -> subprocess.Popen:
    """The server's own command, on its data directory and port, without the populating settings."""
    env = {k: v for k, v in os.environ.items() if k != "BOOSTREAM_PROGRESS_INTERVAL_S"}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO_ROOT)) if p)
    with open(server.data_dir / log_name, "wb") as log:
        return subprocess.Popen(
            server.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def restart(
    server: Server, finished_id: str | None, running_id: str, attempts: int, poll_s: float, log_name: str
) -> dict[str, float]:
    """Start the server again and time its milestones from just before the spawn (seconds)."""
    url = server.url
    with httpx.Client(timeout=10) as client:
        started = time.perf_counter()
        server.process = spawn_again(server, log_name)
        times: dict[str, float] = {}

        def mark(name: str, condition: Callable[[], bool]) -> None:
            wait_for(condition, 120, poll_s)
            times[name] = time.perf_counter() - started

        def rerun() -> dict[str, Any]:
            job = client.get(f"{url}/jobs/{running_id}").json()
            return job if job["attempts"] == attempts else {"status": "", "progress": {"iteration": 0}}

        mark("health", lambda: client.get(url + "/health").status_code == 200)
        if finished_id is not None:
            mark("finished", lambda: client.get(f"{url}/jobs/{finished_id}").status_code == 200)
        mark("running", lambda: rerun()["status"] == "running")
        mark("progress", lambda: rerun()["progress"]["iteration"] > 0)

        began = time.perf_counter()
        client.get(url + "/jobs", params={"limit": 50}).raise_for_status()
        times["list_ms"] = (time.perf_counter() - began) * 1000
        if finished_id is not None:
            began = time.perf_counter()
            with client.stream("GET", f"{url}/jobs/{finished_id}/events") as response:
                response.read()
            times["replay_ms"] = (time.perf_counter() - began) * 1000
    return times


def store_sizes(data_dir: Path) -> dict[str, float]:
    """MB of the SQLite file, its WAL, and the artifacts folder."""
    def mb(path: Path) -> float:
        return path.stat().st_size / 1e6 if path.exists() else 0.0

    artifacts = data_dir / "artifacts"
    return {
        "db_mb": mb(data_dir / "jobs.sqlite3"),
        "wal_mb": mb(data_dir / "jobs.sqlite3-wal"),
        "artifacts_mb": sum(p.stat().st_size for p in artifacts.iterdir()) / 1e6 if artifacts.exists() else 0.0,
    }


IMPORTS = """
import pathlib, tempfile, uvicorn
from boostream.config import Settings
from boostream.streaming_server.app import create_app
with tempfile.TemporaryDirectory() as folder:
    create_app(Settings(data_dir=pathlib.Path(folder)))
"""


def import_seconds() -> float:
    """A Python process that imports what `boostream serve` imports and builds the app (without
    starting it): the part of a start that does not depend on the data directory."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(REPO_ROOT)) if p)
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=env)
    return time.perf_counter() - started


# ----------------------------------------------------------------------------------------------
# One K


def run_k(args: argparse.Namespace, count: int, small_body: bytes, running_body: bytes) -> list[dict[str, Any]]:
    """Populate a fresh data directory with `count` finished jobs, then kill and restart its
    server --restarts times with one job interrupted; one row of figures per restart."""
    os.environ["BOOSTREAM_PROGRESS_INTERVAL_S"] = "0"
    try:
        server = Server(cpu_jobs=2)
        server.start()
    finally:
        del os.environ["BOOSTREAM_PROGRESS_INTERVAL_S"]
    rows = []
    try:
        ids, events, populate_s = populate(server, count, small_body, args.workers)
        print(
            f"## K = {count}: populated in {populate_s:.1f} s ({count / populate_s if count else 0:.0f} "
            f"jobs/s), {events} events read back ({events / count if count else 0:.1f} per job)",
            flush=True,
        )
        stop_gently(server)  # then a server with the default settings takes the directory over
        server.process = spawn_again(server, "server-1.log")
        wait_for(lambda: httpx.get(server.url + "/health").status_code == 200, 120, 0.05)
        running_id = start_interrupted_job(server, running_body)
        data_dir = server.data_dir / "data"
        for attempt in range(2, 2 + args.restarts):
            kill_9(server)
            sizes = store_sizes(data_dir)
            sizes["imports"] = import_seconds()  # the floor under `health`, under the same load
            times = restart(
                server, ids[0] if ids else None, running_id, attempt, args.poll_ms / 1000, f"server-{attempt}.log"
            )
            rows.append({"k": count, "restart": attempt - 1, **sizes, **times})
            print(format_row(rows[-1]), flush=True)
        stop_gently(server)
        clean = store_sizes(data_dir)
        for row in rows:
            row["db_clean_mb"] = clean["db_mb"]
    finally:
        server.stop()
    return rows


# ----------------------------------------------------------------------------------------------
# Output


HEADER = (
    f"{'K':>6} {'restart':>7} {'db MB':>7} {'wal MB':>7} {'artifacts MB':>12} {'imports s':>9} {'health s':>9}"
    f" {'finished s':>10} {'running s':>10} {'progress s':>10} {'list ms':>8} {'replay ms':>9}"
)


def format_row(r: dict[str, Any]) -> str:
    finished = f"{r['finished']:10.3f}" if "finished" in r else f"{'-':>10}"
    replay = f"{r['replay_ms']:9.1f}" if "replay_ms" in r else f"{'-':>9}"
    return (
        f"{r['k']:>6} {r['restart']:>7} {r['db_mb']:7.2f} {r['wal_mb']:7.2f} "
        f"{r['artifacts_mb']:12.1f} {r['imports']:9.3f} {r['health']:9.3f} {finished}"
        f" {r['running']:10.3f} {r['progress']:10.3f} {r['list_ms']:8.1f} {replay}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--finished",
        default="0,100,1000",
        help="finished jobs in the data directory, comma-separated (default 0,100,1000)",
    )
    parser.add_argument("--rows", type=int, default=1000, help="rows of each populating job (default 1000)")
    parser.add_argument("--cols", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=80, help="rounds of each populating job (default 80: about 50 events each)"
    )
    parser.add_argument("--workers", type=int, default=4, help="populating requests at once (default 4)")
    parser.add_argument("--running-size", default="20000x20", help="the job running at the kill (default 20000x20)")
    parser.add_argument(
        "--restarts", type=int, default=2, help=f"kills and restarts per K, at most {MAX_RESTARTS} (default 2)"
    )
    parser.add_argument("--poll-ms", type=float, default=5.0, help="pause between polls while restarting (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=290.0, help="hard limit for the whole run (default 290)")
    args = parser.parse_args()
    if not 1 <= args.restarts <= MAX_RESTARTS:
        parser.error(f"--restarts must be from 1 to {MAX_RESTARTS}")
    counts = [int(c) for c in args.finished.split(",") if c.strip()]

    print_header("recovery: time to answer again after SIGKILL, with K finished jobs and one interrupted")
    with Watchdog(args.max_seconds):
        X, y = regression_data(args.rows, args.cols, args.seed)
        small_body = train_body("lightgbm", X, y, {"n_estimators": args.rounds})
        X, y = regression_data(*parse_size(args.running_size), args.seed + 1)
        running_body = train_body("lightgbm", X, y, {"n_estimators": 100_000})
        del X, y
        print(
            f"# populating jobs: {args.rows} x {args.cols}, {args.rounds} rounds, "
            f"{args.workers} at once; interrupted job: {args.running_size}, 100000 rounds"
        )
        print("\n" + HEADER, flush=True)
        rows = []
        for count in counts:
            rows += run_k(args, count, small_body, running_body)
        print("\n## summary (seconds from spawning the process; MB as left by SIGKILL, and after a clean stop)")
        print(HEADER + f" {'db MB clean':>11}")
        for r in rows:
            print(format_row(r) + f" {r['db_clean_mb']:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
