"""The application: its routes, and the few objects they share (settings, trainers, jobs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Optional

import anyio
import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from boostream import __version__
from boostream.config import Settings
from boostream.streaming_server.artifacts import ArtifactStore
from boostream.streaming_server.decoding import decode_train_request
from boostream.streaming_server.errors import ApiError, handle_api_error
from boostream.streaming_server.jobs import Job, JobManager
from boostream.trainers import create_trainers
from boostream.trainers.base import OBJECTIVES, Availability, params_schema

log = logging.getLogger("boostream.server")

RETRY_MS = 2000  # EventSource reconnection delay, sent with the first event of every stream
ON_DISCONNECT = ("continue", "cancel")
# Bodies read and decoded at once: each may take a few times its size in memory while decoding.
INGEST_SLOTS = 2


class Service:
    """What the routes share. One per application; nothing global."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.trainers = create_trainers(settings.lightgbm_threads)
        self.availability: dict[str, Availability] = {}
        self.jobs: Optional[JobManager] = None
        self._ingest: Optional[asyncio.Semaphore] = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # Importing torch to ask for a GPU takes seconds: do it once, off the loop.
        for name, trainer in self.trainers.items():
            self.availability[name] = await anyio.to_thread.run_sync(trainer.availability)
            if not self.availability[name].available:
                log.info("%s is unavailable: %s", name, self.availability[name].reason)
        settings = self.settings
        device_names = {name: a.device_name for name, a in self.availability.items()}
        self.jobs = JobManager(ArtifactStore(settings.artifacts_dir), device_names, settings.cpu_jobs, settings.gpu_jobs, settings.progress_interval_s)
        self._ingest = asyncio.Semaphore(INGEST_SLOTS)
        yield
        await self.jobs.shutdown()

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/models", self.models, methods=["GET"]),
            Route("/train/stream", self.train_stream, methods=["POST"]),
        ]

    async def health(self, request: Request) -> Response:
        gpu = self.availability.get("warpgbm")
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "backends": {name: _availability_fields(a, self.trainers[name].device) for name, a in self.availability.items()},
                "gpu": gpu.device_name if gpu and gpu.available else None,
                "queue": self.jobs.counts(),
            }
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "models": [
                    {
                        "model_type": name,
                        **_availability_fields(self.availability[name], trainer.device),
                        "objectives": list(OBJECTIVES),
                        "params": params_schema(trainer.params),
                    }
                    for name, trainer in self.trainers.items()
                ]
            }
        )

    async def train_stream(self, request: Request) -> Response:
        on_disconnect = request.query_params.get("on_disconnect", "continue")
        if on_disconnect not in ON_DISCONNECT:
            raise ApiError(422, "invalid_parameter", f"on_disconnect must be one of {list(ON_DISCONNECT)}, got {on_disconnect!r}", "on_disconnect")
        job = await self._create_job(request)
        return self._event_response(job, after=0, on_disconnect=on_disconnect)

    async def _create_job(self, request: Request) -> Job:
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", f"send the training request as application/json, not {content_type}")
        unavailable = {name: a.reason or "unavailable" for name, a in self.availability.items() if not a.available}
        async with self._ingest:
            body = await _read_body(request, self.settings.max_body_bytes)
            started = time.perf_counter()
            spec = await anyio.to_thread.run_sync(decode_train_request, body, self.trainers, unavailable, self.settings.max_cells)
            decode_s = time.perf_counter() - started
            del body
        return self.jobs.submit(spec, decode_s)

    def _event_response(self, job: Job, after: int, on_disconnect: str) -> EventSourceResponse:
        return EventSourceResponse(
            _sse_events(job, after, on_disconnect),
            ping=self.settings.heartbeat_s,
            send_timeout=self.settings.send_timeout_s,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def create_app(settings: Settings) -> Starlette:
    service = Service(settings)
    return Starlette(
        routes=service.routes(),
        lifespan=service.lifespan,
        exception_handlers={ApiError: handle_api_error},
    )


async def _read_body(request: Request, limit: int) -> bytearray:
    """The body, refused with 413 as soon as it is known to exceed `limit`, before reading the rest.
    With a Content-Length the buffer is allocated once: growing it chunk by chunk cost seconds per GB."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"the body is {declared} bytes, more than the limit of {limit}")
        body = bytearray(int(declared))
        view, filled = memoryview(body), 0
        async for chunk in request.stream():
            if filled + len(chunk) > len(body):
                raise ApiError(400, "invalid_json", "the body is longer than its Content-Length")
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        view.release()
        if filled != len(body):
            raise ApiError(400, "invalid_json", f"the body ended after {filled} of its {len(body)} bytes")
        return body
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"the body is more than the limit of {limit} bytes")
    return body


async def _sse_events(job: Job, after: int, on_disconnect: str) -> AsyncIterator[ServerSentEvent]:
    retry: Optional[int] = RETRY_MS
    try:
        async for event in job.follow(after):
            yield ServerSentEvent(data=orjson.dumps(event.data).decode(), event=event.type, id=str(event.id), retry=retry)
            retry = None
    except asyncio.CancelledError:
        if job.finished:
            log.info("job %s: client left after the job ended", job.id)
        elif on_disconnect == "cancel":
            job.cancel()
            log.info("job %s: client left; cancelling at the next round (on_disconnect=cancel)", job.id)
        else:
            log.info("job %s: client left; the job keeps training", job.id)
        raise


def _availability_fields(availability: Availability, device: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"available": availability.available, "device": device}
    if availability.available:
        fields["device_name"] = availability.device_name
    else:
        fields["reason"] = availability.reason
    return fields
