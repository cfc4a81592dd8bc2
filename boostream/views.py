"""How jobs, artifacts and backends are shown to every client (HTTP, MCP, CLI): one place, so
that `GET /jobs/{id}` and MCP's `job_status` never disagree."""

from __future__ import annotations

import datetime
from typing import Any

from boostream.jobs.records import JobRecord, JobStatus, job_urls
from boostream.models.artifacts import ArtifactRecord
from boostream.trainers.base import Availability


def job_view(record: JobRecord) -> dict[str, Any]:
    """A job as `GET /jobs/{id}` shows it."""
    total, iteration = record.total, record.iteration
    if record.status is JobStatus.SUCCEEDED:
        percent = 100.0  # a job that stopped early succeeded all the same: it is done, whatever rounds it skipped
    else:
        percent = round(100.0 * iteration / total, 2) if total else 0.0
    request = record.request
    return {
        "job_id": record.id,
        "status": record.status.value,
        "model_type": record.model_type,
        "objective": record.objective,
        "device": record.device,
        "owner": record.owner,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "progress": {
            "iteration": iteration,
            "total": total,
            "percent": percent,
            "elapsed_s": record.elapsed_s,
            "eta_s": record.eta_s,
        },
        "metrics": record.metrics or {},
        "error": {"code": record.error_code, "message": record.error_message} if record.error_code else None,
        "artifact_id": record.artifact_id,
        "attempts": record.attempts,
        "waiting_for_worker": record.waiting_for_worker,
        "timeout_s": request.timeout_s,
        "callback": {"url": request.callback_url, "state": record.callback_state} if request.callback_url else None,
        **job_urls(record.id),
    }


def artifact_view(record: ArtifactRecord) -> dict[str, Any]:
    """An artifact's metadata, as `GET /artifacts/{id}/metadata` shows it."""
    return {
        "artifact_id": record.id,
        "job_id": record.job_id,
        "model_type": record.model_type,
        "objective": record.objective,
        "feature_names": record.feature_names,
        "classes": record.classes,
        "metrics": record.metrics,
        "iterations": record.iterations,
        "best_iteration": record.best_iteration,
        "created_at": iso(record.created_at),
        "formats": {format: blob.as_json() for format, blob in record.blobs.items()},
        "download_urls": {format: f"/artifacts/{record.id}?format={format}" for format in record.blobs},
    }


def availability_view(availability: Availability, device: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"available": availability.available, "device": device}
    if availability.available:
        fields["device_name"] = availability.device_name
    else:
        fields["reason"] = availability.reason
    return fields


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return (
        datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
