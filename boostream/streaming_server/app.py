"""The application's wiring: one service, the HTTP routes over it, the MCP endpoint over it, the
access checks in front of both, and the error table at the edge."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from boostream.config import Settings
from boostream.errors import BoostreamError
from boostream.mcp_server import PATH as MCP_PATH
from boostream.mcp_server import McpEndpoint
from boostream.service import Service
from boostream.streaming_server.access import Access, Gate, HostNames, Origins, RateLimits, Sessions
from boostream.streaming_server.errors import (
    handle_client_gone,
    handle_domain_error,
    handle_http_exception,
    handle_storage_error,
    handle_unexpected_error,
)
from boostream.streaming_server.observe import Metrics, Observed
from boostream.streaming_server.routes import Routes
from boostream.streaming_server.slow_clients import BodyIdleTimeout, CloseUnread, header_timeout_protocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves the app, besides where: `boostream serve` and the tests' servers alike."""
    return {"timeout_graceful_shutdown": 5, "http": header_timeout_protocol(settings.header_timeout_s)}


def create_app(settings: Settings) -> Starlette:
    service = Service(settings)
    mcp = McpEndpoint(service)
    gate, origins = Gate(service), Origins(settings.extra_origins)
    sessions, metrics = Sessions(gate), Metrics()
    # Outermost first: an answer before the body's end closes the connection; every request is
    # counted and logged; CORS answers the preflights of the origins listed; every request passes
    # the access checks; a body that stops arriving is timed out.
    middleware = [
        Middleware(CloseUnread),
        Middleware(Observed, metrics=metrics),
        Middleware(
            Access,
            gate=gate,
            hosts=HostNames(settings.host, settings.extra_hosts),
            origins=origins,
            origin_checked_paths=(MCP_PATH,),  # the MCP specification: Origin checked on every request
            rates=RateLimits(settings.key_requests_per_s),
        ),
        Middleware(BodyIdleTimeout, idle_s=settings.body_idle_timeout_s),
    ]
    if origins.pattern is not None:
        middleware.insert(
            2,
            Middleware(
                CORSMiddleware,
                allow_origin_regex=origins.pattern.pattern,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                expose_headers=["Location", "Retry-After", "ETag", "Content-Disposition", "X-Boostream-Signature"],
                max_age=600,
            ),
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with service.running(), mcp.running():
            yield

    return Starlette(
        routes=[
            Route("/session", sessions.sign_in, methods=["POST"]),
            Route("/session", sessions.who, methods=["GET"]),
            Route("/session", sessions.sign_out, methods=["DELETE"]),
            *Routes(service, metrics).routes(),
            Route(MCP_PATH, endpoint=StreamableHTTPASGIApp(mcp.sessions)),
        ],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            BoostreamError: handle_domain_error,
            ClientDisconnect: handle_client_gone,  # a client that left mid-upload: one log line
            HTTPException: handle_http_exception,  # Starlette's: no such route, a method a route does not take
            sqlite3.Error: handle_storage_error,  # the job store: a full disk is 507
            Exception: handle_unexpected_error,
        },
    )
