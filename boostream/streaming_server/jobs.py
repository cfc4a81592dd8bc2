"""Every training is a job: an id, a status, an ordered event log and, at the end, an artifact.

A job's events are appended on the event loop only, so its log needs no lock. Each event is
written to the store as it is appended, together with the job's row fields that change with it, so
what `GET /jobs/{id}` shows and what a replay sends never disagree. While a job is live, its log is
also kept in memory: subscribers read it from any position and wait for more, so a late or
reconnecting client misses nothing, and any number of them share one log and one encoding of
each event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import time
import uuid
from typing import Any, AsyncIterator, Optional

import orjson

from boostream.progress import Progress, ProgressBridge
from boostream.streaming_server.store import JobStore
from boostream.trainers.base import Trainer, TrainingData

TERMINAL_EVENTS = frozenset({"complete", "error", "cancelled"})


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclasses.dataclass(frozen=True)
class Event:
    id: int
    type: str
    json: str  # the data, encoded once for every subscriber

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    @functools.cached_property
    def sse(self) -> bytes:
        """The event as Server-Sent Events bytes, made once however many subscribers send it: a
        `complete` event carries the whole artifact, and encoding it again for each of 200
        subscribers took seconds of the event loop."""
        return f"id: {self.id}\r\nevent: {self.type}\r\ndata: {self.json}\r\n\r\n".encode()


@dataclasses.dataclass
class JobRequest:
    """What a job was asked to do, beyond its arrays; kept in the store so it can run again."""

    model_type: str
    objective: str
    params: dict[str, Any]
    callback_url: Optional[str] = None
    timeout_s: Optional[float] = None
    artifact_format: str = "joblib"  # which of the artifact's formats the `complete` event carries
    base_url: str = ""  # where the client reached this server: webhooks send absolute URLs

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Job:
    def __init__(self, job_id: str, request: JobRequest, trainer: Trainer, store: JobStore, data: Optional[TrainingData]) -> None:
        self.id = job_id
        self.request = request
        self.trainer = trainer
        self.data = data  # None while it waits on disk
        self.status = JobStatus.QUEUED
        self.created_at = time.time()
        self.started_at: Optional[float] = None
        self.attempts = 0
        self.ingest_timings: dict[str, float] = {}  # receive_s, decode_s: how the request was read
        self.events: list[Event] = []
        self.bridge: Optional[ProgressBridge] = None
        self.task: Optional[asyncio.Task] = None  # while it trains
        self.eta_s: Optional[float] = None  # the latest estimate: how long until a slot frees
        self.timed_out = False
        self._store = store
        self._cancel_requested = False
        self._appended = asyncio.Event()

    @classmethod
    def create(cls, request: JobRequest, trainer: Trainer, store: JobStore, data: TrainingData, ingest_timings: dict[str, float]) -> "Job":
        job = cls(uuid.uuid4().hex, request, trainer, store, data)
        job.ingest_timings = ingest_timings
        store.insert_job(
            {
                "id": job.id,
                "status": job.status.value,
                "model_type": request.model_type,
                "objective": request.objective,
                "device": trainer.device,
                "request": request.as_json(),
                "created_at": job.created_at,
                "total": request.params["n_estimators"],
            }
        )
        return job

    @classmethod
    def restore(cls, row: dict[str, Any], trainer: Trainer, store: JobStore) -> "Job":
        """A job the server was running or holding when it stopped, with the log it had written."""
        job = cls(row["id"], JobRequest(**row["request"]), trainer, store, data=None)
        job.status = JobStatus(row["status"])
        job.created_at = row["created_at"]
        job.attempts = row["attempts"]
        job.events = [Event(event_id, kind, data) for event_id, kind, data in store.events(job.id)]
        return job

    @property
    def device(self) -> str:
        return self.trainer.device

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def cancel(self) -> None:
        """Stop at the next round (or before starting, if still queued)."""
        self._cancel_requested = True
        if self.bridge is not None:
            self.bridge.cancel()

    def time_out(self) -> None:
        self.timed_out = True
        self.cancel()

    def start(self, device_name: Optional[str], n_rows: int, n_valid_rows: int, n_features: int) -> None:
        self.status = JobStatus.RUNNING
        self.started_at = time.time()
        self.attempts += 1
        request = self.request
        self.emit(
            "started",
            {
                "model_type": request.model_type,
                "objective": request.objective,
                "device": device_name,
                "attempt": self.attempts,
                "n_rows": n_rows,
                "n_valid_rows": n_valid_rows,
                "n_features": n_features,
                "n_estimators": request.params["n_estimators"],
                "params": request.params,
            },
            status=self.status.value,
            started_at=self.started_at,
            attempts=self.attempts,
            iteration=0,
            elapsed_s=None,
            eta_s=None,
            metrics=None,
        )

    def report(self, progress: Progress) -> None:
        fields = {
            "iteration": progress.iteration,
            "total": progress.total,
            "percent": progress.percent,
            "elapsed_s": progress.elapsed_s,
            "eta_s": progress.eta_s,
            "metrics": progress.metrics,
            "history": progress.history,
            "ts": progress.ts,
        }
        self.eta_s = progress.eta_s
        self.emit("progress", fields, iteration=progress.iteration, elapsed_s=progress.elapsed_s, eta_s=progress.eta_s, metrics=progress.metrics)

    def requeue(self, reason: str) -> None:
        """Back in the queue after the server stopped while the job waited or ran."""
        self.status = JobStatus.QUEUED
        self.emit("restarted", {"reason": reason, "attempts": self.attempts}, status=self.status.value, iteration=0, elapsed_s=None, eta_s=None)

    def finish(self, status: JobStatus, event_type: str, data: dict[str, Any], **row_fields: Any) -> None:
        self.status = status
        self.data = None
        callback_state = "pending" if self.request.callback_url else None
        self.emit(event_type, data, status=status.value, finished_at=time.time(), eta_s=None, callback_state=callback_state, **row_fields)

    def emit(self, event_type: str, data: dict[str, Any], **row_fields: Any) -> Event:
        data = {"job_id": self.id, **data}
        event = Event(len(self.events) + 1, event_type, orjson.dumps(data).decode())
        # The artifact is kept once, in its file; the stored event goes without it.
        stored = orjson.dumps({k: v for k, v in data.items() if k != "artifact"}) if "artifact" in data else event.json.encode()
        self._store.append_event(self.id, event.id, event_type, stored, **row_fields)
        self._append(event)
        return event

    def abandon(self, message: str) -> None:
        """End the log in memory only, because the store failed: followers still get an end."""
        self.status = JobStatus.FAILED
        data = {"job_id": self.id, "code": "internal_error", "message": message}
        self._append(Event(len(self.events) + 1, "error", orjson.dumps(data).decode()))

    def _append(self, event: Event) -> None:
        self.events.append(event)
        # Wake everyone waiting, then give later waiters a fresh event to wait on.
        self._appended.set()
        self._appended = asyncio.Event()

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """The events with ids above `after`, then live ones, ending after the terminal event."""
        position = max(after, 0)
        while True:
            while position < len(self.events):
                event = self.events[position]
                position += 1
                yield event
                if event.terminal:
                    return
            if self.events and self.events[-1].terminal:
                return
            await self._appended.wait()
