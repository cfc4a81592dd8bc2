"""A job's events as a Server-Sent Events response.

Each event goes out as the bytes it was encoded to once (`Event.sse`), whatever the number of
subscribers; the first of each stream also carries the `retry:` hint. Heartbeats, the send timeout
and the headers that keep proxies from buffering are sse-starlette's and ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus

from boostream.jobs.records import Event

RETRY_MS = 2000  # EventSource reconnection delay, sent with the first event of every stream
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event_response(
    events: AsyncIterator[Event], on_leave: Callable[[bool], None], heartbeat_s: float, send_timeout_s: float
) -> EventSourceResponse:
    """Stream `events`; `on_leave(server_stopping)` when the client goes before the end."""
    return EventSourceResponse(
        _encoded(events, on_leave), ping=heartbeat_s, send_timeout=send_timeout_s, headers=HEADERS
    )


async def _encoded(
    events: AsyncIterator[Event], on_leave: Callable[[bool], None]
) -> AsyncIterator[ServerSentEvent | bytes]:
    first = True
    try:
        async for event in events:
            if first:  # the reconnection hint goes with the first event of each stream
                yield ServerSentEvent(data=event.json, event=event.type, id=str(event.id), retry=RETRY_MS)
                first = False
            else:
                yield event.sse
    except asyncio.CancelledError:
        # When the server is stopping, streams end before the jobs are put away: that is no
        # client leaving, and a job it would cancel must run again after the restart.
        on_leave(AppStatus.should_exit)
        raise
