"""A real server for the tests: `boostream serve` in a subprocess on a free loopback port, and a
client that reads its event streams the way `curl -N` or EventSource would."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import numpy as np
import pytest
from sklearn import datasets


@dataclasses.dataclass
class SseEvent:
    id: Optional[int]
    event: str
    data: Any
    retry: Optional[int] = None


def parse_sse(lines: Iterator[str], comments: Optional[list[str]] = None) -> Iterator[SseEvent]:
    """Server-Sent Events as the specification reads them: fields until a blank line."""
    fields: dict[str, str] = {}
    data_lines: list[str] = []
    for line in lines:
        if line == "":
            if data_lines:
                yield SseEvent(
                    id=int(fields["id"]) if "id" in fields else None,
                    event=fields.get("event", "message"),
                    data=strict_json("\n".join(data_lines)),
                    retry=int(fields["retry"]) if "retry" in fields else None,
                )
            fields, data_lines = {}, []
        elif line.startswith(":"):
            if comments is not None:
                comments.append(line)
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data_lines.append(value)
            else:
                fields[name] = value


def strict_json(text: str | bytes) -> Any:
    """JSON as a browser's JSON.parse reads it: NaN and Infinity, which are not JSON, are refused."""
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class Server:
    def __init__(self, url: str, data_dir: Path, log_path: Path, process: subprocess.Popen) -> None:
        self.url = url
        self.data_dir = data_dir
        self.log_path = log_path
        self.process = process

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=httpx.Timeout(60.0), **kwargs)

    def log(self) -> str:
        return self.log_path.read_text()

    def train(self, body: dict, **params: str) -> list[SseEvent]:
        """POST /train/stream and read the whole stream."""
        with self.client() as client:
            with client.stream("POST", "/train/stream", json=body, params=params) as response:
                assert response.status_code == 200, response.read()
                assert response.headers["content-type"].startswith("text/event-stream")
                return list(parse_sse(response.iter_lines()))

    def create_job(self, body: dict) -> str:
        """POST /jobs; the new job's id."""
        with self.client() as client:
            response = client.post("/jobs", json=body)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def job(self, job_id: str) -> dict:
        with self.client() as client:
            response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_job(self, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"), timeout: float = 60.0) -> dict:
        """Poll GET /jobs/{id}, as an agent would, until its status is one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, f"job {job_id} is still {job['status']}"
            time.sleep(0.05)

    def events(self, job_id: str, headers: Optional[dict] = None, **params: str) -> list[SseEvent]:
        """GET /jobs/{id}/events to its end; none when the server answers 204 (nothing left)."""
        with self.client() as client:
            with client.stream("GET", f"/jobs/{job_id}/events", headers=headers or {}, params=params) as response:
                if response.status_code == 204:
                    return []
                assert response.status_code == 200, response.read()
                return list(parse_sse(response.iter_lines()))

    def wait_idle(self, timeout: float = 10.0) -> dict:
        """Wait until no job runs or waits; return the last /health."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                health = client.get("/health").json()
                busy = sum(q["running"] + q["queued"] for q in health["queue"].values())
                if not busy or time.monotonic() > deadline:
                    return health
                time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(tmp: Path, *options: str) -> Iterator[Server]:
    """A server on `tmp/data`; a second one started on the same `tmp` takes up its data directory."""
    port = _free_port()
    data_dir = tmp / "data"
    log_path = tmp / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "boostream", "serve", "--port", str(port), "--data-dir", str(data_dir), *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(f"http://127.0.0.1:{port}", data_dir, log_path, process)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the server did not start:\n" + log_path.read_text())
        time.sleep(0.1)
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


running_server = contextlib.contextmanager(start_server)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(tmp_path_factory.mktemp("server"), "--cpu-jobs", "2", "--heartbeat-s", "0.5")


# Small real data sets, shipped inside scikit-learn (no download).


@pytest.fixture(scope="session")
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    data = datasets.load_diabetes()
    return data.data, data.target


@pytest.fixture(scope="session")
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    data = datasets.load_breast_cancer()
    return data.data, data.target


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    data = datasets.load_iris()
    return data.data, np.array(data.target_names)[data.target]  # string labels, as a client might send
