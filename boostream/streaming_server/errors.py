"""Errors answered before a stream starts: JSON with the right status, naming the field at fault.
Starlette's own refusals (no such route, a method the route does not take) and unexpected failures
are answered in the same JSON."""

from __future__ import annotations

import http
from typing import Optional

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match, Route

UNEXPECTED = "the server failed unexpectedly; its log says why. Try again, and report it if it persists"
# What a message quotes of a client's input (a path, a row of a file, a parser's words on it) is cut
# to this length.
QUOTE_CHARS = 200


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
        job_status: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers
        self.job_status = job_status  # for a conflict with where a job stands

    def body(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.job_status is not None:
            error["status"] = self.job_status
        return {"error": error}


async def handle_api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def quotable(text: str) -> str:
    """Client input fit to quote in a message: cut short, control characters escaped, so that a
    terminal printing the message shows them rather than obeys them."""
    short = text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + " ..."
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in short)


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
    return JSONResponse(ApiError(status, _code(status), message).body(), status_code=status, headers=headers)


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
    return JSONResponse(ApiError(500, "internal_error", UNEXPECTED).body(), status_code=500, headers={"Connection": "close"})
