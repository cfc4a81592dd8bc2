"""A job's events as a Server-Sent Events response.

Each event goes out as the bytes it was encoded to once (`Event.sse`), whatever the number of
subscribers, in parts of at most PART_BYTES; the first of each stream also carries the `retry:`
hint. Heartbeats, the send timeout (a subscriber that takes longer than `send_timeout_s` to take
one part is dropped) and the headers that keep proxies from buffering are sse-starlette's and ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus, SendTimeoutError
from starlette.types import Receive, Scope, Send

from boostream.jobs.records import Event

RETRY_MS = 2000  # EventSource reconnection delay, sent with the first event of every stream
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PART_BYTES = 256 * 1024
CLEANUP_S = 5.0  # the most a stream's generator may take to clean up after a failed send

log = logging.getLogger("boostream.sse")


class EventStream(EventSourceResponse):
    """A stream whose events go out in parts, and whose subscriber is dropped, in one log line, once a
    part takes longer than the send timeout."""

    async def _stream_response(self, send: Send) -> None:
        """sse-starlette's, but each event (bytes) sent in parts of PART_BYTES, each with the send
        timeout, under the lock its heartbeats take: a `: ping` between two parts of one event
        would end that event in the middle of its data for the reader."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for event in self.body_iterator:
            assert isinstance(event, bytes), event  # what _encoded yields
            try:
                async with self._send_lock:
                    for start in range(0, len(event), PART_BYTES):
                        part = event[start : start + PART_BYTES]  # the event itself, not a copy, when it is small
                        await self._send_with_timeout(
                            send, {"type": "http.response.body", "body": part, "more_body": True}
                        )
            except BaseException:
                # The generator waits at its yield: close it, so that its cleanup (the client's
                # leaving) runs before the error goes on.
                with anyio.move_on_after(CLEANUP_S, shield=True):
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]
                raise
        async with self._send_lock:
            self.active = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Exception as error:
            if _send_timed_out(error):
                log.info("%s: the client took nothing for %g s; dropped", scope.get("path"), self.send_timeout)
            raise  # uvicorn closes the connection (and, by the filter below, logs no traceback)


def _send_timed_out(error: BaseException | None, depth: int = 0) -> bool:
    """Whether `error` is a send that timed out: alone, in anyio's exception groups, or as what
    caused another error."""
    if error is None or depth > 5:
        return False
    group: tuple[BaseException, ...] | None = getattr(error, "exceptions", None)
    if group is not None:
        return bool(group) and all(_send_timed_out(inner, depth + 1) for inner in group)
    return isinstance(error, SendTimeoutError) or _send_timed_out(error.__cause__, depth + 1)


class _NoTracebackForDroppedStreams(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[1] is not None and _send_timed_out(record.exc_info[1]))


logging.getLogger("uvicorn.error").addFilter(_NoTracebackForDroppedStreams())


def event_response(
    events: AsyncIterator[Event],
    on_leave: Callable[[bool], None],
    heartbeat_s: float,
    send_timeout_s: float,
    on_sent: Callable[[], None] = lambda: None,
) -> EventStream:
    """Stream `events`; `on_leave(server_stopping)` when the client goes before the end, `on_sent()`
    once each event is sent."""
    return EventStream(
        _encoded(events, on_leave, on_sent), ping=heartbeat_s, send_timeout=send_timeout_s, headers=HEADERS
    )


async def _encoded(
    events: AsyncIterator[Event], on_leave: Callable[[bool], None], on_sent: Callable[[], None]
) -> AsyncIterator[bytes]:
    first = True
    try:
        async for event in events:
            if first:  # the reconnection hint goes with the first event of each stream
                yield ServerSentEvent(data=event.json, event=event.type, id=str(event.id), retry=RETRY_MS).encode()
                first = False
            else:
                # Sent in parts (EventStream): each part handed to the connection once the last has
                # mostly gone out, the send timeout on each. Sent whole, a `complete` event of
                # megabytes sat in the buffer of every connection at once (a copy per subscriber),
                # and a client that read nothing was never dropped: its send returned at once.
                yield event.sse
            on_sent()
    except (asyncio.CancelledError, GeneratorExit):
        # Cancelled: the client went away, or the server is stopping (streams end before the jobs
        # are put away: that is no client leaving, and a job it would cancel must run again after
        # the restart). Closed: a send timed out, the client stopped reading.
        on_leave(AppStatus.should_exit)
        raise
