"""The application: its routes, and the few objects they share (settings, trainers, jobs)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from typing import Any, AsyncIterator, Optional

import anyio
import numpy as np
import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from boostream import __version__, dashboard
from boostream.config import Settings
from boostream.streaming_server import pages
from boostream.streaming_server.artifacts import ArtifactStore
from boostream.streaming_server.decoding import ARTIFACT_FORMATS, TrainSpec, decode_predict_request, decode_train_request
from boostream.streaming_server.errors import ApiError, handle_api_error, handle_http_exception, handle_unexpected_error
from boostream.streaming_server.jobs import Event, Job, JobRequest, JobStatus
from boostream.streaming_server.manager import JobManager, job_urls
from boostream.streaming_server.predicting import LoadedModel, ModelCache, ModelLoader
from boostream.streaming_server.signing import load_or_create_key
from boostream.streaming_server.store import JobStore
from boostream.streaming_server.uploads import MULTIPART, TABLE_TYPES, read_body, receive_table
from boostream.streaming_server.webhooks import WebhookPolicy, WebhookSender
from boostream.trainers import create_trainers
from boostream.trainers.base import OBJECTIVES, Availability, params_schema

log = logging.getLogger("boostream.server")

RETRY_MS = 2000  # EventSource reconnection delay, sent with the first event of every stream
ON_DISCONNECT = ("continue", "cancel")
# Bodies read and decoded at once: each may take a few times its size in memory while decoding.
INGEST_SLOTS = 2
JOB_STATUSES = tuple(status.value for status in JobStatus)
DEFAULT_PAGE, MAX_PAGE = 50, 500
MAX_ID = 2**62  # event ids and cursors: SQLite's integers are 64-bit


class Service:
    """What the routes share. One per application; nothing global."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.trainers = create_trainers(settings.lightgbm_threads)
        self.availability: dict[str, Availability] = {}
        self.webhook_policy = WebhookPolicy(settings.allowed_webhook_hosts)
        self.jobs: Optional[JobManager] = None
        self.model_loader: Optional[ModelLoader] = None
        self.ingest: Optional[asyncio.Semaphore] = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        store = JobStore(settings.data_dir)
        # Importing torch to ask for a GPU takes seconds: do it once, off the loop.
        for name, trainer in self.trainers.items():
            self.availability[name] = await anyio.to_thread.run_sync(trainer.availability)
            if not self.availability[name].available:
                log.info("%s is unavailable: %s", name, self.availability[name].reason)
        key = load_or_create_key(settings.key_path, settings.secret_key or None)
        artifacts = ArtifactStore(settings.artifacts_dir, key)
        self.model_loader = ModelLoader(store, artifacts, self.trainers, ModelCache(settings.model_cache_bytes))
        self.jobs = JobManager(
            store,
            artifacts,
            settings.inputs_dir,
            self.trainers,
            self.availability,
            cpu_jobs=settings.cpu_jobs,
            gpu_jobs=settings.gpu_jobs,
            max_queued=settings.max_queued,
            max_training_s=settings.max_training_s,
            job_ttl_s=settings.job_ttl_s,
            progress_interval_s=settings.progress_interval_s,
            webhooks=WebhookSender(key),
            webhook_policy=self.webhook_policy,
        )
        self.ingest = asyncio.Semaphore(INGEST_SLOTS)
        await self.jobs.start()
        try:
            yield
        finally:
            await self.jobs.shutdown()
            store.close()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/models", self.models, methods=["GET"]),
            Route("/train/stream", self.train_stream, methods=["POST"]),
            Route("/jobs", self.create_job, methods=["POST"]),
            Route("/jobs", self.list_jobs, methods=["GET"]),
            Route("/jobs/{job_id}", self.job_status, methods=["GET"]),
            Route("/jobs/{job_id}", self.delete_job, methods=["DELETE"]),
            Route("/jobs/{job_id}/events", self.job_events, methods=["GET"]),
            Route("/jobs/{job_id}/result", self.job_result, methods=["GET"]),
            Route("/jobs/{job_id}/cancel", self.cancel_job, methods=["POST"]),
            Route("/artifacts/{artifact_id}", self.download_artifact, methods=["GET"]),
            Route("/artifacts/{artifact_id}/metadata", self.artifact_metadata, methods=["GET"]),
            Route("/predict", self.predict, methods=["POST"]),
            *dashboard.routes(),
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
                "memory": pages.kept_memory(),
            }
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse(self.models_view())

    async def train_stream(self, request: Request) -> Response:
        on_disconnect = request.query_params.get("on_disconnect", "continue")
        if on_disconnect not in ON_DISCONNECT:
            raise ApiError(422, "invalid_parameter", f"on_disconnect must be one of {list(ON_DISCONNECT)}, got {on_disconnect!r}", "on_disconnect")
        job = await self._submit(request)
        return self._event_response(job.id, job.follow(0), on_disconnect)

    async def create_job(self, request: Request) -> Response:
        job = await self._submit(request)
        urls = job_urls(job.id)
        return JSONResponse({"job_id": job.id, "status": job.status.value, **urls}, status_code=202, headers={"Location": urls["status_url"]})

    async def list_jobs(self, request: Request) -> Response:
        query = request.query_params
        statuses = [s for s in query.get("status", "").split(",") if s]
        unknown = [s for s in statuses if s not in JOB_STATUSES]
        if unknown:
            raise ApiError(422, "invalid_parameter", f"unknown status {unknown[0]!r}; choose from {list(JOB_STATUSES)}", "status")
        limit = _int_query(query, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        cursor = _int_query(query, "cursor", None, 1, MAX_ID)
        rows = self.jobs.store.jobs(statuses, limit + 1, cursor)
        page, more = rows[:limit], len(rows) > limit
        return JSONResponse({"jobs": [job_view(row) for row in page], "next_cursor": str(page[-1]["seq"]) if more else None})

    async def job_status(self, request: Request) -> Response:
        return JSONResponse(job_view(self.job_row(request.path_params["job_id"])))

    async def job_events(self, request: Request) -> Response:
        row = self.job_row(request.path_params["job_id"])
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        after = _whole_number(raw, "after", 0, MAX_ID)
        if self.jobs.live(row["id"]) is None and not self.jobs.store.has_events_after(row["id"], after):
            # A finished job with nothing left to send: 204 tells EventSource to stop reconnecting.
            return Response(status_code=204)
        return self._event_response(row["id"], self.jobs.events(row["id"], after), "continue")

    async def job_result(self, request: Request) -> Response:
        row = self.job_row(request.path_params["job_id"])
        status = row["status"]
        if status != "succeeded":
            if JobStatus(status).finished:
                raise ApiError(409, "no_result", f"job {row['id']} ended {status}; it has no result", job_status=status)
            raise ApiError(409, "not_finished", f"job {row['id']} is {status}; its result is not ready yet", job_status=status)
        return Response(await self.jobs.result(row), media_type="application/json")

    async def cancel_job(self, request: Request) -> Response:
        return JSONResponse(self.cancel(request.path_params["job_id"]), status_code=202)

    async def delete_job(self, request: Request) -> Response:
        row = self.job_row(request.path_params["job_id"])
        if self.jobs.live(row["id"]) is not None:
            raise ApiError(409, "not_finished", f"job {row['id']} is {row['status']}: cancel it first", job_status=row["status"])
        await self.jobs.delete(row["id"])
        return Response(status_code=204)

    async def download_artifact(self, request: Request) -> Response:
        row = self.artifact_row(request.path_params["artifact_id"])
        format = request.query_params.get("format", "joblib")
        if format not in ARTIFACT_FORMATS:
            raise ApiError(422, "invalid_parameter", f"format must be one of {list(ARTIFACT_FORMATS)}, got {format!r}", "format")
        blob = row["blobs"][format]
        try:
            content = await anyio.to_thread.run_sync(self.jobs.artifacts.read, row["id"], format)
        except FileNotFoundError:
            raise ApiError(410, "gone", f"the {format} file of artifact {row['id']} is missing from the server", "artifact_id") from None
        headers = {
            "Content-Disposition": f'attachment; filename="{row["id"]}.{blob["extension"]}"',
            "ETag": f'"{blob["sha256"]}"',
            "X-Boostream-Signature": blob["signature"],
        }
        return Response(content, media_type=blob["media_type"], headers=headers)

    async def artifact_metadata(self, request: Request) -> Response:
        row = self.artifact_row(request.path_params["artifact_id"])
        return JSONResponse(artifact_view(row))

    async def predict(self, request: Request) -> Response:
        media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(415, "unsupported_media_type", f"send the prediction request as application/json, not {media_type}")
        async with self.ingest:
            body = await read_body(request, self.settings.max_body_bytes)
            parsed, X = await anyio.to_thread.run_sync(decode_predict_request, body, self.settings.max_cells)
            pages.give_back(body)  # for the next body of about its size, if nothing holds it
            del body
        if parsed.artifact_id is not None:
            row = self.artifact_row(parsed.artifact_id)
            loaded = await anyio.to_thread.run_sync(self.model_loader.stored, parsed.artifact_id, row)
        else:
            loaded = await anyio.to_thread.run_sync(self.model_loader.uploaded, parsed.artifact, parsed.artifact_format, parsed.signature)
        answer = await self.predictions(loaded, X, parsed.output)
        return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    # What the HTTP routes and the MCP tools share

    def models_view(self) -> dict[str, Any]:
        return {
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

    def job_row(self, job_id: str) -> dict[str, Any]:
        row = self.jobs.store.job(job_id)
        if row is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (unknown, deleted, or expired)", "job_id")
        return row

    def artifact_row(self, artifact_id: str) -> dict[str, Any]:
        row = self.jobs.store.artifact(artifact_id)
        if row is None:
            raise ApiError(404, "not_found", f"no artifact {artifact_id!r} (unknown, deleted, or expired)", "artifact_id")
        return row

    def cancel(self, job_id: str) -> dict[str, Any]:
        row = self.job_row(job_id)
        if self.jobs.live(row["id"]) is None:
            raise ApiError(409, "already_finished", f"job {row['id']} already ended {row['status']}", job_status=row["status"])
        return {"job_id": row["id"], "status": self.jobs.cancel(row["id"]).value, "cancel_requested": True}

    @property
    def unavailable(self) -> dict[str, str]:
        """The backends that cannot train here, with the reason."""
        return {name: a.reason or "unavailable" for name, a in self.availability.items() if not a.available}

    def submit(self, spec: TrainSpec, ingest_timings: dict[str, float], base_url: str) -> Job:
        """A job for a decoded request, once its options are checked against this server's limits.
        `ingest_timings`: `receive_s` (reading the body, where there was one) and `decode_s`."""
        job_request = JobRequest(
            model_type=spec.trainer.name,
            objective=spec.objective,
            params=spec.params,
            callback_url=None if spec.callback_url is None else self.webhook_policy.check(spec.callback_url),
            timeout_s=self._check_timeout(spec.timeout_s),
            artifact_format=spec.artifact_format,
            base_url=base_url,
        )
        return self.jobs.submit(job_request, spec.data, ingest_timings)

    async def predictions(self, loaded: LoadedModel, X: np.ndarray, output: str) -> dict[str, Any]:
        values = await anyio.to_thread.run_sync(loaded.predict, X, output)
        return {
            "artifact_id": loaded.artifact_id,
            "model_type": loaded.predictor.name,
            "objective": loaded.shape.objective,
            "output": output,
            "shape": list(values.shape),
            "classes": loaded.classes,
            "predictions": values.tolist() if values.dtype == object else values,
        }

    async def _submit(self, request: Request) -> Job:
        spec, ingest_timings = await self._decode(request)
        return self.submit(spec, ingest_timings, str(request.base_url))

    async def _decode(self, request: Request) -> tuple[TrainSpec, dict[str, float]]:
        """The training request, read and checked off the loop, and how long reading the body (from
        the moment it may be read) and decoding it took."""
        media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media_type not in ("application/json", MULTIPART, *TABLE_TYPES):
            accepted = ", ".join(["application/json", *TABLE_TYPES, MULTIPART])
            raise ApiError(415, "unsupported_media_type", f"send the training request as one of {accepted}; not {media_type}")
        unavailable = self.unavailable
        settings = self.settings
        async with self.ingest:
            arrived = time.perf_counter()
            if media_type == "application/json":
                body = await read_body(request, settings.max_body_bytes)
                started = time.perf_counter()
                spec = await anyio.to_thread.run_sync(decode_train_request, body, self.trainers, unavailable, settings.max_cells)
                decoded = time.perf_counter()
                pages.give_back(body)  # for the next body of about its size, if nothing holds it
                del body
                return spec, {"receive_s": started - arrived, "decode_s": decoded - started}
            from boostream.streaming_server.tables import decode_table_request  # pyarrow loads in ~0.3 s: only when used

            upload = await receive_table(request, media_type, settings.max_body_bytes, settings.uploads_dir)
            try:
                started = time.perf_counter()
                spec = await anyio.to_thread.run_sync(
                    decode_table_request, upload.file, upload.kind, upload.fields, self.trainers, unavailable, settings.max_cells
                )
                return spec, {"receive_s": started - arrived, "decode_s": time.perf_counter() - started}
            finally:
                await upload.close()

    def _check_timeout(self, timeout_s: Optional[float]) -> Optional[float]:
        limit = self.settings.max_training_s
        if timeout_s is not None and not 0 < timeout_s <= limit:
            raise ApiError(422, "invalid_parameter", f"timeout_s must be greater than 0 and at most {limit:g} (this server's limit), got {timeout_s:g}", "timeout_s")
        return timeout_s

    def _event_response(self, job_id: str, events: AsyncIterator[Event], on_disconnect: str) -> EventSourceResponse:
        return EventSourceResponse(
            _sse_events(job_id, events, self.jobs, on_disconnect),
            ping=self.settings.heartbeat_s,
            send_timeout=self.settings.send_timeout_s,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def create_app(settings: Settings) -> Starlette:
    from boostream.streaming_server.mcp_server import McpEndpoint  # it imports this module

    pages.keep_memory(settings.keep_memory_s)  # process-wide, as the memory it governs
    service = Service(settings)
    mcp = McpEndpoint(service, settings.allowed_mcp_hosts, settings.allowed_mcp_origins)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with service.lifespan(app), mcp.lifespan():
            yield

    return Starlette(
        routes=[*service.routes(), mcp.route()],
        lifespan=lifespan,
        exception_handlers={
            ApiError: handle_api_error,
            HTTPException: handle_http_exception,  # Starlette's: no such route, a method a route does not take
            Exception: handle_unexpected_error,
        },
    )


async def _sse_events(job_id: str, events: AsyncIterator[Event], jobs: JobManager, on_disconnect: str) -> AsyncIterator[ServerSentEvent | bytes]:
    first = True
    try:
        async for event in events:
            if first:  # the reconnection hint goes with the first event of each stream
                yield ServerSentEvent(data=event.json, event=event.type, id=str(event.id), retry=RETRY_MS)
                first = False
            else:
                yield event.sse
    except asyncio.CancelledError:
        # When the server is stopping, streams end before the jobs are put away: that is no
        # client leaving, and a job it would cancel must run again after the restart.
        jobs.client_left(job_id, "client", cancel=on_disconnect == "cancel" and not AppStatus.should_exit)
        raise


def _availability_fields(availability: Availability, device: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"available": availability.available, "device": device}
    if availability.available:
        fields["device_name"] = availability.device_name
    else:
        fields["reason"] = availability.reason
    return fields


def job_view(row: dict[str, Any]) -> dict[str, Any]:
    """A job as `GET /jobs/{id}` shows it."""
    total, iteration = row["total"], row["iteration"]
    return {
        "job_id": row["id"],
        "status": row["status"],
        "model_type": row["model_type"],
        "objective": row["objective"],
        "device": row["device"],
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "progress": {
            "iteration": iteration,
            "total": total,
            # A job that stopped early succeeded all the same: it is done, whatever rounds it skipped.
            "percent": 100.0 if row["status"] == JobStatus.SUCCEEDED.value else round(100.0 * iteration / total, 2) if total else 0.0,
            "elapsed_s": row["elapsed_s"],
            "eta_s": row["eta_s"],
        },
        "metrics": row["metrics"] or {},
        "error": {"code": row["error_code"], "message": row["error_message"]} if row["error_code"] else None,
        "artifact_id": row["artifact_id"],
        "attempts": row["attempts"],
        "timeout_s": row["request"]["timeout_s"],
        "callback": {"url": row["request"]["callback_url"], "state": row["callback_state"]} if row["request"]["callback_url"] else None,
        **job_urls(row["id"]),
    }


def artifact_view(row: dict[str, Any]) -> dict[str, Any]:
    """An artifact's metadata, as `GET /artifacts/{id}/metadata` shows it."""
    return {
        "artifact_id": row["id"],
        "job_id": row["job_id"],
        "model_type": row["model_type"],
        "objective": row["objective"],
        "feature_names": row["feature_names"],
        "classes": row["classes"],
        "metrics": row["metrics"],
        "iterations": row["iterations"],
        "best_iteration": row["best_iteration"],
        "created_at": _iso(row["created_at"]),
        "formats": row["blobs"],
        "download_urls": {format: f"/artifacts/{row['id']}?format={format}" for format in row["blobs"]},
    }


def _iso(timestamp: Optional[float]) -> Optional[str]:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int_query(query: Any, name: str, default: Optional[int], minimum: int, maximum: int) -> Optional[int]:
    raw = query.get(name)
    return default if raw is None else _whole_number(raw, name, minimum, maximum)


def _whole_number(raw: str, name: str, minimum: int, maximum: int) -> int:
    # isdigit() alone takes '²', and int() of thousands of digits raises: check ASCII and length first.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(maximum)) and minimum <= int(raw) <= maximum):
        raise ApiError(422, "invalid_parameter", f"{name} must be a whole number from {minimum} to {maximum}, got {raw[:40]!r}", name)
    return int(raw)
