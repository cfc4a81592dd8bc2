"""Job state in Redis, shared by API replicas and workers on any machines: job records, each job's
event log, the device queues, the tables waiting to be trained on, the artifacts, and the workers'
heartbeats. Built on Redis's own machinery, not a scheduler of ours:

- a job's log is a Stream whose entry ids are `0-1`, `0-2`, ...: the event ids clients see, so
  `Last-Event-ID: 5` is `XREAD ... 0-5`, from any replica, with no gap and no duplicate. One script
  (`APPEND_EVENT`) appends an event and the row fields that change with it, atomically, and
  refuses anything after a terminal event: whoever writes (an API replica cancelling a waiting
  job, the worker that runs it), a job ends once;
- a device's queue is a Stream read by the consumer group `workers`: delivery in arrival order,
  entries pending until the worker that took them acknowledges them, and a dead worker's entries
  claimed by another (`claim_from_dead`: its heartbeat key expired);
- tables and models cross machines as bytes (`.npy` arrays, the artifact's files), under a size
  limit.

Keys are under a prefix (`boostream:` by default). Values in a job's hash are JSON; the hash
holds a JobRecord's fields plus `last_event`. Nothing here may be evicted: `check_policy` refuses
a server whose `maxmemory-policy` could.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import io
import json
import logging
import secrets
import shutil
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from boostream.errors import StoreUnreachable, TooLarge
from boostream.jobs import inputs
from boostream.jobs.records import FOUND_WHEN_READ, Event, JobRecord, JobRequest, JobsSummary, JobStatus
from boostream.models.artifacts import ArtifactRecord, StoredBlob
from boostream.models.signing import configured_key
from boostream.trainers.base import TrainingData

T = TypeVar("T")
P = ParamSpec("P")
GROUP = "workers"
SLICE_BYTES = 64 * 1024**2  # the most of a table sent in one Redis command
# Each client following a job's events holds a connection while it waits for the next (XREAD
# BLOCK): redis-py's default of 100 per process refused the 101st follower of a replica.
MAX_CONNECTIONS = 10_000
SUMMARY_PAGE = 1000
WEBHOOK_GROUP = "webhooks"  # API replicas, reading the jobs that ended and owe a webhook
# The policies that never evict a key; any other can drop a job's log or its model under memory
# pressure.
SAFE_POLICIES = ("noeviction",)

# KEYS: the job's hash, its event stream, the stream of ended jobs that owe a webhook, the sorted
# set of finished jobs. ARGV: the event's type, its data (JSON), "1" when it is terminal, the job's
# id, the status (JSON) the job must have or "", the time now, a token naming this write, then the
# row's fields and values (JSON). Returns the new event's id; 0 when the job has ended already, or
# has not the status asked for (nothing was written); -1 when there is no such job. A write sent
# again with its token (redis-py resends a command whose answer a dropped connection lost) returns
# the id it got the first time, and writes nothing.
APPEND_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'last_write') == ARGV[7] then
  return tonumber(redis.call('HGET', KEYS[1], 'last_event'))
end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '"queued"' and status ~= '"running"' then return 0 end
if ARGV[5] ~= '' and status ~= ARGV[5] then return 0 end
local id = redis.call('HINCRBY', KEYS[1], 'last_event', 1)
redis.call('XADD', KEYS[2], '0-' .. id, 'type', ARGV[1], 'data', ARGV[2])
redis.call('HSET', KEYS[1], 'last_write', ARGV[7])
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[4])
  if redis.call('HGET', KEYS[1], 'callback') == '1' then
    redis.call('HSET', KEYS[1], 'callback_state', '"pending"')
    redis.call('XADD', KEYS[3], '*', 'job_id', ARGV[4])
  end
end
return id
"""

# KEYS: the job's hash. ARGV: fields and values. Sets them only while the job exists (a job deleted
# meanwhile must not come back as a hash of a few fields). Returns 1 when set.
UPDATE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
# Redis answering but refusing writes for a while: a replica being promoted (READONLY), memory full
# under noeviction (OOM, until jobs end or expire). Waited out like an outage by what must be kept.
REFUSING = (ReadOnlyError, OutOfMemoryError)


def reachable(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis out of reach (restarting, say) is a refusal a client can retry, not a crash."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnreachable(f"the job store (Redis) cannot be reached ({error}); try again") from None

    return call


@contextlib.asynccontextmanager
async def outage_waited(
    log: logging.Logger, who: str, doing: str, stopping: Callable[[], bool], any_error: bool = False
) -> AsyncIterator[None]:
    """For the loops of workers and replicas: Redis out of reach for a while (restarting, say) is
    logged and waited out, and the loop goes on where it was; unless `who` is stopping. With
    `any_error`, any other error too (logged with its traceback): a loop that must never end."""
    try:
        yield
    except (*UNREACHABLE, *REFUSING) as error:
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # Python 3.11
        if stopping() or (cancelling is not None and cancelling()):
            # redis-py can report a command cut short by a cancel as a lost connection
            raise asyncio.CancelledError from error
        log.warning("%s: Redis failed while %s (%s); trying again in 1 s", who, doing, error)
        await asyncio.sleep(1.0)
    except Exception:
        if not any_error or stopping():
            raise
        log.exception("%s: failed while %s; trying again in 1 s", who, doing)
        await asyncio.sleep(1.0)


def new_token() -> str:
    """A name for one write (`append_event`), to be given again if it must be made again."""
    return secrets.token_hex(8)


async def persisted(write: Callable[[], Awaitable[T]], waited: Callable[[], AbstractAsyncContextManager[None]]) -> T:
    """What `write` returns, made again until it succeeds: what must not be lost (an event, a
    model, a webhook owed). `waited()` (an `outage_waited`) says which failures are waited out."""
    while True:
        async with waited():
            return await write()


class Standing:
    """Whether a process may claim what processes that look dead held (their heartbeat has
    ended): only once its own heartbeat has been renewed without a break for a heartbeat's whole
    life. After an outage of Redis, or a restart that outlived the heartbeats, every live process
    has renewed its own by then, so none is taken for dead."""

    def __init__(self, life_s: float) -> None:
        self.life_s = life_s
        self._since: float | None = None

    def renewed(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def broken(self) -> None:
        self._since = None

    async def renew(self, beat: Awaitable[None], log: logging.Logger, who: str) -> None:
        """Make one heartbeat, and keep the standing it gives, or lose it with the heartbeat."""
        try:
            await beat
            self.renewed()
        except Exception as error:
            self.broken()
            log.warning("%s: could not say it is alive (%s)", who, error)

    @property
    def may_claim(self) -> bool:
        return self._since is not None and time.monotonic() - self._since >= self.life_s


# KEYS: a device's queue. ARGV: the group, the key prefix, the device. Appends a `queued` event with
# its position (1 = next) to each job still waiting on the queue (after the group's last delivered
# entry), all at once, so that two workers taking jobs together never leave a stale position last.
# It reads the jobs' keys from their ids (one Redis server, not a cluster). Returns how many.
ANNOUNCE_POSITIONS = """
local last = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #group, 2 do
    if group[i] == 'name' and group[i + 1] ~= ARGV[1] then break end
    if group[i] == 'last-delivered-id' then last = group[i + 1] end
  end
end
if last == nil then return 0 end
local position = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1000)) do
  local job_id = entry[2][2]
  local job = ARGV[2] .. 'job:' .. job_id
  if redis.call('HGET', job, 'status') == '"queued"' then
    position = position + 1
    local id = redis.call('HINCRBY', job, 'last_event', 1)
    local data = '{"job_id": "' .. job_id .. '", "position": ' .. position .. ', "device": "' .. ARGV[3] .. '"}'
    redis.call('XADD', job .. ':events', '0-' .. id, 'type', 'queued', 'data', data)
  end
end
return position
"""


def redacted(url: str) -> str:
    """The URL without its password (user:password@, or ?password=), to be logged or shown."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        user = f"{parts.username}:***@" if parts.username else ":***@"
        parts = parts._replace(netloc=user + parts.netloc.rsplit("@", 1)[1])
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):
        shown = [(name, "***" if name == "password" else value) for name, value in query]
        parts = parts._replace(query=urllib.parse.urlencode(shown, safe="*"))
    return parts.geturl()


# Heartbeats are timed by Redis's clock, not each machine's (a machine whose clock is behind would
# look dead to the others). HEARTBEAT: KEYS the sorted set of members by when their heartbeat ends,
# the member's key; ARGV the member, its view (JSON), its life in ms. LIVING: KEYS the sorted set;
# drops the members whose heartbeat has ended, and returns the others.
HEARTBEAT = """
local now = redis.call('TIME')
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
"""
LIVING = """
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now[1] * 1000 + math.floor(now[2] / 1000))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class PolicyRefused(Exception):
    """The Redis server could evict job data."""


class InputElsewhere(Exception):
    """The job's table is where this process cannot read it."""


@dataclasses.dataclass(frozen=True)
class Taken:
    """A queue entry a worker took: which job, and how many times it was delivered."""

    entry_id: str
    job_id: str
    deliveries: int = 1


class RedisState:
    """
    :param shared_dir: a directory every API replica and worker mounts (at any path), where tables
        wait for their jobs instead of in Redis; None: in Redis
    """

    def __init__(self, url: str, prefix: str = "boostream:", shared_dir: Path | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.shared_dir = shared_dir
        # Typed Any: redis-py types every reply as the union of what each decoding could give;
        # this client never decodes, so its replies are bytes (and lists and dicts of them).
        # A connection that Redis dropped (it restarted, say) is made again, a few times, before a
        # command fails.
        retry_on = [RedisConnectionError, RedisTimeoutError]
        backoff = ExponentialBackoff(cap=1.0, base=0.05)
        self.redis: Any = aioredis.Redis.from_url(
            url, retry=Retry(backoff, retries=6), retry_on_error=retry_on, max_connections=MAX_CONNECTIONS
        )
        # For tables, in threads (see _put_input).
        self.bulk: Any = redis.Redis.from_url(url, retry=SyncRetry(backoff, retries=6), retry_on_error=retry_on)
        self._append = self.redis.register_script(APPEND_EVENT)
        self._update = self.redis.register_script(UPDATE_IF_EXISTS)
        self._announce = self.redis.register_script(ANNOUNCE_POSITIONS)
        self._heartbeat = self.redis.register_script(HEARTBEAT)
        self._living = self.redis.register_script(LIVING)

    async def close(self) -> None:
        await self.redis.aclose()
        self.bulk.close()

    async def check_policy(self) -> None:
        """PolicyRefused, saying what to set, when the server may evict keys."""
        try:
            policy = (await self.redis.config_get("maxmemory-policy")).get("maxmemory-policy")
        except ResponseError:  # CONFIG is disabled (a managed Redis): the operator must see to it
            return
        if policy not in SAFE_POLICIES:
            raise PolicyRefused(
                f"Redis at {redacted(self.url)} has maxmemory-policy {policy}, which can evict jobs, their events and "
                "models under memory pressure; set `maxmemory-policy noeviction` (redis.conf, or "
                "CONFIG SET maxmemory-policy noeviction)"
            )

    async def secret_key(self, given: str | None) -> bytes:
        """The key that signs artifacts, the same for every API process and worker: `given`, else
        the one the first of them made and kept in Redis."""
        if given:
            return configured_key(given)
        await self.redis.set(f"{self.prefix}secret-key", secrets.token_hex(32), nx=True)
        key: bytes = await self.redis.get(f"{self.prefix}secret-key")
        return key

    # Keys

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _events(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:events"

    def _queue(self, device: str) -> str:
        return f"{self.prefix}queue:{device}"

    def _input(self, job_id: str) -> str:
        return f"{self.prefix}input:{job_id}"

    def _artifact(self, artifact_id: str) -> str:
        return f"{self.prefix}artifact:{artifact_id}"

    def _worker(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{worker_id}"

    def _replica(self, replica_id: str) -> str:
        return f"{self.prefix}replica:{replica_id}"

    @property
    def _workers(self) -> str:
        return f"{self.prefix}workers"

    @property
    def _replicas(self) -> str:
        return f"{self.prefix}replicas"

    @property
    def _ended(self) -> str:
        return f"{self.prefix}ended"

    @property
    def _finished(self) -> str:
        return f"{self.prefix}finished"

    @property
    def _jobs(self) -> str:
        return f"{self.prefix}jobs"

    # Records

    async def insert_job(self, record: JobRecord, ingest_timings: dict[str, float] | None = None) -> JobRecord:
        """Keep a new job's record, and how long its request took to read (for its `complete`
        event); the record with its `seq` (the order jobs came in)."""
        seq = await self.redis.incr(f"{self.prefix}seq")
        record = dataclasses.replace(record, seq=seq)
        fields = {name: json.dumps(value) for name, value in _row(record).items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            marks = {
                "last_event": 0,
                "ingest_timings": json.dumps(ingest_timings or {}),
                **({"callback": 1} if record.request.callback_url else {}),
            }
            pipe.hset(self._job(record.id), mapping={**fields, **marks})
            pipe.zadd(self._jobs, {record.id: seq})
            await pipe.execute()
        return record

    async def job(self, job_id: str) -> JobRecord | None:
        fields = await self.redis.hgetall(self._job(job_id))
        return _record(fields) if b"status" in fields else None

    async def ingest_timings(self, job_id: str) -> dict[str, float]:
        timings = await self.redis.hget(self._job(job_id), "ingest_timings")
        return json.loads(timings) if timings else {}

    async def jobs(
        self, statuses: Iterable[str] = (), limit: int = 50, before_seq: int | None = None, owner: str | None = None
    ) -> list[JobRecord]:
        """Newest first; only those of `owner` when it is given."""
        wanted, found = set(statuses), list[JobRecord]()
        top: float | str = "+inf" if before_seq is None else f"({before_seq}"
        while len(found) < limit:
            page = await self.redis.zrevrangebyscore(self._jobs, top, "-inf", start=0, num=limit, withscores=True)
            if not page:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id, _ in page:
                    pipe.hgetall(self._job(job_id.decode()))
                rows = await pipe.execute()
            for fields in rows:
                if (
                    fields
                    and (not wanted or json.loads(fields[b"status"]) in wanted)
                    and (owner is None or json.loads(fields.get(b"owner", b"null")) == owner)
                ):
                    found.append(_record(fields))
            top = f"({int(page[-1][1])}"
        return found[:limit]

    async def summary(self) -> list[JobsSummary]:
        """Every job kept, read a page at a time: one round trip per SUMMARY_PAGE jobs."""
        totals: dict[tuple[str, str], list[float]] = {}
        start = 0
        while page := await self.redis.zrange(self._jobs, start, start + SUMMARY_PAGE - 1):
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in page:
                    pipe.hmget(self._job(job_id.decode()), "model_type", "status", "elapsed_s", "iteration")
                rows = await pipe.execute()
            for row in rows:
                if row[0] is not None and row[1] is not None:
                    model_type, status, elapsed, iteration = (json.loads(value or b"null") for value in row)
                    total = totals.setdefault((model_type, status), [0, 0.0, 0])
                    total[0] += 1
                    total[1] += elapsed or 0.0
                    total[2] += iteration or 0
            start += SUMMARY_PAGE
        return [
            JobsSummary(model_type, status, int(jobs), training_s, int(rounds))
            for (model_type, status), (jobs, training_s, rounds) in sorted(totals.items())
        ]

    async def delete_job(self, job_id: str) -> None:
        """The job, its events, its table and its artifact."""
        artifact_id = await self.redis.hget(self._job(job_id), "artifact_id")
        keys = [self._job(job_id), self._events(job_id), self._input(job_id)]
        if artifact_id is not None and json.loads(artifact_id) is not None:
            keys.append(self._artifact(json.loads(artifact_id)))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys)
            pipe.zrem(self._jobs, job_id)
            pipe.zrem(self._finished, job_id)
            await pipe.execute()

    async def finished_before(self, cutoff: float, limit: int) -> list[str]:
        """The ids of up to `limit` jobs that finished before `cutoff` (a Unix time), oldest first."""
        found = await self.redis.zrangebyscore(self._finished, "-inf", f"({cutoff}", start=0, num=limit)
        return [job_id.decode() for job_id in found]

    async def update_job(self, job_id: str, **fields: Any) -> bool:
        """Set some of the job's row fields, unless the job is gone; whether it was there."""
        pairs = [item for name, value in fields.items() for item in (name, json.dumps(_plain(value)))]
        return bool(await self._update(keys=[self._job(job_id)], args=pairs))

    # Events

    async def append_event(
        self,
        job_id: str,
        event_type: str,
        data: dict[str, Any],
        terminal: bool = False,
        only_if: JobStatus | None = None,
        token: str | None = None,
        **fields: Any,
    ) -> int:
        """Append one event with the row fields that change with it; its id. 0 when the job has
        ended already, or its status is not `only_if` (nothing was written); -1 when there is no
        such job. `token` names the write: one made again with it (after an outage lost its
        answer) returns the id it got, and writes nothing; new when not given."""
        data_json = json.dumps({"job_id": job_id, **data})
        pairs = [item for name, value in fields.items() for item in (name, json.dumps(_plain(value)))]
        keys = [self._job(job_id), self._events(job_id), self._ended, self._finished]
        expected = json.dumps(only_if.value) if only_if is not None else ""
        token = token or new_token()
        args: list[Any] = [event_type, data_json, int(terminal), job_id, expected, repr(time.time()), token, *pairs]
        return int(await self._append(keys=keys, args=args))

    async def last_event_id(self, job_id: str) -> int:
        return int(await self.redis.hget(self._job(job_id), "last_event") or 0)

    async def events(self, job_id: str, after: int = 0) -> list[Event]:
        """The events with ids above `after`, in order."""
        entries = await self.redis.xrange(self._events(job_id), f"(0-{after}", "+")
        return [_event(entry_id, entry) for entry_id, entry in entries]

    async def follow(self, job_id: str, after: int = 0, block_ms: int = 1000) -> AsyncGenerator[Event, None]:
        """The events after `after`, then live ones, until the terminal event (or the job is gone)."""
        position = after
        events: list[Event] | None = await self.events(job_id, after)
        while events is not None:
            for event in events:
                yield event
                position = event.id
                if event.terminal:
                    return
            events = await self.next_events(job_id, position, block_ms)

    async def next_events(self, job_id: str, after: int, block_ms: int = 1000) -> list[Event] | None:
        """The events after `after` as soon as there are any (one command), or none after
        `block_ms`; None when the job is gone (deleted, or expired)."""
        answer = await self.redis.xread({self._events(job_id): f"0-{after}"}, count=1000, block=block_ms)
        if answer:
            ((_, entries),) = answer
            return [_event(entry_id, entry) for entry_id, entry in entries]
        return [] if await self.redis.exists(self._job(job_id)) else None

    async def request_cancel(self, job_id: str) -> None:
        """Ask the worker running the job to stop it (it looks between its rounds)."""
        await self.redis.hset(self._job(job_id), "cancel_requested", "true")

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self.redis.hget(self._job(job_id), "cancel_requested") == b"true")

    # The device queues

    async def enqueue(self, device: str, job_id: str) -> None:
        entry_id = await self.redis.xadd(self._queue(device), {"job_id": job_id})
        await self.redis.hset(self._job(job_id), "queue_entry", entry_id)

    async def unqueue(self, device: str, job_id: str) -> None:
        """Take a job that will not run (cancelled while it waited) off its queue, so that it no
        longer counts as waiting."""
        entry_id = await self.redis.hget(self._job(job_id), "queue_entry")
        if entry_id is not None:
            await self.redis.xdel(self._queue(device), entry_id)

    async def ensure_group(self, device: str) -> None:
        await self._ensure_group(self._queue(device), GROUP)

    async def _ensure_group(self, stream: str, group: str) -> None:
        try:
            await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def take(self, device: str, consumer: str, block_ms: int = 1000) -> Taken | None:
        """The next job waiting on `device`, now pending for `consumer`; None after `block_ms`."""
        taken = await self._read_group(self._queue(device), GROUP, consumer, 1, block_ms)
        return taken[0] if taken else None

    async def _read_group(self, stream: str, group: str, consumer: str, count: int, block_ms: int) -> list[Taken]:
        """Up to `count` entries new to `group`, now pending for `consumer`. A group that Redis lost
        (it came back without its data) is made again, and this read gives none."""
        try:
            answer = await self.redis.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self._ensure_group(stream, group)
            return []
        if not answer:
            return []
        ((_, entries),) = answer
        return [Taken(entry_id.decode(), entry[b"job_id"].decode()) for entry_id, entry in entries]

    async def done(self, device: str, entry_id: str) -> None:
        """The job taken as `entry_id` will not run again: off the queue for good."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._queue(device), GROUP, entry_id)
            pipe.xdel(self._queue(device), entry_id)
            await pipe.execute()

    async def claim_from_dead(self, device: str, consumer: str, alive: set[str], limit: int = 100) -> list[Taken]:
        """Up to `limit` entries pending for consumers not in `alive` (their heartbeat ended), now
        `consumer`'s, with how many times each has been delivered."""
        return await self._claim(self._queue(device), GROUP, consumer, alive, limit)

    async def _claim(self, stream: str, group: str, consumer: str, alive: set[str], limit: int = 100) -> list[Taken]:
        claimed: list[Taken] = []
        for pending in await self.redis.xpending_range(stream, group, "-", "+", 100):
            if pending["consumer"].decode() in alive | {consumer}:  # its own: alive, whatever Redis says
                continue
            if len(claimed) >= limit:
                break
            # Only while it has been idle as long as seen here: of two processes claiming it at
            # once, the second finds it just delivered, and gets nothing.
            idle_ms = pending["time_since_delivered"]
            entries = await self.redis.xclaim(stream, group, consumer, idle_ms, [pending["message_id"]])
            for entry_id, entry in entries:
                if entry:  # deleted meanwhile: nothing to run
                    job_id = entry[b"job_id"].decode()
                    claimed.append(Taken(entry_id.decode(), job_id, pending["times_delivered"] + 1))
        return claimed

    async def announce_positions(self, device: str) -> int:
        """Tell each job waiting on `device` its place in the queue (a `queued` event); how many."""
        return int(await self._announce(keys=[self._queue(device)], args=[GROUP, self.prefix, device]))

    async def counts(self, device: str) -> dict[str, int]:
        """Jobs `waiting` on the device (not yet taken) and `taken` (running, or about to)."""
        queue = self._queue(device)
        length = await self.redis.xlen(queue)
        try:
            taken = (await self.redis.xpending(queue, GROUP))["pending"]
        except ResponseError:  # no group yet: no worker has ever asked
            taken = 0
        return {"waiting": length - taken, "taken": taken}

    # Tables

    async def put_input(
        self, job_id: str, data: TrainingData, limit_bytes: int, saved_at: Path | None = None
    ) -> int:
        """Keep a job's arrays until it ends, where its worker will find them; their size. In the
        shared directory when there is one (moving `saved_at`, where they are kept already, when
        given), else in Redis, as `.npy` bytes, TooLarge over `limit_bytes`."""
        arrays: list[np.ndarray] = [getattr(data, name) for name in inputs.ARRAYS if getattr(data, name) is not None]
        size = sum(array.nbytes for array in arrays)
        if self.shared_dir is not None:
            folder = self._shared_input(job_id)
            await asyncio.to_thread(_save_shared, folder, data, saved_at)
            await self.redis.hset(self._input(job_id), inputs.META, json.dumps({"shared": True}))
            return size
        if size > limit_bytes:
            raise TooLarge(f"the table takes {size} bytes, more than this service's limit of {limit_bytes} per job")
        await asyncio.to_thread(self._put_input, job_id, data)
        return size

    async def get_input(self, job_id: str, scratch: Path) -> Path | None:
        """The folder that holds the job's arrays as `jobs.inputs` keeps them: in the shared
        directory, or `scratch`, written from Redis. None when they are gone."""
        meta = await self.redis.hget(self._input(job_id), inputs.META)
        if meta is None:
            return None
        if not json.loads(meta).get("shared"):
            return scratch if await asyncio.to_thread(self._get_input, job_id, scratch) else None
        if self.shared_dir is None:
            raise InputElsewhere("the job's table is in a shared directory this worker was not given (--shared-dir)")
        folder = self._shared_input(job_id)
        return folder if inputs.complete(folder) else None

    async def drop_input(self, job_id: str) -> None:
        await self.redis.delete(self._input(job_id))
        if self.shared_dir is not None:
            await asyncio.to_thread(inputs.remove, self._shared_input(job_id))

    def _shared_input(self, job_id: str) -> Path:
        assert self.shared_dir is not None
        return self.shared_dir / "inputs" / job_id

    # Large values go through a blocking client in a thread: redis-py's asyncio client takes about
    # three times as long to send a large value, on the event loop. They go in slices, each well
    # under Redis's limit on one value (proto-max-bulk-len, 512 MB by default).

    def _put_input(self, job_id: str, data: TrainingData) -> None:
        key, slices = self._input(job_id), {}
        self.bulk.delete(key)
        for name, array in _arrays(data).items():
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
            # The bytes as `.npy` keeps them: a Fortran-ordered array (a decoded CSV or Parquet
            # table) as its transpose, which is C-ordered, with fortran_order in the header.
            body = (array.T if array.flags.f_contiguous and not array.flags.c_contiguous else array).data.cast("B")
            pieces = [header.getvalue(), *(body[i : i + SLICE_BYTES] for i in range(0, len(body), SLICE_BYTES))]
            for number, piece in enumerate(pieces):
                self.bulk.hset(key, f"{name}:{number}", piece)
            slices[name] = len(pieces)
        meta = {"feature_names": data.feature_names, "classes": data.classes, "slices": slices}
        self.bulk.hset(key, inputs.META, json.dumps(_plain(meta)))  # last: the table is whole

    def _get_input(self, job_id: str, folder: Path) -> bool:
        key = self._input(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        meta = json.loads(self.bulk.hget(key, inputs.META) or b"{}")
        if "slices" not in meta:  # dropped meanwhile: the job ended
            return False
        for name, count in meta.get("slices", {}).items():
            with open(folder / f"{name}.npy", "wb") as file:
                for number in range(count):
                    piece = self.bulk.hget(key, f"{name}:{number}")
                    if piece is None:  # dropped meanwhile: the job ended
                        return False
                    file.write(piece)
        written = {"feature_names": meta["feature_names"], "classes": meta["classes"], "arrays": list(meta["slices"])}
        (folder / inputs.META).write_text(json.dumps(written))  # last: the folder is complete
        return True

    # Artifacts

    async def put_artifact(self, record: ArtifactRecord, files: dict[str, bytes]) -> None:
        meta = json.dumps(_plain(dataclasses.asdict(record)))
        await self.redis.hset(self._artifact(record.id), mapping={"record": meta, **files})

    async def delete_artifact(self, artifact_id: str) -> None:
        await self.redis.delete(self._artifact(artifact_id))

    async def artifact(self, artifact_id: str) -> ArtifactRecord | None:
        meta = await self.redis.hget(self._artifact(artifact_id), "record")
        if meta is None:
            return None
        fields = json.loads(meta)
        fields["blobs"] = {format: StoredBlob(**blob) for format, blob in fields["blobs"].items()}
        return ArtifactRecord(**fields)

    async def artifact_file(self, artifact_id: str, format: str) -> bytes | None:
        content: bytes | None = await self.redis.hget(self._artifact(artifact_id), format)
        return content

    # Workers

    async def heartbeat(self, worker_id: str, view: dict[str, Any], ttl_ms: int) -> None:
        """The worker is alive for `ttl_ms` more, and this is what /health shows of it."""
        await self._beat(self._workers, self._worker(worker_id), worker_id, view, ttl_ms)

    async def forget_worker(self, worker_id: str) -> None:
        """The worker has stopped: its jobs may be claimed at once."""
        await self._forget(self._workers, self._worker(worker_id), worker_id)

    async def mark_served(self, device: str) -> None:
        """A worker for `device` has been up: from now on its jobs may wait for one."""
        await self.redis.set(f"{self.prefix}served:{device}", 1)

    async def ever_served(self, device: str) -> bool:
        return bool(await self.redis.exists(f"{self.prefix}served:{device}"))

    async def workers(self) -> dict[str, dict[str, Any]]:
        """The workers alive, by id, with what they last said of themselves."""
        return await self._alive(self._workers, self._worker)

    # Heartbeats: a sorted set of the ids by when their heartbeat ends (read without scanning the
    # keys), and a key per id with its view, which expires with it.

    async def _beat(self, members: str, key: str, member: str, view: dict[str, Any], ttl_ms: int) -> None:
        await self._heartbeat(keys=[members, key], args=[member, json.dumps(view), ttl_ms])

    async def _forget(self, members: str, key: str, member: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.zrem(members, member)
            await pipe.execute()

    async def _alive(self, members: str, key_of: Callable[[str], str]) -> dict[str, dict[str, Any]]:
        ids = [member.decode() for member in await self._living(keys=[members])]
        views = await self.redis.mget([key_of(member) for member in ids]) if ids else []
        return {member: json.loads(view) for member, view in zip(ids, views, strict=True) if view is not None}

    # API replicas, and the webhooks they owe

    async def replica_alive(self, replica_id: str, ttl_ms: int) -> None:
        """The API replica is alive for `ttl_ms` more: the webhooks it took are its own."""
        await self._beat(self._replicas, self._replica(replica_id), replica_id, {"heartbeat_at": time.time()}, ttl_ms)

    async def forget_replica(self, replica_id: str) -> None:
        await self._forget(self._replicas, self._replica(replica_id), replica_id)

    async def ensure_webhook_group(self) -> None:
        await self._ensure_group(self._ended, WEBHOOK_GROUP)

    async def take_ended(self, consumer: str, count: int, block_ms: int = 1000) -> list[Taken]:
        """Jobs that ended and owe a webhook, each given to one replica (`consumer`) only."""
        return await self._read_group(self._ended, WEBHOOK_GROUP, consumer, count, block_ms)

    async def claim_ended(self, consumer: str) -> list[Taken]:
        """The webhooks that replicas no longer alive had taken and not sent, now `consumer`'s."""
        alive = set(await self._alive(self._replicas, self._replica))
        return await self._claim(self._ended, WEBHOOK_GROUP, consumer, alive)

    async def ended_done(self, entry_id: str) -> None:
        """The webhook was sent, or given up: never again."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._ended, WEBHOOK_GROUP, entry_id)
            pipe.xdel(self._ended, entry_id)
            await pipe.execute()


# In a job's hash beside its record's fields.
_NOT_RECORD = (b"last_event", b"last_write", b"cancel_requested", b"queue_entry", b"callback", b"ingest_timings")


def _arrays(data: TrainingData) -> dict[str, np.ndarray]:
    """The job's arrays, each in one block, C- or Fortran-ordered (copied only when neither)."""
    found = {name: getattr(data, name) for name in inputs.ARRAYS}
    return {
        name: array if array.flags.c_contiguous or array.flags.f_contiguous else np.ascontiguousarray(array)
        for name, array in found.items()
        if array is not None
    }


def _save_shared(folder: Path, data: TrainingData, saved_at: Path | None) -> None:
    if saved_at is not None and inputs.complete(saved_at):
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(saved_at, folder)  # a rename where both are on one file system
    else:
        inputs.save(folder, data)


def _row(record: JobRecord) -> dict[str, Any]:
    fields = {name: value for name, value in dataclasses.asdict(record).items() if name not in FOUND_WHEN_READ}
    fields["status"] = record.status.value
    return fields


def _record(fields: dict[bytes, bytes]) -> JobRecord:
    values = {name.decode(): json.loads(value) for name, value in fields.items() if name not in _NOT_RECORD}
    values["status"] = JobStatus(values["status"])
    values["request"] = JobRequest(**values["request"])
    return JobRecord(**values)


def _event(entry_id: bytes, entry: dict[bytes, bytes]) -> Event:
    return Event(int(entry_id.split(b"-")[1]), entry[b"type"].decode(), entry[b"data"].decode())


def _plain(value: Any) -> Any:
    """What json.dumps takes: a JobStatus as its value, numpy scalars as Python numbers."""
    if isinstance(value, JobStatus):
        return value.value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
