"""Searches across restarts, by the rules jobs follow: a search the server was running when it was
killed (`kill -9`) or stopped goes on at the next start, its running trials taken up where their
jobs are, its event log whole; a finished one is still there; one whose table is gone ends
`interrupted`, its trials' jobs stopped."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from test_restarts import kill_9

from conftest import Server, ServerProcess, parse_sse, running_server_process

TWO_SLOTS = ("--cpu-jobs", "2", "--threads-per-job", "1")
TRIALS = 4


def search_body(diabetes) -> dict:
    """Four trials of a few seconds each, two at once: a kill lands while some train."""
    X, y = diabetes
    return {
        "X": X.tolist(), "y": y.tolist(), "valid_fraction": 0.2,
        "params": {"n_estimators": 4000, "learning_rate": 0.002},
        "search": {"num_leaves": [4, 8, 16, 24]}, "sampler": "grid", "n_trials": TRIALS, "parallel": 2,
        "pruner": "none", "seed": 1,
    }  # fmt: skip


def events_of(server: Server, tune_id: str, after: int = 0) -> list:
    with server.client() as client:
        with client.stream("GET", f"/tunes/{tune_id}/events", params={"after": after}) as response:
            if response.status_code == 204:
                return []
            assert response.status_code == 200, response.read()
            return list(parse_sse(response.iter_lines()))


def wait_until_trials_train(server: Server, tune_id: str, timeout: float = 60.0) -> dict:
    """Until one trial has completed and another trains: its status then."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while True:
            status = client.get(f"/tunes/{tune_id}").json()
            if status["trials"]["complete"] >= 1 and status["trials"]["running"] >= 1:
                return status
            assert status["status"] == "running" and time.monotonic() < deadline, status
            time.sleep(0.05)


def start_search(server: ServerProcess, diabetes) -> str:
    with server.client() as client:
        created = client.post("/tunes", json=search_body(diabetes))
    assert created.status_code == 202, created.text
    return created.json()["tune_id"]


def test_a_search_running_when_the_server_was_killed_goes_on_after_the_restart(tmp_path: Path, diabetes):
    with running_server_process(tmp_path, *TWO_SLOTS) as server:
        tune_id = start_search(server, diabetes)
        wait_until_trials_train(server, tune_id)
        seen = read_for_a_while(server, tune_id)
        with server.client() as client:
            before = client.get(f"/tunes/{tune_id}").json()
        kill_9(server)

    with running_server_process(tmp_path, *TWO_SLOTS) as server:
        # Read on from the last event seen before the kill, as a client that lost its stream would.
        rest = events_of(server, tune_id, after=seen[-1].id)
        events = seen + rest
        assert [event.id for event in events] == list(range(1, len(events) + 1)), "no gap, no repeat"
        kinds = Counter(event.type for event in events)
        assert events[-1].type == "complete", kinds
        assert kinds["started"] == 1 and kinds["restarted"] == 1 and kinds["trial_started"] == TRIALS, kinds
        assert kinds["trial_complete"] == TRIALS, kinds
        # Every trial once, with its own params: the grid was neither repeated nor cut short.
        started = [event.data for event in events if event.type == "trial_started"]
        assert sorted(trial["trial"] for trial in started) == list(range(TRIALS))
        assert sorted(trial["params"]["num_leaves"] for trial in started) == [4, 8, 16, 24]
        # The trials that trained at the kill started over with their jobs, and completed.
        restarted = {event.data["trial"] for event in events if event.type == "trial_restarted"}
        assert restarted and len(restarted) == before["trials"]["running"], (restarted, before)
        complete = {event.data["trial"]: event.data for event in events if event.type == "trial_complete"}
        for trial in restarted:
            job = server.job(complete[trial]["job_id"])
            assert job["status"] == "succeeded" and job["attempts"] == 2, job
            assert complete[trial]["iterations"] == 4000
        with server.client() as client:
            status = client.get(f"/tunes/{tune_id}").json()
        assert status["status"] == "succeeded" and status["trials"]["complete"] == TRIALS
        assert status["best"]["value"] == min(trial["value"] for trial in complete.values())
        assert not (server.data_dir / "inputs" / f"tune-{tune_id}").exists(), "its table goes when it ends"

    # Stopped cleanly, and started again: the finished search is still there, whole.
    with running_server_process(tmp_path, *TWO_SLOTS) as server:
        with server.client() as client:
            assert client.get(f"/tunes/{tune_id}").json() == status
            assert [event.id for event in events_of(server, tune_id)] == [event.id for event in events]
            assert client.delete(f"/tunes/{tune_id}").status_code == 204
    with running_server_process(tmp_path, *TWO_SLOTS) as server:
        with server.client() as client:
            assert client.get(f"/tunes/{tune_id}").status_code == 404


def test_a_search_stopped_with_the_server_goes_on_and_one_without_its_table_ends_interrupted(tmp_path: Path, diabetes):
    with running_server_process(tmp_path, *TWO_SLOTS) as server:
        goes_on = start_search(server, diabetes)
        wait_until_trials_train(server, goes_on)
    # A clean stop (SIGTERM) leaves it as a kill does: it goes on at the next start.
    with running_server_process(tmp_path, *TWO_SLOTS) as server:
        events = events_of(server, goes_on)
        assert events[-1].type == "complete" and [e.type for e in events].count("restarted") == 1
        loses_table = start_search(server, diabetes)
        status = wait_until_trials_train(server, loses_table)
        kill_9(server)
    shutil.rmtree(tmp_path / "data" / "inputs" / f"tune-{loses_table}")

    with running_server_process(tmp_path, *TWO_SLOTS) as server:
        with server.client() as client:
            ended = client.get(f"/tunes/{loses_table}").json()
        assert ended["status"] == "failed" and ended["error"]["code"] == "interrupted", ended
        assert "its table is gone" in ended["error"]["message"]
        events = events_of(server, loses_table)
        assert events[-1].type == "error" and [e.id for e in events] == list(range(1, len(events) + 1))
        # Its trials' jobs that were training are not left to train for nobody.
        jobs = [event.data["job_id"] for event in events if event.type == "trial_started"]
        assert len(jobs) == status["trials"]["complete"] + status["trials"]["running"]
        for job_id in jobs:
            assert server.wait_for_job(job_id)["status"] in ("succeeded", "cancelled")
        health = server.wait_idle()
        assert health["queue"]["cpu"]["running"] == health["queue"]["cpu"]["queued"] == 0


def read_for_a_while(server: Server, tune_id: str, seconds: float = 0.5) -> list:
    """The events a client following the search has read after `seconds`: then it is cut off."""
    events: list = []
    deadline = time.monotonic() + seconds
    with server.client() as client:
        with client.stream("GET", f"/tunes/{tune_id}/events") as response:
            for event in parse_sse(response.iter_lines()):
                events.append(event)
                if time.monotonic() > deadline:
                    break
    return events
