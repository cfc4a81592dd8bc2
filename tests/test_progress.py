"""The bridge from a training thread into the event loop."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

from boostream.jobs.job import Job
from boostream.jobs.manager import JobManager
from boostream.jobs.records import JobRecord, JobRequest
from boostream.jobs.sqlite import SqliteJobStore
from boostream.jobs.webhooks import WebhookPolicy, WebhookSender
from boostream.models.artifacts import ArtifactStore
from boostream.progress import ProgressBridge, metric_history
from boostream.trainers.base import Availability, TrainingData
from boostream.trainers.lightgbm import LightGBMTrainer
from boostream.workers.local import LocalWorkers, WorkerConfig

from conftest import strict_json


def run_training(rounds: int, total: int, interval_s: float, deliver_delay_s: float = 0.0, round_s: float = 0.0):
    """Report `rounds` rounds from a real thread into a real loop; return what was delivered."""
    delivered = []

    async def main():
        loop = asyncio.get_running_loop()

        def deliver(progress):
            delivered.append((time.monotonic(), progress))
            time.sleep(deliver_delay_s)  # a slow consumer holds the loop

        bridge = ProgressBridge(loop, deliver, total, interval_s)

        def train():
            for i in range(1, rounds + 1):
                bridge.report(i, {"train_l2": 1.0 / i})
                time.sleep(round_s)

        await loop.run_in_executor(None, train)
        bridge.finish()

    asyncio.run(main())
    return delivered


def test_first_and_last_rounds_are_delivered_and_the_rest_throttled():
    delivered = run_training(rounds=2000, total=2000, interval_s=0.05, round_s=0.0002)
    iterations = [p.iteration for _, p in delivered]
    assert iterations[0] == 1
    assert iterations[-1] == 2000
    assert iterations == sorted(set(iterations)), "strictly increasing, never the same round twice"
    assert len(iterations) < 2000 / 10
    times = [t for t, _ in delivered]
    gaps = [
        b - a for a, b in zip(times[1:-2], times[2:-1], strict=False)
    ]  # between first and final, the throttle holds
    assert all(gap >= 0.045 for gap in gaps), gaps


def test_a_slow_consumer_gets_the_latest_round_not_a_backlog():
    delivered = run_training(rounds=20000, total=20000, interval_s=0.0, deliver_delay_s=0.01)
    iterations = [p.iteration for _, p in delivered]
    assert iterations[0] == 1 and iterations[-1] == 20000
    # 20000 rounds took far less than 20000 deliveries of 10 ms each: rounds were coalesced.
    assert len(iterations) < 2000


def test_an_early_stop_still_delivers_its_last_round():
    delivered = run_training(rounds=37, total=500, interval_s=10.0)
    assert [p.iteration for _, p in delivered] == [1, 37]
    last = delivered[-1][1]
    assert last.total == 500 and last.percent == 7.4 and last.metrics == {"train_l2": 1.0 / 37}


@pytest.mark.parametrize("deliver_delay_s", [0.0, 0.01])
def test_throttled_rounds_reach_the_consumer_in_the_history_of_the_next_delivery(deliver_delay_s):
    delivered = run_training(rounds=3000, total=3000, interval_s=0.02, deliver_delay_s=deliver_delay_s)
    progresses = [p for _, p in delivered]
    assert len(progresses) < 300, "still throttled"
    covered = []
    for progress in progresses:
        history = progress.history
        rounds = len(history["metrics"]["train_l2"])
        assert history["first"] == progress.iteration - rounds + 1
        assert history["metrics"]["train_l2"][-1] == progress.metrics["train_l2"]
        covered += [(history["first"] + k, value) for k, value in enumerate(history["metrics"]["train_l2"])]
    assert covered == [(i, 1.0 / i) for i in range(1, 3001)], "every round once, in order, with its own metrics"


def test_metric_history_is_one_column_per_metric_with_null_where_a_round_has_none():
    rounds = [{"train_l2": 3.0}, {"train_l2": 2.0, "valid_l2": 5.0}]
    assert metric_history(4, rounds) == {"first": 4, "metrics": {"train_l2": [3.0, 2.0], "valid_l2": [None, 5.0]}}


def test_progress_carries_elapsed_and_eta():
    delivered = run_training(rounds=10, total=10, interval_s=0.0, round_s=0.01)
    middle = [p for _, p in delivered if p.iteration == 5]
    if middle:  # coalescing may skip round 5 on a busy machine
        assert middle[0].elapsed_s > 0 and middle[0].eta_s > 0
    final = delivered[-1][1]
    assert final.eta_s == 0 and final.percent == 100.0 and final.ts <= time.time()


def test_elapsed_and_eta_are_measured_from_the_start_and_projected_over_the_rounds_left():
    started = time.monotonic()
    delivered = run_training(rounds=8, total=20, interval_s=0.0, round_s=0.02)
    wall = time.monotonic() - started
    elapsed = [p.elapsed_s for _, p in delivered]
    assert elapsed == sorted(elapsed) and 0 <= elapsed[0] < elapsed[-1] <= wall
    assert elapsed[-1] >= 7 * 0.02 * 0.9, "eight rounds of 20 ms: at least the seven between the first and the last"
    for _, progress in delivered:
        remaining = progress.total - progress.iteration
        # Both are rounded to 0.1 ms; the ETA's rounding, and elapsed's scaled by remaining / iteration.
        assert progress.eta_s == pytest.approx(
            progress.elapsed_s / progress.iteration * remaining, abs=1e-4 * (1 + remaining / progress.iteration)
        )


def test_reporting_after_the_loop_closed_does_not_raise():
    loop = asyncio.new_event_loop()
    bridge = ProgressBridge(loop, lambda p: None, total=3)
    loop.close()
    errors = []

    def train():
        try:
            for i in range(1, 4):
                bridge.report(i, {})
        except Exception as error:  # pragma: no cover - the failure this test looks for
            errors.append(error)

    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    assert errors == []


def test_a_closed_bridge_delivers_nothing_more():
    delivered = []

    async def main():
        loop = asyncio.get_running_loop()
        bridge = ProgressBridge(loop, delivered.append, total=10, interval_s=0.0)
        await loop.run_in_executor(None, bridge.report, 1, {})
        await asyncio.sleep(0.05)
        bridge.close()
        await loop.run_in_executor(None, bridge.report, 2, {})
        await asyncio.sleep(0.05)
        bridge.finish()

    asyncio.run(main())
    assert [p.iteration for p in delivered] == [1]


def test_a_metric_that_is_not_finite_reaches_every_reader_as_null(tmp_path):
    """Early rounds can give NaN or infinite losses (WarpGBM's float32 losses overflow on large
    targets); JSON has no such numbers, and a browser's JSON.parse refuses them."""
    store = SqliteJobStore(tmp_path)
    trainer, key = LightGBMTrainer(1), b"k" * 32
    request = JobRequest("lightgbm", "regression", {"n_estimators": 3})
    metrics = [
        {"train_l2": math.inf, "valid_l2": math.nan},
        {"train_l2": -math.inf, "valid_l2": 2.0},
        {"train_l2": 1.0, "valid_l2": 1.5},
    ]

    async def main() -> Job:
        # The job manager writes every event, and the live log gets what the store got.
        manager = JobManager(
            store,
            ArtifactStore(tmp_path / "artifacts", key),
            tmp_path / "inputs",
            {"lightgbm": trainer},
            {"lightgbm": Availability(True, device_name="cpu")},
            {"cpu": LocalWorkers(WorkerConfig("cpu", 1, tmp_path / "artifacts", key), 1, 0, 1.0)},  # not started
            max_queued=1,
            max_training_s=60,
            job_ttl_s=60,
            progress_interval_s=10.0,
            webhooks=WebhookSender(key),
            webhook_policy=WebhookPolicy(),
        )
        job = Job("job", request, trainer, time.time())
        store.insert_job(
            JobRecord(job.id, job.status, "lightgbm", "regression", "cpu", request, job.created_at, total=3)
        )
        manager._start(
            job,
            TrainingData(
                X=np.zeros((10, 2)),
                y=np.zeros(10),
                feature_names=["a", "b"],
                X_valid=np.zeros((5, 2)),
                y_valid=np.zeros(5),
            ),
        )
        bridge = ProgressBridge(
            asyncio.get_running_loop(), lambda progress: manager._report(job, progress), total=3, interval_s=10.0
        )

        def train():
            for iteration, values in enumerate(metrics, start=1):
                bridge.report(iteration, values)

        await asyncio.get_running_loop().run_in_executor(None, train)
        bridge.finish()
        return job

    job = asyncio.run(main())
    live = [strict_json(event.json) for event in job.events if event.type == "progress"]
    stored = [strict_json(event.json) for event in store.events(job.id) if event.type == "progress"]
    store.close()
    assert live == stored and [p["iteration"] for p in live] == [1, 3]
    assert live[0]["metrics"] == {"train_l2": None, "valid_l2": None}
    assert live[1]["history"] == {"first": 2, "metrics": {"train_l2": [None, 1.0], "valid_l2": [2.0, 1.5]}}
