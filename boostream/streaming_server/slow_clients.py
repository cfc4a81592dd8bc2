"""Slow clients: a connection whose request's headers do not come whole in time is answered 408 and
closed, and a request body that stops coming is refused, so that connections held open without
sending cost nothing but a socket. (A body is received before it takes one of the few slots that
decode bodies, so a slow one holds up no other request.)"""

from __future__ import annotations

import asyncio
import logging

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from boostream.errors import BoostreamError, TooSlow
from boostream.streaming_server.errors import BODY_WHOLE, ApiError, body_unread

log = logging.getLogger("boostream")


def header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol (httptools), with a limit on the time a request's headers may take:
    from a connection's opening to its first request's headers, and from the first byte of each
    later request to its headers. uvicorn has none: a connection that sent half a request line
    stayed open for ever."""
    return type("HeaderTimeoutProtocol", (_HeaderTimeout,), {"timeout_s": timeout_s})


class _HeaderTimeout(HttpToolsProtocol):
    timeout_s: float
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._headers_came()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_came()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._headers_came()
        self._header_timer = self.loop.call_later(self.timeout_s, self._headers_too_slow)

    def _headers_came(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's start while an answer is still being sent: its time runs on.
            self._header_timer = self.loop.call_later(self.timeout_s, self._headers_too_slow)
            return
        message = f"the request's headers did not come whole within {self.timeout_s:g} s; send them at once"
        self._answer_and_close(408, "Request Timeout", TooSlow(message))
        client = "{}:{}".format(*self.client) if self.client else "a client"
        log.info("%s: closed, its request's headers took more than %g s", client, self.timeout_s)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP, in the JSON every other error has."""
        error = ApiError(400, "bad_request", f"the request is not valid HTTP/1.1 ({msg.rstrip('.')})")
        self._answer_and_close(400, "Bad Request", error)

    def _answer_and_close(self, status: int, reason: str, error: BoostreamError) -> None:
        body = orjson.dumps({"error": error.details()})
        head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        self.transport.write(head.encode() + b"connection: close\r\n\r\n" + body)
        self.transport.close()


class CloseUnread:
    """ASGI middleware, outermost: an answer sent before the request's body came whole (a refusal
    of any kind: a missing key, a wrong host, a body too large) closes the connection, else uvicorn
    would read the rest of the body, gigabytes maybe, and no timeout would apply while it did."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and body_unread(scope):
                headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing_send)


class BodyIdleTimeout:
    """ASGI middleware: `TooSlow` (408) when `idle_s` pass with no part of the request's body.
    Once the body has come whole, receiving (which then waits for the client to leave, as a
    stream does) is left as it is."""

    def __init__(self, app: ASGIApp, idle_s: float) -> None:
        self.app = app
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watched = _Watched(receive, self.idle_s, scope)
        try:
            await self.app(scope, watched.receive, send)
        finally:
            watched.close()


class _Watched:
    """One request's `receive`, watched by one timer that is moved on lazily: a body arrives in
    thousands of parts, and a timeout per part (`asyncio.wait_for`) cost 0.5 s of the event loop
    per GB."""

    def __init__(self, receive: Receive, idle_s: float, scope: Scope) -> None:
        self._receive = receive
        self._scope = scope
        self.idle_s = idle_s
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._waiting: asyncio.Task[object] | None = None
        self._timed_out = False
        self._body_done = False
        self._timer: asyncio.TimerHandle | None = None

    async def receive(self) -> Message:
        if self._body_done:
            return await self._receive()
        if self._timer is None:
            self._timer = self._loop.call_at(self._last + self.idle_s, self._check)
        self._waiting = asyncio.current_task()
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            uncancel = getattr(self._waiting, "uncancel", None)  # Python 3.11: the cancel was ours
            if uncancel is not None:
                uncancel()
            raise TooSlow(
                f"no part of the request's body arrived for {self.idle_s:g} s; send it without pausing"
            ) from None
        finally:
            self._waiting = None
        self._last = self._loop.time()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._body_done = True
            self._scope[BODY_WHOLE] = message["type"] == "http.request"
            self._timer.cancel()
        return message

    def close(self) -> None:
        self._body_done = True
        if self._timer is not None:
            self._timer.cancel()

    def _check(self) -> None:
        if self._body_done:
            return
        if self._waiting is None:  # the server is busy with what came, not waiting for the client
            self._last = self._loop.time()
        if self._loop.time() < self._last + self.idle_s:  # some came meanwhile
            self._timer = self._loop.call_at(self._last + self.idle_s, self._check)
            return
        assert self._waiting is not None
        self._timed_out = True
        self._waiting.cancel()
