"""The dashboard: one page at `/`, and its script, style and demo tables under `/ui/`.

Everything it needs is served from this package (no CDN, no build step), so it works offline; its
Content-Security-Policy allows nothing else to load. The assets are not fingerprinted, so browsers
revalidate them on each load (a 304 by ETag): a new version of the server is picked up at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

HERE = Path(__file__).parent
ASSETS = HERE / "static"
CACHE_CONTROL = "no-cache"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


class Assets(StaticFiles):
    """StaticFiles that asks browsers to revalidate what they cached."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update({"Cache-Control": CACHE_CONTROL, **SECURITY_HEADERS})
        return response


def routes() -> list[BaseRoute]:
    """`GET /`: the page; `/ui/...`: its assets (`dashboard.js`, `dashboard.css`, `demo/*.csv`)."""
    page = (HERE / "index.html").read_bytes()
    headers = {"Cache-Control": CACHE_CONTROL, "Content-Security-Policy": CONTENT_SECURITY_POLICY, **SECURITY_HEADERS}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html", headers=headers)

    return [
        Route("/", index, methods=["GET"], name="dashboard"),
        Mount("/ui", app=Assets(directory=ASSETS), name="ui"),
    ]
