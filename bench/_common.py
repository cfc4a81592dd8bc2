"""Shared helpers for the benchmark scripts in this folder (not tests; run on demand).

- `Server`: `boostream serve` in a subprocess on a free loopback port with a temporary data
  directory, ready once GET /health answers, stopped (and its directory removed) on exit.
- `SSEDecoder` / `stream_train`: Server-Sent Events read incrementally from an httpx response (by
  the client's parser), each event stamped with the wall-clock and monotonic time at which it was
  parsed.
- `summary` / `percentile`: latency figures.
- `Watchdog`: a hard time limit for a whole script, so that none of them can run on.
- `RedisServer`: Debian's `redis-server` of the script's own on a free loopback port, AOF on, in a
  temporary folder; `watch_group` / `kill_group`: process groups of other children (API replicas,
  workers) that the watchdog kills too, and a check that nothing of them is left.

Only loopback traffic: every server is bound to 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

HOST = "127.0.0.1"
# The scripts run as `python bench/NAME.py`; make the package importable without an install too
# (its server subprocess gets the same through PYTHONPATH).
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

from boostream.client import EventParser  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Machine and data


def machine_description() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as file:
            total_kib = int(next(line for line in file if line.startswith("MemTotal")).split()[1])
        memory = f", {total_kib / 1024**2:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return f"{os.cpu_count()} cores ({model}){memory}, Python {platform.python_version()}{load}"


def print_header(title: str) -> None:
    print(f"# {title}")
    print(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"# machine: {machine_description()}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    sys.stdout.flush()


def regression_data(rows: int, cols: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic regression data, the same for a given (rows, cols, seed): float64, C order."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, cols))
    weights = rng.standard_normal(min(cols, 10))
    y = X[:, : len(weights)] @ weights + np.sin(2.0 * X[:, 0]) + 0.5 * X[:, 1] * X[:, min(2, cols - 1)]
    y += 0.1 * rng.standard_normal(rows)
    return X, y


def train_body(
    model_type: str, X: np.ndarray, y: np.ndarray, params: dict[str, Any], objective: str = "regression"
) -> bytes:
    """The JSON body of POST /train/stream, serialized once (numbers as orjson writes float64:
    shortest round-trip form, so the server decodes exactly the same array)."""
    return orjson.dumps(
        {"model_type": model_type, "objective": objective, "X": X, "y": y, "params": params},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def parse_size(text: str) -> tuple[int, int]:
    """'100k' 'x' '20' style sizes: '100kx20', '1Mx50', '50000x20'."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([kKmM]?)\s*[xX*]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"size {text!r} is not ROWSxCOLS, e.g. 100kx20 or 1Mx50")
    rows = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()]
    return int(rows), int(match.group(3))


def size_label(rows: int, cols: int) -> str:
    if rows % 1_000_000 == 0:
        label = f"{rows // 1_000_000}M"
    elif rows % 1000 == 0:
        label = f"{rows // 1000}k"
    else:
        label = str(rows)
    return f"{label} x {cols}"


def free_memory() -> None:
    gc.collect()
    try:  # give freed arenas back to the OS (glibc only), so the next run starts lean
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not len(values):
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=float), q))


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary(values_s: Sequence[float]) -> dict[str, float]:
    """Latency figures in milliseconds from values in seconds."""
    ms = [v * 1000.0 for v in values_s]
    return {
        "count": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else math.nan,
        "mean_ms": float(np.mean(ms)) if ms else math.nan,
    }


def format_summary(figures: dict[str, float]) -> str:
    return (
        "count {count:>5}  p50 {p50_ms:7.2f} ms  p90 {p90_ms:7.2f} ms  p99 {p99_ms:7.2f} ms  max {max_ms:7.2f} ms"
    ).format(**figures)


def verdict(value: float, target: float, unit: str = "") -> str:
    if math.isnan(value):
        return "n/a"
    if value <= target:
        return f"MET (<= {target:g}{unit})"
    return f"MISSED (target <= {target:g}{unit}; {value / target:.2f}x the target, {value - target:+.3g}{unit})"


# ----------------------------------------------------------------------------------------------
# Server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """`python -m boostream serve` on 127.0.0.1:<free port>, with a temporary data directory.

    Use as a context manager; the process is killed and the directory removed on exit."""

    def __init__(
        self,
        cpu_jobs: int | None = None,
        threads_per_job: int | None = None,
        gpu_jobs: int | None = None,
        log_level: str = "warning",
        startup_timeout_s: float = 120.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.options = {"--cpu-jobs": cpu_jobs, "--threads-per-job": threads_per_job, "--gpu-jobs": gpu_jobs}
        self.log_level = log_level
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.data_dir: Path | None = None
        self.port = 0
        self._log_file = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="boostream-bench-"))
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "boostream",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir / "data"),
            "--log-level",
            self.log_level,
        ]
        for option, value in self.options.items():
            if value is not None:
                command += [option, str(value)]
        command += self.extra_args
        self._log_file = open(self.data_dir / "server.log", "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO_ROOT)) if p)
        self.process = subprocess.Popen(
            command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            # Not the current folder: `-m` would put it first on the path, ahead of PYTHONPATH, and
            # a script run from a checkout would measure that checkout, whatever PYTHONPATH names.
            cwd=self.data_dir,
        )
        _LIVE_SERVERS.add(self)
        self.command = command
        self.wait_healthy()

    def wait_healthy(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with status {self.process.returncode} "
                        f"before answering /health:\n{self.log_tail()}"
                    )
                try:
                    response = client.get(self.url + "/health")
                    if response.status_code == 200:
                        return response.json()
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server did not answer /health within {self.startup_timeout_s:.0f} s:\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")[-chars:]
        except (OSError, TypeError):
            return "(no log)"

    def peak_rss_mib(self) -> float | None:
        """The server's peak resident memory so far (VmHWM), Linux only."""
        return _proc_status_mib(self.process.pid, "VmHWM") if self.process else None

    def rss_mib(self) -> float | None:
        return _proc_status_mib(self.process.pid, "VmRSS") if self.process else None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate(process, grace_s=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _LIVE_SERVERS.discard(self)
        if self.data_dir is not None and os.environ.get("BENCH_KEEP_DATA") != "1":
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill_now(self) -> None:
        """From the watchdog thread: no waiting."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()


_LIVE_SERVERS: set[Server] = set()


def _proc_status_mib(pid: int, key: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


class Watchdog:
    """Ends the whole script (and its servers) if it runs longer than `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        sys.stderr.write(f"\nbench: time limit of {self.seconds:.0f} s reached; stopping the servers and exiting\n")
        sys.stderr.flush()
        for server in list(_LIVE_SERVERS):
            server.kill_now()
        for group in list(_LIVE_GROUPS):
            kill_group(group)
        os._exit(3)


# ----------------------------------------------------------------------------------------------
# Process groups and Redis

# Process groups (each a child started with start_new_session=True: its pid is the group's id)
# that the watchdog kills with SIGKILL, whatever they are; a script adds and removes its own.
_LIVE_GROUPS: set[int] = set()


def watch_group(pgid: int) -> None:
    _LIVE_GROUPS.add(pgid)


def unwatch_group(pgid: int) -> None:
    _LIVE_GROUPS.discard(pgid)


def group_pids(pgid: int) -> list[int]:
    """The processes still in a process group (zombies left out), from /proc (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields 3 (state) and 5 (pgrp) of stat(5)
            found.append(int(entry))
    return found


def kill_group(pgid: int) -> bool:
    """SIGKILL to every process of the group; whether there was any."""
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class RedisServer:
    """Debian's `redis-server` on 127.0.0.1:<free port>, with its append-only file (`appendonly
    yes`, `appendfsync` as given: everysec is Redis's default and what the README asks for) and
    `maxmemory-policy noeviction` in a temporary folder; no RDB snapshots. Use as a context manager;
    the process is stopped (SIGTERM, then SIGKILL) and the folder removed on exit."""

    def __init__(self, appendfsync: str = "everysec", extra_args: Sequence[str] = ()) -> None:
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.directory: Path | None = None
        self.port = 0
        self.command: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self, timeout_s: float = 30.0) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("no redis-server here: install Debian's redis-server package")
        self.directory = Path(tempfile.mkdtemp(prefix="boostream-bench-redis-"))
        self.port = free_port()
        self.command = [
            "redis-server", "--port", str(self.port), "--bind", HOST, "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
            "--maxmemory-policy", "noeviction", *self.extra_args,
        ]  # fmt: skip
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        watch_group(self.process.pid)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.command_reply(b"PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log_tail()}")
            time.sleep(0.02)

    def command_reply(self, *words: bytes, timeout_s: float = 5.0) -> bytes:
        """One command in RESP; its reply: a simple line (`+PONG`), or a bulk string's bytes (INFO)."""
        request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        with socket.create_connection((HOST, self.port), timeout=timeout_s) as connection:
            connection.sendall(request)
            reply = b""
            while b"\r\n" not in reply:
                chunk = connection.recv(1 << 16)
                if not chunk:
                    return reply
                reply += chunk
            head, _, rest = reply.partition(b"\r\n")
            if not head.startswith(b"$") or int(head[1:]) < 0:
                return reply
            size = int(head[1:])
            while len(rest) < size:
                chunk = connection.recv(1 << 16)
                if not chunk:
                    break
                rest += chunk
            return rest[:size]

    def info(self, section: str) -> dict[str, str]:
        """`INFO section` as a dict of its `name:value` lines."""
        reply = self.command_reply(b"INFO", section.encode()).decode(errors="replace")
        return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line and not line.startswith("#"))

    def aof_bytes(self) -> int:
        """The append-only files' size on disk (Redis 7 keeps them, base and increments, in a folder
        of their own)."""
        if self.directory is None:
            return 0
        return sum(p.stat().st_size for p in self.directory.rglob("appendonly*") if p.is_file())

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.directory / "redis.log").read_text(errors="replace")[-chars:]  # type: ignore[operator]
        except (OSError, TypeError):
            return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate(process, grace_s=20)
            kill_group(process.pid)
            unwatch_group(process.pid)
        if self.directory is not None and os.environ.get("BENCH_KEEP_DATA") != "1":
            shutil.rmtree(self.directory, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Server-Sent Events


@dataclasses.dataclass
class SSEEvent:
    event: str
    data: str
    id: int
    retry: int | None
    received: float  # time.time() when the event was parsed (its blank line was seen)
    received_perf: float  # time.perf_counter() at the same moment

    def json(self) -> Any:
        return orjson.loads(self.data)


_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEDecoder:
    """Server-Sent Events read incrementally from the bytes of a stream: cut into lines here (at
    CRLF, LF or CR, as httpx's `iter_lines` cuts them for the client), each line read by the
    client's own parser (boostream.client.EventParser), and each event stamped with the time its
    blank line was read. The data is kept as text, so that no JSON parsing delays the stamp."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scan_from = 0  # no line end before this offset of the buffer
        self._parser = EventParser(loads=str)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        events: list[SSEEvent] = []
        start = 0
        buffer = self._buffer
        while True:
            match = _LINE_END.search(buffer, max(start, self._scan_from))
            if match is None:
                self._scan_from = len(buffer)
                break
            if match.group() == b"\r" and match.end() == len(buffer):
                # A CR at the end of what has arrived may be the first half of a CRLF.
                self._scan_from = match.start()
                break
            line = bytes(buffer[start : match.start()])
            start = match.end()
            self._scan_from = start
            event = self._line(line)
            if event is not None:
                events.append(event)
        if start:
            del buffer[:start]
            self._scan_from -= start
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a CR left at the end is a line end; an unterminated event is dropped
        (as the specification says)."""
        events: list[SSEEvent] = []
        if self._buffer.endswith(b"\r"):
            event = self._line(bytes(self._buffer[:-1]))
            if event is not None:
                events.append(event)
        self._buffer.clear()
        self._scan_from = 0
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        event = self._parser.feed(raw.decode("utf-8", errors="replace"))
        if event is None:
            return None
        now, now_perf = time.time(), time.perf_counter()
        return SSEEvent(event.type, event.data, event.id, event.retry_ms, received=now, received_perf=now_perf)


class TrainError(RuntimeError):
    pass


@dataclasses.dataclass
class TrainRun:
    """One POST /train/stream, timed on the client with time.perf_counter()."""

    sent: float  # just before the request was sent
    headers: float  # response headers received (the server has read and decoded the body)
    events: list[SSEEvent]
    status: int

    def first(self, event_type: str) -> SSEEvent | None:
        return next((e for e in self.events if e.event == event_type), None)

    def of_type(self, event_type: str) -> list[SSEEvent]:
        return [e for e in self.events if e.event == event_type]

    @property
    def terminal(self) -> SSEEvent:
        event = self.events[-1] if self.events else None
        if event is None or event.event not in ("complete", "error", "cancelled"):
            raise TrainError(f"the stream ended without a terminal event (got {[e.event for e in self.events]})")
        return event

    @property
    def complete(self) -> dict[str, Any]:
        event = self.terminal
        if event.event != "complete":
            raise TrainError(f"the job ended with {event.event}: {event.data[:2000]}")
        return event.json()

    @property
    def e2e_s(self) -> float:
        """From just before sending the request to the receipt of the terminal event."""
        return self.terminal.received_perf - self.sent


def stream_events(response: httpx.Response) -> Iterator[SSEEvent]:
    decoder = SSEDecoder()
    for chunk in response.iter_raw():
        yield from decoder.feed(chunk)
    yield from decoder.close()


UPLOAD_CHUNK = 1 << 20


def body_chunks(body: bytes, size: int = UPLOAD_CHUNK) -> Iterator[memoryview]:
    """The body in 1 MiB slices, without copying it.

    Not `content=body`: httpcore (1.0.x) writes a bytes body with `n = sock.send(buffer);
    buffer = buffer[n:]`, which copies the rest of the body after every send(). For a 1 GB body
    that is quadratic: measured here at about 50 s to upload 1 GB over loopback, instead of about
    1 s. With an explicit Content-Length, httpx sends an iterable as it is, not chunked."""
    view = memoryview(body)
    for start in range(0, len(view), size):
        yield view[start : start + size]


def stream_train(
    client: httpx.Client,
    url: str,
    body: bytes,
    timeout_s: float = 600.0,
    on_event=None,
    content_type: str = "application/json",
    params: dict[str, str] | None = None,
) -> TrainRun:
    """POST a pre-serialized body to /train/stream and read the event stream to its end.

    The timer starts just before the request is sent and the terminal event's receipt time is
    taken as soon as its blank line is parsed. `on_event(event)` is called for every event."""
    events: list[SSEEvent] = []
    headers = {"content-type": content_type, "accept": "text/event-stream", "content-length": str(len(body))}
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    sent = time.perf_counter()
    with client.stream(
        "POST", url + "/train/stream", params=params, content=body_chunks(body), headers=headers, timeout=timeout
    ) as response:
        headers_at = time.perf_counter()
        if response.status_code != 200:
            response.read()
            raise TrainError(f"POST /train/stream answered {response.status_code}: {response.text[:2000]}")
        for event in stream_events(response):
            events.append(event)
            if on_event is not None:
                on_event(event)
            if event.event in ("complete", "error", "cancelled"):
                break
    return TrainRun(sent=sent, headers=headers_at, events=events, status=response.status_code)


def progress_latencies(run: TrainRun) -> list[float]:
    """Client receipt time minus the server's `ts` of each progress event, in seconds."""
    return [e.received - e.json()["ts"] for e in run.of_type("progress")]


def fmt_s(value: float) -> str:
    return f"{value:8.3f} s"


def lightgbm_seconds_per_round(X: np.ndarray, y: np.ndarray, threads: int, rounds: int = 300, skip: int = 50) -> float:
    """Seconds per boosting round of the server's LightGBM call on (X, y) with `threads`
    threads, measured in process between round `skip` and the last (Dataset construction and
    the first rounds left out). Used to size jobs so that they last about a given time."""
    import lightgbm

    stamps: list[float] = []
    params = {"objective": "regression", "metric": "l2", "num_threads": threads, "verbose": -1}
    train_set = lightgbm.Dataset(X, y, params={"max_bin": 255, "verbose": -1, "num_threads": threads})
    lightgbm.train(
        params,
        train_set,
        num_boost_round=rounds,
        valid_sets=[train_set],
        valid_names=["train"],
        callbacks=[lambda env: stamps.append(time.perf_counter())],
    )
    return (stamps[-1] - stamps[skip]) / (len(stamps) - 1 - skip)


def e2e_figures(run: TrainRun) -> dict[str, Any]:
    """What one end-to-end request cost, from the client's clock and the server's `timings`.
    `outside_s` is the server's time apart from decoding and fitting (body transfer included)."""
    complete = run.complete
    timings = complete["timings"]
    progress = run.of_type("progress")
    outside = run.e2e_s - timings["decode_s"] - timings["fit_s"]
    receive = timings.get("receive_s", math.nan)  # the server's reading of the body, from its first byte
    return {
        "e2e_s": run.e2e_s,
        "headers_s": run.headers - run.sent,
        "last_progress_to_complete_s": run.terminal.received_perf - progress[-1].received_perf
        if progress
        else math.nan,
        "decode_s": timings["decode_s"],
        "queued_s": timings["queued_s"],
        "fit_s": timings["fit_s"],
        "artifact_s": timings["artifact_s"],
        "outside_s": outside,
        "outside_pct": 100.0 * outside / timings["fit_s"],
        "receive_s": receive,
        "own_s": outside - receive,  # what is left: the server's own work outside the fit, decoding and the upload
        "own_pct": 100.0 * (outside - receive) / timings["fit_s"],
        "iterations": complete["iterations"],
        "progress_events": len(progress),
        "artifact_bytes": complete.get("size_bytes"),
    }


def print_e2e(label: str, r: dict[str, Any]) -> None:
    print(
        f"  {label:<10} e2e {r['e2e_s']:7.3f} s | headers {r['headers_s']:6.3f} "
        f"| decode {r['decode_s']:6.3f} | queued {r['queued_s']:6.4f}"
        f" | fit {r['fit_s']:7.3f} | artifact {r['artifact_s']:6.4f} | "
        f"last progress->complete {r['last_progress_to_complete_s']:6.3f}"
        f" | outside fit apart from decode {r['outside_s']:6.3f} s = {r['outside_pct']:5.1f}% of fit"
        f" (receiving the body {r['receive_s']:6.3f} s; the rest {r['own_s']:6.3f} s = {r['own_pct']:4.1f}%)"
    )
    sys.stdout.flush()


def terminate(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited after `grace_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

