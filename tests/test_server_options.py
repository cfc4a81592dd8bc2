"""Options of `boostream serve` that tests elsewhere leave at their defaults, checked on real servers."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_webhooks import Receiver, serving

from boostream.config import machine_cores

from conftest import Server, parse_sse, running_server


def trained_num_threads(server: Server, diabetes) -> int:
    """The threads LightGBM trained with, as the model's own text says."""
    complete = server.train({"X": diabetes[0].tolist(), "y": diabetes[1].tolist(), "params": {"n_estimators": 3}})[
        -1
    ].data
    with server.client() as client:
        text = client.get(f"/artifacts/{complete['artifact_id']}", params={"format": "native"}).text
    return int(re.search(r"^\[num_threads: (\d+)\]$", text, re.M).group(1))


def test_threads_per_job_sets_lightgbms_threads_and_defaults_to_every_core(tmp_path, server: Server, diabetes):
    with running_server(tmp_path, threads_per_job=3) as three:
        assert trained_num_threads(three, diabetes) == 3
    # Every core, shared out among the jobs that run at once (test_workers checks the sharing).
    assert trained_num_threads(server, diabetes) == machine_cores()


def test_a_subscriber_that_stops_reading_is_dropped_after_the_send_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOSTREAM_SEND_TIMEOUT_S", "2")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 8))
    y = X @ rng.normal(size=8) + rng.normal(size=3000)
    # A native model of 1500 trees of 63 leaves: a `complete` event of megabytes, more than the
    # socket buffers between the server and a client that reads nothing can hold.
    body = {
        "X": X.tolist(),
        "y": y.tolist(),
        "artifact_format": "native",
        "params": {"n_estimators": 1500, "num_leaves": 63, "min_data_in_leaf": 2},
    }
    with running_server(tmp_path) as server:
        job_id = server.create_job(body)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        stalled.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        events = server.events(job_id)  # a subscriber that reads gets everything meanwhile
        assert events[-1].type == "complete"
        size = len(events[-1].data["artifact"])
        assert size > 4 * 1024**2
        time.sleep(2 + 3)  # the send timeout, and time to notice it
        stalled.settimeout(10)
        received = 0
        while chunk := stalled.recv(1 << 20):
            received += len(chunk)
        stalled.close()
        assert received < size, "the server kept the connection until the whole event was read"
        log = server.log()
        assert re.search(rf"job {job_id}: client left", log), log[-2000:]
        assert f"/jobs/{job_id}/events: the client took nothing for 2 s; dropped" in log
        assert "Traceback" not in log and "SendTimeoutError" not in log, "one line, not a traceback"
        with server.client() as client:
            assert client.get("/health").status_code == 200


def stalled_upload(url: str) -> socket.socket:
    """A client that sends a training request's headers and a few bytes of its body, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(
        b"POST /jobs HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n" + b'{"X": [[1, 2], '
    )
    return connection


def test_a_body_that_stops_coming_is_refused_with_408_and_holds_up_no_other_request(tmp_path, diabetes):
    from test_jobs import body_for

    with running_server(tmp_path, body_idle_timeout_s=1.0, cpu_jobs=1) as server:
        stalled = [stalled_upload(server.url) for _ in range(3)]  # more than the slots that read bodies
        try:
            time.sleep(0.2)
            started = time.monotonic()
            job_id = server.create_job(body_for(diabetes, 5))  # waits for a slot, not for the stalled
            assert time.monotonic() - started < 5
            assert server.wait_for_job(job_id)["status"] == "succeeded"
            for connection in stalled:
                connection.settimeout(5)
                answer = connection.recv(65536).decode()
                assert answer.startswith("HTTP/1.1 408"), answer
                assert '"code":"request_timeout"' in answer.replace(" ", "") and "1 s" in answer, answer
        finally:
            for connection in stalled:
                connection.close()
        # A stream that waits for its events, its request long complete, is not cut off.
        events = server.events(server.create_job(body_for(diabetes, 300, learning_rate=0.001)))
        assert events[-1].type == "complete"


def trickling_upload(url: str, declared: int) -> socket.socket:
    """A client that sends a training request's headers, then its body a byte at a time."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(
        b"POST /jobs HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(declared).encode() + b"\r\n\r\n{"
    )
    return connection


def test_bodies_that_come_a_byte_at_a_time_hold_up_no_other_request(tmp_path, diabetes):
    from test_jobs import body_for

    with running_server(tmp_path, body_idle_timeout_s=1.0, cpu_jobs=1) as server:
        # More than the slots that decode bodies, each sending a byte more often than the idle timeout.
        trickling = [trickling_upload(server.url, 100_000) for _ in range(4)]
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.3):
                for connection in trickling:
                    connection.send(b" ")

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            time.sleep(0.5)
            started = time.monotonic()
            job_id = server.create_job(body_for(diabetes, 5))
            assert time.monotonic() - started < 3, "the request waited for the slow ones"
            status = server.wait_for_job(job_id)
            assert status["status"] == "succeeded"
            with server.client() as client:
                predicted = client.post("/predict", json={"artifact_id": status["artifact_id"], "X": [[0.0] * 10] * 3})
                assert predicted.status_code == 200, predicted.text
            for connection in trickling:  # still being received, not refused
                connection.setblocking(False)
                with pytest.raises(BlockingIOError):
                    connection.recv(1)
        finally:
            stop.set()
            sender.join()
            for connection in trickling:
                connection.close()


def test_bodies_held_before_decoding_are_bounded_and_the_rest_told_to_come_back(tmp_path, diabetes):
    from test_jobs import body_for

    # Two bodies of 800 kB fit in what the server holds of bodies not yet decoded (2 x 1 MB); a third
    # does not, as soon as its first bytes come.
    with running_server(tmp_path, max_body_bytes=1_000_000, body_idle_timeout_s=30.0) as server:
        waiting = [trickling_upload(server.url, 800_000) for _ in range(2)]
        try:
            time.sleep(0.5)
            third = trickling_upload(server.url, 800_000)
            answer = read_until_closed(third, 5).decode()
            assert answer.startswith("HTTP/1.1 503"), answer
            assert "retry-after: 1" in answer.lower(), answer
            assert '"code":"busy"' in answer.replace(" ", ""), answer
        finally:
            for connection in waiting:
                connection.close()
        time.sleep(0.5)  # their share is given back once the server sees them gone
        job_id = server.create_job(body_for(diabetes, 5))
        assert server.wait_for_job(job_id)["status"] == "succeeded"
        log = server.log()
        assert log.count("POST /jobs: the client left before its body came whole") == 2, log[-3000:]
        assert "Traceback" not in log, "a client that leaves mid-upload is one line"


def read_until_closed(connection: socket.socket, timeout: float) -> bytes:
    connection.settimeout(timeout)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_headers_that_do_not_come_whole_in_time_get_408_and_the_connection_closed(tmp_path):
    with running_server(tmp_path, header_timeout_s=1.0) as server:
        address = ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
        silent = socket.create_connection(address)  # opens, sends nothing
        trickling = socket.create_connection(address)  # a byte every 0.2 s: each keeps it busy, none ends it
        kept_alive = socket.create_connection(address)  # a whole request, then half of the next one
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        kept_alive.settimeout(5)
        assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200")
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.")
        started = time.monotonic()
        try:
            for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaa":
                try:
                    trickling.send(bytes([byte]))
                except OSError:  # closed by the server, as it should be
                    break
                time.sleep(0.2)
            answers = [read_until_closed(connection, 5) for connection in (silent, trickling, kept_alive)]
            assert time.monotonic() - started < 4
            for answer in answers:
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408"), answer
                error = json.loads(body)["error"]
                assert error["code"] == "request_timeout" and "within 1 s" in error["message"]
            with server.client() as client:
                assert client.get("/health").status_code == 200
        finally:
            for connection in (silent, trickling, kept_alive):
                connection.close()
        assert "Traceback" not in server.log()


def test_a_refusal_before_the_body_has_come_closes_the_connection(server: Server):
    address = ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    declared = b"Content-Length: 200000000\r\n\r\n{"
    for request, status in (
        (b"POST /no/such/route HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"404"),  # Starlette's routing
        (b"POST /jobs HTTP/1.1\r\nHost: rebound.example\r\n", b"421"),  # the access checks
        (b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n", b"415"),  # a domain error
    ):
        with socket.create_connection(address) as connection:
            connection.sendall(request + declared)
            answer = read_until_closed(connection, 5)  # closed, not kept to read 200 MB it will never use
        head = answer.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 " + status) and b"connection: close" in head, answer


def test_a_pipelined_request_whose_headers_stall_behind_a_stream_still_gets_408(tmp_path, diabetes):
    from test_jobs import body_for, long_body

    with running_server(tmp_path, header_timeout_s=1.0) as server:
        job_id = server.create_job(long_body(diabetes))
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as connection:
            connection.sendall(
                f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
                + b"GET /health HTTP/1.1\r\nHo"  # the next request, half sent behind the stream
            )
            time.sleep(2.5)  # past the header timeout, while the stream is still being sent
            with server.client() as client:
                assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
            started = time.monotonic()
            answer = read_until_closed(connection, 10)
        assert b"event: cancelled" in answer
        assert b"HTTP/1.1 408" in answer.split(b"event: cancelled", 1)[1], answer[-600:]
        assert time.monotonic() - started < 5
        assert server.wait_for_job(server.create_job(body_for(diabetes, 3)))["status"] == "succeeded"


def test_bytes_that_are_not_http_get_a_json_400(server: Server):
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n")
        answer = read_until_closed(connection, 5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower(), answer
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and "not valid HTTP/1.1" in error["message"], error


def test_a_job_that_would_need_more_memory_than_a_worker_may_hold_is_refused_naming_its_parameters(server: Server):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 20)).round(4)
    # The request that took a server past 15 GB in its first round: histograms of 131,072 leaves
    # of 20 features with up to 6,666 bins each (a third of the rows), some 280 GB.
    bomb = {"X": X.tolist(), "y": X[:, 0].tolist(), "params": {"num_leaves": 131_072, "max_bin": 65_535}}
    with server.client() as client:
        started = time.perf_counter()
        refused = client.post("/jobs", json=bomb)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["field"] == "params.num_leaves"
        assert "histograms" in error["message"] and "--worker-memory-mb" in error["message"]
        assert "lower num_leaves or max_bin" in error["message"]
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["queue"]["cpu"]["queued"] == 0
    assert time.perf_counter() - started < 30


def test_the_memory_a_job_may_use_is_the_workers_limit(tmp_path):
    # 100 trees of 131,072 leaves: about 1.1 GB of tree arrays, on 4 rows.
    tiny = {"X": [[0.0], [1.0], [2.0], [3.0]], "y": [0.0, 1.0, 2.0, 3.0]}
    with running_server(tmp_path, worker_memory_mb=512) as server, server.client() as client:
        refused = client.post("/jobs", json={**tiny, "params": {"num_leaves": 131_072, "n_estimators": 100}})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "params.num_leaves"
        assert "trees: 100 trees x num_leaves 131072" in refused.json()["error"]["message"]
        fits = client.post("/jobs", json={**tiny, "params": {"num_leaves": 131_072, "n_estimators": 2}})
        assert fits.status_code == 202, fits.text
        assert server.wait_for_job(fits.json()["job_id"])["status"] == "succeeded"


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of `size` at `folder`, to fill: only where this process may mount one (root)."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("filling a disk needs a small one: a tmpfs, which only root may mount")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"could not mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 65536)
            file.flush()
    return filler


def test_a_full_disk_fails_the_jobs_it_stops_answers_507_and_needs_no_restart_once_there_is_room(tmp_path, diabetes):
    X, y = diabetes
    # Long enough to be training when the disk fills, however loaded the machine; it then trains on
    # (its progress unrecorded) until its model cannot be saved.
    body = {"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 6000, "learning_rate": 0.01}}
    with (
        small_disk(tmp_path / "disk") as disk,
        serving(Receiver()) as receiver,
        running_server(disk, webhook_hosts="127.0.0.1") as server,
        server.client() as client,
    ):
        running = [client.post("/jobs", json=body).json()["job_id"] for _ in range(1)]
        running.append(client.post("/jobs", json={**body, "callback_url": receiver.url + "/hook"}).json()["job_id"])
        for job_id in running:
            server.wait_for_job(job_id, ("running",))
        filler = fill(disk)
        for job_id in running:
            job = server.wait_for_job(job_id)
            assert job["status"] == "failed" and job["error"]["code"] == "insufficient_storage", job
            events = server.events(job_id)
            assert events[-1].type == "error" and events[-1].data["code"] == "insufficient_storage"
        refused = client.post("/jobs", json=body)
        assert refused.status_code == 507 and refused.json()["error"]["code"] == "insufficient_storage"
        table = "a,y\n" + "1,2\n" * 100_000
        uploaded = client.post("/jobs", params={"target": "y"}, content=table, headers={"content-type": "text/csv"})
        assert uploaded.status_code == 507 and uploaded.json()["error"]["code"] == "insufficient_storage"
        assert client.get("/health").status_code == 200

        filler.unlink()
        deadline = time.monotonic() + 10
        # (Not the log's last line about the job: its webhook may be logged right after.)
        while f"job {running[-1]}: its end is recorded" not in server.log():
            assert time.monotonic() < deadline, "the ends were never written once there was room"
            time.sleep(0.1)
        assert [client.get(f"/jobs/{job_id}").json()["status"] for job_id in running] == ["failed", "failed"]
        deadline = time.monotonic() + 20
        while not receiver.received:  # the webhook it owed, once its end could be written
            assert time.monotonic() < deadline, "the webhook of a job whose end was written late never went"
            time.sleep(0.1)
        assert json.loads(receiver.received[0].body)["job_id"] == running[1]
        small = client.post("/jobs", json={**body, "params": {"n_estimators": 5}})
        assert small.status_code == 202
        assert server.wait_for_job(small.json()["job_id"])["status"] == "succeeded", "no restart needed"


def test_the_cell_limit_counts_x_valid_with_x(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 20)), rng.normal(size=30)
    body = {"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 3}}
    with running_server(tmp_path, max_cells=1000) as server, server.client() as client:
        assert client.post("/jobs", json=body).status_code == 202  # 600 cells
        both = client.post("/jobs", json={**body, "X_valid": X.tolist(), "y_valid": y.tolist()})  # 1,200
        assert both.status_code == 413, both.text
        assert both.json()["error"]["field"] == "X_valid" and "limit of 1000" in both.json()["error"]["message"]


def test_heartbeats_never_cut_into_a_large_event_sent_to_a_slow_reader(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 8))
    y = X @ rng.normal(size=8) + rng.normal(size=3000)
    body = {"X": X.tolist(), "y": y.tolist(), "artifact_format": "native",
            "params": {"n_estimators": 1500, "num_leaves": 63, "min_data_in_leaf": 2}}  # fmt: skip
    with running_server(tmp_path, heartbeat_s=0.05) as server:
        job_id = server.create_job(body)
        server.wait_for_job(job_id)
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        reader.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        reader.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        received = bytearray()
        while chunk := reader.recv(16384):  # some 3 MB a second: many heartbeats while `complete` goes out
            received += chunk
            time.sleep(0.005)
        reader.close()
    head, _, chunked = bytes(received).partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    text, rest = bytearray(), chunked
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        text += rest[:size]
        rest = rest[size + 2 :]
        if size == 0:
            break
    events = list(parse_sse(iter(text.decode().splitlines())))
    complete = events[-1]
    assert complete.type == "complete", [e.type for e in events]
    assert len(base64.b64decode(complete.data["artifact"])) == complete.data["size_bytes"] > 4 * 1024**2


def test_the_memory_estimate_counts_the_bins_a_table_of_few_values_needs(tmp_path):
    rng = np.random.default_rng(0)
    one_hot = rng.integers(0, 2, size=(10_000, 100)).astype(float)
    params = {"num_leaves": 4096, "n_estimators": 10}
    with running_server(tmp_path, worker_memory_mb=300) as server, server.client() as client:
        # 4,096 leaves x 100 features x 255 bins would be 1.7 GB of histograms; a 0/1 column has 3 bins.
        fits = client.post("/jobs", json={"X": one_hot.tolist(), "y": one_hot[:, 0].tolist(), "params": params})
        assert fits.status_code == 202, fits.text
        client.post(f"/jobs/{fits.json()['job_id']}/cancel")
        continuous = one_hot + rng.normal(scale=0.01, size=one_hot.shape)
        refused = client.post("/jobs", json={"X": continuous.tolist(), "y": one_hot[:, 0].tolist(), "params": params})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "params.num_leaves", refused.text
