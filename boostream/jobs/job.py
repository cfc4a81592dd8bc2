"""A live job: queued or running in this process, with its event log in memory.

Every training is a job: an id, a status, an ordered event log and, at the end, an artifact. Its
events are appended on the event loop only, by the `JobManager`, which writes each to the store
first, so the log needs no lock. Subscribers read the log from any position and wait for more, so
a late or reconnecting client misses nothing, and any number of them share one log and one
encoding of each event. Once the job ends, its log is read from the store instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from boostream.jobs.records import Event, JobRequest, JobStatus
from boostream.progress import ProgressBridge
from boostream.trainers.base import Backend


class EventLog:
    """Events in order, appended on the event loop and followed from any position by any number of
    subscribers, each waking when the next is appended: a job's, and a search's (`tuning.Tune`)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._appended = asyncio.Event()

    def append(self, event: Event) -> None:
        """Add the next event and wake every subscriber."""
        assert event.id == len(self.events) + 1, (event.id, len(self.events))
        self.events.append(event)
        # Wake everyone waiting, then give later waiters a fresh event to wait on.
        self._appended.set()
        self._appended = asyncio.Event()

    async def follow(self, after: int = 0) -> AsyncGenerator[Event, None]:
        """The events with ids above `after`, then live ones, ending after the terminal event."""
        events = self.events  # this list, to its end, even if the log lets it go meanwhile
        position = max(after, 0)
        while True:
            while position < len(events):
                event = events[position]
                position += 1
                yield event
                if event.terminal:
                    return
            if events and events[-1].terminal:
                return
            await self._appended.wait()


class Job(EventLog):
    """Its events are appended by the `JobManager`, which writes each to the store first."""

    def __init__(self, job_id: str, request: JobRequest, trainer: Backend, created_at: float) -> None:
        super().__init__()
        self.id = job_id
        self.request = request
        self.trainer = trainer
        # Set once its arrays are on disk, where its worker reads them (`input_error`: they could not be).
        self.input_saved = asyncio.Event()
        self.input_error: str | None = None
        self.status = JobStatus.QUEUED
        self.created_at = created_at
        self.started_at: float | None = None
        self.attempts = 0
        self.ingest_timings: dict[str, float] = {}  # receive_s, decode_s: how the request was read
        self.bridge: ProgressBridge | None = None
        self.stop_training: Callable[[], None] | None = None  # while it trains: tells its worker
        self.task: asyncio.Task[None] | None = None  # while it trains
        self.eta_s: float | None = None  # the latest estimate: how long until a slot frees
        self.timed_out = False
        self.finished_at: float | None = None  # where its end waits for the store (manager._unrecorded)
        self.progress_unrecorded = False  # a progress event the store could not take (said once in the log)
        self._cancel_requested = False

    @property
    def device(self) -> str:
        return self.trainer.device

    @property
    def rounds(self) -> int:
        return self.trainer.rounds(self.request.params)

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def cancel(self) -> None:
        """Stop at the next round (or before starting, if still queued)."""
        self._cancel_requested = True
        if self.stop_training is not None:
            self.stop_training()

    def time_out(self) -> None:
        self.timed_out = True
        self.cancel()
