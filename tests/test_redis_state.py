"""Job state in Redis (`boostream.jobs.redis_state`), against a real redis-server of the test's own:
what API replicas and workers will rely on. Event ids contiguous and resumable from any client, one
end per job whoever writes it, a queue delivered in order with a dead worker's jobs claimed by
another, tables and models kept as bytes under a limit, nothing lost when Redis is killed and
started again with its append-only file, and a server that could evict job data refused."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from boostream.errors import TooLarge
from boostream.jobs import inputs, redis_state
from boostream.jobs.records import JobRecord, JobRequest, JobStatus
from boostream.jobs.redis_engine import RedisEngine
from boostream.jobs.redis_state import InputElsewhere, PolicyRefused, RedisState, Standing, redacted
from boostream.jobs.webhooks import WebhookPolicy, WebhookSender
from boostream.models.artifacts import ArtifactRecord, StoredBlob
from boostream.trainers import create_trainers
from boostream.trainers.base import TrainingData

from conftest import RedisServer


def record(job_id: str, device: str = "cpu") -> JobRecord:
    request = JobRequest("lightgbm", "regression", {"n_estimators": 10})
    return JobRecord(job_id, JobStatus.QUEUED, "lightgbm", "regression", device, request, time.time(), total=10)


def engine_over(state: RedisState) -> RedisEngine:
    webhooks = WebhookSender(b"k" * 32)
    return RedisEngine(
        state, create_trainers(1), max_queued=10, max_input_bytes=10**9, job_ttl_s=3600, webhooks=webhooks,
        webhook_policy=WebhookPolicy(),
    )  # fmt: skip


def run(redis_server: RedisServer, scenario) -> object:
    async def main() -> object:
        state = RedisState(redis_server.url, prefix="test:")
        try:
            return await scenario(state)
        finally:
            await state.close()

    return asyncio.run(main())


def test_event_ids_rise_by_one_and_a_job_ends_once_whoever_writes(redis_server):
    async def scenario(state: RedisState) -> tuple[list[int], list[int], JobRecord]:
        await state.insert_job(record("j"))
        await state.append_event("j", "queued", {"position": 1})
        await state.append_event("j", "started", {"attempt": 1}, status=JobStatus.RUNNING, attempts=1)

        # Two writers at once, on connections of their own: the worker's rounds, and a replica's.
        other = RedisState(redis_server.url, prefix="test:")
        rounds = [state.append_event("j", "progress", {"iteration": i}, iteration=i) for i in range(1, 41)]
        rounds += [other.append_event("j", "progress", {"iteration": i}) for i in range(41, 61)]
        ids = await asyncio.gather(*rounds)
        # Both end it at once (the worker completing, a replica cancelling): one end is kept.
        ends = await asyncio.gather(
            state.append_event("j", "complete", {"artifact_id": "a"}, terminal=True, status=JobStatus.SUCCEEDED),
            other.append_event("j", "cancelled", {"iteration": 60}, terminal=True, status=JobStatus.CANCELLED),
        )
        late = await other.append_event("j", "progress", {"iteration": 61})
        await other.close()
        events = await state.events("j")
        job = await state.job("j")
        assert job is not None
        return sorted(ids), [*ends, late, len(events), *[e.id for e in events]], job

    ids, (first_end, second_end, late, count, *event_ids), job = run(redis_server, scenario)
    assert ids == list(range(3, 63)), "no gap, no duplicate"
    assert sorted([first_end, second_end]) == [0, 63], "exactly one end was written"
    assert late == 0, "nothing after the end"
    assert count == 63 and event_ids == list(range(1, 64))
    assert job.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED) and job.attempts == 1


def test_a_client_resuming_gets_exactly_what_it_missed_then_live_events(redis_server):
    async def scenario(state: RedisState) -> list[tuple[int, str]]:
        await state.insert_job(record("j"))
        for i in range(1, 6):
            await state.append_event("j", "progress", {"iteration": i})

        async def later() -> None:
            await asyncio.sleep(0.3)
            await state.append_event("j", "progress", {"iteration": 6})
            await asyncio.sleep(0.3)
            await state.append_event("j", "complete", {}, terminal=True, status=JobStatus.SUCCEEDED)

        writer = asyncio.ensure_future(later())
        seen = [(event.id, event.type) async for event in state.follow("j", after=3, block_ms=200)]
        await writer
        return seen

    assert run(redis_server, scenario) == [(4, "progress"), (5, "progress"), (6, "progress"), (7, "complete")]


def test_the_queue_delivers_in_order_and_a_dead_workers_job_goes_to_another(redis_server):
    async def scenario(state: RedisState) -> dict[str, object]:
        await state.ensure_group("cpu")
        for job_id in ("a", "b", "c"):
            await state.enqueue("cpu", job_id)
        first = await state.take("cpu", "worker-1", block_ms=100)
        second = await state.take("cpu", "worker-2", block_ms=100)
        counts = await state.counts("cpu")
        assert first is not None and second is not None
        await state.done("cpu", second.entry_id)
        # worker-1 dies with job "a": its heartbeat is gone, worker-2's is not.
        none_free = await state.claim_from_dead("cpu", "worker-2", alive={"worker-2"}, limit=0)
        claimed = await state.claim_from_dead("cpu", "worker-2", alive={"worker-2"}, limit=1)
        nothing = await state.claim_from_dead("cpu", "worker-3", alive={"worker-2"})
        assert none_free == [], "a worker with no slot free claims nothing"
        third = await state.take("cpu", "worker-2", block_ms=100)
        empty = await state.take("cpu", "worker-2", block_ms=100)
        return {
            "order": [first.job_id, second.job_id, third.job_id if third else None],
            "counts": counts,
            "claimed": [(t.job_id, t.deliveries) for t in claimed],
            "nothing": nothing,
            "empty": empty,
            "after": await state.counts("cpu"),
        }

    found = run(redis_server, scenario)
    assert found["order"] == ["a", "b", "c"]
    assert found["counts"] == {"waiting": 1, "taken": 2}
    assert found["claimed"] == [("a", 2)], "delivered a second time, to a live worker"
    assert found["nothing"] == [], "claimed once"
    assert found["empty"] is None
    assert found["after"] == {"waiting": 0, "taken": 2}


def table(rows: int = 100) -> TrainingData:
    rng = np.random.default_rng(0)
    return TrainingData(
        X=np.asfortranarray(rng.random((rows, 4))),  # as a decoder may leave it: stored C-ordered all the same
        y=rng.integers(0, 3, rows),
        feature_names=list("abcd"),
        classes=["x", "y", "z"],
    )


def assert_same_table(folder: Path, data: TrainingData) -> None:
    loaded = inputs.load(folder)
    assert loaded is not None and isinstance(loaded.X, np.memmap)
    assert np.array_equal(loaded.X, data.X) and np.array_equal(loaded.y, data.y)
    assert loaded.feature_names == data.feature_names and loaded.classes == data.classes


def test_a_table_is_kept_as_arrays_a_worker_maps_and_refused_over_the_limit(redis_server, tmp_path: Path):
    data = table()

    async def scenario(state: RedisState) -> tuple[int, Path | None, Path | None]:
        size = await state.put_input("j", data, limit_bytes=10_000)
        kept = await state.get_input("j", tmp_path / "j")
        with pytest.raises(TooLarge, match="more than this service's limit of 1000"):
            await state.put_input("k", data, limit_bytes=1000)
        await state.drop_input("j")
        return size, kept, await state.get_input("j", tmp_path / "again")

    size, kept, again = run(redis_server, scenario)
    assert kept == tmp_path / "j" and again is None
    assert size == data.X.nbytes + data.y.nbytes
    assert_same_table(tmp_path / "j", data)


def test_a_table_larger_than_one_redis_value_may_be_goes_in_slices(tmp_path: Path, monkeypatch):
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server here: install Debian's redis-server package (.ci/run does)")
    server = RedisServer(tmp_path / "redis", "--proto-max-bulk-len", "1mb")  # 512mb by default
    server.start()
    monkeypatch.setattr(redis_state, "SLICE_BYTES", 256 * 1024)
    data = table(rows=100_000)  # 3.2 MB of X
    try:

        async def scenario(state: RedisState) -> Path | None:
            await state.put_input("j", data, limit_bytes=10**9)
            return await state.get_input("j", tmp_path / "j")

        assert run(server, scenario) == tmp_path / "j"
    finally:
        server.stop()
    assert_same_table(tmp_path / "j", data)


def test_with_a_shared_directory_a_table_waits_there_and_a_worker_without_it_says_so(redis_server, tmp_path: Path):
    data = table()
    saved_at = tmp_path / "shared" / "inputs" / "incoming-1"  # where a decoder wrote it
    inputs.save(saved_at, data)

    async def scenario(state: RedisState) -> None:
        shared = RedisState(redis_server.url, prefix="test:", shared_dir=tmp_path / "shared")
        try:
            size = await shared.put_input("j", data, limit_bytes=10, saved_at=saved_at)  # no Redis limit
            assert size == data.X.nbytes + data.y.nbytes
            assert not saved_at.exists(), "moved, not copied"
            assert await shared.get_input("j", tmp_path / "scratch") == tmp_path / "shared" / "inputs" / "j"
            assert not (tmp_path / "scratch").exists()
            assert_same_table(tmp_path / "shared" / "inputs" / "j", data)
            with pytest.raises(InputElsewhere, match="--shared-dir"):
                await state.get_input("j", tmp_path / "scratch")
            await shared.drop_input("j")
            assert not (tmp_path / "shared" / "inputs" / "j").exists()
            assert await shared.get_input("j", tmp_path / "scratch") is None
        finally:
            await shared.close()

    run(redis_server, scenario)


def test_nothing_finished_is_lost_when_redis_is_killed_and_started_again(redis_server):
    blob = StoredBlob("text/plain", "txt", 5, "0" * 64, "sha256=00")
    artifact = ArtifactRecord(
        "art", "j", "lightgbm", "regression", ["a"], None, {"l2": 1.0}, 3, 3, time.time(), {"native": blob}
    )

    async def write(state: RedisState) -> None:
        await state.insert_job(record("j"))
        await state.append_event("j", "started", {}, status=JobStatus.RUNNING)
        await state.put_artifact(artifact, {"native": b"model"})
        await state.append_event("j", "complete", {"artifact_id": "art"}, terminal=True, status=JobStatus.SUCCEEDED)

    async def read(state: RedisState) -> tuple[object, ...]:
        events = [e.type for e in await state.events("j")]
        return await state.job("j"), events, await state.artifact("art"), await state.artifact_file("art", "native")

    run(redis_server, write)
    redis_server.kill_9()
    redis_server.start()
    job, types, kept_artifact, content = run(redis_server, read)
    assert isinstance(job, JobRecord) and job.status is JobStatus.SUCCEEDED
    assert types == ["started", "complete"]
    assert kept_artifact == artifact and content == b"model"


def test_a_redis_that_could_evict_job_data_is_refused_saying_what_to_set(redis_server):
    async def scenario(state: RedisState) -> None:
        await state.check_policy()  # noeviction: fine
        await state.redis.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(PolicyRefused, match="maxmemory-policy allkeys-lru.*set `maxmemory-policy noeviction`"):
            await state.check_policy()

    run(redis_server, scenario)


def test_jobs_are_listed_newest_first_by_status_a_page_at_a_time(redis_server):
    async def scenario(state: RedisState) -> tuple[list[str], list[str], list[str]]:
        for n in range(7):
            await state.insert_job(record(f"j{n}"))
            if n % 2:
                await state.append_event(f"j{n}", "cancelled", {}, terminal=True, status=JobStatus.CANCELLED)
        first = await state.jobs(["queued"], limit=2)
        rest = await state.jobs(["queued"], limit=10, before_seq=first[-1].seq)
        every = await state.jobs(limit=100)
        return [r.id for r in first], [r.id for r in rest], [r.id for r in every]

    first, rest, every = run(redis_server, scenario)
    assert first == ["j6", "j4"] and rest == ["j2", "j0"]
    assert every == [f"j{n}" for n in range(6, -1, -1)]


def test_a_dead_workers_job_is_claimed_by_one_worker_when_two_try_at_once(redis_server):
    async def scenario(state: RedisState) -> list[str]:
        await state.ensure_group("cpu")
        await state.enqueue("cpu", "a")
        assert await state.take("cpu", "dead", block_ms=100) is not None
        other = RedisState(redis_server.url, prefix="test:")
        try:
            both = await asyncio.gather(
                state.claim_from_dead("cpu", "worker-1", alive={"worker-1", "worker-2"}),
                other.claim_from_dead("cpu", "worker-2", alive={"worker-1", "worker-2"}),
            )
        finally:
            await other.close()
        return [taken.job_id for claimed in both for taken in claimed]

    assert run(redis_server, scenario) == ["a"]


def test_cancelling_a_job_deleted_meanwhile_leaves_nothing_behind(redis_server):
    """A replica's cancel racing another's delete: no half a job is made, which every later read
    of that id would trip over."""

    async def scenario(state: RedisState) -> tuple[JobStatus, int, JobRecord | None]:
        engine = engine_over(state)
        status = await engine.cancel("gone")
        return status, await state.redis.exists("test:job:gone"), await state.job("gone")

    status, exists, record = run(redis_server, scenario)
    assert status is JobStatus.CANCELLED and exists == 0 and record is None


def test_a_job_cancelled_while_it_waits_no_longer_counts_as_waiting(redis_server, diabetes):
    """Else cancelled jobs would fill `--max-queued`, and new ones get 429 for nothing."""

    X, y = diabetes
    data = TrainingData(X=X, y=y, feature_names=[f"f{i}" for i in range(X.shape[1])])

    async def scenario(state: RedisState) -> tuple[dict[str, int], dict[str, int], JobStatus]:
        engine = engine_over(state)
        await engine.start()
        await state.heartbeat("w", {"device": "cpu", "slots": 1}, ttl_ms=60_000)  # a worker, busy elsewhere
        request = JobRequest("lightgbm", "regression", {"n_estimators": 5})
        job = await engine.submit(request, data, {})
        before = await state.counts("cpu")
        status = await engine.cancel(job.id)
        return before, await state.counts("cpu"), status

    before, after, status = run(redis_server, scenario)
    assert before == {"waiting": 1, "taken": 0}
    assert status is JobStatus.CANCELLED and after == {"waiting": 0, "taken": 0}


def with_callback(job_id: str) -> JobRecord:
    job = record(job_id)
    return dataclasses.replace(job, request=dataclasses.replace(job.request, callback_url="http://receiver/hook"))


def test_each_webhook_owed_goes_to_one_replica_and_a_stopped_replicas_go_to_another(redis_server):
    async def scenario(state: RedisState) -> None:
        await state.ensure_webhook_group()
        await state.insert_job(with_callback("hooked"))
        await state.insert_job(record("plain"))
        for job_id in ("hooked", "plain"):
            await state.append_event(job_id, "cancelled", {}, terminal=True, status=JobStatus.CANCELLED)
        hooked = await state.job("hooked")
        plain = await state.job("plain")
        assert hooked is not None and plain is not None
        assert hooked.callback_state == "pending" and plain.callback_state is None

        # Two replicas read at once: the one job that owes a webhook goes to one of them only.
        await state.replica_alive("a", 10_000)
        await state.replica_alive("b", 10_000)
        taken = await asyncio.gather(state.take_ended("a", 10, 200), state.take_ended("b", 10, 200))
        assert sorted(len(entries) for entries in taken) == [0, 1]
        (entry,) = taken[0] or taken[1]
        assert entry.job_id == "hooked"
        owner, other = ("a", "b") if taken[0] else ("b", "a")
        assert await state.claim_ended(other) == [], "not while its replica is alive"

        await state.forget_replica(owner)  # it stopped before sending
        (claimed,) = await state.claim_ended(other)
        assert claimed.job_id == "hooked"
        assert await state.claim_ended(owner) == [], "claimed once"
        await state.ended_done(claimed.entry_id)
        await state.forget_replica(other)
        assert await state.claim_ended("c") == [] and await state.take_ended("c", 10, 100) == []

    run(redis_server, scenario)


def test_finished_jobs_are_found_by_when_they_ended_and_a_deleted_job_is_not_written_again(redis_server):
    async def scenario(state: RedisState) -> None:
        for job_id in ("old", "new", "waiting"):
            await state.insert_job(record(job_id))
        await state.append_event("old", "cancelled", {}, terminal=True, status=JobStatus.CANCELLED)
        between = time.time()
        await asyncio.sleep(0.01)
        await state.append_event("new", "cancelled", {}, terminal=True, status=JobStatus.CANCELLED)
        assert await state.finished_before(between, 10) == ["old"]
        assert await state.finished_before(time.time(), 10) == ["old", "new"]
        assert await state.finished_before(time.time(), 1) == ["old"]

        await state.delete_job("old")
        assert await state.finished_before(time.time(), 10) == ["new"]
        assert await state.update_job("old", callback_state="delivered") is False
        assert await state.job("old") is None, "no half a job comes back"
        assert await state.update_job("new", callback_state="delivered") is True
        new = await state.job("new")
        assert new is not None and new.callback_state == "delivered"

    run(redis_server, scenario)


def test_jobs_still_waiting_are_told_their_place_each_time_the_queue_moves(redis_server):
    async def scenario(state: RedisState) -> None:
        await state.ensure_group("cpu")
        for job_id in ("a", "b", "c", "d"):
            await state.insert_job(record(job_id))
            await state.enqueue("cpu", job_id)
        await state.append_event("c", "cancelled", {}, terminal=True, status=JobStatus.CANCELLED)
        assert await state.take("cpu", "worker", block_ms=100) is not None  # "a" leaves the queue
        assert await state.announce_positions("cpu") == 2
        assert await state.take("cpu", "worker", block_ms=100) is not None  # then "b"
        assert await state.announce_positions("cpu") == 1

        def queued(events: list) -> list:
            return [orjson.loads(event.json)["position"] for event in events if event.type == "queued"]

        assert queued(await state.events("a")) == []
        assert queued(await state.events("b")) == [1]
        assert queued(await state.events("c")) == [], "a job that will not run is not told"
        assert queued(await state.events("d")) == [2, 1]
        (event,) = [event for event in await state.events("d") if event.type == "queued"][-1:]
        assert orjson.loads(event.json) == {"job_id": "d", "position": 1, "device": "cpu"}

    run(redis_server, scenario)


def test_a_configured_signing_key_too_short_is_refused_as_without_redis(redis_server):
    async def scenario(state: RedisState) -> None:
        with pytest.raises(ValueError, match="at least 16"):
            await state.secret_key("short")
        assert await state.secret_key("k" * 16) == b"k" * 16
        made = await state.secret_key(None)
        assert len(made) == 64 and await state.secret_key("") == made, "one key kept in Redis for all"

    run(redis_server, scenario)


def test_an_event_sent_again_after_its_answer_was_lost_is_written_once(redis_server):
    async def scenario(state: RedisState) -> None:
        await state.insert_job(record("j"))
        await state.append_event("j", "started", {}, status=JobStatus.RUNNING)
        # What redis-py sends again when a dropped connection lost the answer: the same arguments.
        keys = [state._job("j"), state._events("j"), state._ended, state._finished]
        args = ["complete", '{"job_id": "j"}', 1, "j", "", repr(time.time()), "token-1", "status", '"succeeded"']
        assert await state._append(keys=keys, args=args) == 2
        assert await state._append(keys=keys, args=args) == 2, "the id it got, not 0 (ended already)"
        assert [event.type for event in await state.events("j")] == ["started", "complete"]
        assert await state.append_event("j", "cancelled", {}, terminal=True) == 0, "and it still ends once"

        # Made again by its writer, with the same token, after an outage outlived redis-py's resends.
        await state.insert_job(record("k"))
        assert await state.append_event("k", "complete", {}, terminal=True, token="t") == 1
        assert await state.append_event("k", "complete", {}, terminal=True, token="t") == 1
        assert len(await state.events("k")) == 1

    run(redis_server, scenario)


def test_a_process_never_claims_its_own_work_and_claims_only_after_a_heartbeats_life_of_its_own(redis_server):
    async def scenario(state: RedisState) -> None:
        await state.ensure_webhook_group()
        await state.insert_job(with_callback("j"))
        await state.append_event("j", "cancelled", {}, terminal=True, status=JobStatus.CANCELLED)
        assert len(await state.take_ended("a", 10, 100)) == 1
        # Its heartbeat expired in an outage: to the others it looks dead, to itself it is not.
        assert await state.claim_ended("a") == []

    run(redis_server, scenario)
    standing = Standing(life_s=0.2)
    assert not standing.may_claim
    standing.renewed()
    assert not standing.may_claim, "not before its own heartbeat has lived a whole life"
    time.sleep(0.25)
    standing.renewed()
    assert standing.may_claim
    standing.broken()  # Redis failed it
    standing.renewed()
    assert not standing.may_claim


def test_more_followers_than_a_redis_client_keeps_connections_by_default_all_get_every_event(redis_server):
    async def scenario(state: RedisState) -> list[list[int]]:
        await state.insert_job(record("j"))

        async def follower() -> list[int]:
            return [event.id async for event in state.follow("j", block_ms=2000)]

        followers = [asyncio.ensure_future(follower()) for _ in range(150)]  # redis-py's default: 100
        await asyncio.sleep(0.5)  # all waiting on XREAD, each on a connection of its own
        for i in range(1, 4):
            await state.append_event("j", "progress", {"iteration": i})
        await state.append_event("j", "complete", {}, terminal=True, status=JobStatus.SUCCEEDED)
        return await asyncio.wait_for(asyncio.gather(*followers), 20)

    assert run(redis_server, scenario) == [[1, 2, 3, 4]] * 150


def test_a_replicas_followers_of_one_job_share_one_reader_and_each_gets_what_it_asked_for(redis_server):
    async def scenario(state: RedisState) -> None:
        engine = engine_over(state)
        await state.insert_job(record("j"))
        for i in range(1, 3):
            await state.append_event("j", "progress", {"iteration": i})

        async def follower(after: int) -> list[int]:
            return [event.id async for event in engine.events("j", after)]

        early = [asyncio.ensure_future(follower(after)) for after in (0, 1, 2) for _ in range(20)]
        await asyncio.sleep(0.3)
        assert len(engine._tails) == 1, "one reader for the job, whatever the number of followers"
        for i in range(3, 6):
            await state.append_event("j", "progress", {"iteration": i})
        await asyncio.sleep(0.3)
        late = [asyncio.ensure_future(follower(after)) for after in (0, 4) for _ in range(20)]  # join mid-way
        await asyncio.sleep(0.3)
        await state.append_event("j", "progress", {"iteration": 6})
        await state.append_event("j", "cancelled", {}, terminal=True, status=JobStatus.CANCELLED)
        seen = await asyncio.wait_for(asyncio.gather(*early, *late), 20)
        expected = [list(range(after + 1, 8)) for after in (0, 1, 2) for _ in range(20)]
        expected += [list(range(after + 1, 8)) for after in (0, 4) for _ in range(20)]
        assert seen == expected, "every event after the one asked for, once, in order"
        assert engine._tails == {}, "the reader ends with its last follower"

    run(redis_server, scenario)


def test_a_follower_asking_for_events_past_the_last_holds_up_no_other_follower(redis_server):
    async def scenario(state: RedisState) -> tuple[list[int], list[int]]:
        engine = engine_over(state)
        await state.insert_job(record("j"))
        await state.append_event("j", "progress", {"iteration": 1})

        async def follower(after: int) -> list[int]:
            return [event.id async for event in engine.events("j", after)]

        ahead = asyncio.ensure_future(follower(1000))  # a Last-Event-ID from elsewhere, first to come
        await asyncio.sleep(0.3)
        honest = asyncio.ensure_future(follower(0))
        await asyncio.sleep(0.3)
        for i in range(2, 4):
            await state.append_event("j", "progress", {"iteration": i})
        await state.append_event("j", "cancelled", {}, terminal=True, status=JobStatus.CANCELLED)
        return await asyncio.wait_for(honest, 10), await asyncio.wait_for(ahead, 10)

    honest, ahead = run(redis_server, scenario)
    assert honest == [1, 2, 3, 4]
    assert ahead == [], "nothing past what it asked for"


def test_a_redis_password_is_never_shown():
    assert redacted("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted("redis://user:secret@host/1") == "redis://user:***@host/1"
    assert redacted("redis://host/0?password=secret&db=2") == "redis://host/0?password=***&db=2"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"
