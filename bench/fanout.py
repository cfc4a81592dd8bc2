"""Fan-out: many subscribers on one job. What do N subscribers of GET /jobs/{id}/events cost
the training, the server's CPU and memory, and how late do they get each event?

For each N in --subscribers (each --repeats times, interleaved), a fresh server (`--cpu-jobs 1
--threads-per-job 1`: one LightGBM thread, what the default layout gives a job on 2 cores) trains
one job of --rows x --cols, sized in process to train for about --target-s seconds. A "blocker"
job holds the one slot while that job waits `queued`; the N subscribers connect and each reads
the `queued` event; then the blocker is cancelled, so the whole fit happens with all of them
attached. The job's status is polled (GET /jobs/{id}, every 0.25 s) meanwhile.

The subscribers run in a separate process (asyncio, raw sockets, HTTP/1.1 chunked, the same
SSE parser as the other benchmarks), so their CPU is not the server's. With only 2 cores the
server is pinned to CPU 0 and the subscribers (and this script) to CPU 1 (--no-pin: both free):
the server's event loop then shares one core with the training thread, so whatever CPU fan-out
costs the event loop can show in the fit time. The machine is shared with other work: see the
load average of each row. Columns:

  fit s          `timings.fit_s` of the job; `x N=0`: its ratio to the (first, or median) N=0 run
  srv cpu        server CPU seconds, all threads (/proc/PID/stat utime + stime), from cancelling
                 the blocker until every subscriber has read `complete`
  loop: train    of which the main thread, uvicorn's event loop (HTTP, SSE encoding, sending),
                 until the job's `complete` event was appended (its `finished_at`);
        complete and after it: sending `complete`, which carries the base64 artifact, to all
  per sub        those two beyond the N=0 run, per subscriber (ms of CPU)
  client         CPU seconds of the subscribers' process over the same window
  lat p50/p99/max per progress event and subscriber: receipt time (time.time() when the
                 event's blank line is parsed) - the event's `ts` (server time.time() at the
                 end of that round; same machine, same clock)
  spread         per progress event: last subscriber's receipt - first subscriber's
  complete max   receipt of `complete` - `ts` of the final round, the most over subscribers
                 (includes saving the artifact, `artifact_s`); `spread` as above
  rss before     server VmRSS just before the fit; `peak`: the most sampled (every 20 ms) after
  poll max       the slowest of the GET /jobs/{id} polls: how long the event loop kept a plain
                 request waiting
  events, ok     events each subscriber got (min-max); `yes` if all got the same log, ending
                 with `complete`

A last case (on unless --no-slow) runs --slow-with normal subscribers and one that connects
with a small receive buffer (SO_RCVBUF --slow-rcvbuf) and never reads. It shows whether the
others' latency, the fit and RSS stay as at N=50; the server's socket towards the slow one
after the job (`ss`: state, bytes queued in the kernel, send buffer size) until it closes or
send_timeout + heartbeat + 10 s pass (sse-starlette's send_timeout: 30 s by default,
BOOSTREAM_SEND_TIMEOUT_S, not a command-line option); then what the slow one had been sent.
With --slow-leaves (e.g. 1023) that case trains a bigger model, so that the stream outgrows the
kernel's socket buffers.

    python bench/fanout.py                                   # about 2.5 minutes here
    python bench/fanout.py --subscribers 0,200 --repeats 1 --no-slow
    python bench/fanout.py --subscribers 0 --repeats 1 --slow-leaves 1023 --target-s 4
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402

from _common import (  # noqa: E402
    HOST,
    Server,
    SSEDecoder,
    Watchdog,
    body_chunks,
    lightgbm_seconds_per_round,
    percentile,
    print_header,
    regression_data,
    summary,
    train_body,
)

SERVER_CPU, CLIENT_CPU = 0, 1
CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
TERMINAL = ("complete", "error", "cancelled")


# ----------------------------------------------------------------------------------------------
# The subscribers (a separate process)


class Dechunker:
    """The payload of an HTTP/1.1 chunked body, as it arrives; `ended` after the last chunk."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._left = 0  # payload bytes of the current chunk still to come
        self._skip = 0  # the CRLF after a chunk's payload still to drop
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while self._buffer and not self.ended:
            if self._skip:
                taken = min(self._skip, len(self._buffer))
                del self._buffer[:taken]
                self._skip -= taken
            elif self._left:
                taken = min(self._left, len(self._buffer))
                out += self._buffer[:taken]
                del self._buffer[:taken]
                self._left -= taken
                if not self._left:
                    self._skip = 2
            else:
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(self._buffer[:end]).split(b";")[0], 16)
                del self._buffer[: end + 2]
                self._left = size
                self.ended = size == 0
        return bytes(out)


def request_bytes(port: int, job_id: str) -> bytes:
    return f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()


def split_head(buffer: bytes) -> tuple[int, bytes]:
    """(status code, the body bytes after the headers) of a response's first bytes."""
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def record(event) -> tuple[int, str, float, float | None, int | None]:
    """(id, type, receipt time, ts, iteration) of an event; the last two for progress events only."""
    if event.event != "progress":
        return int(event.id), event.event, event.received, None, None
    data = orjson.loads(event.data)
    return int(event.id), event.event, event.received, data["ts"], data["iteration"]


async def subscribe(port: int, job_id: str, first_event: asyncio.Event, records: list) -> None:
    """One subscriber: read the job's events to the terminal one; set `first_event` at the first."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(request_bytes(port, job_id))
    head = await reader.readuntil(b"\r\n\r\n")
    status, _ = split_head(head)
    if status != 200:
        raise RuntimeError(f"GET /jobs/{job_id}/events answered {status}")
    chunks, events = Dechunker(), SSEDecoder()
    done = False
    while not done and not chunks.ended:
        data = await reader.read(1 << 16)
        if not data:
            break
        for event in events.feed(chunks.feed(data)):
            records.append(record(event))
            first_event.set()
            done = event.event in TERMINAL
    writer.close()


def open_slow_subscriber(port: int, job_id: str, rcvbuf: int) -> socket.socket:
    """A subscriber that asks for the stream and then never reads: a small receive buffer, set
    before connecting so that the advertised window stays small."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((HOST, port))
    sock.sendall(request_bytes(port, job_id))
    return sock


def drain_slow_subscriber(sock: socket.socket, idle_s: float = 2.0) -> dict[str, Any]:
    """Read whatever the slow subscriber was sent, until EOF or `idle_s` without data."""
    sock.settimeout(idle_s)
    raw = bytearray()
    eof = False
    while True:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            break
        except ConnectionResetError:
            eof = True
            break
        if not data:
            eof = True
            break
        raw += data
    sock.close()
    status, body = split_head(bytes(raw)) if b"\r\n\r\n" in raw else (0, b"")
    chunks, events = Dechunker(), SSEDecoder()
    received = events.feed(chunks.feed(body))
    return {
        "bytes": len(raw),
        "status": status,
        "events": [e.event for e in received],
        "eof": eof,
        "stream_ended_cleanly": chunks.ended,
    }


def subscriber_process(conn, port: int, job_id: str, n: int, slow_rcvbuf: int, pin: bool) -> None:
    """Connect `n` subscribers (and a slow one if `slow_rcvbuf`); say "ready" once each has read
    its first event; report everything they received, and the process's CPU, when all ended."""
    try:
        if pin:
            os.sched_setaffinity(0, {CLIENT_CPU})
        slow = open_slow_subscriber(port, job_id, slow_rcvbuf) if slow_rcvbuf else None
        if slow is not None:
            conn.send(("slow_port", slow.getsockname()[1]))
        records, cpu_s = asyncio.run(_subscribe_all(conn, port, job_id, n))
        conn.send(("done", records, cpu_s))
        if slow is not None:
            conn.recv()  # the parent says when to look at what the slow one got
            conn.send(("slow", drain_slow_subscriber(slow)))
    except BaseException as error:  # reported by the parent
        conn.send(("error", f"{type(error).__name__}: {error}"))
        raise


async def _subscribe_all(conn, port: int, job_id: str, n: int) -> tuple[list[list], float]:
    records: list[list] = [[] for _ in range(n)]
    firsts = [asyncio.Event() for _ in range(n)]
    tasks = [asyncio.create_task(subscribe(port, job_id, firsts[i], records[i])) for i in range(n)]
    all_connected = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in firsts)))
    pending = {all_connected, *tasks}
    while not all_connected.done():  # a subscriber that fails before then ends the wait
        done, pending = await asyncio.wait(pending, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise RuntimeError("not every subscriber got its first event within 120 s")
        for task in done - {all_connected}:
            task.result()
    started = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(("ready",))
    await asyncio.gather(*tasks)
    ended = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (ended.ru_utime + ended.ru_stime) - (started.ru_utime + started.ru_stime)
    return records, cpu_s


# ----------------------------------------------------------------------------------------------
# Watching the server process


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads) or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S  # fields 14 and 15 of stat(5)


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread the process has now; threads started later inherit it from their creator."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass


class ServerSampler(threading.Thread):
    """Every `interval_s`: the server's VmRSS, and the CPU seconds of its main thread (the event
    loop), with the wall-clock time; `peak_mib` is the most RSS seen since it started."""

    def __init__(self, server: Server, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.pid = server.process.pid
        self.interval_s = interval_s
        self.peak_mib = self.server.rss_mib() or 0.0
        self.loop_cpu: list[tuple[float, float]] = []  # (time.time(), main thread CPU seconds)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, self.server.rss_mib() or 0.0)
            self.loop_cpu.append((time.time(), cpu_seconds(self.pid, self.pid)))

    def loop_cpu_at(self, when: float) -> float:
        """The event loop's CPU seconds at the first sample at or after `when`."""
        return next((cpu for at, cpu in self.loop_cpu if at >= when), self.loop_cpu[-1][1])

    def stop(self) -> None:
        self._halt.set()


def server_send_queue(server_port: int, client_port: int) -> tuple[str, int, int] | None:
    """(TCP state, bytes in the kernel's send queue, the socket's send buffer size) of the server's
    socket towards a client port, from `ss`; None once the socket is gone."""
    out = subprocess.run(
        ["ss", "-Htnm", "state", "all", f"( sport = :{server_port} and dport = :{client_port} )"],
        capture_output=True, text=True, check=False,
    ).stdout
    fields, sndbuf = out.split(), re.search(r"\btb(\d+)", out)
    return (fields[0], int(fields[2]), int(sndbuf.group(1)) if sndbuf else -1) if len(fields) >= 3 else None


# ----------------------------------------------------------------------------------------------
# One case


def post_job(client: httpx.Client, url: str, body: bytes) -> str:
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    response = client.post(url + "/jobs", content=body_chunks(body), headers=headers, timeout=120)
    response.raise_for_status()
    return response.json()["job_id"]


def wait_status(
    client: httpx.Client,
    url: str,
    job_id: str,
    wanted: tuple[str, ...],
    timeout_s: float,
    interval_s: float = 0.1,
    latencies: list | None = None,
) -> dict:
    """Poll GET /jobs/{id} until its status is one of `wanted`; each call's latency goes to `latencies`."""
    deadline = time.monotonic() + timeout_s
    while True:
        started = time.perf_counter()
        job = client.get(f"{url}/jobs/{job_id}", timeout=120).json()
        if latencies is not None:
            latencies.append(time.perf_counter() - started)
        if job["status"] in wanted:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
        time.sleep(interval_s)


def iso_seconds(text: str) -> float:
    """`2026-11-28T16:52:26.123Z` (as GET /jobs/{id} writes times) as seconds since the epoch."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def expect(conn, kind: str, timeout_s: float):
    if not conn.poll(timeout_s):
        raise RuntimeError(f"the subscribers' process sent no {kind!r} within {timeout_s:.0f} s")
    message = conn.recv()
    if message[0] == "error":
        raise RuntimeError(f"the subscribers' process failed: {message[1]}")
    if message[0] != kind:
        raise RuntimeError(f"expected {kind!r} from the subscribers' process, got {message[0]!r}")
    return message


def queue_behind_blocker(client: httpx.Client, url: str, body: bytes, blocker: bytes) -> tuple[str, str]:
    """Post the blocker and wait until it trains, then the job, which waits `queued` behind it."""
    blocker_id = post_job(client, url, blocker)
    wait_status(client, url, blocker_id, ("running",), 30)
    return blocker_id, post_job(client, url, body)


def spawn_subscribers(server: Server, job_id: str, n: int, slow_rcvbuf: int, pin: bool):
    """The subscribers' process and this side of its pipe."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(
        target=subscriber_process, args=(child, server.port, job_id, n, slow_rcvbuf, pin), daemon=True
    )
    process.start()
    return process, parent


def run_case(args: argparse.Namespace, body: bytes, blocker: bytes, n: int, slow: bool) -> dict[str, Any]:
    pin = not args.no_pin
    with Server(cpu_jobs=1, threads_per_job=1) as server, httpx.Client() as client:
        pid, url = server.process.pid, server.url
        if pin:
            pin_threads(pid, {SERVER_CPU})
        blocker_id, job_id = queue_behind_blocker(client, url, body, blocker)
        process, conn = spawn_subscribers(server, job_id, n, args.slow_rcvbuf if slow else 0, pin)
        slow_port = expect(conn, "slow_port", 30)[1] if slow else None
        expect(conn, "ready", 120)

        if pin:
            pin_threads(pid, {SERVER_CPU})  # threads started since (decoding, training)
        sampler = ServerSampler(server)
        rss_before = sampler.peak_mib
        cpu_before, loop_before = cpu_seconds(pid), cpu_seconds(pid, pid)
        sampler.start()
        client.post(f"{url}/jobs/{blocker_id}/cancel").raise_for_status()
        polls: list[float] = []
        job = wait_status(
            client,
            url,
            job_id,
            ("succeeded", "failed", "cancelled"),
            args.max_seconds,
            interval_s=0.25,
            latencies=polls,
        )
        _, records, client_cpu = expect(conn, "done", 120)
        cpu_after, loop_after = cpu_seconds(pid), cpu_seconds(pid, pid)
        # The loop's CPU until the `complete` event was appended (training: progress fan-out) and
        # after it (sending `complete`, with its artifact, to every subscriber).
        loop_at_complete = sampler.loop_cpu_at(iso_seconds(job["finished_at"]))
        figures = {
            "n": n, "slow": slow, "server_cpu_s": cpu_after - cpu_before, "client_cpu_s": client_cpu,
            "loop_fit_s": loop_at_complete - loop_before, "loop_complete_s": loop_after - loop_at_complete,
            "rss_before_mib": rss_before, "poll_max_ms": max(polls) * 1000,
        }  # fmt: skip
        if slow:
            figures["slow_report"] = watch_slow_subscriber(args, server, slow_port, sampler, conn)
        sampler.stop()
        figures["rss_peak_mib"] = sampler.peak_mib
        figures.update(result_figures(client, server, job_id))
        figures.update(latency_figures(records))
        process.join(10)
    return figures


def result_figures(client: httpx.Client, server: Server, job_id: str) -> dict[str, Any]:
    """The job's fit and artifact, and what the server logged above `info`."""
    result = client.get(f"{server.url}/jobs/{job_id}/result", timeout=60).json()
    return {
        "fit_s": result["timings"]["fit_s"],
        "artifact_b64_bytes": len(result["artifact"] or ""),
        "artifact_s": result["timings"]["artifact_s"],
        "load_1min": os.getloadavg()[0],
        "server_log_lines": [
            line
            for line in server.log_tail(20000).splitlines()
            if "ERROR" in line or "WARNING" in line or "Error" in line
        ],
    }


def watch_slow_subscriber(
    args: argparse.Namespace, server: Server, slow_port: int, sampler: ServerSampler, conn
) -> dict[str, Any]:
    """After the job: the server's send queue towards the slow subscriber, until the server closes
    that connection or send_timeout + heartbeat + 10 s have passed; then what the slow one got."""
    send_timeout_s = args.send_timeout_s if args.send_timeout_s is not None else 30.0
    limit_s = send_timeout_s + 15.0 + 10.0
    started = time.monotonic()
    states: list[tuple[float, str, int, int]] = []
    while time.monotonic() - started < limit_s:
        state = server_send_queue(server.port, slow_port)
        if state is None:
            break
        if not states or states[-1][1:] != state:
            states.append((time.monotonic() - started, *state))
        if state[0] != "ESTAB":
            break
        time.sleep(0.25)
    closed_after = time.monotonic() - started
    conn.send("drain")
    report = expect(conn, "slow", 30)[1]
    report.update(states=states, watched_s=closed_after, peak_rss_mib=sampler.peak_mib, end_rss_mib=server.rss_mib())
    return report


def latency_figures(records: list[list]) -> dict[str, Any]:
    """Progress latency; per progress event, how far apart its first and last receipt were; and
    how long after the final round each subscriber had the `complete` event."""
    latencies, by_event, complete_delay, complete_at = [], {}, [], []
    counts, worst = [], {}
    for events in records:
        counts.append(len(events))
        final_ts = next((ts for _, kind, _, ts, _ in reversed(events) if kind == "progress"), None)
        for event_id, kind, received, ts, iteration in events:
            if kind == "progress":
                latencies.append(received - ts)
                worst[iteration] = max(worst.get(iteration, 0.0), received - ts)
                by_event.setdefault(event_id, []).append(received)
            elif kind == "complete" and final_ts is not None:
                complete_delay.append(received - final_ts)
                complete_at.append(received)
    spreads = [max(times) - min(times) for times in by_event.values() if len(times) > 1]
    complete_ok = all(events and events[-1][1] == "complete" for events in records)
    same_log = len({tuple((e[0], e[1]) for e in events) for events in records}) <= 1
    return {
        "latency": summary(latencies),
        "spread_p99_ms": percentile(spreads, 99) * 1000 if spreads else float("nan"),
        "spread_max_ms": max(spreads) * 1000 if spreads else float("nan"),
        "complete_max_ms": max(complete_delay) * 1000 if complete_delay else float("nan"),
        "complete_spread_ms": (max(complete_at) - min(complete_at)) * 1000 if complete_at else float("nan"),
        "events_per_subscriber": (min(counts), max(counts)) if counts else (0, 0),
        "worst": sorted(((late, it) for it, late in worst.items()), reverse=True)[:3],
        "all_complete_same_log": complete_ok and same_log,
    }


# ----------------------------------------------------------------------------------------------
# Output


HEADER = (
    f"{'N':>5} {'fit s':>6} {'x N=0':>6} {'srv cpu':>7} {'loop: train':>11} "
    f"{'complete':>8} {'per sub: train':>14} {'complete':>8} {'client':>6}"
    f" {'lat p50':>7} {'p99':>6} {'max':>6} {'spread p99':>10} {'max':>6} "
    f"{'complete max':>12} {'spread':>7} {'rss before':>10} {'peak':>5} {'poll max':>8}"
    f" {'events':>7} {'ok':>3} {'load':>5}  worst progress latencies (iteration)"
)


def per_subscriber_ms(r: dict[str, Any], base: dict[str, Any] | None, key: str) -> float:
    """The event loop's CPU beyond the run without subscribers, per subscriber, in ms."""
    return (r[key] - base[key]) / r["n"] * 1000 if base and r["n"] else float("nan")


def format_row(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    lat = r["latency"]
    ratio = r["fit_s"] / base["fit_s"] if base else float("nan")
    label = f"{r['n']}+1" if r["slow"] else str(r["n"])
    events = "{}-{}".format(*r["events_per_subscriber"]) if r["n"] else "-"
    ok = ("yes" if r["all_complete_same_log"] else "NO") if r["n"] else "-"
    return (
        f"{label:>5} {r['fit_s']:6.2f} {ratio:6.3f} {r['server_cpu_s']:6.2f}s "
        f"{r['loop_fit_s']:10.2f}s {r['loop_complete_s']:7.2f}s"
        f" {per_subscriber_ms(r, base, 'loop_fit_s'):11.2f} ms "
        f"{per_subscriber_ms(r, base, 'loop_complete_s'):5.2f} ms {r['client_cpu_s']:5.2f}s"
        f" {lat['p50_ms']:5.2f}ms {lat['p99_ms']:4.1f}ms {lat['max_ms']:4.1f}ms "
        f"{r['spread_p99_ms']:8.1f}ms {r['spread_max_ms']:4.1f}ms"
        f" {r['complete_max_ms']:10.0f}ms {r['complete_spread_ms']:5.0f}ms "
        f"{r['rss_before_mib']:6.0f} MiB {r['rss_peak_mib']:5.0f} {r['poll_max_ms']:6.0f}ms"
        f" {events:>7} {ok:>3} {r['load_1min']:5.2f}  "
        + ", ".join(f"{late * 1000:.1f} ms ({it})" for late, it in r["worst"])
    )


def print_slow(r: dict[str, Any]) -> None:
    s = r["slow_report"]
    states = ", ".join(f"+{t:.1f}s {state} send-q {q} sndbuf {b}" for t, state, q, b in s["states"]) or "(not seen)"
    print(
        f"  slow subscriber (SO_RCVBUF asked {r['slow_rcvbuf']}): server "
        f"socket after the job: {states}; watched {s['watched_s']:.1f} s"
    )
    print(
        f"  it had been sent {s['bytes']} bytes (status {s['status']}): events {summarize_kinds(s['events'])};"
        f" the stream's last chunk: {'yes' if s['stream_ended_cleanly'] else 'no'}; "
        f"EOF after the data: {'yes' if s['eof'] else 'no'};"
        f" server RSS: peak {s['peak_rss_mib']:.0f} MiB, at the end of the watch {s['end_rss_mib']:.0f} MiB"
    )


def summarize_kinds(kinds: list[str]) -> str:
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in counts.items()) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--subscribers", default="0,1,10,50,200", help="comma-separated subscriber counts (default 0,1,10,50,200)"
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument(
        "--target-s", type=float, default=8.0, help="about how long the job trains, calibrated in process (default 8)"
    )
    parser.add_argument("--rounds", type=int, default=0, help="boosting rounds; 0: from --target-s (default)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each N, interleaved (default 2)")
    parser.add_argument("--no-slow", action="store_true", help="skip the slow-subscriber case")
    parser.add_argument("--slow-with", type=int, default=50, help="normal subscribers beside the slow one (default 50)")
    parser.add_argument(
        "--slow-leaves",
        type=int,
        default=0,
        help="train the slow case's job with this num_leaves, for an artifact larger than "
        "the kernel's socket buffers (default 0: the same job as the other cases)",
    )
    parser.add_argument("--slow-rcvbuf", type=int, default=4096, help="SO_RCVBUF of the slow subscriber (default 4096)")
    parser.add_argument(
        "--send-timeout-s",
        type=float,
        default=None,
        help="set BOOSTREAM_SEND_TIMEOUT_S for the server (default: the server's, 30 s)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to CPU 0 and the clients to CPU 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=420.0, help="hard limit for the whole run (default 420)")
    args = parser.parse_args()
    counts = [int(c) for c in args.subscribers.split(",") if c.strip()]
    if args.send_timeout_s is not None:
        os.environ["BOOSTREAM_SEND_TIMEOUT_S"] = str(args.send_timeout_s)
    if not args.no_pin and len(os.sched_getaffinity(0)) < 2:
        parser.error("pinning needs 2 CPUs; use --no-pin")

    print_header("fanout: N subscribers of one job's GET /jobs/{id}/events")
    with Watchdog(args.max_seconds):
        X, y = regression_data(args.rows, args.cols, args.seed)
        spr = lightgbm_seconds_per_round(X, y, 1)
        rounds = args.rounds or max(50, int(args.target_s / spr))
        body = train_body("lightgbm", X, y, {"n_estimators": rounds})
        # 100k rounds: minutes; cancelled within a round
        blocker_X, blocker_y = regression_data(20_000, 10, args.seed + 1)
        blocker = train_body("lightgbm", blocker_X, blocker_y, {"n_estimators": 100_000})
        del X, y
        if not args.no_pin:
            os.sched_setaffinity(0, {CLIENT_CPU})
        print(
            f"# job: {args.rows} x {args.cols}, {rounds} rounds ({spr * 1000:.2f} ms/round with "
            f"1 thread in process -> about {rounds * spr:.1f} s); body {len(body) / 1e6:.1f} MB"
        )
        print(
            "# server: --cpu-jobs 1 --threads-per-job 1"
            f"{', pinned to CPU 0; subscribers and this script on CPU 1' if not args.no_pin else ', not pinned'}"
            f"; send timeout {args.send_timeout_s if args.send_timeout_s is not None else 'default (30 s)'}"
        )
        print("\n" + HEADER)
        sys.stdout.flush()
        runs: list[dict[str, Any]] = []
        base: dict[str, Any] | None = None
        for _ in range(args.repeats):
            for n in counts:
                r = run_case(args, body, blocker, n, slow=False)
                base = r if n == 0 and base is None else base
                runs.append(r)
                print(format_row(r, base), flush=True)
        if not args.no_slow:
            slow_body = body
            if args.slow_leaves:
                X, y = regression_data(args.rows, args.cols, args.seed)
                slow_body = train_body("lightgbm", X, y, {"n_estimators": rounds, "num_leaves": args.slow_leaves})
                del X, y
                print(
                    f"# the slow case's job has num_leaves {args.slow_leaves}: "
                    "its fit is not comparable with the others'"
                )
            r = run_case(args, slow_body, blocker, args.slow_with, slow=True)
            r["slow_rcvbuf"] = args.slow_rcvbuf
            runs.append(r)
            print(format_row(r, base), flush=True)
        print_summary(runs, counts)
        for r in runs:
            if r["slow"]:
                print_slow(r)
        logged = sorted({line.split(": ", 1)[-1][:160] for r in runs for line in r["server_log_lines"]})
        if logged:
            print("  server log (warnings and errors, distinct):\n    " + "\n    ".join(logged))
    return 0


def print_summary(runs: list[dict[str, Any]], counts: list[int]) -> None:
    """Medians over the repeats of each N; ratios and per-subscriber CPU against the medians at N=0."""
    def med(values):
        return percentile(values, 50)

    plain = [r for r in runs if not r["slow"]]
    zero = [r for r in plain if r["n"] == 0]
    base = {key: med([r[key] for r in zero]) for key in ("fit_s", "loop_fit_s", "loop_complete_s")} if zero else None
    print("\n## medians per N")
    print(
        f"{'N':>5} {'runs':>4} {'fit s':>6} {'x N=0':>6} {'srv cpu':>7} "
        f"{'loop: train':>11} {'complete':>8} {'per sub: train':>14} {'complete':>8} "
        f"{'lat p99':>7} {'max':>6} {'complete max':>12} {'rss peak':>8} {'poll max':>8}"
    )
    groups = [[r for r in plain if r["n"] == n] for n in counts] + [[r for r in runs if r["slow"]]]
    for group in groups:
        if not group:
            continue
        m = {
            key: med([r[key] for r in group])
            for key in (
                "fit_s", "server_cpu_s", "loop_fit_s", "loop_complete_s", "complete_max_ms", "rss_peak_mib",
                "poll_max_ms",
            )
        }
        m["n"] = group[0]["n"]
        label = f"{m['n']}+1" if group[0]["slow"] else str(m["n"])
        ratio = m["fit_s"] / base["fit_s"] if base else float("nan")
        print(
            f"{label:>5} {len(group):>4} {m['fit_s']:6.2f} {ratio:6.3f} "
            f"{m['server_cpu_s']:6.2f}s {m['loop_fit_s']:10.2f}s {m['loop_complete_s']:7.2f}s"
            f" {per_subscriber_ms(m, base, 'loop_fit_s'):11.2f} ms "
            f"{per_subscriber_ms(m, base, 'loop_complete_s'):5.2f} ms"
            f" {med([r['latency']['p99_ms'] for r in group]):5.1f}ms "
            f"{med([r['latency']['max_ms'] for r in group]):4.1f}ms {m['complete_max_ms']:10.0f}ms"
            f" {m['rss_peak_mib']:4.0f} MiB {m['poll_max_ms']:6.0f}ms"
        )
    for label, group in (("the job", plain), ("the slow case's job", [r for r in runs if r["slow"]])):
        if group:
            print(
                f"complete event of {label}: the artifact is "
                f"{med([r['artifact_b64_bytes'] for r in group]) / 1024:.0f} KiB of base64, sent to each subscriber;"
                " artifact_s (the artifact saved, before the event) "
                f"median {med([r['artifact_s'] for r in group]):.3f} s"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
