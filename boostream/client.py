"""A synchronous client for the boostream HTTP API (httpx): one method per endpoint, uploads streamed
from disk, and job event streams that survive a dropped connection.

Errors come as two exceptions: `ApiError` when the server answered with an error (its status,
`code`, `message` and `field`), `Unreachable` when there was no answer at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
TABLE_KINDS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
TABLE_MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
TERMINAL_EVENTS = ("complete", "error", "cancelled")
UPLOAD_CHUNK_BYTES = 1 << 20
# The server sends a heartbeat every 15 s by default: a read that waits much longer than that is
# a connection that died without closing.
STREAM_READ_TIMEOUT_S = 60.0
# The server decodes a whole uploaded table before it answers POST /jobs: seconds per GB.
UPLOAD_ANSWER_TIMEOUT_S = 600.0
RECONNECTS = 6
GATEWAY_ERRORS = (502, 503, 504)
MAX_BACKOFF_S = 30.0


def server_from_environment(given: str | None) -> str:
    """The server's URL: the one given, else $BOOSTREAM_SERVER, else the default."""
    return given or os.environ.get("BOOSTREAM_SERVER") or DEFAULT_SERVER


def api_key_from_environment(given: str | None) -> str | None:
    """The API key: the one given, else $BOOSTREAM_API_KEY, else none (a server without keys)."""
    return given or os.environ.get("BOOSTREAM_API_KEY") or None


class ApiError(Exception):
    """The server refused a request: `status` is its HTTP status, the rest its error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class Unreachable(Exception):
    """No answer from the server: refused, timed out, or a stream that could not be resumed."""


@dataclasses.dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]
    retry_ms: int | None = None


@dataclasses.dataclass(frozen=True)
class Artifact:
    content: bytes
    sha256: str  # as the server states it, for the caller to check against the content


class Client:
    """One server's API, called with `api_key` where the server needs one. `sleep` and `transport`
    are there for tests."""

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        reconnects: int = RECONNECTS,
        backoff_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.reconnects = reconnects
        self.backoff_s = backoff_s
        self._sleep = sleep
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Endpoints

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def models(self) -> dict[str, Any]:
        return self._json("GET", "/models")

    def create_job(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """POST /jobs with a JSON training request; the 202 answer (`job_id` and its URLs)."""
        return self._json("POST", "/jobs", json=request)

    def upload_job(self, table: Path, fields: Mapping[str, str]) -> dict[str, Any]:
        """POST /jobs with a CSV or Parquet file as the body, read from disk as it is sent, and the
        request's `fields` (target, objective, hyperparameters, ...) in the query string."""
        media_type = TABLE_MEDIA_TYPES[table_kind(table)]
        size = table.stat().st_size
        with open(table, "rb") as file:
            return self._json(
                "POST",
                "/jobs",
                params=dict(fields),
                content=_chunks(file),
                # With a length, httpx sends the body as it is, not chunked: the server can refuse
                # a body over its limit before reading any of it.
                headers={"content-type": media_type, "content-length": str(size)},
                timeout=httpx.Timeout(self._http.timeout.connect, read=UPLOAD_ANSWER_TIMEOUT_S),
            )

    def jobs(self, statuses: Sequence[str] = (), limit: int | None = None) -> list[dict[str, Any]]:
        """The newest jobs (the first page: at most `limit`, 500 at the most), with these statuses."""
        params: dict[str, Any] = {}
        if statuses:
            params["status"] = ",".join(statuses)
        if limit is not None:
            params["limit"] = limit
        jobs: list[dict[str, Any]] = self._json("GET", "/jobs", params=params)["jobs"]
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}")

    def result(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}/result")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def delete_job(self, job_id: str) -> None:
        """Remove a finished job, its events and its artifact."""
        self._send("DELETE", f"/jobs/{job_id}")

    def artifact_metadata(self, artifact_id: str) -> dict[str, Any]:
        return self._json("GET", f"/artifacts/{artifact_id}/metadata")

    def artifact(self, artifact_id: str, format: str = "joblib") -> Artifact:
        """A model file, with the sha256 its metadata states."""
        expected = self.artifact_metadata(artifact_id)["formats"][format]["sha256"]
        response = self._send("GET", f"/artifacts/{artifact_id}", params={"format": format})
        return Artifact(response.content, expected)

    def predict(self, artifact_id: str, X: Sequence[Sequence[float | None]], output: str = "value") -> dict[str, Any]:
        return self._json("POST", "/predict", json={"artifact_id": artifact_id, "X": X, "output": output})

    def events(self, job_id: str, after: int = 0) -> Iterator[Event]:
        """A job's events after event `after`, to its terminal event. A connection that drops is
        reopened with `Last-Event-ID`, so no event is missed or repeated; after `reconnects`
        failures in a row without an event in between, Unreachable. The first connection is not
        retried: a server that cannot be reached at all is reported at once."""
        connected, failures, backoff_s = False, 0, self.backoff_s
        while True:
            try:
                with self._event_stream(job_id, after) as response:
                    connected = True
                    if response.status_code == 204:  # the job ended and nothing is left after `after`
                        return
                    for event in parse_events(response.iter_lines()):
                        after, failures = event.id, 0
                        if event.retry_ms is not None:
                            backoff_s = event.retry_ms / 1000
                        yield event
                        if event.type in TERMINAL_EVENTS:
                            return
                reason = "the stream ended before the job did"
            except httpx.TransportError as error:
                if not connected:
                    raise Unreachable(_describe(error, self.base_url)) from None
                reason = _describe(error, self.base_url)
            except ApiError as error:
                # A proxy in front of a restarting server answers these for a while.
                if not connected or error.status not in GATEWAY_ERRORS:
                    raise
                reason = str(error)
            failures += 1
            if failures > self.reconnects:
                raise Unreachable(f"lost the event stream of job {job_id} after event {after}: {reason}")
            self._sleep(min(backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S))

    # Transport

    @contextlib.contextmanager
    def _event_stream(self, job_id: str, after: int) -> Iterator[httpx.Response]:
        headers = {"accept": "text/event-stream", "last-event-id": str(after)}
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_S)
        with self._http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
            if response.is_error:
                response.read()
                raise _api_error(response)
            yield response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self._send(method, path, **kwargs).json()  # every answer of the API is an object
        return body

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise Unreachable(_describe(error, self.base_url)) from None
        if response.is_error:
            raise _api_error(response)
        return response


class EventParser:
    """Server-Sent Events as the HTML specification reads them, a line at a time (lines as
    httpx's `iter_lines` splits them, at CRLF, LF or CR): `field: value` (one space after the colon
    dropped), `data` lines joined with LF, a blank line ending the event (none if it had no data),
    a byte order mark at the very start dropped, unknown fields ignored, a `retry` that is not all
    digits ignored. The event id persists from one event to the next, unless one with a NUL in it.

    Every event of this API has an id, an integer, and JSON data, which `loads` reads (json.loads
    by default; a stricter loader, or `str` to keep the text). Comments (heartbeats, `: ping`) are
    skipped, or appended to `comments` when it is given."""

    def __init__(self, loads: Callable[[str], Any] = json.loads, comments: list[str] | None = None) -> None:
        self.loads = loads
        self.comments = comments
        self.last_event_id: str | None = None
        self._first = True
        self._type = ""
        self._data: list[str] = []
        self._retry: int | None = None

    def feed(self, line: str) -> Event | None:
        """The event this line ends, if it is the blank line after one."""
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            if self.comments is not None:
                self.comments.append(line)
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, kind, retry = self._data, self._type or "message", self._retry
        self._data, self._type, self._retry = [], "", None
        if not data:
            return None
        if not self.last_event_id:  # none yet, or reset by an empty `id`
            raise ValueError(f"a {kind!r} event without an id")
        return Event(int(self.last_event_id), kind, self.loads("\n".join(data)), retry)


def parse_events(
    lines: Iterator[str], loads: Callable[[str], Any] = json.loads, comments: list[str] | None = None
) -> Iterator[Event]:
    """The events of a stream's lines (see EventParser), as each one ends."""
    parser = EventParser(loads, comments)
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


def table_kind(table: Path) -> str:
    """"csv" or "parquet", from the file's extension; ValueError for anything else."""
    kind = TABLE_KINDS.get(table.suffix.lower())
    if kind is None:
        raise ValueError(f"{table}: name a CSV file .csv, a Parquet file .parquet or .pq")
    return kind


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    while chunk := file.read(UPLOAD_CHUNK_BYTES):
        yield chunk


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error["code"], error["message"], error.get("field"))
    except (ValueError, KeyError, TypeError):
        # Not this API's error body: a proxy's page, or not a boostream server at all.
        text = response.text.strip()[:200] or response.reason_phrase
        return ApiError(response.status_code, f"http_{response.status_code}", f"{response.request.url}: {text}")


def _describe(error: httpx.TransportError, base_url: str) -> str:
    return f"cannot reach the server at {base_url}: {str(error) or type(error).__name__}"

