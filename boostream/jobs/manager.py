"""The one owner of job state: it creates jobs, queues them per device, runs them on worker
processes, writes every event and row change to the store, and keeps what must happen when a job
ends or the server starts again. Everything else reads job state through it.

Each device has its queue (`queue.py`), as long as its workers have slots; each waiting job is
told its position whenever the queue moves. A job's arrays are written to disk as soon as it is
submitted and then dropped from this process's memory: its worker reads them from there
(memory-mapped), a job whose worker died runs again from them, and so does a job that was running
when the server died. They are removed when the job ends. A server that starts on a data directory
puts the jobs it finds queued or running back in the queue (or ends them `interrupted` when that
cannot work) before it takes new ones, and finishes what it owed webhooks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson

from boostream.errors import disk_full
from boostream.jobs import event_data, inputs
from boostream.jobs.job import Job
from boostream.jobs.queue import DeviceQueue
from boostream.jobs.records import MAX_ATTEMPTS, Event, JobRecord, JobRequest, JobsSummary, JobStatus, JobStore
from boostream.jobs.webhooks import WebhookPolicy, WebhookSender, send_job_webhook
from boostream.models.artifacts import Artifact, ArtifactRecord, ArtifactStore
from boostream.progress import Progress, ProgressBridge
from boostream.trainers.base import Availability, Backend, TrainingData
from boostream.workers.local import LocalWorkers, WorkerLost
from boostream.workers.task import Failed, Finished, TrainTask

T = TypeVar("T")

log = logging.getLogger("boostream.jobs")

EXPIRY_BATCH = 100
RECORD_RETRY_S = 1.0  # how often the end of a job that the store could not take is written again


class JobManager:
    """
    :param store: job records, event logs and artifact records (`records.JobStore`)
    :param artifacts: the artifacts' files
    :param inputs_dir: where each unfinished job's arrays are kept, a folder per job
    :param trainers: the backends by name; `availability`: whether each can train here
    :param workers: the worker processes of each device (started where a backend can train on it);
        as many jobs train at once on a device as its workers have slots
    :param max_queued: jobs that may wait per device; one more is refused (QueueFull)
    :param max_training_s: the longest a job may train (a request may ask for less)
    :param job_ttl_s: how long a finished job, its events and its artifact are kept
    :param progress_interval_s: the shortest time between two progress events of a job
    :param webhooks: sends the callbacks; `webhook_policy`: the hosts they may go to
    """

    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        inputs_dir: Path,
        trainers: Mapping[str, Backend],
        availability: Mapping[str, Availability],
        workers: Mapping[str, LocalWorkers],
        *,
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
        self.max_training_s = max_training_s
        self.job_ttl_s = job_ttl_s
        self.progress_interval_s = progress_interval_s
        self.webhooks = webhooks
        self.webhook_policy = webhook_policy
        self.workers = workers
        self._queues = {device: DeviceQueue(device, pool.slots, max_queued) for device, pool in workers.items()}
        self._live: dict[str, Job] = {}  # queued or running
        self._unrecorded: dict[str, Job] = {}  # ended, where the store could not take the end yet
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inputs")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # Lifecycle

    async def start(self) -> None:
        """Start the workers, and take up what the last server left: unfinished jobs, undelivered
        webhooks, stale files."""
        for device, pool in self.workers.items():
            if any(self.availability[name].available for name, t in self.trainers.items() if t.device == device):
                await pool.start()
        # Read before recovering: a job that recovery ends schedules its own webhook.
        owed = self.store.pending_callbacks()
        for record in self.store.unfinished_jobs():
            self._recover(record)
        keep = set(self._live)
        for folder in self.inputs_dir.glob("*") if self.inputs_dir.exists() else ():
            # A search's table (`tune-<id>`) is the search's to keep or remove (`boostream.searches`).
            if folder.name not in keep and not folder.name.startswith("tune-"):
                await self._on_disk(inputs.remove, folder)
        await self._on_disk(self.artifacts.remove_unknown, self.store.artifact_ids())
        for record in owed:
            self._background(self._deliver_webhook(record.id))
        self._background(self._expire_forever())

    async def shutdown(self) -> None:
        """Stop training, and leave the jobs queued or running in the store: the next server on this
        data directory runs them again."""
        self._stopping = True
        for job in list(self._live.values()):
            if job.bridge is not None:
                job.bridge.close()  # its last rounds would land after the store has closed
        for tasks in (self._running_tasks(), self._tasks):
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=30)
        for pool in self.workers.values():
            await pool.close()
        self._disk.shutdown(wait=True)
        await self.webhooks.aclose()

    # What the service asks for

    async def submit(
        self,
        request: JobRequest,
        data: TrainingData,
        ingest_timings: dict[str, float],
        saved_at: Path | None = None,
        owner: str | None = None,
    ) -> JobRecord:
        """A new job, queued. `saved_at`: where its arrays are kept already (a decoder process wrote
        them); they move to the job's folder, else they are written there."""
        trainer = self.trainers[request.model_type]
        self._queues[trainer.device].check_room()
        job = Job(uuid.uuid4().hex, request, trainer, time.time())
        job.ingest_timings = ingest_timings
        record = JobRecord(
            id=job.id,
            status=job.status,
            model_type=request.model_type,
            objective=request.objective,
            device=trainer.device,
            request=request,
            created_at=job.created_at,
            total=job.rounds,
            owner=owner,
        )
        self.store.insert_job(record)
        self._live[job.id] = job
        if saved_at is not None:
            try:
                saved_at.rename(self._inputs_folder(job))  # within one folder: no data moves
            except OSError as error:
                job.input_error = str(error)
            job.input_saved.set()
        else:
            self._background(self._save_inputs(job, data))
        try:
            self._enqueue(job)
        except BaseException:
            self._withdraw(job)
            raise
        return record

    def _withdraw(self, job: Job) -> None:
        """A job refused after all (its `queued` event could not be written: a full disk): the
        client is told so, so it must not run. Its row goes too where the store takes that."""
        job.status = JobStatus.CANCELLED  # finished: an input still being written is removed once written
        self._queues[job.device].remove(job)
        self._live.pop(job.id, None)
        try:
            self.store.delete_jobs([job.id])
        except Exception as error:
            log.warning("job %s: refused, but its record could not be removed (%s)", job.id, error)
        if job.input_saved.is_set():
            self._background(self._on_disk(inputs.remove, self._inputs_folder(job)))

    async def job(self, job_id: str) -> JobRecord | None:
        return self._as_ended(self.store.job(job_id))

    def _as_ended(self, record: JobRecord | None) -> JobRecord | None:
        """The record, as it ended where the store could not take its end yet."""
        job = self._unrecorded.get(record.id) if record is not None else None
        if record is None or job is None:
            return record
        error = orjson.loads(job.events[-1].json)
        return dataclasses.replace(
            record,
            status=job.status,
            eta_s=None,
            finished_at=job.finished_at,
            error_code=error["code"],
            error_message=error["message"],
        )

    async def jobs(
        self, statuses: list[str], limit: int, before_seq: int | None, owner: str | None = None
    ) -> list[JobRecord]:
        """Newest first; only those of `owner` when it is given."""
        records = [self._as_ended(record) for record in self.store.jobs(statuses, limit, before_seq, owner)]
        return [record for record in records if record is not None]

    async def artifact(self, artifact_id: str) -> ArtifactRecord | None:
        return self.store.artifact(artifact_id)

    async def artifact_file(self, artifact_id: str, format: str) -> bytes:
        """The artifact's file in `format`; FileNotFoundError when it is missing."""
        return await self._on_disk(self.artifacts.read, artifact_id, format)

    async def has_events_after(self, job_id: str, after: int) -> bool:
        if (job := self._unrecorded.get(job_id)) is not None:
            return len(job.events) > after
        return self.store.has_events_after(job_id, after)

    async def events(self, job_id: str, after: int) -> AsyncGenerator[Event, None]:
        """The job's events after `after`, then live ones until the terminal event."""
        job = self._live.get(job_id) or self._unrecorded.get(job_id)
        if job is not None:
            async for event in job.follow(after):
                yield event
            return
        for event in self.store.events(job_id, after):
            yield (
                Event(event.id, event.type, await self._with_artifact(event.json))
                if event.type == "complete"
                else event
            )

    def client_left(self, job_id: str, client: str, cancel: bool) -> None:
        """A client that followed a job went away: cancel the job if it asked to, and say so."""
        if job_id not in self._live:
            log.info("job %s: %s left after the job ended", job_id, client)
        elif cancel:
            self._cancel(job_id)
            log.info("job %s: %s left; cancelling at the next round", job_id, client)
        else:
            log.info("job %s: %s left; the job keeps training", job_id, client)

    async def cancel(self, job_id: str) -> JobStatus:
        """Ask a job to stop; a waiting one ends at once. The job's status after the request."""
        return self._cancel(job_id)

    def _cancel(self, job_id: str) -> JobStatus:
        job = self._live.get(job_id)
        if job is None:  # it ended meanwhile
            record = self.store.job(job_id)
            return record.status if record is not None else JobStatus.CANCELLED
        if job.status is JobStatus.QUEUED and self._queues[job.device].remove(job):
            self._end(job, JobStatus.CANCELLED, "cancelled", {"iteration": 0})
            self._announce_positions(job.device)
        else:
            job.cancel()
        return job.status

    async def delete(self, job_id: str) -> None:
        await self._remove_artifacts(self.store.delete_jobs([job_id]))

    async def result(self, job_id: str) -> str:
        """The `complete` payload of a job that succeeded, as JSON with its artifact."""
        last = self.store.events(job_id, after=0)[-1]
        return await self._with_artifact(last.json)

    async def counts(self) -> dict[str, dict[str, int]]:
        return {device: queue.counts() for device, queue in self._queues.items()}

    async def summary(self) -> list[JobsSummary]:
        return await asyncio.to_thread(self.store.summary)  # a pass over every job kept: not on the loop

    async def worker_views(self) -> list[dict[str, Any]]:
        return [view for pool in self.workers.values() for view in pool.views()]

    # The queue

    def _enqueue(self, job: Job) -> None:
        position = self._queues[job.device].push(job)
        if not self._dispatch(job.device):
            self._emit(job, "queued", {"position": position, "device": job.device})

    def _dispatch(self, device: str) -> bool:
        """Start waiting jobs while there is room; whether any started."""
        started = False
        while not self._stopping and (job := self._queues[device].next_to_run()) is not None:
            task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.id}")
            task.add_done_callback(functools.partial(self._on_run_done, job))
            job.task = task
            started = True
        return started

    def _on_run_done(self, job: Job, task: asyncio.Task[None]) -> None:
        queue = self._queues[job.device]
        queue.done(job)
        if job.status is JobStatus.QUEUED and job.id in self._live:  # its worker died: it runs again, first
            queue.push_front(job)
        if self._dispatch(job.device):
            self._announce_positions(job.device)

    def _announce_positions(self, device: str) -> None:
        for position, job in self._queues[device].positions():
            self._emit(job, "queued", {"position": position, "device": device})

    def _running_tasks(self) -> set[asyncio.Task[None]]:
        return {job.task for queue in self._queues.values() for job in queue.running if job.task is not None}

    # Running a job

    async def _run(self, job: Job) -> None:
        try:
            await job.input_saved.wait()
            if job.input_error is not None:
                message = f"the job's input could not be kept on disk for its worker: {job.input_error}"
                self._end(job, JobStatus.FAILED, "error", {"code": "storage_failed", "message": message})
                return
            # Mapped, not read: what the events say of the table (its shape, names and classes).
            data = None if job.cancel_requested else await self._on_disk(inputs.load, self._inputs_folder(job))
            if job.cancel_requested:  # asked while it waited, or while its input was looked at
                self._end(job, JobStatus.CANCELLED, "cancelled", {"iteration": 0})
                return
            if data is None:
                message = "the job's input was lost while the server was down"
                self._end(job, JobStatus.FAILED, "error", {"code": "interrupted", "message": message})
                return
            await self._train(job, data)
        except Exception as error:  # the store failing, say: end the job, never leave it `running`
            if disk_full(error):
                log.warning("job %s: the disk is full (%s)", job.id, error)
            else:
                log.exception("job %s: the server failed while running it", job.id)
            if job.id in self._live:
                self._fail_without_store(job, error)

    def _fail_without_store(self, job: Job, error: Exception) -> None:
        if disk_full(error):
            code, message = "insufficient_storage", f"the server's disk filled up while it ran this job ({error})"
        else:
            code, message = "internal_error", "the server failed while running this job; see its log"
        data = {"code": code, "message": message}
        try:
            self._end(job, JobStatus.FAILED, "error", data)
        except Exception as again:
            log.warning("job %s: could not record its end either (%s); it is kept until it can be", job.id, again)
            # Ended in memory: followers get the end now, `GET /jobs/{id}` shows it, and the store
            # gets it once it can take it (a full disk with room again), without a restart.
            job.status = JobStatus.FAILED
            event = Event(len(job.events) + 1, "error", orjson.dumps({"job_id": job.id, **data}).decode())
            job.append(event)
            self._live.pop(job.id, None)
            self._unrecorded[job.id] = job
            job.finished_at = time.time()
            ended = {
                "status": JobStatus.FAILED,
                "finished_at": job.finished_at,
                "eta_s": None,
                "callback_state": "pending" if job.request.callback_url else None,
            }
            self._background(
                self._record_when_possible(job, event, {**ended, "error_code": code, "error_message": message})
            )

    async def _record_when_possible(self, job: Job, event: Event, fields: dict[str, Any]) -> None:
        """Write the end of a job that the store could not take, once it can."""
        while not self._stopping:
            try:
                self.store.append_event(job.id, event.id, event.type, event.json.encode(), **fields)
            except Exception as error:
                log.debug("job %s: its end is not recorded yet: %s", job.id, error)
                await asyncio.sleep(RECORD_RETRY_S)
                continue
            log.info("job %s: its end is recorded", job.id)
            self._unrecorded.pop(job.id, None)
            self._background(self._on_disk(inputs.remove, self._inputs_folder(job)))
            if job.request.callback_url:
                self._background(self._deliver_webhook(job.id))
            return

    async def _train(self, job: Job, data: TrainingData) -> None:
        loop = asyncio.get_running_loop()
        request = job.request
        workers = self.workers[job.device]
        self._start(job, data)
        job.bridge = ProgressBridge(loop, functools.partial(self._report, job), job.rounds, self.progress_interval_s)
        limit_s = request.timeout_s or self.max_training_s
        deadline = loop.call_later(limit_s, job.time_out)
        job.stop_training = functools.partial(workers.stop, job.id)
        if job.cancel_requested:
            workers.stop(job.id)
        task = TrainTask(job.id, request.model_type, request.objective, request.params, str(self._inputs_folder(job)))
        try:
            outcome = await workers.run(task, job.bridge.report)
        except WorkerLost as lost:
            job.bridge.finish()
            self._run_again(job, lost.reason)
            return
        finally:
            deadline.cancel()
            job.stop_training = None
        job.bridge.finish()
        if isinstance(outcome, Failed):
            self._end(job, JobStatus.FAILED, "error", {"code": outcome.code, "message": outcome.message})
        elif outcome.cancelled and job.timed_out:
            message = f"training ran past its limit of {limit_s:g} s and stopped after round {outcome.iterations}"
            self._end(
                job, JobStatus.FAILED, "error", {"code": "timeout", "message": message, "iteration": outcome.iterations}
            )
        elif outcome.cancelled:
            self._end(job, JobStatus.CANCELLED, "cancelled", {"iteration": outcome.iterations})
        else:
            await self._succeed(job, data, outcome)

    async def _succeed(self, job: Job, data: TrainingData, outcome: Finished) -> None:
        assert outcome.artifact_id is not None and job.started_at is not None  # saved, and started
        request = job.request
        artifact = Artifact(outcome.artifact_id, outcome.blobs)
        format = request.artifact_format
        complete = event_data.complete(
            artifact, format, outcome, data, job.ingest_timings, job.started_at - job.created_at
        )
        complete["artifact"] = await self._on_disk(self.artifacts.encoded, artifact.artifact_id, format)
        self.store.insert_artifact(event_data.artifact_record(job.id, request, data, outcome, artifact, time.time()))
        self._end(
            job,
            JobStatus.SUCCEEDED,
            "complete",
            complete,
            artifact_id=artifact.artifact_id,
            metrics=outcome.metrics,
            iteration=outcome.iterations,
        )

    def _run_again(self, job: Job, reason: str) -> None:
        """Its worker died while it trained: back in the queue, first, or ended when it has died
        too often (`_on_run_done` puts it back)."""
        if job.attempts >= MAX_ATTEMPTS:
            message = f"{reason}, {job.attempts} times; it is not tried again"
            log.warning("job %s: %s", job.id, message)
            self._end(job, JobStatus.FAILED, "error", {"code": "interrupted", "message": message})
            return
        log.warning("job %s: %s; it runs again", job.id, reason)
        self._restarted(job, reason)

    def _restarted(self, job: Job, reason: str) -> None:
        """The job waits to run again from the start: its log says why."""
        job.status = JobStatus.QUEUED
        self._emit(
            job,
            "restarted",
            {"reason": reason, "attempts": job.attempts},
            status=job.status,
            iteration=0,
            elapsed_s=None,
            eta_s=None,
        )

    # The job's events: each written to the store with the row fields that change with it, then
    # appended to the live log

    def _emit(self, job: Job, event_type: str, data: dict[str, Any], **row_fields: Any) -> Event:
        data = {"job_id": job.id, **data}
        event = Event(len(job.events) + 1, event_type, orjson.dumps(data).decode())
        # The artifact is kept once, in its file; the stored event goes without it.
        stored = (
            orjson.dumps({k: v for k, v in data.items() if k != "artifact"})
            if "artifact" in data
            else event.json.encode()
        )
        self.store.append_event(job.id, event.id, event_type, stored, **row_fields)
        job.append(event)
        return event

    def _start(self, job: Job, data: TrainingData) -> None:
        job.status = JobStatus.RUNNING
        job.started_at = time.time()
        job.attempts += 1
        request = job.request
        device_name = self.availability[request.model_type].device_name
        started = event_data.started(request, device_name, job.attempts, data, job.rounds)
        self._emit(
            job,
            "started",
            started,
            status=job.status,
            started_at=job.started_at,
            attempts=job.attempts,
            iteration=0,
            elapsed_s=None,
            eta_s=None,
            metrics=None,
        )

    def _report(self, job: Job, progress: Progress) -> None:
        job.eta_s = progress.eta_s
        try:
            self._emit(job, "progress", event_data.progress(progress), **event_data.progress_fields(progress))
        except Exception as error:  # the store: rounds the job trains go unrecorded, and unsent
            if not job.progress_unrecorded:
                log.warning("job %s: could not record its progress (%s); it trains on", job.id, error)
            job.progress_unrecorded = True

    def _end(self, job: Job, status: JobStatus, event_type: str, data: dict[str, Any], **row_fields: Any) -> None:
        if status is JobStatus.FAILED:
            row_fields.update(error_code=data["code"], error_message=data["message"])
        job.status = status
        callback_state = "pending" if job.request.callback_url else None
        self._emit(
            job,
            event_type,
            data,
            status=status,
            finished_at=time.time(),
            eta_s=None,
            callback_state=callback_state,
            **row_fields,
        )
        del self._live[job.id]
        self._background(self._on_disk(inputs.remove, self._inputs_folder(job)))
        if job.request.callback_url:
            self._background(self._deliver_webhook(job.id))

    # Inputs on disk

    def _inputs_folder(self, job: Job) -> Path:
        return self.inputs_dir / job.id

    async def _save_inputs(self, job: Job, data: TrainingData) -> None:
        """Write the job's arrays for its worker: the job runs once they are written, or fails when
        they cannot be."""
        try:
            await self._on_disk(inputs.save, self._inputs_folder(job), data)
        except OSError as error:
            log.warning("job %s: could not keep its input on disk: %s", job.id, error)
            job.input_error = str(error)
        finally:
            job.input_saved.set()
        if job.finished:
            await self._on_disk(inputs.remove, self._inputs_folder(job))  # it ended while its input was written

    # After a restart

    def _recover(self, record: JobRecord) -> None:
        """A job the server was running or holding when it stopped, with the log it had written:
        back in the queue, or ended when it cannot run again."""
        trainer = self.trainers[record.model_type]
        job = Job(record.id, record.request, trainer, record.created_at)
        job.input_saved.set()  # from the server before: complete, or the job ends below
        job.status = record.status
        job.attempts = record.attempts
        for event in self.store.events(job.id):
            job.append(event)
        self._live[job.id] = job
        availability = self.availability[record.model_type]
        was = record.status.value
        if record.attempts >= MAX_ATTEMPTS:
            problem = f"the server stopped while this job ran, {record.attempts} times; it is not tried again"
        elif not inputs.complete(self._inputs_folder(job)):
            problem = "the server stopped before the job's input was kept on disk"
        elif not availability.available:
            problem = f"{record.model_type} cannot train on this server any more: {availability.reason}"
        else:
            log.info("job %s was %s when the server stopped; it runs again", job.id, was)
            self._restarted(job, f"the server restarted while the job was {was}")
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
        record = self.store.job(job_id)
        if record is None or record.request.callback_url is None:
            return
        state = await send_job_webhook(self.webhooks, self.webhook_policy, record)
        if self.store.job(job_id) is not None:  # it may have been deleted meanwhile
            self.store.update_job(job_id, callback_state=state)

    async def _with_artifact(self, complete_json: str) -> str:
        return await self._on_disk(self.artifacts.attach, complete_json)

    async def _on_disk(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._disk, function, *args)

    def _background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
