"""Every training is a job: an id, a status, an ordered event log and, at the end, an artifact.

Events are appended on the event loop only, so the log needs no lock. Subscribers read it from any
position and wait for more, so a late or reconnecting client misses nothing, and any number of them
share one log. Training runs in a thread pool; at most `cpu_jobs` CPU and `gpu_jobs` GPU jobs train
at once, and the rest wait, in order, as `queued`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any, AsyncIterator, Mapping, Optional

from boostream.progress import Progress, ProgressBridge
from boostream.streaming_server.artifacts import ArtifactStore
from boostream.streaming_server.decoding import TrainSpec

log = logging.getLogger("boostream.jobs")

TERMINAL_EVENTS = frozenset({"complete", "error", "cancelled"})
# Finished jobs kept in memory for late subscribers; artifacts stay on disk regardless.
FINISHED_JOBS_KEPT = 256


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclasses.dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


class Job:
    def __init__(self, spec: TrainSpec, decode_s: float) -> None:
        self.id = uuid.uuid4().hex
        self.spec = spec
        self.status = JobStatus.QUEUED
        self.created_at = time.time()
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self.decode_s = decode_s
        self.events: list[Event] = []
        self.bridge: Optional[ProgressBridge] = None
        self._cancel_requested = False
        self._appended = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self.status not in (JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def cancel(self) -> None:
        """Stop at the next round (or before starting, if still queued)."""
        self._cancel_requested = True
        if self.bridge is not None:
            self.bridge.cancel()

    def finish(self, status: JobStatus, event_type: str, **data: Any) -> None:
        self.status = status
        self.finished_at = time.time()
        self.emit(event_type, **data)

    def emit(self, event_type: str, **data: Any) -> Event:
        event = Event(len(self.events) + 1, event_type, {"job_id": self.id, **data})
        self.events.append(event)
        # Wake everyone waiting, then give later waiters a fresh event to wait on.
        self._appended.set()
        self._appended = asyncio.Event()
        return event

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


class JobManager:
    def __init__(
        self, artifacts: ArtifactStore, device_names: Mapping[str, Optional[str]], cpu_jobs: int, gpu_jobs: int, progress_interval_s: float
    ) -> None:
        self.artifacts = artifacts
        self.device_names = device_names  # per backend, as found once at start-up
        self.progress_interval_s = progress_interval_s
        self.limits = {"cpu": cpu_jobs, "gpu": gpu_jobs}
        self._slots = {device: asyncio.Semaphore(limit) for device, limit in self.limits.items()}
        self._executor = concurrent.futures.ThreadPoolExecutor(cpu_jobs + gpu_jobs, thread_name_prefix="train")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()

    def get(self, job_id: str) -> Optional[Job]:
        return self._jobs.get(job_id)

    def submit(self, spec: TrainSpec, decode_s: float) -> Job:
        job = Job(spec, decode_s)
        self._jobs[job.id] = job
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._forget_old_jobs()
        return job

    def counts(self) -> dict[str, dict[str, int]]:
        figures = {device: {"running": 0, "queued": 0, "limit": limit} for device, limit in self.limits.items()}
        for job in self._jobs.values():
            if not job.finished:
                figures[job.spec.trainer.device][job.status.value] += 1
        return figures

    async def shutdown(self) -> None:
        """Cancel what still trains, and wait for the threads: nobody will stream it any more."""
        for job in self._jobs.values():
            if not job.finished:
                job.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, job: Job) -> None:
        spec = job.spec
        device = spec.trainer.device
        slot = self._slots[device]
        if slot.locked():
            waiting = sum(1 for j in self._jobs.values() if j.status is JobStatus.QUEUED and j.spec.trainer.device == device)
            job.emit("queued", position=waiting, device=device)
        async with slot:
            if job.cancel_requested:
                job.finish(JobStatus.CANCELLED, "cancelled", iteration=0)
                return
            await self._train(job)

    async def _train(self, job: Job) -> None:
        spec, data = job.spec, job.spec.data
        loop = asyncio.get_running_loop()
        job.status = JobStatus.RUNNING
        job.started_at = time.time()
        job.emit(
            "started",
            model_type=spec.trainer.name,
            objective=spec.objective,
            device=self.device_names.get(spec.trainer.name),
            n_rows=len(data.X),
            n_valid_rows=0 if data.X_valid is None else len(data.X_valid),
            n_features=data.X.shape[1],
            n_estimators=spec.params["n_estimators"],
            params=spec.params,
        )
        job.bridge = ProgressBridge(loop, lambda p: job.emit("progress", **_progress_fields(p)), spec.params["n_estimators"], self.progress_interval_s)
        if job.cancel_requested:
            job.bridge.cancel()
        try:
            outcome = await loop.run_in_executor(self._executor, self._fit_and_save, job)
        except Exception as error:  # a failed fit ends the job, never the server
            log.exception("job %s failed", job.id)
            job.bridge.finish()
            job.finish(JobStatus.FAILED, "error", code="training_failed", message=f"{type(error).__name__}: {error}")
            return
        finally:
            job.spec = dataclasses.replace(spec, data=None)  # the arrays are no longer needed
        job.bridge.finish()
        result, artifact, timings = outcome
        if result.cancelled:
            job.finish(JobStatus.CANCELLED, "cancelled", iteration=result.iterations)
            return
        job.finish(
            JobStatus.SUCCEEDED,
            "complete",
            **artifact.event_fields(),
            iterations=result.iterations,
            best_iteration=result.best_iteration,
            metrics=result.metrics,
            classes=data.classes,
            feature_names=data.feature_names,
            training_time_s=timings["fit_s"],
            timings={"decode_s": round(job.decode_s, 4), "queued_s": round(job.started_at - job.created_at, 4), **timings},
        )

    def _fit_and_save(self, job: Job):
        """Runs in a training thread."""
        spec = job.spec
        started = time.perf_counter()
        result = spec.trainer.fit(spec.data, spec.objective, spec.params, job.bridge)
        fitted = time.perf_counter()
        artifact = None if result.cancelled else self.artifacts.save(result.model)
        saved = time.perf_counter()
        return result, artifact, {"fit_s": round(fitted - started, 4), "artifact_s": round(saved - fitted, 4)}

    def _forget_old_jobs(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.finished]
        for job_id in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
            del self._jobs[job_id]


def _progress_fields(progress: Progress) -> dict[str, Any]:
    return {
        "iteration": progress.iteration,
        "total": progress.total,
        "percent": progress.percent,
        "elapsed_s": progress.elapsed_s,
        "eta_s": progress.eta_s,
        "metrics": progress.metrics,
        "ts": progress.ts,
    }
