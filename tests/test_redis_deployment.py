"""Several processes sharing one Redis, as "Running on several machines" deploys them: two API
replicas (`boostream serve --redis`) and a worker (`boostream worker --redis`), all started by the
CLI, with a real redis-server of the test's own. A client may start a job on one replica and
follow, cancel or use it on the other."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from test_jobs import body_for, check_log, long_body
from test_tables import PARQUET, parquet_bytes, post_table, table_of
from test_webhooks import Receiver, serving

from conftest import RedisServer, ServerProcess, parse_sse, running_server_process, stop_process


@contextlib.contextmanager
def running_worker(tmp: Path, redis: RedisServer, *options: str) -> Iterator[subprocess.Popen]:
    log = open(tmp / "worker.log", "ab")  # noqa: SIM115 - closed below, after the process
    command = [sys.executable, "-m", "boostream", "worker", "--redis", redis.url, "--threads-per-job", "1", *options]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        stop_process(process)
        log.close()


@contextlib.contextmanager
def deployment(tmp: Path, redis: RedisServer, *options: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    for replica in ("a", "b"):
        (tmp / replica).mkdir()
    with (
        running_server_process(tmp / "a", "--redis", redis.url, *options) as a,
        running_server_process(tmp / "b", "--redis", redis.url, *options) as b,
        running_worker(tmp, redis),
    ):
        deadline = time.monotonic() + 30
        while not httpx.get(a.url + "/health").json()["workers"]:
            worker_log = (tmp / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker never said it was alive:\n" + worker_log
            time.sleep(0.1)
        yield a, b


def events_from(server: ServerProcess, job_id: str, **headers: str) -> list:
    with server.client() as client, client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        return list(parse_sse(response.iter_lines()))


def test_a_job_started_on_one_replica_is_followed_and_used_on_the_other(tmp_path: Path, redis_server, diabetes):
    with deployment(tmp_path, redis_server) as (a, b):
        health = httpx.get(b.url + "/health").json()
        assert health["queue"]["cpu"]["limit"] == 1 and health["workers"][0]["device"] == "cpu"
        # What can train is what the workers up can train.
        assert health["backends"]["lightgbm"]["available"] is True
        assert health["backends"]["warpgbm"] == {
            "available": False, "device": "gpu", "reason": "no GPU worker is up (boostream worker --device gpu)"
        }  # fmt: skip
        assert health["gpu"] is None
        job_id = a.create_job(body_for(diabetes, 40))
        events = events_from(b, job_id)
        check_log(events, "complete")
        assert [e.type for e in events[:2]] == ["queued", "started"]
        complete = events[-1].data
        assert complete["artifact"] and complete["iterations"] == 40
        # Timed where they happened: reading the body on replica A, training on the worker.
        assert {"receive_s", "decode_s", "queued_s", "load_s", "fit_s", "artifact_s"} <= set(complete["timings"])

        again = events_from(a, job_id, **{"Last-Event-ID": "2"})  # resumed on the other replica
        assert [e.id for e in again] == [e.id for e in events[2:]]
        assert [e.data for e in again] == [e.data for e in events[2:]]

        job = b.job(job_id)
        assert job["status"] == "succeeded" and job["artifact_id"] == complete["artifact_id"]
        X, _ = diabetes
        with a.client() as client:
            predicted = client.post("/predict", json={"artifact_id": complete["artifact_id"], "X": X[:4].tolist()})
            assert predicted.status_code == 200, predicted.text
            assert len(predicted.json()["predictions"]) == 4
            downloaded = client.get(f"/artifacts/{complete['artifact_id']}", params={"format": "native"})
            assert downloaded.status_code == 200 and downloaded.content.startswith(b"tree")


def test_cancel_through_the_other_replica_stops_the_job_within_2_s(tmp_path: Path, redis_server, diabetes):
    with deployment(tmp_path, redis_server) as (a, b):
        job_id = a.create_job(long_body(diabetes))
        deadline = time.monotonic() + 30
        while b.job(job_id)["progress"]["iteration"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        asked = time.monotonic()
        with b.client() as client:
            assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
        events = events_from(a, job_id)
        took = time.monotonic() - asked
        check_log(events, "cancelled")
        assert took < 2.0, f"ended {took:.2f} s after the cancel"
        assert a.job(job_id)["status"] == "cancelled"


def test_a_job_for_a_device_no_worker_serves_is_refused_saying_so(tmp_path: Path, redis_server, diabetes):
    with deployment(tmp_path, redis_server) as (a, _):
        with a.client() as client:
            response = client.post("/jobs", json=body_for(diabetes, 5) | {"model_type": "warpgbm"})
        assert response.status_code == 503, response.text
        assert "no GPU worker is running" in response.json()["error"]["message"]


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_a_job_whose_worker_is_killed_or_stopped_runs_again_on_another_as_attempt_2(
    tmp_path: Path, redis_server, diabetes, stop: str
):
    (tmp_path / "a").mkdir()
    with (
        running_server_process(tmp_path / "a", "--redis", redis_server.url) as a,
        running_worker(tmp_path, redis_server, "--dead-after", "2") as first,
    ):
        wait_for_workers(a, 1)
        job_id = a.create_job(long_body(diabetes))  # trains until stopped
        deadline = time.monotonic() + 30
        while a.job(job_id)["progress"]["iteration"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (tmp_path / "second").mkdir()
        with running_worker(tmp_path / "second", redis_server, "--dead-after", "2"):
            wait_for_workers(a, 2)
            if stop == "kill -9":
                first.kill()
            else:  # a worker stopped as a service manager stops it: its job is not lost either
                first.terminate()
            first.wait()
            killed = time.monotonic()
            while (job := a.job(job_id))["attempts"] < 2 or job["progress"]["iteration"] == 0:
                assert time.monotonic() - killed < 30, f"never trained again: {job}"
                time.sleep(0.1)
            with a.client() as client:
                assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
            events = events_from(a, job_id)
        check_log(events, "cancelled")
        assert [e.data["attempt"] for e in events if e.type == "started"] == [1, 2]
        (restarted,) = [e for e in events if e.type == "restarted"]
        assert restarted.data["attempts"] == 1


def test_nothing_finished_is_lost_when_redis_is_killed_and_restarted(tmp_path: Path, redis_server, diabetes):
    with deployment(tmp_path, redis_server) as (a, b):
        done = a.create_job(body_for(diabetes, 20))
        events = events_from(b, done)
        redis_server.kill_9()
        redis_server.start()
        assert events_from(a, done) == events, "the same log, from the append-only file"
        # The servers and the worker reconnect: a new job trains.
        deadline = time.monotonic() + 30
        while True:
            with a.client() as client:
                response = client.post("/jobs", json=body_for(diabetes, 20))
            if response.status_code == 202:
                break
            assert time.monotonic() < deadline, response.text
            time.sleep(0.2)
        check_log(events_from(b, response.json()["job_id"]), "complete")


def test_twenty_jobs_across_both_replicas_all_succeed_once_and_each_sends_one_webhook(
    tmp_path: Path, redis_server, diabetes
):
    with serving(Receiver()) as receiver, deployment(tmp_path, redis_server, "--webhook-hosts", "127.0.0.1") as (a, b):
        hooked = {"callback_url": receiver.url + "/done"}
        job_ids = [(a if n % 2 else b).create_job({**body_for(diabetes, 10 + n), **hooked}) for n in range(20)]
        for n, job_id in enumerate(job_ids):
            events = events_from(b if n % 2 else a, job_id)
            check_log(events, "complete")
            assert [e.type for e in events].count("started") == 1
            assert events[-1].data["iterations"] == 10 + n
        listed = httpx.get(a.url + "/jobs", params={"status": "succeeded", "limit": 50}).json()["jobs"]
        assert sorted(job["job_id"] for job in listed) == sorted(job_ids)

        deadline = time.monotonic() + 30
        while any(b.job(job_id)["callback"]["state"] != "delivered" for job_id in job_ids):
            assert time.monotonic() < deadline, [b.job(job_id)["callback"] for job_id in job_ids]
            time.sleep(0.2)
        time.sleep(1)  # time for a second delivery, were there one
        payloads = [orjson.loads(received.body) for received in receiver.received]
        assert sorted(payload["job_id"] for payload in payloads) == sorted(job_ids), "one webhook per job"
        assert {payload["status"] for payload in payloads} == {"succeeded"}
        assert {received.path for received in receiver.received} == {"/done"}
        for received in receiver.received:  # signed with the one key every process shares
            assert received.headers["X-Boostream-Delivery"] == orjson.loads(received.body)["job_id"]
            assert received.headers["X-Boostream-Signature"].startswith("sha256=")


def test_finished_jobs_expire_with_their_models_on_every_replica(tmp_path: Path, redis_server, diabetes):
    with deployment(tmp_path, redis_server, "--job-ttl-s", "2") as (a, b):
        job_id = a.create_job(body_for(diabetes, 5))
        complete = events_from(a, job_id)[-1]
        assert complete.type == "complete"
        model_url = f"/artifacts/{complete.data['artifact_id']}/metadata"
        assert httpx.get(b.url + model_url).status_code == 200
        running = a.create_job(long_body(diabetes))
        deadline = time.monotonic() + 10
        while httpx.get(b.url + f"/jobs/{job_id}").status_code != 404:
            assert time.monotonic() < deadline, "the finished job was kept past its time"
            time.sleep(0.2)
        assert httpx.get(a.url + f"/jobs/{job_id}").status_code == 404
        assert httpx.get(a.url + model_url).status_code == 404
        assert a.job(running)["status"] in ("queued", "running"), "a job that has not finished is kept"
        with a.client() as client:
            assert client.post(f"/jobs/{running}/cancel").status_code == 202


def test_a_full_queue_is_refused_with_429_and_an_idle_worker_can_exit(tmp_path: Path, redis_server, diabetes):
    (tmp_path / "a").mkdir()
    with (
        running_server_process(tmp_path / "a", "--redis", redis_server.url, "--max-queued", "1") as a,
        running_worker(tmp_path, redis_server),
    ):
        wait_for_workers(a, 1)
        running = a.create_job(long_body(diabetes))
        deadline = time.monotonic() + 30
        while a.job(running)["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiting = a.create_job(long_body(diabetes))
        with a.client() as client:
            refused = client.post("/jobs", json=body_for(diabetes, 5))
            assert refused.status_code == 429 and "Retry-After" in refused.headers, refused.text
            for job_id in (waiting, running):
                assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
    (tmp_path / "idle").mkdir()
    with running_worker(tmp_path / "idle", redis_server, "--exit-when-idle", "2") as idle:
        assert idle.wait(timeout=30) == 0


def wait_for_workers(server: ServerProcess, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(httpx.get(server.url + "/health").json()["workers"]) != count:
        assert time.monotonic() < deadline, f"never {count} workers"
        time.sleep(0.1)


def test_a_client_whose_replica_is_killed_resumes_on_the_other(tmp_path: Path, redis_server, diabetes):
    with deployment(tmp_path, redis_server) as (a, b):
        job_id = a.create_job(long_body(diabetes))
        seen = []
        with a.client() as client, client.stream("GET", f"/jobs/{job_id}/events") as response:
            for event in parse_sse(response.iter_lines()):
                seen.append(event)
                if len(seen) == 4:
                    a.process.kill()  # mid-stream
                    break
        last = seen[-1].id
        with b.client() as client:
            assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
        rest = events_from(b, job_id, **{"Last-Event-ID": str(last)})
        check_log(seen + rest, "cancelled")


def test_once_a_device_has_had_a_worker_its_jobs_wait_for_the_next_one_saying_so(
    tmp_path: Path, redis_server, diabetes
):
    (tmp_path / "a").mkdir()
    with running_server_process(tmp_path / "a", "--redis", redis_server.url) as a:
        with a.client() as client:  # never had a worker: refused, as `--when-no-worker auto` has it
            assert client.post("/jobs", json=body_for(diabetes, 5)).status_code == 503
        (tmp_path / "first").mkdir()
        with running_worker(tmp_path / "first", redis_server, "--exit-when-idle", "0.5") as first:
            assert first.wait(timeout=30) == 0  # scaled to zero

        job_id = a.create_job(body_for(diabetes, 5))
        job = a.job(job_id)
        assert job["status"] == "queued" and job["waiting_for_worker"] is True
        health = httpx.get(a.url + "/health").json()
        assert health["queue"]["cpu"]["queued"] == 1 and health["queue"]["cpu"]["limit"] == 0, health
        (tmp_path / "next").mkdir()
        with running_worker(tmp_path / "next", redis_server):
            events = events_from(a, job_id)
        check_log(events, "complete")
        assert events[0].type == "queued" and events[0].data["waiting_for_worker"] is True
        assert "no CPU worker is up" in events[0].data["reason"]
        assert a.job(job_id)["waiting_for_worker"] is False


def test_with_a_shared_directory_tables_go_through_it_and_none_is_left(tmp_path: Path, redis_server, diabetes):
    shared = tmp_path / "shared"
    (tmp_path / "a").mkdir()
    with (
        running_server_process(tmp_path / "a", "--redis", redis_server.url, "--shared-dir", str(shared)) as a,
        running_worker(tmp_path, redis_server, "--shared-dir", str(shared)),
    ):
        wait_for_workers(a, 1)
        job_id = a.create_job(body_for(diabetes, 20))
        events = events_from(a, job_id)
        check_log(events, "complete")
        X, y = diabetes  # the same table as a Parquet upload, decoded by the server itself
        body = parquet_bytes(table_of(X, y, [f"f{i}" for i in range(X.shape[1])], target="y"))
        upload = post_table(a, body, PARQUET, path="/jobs", target="y", n_estimators=20)
        assert upload.status_code == 202, upload.text
        check_log(events_from(a, upload.json()["job_id"]), "complete")
        # The worker drops a table just after it writes the job's end: a moment after a client reads it.
        deadline = time.monotonic() + 10
        while list((shared / "inputs").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [path.name for path in (shared / "inputs").iterdir()] == [], "each table is removed once its job ends"
