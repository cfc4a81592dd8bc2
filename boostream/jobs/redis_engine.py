"""The job engine of an API replica (`boostream serve --redis`): job state in Redis, shared with
the other replicas and with the workers (`boostream worker`), which do all the training. It
offers what `engine.JobEngine` promises, from whichever replica a client reaches:

- a submitted job is kept (record, table, first event) and queued on its device's stream; a full
  queue is refused (QueueFull), and so is a job for a device no worker serves (Unavailable);
- events are read from the job's stream: a client resumes with `Last-Event-ID` on any replica;
- cancel ends a waiting job at once (only if it is still waiting: one script decides), and asks
  the worker of a running one to stop after its round;
- artifacts are served from Redis;
- each webhook is sent by one replica: a job that ends with a callback is added to a stream that
  the replicas read as one consumer group; a replica that dies with webhooks unsent (its heartbeat
  ends) leaves them to another;
- finished jobs expire after `job_ttl_s`, with their events and models (any replica removes them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import shutil
import time
import uuid
from collections.abc import AsyncGenerator, Coroutine, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson

from boostream.config import WHEN_NO_WORKER
from boostream.errors import QueueFull, StoreUnreachable, Unavailable
from boostream.jobs.queue import RETRY_AFTER_UNKNOWN_S
from boostream.jobs.records import Event, JobRecord, JobRequest, JobsSummary, JobStatus
from boostream.jobs.redis_state import (
    UNREACHABLE,
    RedisState,
    Standing,
    Taken,
    outage_waited,
    persisted,
    reachable,
)
from boostream.jobs.webhooks import WebhookPolicy, WebhookSender, send_job_webhook
from boostream.models.artifacts import ArtifactRecord
from boostream.trainers.base import Backend, TrainingData

log = logging.getLogger("boostream.jobs")

DEVICES = ("cpu", "gpu")
REPLICA_DEAD_AFTER_S = 10.0  # a replica silent this long is gone: its unsent webhooks go to others
WEBHOOKS_IN_FLIGHT = 100  # webhooks one replica sends at once
EXPIRY_BATCH = 100
P = ParamSpec("P")
T = TypeVar("T")


class RedisEngine:
    """
    :param max_queued: jobs that may wait per device, over all replicas
    :param max_input_bytes: the largest table a job may keep in Redis
    :param job_ttl_s: how long a finished job, its events and its model are kept
    :param webhooks: sends the callbacks; `webhook_policy`: the hosts they may go to
    :param when_no_worker: what a job gets while no worker for its device is up (Settings')
    """

    def __init__(
        self,
        state: RedisState,
        trainers: Mapping[str, Backend],
        *,
        max_queued: int,
        max_input_bytes: int,
        job_ttl_s: float,
        webhooks: WebhookSender,
        webhook_policy: WebhookPolicy,
        when_no_worker: str = "auto",
    ) -> None:
        if when_no_worker not in WHEN_NO_WORKER:
            raise ValueError(f"when_no_worker is one of {WHEN_NO_WORKER}, not {when_no_worker!r}")
        self.state = state
        self.trainers = trainers
        self.max_queued = max_queued
        self.max_input_bytes = max_input_bytes
        self.job_ttl_s = job_ttl_s
        self.webhooks = webhooks
        self.webhook_policy = webhook_policy
        self.when_no_worker = when_no_worker
        self.replica_id = uuid.uuid4().hex[:12]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sending: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._standing = Standing(REPLICA_DEAD_AFTER_S)
        self._tails: dict[str, _Tail] = {}  # the jobs this replica's clients follow live

    async def start(self) -> None:
        await self.state.check_policy()
        for device in DEVICES:
            await self.state.ensure_group(device)
        await self.state.ensure_webhook_group()
        await self.state.replica_alive(self.replica_id, int(REPLICA_DEAD_AFTER_S * 1000))
        for loop in (self._heartbeat, self._take_webhooks, self._claim_webhooks, self._expire):
            self._background(loop())

    async def shutdown(self) -> None:
        self._stopping = True
        tasks = {*self._tasks, *self._sending}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        # Webhooks it had taken and not sent are left to the other replicas: at once.
        with contextlib.suppress(*UNREACHABLE):
            await self.state.forget_replica(self.replica_id)
        await self.webhooks.aclose()
        await self.state.close()

    @reachable
    async def submit(
        self,
        request: JobRequest,
        data: TrainingData,
        ingest_timings: dict[str, float],
        saved_at: Path | None = None,
        owner: str | None = None,
    ) -> JobRecord:
        device = self.trainers[request.model_type].device
        served = device in await self._served_devices()
        if not served and not await self._may_wait(device):
            start = f"boostream worker --redis URL --device {device}"
            raise Unavailable(f"no {device.upper()} worker is running: start one with `{start}`")
        waiting = (await self.state.counts(device))["waiting"]
        if waiting >= self.max_queued:
            raise QueueFull(
                f"{self.max_queued} {device.upper()} jobs are already waiting; try again later", RETRY_AFTER_UNKNOWN_S
            )
        record = JobRecord(
            id=uuid.uuid4().hex,
            status=JobStatus.QUEUED,
            model_type=request.model_type,
            objective=request.objective,
            device=device,
            request=request,
            created_at=time.time(),
            total=self.trainers[request.model_type].rounds(request.params),
            owner=owner,
        )
        await self.state.put_input(record.id, data, self.max_input_bytes, saved_at)  # first: it may be too large
        try:
            record = await self._queue(record, ingest_timings, waiting, served)
        except BaseException:
            with contextlib.suppress(Exception):  # no job will ever drop it
                await self.state.drop_input(record.id)
            raise
        if saved_at is not None:  # the decoder's copy, unless it was moved: the table is kept now
            await asyncio.to_thread(shutil.rmtree, saved_at, True)
        return dataclasses.replace(record, waiting_for_worker=not served)

    async def _queue(
        self, record: JobRecord, ingest_timings: dict[str, float], waiting: int, served: bool
    ) -> JobRecord:
        """Keep the job's record, its first event, and its place in its device's queue."""
        device = record.device
        record = await self.state.insert_job(record, ingest_timings)
        queued: dict[str, Any] = {"position": waiting + 1, "device": device}
        if not served:
            queued.update(waiting_for_worker=True, reason=f"no {device.upper()} worker is up; the job waits for one")
        await self.state.append_event(record.id, "queued", queued)
        await self.state.enqueue(device, record.id)
        return record

    @reachable
    async def job(self, job_id: str) -> JobRecord | None:
        record = await self.state.job(job_id)
        return None if record is None else (await self._as_now([record]))[0]

    @reachable
    async def jobs(
        self, statuses: list[str], limit: int, before_seq: int | None, owner: str | None = None
    ) -> list[JobRecord]:
        return await self._as_now(await self.state.jobs(statuses, limit, before_seq, owner))

    async def _as_now(self, records: list[JobRecord]) -> list[JobRecord]:
        """The records, those waiting for a worker that is not up saying so."""
        if not any(record.status is JobStatus.QUEUED for record in records):
            return records
        served = await self._served_devices()
        return [
            dataclasses.replace(record, waiting_for_worker=True)
            if record.status is JobStatus.QUEUED and record.device not in served
            else record
            for record in records
        ]

    async def _served_devices(self) -> set[str]:
        """The devices that a live worker serves."""
        return {view["device"] for view in (await self.state.workers()).values() if view["slots"] > 0}

    async def _may_wait(self, device: str) -> bool:
        """Whether a job may wait while no worker for `device` is up."""
        if self.when_no_worker == "auto":
            return await self.state.ever_served(device)
        return self.when_no_worker == "wait"

    async def events(self, job_id: str, after: int) -> AsyncGenerator[Event, None]:
        position = after
        for event in await self.state.events(job_id, after):  # what the client missed
            yield await self._with_artifact(event) if event.type == "complete" else event
            position = event.id
            if event.terminal:
                return
        tail = self._tails.get(job_id)
        if tail is None or tail.failed:  # none yet, or one that Redis failed: a new one
            # From an id the job has: a client's Last-Event-ID may be ahead of it.
            start = min(position, await self.state.last_event_id(job_id))
            tail = self._tails[job_id] = _Tail(job_id, start, self)
        tail.followers += 1
        try:
            if position < tail.start:  # the tail began after this client's replay: what lies between
                for event in await self.state.events(job_id, position):
                    if event.id > tail.start:
                        break
                    yield await self._with_artifact(event) if event.type == "complete" else event
                    position = event.id
            async for event in tail.after(position):
                yield event
        finally:
            tail.followers -= 1
            if not tail.followers:
                tail.stop()
                if self._tails.get(job_id) is tail:
                    del self._tails[job_id]

    @reachable
    async def has_events_after(self, job_id: str, after: int) -> bool:
        return bool(await self.state.events(job_id, after))

    @reachable
    async def cancel(self, job_id: str) -> JobStatus:
        ended = await self.state.append_event(
            job_id, "cancelled", {"iteration": 0}, terminal=True, only_if=JobStatus.QUEUED,
            status=JobStatus.CANCELLED, finished_at=time.time(), eta_s=None,
        )  # fmt: skip
        if ended > 0:  # it was waiting: off its queue (a worker that took it already skips it)
            record = await self.state.job(job_id)
            if record is not None:
                await self.state.unqueue(record.device, job_id)
            await self.state.drop_input(job_id)
            return JobStatus.CANCELLED
        if ended < 0:  # deleted meanwhile
            return JobStatus.CANCELLED
        await self.state.request_cancel(job_id)
        record = await self.state.job(job_id)
        return record.status if record is not None else JobStatus.CANCELLED

    def client_left(self, job_id: str, client: str, cancel: bool) -> None:
        if cancel:
            log.info("job %s: %s left; cancelling at the next round", job_id, client)
            self._background(self.cancel(job_id))
        else:
            log.info("job %s: %s left", job_id, client)

    @reachable
    async def delete(self, job_id: str) -> None:
        await self.state.delete_job(job_id)

    @reachable
    async def result(self, job_id: str) -> str:
        last = (await self.state.events(job_id))[-1]
        return (await self._with_artifact(last)).json

    @reachable
    async def artifact(self, artifact_id: str) -> ArtifactRecord | None:
        return await self.state.artifact(artifact_id)

    @reachable
    async def artifact_file(self, artifact_id: str, format: str) -> bytes:
        content = await self.state.artifact_file(artifact_id, format)
        if content is None:
            raise FileNotFoundError(artifact_id)
        return content

    @reachable
    async def summary(self) -> list[JobsSummary]:
        return await self.state.summary()

    async def counts(self) -> dict[str, dict[str, int]]:
        workers = (await self.state.workers()).values()
        counts = {}
        for device in DEVICES:
            queue = await self.state.counts(device)
            counts[device] = {
                "running": queue["taken"],
                "queued": queue["waiting"],
                "limit": sum(view["slots"] for view in workers if view["device"] == device),
                "max_queued": self.max_queued,
            }
        return counts

    @reachable
    async def worker_views(self) -> list[dict[str, Any]]:
        return [{"id": worker_id, **view} for worker_id, view in sorted((await self.state.workers()).items())]

    async def _with_artifact(self, event: Event) -> Event:
        complete = orjson.loads(event.json)
        content = await self.state.artifact_file(complete["artifact_id"], complete["format"])
        complete["artifact"] = None if content is None else base64.b64encode(content).decode("ascii")
        return Event(event.id, event.type, orjson.dumps(complete).decode())

    # Housekeeping, shared by the replicas

    async def _heartbeat(self) -> None:
        while not self._stopping:
            beat = self.state.replica_alive(self.replica_id, int(REPLICA_DEAD_AFTER_S * 1000))
            await self._standing.renew(beat, log, f"replica {self.replica_id}")
            await asyncio.sleep(REPLICA_DEAD_AFTER_S / 5)

    async def _take_webhooks(self) -> None:
        while not self._stopping:
            async with self._redis_may_fail("reading the jobs that owe a webhook"):
                room = WEBHOOKS_IN_FLIGHT - len(self._sending)
                if room <= 0:
                    await asyncio.sleep(0.1)
                    continue
                for taken in await self.state.take_ended(self.replica_id, room):
                    self._send_webhook(taken)

    async def _claim_webhooks(self) -> None:
        while not self._stopping:
            await asyncio.sleep(REPLICA_DEAD_AFTER_S / 2)
            if not self._standing.may_claim:
                continue
            async with self._redis_may_fail("looking for the webhooks of replicas that stopped"):
                for taken in await self.state.claim_ended(self.replica_id):
                    log.info("job %s: sending the webhook a replica that stopped had not sent", taken.job_id)
                    self._send_webhook(taken)

    def _send_webhook(self, taken: Taken) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver_webhook(taken))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver_webhook(self, taken: Taken) -> None:
        # The Redis parts are made again until they are done: the webhook is owed until then.
        job_id = taken.job_id
        record = await persisted(lambda: self.state.job(job_id), lambda: self._redis_may_fail(f"reading job {job_id}"))
        if record is not None and record.request.callback_url is not None:
            state = await send_job_webhook(self.webhooks, self.webhook_policy, record)
            await persisted(
                lambda: self.state.update_job(job_id, callback_state=state),
                lambda: self._redis_may_fail(f"keeping job {job_id}'s webhook state"),
            )
        await persisted(
            lambda: self.state.ended_done(taken.entry_id),
            lambda: self._redis_may_fail(f"marking job {job_id}'s webhook sent"),
        )

    async def _expire(self) -> None:
        period = min(self.job_ttl_s / 4, 600.0)
        while not self._stopping:
            async with self._redis_may_fail("removing expired jobs"):
                removed, cutoff = 0, time.time() - self.job_ttl_s
                while expired := await self.state.finished_before(cutoff, EXPIRY_BATCH):
                    for job_id in expired:
                        await self.state.delete_job(job_id)
                    removed += len(expired)
                if removed:
                    ttl = self.job_ttl_s
                    log.info("removed %d jobs that finished more than %g s ago, with their models", removed, ttl)
            await asyncio.sleep(period)

    def _redis_may_fail(self, doing: str) -> contextlib.AbstractAsyncContextManager[None]:
        return outage_waited(log, f"replica {self.replica_id}", doing, lambda: self._stopping, any_error=True)

    def _background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Tail:
    """A job's live events on one replica, read from Redis once for all the clients that follow
    it there (with its artifact, once): one command per wake-up, not one per client. Its events
    are kept until the last client leaves; each client reads them at its own pace."""

    def __init__(self, job_id: str, start: int, engine: RedisEngine) -> None:
        self.job_id = job_id
        self.start = start  # the id before the first event this tail holds
        self.followers = 0
        self._events: list[Event] = []
        self._changed = asyncio.Event()
        self._ended = False
        self._error: str | None = None
        self._task = asyncio.get_running_loop().create_task(self._read(engine))

    async def after(self, position: int) -> AsyncGenerator[Event, None]:
        """The events after `position` (at least `start`), until the job's end."""
        while True:
            changed = self._changed
            for event in self._events[max(0, position - self.start) :]:
                if event.id <= position:
                    continue
                yield event
                position = event.id
                if event.terminal:
                    return
            if self._error is not None:
                raise StoreUnreachable(self._error)
            if self._ended:
                return
            await changed.wait()

    def stop(self) -> None:
        self._task.cancel()

    async def _read(self, engine: RedisEngine) -> None:
        position = self.start
        try:
            while True:
                events = await engine.state.next_events(self.job_id, position)
                if events is None:
                    break  # deleted meanwhile
                for event in events:
                    self._events.append(await engine._with_artifact(event) if event.type == "complete" else event)
                    position = event.id
                if events:
                    self._notify()
                if events and events[-1].terminal:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as error:  # Redis out of reach: its clients' streams end, and they resume elsewhere
            self._error = f"the job store (Redis) cannot be reached ({error}); try again"
        self._ended = True
        self._notify()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

