"""Servers for the tests, and a client that reads their event streams the way `curl -N` or
EventSource would.

Most tests talk to a server in this process (`start_server`, `running_server`): the app of
`create_app`, served by uvicorn in a thread of its own, with its own event loop, on a free loopback
port, as uvicorn's own tests run theirs; it starts in a fraction of the time a process takes.
Settings are given as `boostream.config.Settings` fields. A few tests need a `boostream serve` process
(`start_server_process`, `running_server_process`): those that kill -9 it or stop it with SIGTERM
and start another on the same data directory, that see the pid holding a data directory, or that
depend on state a process has once (the memory `--keep-memory-s` keeps)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from sklearn import datasets
from sse_starlette.sse import AppStatus

from boostream.client import Event, parse_events
from boostream.config import from_environment
from boostream.streaming_server.app import create_app, uvicorn_options

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as `boostream serve` logs
STARTUP_S = 60.0
SHUTDOWN_S = 30.0


def parse_sse(lines: Iterator[str], comments: list[str] | None = None) -> Iterator[Event]:
    """The client's parser of event streams, reading each event's data as strictly as a browser's
    JSON.parse; comments (`: ping`) appended to `comments` when it is given."""
    return parse_events(lines, loads=strict_json, comments=comments)


def strict_json(text: str | bytes) -> Any:
    """JSON as a browser's JSON.parse reads it: NaN and Infinity, which are not JSON, are refused."""
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class Server:
    """A server the tests talk to over HTTP, in this process or in its own."""

    def __init__(self, url: str, data_dir: Path, log_path: Path) -> None:
        self.url = url
        self.data_dir = data_dir
        self.log_path = log_path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=httpx.Timeout(60.0), **kwargs)

    def log(self) -> str:
        return self.log_path.read_text()

    def train(self, body: dict, **params: str) -> list[Event]:
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

    def wait_for_job(
        self, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"), timeout: float = 60.0
    ) -> dict:
        """Poll GET /jobs/{id}, as an agent would, until its status is one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, f"job {job_id} is still {job['status']}"
            time.sleep(0.05)

    def events(self, job_id: str, headers: dict | None = None, **params: str) -> list[Event]:
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


# In this process.

# The server whose thread is running (and its tasks, and the worker threads anyio runs for them;
# not an executor's threads): each server's log gets only its own records, though every server in
# this process logs through the same loggers.
_SERVING: contextvars.ContextVar[Server | None] = contextvars.ContextVar("serving", default=None)


class _Own(logging.Filter):
    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server = server

    def filter(self, record: logging.LogRecord) -> bool:
        return _SERVING.get() is self.server


def start_server(tmp: Path, **settings: Any) -> Iterator[Server]:
    """A server in this process on `tmp/data`, its log in `tmp/server.log`; `settings` are fields
    of boostream.config.Settings (cpu_jobs=1 for `--cpu-jobs 1`), over BOOSTREAM_* variables as
    `boostream serve` reads them."""
    data_dir = tmp / "data"
    log_path = tmp / "server.log"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # bound before the app exists: no other test can take the port
    port = listener.getsockname()[1]
    app_settings = from_environment(host="127.0.0.1", port=port, data_dir=data_dir, **settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    server = Server(f"http://127.0.0.1:{port}", data_dir, log_path)
    uvicorn_server = uvicorn.Server(
        uvicorn.Config(
            create_app(app_settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            log_config=None,  # this process's logging stays pytest's
            access_log=False,
            **uvicorn_options(app_settings),  # as `boostream serve`
        )
    )
    # boostream's own lines at the level `boostream serve` logs them; the rest as pytest has it.
    logging.getLogger("boostream").setLevel(app_settings.log_level.upper())
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_Own(server))
    logging.getLogger().addHandler(handler)
    # sse-starlette keeps its shutdown flag process-wide: a server that stopped in this process must
    # not leave it set for this one (its streams would end at once). A server in a thread never
    # sets it (uvicorn handles signals in the main thread only), so this one's stop does not end
    # the streams of the others still running.
    AppStatus.should_exit = False
    if hasattr(AppStatus, "should_exit_event"):  # sse-starlette before 3
        AppStatus.should_exit_event = None
    failure: list[BaseException] = []

    def serve() -> None:
        _SERVING.set(server)
        try:
            uvicorn_server.run(sockets=[listener])
        except BaseException as error:  # noqa: B036 - reported by the thread that waits
            failure.append(error)

    thread = threading.Thread(target=serve, name=f"server {port}", daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + STARTUP_S
        while not uvicorn_server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    "the server did not start:\n" + (repr(failure[0]) if failure else log_path.read_text())
                )
            time.sleep(0.01)
        yield server
    finally:
        uvicorn_server.should_exit = True
        thread.join(SHUTDOWN_S)
        if thread.is_alive():
            uvicorn_server.force_exit = True
            thread.join(10)
        logging.getLogger().removeHandler(handler)
        handler.close()
        listener.close()
    if thread.is_alive() or failure:
        raise RuntimeError(
            f"the server on port {port} did not stop: " + (repr(failure[0]) if failure else "still running")
        )


running_server = contextlib.contextmanager(start_server)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(tmp_path_factory.mktemp("server"), cpu_jobs=2, heartbeat_s=0.5)


# In a process of its own: `boostream serve`.


class ServerProcess(Server):
    def __init__(self, url: str, data_dir: Path, log_path: Path, process: subprocess.Popen) -> None:
        super().__init__(url, data_dir, log_path)
        self.process = process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server_process(tmp: Path, *options: str) -> Iterator[ServerProcess]:
    """`boostream serve *options` on `tmp/data`; a second one started on the same `tmp` takes up
    its data directory (and appends to its log)."""
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
    server = ServerProcess(f"http://127.0.0.1:{port}", data_dir, log_path, process)
    deadline = time.monotonic() + STARTUP_S
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
        stop_process(process)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it has not stopped 15 s later."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


running_server_process = contextlib.contextmanager(start_server_process)


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


# A real Redis server of the test's own (Debian's `redis-server`), on a free loopback port, with
# its append-only file in the test's folder, so that a test can kill it and start it again.


class RedisServer:
    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        self.port = _free_port()
        self.options = options
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--maxmemory-policy", "noeviction", *self.options,
        ]  # fmt: skip
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start: " + (self.directory / "redis.log").read_text())
            time.sleep(0.02)

    def kill_9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server here: install Debian's redis-server package (.ci/run does)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
