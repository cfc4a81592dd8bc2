"""The embedded JobStore: jobs and their event logs in SQLite, so that nothing finished is lost
when the server dies.

One file under the data directory, in WAL mode with `synchronous=NORMAL`: a committed write
survives the process being killed (only a crash of the whole machine may lose the last moments).
Every write is one small transaction made on the event loop: a job's row changes a few times, its
log grows by at most about ten events a second, and each commit costs tens of microseconds.

A job's row holds what `GET /jobs/{id}` shows; its events hold what its stream replays. The
`complete` event is stored without its base64 artifact, which lives once, in the artifact file.

A shared store (Redis) replaces it, behind the same interface (`records.JobStore`), when one
process is outgrown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from boostream.jobs.records import (
    CHANGING_FIELDS,
    FOUND_WHEN_READ,
    Event,
    JobRecord,
    JobRequest,
    JobsSummary,
    JobStatus,
)
from boostream.models.artifacts import ArtifactRecord, StoredBlob

SCHEMA_VERSION = 3  # 2 added the artifacts table, 3 the jobs' owner
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    model_type TEXT NOT NULL,
    objective TEXT NOT NULL,
    device TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    iteration INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL,
    elapsed_s REAL,
    eta_s REAL,
    metrics TEXT,
    error_code TEXT,
    error_message TEXT,
    artifact_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    callback_state TEXT,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    model_type TEXT NOT NULL,
    objective TEXT NOT NULL,
    feature_names TEXT NOT NULL,
    classes TEXT,
    metrics TEXT,
    iterations INTEGER NOT NULL,
    best_iteration INTEGER NOT NULL,
    created_at REAL NOT NULL,
    blobs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_by_job ON artifacts (job_id);
"""
# The columns a row is written with: the record's fields, but `seq`, which SQLite gives, and those
# found when it is read.
JOB_COLUMNS = tuple(
    field.name for field in dataclasses.fields(JobRecord) if field.name not in {"seq", *FOUND_WHEN_READ}
)
ARTIFACT_COLUMNS = tuple(field.name for field in dataclasses.fields(ArtifactRecord))
JSON_COLUMNS = frozenset({"request", "metrics", "feature_names", "classes", "blobs"})


class DataDirInUse(RuntimeError):
    pass


class SqliteJobStore:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_data_dir(data_dir)
        self.path = data_dir / "jobs.sqlite3"
        self._db = sqlite3.connect(self.path)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} was written by a newer boostream (schema {version}); upgrade to use it")
        with self._db:
            self._db.executescript(SCHEMA)
            if version < 3 and "owner" not in {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}:
                self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")  # jobs kept before keys: nobody's
            self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq)")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()
        os.close(self._lock)

    # Writes

    def insert_job(self, record: JobRecord) -> None:
        self._insert("jobs", {name: getattr(record, name) for name in JOB_COLUMNS})

    def update_job(self, job_id: str, **fields: Any) -> None:
        with self._db:
            self._update(job_id, fields)

    def append_event(self, job_id: str, event_id: int, event_type: str, data_json: bytes, **job_fields: Any) -> None:
        """One event, and the job's row fields that change with it, in one transaction."""
        with self._db:
            self._db.execute(
                "INSERT INTO events (job_id, id, type, data) VALUES (?, ?, ?, ?)",
                (job_id, event_id, event_type, data_json.decode()),
            )
            if job_fields:
                self._update(job_id, job_fields)

    def insert_artifact(self, record: ArtifactRecord) -> None:
        row = {name: getattr(record, name) for name in ARTIFACT_COLUMNS}
        row["blobs"] = {format: blob.as_json() for format, blob in record.blobs.items()}
        self._insert("artifacts", row)

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        with self._db:
            self._db.execute(
                f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                [_column_value(name, value) for name, value in row.items()],
            )

    def delete_jobs(self, job_ids: Iterable[str]) -> list[str]:
        """Remove jobs with their events and artifact records; the ids of those artifacts."""
        ids = [(job_id,) for job_id in job_ids]
        artifact_ids = [
            row[0] for job_id in ids for row in self._db.execute("SELECT id FROM artifacts WHERE job_id = ?", job_id)
        ]
        with self._db:
            self._db.executemany("DELETE FROM events WHERE job_id = ?", ids)
            self._db.executemany("DELETE FROM artifacts WHERE job_id = ?", ids)
            self._db.executemany("DELETE FROM jobs WHERE id = ?", ids)
        return artifact_ids

    # Reads

    def job(self, job_id: str) -> JobRecord | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_record(row) if row else None

    def jobs(
        self, statuses: Iterable[str] = (), limit: int = 50, before_seq: int | None = None, owner: str | None = None
    ) -> list[JobRecord]:
        """Newest first; only those of `owner` when it is given."""
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        wanted = list(statuses)
        if wanted:
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            args += wanted
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(f"SELECT * FROM jobs {clause} ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [_job_record(row) for row in rows]

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs that were queued or running, oldest first: the order they came in."""
        rows = self._db.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq").fetchall()
        return [_job_record(row) for row in rows]

    def summary(self) -> list[JobsSummary]:
        """Read on a connection of its own, so that a thread runs it: over every job kept, it took
        0.4 s of the event loop with 500,000."""
        with contextlib.closing(sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT model_type, status, COUNT(*), COALESCE(SUM(elapsed_s), 0), SUM(iteration) "
                "FROM jobs GROUP BY model_type, status ORDER BY model_type, status"
            ).fetchall()
        return [JobsSummary(*row) for row in rows]

    def pending_callbacks(self) -> list[JobRecord]:
        rows = self._db.execute("SELECT * FROM jobs WHERE callback_state = 'pending' ORDER BY seq").fetchall()
        return [_job_record(row) for row in rows]

    def finished_before(self, cutoff: float, limit: int) -> list[str]:
        """The ids of up to `limit` jobs that finished before `cutoff`, oldest first."""
        rows = self._db.execute(
            "SELECT id FROM jobs WHERE finished_at < ? ORDER BY finished_at LIMIT ?", (cutoff, limit)
        ).fetchall()
        return [row[0] for row in rows]

    def artifact(self, artifact_id: str) -> ArtifactRecord | None:
        row = self._db.execute("SELECT * FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()
        if row is None:
            return None
        fields = _json_fields(row)
        fields["blobs"] = {format: StoredBlob(**blob) for format, blob in fields["blobs"].items()}
        return ArtifactRecord(**fields)

    def artifact_ids(self) -> set[str]:
        """Every artifact a job refers to (jobs kept before the artifacts table count too)."""
        query = "SELECT id FROM artifacts UNION SELECT artifact_id FROM jobs WHERE artifact_id IS NOT NULL"
        return {row[0] for row in self._db.execute(query)}

    def has_events_after(self, job_id: str, after: int) -> bool:
        return (
            self._db.execute("SELECT 1 FROM events WHERE job_id = ? AND id > ? LIMIT 1", (job_id, after)).fetchone()
            is not None
        )

    def events(self, job_id: str, after: int = 0) -> list[Event]:
        """The events with ids above `after`, in order."""
        rows = self._db.execute(
            "SELECT id, type, data FROM events WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after)
        )
        return [Event(event_id, kind, data) for event_id, kind, data in rows]

    def _update(self, job_id: str, fields: dict[str, Any]) -> None:
        unknown = set(fields) - CHANGING_FIELDS
        assert not unknown, unknown
        assignments = ", ".join(f"{name} = ?" for name in fields)
        values = [_column_value(name, value) for name, value in fields.items()]
        self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))


def _column_value(name: str, value: Any) -> Any:
    if isinstance(value, JobRequest):
        value = value.as_json()
    elif isinstance(value, JobStatus):
        return value.value
    return orjson.dumps(value).decode() if name in JSON_COLUMNS and value is not None else value


def _job_record(row: sqlite3.Row) -> JobRecord:
    fields = _json_fields(row)
    fields["status"] = JobStatus(fields["status"])
    fields["request"] = JobRequest(**fields["request"])
    return JobRecord(**fields)


def _json_fields(row: sqlite3.Row) -> dict[str, Any]:
    fields = dict(row)
    for name in JSON_COLUMNS & fields.keys():
        if fields[name] is not None:
            fields[name] = orjson.loads(fields[name])
    return fields


def check_data_dir_free(data_dir: Path) -> None:
    """DataDirInUse when another server holds `data_dir`, so that a command can say so before it
    starts one. The lock is let go at once: the server's JobStore takes it again (a server started
    in between still fails, later, in its startup)."""
    os.close(_lock_data_dir(data_dir))


def _lock_data_dir(data_dir: Path) -> int:
    """Two servers on one data directory would both re-run its interrupted jobs: allow one.
    The lock goes with the process, however it ends. The holder writes its pid in the lock file,
    so that the one refused can say which server holds it."""
    descriptor = os.open(data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
        os.close(descriptor)
        which = f" (pid {holder})" if holder.isdigit() else ""
        raise DataDirInUse(f"another boostream server{which} is using the data directory {data_dir}") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor
