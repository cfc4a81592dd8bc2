"""A worker fed from Redis (`boostream worker --redis`): it takes its device's jobs from the shared
queue, runs each on a worker process of this machine (`local.LocalWorkers`, with its memory
limit and its stops that do not wait for a round), and writes the job's events, row and model
into Redis, where every API replica serves them.

Each slot takes one job at a time from the queue's consumer group, under this worker's id, and
acknowledges it once the job has ended; the worker's heartbeat key says it is alive. A worker
whose heartbeat has ended leaves its jobs pending: any other worker of the device claims them
and runs them again from the start (the log gets `restarted`, then `started` with the next
attempt), up to MAX_ATTEMPTS. A job whose worker process dies (and not the whole worker) runs
again at once on the same slot. Cancel is a field of the job that the worker looks at between
rounds; a time limit is the worker's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from boostream.jobs import event_data, inputs
from boostream.jobs.records import MAX_ATTEMPTS, JobRecord, JobStatus
from boostream.jobs.redis_state import (
    InputElsewhere,
    RedisState,
    Standing,
    Taken,
    new_token,
    outage_waited,
    persisted,
)
from boostream.models.artifacts import FORMATS, Artifact, ArtifactStore
from boostream.progress import Progress, ProgressBridge
from boostream.trainers.base import Availability, Backend
from boostream.views import availability_view
from boostream.workers.local import LocalWorkers, WorkerLost
from boostream.workers.task import Failed, TrainTask

log = logging.getLogger("boostream.workers")

CANCEL_CHECK_S = 0.2
T = TypeVar("T")


class RedisWorker:
    """
    :param pool: the worker processes that train (their slots are this worker's)
    :param work_dir: where a job's input and model wait on this machine while it runs
    :param dead_after_s: a worker silent this long is dead; its jobs go to others
    :param exit_when_idle_s: exit after this long with no job (None: never)
    """

    def __init__(
        self,
        state: RedisState,
        pool: LocalWorkers,
        trainers: Mapping[str, Backend],
        availability: Mapping[str, Availability],
        artifacts: ArtifactStore,
        *,
        worker_id: str,
        work_dir: Path,
        max_training_s: float,
        progress_interval_s: float = 0.1,
        dead_after_s: float = 5.0,
        exit_when_idle_s: float | None = None,
    ) -> None:
        self.state = state
        self.pool = pool
        self.device = pool.device
        self.trainers = trainers
        self.availability = availability
        self.artifacts = artifacts
        self.worker_id = worker_id
        self.work_dir = work_dir
        self.max_training_s = max_training_s
        self.progress_interval_s = progress_interval_s
        self.dead_after_s = dead_after_s
        self.exit_when_idle_s = exit_when_idle_s
        self._busy = 0
        self._stopping = False
        # Jobs of dead workers, claimed for slots that were free: they take them before the queue.
        self._handed: asyncio.Queue[Taken] = asyncio.Queue()
        self._standing = Standing(dead_after_s)
        self._idle_since = time.monotonic()
        self._started_at = time.time()

    async def run(self) -> None:
        """Work until cancelled, or idle for `exit_when_idle_s`."""
        await self.state.ensure_group(self.device)
        await self.state.mark_served(self.device)
        await self.pool.start()
        tasks = [asyncio.ensure_future(self._heartbeat()), asyncio.ensure_future(self._claim_forever())]
        tasks += [asyncio.ensure_future(self._slot()) for _ in range(self.pool.slots)]
        try:
            while not self._idle_long_enough():
                await asyncio.sleep(0.1)
            log.info("worker %s: no job for %g s; exiting", self.worker_id, self.exit_when_idle_s)
        finally:
            self._stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)
            await self.pool.close()
            # Its jobs stay pending, to be claimed by another worker: at once, now that it is gone.
            with contextlib.suppress(Exception):
                await self.state.forget_worker(self.worker_id)

    def _idle_long_enough(self) -> bool:
        if self.exit_when_idle_s is None or self._busy:
            return False
        return time.monotonic() - self._idle_since >= self.exit_when_idle_s

    # Taking jobs

    async def _slot(self) -> None:
        while not self._stopping:
            if not self._handed.empty():
                await self._run(self._handed.get_nowait())
                continue
            async with self._redis_may_fail("taking a job", any_error=True):
                taken = await self.state.take(self.device, self.worker_id, block_ms=500)
                if taken is not None:
                    await self._run(taken)

    async def _claim_forever(self) -> None:
        """Take over the jobs of workers that died, as many as this worker has slots free: a job
        claimed says `started` only when it can train."""
        while not self._stopping:
            await asyncio.sleep(self.dead_after_s / 2)
            free = self.pool.slots - self._busy - self._handed.qsize()
            if free <= 0 or not self._standing.may_claim:
                continue
            async with self._redis_may_fail("looking for the jobs of dead workers", any_error=True):
                alive = set(await self.state.workers())
                for taken in await self.state.claim_from_dead(self.device, self.worker_id, alive, limit=free):
                    log.warning("worker %s: job %s was left by a worker that died", self.worker_id, taken.job_id)
                    self._handed.put_nowait(taken)

    async def _heartbeat(self) -> None:
        while not self._stopping:
            view = {
                "device": self.device,
                "slots": self.pool.slots,
                "busy": self._busy,
                "started_at": self._started_at,
                "heartbeat_at": time.time(),
                "backends": {name: availability_view(a, self.device) for name, a in self.availability.items()},
            }
            beat = self.state.heartbeat(self.worker_id, view, ttl_ms=int(self.dead_after_s * 1000))
            await self._standing.renew(beat, log, f"worker {self.worker_id}")
            await asyncio.sleep(self.dead_after_s / 5)

    def _redis_may_fail(self, doing: str, any_error: bool = False) -> contextlib.AbstractAsyncContextManager[None]:
        return outage_waited(log, f"worker {self.worker_id}", doing, lambda: self._stopping, any_error)

    async def _persist(self, doing: str, write: Callable[[], Awaitable[T]]) -> T:
        """A Redis call that must not be lost (an event, a model): made again until Redis answers."""
        return await persisted(write, lambda: self._redis_may_fail(doing))

    # Running one

    async def _run(self, taken: Taken) -> None:
        self._busy += 1
        scratch = self.work_dir / taken.job_id
        ended = True
        try:
            with contextlib.suppress(Exception):  # a courtesy to the jobs behind it: never in its way
                await self.state.announce_positions(self.device)
            await self._run_until_ended(taken, scratch)
        except asyncio.CancelledError:  # this worker is stopping: the entry stays pending, for another
            ended = False
            raise
        except Exception:
            log.exception("job %s: the worker failed while running it", taken.job_id)
            message = "the worker failed while running this job; see its log"
            try:
                await self._end(taken.job_id, "error", code="internal_error", message=message)
            except Exception:  # not ended: the entry stays pending, for this worker's successor
                log.exception("job %s: could not end it", taken.job_id)
                ended = False
        finally:
            self._busy -= 1
            self._idle_since = time.monotonic()
            await asyncio.to_thread(shutil.rmtree, scratch, True)
            if ended:
                await self._done(taken)

    async def _run_until_ended(self, taken: Taken, scratch: Path) -> None:
        """Run the job until it ends. One whose worker process died runs again here at once,
        ahead of the jobs that wait (as the one-process server puts it first in its queue), and
        so does one that Redis failed before it trained; its entry stays this worker's."""
        again = taken.deliveries > 1  # claimed from a worker that died: it may have started
        while True:
            try:
                record = await self.state.job(taken.job_id)
                if record is None or record.status.finished:
                    return
                if record.status is JobStatus.RUNNING and not again:
                    return  # an entry queued twice (a resent XADD): the job runs where it was taken first
                if not await self._train(record, scratch):
                    return
            except (RedisConnectionError, RedisTimeoutError) as error:  # not a local OSError: that fails the job
                if self._stopping:
                    raise asyncio.CancelledError from error
                log.warning("job %s: Redis failed (%s); it runs again once Redis answers", taken.job_id, error)
                await asyncio.sleep(1.0)
            again = True

    async def _done(self, taken: Taken) -> None:
        """Off the queue: until then, the entry is this (live) worker's, and nobody would run it."""
        await self._persist("taking a job off the queue", lambda: self.state.done(self.device, taken.entry_id))

    async def _train(self, record: JobRecord, scratch: Path) -> bool:
        """Run the job once; whether it must run again (its worker process died). `scratch`: where
        its table may be written while it runs."""
        job_id, request = record.id, record.request
        if record.status is JobStatus.RUNNING:  # its last worker died, or stopped, while it trained
            if record.attempts >= MAX_ATTEMPTS:
                message = f"its worker died while it trained, {record.attempts} times; it is not tried again"
                await self._end(record.id, "error", code="interrupted", message=message)
                return False
            reason = "the worker training it stopped, or died"
            await self.state.append_event(
                job_id, "restarted", {"reason": reason, "attempts": record.attempts}, status=JobStatus.QUEUED
            )
        try:
            found = await self.state.get_input(job_id, scratch)
        except InputElsewhere as elsewhere:
            await self._end(record.id, "error", code="interrupted", message=str(elsewhere))
            return False
        data = None if found is None else await asyncio.to_thread(inputs.load, found)
        if found is None or data is None:
            await self._end(record.id, "error", code="interrupted", message="the job's input is gone")
            return False
        attempt, started_at = record.attempts + 1, time.time()
        started = event_data.started(
            request, self.availability[request.model_type].device_name, attempt, data, record.total
        )
        written = await self.state.append_event(
            job_id, "started", started, only_if=JobStatus.QUEUED,
            status=JobStatus.RUNNING, started_at=started_at, attempts=attempt, iteration=0, elapsed_s=None,
            eta_s=None, metrics=None,
        )  # fmt: skip
        if written <= 0:  # cancelled while it waited (or another worker has it: only one starts it)
            return False
        outcome, timed_out, limit_s = await self._fit(record, found)
        if outcome is None:
            return True  # the log says so
        if isinstance(outcome, Failed):
            await self._end(record.id, "error", code=outcome.code, message=outcome.message)
        elif outcome.cancelled and timed_out:
            message = f"training ran past its limit of {limit_s:g} s and stopped after round {outcome.iterations}"
            await self._end(record.id, "error", code="timeout", message=message, iteration=outcome.iterations)
        elif outcome.cancelled:
            await self._end(record.id, "cancelled", iteration=outcome.iterations)
        else:
            assert outcome.artifact_id is not None
            artifact = Artifact(outcome.artifact_id, outcome.blobs)
            files = {
                format: await asyncio.to_thread(self.artifacts.read, artifact.artifact_id, format) for format in FORMATS
            }
            created = time.time()
            stored = event_data.artifact_record(job_id, request, data, outcome, artifact, created)
            await self._persist("keeping the model", lambda: self.state.put_artifact(stored, files))
            self.artifacts.delete(artifact.artifact_id)
            ingest_timings = await self._persist("reading the job", lambda: self.state.ingest_timings(job_id))
            complete = event_data.complete(
                artifact, request.artifact_format, outcome, data, ingest_timings, started_at - record.created_at
            )
            token = new_token()  # the same on every try: a try whose answer was lost is not made twice
            ended = await self._persist("ending the job", lambda: self.state.append_event(
                job_id, "complete", complete, terminal=True, status=JobStatus.SUCCEEDED, finished_at=created,
                artifact_id=artifact.artifact_id, metrics=outcome.metrics, iteration=outcome.iterations, eta_s=None,
                token=token,
            ))  # fmt: skip
            now = await self._persist("reading the job", lambda: self.state.job(job_id))
            if ended <= 0 and (now is None or now.artifact_id != artifact.artifact_id):
                # the job was deleted, or ended otherwise, meanwhile: nobody owns this model
                await self._persist("deleting a model", lambda: self.state.delete_artifact(artifact.artifact_id))
        await self._persist("dropping the job's table", lambda: self.state.drop_input(job_id))
        return False

    async def _fit(self, record: JobRecord, folder: Path) -> tuple[Any, bool, float]:
        """The job's outcome from a worker process (None when it must run again), whether its
        time limit stopped it, and that limit."""
        loop = asyncio.get_running_loop()
        job_id = record.id
        writes: asyncio.Queue[Progress | None] = asyncio.Queue()  # in order, one writer
        writer = asyncio.ensure_future(self._write_progress(job_id, writes))
        bridge = ProgressBridge(loop, writes.put_nowait, record.total, self.progress_interval_s)
        limit_s = record.request.timeout_s or self.max_training_s
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            self.pool.stop(job_id)

        deadline = loop.call_later(limit_s, time_out)
        watch = asyncio.ensure_future(self._watch_cancel(job_id))
        request = record.request
        task = TrainTask(job_id, request.model_type, request.objective, request.params, str(folder))
        try:
            outcome = await self.pool.run(task, bridge.report)
        except WorkerLost as lost:
            if record.attempts + 1 >= MAX_ATTEMPTS:
                message = f"{lost.reason}, {record.attempts + 1} times; it is not tried again"
                return Failed("interrupted", message), False, limit_s
            log.warning("job %s: %s; it runs again", job_id, lost.reason)
            await self.state.append_event(
                job_id, "restarted", {"reason": lost.reason, "attempts": record.attempts + 1}, status=JobStatus.QUEUED
            )
            return None, False, limit_s
        finally:
            deadline.cancel()
            watch.cancel()
            bridge.finish()
            writes.put_nowait(None)
            await writer
        return outcome, timed_out, limit_s

    async def _watch_cancel(self, job_id: str) -> None:
        asked = False
        while not asked:
            await asyncio.sleep(CANCEL_CHECK_S)
            # A cancel asked during an outage of Redis is seen after it.
            async with self._redis_may_fail("looking for a cancel", any_error=True):
                asked = await self.state.cancel_requested(job_id)
        self.pool.stop(job_id)

    async def _write_progress(self, job_id: str, writes: asyncio.Queue[Progress | None]) -> None:
        while (delivered := await writes.get()) is not None:
            data, fields = event_data.progress(delivered), event_data.progress_fields(delivered)
            token = new_token()
            write = functools.partial(self.state.append_event, job_id, "progress", data, token=token, **fields)
            await self._persist("writing progress", write)

    async def _end(self, job_id: str, event_type: str, **data: Any) -> None:
        status = {"error": JobStatus.FAILED, "cancelled": JobStatus.CANCELLED}[event_type]
        fields: dict[str, Any] = {"status": status, "finished_at": time.time(), "eta_s": None}
        if event_type == "error":
            fields.update(error_code=data["code"], error_message=data["message"])
        token = new_token()
        await self._persist("ending the job", lambda: self.state.append_event(
            job_id, event_type, data, terminal=True, token=token, **fields
        ))  # fmt: skip
        await self._persist("dropping the job's table", lambda: self.state.drop_input(job_id))

