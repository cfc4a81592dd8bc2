"""Who may reach the routes, and from where, checked before any route runs:

- `Host`: a request must name this server by a name it serves (the loopback names, the address
  it binds when that is a specific one, and `--allowed-hosts`), or it gets 421. A web page whose
  name was rebound to this machine's address (DNS rebinding) names its own host, and is refused.
  `GET /health` is exempt: probes reach a server by whatever address it has.
- `Origin`: a browser page of another origin may not change anything (any method but GET, HEAD
  and OPTIONS, and on /mcp any method, gets 403), unless it is one of this server's own pages (the
  host and port the request went to) or the operator lists its origin in `--allowed-origins`,
  which also lets it read answers (CORS). A cross-site form POST is refused, whatever it would do.
- Who calls: once any API key exists (`boostream keys create`), every route but the public ones
  needs one, as `Authorization: Bearer KEY`, or the session cookie that `POST /session` sets for a
  browser (HttpOnly, SameSite=Strict: `EventSource` sends it, and no other site's page can). The
  caller is put in the request's state (`request.state.caller`) for the routes and MCP tools.
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from boostream.errors import BoostreamError, InvalidJson, InvalidParameter, RateLimited, Unauthorized, quotable
from boostream.keys import EVERYONE, Caller
from boostream.models.signing import sign, verify
from boostream.service import Service, caller_of
from boostream.streaming_server.errors import ApiError, error_response
from boostream.streaming_server.uploads import read_body

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What answers without a key: the health probe, the dashboard's page and assets (the page signs in),
# signing in, and the API's description.
PUBLIC_PATHS = frozenset({"/health", "/", "/session", "/openapi.json"})
PUBLIC_PREFIXES = ("/ui/",)
HOST_CHECK_EXEMPT = frozenset({"/health"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")
SESSION_COOKIE = "boostream_session"
SESSION_VERSION = "v1"
MAX_SIGN_IN_BYTES = 4096


class HostNames:
    """The names a request may reach this server by: each with any port (`name`, `name:*`), or with
    the one given (`name:port`). Bound to every address, the machine's own name and addresses
    count too (a rebinding page names its own host, never these)."""

    def __init__(self, bound_host: str, extra_hosts: Sequence[str] = ()) -> None:
        own = _machine_names() if bound_host in WILDCARD_ADDRESSES else [bound_host]
        names = [_split_host(name.removesuffix(":*")) for name in (*LOOPBACK_NAMES, *own, *extra_hosts)]
        self.any_port = {name for name, port in names if port is None}
        self.exact = {(name, port) for name, port in names if port is not None}

    def allow(self, host_header: str) -> bool:
        name, port = _split_host(host_header)
        return name in self.any_port or (name, port) in self.exact


class Origins:
    """The browser origins the operator lets call this server: exact, or `scheme://host:*`; in any
    case, as browsers send them lower-case."""

    def __init__(self, listed: Sequence[str]) -> None:
        patterns = [re.escape(origin.rstrip("/")).replace(r":\*", r"(:\d+)?") for origin in listed]
        # The flag inline: CORSMiddleware compiles this pattern's text again.
        self.pattern = re.compile("(?i)" + "|".join(patterns)) if patterns else None

    def allow(self, origin: str) -> bool:
        return self.pattern is not None and self.pattern.fullmatch(origin) is not None


class Gate:
    """Who sends a request: by its API key, else by its browser session."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def caller(self, request: Request) -> Caller:
        if not await self.service.keys_required():
            return EVERYONE
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise Unauthorized("send the API key as `Authorization: Bearer KEY`")
            return caller_of(await self.service.key_of(key.strip()))
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None:
            return await self.session_caller(cookie)
        return caller_of(await self.service.key_of(None))

    # A browser session: a cookie naming the key's id and when it ends, signed with the session key.

    def session_token(self, key_id: str) -> str:
        body = f"{SESSION_VERSION}.{key_id}.{int(time.time() + self.service.settings.session_ttl_s)}"
        return f"{body}.{sign(self.service.signing_keys.sessions, body.encode())}"

    async def session_caller(self, token: str) -> Caller:
        body, _, signature = token.rpartition(".")
        version, key_id, expires = ([*body.split("."), "", ""])[:3]
        if version != SESSION_VERSION or not verify(self.service.signing_keys.sessions, body.encode(), signature):
            raise Unauthorized("this session is not valid: sign in again")
        if not (expires.isdigit() and int(expires) >= time.time()):
            raise Unauthorized("this session has ended: sign in again")
        record = await self.service.keys.by_id(key_id)
        if record is None:
            raise Unauthorized("the key of this session was revoked: sign in with another")
        return caller_of(record)


class RateLimits:
    """Requests a second per API key, in bursts of twice as many: a token bucket per key name, in
    this process."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self.burst = max(1.0, 2 * per_s)
        self._buckets: dict[str, tuple[float, float]] = {}  # name: tokens, when counted

    def wait_s(self, name: str) -> float:
        """0 when a request of `name` may go now (and it is counted), else how long until one may."""
        if self.per_s <= 0:
            return 0.0
        now = time.monotonic()
        tokens, then = self._buckets.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.per_s)
        if tokens >= 1:
            self._buckets[name] = (tokens - 1, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1 - tokens) / self.per_s


class Access:
    """ASGI middleware in front of every route (the MCP endpoint's too)."""

    def __init__(
        self,
        app: ASGIApp,
        gate: Gate,
        hosts: HostNames,
        origins: Origins,
        origin_checked_paths: Sequence[str] = (),
        rates: RateLimits | None = None,
    ) -> None:
        self.app = app
        self.gate = gate
        self.hosts = hosts
        self.origins = origins
        self.origin_checked_paths = frozenset(origin_checked_paths)  # on any method, not only those that change
        self.rates = rates or RateLimits(0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path, method, host = scope["path"], scope["method"], headers.get("host", "")
        try:
            if path not in HOST_CHECK_EXEMPT and not self.hosts.allow(host):
                raise ApiError(
                    421,
                    "misdirected_request",
                    f"this server does not answer to the host name {quotable(host)!r}; "
                    "its operator lists the names it is reached by with --allowed-hosts",
                    field="Host",
                )
            origin = headers.get("origin")
            checked = method not in SAFE_METHODS or path in self.origin_checked_paths
            if origin is not None and checked and not self._trusted(origin, host):
                raise ApiError(
                    403,
                    "cross_origin",
                    f"a page of {quotable(origin)!r} may not call this server; its operator lists the origins "
                    "that may with --allowed-origins",
                    field="Origin",
                )
            if path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
                caller = await self.gate.caller(Request(scope))
                scope.setdefault("state", {})["caller"] = caller
                if caller.name is not None and (wait_s := self.rates.wait_s(caller.name)):
                    raise RateLimited(
                        f"the key {caller.name!r} sends more than {self.rates.per_s:g} requests a second, as many "
                        "as a key may (--key-requests-per-s); slow down",
                        math.ceil(wait_s),
                    )
        except BoostreamError as error:  # refused, or the key store out of reach (503)
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _trusted(self, origin: str, host: str) -> bool:
        """Whether a page of `origin` may change things here: one this server served (its origin
        names the host and port the request went to), or one of an origin the operator lists. Not
        a page of another port of the same host: browsers send it the same cookies."""
        return urlsplit(origin).netloc.lower() == host.lower() or self.origins.allow(origin)


class Sessions:
    """`/session`: a browser signs in with a key (`POST`, the key as JSON `api_key` or as a bearer
    token), asks who it is (`GET`), signs out (`DELETE`)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.service = gate.service

    async def sign_in(self, request: Request) -> Response:
        service = self.service
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme and scheme.lower() != "bearer":
            raise Unauthorized("send the API key as `Authorization: Bearer KEY`, or as JSON")
        key = key.strip() or _api_key_of(await read_body(request, MAX_SIGN_IN_BYTES))
        if not await service.keys_required():
            return JSONResponse({"keys_required": False, "name": None, "admin": True})
        record = await service.key_of(key or None)
        response = JSONResponse({"keys_required": True, "name": record.name, "admin": record.admin})
        response.set_cookie(
            SESSION_COOKIE,
            self.gate.session_token(record.id),
            max_age=int(service.settings.session_ttl_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def who(self, request: Request) -> Response:
        required = await self.service.keys_required()
        try:
            caller = await self.gate.caller(request)
        except Unauthorized:
            return JSONResponse({"keys_required": required, "signed_in": False, "name": None, "admin": False})
        return JSONResponse(
            {"keys_required": required, "signed_in": required, "name": caller.name, "admin": caller.admin}
        )

    async def sign_out(self, request: Request) -> Response:
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response


def _api_key_of(body: bytes | bytearray) -> str:
    try:
        value = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        raise InvalidJson(None, 'send the key as JSON, {"api_key": "KEY"}, or as `Authorization: Bearer KEY`') from None
    key = value.get("api_key", "") if isinstance(value, dict) else None
    if not isinstance(key, str):
        raise InvalidParameter("api_key", "api_key must be a string")
    return key.strip()


def _machine_names() -> list[str]:
    """This machine's host name and the addresses it resolves to (a container's own address)."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        addresses = set()
    return [name, *sorted(str(address) for address in addresses)]


def _split_host(host: str) -> tuple[str, int | None]:
    """A `Host` header's (or a listed name's) name, lower-case without brackets, and its port."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:  # a bare name, or a bare IPv6 address
        name, port = host, ""
    return name, int(port) if port.isdigit() and len(port) <= 5 else None
