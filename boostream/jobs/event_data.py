"""What a job's events say, built in one place for every engine: the one-process `JobManager` and
the workers fed from Redis write the same `started`, `progress` and `complete` events, and the
same artifact record.
"""

from __future__ import annotations

from typing import Any

from boostream.jobs.records import JobRequest
from boostream.models.artifacts import Artifact, ArtifactRecord
from boostream.progress import Progress, metric_history
from boostream.trainers.base import TrainingData
from boostream.workers.task import Finished


def started(
    request: JobRequest, device_name: str | None, attempt: int, data: TrainingData, total: int
) -> dict[str, Any]:
    return {
        "model_type": request.model_type,
        "objective": request.objective,
        "device": device_name,
        "attempt": attempt,
        "n_rows": len(data.X),
        "n_valid_rows": 0 if data.X_valid is None else len(data.X_valid),
        "n_features": data.X.shape[1],
        "n_estimators": total,
        "params": request.params,
    }


def progress(delivered: Progress) -> dict[str, Any]:
    return {
        "iteration": delivered.iteration,
        "total": delivered.total,
        "percent": delivered.percent,
        "elapsed_s": delivered.elapsed_s,
        "eta_s": delivered.eta_s,
        "metrics": delivered.metrics,
        "history": delivered.history,
        "ts": delivered.ts,
    }


# The row fields that change with a `progress` event, named as in its data.
PROGRESS_FIELDS = ("iteration", "elapsed_s", "eta_s", "metrics")


def progress_fields(delivered: Progress) -> dict[str, Any]:
    return {name: getattr(delivered, name) for name in PROGRESS_FIELDS}


def complete(
    artifact: Artifact,
    format: str,
    outcome: Finished,
    data: TrainingData,
    ingest_timings: dict[str, float],
    queued_s: float,
) -> dict[str, Any]:
    """The `complete` event but its base64 artifact, which comes last (`ArtifactStore.attach`)."""
    return {
        **artifact.event_fields(format),
        "iterations": outcome.iterations,
        "best_iteration": outcome.best_iteration,
        "metrics": outcome.metrics,
        "curve": metric_history(1, outcome.curve),
        "classes": data.classes,
        "feature_names": data.feature_names,
        "training_time_s": outcome.timings["fit_s"],
        "timings": {
            **{name: round(value, 4) for name, value in ingest_timings.items()},
            "queued_s": round(queued_s, 4),
            **outcome.timings,
        },
    }


def artifact_record(
    job_id: str, request: JobRequest, data: TrainingData, outcome: Finished, artifact: Artifact, created_at: float
) -> ArtifactRecord:
    return ArtifactRecord(
        id=artifact.artifact_id,
        job_id=job_id,
        model_type=request.model_type,
        objective=request.objective,
        feature_names=data.feature_names,
        classes=data.classes,
        metrics=outcome.metrics,
        iterations=outcome.iterations,
        best_iteration=outcome.best_iteration,
        created_at=created_at,
        blobs=artifact.blobs,
    )
