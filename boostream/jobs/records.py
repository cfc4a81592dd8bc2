"""What a job is on record: its status, its request, its row and its events, and the interface of
the store that keeps them (`JobStore`). The embedded store is SQLite (`sqlite.py`); a shared one
(Redis) implements the same interface.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Iterable
from typing import Any, Protocol

from boostream.models.artifacts import ArtifactRecord

TERMINAL_EVENTS = frozenset({"complete", "error", "cancelled"})
# A job that was running each time its worker or the server died may be what kills them: it runs
# at most this many times, whichever engine runs it.
MAX_ATTEMPTS = 3


class JobStatus(str, enum.Enum):
    #: waiting for a slot on its device
    QUEUED = "queued"
    #: training
    RUNNING = "running"
    #: trained; its artifact is kept
    SUCCEEDED = "succeeded"
    #: ended with an error (the `error` event says which)
    FAILED = "failed"
    #: stopped when asked, or when its client left and asked for that
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


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """What a job was asked to do, beyond its arrays; kept in the store so it can run again."""

    model_type: str
    objective: str
    params: dict[str, Any]
    callback_url: str | None = None
    timeout_s: float | None = None
    artifact_format: str = "joblib"  # which of the artifact's formats the `complete` event carries
    base_url: str = ""  # where the client reached this server: webhooks send absolute URLs

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """A job's row: what `GET /jobs/{id}` shows, kept in step with its events."""

    id: str
    status: JobStatus
    model_type: str
    objective: str
    device: str
    request: JobRequest
    created_at: float
    total: int  # the rounds asked for
    started_at: float | None = None
    finished_at: float | None = None
    iteration: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None
    metrics: dict[str, float | None] | None = None
    error_code: str | None = None
    error_message: str | None = None
    artifact_id: str | None = None
    attempts: int = 0
    callback_state: str | None = None  # pending, delivered, failed, refused; None without a callback
    seq: int = 0  # the order jobs came in; given by the store
    # The name of the API key that created it, which alone (with admin keys) sees it; None on a
    # server without keys.
    owner: str | None = None
    # Queued while no worker for its device is up (a deployment on Redis); found when read, not kept.
    waiting_for_worker: bool = False


@dataclasses.dataclass(frozen=True)
class JobsSummary:
    """The jobs of one backend with one status: how many, and the seconds and rounds they trained."""

    model_type: str
    status: str
    jobs: int
    training_s: float
    rounds: int


# The fields of a JobRecord that its engine finds when the record is read; no store keeps them.
FOUND_WHEN_READ = frozenset({"waiting_for_worker"})

# The fields of a JobRecord that change as the job goes on (what `update_job` and `append_event` take).
CHANGING_FIELDS = frozenset(
    {"status", "started_at", "finished_at", "iteration", "elapsed_s", "eta_s", "metrics", "error_code", "error_message",
     "artifact_id", "attempts", "callback_state"}
)  # fmt: skip


class JobStore(Protocol):
    """Job records, their event logs and artifact records. Writes come from one owner (the
    `JobManager`); a job's event and the row fields that change with it are written together."""

    def close(self) -> None: ...

    def insert_job(self, record: JobRecord) -> None: ...

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set some of CHANGING_FIELDS."""

    def append_event(self, job_id: str, event_id: int, event_type: str, data_json: bytes, **job_fields: Any) -> None:
        """One event, and the job's row fields that change with it, at once."""

    def insert_artifact(self, record: ArtifactRecord) -> None: ...

    def delete_jobs(self, job_ids: Iterable[str]) -> list[str]:
        """Remove jobs with their events and artifact records; the ids of those artifacts."""

    def job(self, job_id: str) -> JobRecord | None: ...

    def jobs(
        self, statuses: Iterable[str] = (), limit: int = 50, before_seq: int | None = None, owner: str | None = None
    ) -> list[JobRecord]:
        """Newest first; only those of `owner` when it is given."""

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs that were queued or running, oldest first: the order they came in."""

    def pending_callbacks(self) -> list[JobRecord]: ...

    def summary(self) -> list[JobsSummary]:
        """Safe to call from any thread."""

    def finished_before(self, cutoff: float, limit: int) -> list[str]:
        """The ids of up to `limit` jobs that finished before `cutoff`, oldest first."""

    def artifact(self, artifact_id: str) -> ArtifactRecord | None: ...

    def artifact_ids(self) -> set[str]:
        """Every artifact a job refers to."""

    def has_events_after(self, job_id: str, after: int) -> bool: ...

    def events(self, job_id: str, after: int = 0) -> list[Event]:
        """The events with ids above `after`, in order."""


def job_urls(job_id: str, base_url: str = "") -> dict[str, str]:
    """Where a job is followed, relative to the server's root unless `base_url` is given."""
    return follow_urls(f"{base_url.rstrip('/')}/jobs/{job_id}")


def follow_urls(base: str) -> dict[str, str]:
    """Where a job or a search at `base` is seen, followed, and cancelled, and its result read."""
    return {
        "status_url": base,
        "events_url": f"{base}/events",
        "result_url": f"{base}/result",
        "cancel_url": f"{base}/cancel",
    }
