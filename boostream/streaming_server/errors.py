"""Errors at the HTTP edge: every domain error (`boostream.errors`) becomes JSON with the status
this table gives it, naming the field at fault; so do the refusals only HTTP has (a media type, a
missing length), Starlette's own (no such route, a method the route does not take) and unexpected
failures."""

from __future__ import annotations

import http
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match, Route
from starlette.types import Scope

from boostream import errors
from boostream.errors import BoostreamError, quotable

log = logging.getLogger("boostream.http")
# Set in a request's scope once its body has come whole (`slow_clients.BodyIdleTimeout`).
BODY_WHOLE = "boostream.body_whole"
UNEXPECTED = "the server failed unexpectedly; its log says why. Try again, and report it if it persists"
# The status of each domain error; a subclass takes its nearest listed ancestor's.
STATUS: dict[type[BoostreamError], int] = {
    errors.InvalidData: 400,
    errors.InvalidParameter: 422,
    errors.TooLarge: 413,
    errors.TooSlow: 408,
    errors.Unauthorized: 401,
    errors.NotFound: 404,
    errors.Gone: 410,
    errors.Untrusted: 403,
    errors.Conflict: 409,
    errors.QueueFull: 429,
    errors.Busy: 503,
    errors.Unavailable: 503,
    errors.StorageFull: 507,
    errors.StorageFailed: 503,
    errors.Interrupted: 503,
    errors.StoreUnreachable: 503,
}


class ApiError(BoostreamError):
    """A refusal that only HTTP has: the status is part of it."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status
        self.code = code  # type: ignore[misc]  # per instance


def status_of(error: BoostreamError) -> int:
    if isinstance(error, ApiError):
        return error.status
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def error_response(error: BoostreamError) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(error, errors.QueueFull):  # the queue, a key's quota or its rate
        headers["Retry-After"] = str(error.retry_after_s)
    elif isinstance(error, errors.Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="boostream"'
    return JSONResponse({"error": error.details()}, status_code=status_of(error), headers=headers)


async def handle_domain_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, BoostreamError)
    return error_response(error)


def body_unread(scope: Scope) -> bool:
    """Whether the request has a body that has not come whole: an answer before its end should
    close the connection, or the server would read the rest (gigabytes, maybe) to reuse it."""
    if scope.get(BODY_WHOLE):
        return False
    headers = dict(scope.get("headers") or [])
    return headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers


async def handle_client_gone(request: Request, error: Exception) -> JSONResponse:
    """A client that left before its request's body came whole: one line, not a traceback. (The
    answer goes nowhere; the access log records it.)"""
    log.info("%s %s: the client left before its body came whole", request.method, quotable(request.url.path))
    error = ApiError(400, "client_left", "the request's body did not come whole")
    return JSONResponse({"error": error.details()}, status_code=400)


async def handle_http_exception(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    status, headers = error.status_code, dict(error.headers or {})
    if status == 404:
        message = f"there is nothing at {quotable(request.url.path)}"
    elif status == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        message = f"{quotable(request.url.path)} does not take {quotable(request.method)}; use {headers['Allow']}"
    else:
        message = error.detail
    return JSONResponse(
        {"error": ApiError(status, _code(status), message).details()}, status_code=status, headers=headers
    )


def _code(status: int) -> str:
    """The status's name as an error code: 404 `not_found`, 405 `method_not_allowed`."""
    try:
        return http.HTTPStatus(status).name.lower()
    except ValueError:
        return "http_error"


def _allowed_methods(request: Request) -> str:
    """Every method the routes of this path take: Starlette's 405 names only the first route's, where
    several routes share a path (`GET /jobs` and `POST /jobs`)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def handle_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    # Starlette raises the error again once this is sent, and uvicorn logs it with its traceback; it
    # then closes the connection, which "Connection: close" tells the client before it reuses it.
    body = {"error": ApiError(500, "internal_error", UNEXPECTED).details()}
    return JSONResponse(body, status_code=500, headers={"Connection": "close"})


async def handle_storage_error(request: Request, error: Exception) -> JSONResponse:
    """The job store failing under a request: a full disk is 507 and one log line; anything else is
    unexpected (500). (Not every OSError: a send that timed out is one, and so is a client gone.)"""
    if not errors.disk_full(error):
        log.error("%s %s failed", request.method, quotable(request.url.path), exc_info=error)
        return await handle_unexpected_error(request, error)
    log.warning("%s %s: refused, the disk is full (%s)", request.method, quotable(request.url.path), error)
    return error_response(errors.StorageFull.of(error))
