"""What an operator watches: `GET /metrics` in Prometheus's text format, and one structured
access-log line per request.

The metrics are this process's (requests, bytes received, open streams, events sent), and, read
from the job store when scraped, the jobs it keeps: by backend and status, with the seconds and
rounds they trained, and each device's queue. Each app has a registry of its own, so several apps
in one process (tests) count apart.

The access log (logger `boostream.access`, at INFO) is one JSON object per request, written when
its answer has been sent (a stream: when it ends): method, path, route, status, duration, bytes
in and out, the client's address, the name of the caller's key (never the key) and the job id
where the request names one or made one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from boostream.keys import Caller
from boostream.service import Service

access_log = logging.getLogger("boostream.access")
EVENT_STREAM = b"text/event-stream"
JOB_HEADER = b"x-boostream-job-id"  # the job a `POST /train/stream` made
# The classic text format, which every Prometheus reads (what generate_latest writes for names that
# need no escaping, as ours do).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A `_created` series beside each counter doubles what a scrape carries for a time nobody graphs.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "boostream_http_requests", "Requests answered, by route and status.", ["method", "route", "status"],
            registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "boostream_http_request_duration_seconds",
            "Time to answer a request, event streams aside.",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.received = Counter(
            "boostream_ingest_bytes", "Request body bytes received (tables and requests).", registry=registry
        )
        self.subscribers = Gauge("boostream_event_streams", "Event streams open now.", registry=registry)
        self.tables_decoded = Counter(
            "boostream_tables_decoded",
            "Tables decoded from request bodies (training requests and datasets), by format.",
            ["format"],
            registry=registry,
        )
        self.events_sent = Counter("boostream_events_sent", "Job events sent on event streams.", registry=registry)
        self.jobs = Gauge(
            "boostream_jobs", "Jobs kept (until they expire), by backend and status.", ["backend", "status"],
            registry=registry,
        )  # fmt: skip
        self.training_seconds = Gauge(
            "boostream_training_seconds", "Seconds that the jobs kept trained, by backend.", ["backend"],
            registry=registry,
        )  # fmt: skip
        self.training_rounds = Gauge(
            "boostream_training_rounds", "Boosting rounds that the jobs kept trained, by backend.", ["backend"],
            registry=registry,
        )  # fmt: skip
        self.rounds_per_second = Gauge(
            "boostream_training_rounds_per_second",
            "Rounds per second of training over the jobs kept, by backend.",
            ["backend"],
            registry=registry,
        )
        self.queue = Gauge(
            "boostream_queue_jobs", "Jobs running and waiting now, by device.", ["device", "state"], registry=registry
        )
        self.queue_limit = Gauge(
            "boostream_queue_limit", "Jobs that may train at once, by device.", ["device"], registry=registry
        )

    async def endpoint(self, service: Service, request: Request) -> Response:
        """`GET /metrics`: the figures read now from the job store, with this process's counters."""
        for device, counts in (await service.jobs.counts()).items():
            self.queue.labels(device, "running").set(counts["running"])
            self.queue.labels(device, "queued").set(counts["queued"])
            self.queue_limit.labels(device).set(counts["limit"])
        self.jobs.clear()
        seconds: dict[str, float] = {}
        rounds: dict[str, int] = {}
        for row in await service.jobs.summary():
            self.jobs.labels(row.model_type, row.status).set(row.jobs)
            seconds[row.model_type] = seconds.get(row.model_type, 0.0) + row.training_s
            rounds[row.model_type] = rounds.get(row.model_type, 0) + row.rounds
        for backend in service.trainers:
            self.training_seconds.labels(backend).set(seconds.get(backend, 0.0))
            self.training_rounds.labels(backend).set(rounds.get(backend, 0))
            trained = seconds.get(backend, 0.0)
            self.rounds_per_second.labels(backend).set(rounds.get(backend, 0) / trained if trained else 0.0)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)


class Observed:
    """ASGI middleware, outermost but for `CloseUnread`: counts and logs every request once it is
    answered."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # `made`: the id of the job the request made, from its answer's headers.
        answer: dict[str, Any] = {"status": 500, "bytes": 0, "stream": False, "made": None}
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"content-type" and value.startswith(EVENT_STREAM):
                        answer["stream"] = True
                        self.metrics.subscribers.inc()
                    elif name == b"location" and value.startswith(b"/jobs/"):
                        answer["made"] = value.decode("latin-1").removeprefix("/jobs/")
                    elif name == JOB_HEADER:
                        answer["made"] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                answer["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        finally:
            if answer["stream"]:
                self.metrics.subscribers.dec()
            self._record(scope, answer, received, time.perf_counter() - started)

    def _record(self, scope: Scope, answer: dict[str, Any], received: int, seconds: float) -> None:
        route, path_params = _routing(scope)
        method, status = scope["method"], answer["status"]
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.received.inc(received)
        if not answer["stream"]:
            self.metrics.duration.labels(method, route).observe(seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return
        caller = scope.get("state", {}).get("caller")
        job_id = path_params.get("job_id")
        if job_id is None:
            job_id = answer["made"]  # the job that POST /jobs or /train/stream made
        client = scope.get("client")
        line = {
            "method": method,
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "bytes_in": received,
            "bytes_out": answer["bytes"],
            "client": f"{client[0]}:{client[1]}" if client else None,
            "key": caller.name if isinstance(caller, Caller) else None,
            "job_id": job_id,
        }
        access_log.info("%s", orjson.dumps(line).decode())


def _routing(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The route's path template (`/jobs/{job_id}`), so that metrics have one series per route and
    not one per job (`other` for paths that are no route; a Mount's, `/ui`, for what it serves),
    and the parameters of the path."""
    path: str | None = getattr(scope.get("route"), "path", None)
    if path is not None:
        return path, scope.get("path_params", {})
    # Refused before routing (401, 421): the route it would have reached.
    for route in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
        match, child = route.matches(scope)
        if match != Match.NONE:
            return str(route.path), child.get("path_params", {})
    return "other", {}
