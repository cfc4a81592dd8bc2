"""What a worker does with one job, wherever it runs: read the job's saved input, fit with its
trainer while reporting every round, save the model as an artifact, and say how it went.

This is the worker code that every kind of worker runs (the processes `boostream serve` starts on
its own machine, in `local.py`). It knows no jobs' events, no queue and no store of records: the
task says what to train, the reporter carries each round and the request to stop, and the outcome
(`Finished` or `Failed`) is all that comes back. Outcomes are plain records that cross a process
boundary as they are.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from boostream.jobs import inputs
from boostream.models.artifacts import ArtifactStore, StoredBlob
from boostream.trainers.base import Backend, Reporter

log = logging.getLogger("boostream.worker")


@dataclasses.dataclass(frozen=True)
class TrainTask:
    job_id: str
    model_type: str
    objective: str
    params: dict[str, Any]
    inputs: str  # the folder of the job's saved arrays (`jobs.inputs`)


@dataclasses.dataclass(frozen=True)
class Finished:
    """The fit returned: it ran its rounds, stopped early, or was asked to stop (`cancelled`, with
    no artifact)."""

    iterations: int
    best_iteration: int
    metrics: dict[str, float | None]
    cancelled: bool
    curve: list[dict[str, float | None]]  # every round's metrics, in order
    artifact_id: str | None
    blobs: dict[str, StoredBlob]  # by format
    timings: dict[str, float]  # load_s, fit_s, artifact_s

    @classmethod
    def stopped(cls, iterations: int) -> Finished:
        """A job whose worker was stopped from outside, after `iterations` rounds."""
        return cls(iterations, 0, {}, True, [], None, {}, {})


@dataclasses.dataclass(frozen=True)
class Failed:
    code: str  # training_failed, out_of_memory, storage_failed, interrupted
    message: str


Outcome = Finished | Failed


def run_task(task: TrainTask, trainers: Mapping[str, Backend], artifacts: ArtifactStore, reporter: Reporter) -> Outcome:
    """Train the task's model; a failure of any kind is an outcome, never an exception."""
    started = time.perf_counter()
    data = inputs.load(Path(task.inputs))
    if data is None:
        return Failed("interrupted", "the job's input is missing: it was lost or removed before the job could run")
    trainer = trainers[task.model_type]
    loaded = time.perf_counter()
    try:
        result = trainer.fit(data, task.objective, task.params, reporter)
    except MemoryError:
        return Failed("out_of_memory", "training ran out of memory")
    except Exception as error:  # a failed fit ends the job, never the worker
        if "bad_alloc" in str(error):  # LightGBM's C++ allocation failure, as its Python error
            return Failed("out_of_memory", f"training ran out of memory ({error})")
        log.exception("job %s failed", task.job_id)
        return Failed("training_failed", f"{type(error).__name__}: {error}")
    fitted = time.perf_counter()
    artifact_id, blobs = None, {}
    if not result.cancelled:
        try:
            artifact = artifacts.save(result.model, trainer)
        except OSError as error:
            log.exception("job %s: could not save its model", task.job_id)
            return Failed("storage_failed", f"the model was trained but could not be saved: {error}")
        except Exception as error:  # exporting the model failed: training again would too
            log.exception("job %s: could not export its model", task.job_id)
            return Failed("training_failed", f"the model was trained but not exported: {type(error).__name__}: {error}")
        artifact_id, blobs = artifact.artifact_id, artifact.blobs
    saved = time.perf_counter()
    return Finished(
        iterations=result.iterations,
        best_iteration=result.best_iteration,
        metrics=result.metrics,
        cancelled=result.cancelled,
        curve=result.curve,
        artifact_id=artifact_id,
        blobs=blobs,
        timings={
            "load_s": round(loaded - started, 4),
            "fit_s": round(fitted - loaded, 4),
            "artifact_s": round(saved - fitted, 4),
        },
    )
