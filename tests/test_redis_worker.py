"""A worker fed from Redis (`boostream.workers.remote`), against a real redis-server and real
worker processes: it takes a queued job, writes the same events as the one-process server, keeps
the model where any API replica can serve it, stops a job on request, and exits when idle if told
to. The job is put in Redis as an API replica does it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import lightgbm
import orjson
from redis.exceptions import ConnectionError as RedisConnectionError

from boostream.jobs.records import Event, JobRecord, JobRequest, JobStatus
from boostream.jobs.redis_state import RedisState
from boostream.models.artifacts import ArtifactStore
from boostream.trainers import create_trainers
from boostream.trainers.base import Availability, TrainingData, validate_params
from boostream.trainers.lightgbm import LightGBMTrainer
from boostream.workers.local import LocalWorkers, WorkerConfig
from boostream.workers.remote import RedisWorker

from conftest import RedisServer

KEY = b"k" * 32


def make_worker(state: RedisState, tmp_path: Path, **options: Any) -> RedisWorker:
    artifacts_dir = tmp_path / "work" / "artifacts"
    pool = LocalWorkers(WorkerConfig("cpu", 1, artifacts_dir, KEY), 1, 0, 1.0)
    return RedisWorker(
        state,
        pool,
        create_trainers(1),
        {"lightgbm": Availability(True, device_name="cpu")},
        ArtifactStore(artifacts_dir, KEY),
        worker_id=f"test-{uuid.uuid4().hex[:8]}",
        work_dir=tmp_path / "work" / "inputs",
        max_training_s=60,
        **options,
    )


async def submit(state: RedisState, data: TrainingData, rounds: int, **params: Any) -> str:
    """What an API replica does with a decoded request."""
    job_id = uuid.uuid4().hex
    params = validate_params(LightGBMTrainer.params, {"n_estimators": rounds, **params})
    request = JobRequest("lightgbm", "regression", params)
    record = JobRecord(job_id, JobStatus.QUEUED, "lightgbm", "regression", "cpu", request, time.time(), total=rounds)
    await state.insert_job(record)
    await state.put_input(job_id, data, limit_bytes=10**9)
    await state.append_event(job_id, "queued", {"position": 1, "device": "cpu"})
    await state.enqueue("cpu", job_id)
    return job_id


def with_worker(redis_server: RedisServer, tmp_path: Path, scenario, **options: Any) -> Any:
    async def main() -> Any:
        state = RedisState(redis_server.url, prefix="test:")
        worker = make_worker(state, tmp_path, **options)
        running = asyncio.ensure_future(worker.run())
        try:
            return await asyncio.wait_for(scenario(state), 60)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await state.close()

    return asyncio.run(main())


def diabetes_data(diabetes) -> TrainingData:
    X, y = diabetes
    return TrainingData(X=X, y=y, feature_names=[f"f{i}" for i in range(X.shape[1])])


def test_a_queued_job_trains_and_its_model_is_kept_in_redis(redis_server, tmp_path: Path, diabetes):
    async def scenario(state: RedisState) -> tuple[list[Event], JobRecord | None, bytes | None, bool]:
        job_id = await submit(state, diabetes_data(diabetes), 50)
        events = [event async for event in state.follow(job_id, block_ms=200)]
        record = await state.job(job_id)
        artifact_id = orjson.loads(events[-1].json)["artifact_id"]
        native = await state.artifact_file(artifact_id, "native")
        input_left = await state.get_input(job_id, tmp_path / "left")
        return events, record, native, input_left

    events, record, native, input_left = with_worker(redis_server, tmp_path, scenario)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "queued" and events[1].type == "started" and events[-1].type == "complete"
    assert {e.type for e in events[2:-1]} == {"progress"}
    started, complete = orjson.loads(events[1].json), orjson.loads(events[-1].json)
    assert started["attempt"] == 1 and started["n_rows"] == 442 and started["n_estimators"] == 50
    assert complete["iterations"] == 50 and len(complete["curve"]["metrics"]["train_l2"]) == 50
    assert record is not None and record.status is JobStatus.SUCCEEDED and record.artifact_id == complete["artifact_id"]
    assert native is not None
    booster = lightgbm.Booster(model_str=native.decode())
    X, _ = diabetes
    assert booster.predict(X[:3]).shape == (3,)
    assert not input_left, "the job's table is dropped once it ends"


def test_a_job_asked_to_stop_through_redis_ends_cancelled(redis_server, tmp_path: Path, diabetes):
    async def scenario(state: RedisState) -> tuple[float, list[Event]]:
        job_id = await submit(state, diabetes_data(diabetes), 100_000, learning_rate=0.001)
        async for event in state.follow(job_id, block_ms=200):
            if event.type == "progress":
                break
        asked = time.monotonic()
        await state.request_cancel(job_id)
        events = [event async for event in state.follow(job_id, block_ms=200)]
        return time.monotonic() - asked, events

    took, events = with_worker(redis_server, tmp_path, scenario)
    assert events[-1].type == "cancelled" and took < 2.0, (took, events[-1])


def test_a_worker_told_to_exit_when_idle_does(redis_server, tmp_path: Path):
    async def main() -> float:
        state = RedisState(redis_server.url, prefix="test:")
        try:
            started = time.monotonic()
            await asyncio.wait_for(make_worker(state, tmp_path, exit_when_idle_s=1.0).run(), 30)
            return time.monotonic() - started
        finally:
            await state.close()

    assert 1.0 <= asyncio.run(main()) < 10


def test_a_job_whose_worker_process_dies_runs_again_before_the_jobs_waiting_behind_it(
    redis_server, tmp_path: Path, diabetes
):
    async def main() -> tuple[list[Event], JobRecord | None, JobRecord | None]:
        state = RedisState(redis_server.url, prefix="test:")
        worker = make_worker(state, tmp_path)  # one slot
        running = asyncio.ensure_future(worker.run())

        async def scenario() -> tuple[list[Event], JobRecord | None, JobRecord | None]:
            first = await submit(state, diabetes_data(diabetes), 3000, learning_rate=0.01)
            behind = await submit(state, diabetes_data(diabetes), 5)
            async for event in state.follow(first, block_ms=200):
                if event.type == "progress":
                    break
            (training,) = [view for view in worker.pool.views() if view["job_id"] == first]
            os.kill(training["pid"], signal.SIGKILL)
            events = [event async for event in state.follow(first, block_ms=200)]
            _ = [event async for event in state.follow(behind, block_ms=200)]
            return events, await state.job(first), await state.job(behind)

        try:
            return await asyncio.wait_for(scenario(), 60)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await state.close()

    events, first, behind = asyncio.run(main())
    types = [event.type for event in events]
    assert types[-1] == "complete" and types.count("restarted") == 1, types
    attempts = [orjson.loads(event.json)["attempt"] for event in events if event.type == "started"]
    assert attempts == [1, 2]
    assert first is not None and first.attempts == 2
    assert behind is not None and behind.started_at is not None and first.started_at is not None
    assert behind.started_at > first.started_at, "the job that waited started after the second attempt"


def test_a_dead_workers_job_is_claimed_only_once_a_slot_is_free_to_train_it(redis_server, tmp_path: Path, diabetes):
    async def scenario(state: RedisState) -> tuple[JobRecord | None, JobRecord | None]:
        busy = await submit(state, diabetes_data(diabetes), 1500, learning_rate=0.01)
        async for event in state.follow(busy, block_ms=200):
            if event.type == "progress":
                break
        left = await submit(state, diabetes_data(diabetes), 5)
        # Taken by a worker that then died: pending for a consumer with no heartbeat.
        assert await state.take("cpu", "dead-worker", block_ms=100) is not None
        _ = [event async for event in state.follow(busy, block_ms=200)]
        _ = [event async for event in state.follow(left, block_ms=200)]
        return await state.job(busy), await state.job(left)

    busy, left = with_worker(redis_server, tmp_path, scenario, dead_after_s=0.5)  # one slot
    assert busy is not None and left is not None and left.status is JobStatus.SUCCEEDED
    assert busy.finished_at is not None and left.started_at is not None
    assert left.started_at >= busy.finished_at, "started only when it could train"


def test_a_job_training_through_a_redis_outage_ends_with_its_model_and_every_event(
    redis_server, tmp_path: Path, diabetes
):
    async def scenario(state: RedisState) -> tuple[list[Event], JobRecord | None, bytes | None]:
        job_id = await submit(state, diabetes_data(diabetes), 4000, learning_rate=0.01)
        async for event in state.follow(job_id, block_ms=200):
            if event.type == "progress":
                break
        redis_server.kill_9()  # mid-training; longer than redis-py's own retries
        await asyncio.sleep(4)
        redis_server.start()
        while True:  # the worker's writes land once Redis answers again
            with contextlib.suppress(RedisConnectionError):
                events = [event async for event in state.follow(job_id, block_ms=200)]
                break
            await asyncio.sleep(0.5)
        record = await state.job(job_id)
        artifact_id = orjson.loads(events[-1].json).get("artifact_id")
        return events, record, await state.artifact_file(artifact_id, "native") if artifact_id else None

    events, record, native = with_worker(redis_server, tmp_path, scenario)
    assert [e.id for e in events] == list(range(1, len(events) + 1)), "no gap, no duplicate"
    assert events[-1].type == "complete", events[-1]
    assert [e.type for e in events].count("started") == 1, "trained once, through the outage"
    assert record is not None and record.status is JobStatus.SUCCEEDED and native is not None


def test_a_worker_whose_redis_came_back_empty_goes_on_taking_jobs(redis_server, tmp_path: Path, diabetes):
    async def scenario(state: RedisState) -> str:
        first = await submit(state, diabetes_data(diabetes), 5)
        _ = [event async for event in state.follow(first, block_ms=200)]
        await state.redis.flushall()  # as a Redis restarted without persistence comes back
        await asyncio.sleep(1)
        second = await submit(state, diabetes_data(diabetes), 5)
        events = [event async for event in state.follow(second, block_ms=200)]
        return events[-1].type

    assert with_worker(redis_server, tmp_path, scenario) == "complete"
