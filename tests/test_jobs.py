"""The jobs API: create, poll, watch, resume, cancel, delete; queue, timeouts, restarts, webhooks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import io
import json
import threading
import time

import httpx
import joblib
import numpy as np
import pytest

from boostream.client import Event
from boostream.models.signing import SigningKeys, load_or_create_key, verify

from conftest import Server, parse_sse, running_server, running_server_process, start_server, start_server_process


def body_for(data, rounds: int, **params) -> dict:
    X, y = data
    return {"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": rounds, **params}}


def long_body(data, rounds: int = 100_000) -> dict:
    """A job that trains until it is stopped: 100,000 rounds of about a millisecond each."""
    return body_for(data, rounds, learning_rate=0.001, num_leaves=31)


def check_log(events: list[Event], ends_with: str) -> None:
    assert [e.id for e in events] == list(range(1, len(events) + 1)), "contiguous ids from 1"
    assert events[-1].type == ends_with, [e.type for e in events]
    assert sum(e.type in ("complete", "error", "cancelled") for e in events) == 1


def wait_for_event(server: Server, job_id: str, kind: str, timeout: float = 30.0) -> Event:
    with server.client() as client:
        with client.stream("GET", f"/jobs/{job_id}/events") as response:
            for event in parse_sse(response.iter_lines()):
                if event.type == kind:
                    return event
    raise AssertionError(f"job {job_id} never sent {kind}")


def test_a_job_is_created_polled_and_its_result_fetched(server: Server, diabetes):
    with server.client() as client:
        response = client.post("/jobs", json=body_for(diabetes, 40))
    assert response.status_code == 202
    created = response.json()
    job_id = created["job_id"]
    assert created["status"] in ("queued", "running")
    assert created["status_url"] == f"/jobs/{job_id}" == response.headers["location"]
    assert created["events_url"] == f"/jobs/{job_id}/events"
    assert created["result_url"] == f"/jobs/{job_id}/result"

    job = server.wait_for_job(job_id)
    assert job["status"] == "succeeded"
    assert job["progress"] == {**job["progress"], "iteration": 40, "total": 40, "percent": 100.0}
    assert set(job["metrics"]) == {"train_l2"}
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["error"] is None and job["attempts"] == 1

    with server.client() as client:
        result = client.get(f"/jobs/{job_id}/result").json()
    assert result["job_id"] == job_id and result["artifact_id"] == job["artifact_id"]
    blob = base64.b64decode(result["artifact"])
    assert hashlib.sha256(blob).hexdigest() == result["sha256"]
    X, y = diabetes
    predictions = joblib.load(io.BytesIO(blob)).predict(X)
    assert result["metrics"]["train_l2"] == pytest.approx(np.mean((predictions - y) ** 2), rel=1e-6)


def test_the_events_of_a_job_are_those_its_stream_sent(server: Server, diabetes):
    streamed = server.train(body_for(diabetes, 30))
    replayed = server.events(streamed[0].data["job_id"])
    assert [(e.id, e.type) for e in replayed] == [(e.id, e.type) for e in streamed]
    assert [e.data for e in replayed] == [e.data for e in streamed]  # the artifact included
    assert replayed[0].retry_ms == 2000


def test_a_dropped_stream_resumes_with_last_event_id_without_gap_or_duplicate(server: Server, diabetes):
    job_id = server.create_job(body_for(diabetes, 6000, num_leaves=8))
    seen: list[Event] = []
    for _ in range(3):  # drop the connection twice, the way a flaky network would
        last = {"Last-Event-ID": str(seen[-1].id)} if seen else {}
        with server.client() as client:
            with client.stream("GET", f"/jobs/{job_id}/events", headers=last) as response:
                for event in parse_sse(response.iter_lines()):
                    seen.append(event)
                    if event.type == "progress" and len(seen) % 4 == 0:
                        break
    seen += server.events(job_id, headers={"Last-Event-ID": str(seen[-1].id)})
    check_log(seen, "complete")
    assert any(e.type == "progress" for e in seen[-5:]), "the last part came live or replayed, not only the end"
    everything = server.events(job_id)
    assert [e.data for e in everything] == [e.data for e in seen]


def test_after_query_resumes_like_last_event_id(server: Server, diabetes):
    job_id = server.create_job(body_for(diabetes, 20))
    server.wait_for_job(job_id)
    everything = server.events(job_id)
    assert [e.id for e in server.events(job_id, after="2")] == [e.id for e in everything[2:]]
    with server.client() as client:
        # Nothing left of a finished job: 204, which tells EventSource to stop reconnecting.
        assert (
            client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(everything[-1].id)}).status_code == 204
        )
        for bad in ("x", "\u00b2", "9" * 5000, "-1"):
            response = client.get(f"/jobs/{job_id}/events", params={"after": bad})
            assert response.status_code == 422 and response.json()["error"]["field"] == "after"
        assert client.get("/jobs", params={"cursor": "9" * 30}).status_code == 422
        assert client.get("/jobs", params={"limit": "\u00b2"}).status_code == 422


def test_cancel_stops_a_running_job_after_its_current_round(server: Server, diabetes):
    job_id = server.create_job(long_body(diabetes))
    wait_for_event(server, job_id, "progress")
    with server.client() as client:
        before = client.get(f"/jobs/{job_id}").json()["progress"]["iteration"]
        asked = time.monotonic()
        response = client.post(f"/jobs/{job_id}/cancel")
        assert response.status_code == 202
        assert response.json() == {"job_id": job_id, "status": "running", "cancel_requested": True}
    job = server.wait_for_job(job_id, timeout=15)
    events = server.events(job_id)
    # Order and outcome, not speed: the job stopped long before its last round, at or after the
    # round it was at when asked, and well within the minute it would have kept training.
    assert time.monotonic() - asked < 15
    check_log(events, "cancelled")
    stopped_at = events[-1].data["iteration"]
    assert before <= stopped_at == job["progress"]["iteration"] < job["progress"]["total"] // 4
    assert job["status"] == "cancelled" and job["artifact_id"] is None
    with server.client() as client:
        again = client.post(f"/jobs/{job_id}/cancel")
        assert again.status_code == 409 and again.json()["error"]["status"] == "cancelled"
        result = client.get(f"/jobs/{job_id}/result")
        assert result.status_code == 409 and result.json()["error"]["code"] == "no_result"


def test_a_finished_job_shows_its_final_state_not_a_stale_one(server: Server, diabetes):
    X, y = diabetes
    stopped_early = server.create_job(
        {
            "X": X.tolist(),
            "y": y.tolist(),
            "valid_fraction": 0.3,
            "params": {"n_estimators": 2000, "learning_rate": 0.3, "early_stopping_rounds": 5},
        }
    )
    job = server.wait_for_job(stopped_early)
    assert job["status"] == "succeeded" and job["progress"]["iteration"] < 2000
    assert job["progress"]["percent"] == 100.0 and job["progress"]["eta_s"] is None
    cancelled = server.create_job(long_body(diabetes))
    wait_for_event(server, cancelled, "progress")
    with server.client() as client:
        assert client.post(f"/jobs/{cancelled}/cancel").status_code == 202
    job = server.wait_for_job(cancelled)
    assert job["status"] == "cancelled" and job["progress"]["eta_s"] is None
    assert job["progress"]["percent"] == round(100 * job["progress"]["iteration"] / job["progress"]["total"], 2) < 100


def test_result_is_a_409_while_running_and_unknown_jobs_are_404(server: Server, diabetes):
    job_id = server.create_job(long_body(diabetes))
    wait_for_event(server, job_id, "started")
    with server.client() as client:
        response = client.get(f"/jobs/{job_id}/result")
        assert response.status_code == 409
        assert response.json()["error"] == {**response.json()["error"], "code": "not_finished", "status": "running"}
        assert client.delete(f"/jobs/{job_id}").status_code == 409
        client.post(f"/jobs/{job_id}/cancel")
        for path in ("/jobs/nope", "/jobs/nope/events", "/jobs/nope/result"):
            missing = client.get(path)
            assert missing.status_code == 404 and missing.json()["error"]["field"] == "job_id"
    server.wait_for_job(job_id)


def test_delete_removes_a_finished_job_and_its_artifact(server: Server, diabetes):
    job_id = server.create_job(body_for(diabetes, 10))
    artifact = server.data_dir / "artifacts" / f"{server.wait_for_job(job_id)['artifact_id']}.joblib"
    assert artifact.exists()
    with server.client() as client:
        assert client.delete(f"/jobs/{job_id}").status_code == 204
        assert client.get(f"/jobs/{job_id}").status_code == 404
        assert client.delete(f"/jobs/{job_id}").status_code == 404
    assert not artifact.exists()


def test_jobs_are_listed_newest_first_by_status_and_page(server: Server, diabetes):
    ids = [server.create_job(body_for(diabetes, 5)) for _ in range(3)]
    for job_id in ids:
        server.wait_for_job(job_id)
    with server.client() as client:
        first = client.get("/jobs", params={"limit": 2, "status": "succeeded"}).json()
        second = client.get("/jobs", params={"limit": 2, "status": "succeeded", "cursor": first["next_cursor"]}).json()
        assert client.get("/jobs", params={"status": "done"}).json()["error"]["field"] == "status"
        assert client.get("/jobs", params={"limit": 0}).status_code == 422
    assert [j["job_id"] for j in first["jobs"]] == ids[::-1][:2]
    assert second["jobs"][0]["job_id"] == ids[0]
    assert all(j["status"] == "succeeded" for j in first["jobs"] + second["jobs"])


def test_jobs_listed_by_several_statuses_are_those_of_any_of_them(server: Server, diabetes):
    succeeded = server.create_job(body_for(diabetes, 5))
    server.wait_for_job(succeeded)
    cancelled = server.create_job(long_body(diabetes))
    wait_for_event(server, cancelled, "progress")
    with server.client() as client:
        assert client.post(f"/jobs/{cancelled}/cancel").status_code == 202
    server.wait_for_job(cancelled)

    def listed(statuses: str) -> dict[str, str]:
        with server.client() as client:
            return {
                job["job_id"]: job["status"]
                for job in client.get("/jobs", params={"status": statuses, "limit": 500}).json()["jobs"]
            }

    both = listed("succeeded,cancelled")
    assert both[succeeded] == "succeeded" and both[cancelled] == "cancelled"
    assert set(both.values()) <= {"succeeded", "cancelled"}
    assert cancelled not in listed("succeeded") and succeeded not in listed("cancelled")


def test_two_hundred_subscribers_all_receive_every_event(server: Server, diabetes):
    job_id = server.create_job(body_for(diabetes, 3000, num_leaves=8))

    async def subscribe(client: httpx.AsyncClient) -> list[tuple[int, str, str]]:
        async with client.stream("GET", f"/jobs/{job_id}/events") as response:
            lines = [line async for line in response.aiter_lines()]
        return [(e.id, e.type, json.dumps(e.data)) for e in parse_sse(iter(lines))]

    async def subscribe_all() -> list[list[tuple[int, str, str]]]:
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(subscribe(client) for _ in range(200)))

    received = asyncio.run(subscribe_all())
    everything = [(e.id, e.type, json.dumps(e.data)) for e in server.events(job_id)]
    assert everything[-1][1] == "complete" and len(everything) > 3
    assert all(log == everything for log in received)


def test_an_unknown_timeout_or_callback_is_refused_before_training(server: Server, diabetes):
    with server.client() as client:
        too_long = client.post("/jobs", json={**body_for(diabetes, 5), "timeout_s": 10**9})
        no_webhooks = client.post("/jobs", json={**body_for(diabetes, 5), "callback_url": "http://127.0.0.1:9/hook"})
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "timeout_s"
    assert no_webhooks.status_code == 422 and no_webhooks.json()["error"]["field"] == "callback_url"
    assert "--webhook-hosts" in no_webhooks.json()["error"]["message"]


# One CPU slot and a queue of one: order, positions, 429, timeouts. Servers with one CPU slot
# train with one thread too (--threads-per-job 1): with two, LightGBM's OpenMP threads wait on
# each other at every round, which on a busy machine made these tests two to three times slower.


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory):
    yield from start_server(tmp_path_factory.mktemp("one-slot"), cpu_jobs=1, max_queued=1, threads_per_job=1)


def test_a_full_queue_is_a_429_and_jobs_start_in_order(one_slot: Server, diabetes):
    running = one_slot.create_job(long_body(diabetes))
    wait_for_event(one_slot, running, "started")
    waiting = one_slot.create_job(body_for(diabetes, 10))
    with one_slot.client() as client:
        refused = client.post("/jobs", json=body_for(diabetes, 10))
        health = client.get("/health").json()
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert health["queue"]["cpu"] == {"running": 1, "queued": 1, "limit": 1, "max_queued": 1}
    assert one_slot.job(waiting)["status"] == "queued"

    with one_slot.client() as client:
        client.post(f"/jobs/{running}/cancel")
    events = one_slot.events(waiting)
    check_log(events, "complete")
    assert [e.type for e in events[:2]] == ["queued", "started"]
    assert events[0].data == {"job_id": waiting, "position": 1, "device": "cpu"}


def test_cancelling_a_queued_job_ends_it_at_once(one_slot: Server, diabetes):
    running = one_slot.create_job(long_body(diabetes))
    wait_for_event(one_slot, running, "started")
    waiting = one_slot.create_job(body_for(diabetes, 10))
    with one_slot.client() as client:
        assert client.post(f"/jobs/{waiting}/cancel").json()["status"] == "cancelled"
        client.post(f"/jobs/{running}/cancel")
    assert [e.type for e in one_slot.events(waiting)] == ["queued", "cancelled"]
    one_slot.wait_for_job(running)


def test_a_job_over_its_time_limit_fails_with_timeout(one_slot: Server, diabetes):
    job_id = one_slot.create_job({**long_body(diabetes), "timeout_s": 0.5})
    job = one_slot.wait_for_job(job_id, timeout=10)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "timeout" and "0.5 s" in job["error"]["message"]
    assert job["timeout_s"] == 0.5 and job["artifact_id"] is None
    events = one_slot.events(job_id)
    check_log(events, "error")
    assert events[-1].data["code"] == "timeout"


def test_the_servers_own_time_limit_stops_a_job_that_asked_for_none(tmp_path, diabetes):
    """`--max-training-s` holds for every job, not only for those that send `timeout_s`."""
    with running_server(tmp_path, cpu_jobs=1, threads_per_job=1, max_training_s=1) as server:
        with server.client() as client:
            longer = client.post("/jobs", json={**body_for(diabetes, 5), "timeout_s": 2})
        assert longer.status_code == 422 and longer.json()["error"]["field"] == "timeout_s"
        job_id = server.create_job(long_body(diabetes))  # over a minute of training, no timeout_s
        job = server.wait_for_job(job_id, timeout=15)
        events = server.events(job_id)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "timeout" and "limit of 1 s" in job["error"]["message"]
    assert job["timeout_s"] is None and job["artifact_id"] is None
    assert 0 < job["progress"]["iteration"] < job["progress"]["total"] // 4
    check_log(events, "error")
    assert events[-1].data["code"] == "timeout" and events[-1].data["iteration"] == job["progress"]["iteration"]
    trained = [e.data["elapsed_s"] for e in events if e.type == "progress"]
    assert trained[-1] >= 0.9, "it trained for about its limit before it was stopped"


# Killed and started again on the same data directory.


def test_after_kill_9_finished_jobs_survive_and_interrupted_ones_run_again(tmp_path, diabetes):
    with running_server_process(tmp_path, "--cpu-jobs", "1", "--threads-per-job", "1") as server:
        finished = server.create_job(body_for(diabetes, 20))
        done = server.wait_for_job(finished)
        result_before = server.events(finished)[-1].data
        running = server.create_job(body_for(diabetes, 4000, learning_rate=0.001, num_leaves=8))  # about a second
        waiting = server.create_job(body_for(diabetes, 30))
        lost = server.create_job(body_for(diabetes, 30))
        wait_for_event(server, running, "progress")
        deadline = time.monotonic() + 10
        while not all((server.data_dir / "inputs" / job_id / "meta.json").exists() for job_id in (waiting, lost)):
            assert time.monotonic() < deadline, "the waiting jobs' inputs were never kept on disk"
            time.sleep(0.05)
        server.process.kill()
        server.process.wait()
    (server.data_dir / "inputs" / lost / "X.npy").unlink()  # as if its input had been lost with a disk

    with running_server_process(tmp_path, "--cpu-jobs", "1", "--threads-per-job", "1") as restarted:
        assert restarted.job(finished) == done
        assert restarted.events(finished)[-1].data == result_before
        rerun = restarted.events(running)
        check_log(rerun, "complete")
        kinds = [e.type for e in rerun]
        assert "restarted" in kinds and kinds.count("started") == 2
        assert rerun[kinds.index("restarted")].data["reason"] == "the server restarted while the job was running"
        assert restarted.job(running)["attempts"] == 2
        check_log(restarted.events(waiting), "complete")
        gone = restarted.wait_for_job(lost)
        assert gone["status"] == "failed" and gone["error"]["code"] == "interrupted"
        restarted.wait_idle()
        assert not list((restarted.data_dir / "inputs").iterdir()), "inputs are removed once jobs end"


# Expiry.


def test_finished_jobs_and_artifacts_expire(tmp_path, diabetes):
    with running_server(tmp_path, job_ttl_s=1) as server:
        job_id = server.create_job(body_for(diabetes, 5))
        artifact = server.data_dir / "artifacts" / f"{server.wait_for_job(job_id)['artifact_id']}.joblib"
        deadline = time.monotonic() + 10
        with server.client() as client:
            while client.get(f"/jobs/{job_id}").status_code != 404:
                assert time.monotonic() < deadline, "the job was never removed"
                time.sleep(0.1)
        assert not artifact.exists()


# Webhooks, to a receiver on loopback.


class Receiver(http.server.ThreadingHTTPServer):
    """Records every POST; answers 500 to the first `failures` of them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[dict, bytes]] = []
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.received.append((dict(self.headers), body))
        status = 500 if len(self.server.received) <= self.server.failures else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_webhook_is_signed_retried_and_names_the_result(tmp_path, diabetes):
    receiver = Receiver(failures=1)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        with running_server(tmp_path, webhook_hosts=f"127.0.0.1:{receiver.server_address[1]}") as server:
            job_id = server.create_job({**body_for(diabetes, 10), "callback_url": receiver.url})
            server.wait_for_job(job_id)
            deadline = time.monotonic() + 15
            while server.job(job_id)["callback"]["state"] != "delivered":
                assert time.monotonic() < deadline, server.job(job_id)["callback"]
                time.sleep(0.1)
            with server.client() as client:
                elsewhere = client.post("/jobs", json={**body_for(diabetes, 5), "callback_url": "http://example.com/hook"})
            assert elsewhere.status_code == 422 and elsewhere.json()["error"]["field"] == "callback_url"
    finally:
        receiver.shutdown()
    assert len(receiver.received) == 2, "one failure, then one delivery"
    (first_headers, first_body), (headers, body) = receiver.received
    assert headers["X-Boostream-Delivery"] == first_headers["X-Boostream-Delivery"] and body == first_body
    key = SigningKeys.of(load_or_create_key(server.data_dir / "secret.key")).webhooks
    assert verify(key, body, headers["X-Boostream-Signature"])
    payload = json.loads(body)
    assert payload["job_id"] == job_id and payload["status"] == "succeeded"
    assert payload["result_url"] == f"{server.url}/jobs/{job_id}/result"
    assert "artifact" not in payload and payload["artifact_id"]


def test_a_second_server_refuses_a_data_directory_in_use(tmp_path):
    with running_server_process(tmp_path) as server:
        with pytest.raises(RuntimeError) as refused:
            next(start_server_process(tmp_path))
        assert f"another boostream server (pid {server.process.pid}) is using the data directory" in str(refused.value)
        assert "Traceback" not in str(refused.value)
        with server.client() as client:
            assert client.get("/health").status_code == 200


def test_a_restart_removes_artifact_files_no_job_has_and_keeps_the_rest(tmp_path, diabetes):
    with running_server_process(tmp_path) as server:
        job_id = server.create_job(body_for(diabetes, 5))
        artifact_id = server.wait_for_job(job_id)["artifact_id"]
    artifacts = server.data_dir / "artifacts"
    for name in ("0123abcd.joblib", "0123abcd.native", "0123abcd.partial"):
        (artifacts / name).write_bytes(b"left by a server that died")
    with running_server_process(tmp_path) as restarted:
        assert sorted(p.name for p in artifacts.iterdir()) == [f"{artifact_id}.joblib", f"{artifact_id}.native"]
        with restarted.client() as client:
            assert client.get(f"/artifacts/{artifact_id}").status_code == 200


def test_stopping_the_server_does_not_cancel_a_job_whose_stream_asked_for_it(tmp_path, diabetes):
    """SIGTERM closes the streams before the jobs are put away; that is not a client leaving."""
    with running_server_process(tmp_path, "--cpu-jobs", "1", "--threads-per-job", "1") as server:
        running = server.create_job(long_body(diabetes))
        wait_for_event(server, running, "progress")
        seen = threading.Event()

        def follow_waiting_job():
            with server.client() as client:
                with client.stream(
                    "POST", "/train/stream", json=body_for(diabetes, 10), params={"on_disconnect": "cancel"}
                ) as response:
                    try:
                        for event in parse_sse(response.iter_lines()):
                            seen.job_id = event.data["job_id"]
                            seen.set()
                    except httpx.HTTPError:
                        pass  # the server stopped mid-stream, as this test makes it

        follower = threading.Thread(target=follow_waiting_job, daemon=True)
        follower.start()
        assert seen.wait(30)
        server.process.terminate()
        server.process.wait(30)
    with running_server_process(tmp_path, "--cpu-jobs", "1", "--threads-per-job", "1") as restarted:
        with restarted.client() as client:
            client.post(f"/jobs/{running}/cancel")
        assert restarted.wait_for_job(seen.job_id)["status"] == "succeeded"
