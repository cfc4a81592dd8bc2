"""Runs jobs: one queue per device, training in threads, and what must happen when a job ends or
the server starts again.

Per device, at most `limit` jobs train at once; the others wait in the order they came, and each
waiting job is told its position whenever the queue moves. Beyond `max_queued` waiting jobs a new
one is refused (429). A job's arrays are written to disk while it waits, and dropped from memory
if it is still waiting by then, so a long queue does not hold every table in memory; they are
removed when the job ends. A server that starts on a data directory puts the jobs it finds queued
or running back in the queue (or ends them `interrupted` when that cannot work) before it takes
new ones, and finishes what it owed webhooks.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import time
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Optional

from boostream.progress import ProgressBridge, metric_history
from boostream.streaming_server import inputs
from boostream.streaming_server.artifacts import ArtifactStore
from boostream.streaming_server.errors import ApiError
from boostream.streaming_server.jobs import Event, Job, JobRequest, JobStatus
from boostream.streaming_server.store import JobStore
from boostream.streaming_server.webhooks import WebhookPolicy, WebhookSender
from boostream.trainers.base import Availability, Trainer, TrainingData

log = logging.getLogger("boostream.jobs")

# A job that was running each time the server died may be what kills it: stop trying after this.
MAX_ATTEMPTS = 3
RETRY_AFTER_UNKNOWN_S = 10
EXPIRY_BATCH = 100


class JobManager:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        inputs_dir: Path,
        trainers: Mapping[str, Trainer],
        availability: Mapping[str, Availability],
        *,
        cpu_jobs: int,
        gpu_jobs: int,
        max_queued: int,
        max_training_s: float,
        job_ttl_s: float,
        progress_interval_s: float,
        webhooks: WebhookSender,
        webhook_policy: WebhookPolicy,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.inputs_dir = inputs_dir
        self.trainers = trainers
        self.availability = availability
        self.limits = {"cpu": cpu_jobs, "gpu": gpu_jobs}
        self.max_queued = max_queued
        self.max_training_s = max_training_s
        self.job_ttl_s = job_ttl_s
        self.progress_interval_s = progress_interval_s
        self.webhooks = webhooks
        self.webhook_policy = webhook_policy
        self._waiting: dict[str, collections.deque[Job]] = {device: collections.deque() for device in self.limits}
        self._running: dict[str, set[Job]] = {device: set() for device in self.limits}
        self._live: dict[str, Job] = {}  # queued or running
        self._executor = concurrent.futures.ThreadPoolExecutor(cpu_jobs + gpu_jobs, thread_name_prefix="train")
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inputs")
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    # Lifecycle

    async def start(self) -> None:
        """Take up what the last server left: unfinished jobs, undelivered webhooks, stale files."""
        # Read before recovering: a job that recovery ends schedules its own webhook.
        owed = self.store.pending_callbacks()
        for row in self.store.unfinished_jobs():
            self._recover(row)
        keep = set(self._live)
        for folder in self.inputs_dir.glob("*") if self.inputs_dir.exists() else ():
            if folder.name not in keep:
                await self._on_disk(inputs.remove, folder)
        await self._on_disk(self.artifacts.remove_unknown, self.store.artifact_ids())
        for row in owed:
            self._background(self._deliver_webhook(row["id"]))
        self._background(self._expire_forever())

    async def shutdown(self) -> None:
        """Stop training, and leave the jobs queued or running in the store: the next server on this
        data directory runs them again."""
        self._stopping = True
        for job in list(self._live.values()):
            if job.bridge is not None:
                job.bridge.cancel()  # not job.cancel(): that would end the job `cancelled`
                job.bridge.close()  # its last rounds would land after the store has closed
        for tasks in (self._running_tasks(), self._tasks):
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=30)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._disk.shutdown(wait=True)
        await self.webhooks.aclose()

    # What the routes ask for

    def submit(self, request: JobRequest, data: TrainingData, ingest_timings: dict[str, float]) -> Job:
        trainer = self.trainers[request.model_type]
        self._check_room(trainer.device)
        job = Job.create(request, trainer, self.store, data, ingest_timings)
        self._live[job.id] = job
        self._enqueue(job)
        self._background(self._save_inputs(job, data))
        return job

    def live(self, job_id: str) -> Optional[Job]:
        return self._live.get(job_id)

    async def events(self, job_id: str, after: int) -> AsyncIterator[Event]:
        """The job's events after `after`, then live ones until the terminal event."""
        job = self._live.get(job_id)
        if job is not None:
            async for event in job.follow(after):
                yield event
            return
        for event_id, kind, data in self.store.events(job_id, after):
            if kind == "complete":
                data = await self._with_artifact(data)
            yield Event(event_id, kind, data)

    def client_left(self, job_id: str, client: str, cancel: bool) -> None:
        """A client that followed a job went away: cancel the job if it asked to, and say so."""
        if job_id not in self._live:
            log.info("job %s: %s left after the job ended", job_id, client)
        elif cancel:
            self.cancel(job_id)
            log.info("job %s: %s left; cancelling at the next round", job_id, client)
        else:
            log.info("job %s: %s left; the job keeps training", job_id, client)

    def cancel(self, job_id: str) -> JobStatus:
        """Ask a job to stop; a waiting one ends at once. The job's status after the request."""
        job = self._live[job_id]
        if job.status is JobStatus.QUEUED and job in self._waiting[job.device]:
            self._waiting[job.device].remove(job)
            self._end(job, JobStatus.CANCELLED, "cancelled", {"iteration": 0})
            self._announce_positions(job.device)
        else:
            job.cancel()
        return job.status

    async def delete(self, job_id: str) -> None:
        await self._remove_artifacts(self.store.delete_jobs([job_id]))

    async def result(self, row: dict[str, Any]) -> str:
        """The `complete` payload of a job that succeeded, as JSON with its artifact."""
        last = self.store.events(row["id"], after=0)[-1]
        return await self._with_artifact(last[2])

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            device: {"running": len(self._running[device]), "queued": len(self._waiting[device]), "limit": limit, "max_queued": self.max_queued}
            for device, limit in self.limits.items()
        }

    # The queue

    def _check_room(self, device: str) -> None:
        if len(self._waiting[device]) < self.max_queued:
            return
        etas = [job.eta_s for job in self._running[device] if job.eta_s is not None]
        retry_after = max(1, math.ceil(min(etas))) if etas else RETRY_AFTER_UNKNOWN_S
        raise ApiError(
            429,
            "queue_full",
            f"{self.max_queued} {device.upper()} jobs are already waiting; try again later",
            headers={"Retry-After": str(retry_after)},
        )

    def _enqueue(self, job: Job) -> None:
        device = job.device
        self._waiting[device].append(job)
        if not self._dispatch(device):
            job.emit("queued", {"position": len(self._waiting[device]), "device": device})

    def _dispatch(self, device: str) -> bool:
        """Start waiting jobs while there is room; whether any started."""
        started = False
        while not self._stopping and self._waiting[device] and len(self._running[device]) < self.limits[device]:
            job = self._waiting[device].popleft()
            self._running[device].add(job)
            task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.id}")
            task.add_done_callback(lambda _, job=job: self._on_run_done(job))
            job.task = task
            started = True
        return started

    def _on_run_done(self, job: Job) -> None:
        self._running[job.device].discard(job)
        if self._dispatch(job.device):
            self._announce_positions(job.device)

    def _announce_positions(self, device: str) -> None:
        for position, job in enumerate(self._waiting[device], start=1):
            job.emit("queued", {"position": position, "device": device})

    def _running_tasks(self) -> set[asyncio.Task]:
        return {job.task for jobs in self._running.values() for job in jobs if job.task is not None}

    # Running a job

    async def _run(self, job: Job) -> None:
        try:
            data = job.data
            if data is None and not job.cancel_requested:
                data = await self._on_disk(inputs.load, self._inputs_folder(job))
                if data is None:
                    self._end(job, JobStatus.FAILED, "error", {"code": "interrupted", "message": "the job's input was lost while the server was down"})
                    return
            if job.cancel_requested:  # asked while it waited, or while its input was read back
                self._end(job, JobStatus.CANCELLED, "cancelled", {"iteration": 0})
                return
            await self._train(job, data)
        except Exception:  # the store failing, say: end the job, never leave it `running`
            log.exception("job %s: the server failed while running it", job.id)
            if job.id in self._live:
                self._fail_without_store(job)

    def _fail_without_store(self, job: Job) -> None:
        message = "the server failed while running this job; see its log"
        try:
            self._end(job, JobStatus.FAILED, "error", {"code": "internal_error", "message": message})
        except Exception:
            log.exception("job %s: could not record its failure either", job.id)
            job.abandon(message)
            self._live.pop(job.id, None)

    async def _train(self, job: Job, data: TrainingData) -> None:
        loop = asyncio.get_running_loop()
        request = job.request
        job.start(self.availability[request.model_type].device_name, len(data.X), 0 if data.X_valid is None else len(data.X_valid), data.X.shape[1])
        job.bridge = ProgressBridge(loop, job.report, request.params["n_estimators"], self.progress_interval_s)
        limit_s = request.timeout_s or self.max_training_s
        deadline = loop.call_later(limit_s, job.time_out)
        if job.cancel_requested:
            job.bridge.cancel()
        job.data = None  # the thread holds the arrays while it trains; nothing else needs them
        try:
            result, artifact, timings = await loop.run_in_executor(self._executor, self._fit_and_save, job, data)
        except asyncio.CancelledError:
            job.bridge.cancel()  # the server is stopping: the job stays `running` in the store
            raise
        except Exception as error:  # a failed fit ends the job, never the server
            log.exception("job %s failed", job.id)
            job.bridge.finish()
            self._end(job, JobStatus.FAILED, "error", {"code": "training_failed", "message": f"{type(error).__name__}: {error}"})
            return
        finally:
            deadline.cancel()
        job.bridge.finish()
        if result.cancelled and job.timed_out:
            message = f"training ran past its limit of {limit_s:g} s and stopped after round {result.iterations}"
            self._end(job, JobStatus.FAILED, "error", {"code": "timeout", "message": message, "iteration": result.iterations})
        elif result.cancelled:
            self._end(job, JobStatus.CANCELLED, "cancelled", {"iteration": result.iterations})
        else:
            format = request.artifact_format
            complete = {
                **artifact.event_fields(format),
                "iterations": result.iterations,
                "best_iteration": result.best_iteration,
                "metrics": result.metrics,
                "curve": metric_history(1, result.curve),
                "classes": data.classes,
                "feature_names": data.feature_names,
                "training_time_s": timings["fit_s"],
                "timings": {**{name: round(value, 4) for name, value in job.ingest_timings.items()}, "queued_s": round(job.started_at - job.created_at, 4), **timings},
                "artifact": artifact.encoded(format),
            }
            self.store.insert_artifact(
                {
                    "id": artifact.artifact_id,
                    "job_id": job.id,
                    "model_type": request.model_type,
                    "objective": request.objective,
                    "feature_names": data.feature_names,
                    "classes": data.classes,
                    "metrics": result.metrics,
                    "iterations": result.iterations,
                    "best_iteration": result.best_iteration,
                    "created_at": time.time(),
                    "blobs": {format: blob.as_json() for format, blob in artifact.blobs.items()},
                }
            )
            self._end(job, JobStatus.SUCCEEDED, "complete", complete, artifact_id=artifact.artifact_id, metrics=result.metrics, iteration=result.iterations)

    def _fit_and_save(self, job: Job, data: TrainingData):
        """Runs in a training thread."""
        request = job.request
        started = time.perf_counter()
        result = job.trainer.fit(data, request.objective, request.params, job.bridge)
        fitted = time.perf_counter()
        artifact = None if result.cancelled else self.artifacts.save(result.model, job.trainer)
        saved = time.perf_counter()
        return result, artifact, {"fit_s": round(fitted - started, 4), "artifact_s": round(saved - fitted, 4)}

    def _end(self, job: Job, status: JobStatus, event_type: str, data: dict[str, Any], **row_fields: Any) -> None:
        if status is JobStatus.FAILED:
            row_fields.update(error_code=data["code"], error_message=data["message"])
        job.finish(status, event_type, data, **row_fields)
        del self._live[job.id]
        self._background(self._on_disk(inputs.remove, self._inputs_folder(job)))
        if job.request.callback_url:
            self._background(self._deliver_webhook(job.id))

    # Inputs on disk

    def _inputs_folder(self, job: Job) -> Path:
        return self.inputs_dir / job.id

    async def _save_inputs(self, job: Job, data: TrainingData) -> None:
        try:
            await self._on_disk(inputs.save, self._inputs_folder(job), data)
        except OSError as error:
            log.warning("job %s: could not keep its input on disk (%s); it cannot be re-run after a restart", job.id, error)
            return
        if job.finished:
            await self._on_disk(inputs.remove, self._inputs_folder(job))  # it ended while its input was written
            return
        if job.status is JobStatus.QUEUED:
            job.data = None  # it waits on disk; `_run` reads it back

    # After a restart

    def _recover(self, row: dict[str, Any]) -> None:
        trainer = self.trainers[row["model_type"]]
        job = Job.restore(row, trainer, self.store)
        self._live[job.id] = job
        availability = self.availability[row["model_type"]]
        was = row["status"]
        if row["attempts"] >= MAX_ATTEMPTS:
            problem = f"the server stopped while this job ran, {row['attempts']} times; it is not tried again"
        elif not inputs.complete(self._inputs_folder(job)):
            problem = "the server stopped before the job's input was kept on disk"
        elif not availability.available:
            problem = f"{row['model_type']} cannot train on this server any more: {availability.reason}"
        else:
            log.info("job %s was %s when the server stopped; it runs again", job.id, was)
            job.requeue(f"the server restarted while the job was {was}")
            self._enqueue(job)
            return
        log.warning("job %s was %s when the server stopped; it ends interrupted: %s", job.id, was, problem)
        self._end(job, JobStatus.FAILED, "error", {"code": "interrupted", "message": problem})

    # Housekeeping

    async def _expire_forever(self) -> None:
        period = min(self.job_ttl_s / 4, 600.0)
        while True:
            await self._expire()
            await asyncio.sleep(period)

    async def _expire(self) -> None:
        cutoff, removed = time.time() - self.job_ttl_s, 0
        # In batches, each one short, so that a long backlog never holds up the event loop.
        while expired := self.store.finished_before(cutoff, EXPIRY_BATCH):
            await self._remove_artifacts(self.store.delete_jobs(expired))
            removed += len(expired)
            await asyncio.sleep(0)
        if removed:
            log.info("removed %d jobs that finished more than %g s ago, with their artifacts", removed, self.job_ttl_s)

    async def _remove_artifacts(self, artifact_ids: list[str]) -> None:
        for artifact_id in artifact_ids:
            await self._on_disk(self.artifacts.delete, artifact_id)

    async def _deliver_webhook(self, job_id: str) -> None:
        row = self.store.job(job_id)
        if row is None:
            return
        try:
            # Asked again: after a restart the operator's allow-list may have changed.
            url = self.webhook_policy.check(row["request"]["callback_url"])
        except ApiError as refused:
            log.warning("job %s: webhook not sent: %s", job_id, refused.message)
            state = "refused"
        else:
            state = "delivered" if await self.webhooks.deliver(url, webhook_payload(row)) else "failed"
        if self.store.job(job_id) is not None:  # it may have been deleted meanwhile
            self.store.update_job(job_id, callback_state=state)

    async def _with_artifact(self, complete_json: str) -> str:
        return await self._on_disk(self.artifacts.attach, complete_json)

    async def _on_disk(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._disk, function, *args)

    def _background(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def job_urls(job_id: str, base_url: str = "") -> dict[str, str]:
    base = f"{base_url.rstrip('/')}/jobs/{job_id}"
    return {"status_url": base, "events_url": f"{base}/events", "result_url": f"{base}/result", "cancel_url": f"{base}/cancel"}


def webhook_payload(row: dict[str, Any]) -> dict[str, Any]:
    """What a callback receives when a job ends: enough to act on, not the artifact itself."""
    urls = job_urls(row["id"], row["request"]["base_url"])
    return {
        "job_id": row["id"],
        "status": row["status"],
        "model_type": row["model_type"],
        "objective": row["objective"],
        "iterations": row["iteration"],
        "metrics": row["metrics"],
        "artifact_id": row["artifact_id"],
        "error": {"code": row["error_code"], "message": row["error_message"]} if row["error_code"] else None,
        "finished_at": row["finished_at"],
        "status_url": urls["status_url"],
        "result_url": urls["result_url"],
    }
