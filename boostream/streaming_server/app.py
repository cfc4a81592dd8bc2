"""The application's wiring: one service, the HTTP routes over it, the MCP endpoint over it, and
the error table at the edge."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from boostream.config import Settings
from boostream.errors import BoostreamError
from boostream.mcp_server import PATH as MCP_PATH
from boostream.mcp_server import McpEndpoint
from boostream.service import Service
from boostream.streaming_server.errors import handle_domain_error, handle_http_exception, handle_unexpected_error
from boostream.streaming_server.routes import Routes
from boostream.streaming_server.slow_clients import BodyIdleTimeout


def create_app(settings: Settings) -> Starlette:
    service = Service(settings)
    mcp = McpEndpoint(service, settings.allowed_mcp_hosts, settings.allowed_mcp_origins)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with service.running(), mcp.running():
            yield

    return Starlette(
        routes=[*Routes(service).routes(), Route(MCP_PATH, endpoint=StreamableHTTPASGIApp(mcp.sessions))],
        middleware=[Middleware(BodyIdleTimeout, idle_s=settings.body_idle_timeout_s)],
        lifespan=lifespan,
        exception_handlers={
            BoostreamError: handle_domain_error,
            HTTPException: handle_http_exception,  # Starlette's: no such route, a method a route does not take
            Exception: handle_unexpected_error,
        },
    )
