"""A search's journal, read back as a restart reads it: trials known from whichever event comes first
(they start in any order, and some end without starting), a line torn by a crash cut off so that
the next one stands alone, and a disk that refuses a line costing the search nothing but that line."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import orjson
import pytest

from boostream.jobs.records import Event
from boostream.searches import SearchFolder
from boostream.tuning import Tune, TuneOptions

OPTIONS = TuneOptions(search={"num_leaves": [4, 8]}, n_trials=4, parallel=2)


def event(number: int, kind: str, **data) -> Event:
    return Event(number, kind, orjson.dumps({"tune_id": "t", **data}).decode())


def replayed(*events: Event) -> Tune:
    tune = Tune("t", None, OPTIONS, "valid_l2", "lightgbm")
    tune.replay(list(events), finished_at=None)
    return tune


def test_trials_that_started_out_of_order_keep_their_own_results():
    tune = replayed(
        event(1, "started"),
        event(2, "trial_started", trial=1, params={"num_leaves": 8}, job_id="j1"),
        event(3, "trial_started", trial=0, params={"num_leaves": 4}, job_id="j0"),
        event(4, "progress", trial=0, job_id="j0", iteration=3, metrics={}, job_event=7),
        event(5, "trial_complete", trial=1, job_id="j1", value=2.5, params={"num_leaves": 8}, iterations=10),
        event(6, "best", trial=1, value=2.5),
    )
    assert [(t.number, t.job_id, t.state) for t in tune.trials] == [(0, "j0", "running"), (1, "j1", "complete")]
    assert tune.best is tune.trials[1] and tune.best.value == 2.5
    assert tune.job_events == {0: 7} and tune.next_number() == 2


def test_a_trial_that_ended_without_starting_is_a_trial_of_its_own():
    tune = replayed(
        event(1, "started"),
        event(2, "trial_waiting", trial=0, params={"num_leaves": 4}, code="queue_full", message="", retry_after_s=1),
        event(3, "trial_started", trial=1, params={"num_leaves": 8}, job_id="j1"),
        event(4, "trial_failed", trial=0, job_id=None, params={"num_leaves": 4}, code="stopped", message=""),
        event(5, "trial_waiting", trial=2, params={"num_leaves": 4}, code="queue_full", message="", retry_after_s=1),
    )
    assert [(t.number, t.job_id, t.state) for t in tune.trials] == [
        (0, None, "failed"),
        (1, "j1", "running"),
        (2, None, "running"),  # asked, never started: a restart starts it
    ]
    assert tune.counts() == {"running": 2, "complete": 0, "pruned": 0, "failed": 1}


def test_a_line_torn_by_a_crash_is_cut_off_and_the_next_stands_alone(tmp_path: Path):
    record = SearchFolder(tmp_path / "t")
    record.create({"tune_id": "t"})
    for number in (1, 2, 3):
        record.keep_event(event(number, "progress", trial=0))
    with open(record.path / "events.jsonl", "ab") as file:
        file.write(b'{"id":4,"ty')  # the machine went down mid-line
    assert [e.id for e in record.read()[1]] == [1, 2, 3]
    for number in (4, 5):
        record.keep_event(event(number, "progress", trial=0))
    assert [e.id for e in record.read()[1]] == [1, 2, 3, 4, 5]


def test_a_line_the_disk_refuses_costs_the_search_nothing_else(caplog: pytest.LogCaptureFixture):
    def full_disk(event: Event) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    tune = Tune("t", None, OPTIONS, "valid_l2", "lightgbm", journal=full_disk)
    tune.emit("started", {})
    tune.emit("cancelled", {})
    assert [e.type for e in tune.events] == ["started", "cancelled"]  # followers still get them, and the end
    assert "could not be kept on disk" in caplog.text


def test_a_finished_search_lets_its_events_go_and_reads_them_back_whole(tmp_path: Path):
    record = SearchFolder(tmp_path / "t")
    record.create({"tune_id": "t"})
    tune = Tune("t", None, OPTIONS, "valid_l2", "lightgbm", journal=record.keep_event, kept=record.events)
    tune.emit("started", {})
    tune.emit("complete", {"best_value": 2.5})

    async def read(events) -> list[str]:
        return [event.type async for event in events]

    async def follow_across_the_end() -> list[str]:
        following = tune.follow(0)  # a follower that had not read the end when the search ended
        first = await anext(following)
        tune.status = "succeeded"
        tune.let_go()
        return [first.type, *await read(following)]

    assert asyncio.run(asyncio.wait_for(follow_across_the_end(), 5)) == ["started", "complete"]  # not a hang
    assert tune.events == [] and tune.last_id == 2 and tune.result() == {"tune_id": "t", "best_value": 2.5}
    assert asyncio.run(read(tune.follow(0))) == ["started", "complete"]
    assert asyncio.run(read(tune.follow(1))) == ["complete"]
