"""Servers killed with `kill -9` and started again on the same data directory: what the README
promises about interrupted jobs ("Interrupted jobs run again")."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from test_jobs import body_for, check_log, long_body

from conftest import Server, ServerProcess, running_server_process

ONE_SLOT = (
    "--cpu-jobs", "1", "--threads-per-job", "1",
)  # one thread: no OpenMP threads waiting on each other on a busy machine


def test_a_job_running_each_of_the_last_three_times_the_server_died_is_not_tried_again(tmp_path: Path, diabetes):
    with running_server_process(tmp_path, *ONE_SLOT) as server:
        job_id = server.create_job(long_body(diabetes))
        wait_until_training(server, job_id, attempt=1)
        wait_for_inputs_on_disk(server, [job_id])
        kill_9(server)
    for attempt in (2, 3):  # run again, and killed again while it trains
        with running_server_process(tmp_path, *ONE_SLOT) as server:
            wait_until_training(server, job_id, attempt)
            kill_9(server)

    with running_server_process(tmp_path, *ONE_SLOT) as server:
        # The jobs left behind are dealt with before the server answers anything.
        job = server.job(job_id)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "interrupted" and "3 times" in job["error"]["message"]
        assert job["attempts"] == 3 and job["artifact_id"] is None
        events = server.events(job_id)
        check_log(events, "error")
        assert [e.data["attempt"] for e in events if e.type == "started"] == [1, 2, 3], "never started a fourth time"
        assert [e.type for e in events].count("restarted") == 2
        health = server.wait_idle()
        assert health["queue"]["cpu"]["running"] == health["queue"]["cpu"]["queued"] == 0
        assert not (server.data_dir / "inputs" / job_id).exists(), "its input is removed once it ends"


def test_jobs_waiting_when_the_server_died_start_again_in_the_order_they_came(tmp_path: Path, diabetes):
    with running_server_process(tmp_path, *ONE_SLOT) as server:
        running = server.create_job(long_body(diabetes))
        wait_until_training(server, running, attempt=1)
        waiting = [server.create_job(body_for(diabetes, 10 + n)) for n in range(3)]
        wait_for_inputs_on_disk(server, [running, *waiting])
        kill_9(server)

    with running_server_process(tmp_path, *ONE_SLOT) as server:
        # The job that was training came first: it trains again, and the others wait behind it.
        wait_until_training(server, running, attempt=2)
        assert [server.job(job_id)["status"] for job_id in waiting] == ["queued"] * 3
        with server.client() as client:
            assert client.post(f"/jobs/{running}/cancel").status_code == 202
        assert server.wait_for_job(running)["status"] == "cancelled"
        logs = {job_id: server.events(job_id) for job_id in waiting}
        started = [server.job(job_id)["started_at"] for job_id in (running, *waiting)]

    for position, job_id in enumerate(waiting, start=1):
        events = logs[job_id]
        check_log(events, "complete")
        kinds = [e.type for e in events]
        assert kinds[:2] == ["queued", "restarted"] and "started" in kinds, kinds
        assert events[0].data["position"] == position, "before the restart"
        after_restart = events[2 : kinds.index("started")]
        # The same place in line as before, then one closer each time a job ahead is done.
        assert [(e.type, e.data["position"]) for e in after_restart] == [("queued", p) for p in range(position, 0, -1)]
        assert events[kinds.index("started")].data["attempt"] == 1
    assert started == sorted(started), started  # ISO times to the millisecond: one after the other


def kill_9(server: ServerProcess) -> None:
    server.process.kill()
    server.process.wait()


def wait_until_training(server: Server, job_id: str, attempt: int, timeout: float = 30.0) -> None:
    """Until the job trains (a round done) in its `attempt`-th run."""
    deadline = time.monotonic() + timeout
    while True:
        job = server.job(job_id)
        if job["status"] == "running" and job["attempts"] == attempt and job["progress"]["iteration"] > 0:
            return
        assert job["attempts"] <= attempt and job["status"] not in ("succeeded", "failed", "cancelled"), job
        assert time.monotonic() < deadline, f"job {job_id} never trained in attempt {attempt}: {job}"
        time.sleep(0.05)


def wait_for_inputs_on_disk(server: Server, job_ids: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all((server.data_dir / "inputs" / job_id / "meta.json").exists() for job_id in job_ids):
        assert time.monotonic() < deadline, "the jobs' inputs were never kept on disk"
        time.sleep(0.05)


def test_a_job_whose_backend_is_gone_after_the_restart_ends_interrupted_saying_why(tmp_path: Path, diabetes):
    """A data directory taken from a GPU server to one where WarpGBM cannot train: its WarpGBM jobs
    cannot run again there, and end `interrupted` naming the reason, rather than wait forever."""
    from boostream.trainers.warpgbm import WarpGBMTrainer

    availability = WarpGBMTrainer().availability()
    if availability.available:
        pytest.skip("WarpGBM trains here: its jobs would run again")
    with running_server_process(tmp_path, *ONE_SLOT) as server:
        job_id = server.create_job(long_body(diabetes))
        wait_until_training(server, job_id, attempt=1)
        wait_for_inputs_on_disk(server, [job_id])
        kill_9(server)
    # As the GPU server left it: the same job, on the WarpGBM queue.
    with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as database:
        (request,) = database.execute("SELECT request FROM jobs WHERE id = ?", (job_id,)).fetchone()
        moved = json.dumps({**json.loads(request), "model_type": "warpgbm"})
        database.execute(
            "UPDATE jobs SET model_type = 'warpgbm', device = 'gpu', request = ? WHERE id = ?", (moved, job_id)
        )

    with running_server_process(tmp_path, *ONE_SLOT) as server:
        job = server.job(job_id)
        assert job["status"] == "failed" and job["error"]["code"] == "interrupted", job
        assert "warpgbm cannot train on this server any more" in job["error"]["message"]
        assert availability.reason in job["error"]["message"]
        check_log(server.events(job_id), "error")
        assert server.wait_idle()["queue"]["gpu"]["queued"] == 0
