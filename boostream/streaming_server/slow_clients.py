"""Slow clients: a request body that stops coming is refused, so that a client holding a
connection open without sending never holds one of the few slots that read and decode bodies."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from boostream.errors import TooSlow


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
        watched = _Watched(receive, self.idle_s)
        try:
            await self.app(scope, watched.receive, send)
        finally:
            watched.close()


class _Watched:
    """One request's `receive`, watched by one timer that is moved on lazily: a body arrives in
    thousands of parts, and a timeout per part (`asyncio.wait_for`) cost 0.5 s of the event loop
    per GB."""

    def __init__(self, receive: Receive, idle_s: float) -> None:
        self._receive = receive
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
