"""What the service asks of whatever holds job state: the one interface every engine offers.

Today's engine is `manager.JobManager` (one process, SQLite, worker processes of its own); an
engine whose state is shared by several API processes and remote workers (Redis) offers the same
operations. Every call may wait on that state (a network round trip), so all are coroutines but
`events`, an asynchronous generator, and `client_left`, which only asks.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, Protocol

from boostream.jobs.records import Event, JobRecord, JobRequest, JobsSummary, JobStatus
from boostream.models.artifacts import ArtifactRecord
from boostream.trainers.base import TrainingData


class JobEngine(Protocol):
    async def start(self) -> None:
        """Take up what a previous server left, and start what runs the jobs."""

    async def shutdown(self) -> None:
        """Stop; jobs queued or running stay so, for the next server to run."""

    async def submit(
        self,
        request: JobRequest,
        data: TrainingData,
        ingest_timings: dict[str, float],
        saved_at: Path | None = None,
        owner: str | None = None,
    ) -> JobRecord:
        """A new job of `owner`, queued; QueueFull when its device's queue has no room.
        `saved_at`: where its arrays are kept already (`jobs.inputs`' format)."""

    async def job(self, job_id: str) -> JobRecord | None: ...

    async def jobs(
        self, statuses: list[str], limit: int, before_seq: int | None, owner: str | None = None
    ) -> list[JobRecord]:
        """Newest first; only those of `owner` when it is given."""

    def events(self, job_id: str, after: int) -> AsyncGenerator[Event, None]:
        """The job's events after `after`, then live ones until the terminal event."""

    async def has_events_after(self, job_id: str, after: int) -> bool: ...

    async def cancel(self, job_id: str) -> JobStatus:
        """Ask an unfinished job to stop; a waiting one ends at once. Its status after the request."""

    def client_left(self, job_id: str, client: str, cancel: bool) -> None:
        """A client that followed the job went away: cancel the job if it asked to."""

    async def delete(self, job_id: str) -> None:
        """Remove a finished job, its events and its artifact."""

    async def result(self, job_id: str) -> str:
        """The `complete` event of a job that succeeded, as JSON with its artifact."""

    async def artifact(self, artifact_id: str) -> ArtifactRecord | None: ...

    async def artifact_file(self, artifact_id: str, format: str) -> bytes:
        """The artifact's file in `format`; FileNotFoundError when it is missing."""

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per device: jobs running and queued, and the limits."""

    async def summary(self) -> list[JobsSummary]:
        """The jobs kept (not yet expired), by backend and status, with their training seconds
        and rounds."""

    async def worker_views(self) -> list[dict[str, Any]]:
        """What /health shows of each worker; `started_at` a Unix time."""
