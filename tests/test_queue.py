"""The queue per device, as the README promises it: each waiting job is told its position whenever
the queue moves, and a full queue answers 429 with `Retry-After` = the soonest ETA of a running job
(or 10 s when no ETA is known)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from test_jobs import body_for, check_log, long_body, wait_for_event

from conftest import Server, start_server

RETRY_AFTER_UNKNOWN_S = 10  # the README's figure, on purpose not imported from the code


@pytest.fixture(scope="module")
def two_waiting(tmp_path_factory):
    """One CPU job trains at once; two may wait. One thread a job: a round's length then follows
    the machine's load, where OpenMP threads waiting on each other on a busy machine can make the
    slow first round below take minutes instead of a fraction of a second."""
    yield from start_server(tmp_path_factory.mktemp("queue"), cpu_jobs=1, max_queued=2, threads_per_job=1)


@pytest.fixture(autouse=True)
def idle_before_and_after(two_waiting: Server):
    assert _busy(two_waiting) == 0, "a previous test left jobs behind"
    yield
    _stop_everything(two_waiting)


def test_each_waiting_job_is_told_its_position_whenever_the_queue_moves(two_waiting: Server, diabetes):
    server = two_waiting
    running = server.create_job(long_body(diabetes))
    wait_for_event(server, running, "started")
    first = server.create_job(body_for(diabetes, 10))
    second = server.create_job(body_for(diabetes, 10))
    with server.client() as client:
        # A waiting job that leaves moves the queue: `second` is now first in line.
        assert client.post(f"/jobs/{first}/cancel").json()["status"] == "cancelled"
    third = server.create_job(body_for(diabetes, 10))
    with server.client() as client:
        # A job that stops training moves it too: `second` trains, `third` is first in line.
        assert client.post(f"/jobs/{running}/cancel").status_code == 202

    second_events = server.events(second)
    third_events = server.events(third)
    check_log(second_events, "complete")
    check_log(third_events, "complete")
    assert [e.type for e in server.events(first)] == ["queued", "cancelled"]
    assert _positions_before_start(second_events) == [2, 1]
    assert _positions_before_start(third_events) == [2, 1]
    assert all(e.data["device"] == "cpu" for e in second_events + third_events if e.type == "queued")
    assert server.job(second)["started_at"] < server.job(third)["started_at"]


def test_a_full_queue_answers_retry_after_the_running_jobs_eta(two_waiting: Server, diabetes, breast_cancer):
    server = two_waiting
    # About 14 ms a round on a loaded two-core machine: an ETA of minutes, far from the 10 s default.
    running = server.create_job(
        {**body_for(breast_cancer, 100_000, learning_rate=0.001, num_leaves=31), "objective": "binary"}
    )
    wait_for_event(server, running, "progress")
    waiting = [server.create_job(body_for(diabetes, 10)) for _ in range(2)]
    with server.client() as client:
        before = client.get(f"/jobs/{running}").json()["progress"]["eta_s"]
        refused = client.post("/jobs", json=body_for(diabetes, 10))
        after = client.get(f"/jobs/{running}").json()["progress"]["eta_s"]
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert before is not None and after is not None
    assert min(before, after) > RETRY_AFTER_UNKNOWN_S + 2, "the ETA must differ from the default to tell them apart"
    # The ETA moves between the two reads: one second of slack either way.
    retry_after = int(refused.headers["Retry-After"])
    assert math.ceil(min(before, after)) - 1 <= retry_after <= math.ceil(max(before, after)) + 1, (
        before,
        retry_after,
        after,
    )
    assert all(server.job(job_id)["status"] == "queued" for job_id in waiting)


def test_a_full_queue_answers_retry_after_10_s_while_no_eta_is_known(two_waiting: Server):
    """The running job has not finished its first round: it has no ETA yet. A job with many
    classes has a slow first round (LightGBM grows one tree per class: a third of a second for a
    thousand classes on one thread), and the queue is full a few requests later."""
    server = two_waiting
    rng = np.random.default_rng(0)
    for n_classes in (1000, 1500, 2000):
        n_rows = 2 * n_classes
        body = {
            "X": rng.normal(size=(n_rows, 10)).round(4).tolist(),
            "y": [f"class {i % n_classes}" for i in range(n_rows)],
            "objective": "multiclass",
            "params": {"n_estimators": 100},
        }
        running = server.create_job(body)  # a free slot: it is dispatched at once
        waiting = [server.create_job({**body, "params": {"n_estimators": 1}}) for _ in range(2)]
        with server.client() as client:
            refused = client.post("/jobs", json={**body, "params": {"n_estimators": 1}})
            still_unknown = client.get(f"/jobs/{running}").json()
        _stop_everything(server)
        if still_unknown["progress"]["eta_s"] is None:
            # No ETA after the 429 was answered, so none when it was: eta_s is only ever set.
            break
    else:
        pytest.fail("every first round ended before the queue could be filled; the no-ETA case was never seen")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.headers["Retry-After"] == str(RETRY_AFTER_UNKNOWN_S)
    assert all(server.job(job_id)["status"] == "cancelled" for job_id in waiting)


def _positions_before_start(events) -> list[int]:
    kinds = [e.type for e in events]
    assert "started" in kinds, kinds
    return [e.data["position"] for e in events[: kinds.index("started")] if e.type == "queued"]


def _busy(server: Server) -> int:
    with server.client() as client:
        queue = client.get("/health").json()["queue"]
    return sum(device["running"] + device["queued"] for device in queue.values())


def _stop_everything(server: Server) -> None:
    """Cancel what waits first (so it never starts), then what trains, and wait for the end."""
    with server.client() as client:
        for status in ("queued", "running"):
            for job in client.get("/jobs", params={"status": status, "limit": 100}).json()["jobs"]:
                client.post(f"/jobs/{job['job_id']}/cancel")
    deadline = time.monotonic() + 30
    while _busy(server):
        if time.monotonic() > deadline:
            with server.client() as client:
                live = client.get("/jobs", params={"status": "queued,running"}).json()["jobs"]
            raise AssertionError(f"jobs were still live 30 s after being cancelled: {live}")
        time.sleep(0.05)
