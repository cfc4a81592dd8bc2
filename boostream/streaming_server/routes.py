"""The HTTP routes: each reads its request, calls the service, and writes its answer. Refusals are
domain errors, which `errors.py` turns into statuses."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from boostream import dashboard
from boostream.errors import InvalidData, InvalidParameter, StorageFull, disk_full, quotable
from boostream.jobs.records import Event, JobRecord, follow_urls, job_urls
from boostream.keys import Caller
from boostream.requests.spec import TrainSpec
from boostream.service import INGEST_SLOTS, Service
from boostream.streaming_server.errors import ApiError
from boostream.streaming_server.limits import DEFAULT_PAGE, MAX_ID, MAX_PAGE, ON_DISCONNECT
from boostream.streaming_server.observe import Metrics
from boostream.streaming_server.openapi import openapi_document
from boostream.streaming_server.sse import event_response
from boostream.streaming_server.uploads import MULTIPART, TABLE_TYPES, BodyBudget, read_body, receive_table
from boostream.tuning import Tune

ON_DISCONNECT_FIELD = frozenset({"on_disconnect"})  # the one query field a JSON training request takes
JSON = "application/json"

MAX_NAME = 200  # characters of a dataset's name


class Routes:
    def __init__(self, service: Service, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics
        # As much of bodies as the decoding slots could hold whole, but taken as the bytes come.
        self.bodies = BodyBudget(INGEST_SLOTS * service.settings.max_body_bytes)
        self._openapi: bytes | None = None

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
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
            Route("/tune/stream", self.tune_stream, methods=["POST"]),
            Route("/tunes", self.create_tune, methods=["POST"]),
            Route("/tunes", self.list_tunes, methods=["GET"]),
            Route("/tunes/{tune_id}", self.tune_status, methods=["GET"]),
            Route("/tunes/{tune_id}", self.delete_tune, methods=["DELETE"]),
            Route("/tunes/{tune_id}/events", self.tune_events, methods=["GET"]),
            Route("/tunes/{tune_id}/result", self.tune_result, methods=["GET"]),
            Route("/tunes/{tune_id}/cancel", self.cancel_tune, methods=["POST"]),
            Route("/datasets", self.create_dataset, methods=["POST"]),
            Route("/datasets", self.list_datasets, methods=["GET"]),
            Route("/datasets/{dataset_id}", self.dataset, methods=["GET"]),
            Route("/datasets/{dataset_id}", self.delete_dataset, methods=["DELETE"]),
            *dashboard.routes(),
        ]

    async def health(self, request: Request) -> Response:
        return JSONResponse(await self.service.health())

    async def prometheus(self, request: Request) -> Response:
        if not _caller(request).admin:  # what every key's jobs add up to is the operator's
            raise ApiError(403, "forbidden", "only an admin key may read /metrics (boostream keys create NAME --admin)")
        return await self.metrics.endpoint(self.service, request)

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:  # made once: the backends and limits do not change while it runs
            self._openapi = orjson.dumps(openapi_document(self.service))
        return Response(self._openapi, media_type=JSON)

    async def models(self, request: Request) -> Response:
        return JSONResponse(self.service.models())

    async def train_stream(self, request: Request) -> Response:
        on_disconnect = request.query_params.get("on_disconnect", "continue")
        if on_disconnect not in ON_DISCONNECT:
            raise InvalidParameter(
                "on_disconnect", f"on_disconnect must be one of {list(ON_DISCONNECT)}, got {on_disconnect!r}"
            )
        job = await self._submit(request)
        response = self._event_response(job.id, self.service.events(job.id), cancel_on_leave=on_disconnect == "cancel")
        response.headers["X-Boostream-Job-Id"] = job.id  # before the first event: for logs, and `curl -i`
        return response

    async def create_job(self, request: Request) -> Response:
        job = await self._submit(request)
        urls = job_urls(job.id)
        return JSONResponse(
            {"job_id": job.id, "status": job.status.value, **urls},
            status_code=202,
            headers={"Location": urls["status_url"]},
        )

    async def list_jobs(self, request: Request) -> Response:
        query = request.query_params
        statuses = [s for s in query.get("status", "").split(",") if s]
        limit = _int_query(query, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        cursor = _int_query(query, "cursor", None, 1, MAX_ID)
        assert limit is not None
        return JSONResponse(await self.service.list_jobs(_caller(request), statuses, limit, cursor))

    async def job_status(self, request: Request) -> Response:
        return JSONResponse(await self.service.status(_caller(request), request.path_params["job_id"]))

    async def job_events(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        events = await self.service.follow(_caller(request), job_id, _resume_after(request))
        if events is None:
            # A finished job with nothing left to send: 204 tells EventSource to stop reconnecting.
            return Response(status_code=204)
        return self._event_response(job_id, events, cancel_on_leave=False)

    async def job_result(self, request: Request) -> Response:
        return Response(await self.service.result(_caller(request), request.path_params["job_id"]), media_type=JSON)

    async def cancel_job(self, request: Request) -> Response:
        return JSONResponse(await self.service.cancel(_caller(request), request.path_params["job_id"]), status_code=202)

    async def delete_job(self, request: Request) -> Response:
        await self.service.delete(_caller(request), request.path_params["job_id"])
        return Response(status_code=204)

    async def download_artifact(self, request: Request) -> Response:
        artifact_id = request.path_params["artifact_id"]
        content, blob = await self.service.artifact_file(
            _caller(request), artifact_id, request.query_params.get("format", "joblib")
        )
        headers = {
            "Content-Disposition": f'attachment; filename="{artifact_id}.{blob.extension}"',
            "ETag": f'"{blob.sha256}"',
            "X-Boostream-Signature": blob.signature,
        }
        return Response(content, media_type=blob.media_type, headers=headers)

    async def artifact_metadata(self, request: Request) -> Response:
        return JSONResponse(await self.service.artifact_metadata(_caller(request), request.path_params["artifact_id"]))

    async def predict(self, request: Request) -> Response:
        _json_only(request, "the prediction request")
        with self.bodies.share() as share:
            body = await read_body(request, self.service.settings.max_body_bytes, share=share)
            async with self.service.ingest_slot():
                parsed, X = await self.service.decode_predict(body)
            del body  # not held while predicting: it may be a gigabyte
        answer = await self.service.predict(_caller(request), parsed, X)
        return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)

    async def _submit(self, request: Request) -> JobRecord:
        with _full_disk_is_507():  # spooling an upload, writing a table
            spec, ingest_timings = await self._decode(request)
            return await self.service.submit(_caller(request), spec, ingest_timings, str(request.base_url))

    async def _decode(self, request: Request) -> tuple[TrainSpec, dict[str, float]]:
        """The training request, read and checked off the loop, and how long reading the body (from
        the moment it may be read) and decoding it took."""
        if "dataset_id" in request.query_params:
            return await self._decode_on_dataset(request)
        if "valid_dataset_id" in request.query_params:
            raise InvalidParameter("valid_dataset_id", "is the validation set of a dataset: send dataset_id too")
        media_type = _table_media_type(request, "the training request")
        service, limit = self.service, self.service.settings.max_body_bytes
        # Received first, then decoded in one of the few slots: a slow body holds up no other.
        with self.bodies.share() as share:
            arrived = time.perf_counter()
            if media_type == JSON:
                _refuse_query_fields(request)
                body = await read_body(request, limit, service.body_buffer, share=share)
                received = time.perf_counter()
                async with service.ingest_slot():
                    started = time.perf_counter()
                    spec = await service.decode_json(body)
                self.metrics.tables_decoded.labels("json").inc()
                return spec, _timings(arrived, received, started)
            upload = await receive_table(request, media_type, limit, service.settings.uploads_dir, share)
            try:
                received = time.perf_counter()
                async with service.ingest_slot():
                    started = time.perf_counter()
                    spec = await service.decode_table(upload.file, upload.kind, upload.fields)
                self.metrics.tables_decoded.labels(upload.kind).inc()
                return spec, _timings(arrived, received, started)
            finally:
                await upload.close()

    async def _decode_on_dataset(self, request: Request) -> tuple[TrainSpec, dict[str, float]]:
        """A training request on a dataset: its fields in the query, no body."""
        if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
            raise InvalidData(
                "dataset_id", "a training request on a dataset has no body: its fields go in the query string"
            )
        async with self.service.ingest_slot():
            started = time.perf_counter()
            spec = await self.service.decode_on_dataset(_caller(request), dict(request.query_params))
        return spec, {"dataset_s": time.perf_counter() - started}  # its columns into X: decoded already

    # Hyperparameter searches

    async def tune_stream(self, request: Request) -> Response:
        tune = await self._start_tune(request)
        response = self._tune_response(tune.follow(0))
        response.headers["X-Boostream-Tune-Id"] = tune.id
        return response

    async def create_tune(self, request: Request) -> Response:
        tune = await self._start_tune(request)
        urls = follow_urls(f"/tunes/{tune.id}")
        created = {"tune_id": tune.id, "status": tune.status, **urls}
        return JSONResponse(created, status_code=202, headers={"Location": urls["status_url"]})

    async def list_tunes(self, request: Request) -> Response:
        return JSONResponse(self.service.searches.visible(_caller(request)))

    async def tune_status(self, request: Request) -> Response:
        return JSONResponse(self.service.searches.get(_caller(request), request.path_params["tune_id"]).view())

    async def tune_events(self, request: Request) -> Response:
        tune = self.service.searches.get(_caller(request), request.path_params["tune_id"])
        after = _resume_after(request)
        if tune.finished and after >= tune.last_id:
            return Response(status_code=204)
        return self._tune_response(tune.follow(after))

    async def tune_result(self, request: Request) -> Response:
        return JSONResponse(self.service.searches.result(_caller(request), request.path_params["tune_id"]))

    async def cancel_tune(self, request: Request) -> Response:
        answer = await self.service.searches.cancel(_caller(request), request.path_params["tune_id"])
        return JSONResponse(answer, status_code=202)

    async def delete_tune(self, request: Request) -> Response:
        await self.service.searches.delete(_caller(request), request.path_params["tune_id"])
        return Response(status_code=204)

    async def _start_tune(self, request: Request) -> Tune:
        _json_only(request, "the search request")
        _refuse_query_fields(request)
        with self.bodies.share() as share:
            body = await read_body(request, self.service.settings.max_body_bytes, share=share)
            async with self.service.ingest_slot():
                with _full_disk_is_507():  # writing the search's table
                    return await self.service.searches.start(_caller(request), body, str(request.base_url))

    def _tune_response(self, events: AsyncIterator[Event]) -> Response:
        settings = self.service.settings
        # A client that leaves a search's stream leaves the search running: it is followed again by its id.
        return event_response(
            events, lambda server_stopping: None, settings.heartbeat_s, settings.send_timeout_s,
            self.metrics.events_sent.inc,
        )  # fmt: skip

    # Datasets

    async def create_dataset(self, request: Request) -> Response:
        media_type = _table_media_type(request, "a dataset's table")
        service, limit = self.service, self.service.settings.max_body_bytes
        with _full_disk_is_507(), self.bodies.share() as share:
            if media_type == JSON:
                name = _dataset_name(dict(request.query_params))
                body = await read_body(request, limit, share=share)
                async with service.ingest_slot():
                    made = await service.create_dataset(_caller(request), body, "json", name)
                kind = "json"
            else:
                upload = await receive_table(request, media_type, limit, service.settings.uploads_dir, share)
                try:
                    name, kind = _dataset_name(upload.fields), upload.kind
                    async with service.ingest_slot():
                        made = await service.create_dataset(_caller(request), upload.file, kind, name)
                finally:
                    await upload.close()
        self.metrics.tables_decoded.labels(kind).inc()
        return JSONResponse(made, status_code=201, headers={"Location": f"/datasets/{made['dataset_id']}"})

    async def list_datasets(self, request: Request) -> Response:
        return JSONResponse(await self.service.list_datasets(_caller(request)))

    async def dataset(self, request: Request) -> Response:
        return JSONResponse(await self.service.dataset_view(_caller(request), request.path_params["dataset_id"]))

    async def delete_dataset(self, request: Request) -> Response:
        await self.service.delete_dataset(_caller(request), request.path_params["dataset_id"])
        return Response(status_code=204)

    def _event_response(self, job_id: str, events: AsyncIterator[Event], cancel_on_leave: bool) -> Response:
        def on_leave(server_stopping: bool) -> None:
            self.service.client_left(job_id, "client", cancel=cancel_on_leave and not server_stopping)

        settings = self.service.settings
        return event_response(
            events, on_leave, settings.heartbeat_s, settings.send_timeout_s, self.metrics.events_sent.inc
        )


def _dataset_name(fields: dict[str, str]) -> str | None:
    """A dataset's `name`, its one field: a label for people, at most 200 printable characters."""
    unknown = [field for field in fields if field != "name"]
    if unknown:
        raise InvalidParameter(unknown[0], f"a dataset takes only a `name`, not {quotable(unknown[0])!r}")
    name = fields.get("name")
    if name is not None and (len(name) > MAX_NAME or not name.isprintable()):
        raise InvalidParameter("name", f"name must be at most {MAX_NAME} printable characters")
    return name


def _caller(request: Request) -> Caller:
    """Who sent the request, as the access checks found (`access.py`)."""
    caller: Caller = request.state.caller
    return caller


def _timings(arrived: float, received: float, started: float) -> dict[str, float]:
    """How long receiving the body took, and decoding it once a slot was free (the wait between
    them is left out: it is other requests' decoding)."""
    return {"receive_s": received - arrived, "decode_s": time.perf_counter() - started}


def _refuse_query_fields(request: Request) -> None:
    """A JSON request's fields go in its body: one in the query (`?n_estimators=500`, as a table
    upload takes it) would be silently ignored."""
    for name in request.query_params:
        if name not in ON_DISCONNECT_FIELD:
            raise InvalidParameter(
                name,
                f"with a JSON body, send {quotable(name)!r} in the body (params for hyperparameters), not the query",
            )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", JSON).split(";")[0].strip().lower()


def _json_only(request: Request, what: str) -> None:
    media_type = _media_type(request)
    if media_type != JSON:
        raise ApiError(415, "unsupported_media_type", f"send {what} as application/json, not {media_type}")


def _resume_after(request: Request) -> int:
    """Where an event stream resumes: after `Last-Event-ID` (EventSource's own, when it reconnects)
    or the query's `after`, which is checked even where the header wins."""
    after = _int_query(request.query_params, "after", 0, 0, MAX_ID)
    header = request.headers.get("last-event-id")
    if header:
        after = _whole_number(header, "Last-Event-ID", 0, MAX_ID)
    assert after is not None
    return after


@contextlib.contextmanager
def _full_disk_is_507() -> Iterator[None]:
    """A write that found the disk full (spooling an upload, writing a table) as 507."""
    try:
        yield
    except OSError as error:
        if disk_full(error):
            raise StorageFull.of(error) from None
        raise


def _table_media_type(request: Request, what: str) -> str:
    """The media type of a body that holds a table (JSON, CSV, Parquet, Arrow, a multipart
    upload); 415 naming those for any other."""
    media_type = _media_type(request)
    if media_type not in (JSON, MULTIPART, *TABLE_TYPES):
        accepted = ", ".join([JSON, *TABLE_TYPES, MULTIPART])
        raise ApiError(415, "unsupported_media_type", f"send {what} as one of {accepted}; not {media_type}")
    return media_type


def _int_query(query: QueryParams, name: str, default: int | None, minimum: int, maximum: int) -> int | None:
    raw = query.get(name)
    return default if raw is None else _whole_number(raw, name, minimum, maximum)


def _whole_number(raw: str, name: str, minimum: int, maximum: int) -> int:
    # isdigit() alone takes '²', and int() of thousands of digits raises: check ASCII and length first.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(maximum)) and minimum <= int(raw) <= maximum):
        raise InvalidParameter(name, f"{name} must be a whole number from {minimum} to {maximum}, got {raw[:40]!r}")
    return int(raw)
