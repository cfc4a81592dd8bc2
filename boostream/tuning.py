"""Streamed hyperparameter search: one request, many trials, pruned on their live curves.

Optuna does the searching (its samplers and pruners, through its ask-and-tell interface); this
module runs the trials. Each trial is a job of its own, submitted as any job is (its queue, its
worker, its events, its model), with the search's hyperparameters over the request's `params`.
Its `progress` events carry every round's validation metric, reported to its Optuna trial as they
come; when the pruner says so, the job is cancelled (it stops after its current round) and the
trial ends `pruned`. The search's own events (`started`, `trial_started`, `progress`,
`trial_pruned`, `trial_complete`, `trial_failed`, `best`, then `complete`, `error` or `cancelled`)
are kept in order for as long as the search is, and followed from any id (`Last-Event-ID`).

The trials share the request's table: it is written once to the search's folder among the jobs'
inputs, and each trial's job gets hard links to its files (nothing is copied).

A search outlives its server as a job does (`boostream.searches` keeps it on disk): each event is
written as it is emitted, and each ended trial with every value it reported, so that a search the
server was running when it stopped goes on after a restart. Its ended trials go back into a new
Optuna study (`Resumed`); a running trial is followed again from the last event of its job that
the search read, and when its job starts over, the trial does (`trial_restarted`). Nothing here
knows HTTP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
import orjson

from boostream.errors import BoostreamError, InvalidParameter, QueueFull
from boostream.jobs import inputs
from boostream.jobs.job import EventLog
from boostream.jobs.records import Event, JobRecord
from boostream.trainers.base import ParamSpec, Trainer, TrainingData, validate_params

log = logging.getLogger("boostream.tuning")

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
MAX_TRIALS = 1000
# The median pruner's patience: it prunes no trial before this many have completed, nor before this
# share of a trial's rounds (at least WARMUP_ROUNDS): early on, a trial with many leaves looks better
# than it ends (bench/tune.py: with 5 rounds of 200, the best value found was 15% worse).
STARTUP_TRIALS, WARMUP_SHARE, WARMUP_ROUNDS = 5, 0.25, 5
STATUSES = ("running", "succeeded", "failed", "cancelled")
# A trial refused for want of room (a full queue, the key's quota) asks again after the time the
# refusal suggests, within these bounds.
WAIT_MIN_S, WAIT_MAX_S = 0.5, 5.0
# How a search ends, by its last event.
ENDINGS = {"complete": "succeeded", "error": "failed", "cancelled": "cancelled"}
TRIAL_ENDS = {"trial_complete": "complete", "trial_pruned": "pruned", "trial_failed": "failed"}


class TuneOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A search's own fields, beside those of a training request."""

    search: dict[str, Any]
    n_trials: int = 20
    parallel: int = 1
    timeout_s: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None


TUNE_FIELDS = TuneOptions.__struct_fields__


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The searched hyperparameters as Optuna distributions, and as the request gave them."""

    distributions: dict[str, Any]
    given: dict[str, Any]

    @property
    def grid(self) -> dict[str, list[Any]]:
        return {name: list(dist.choices) for name, dist in self.distributions.items()}

    @property
    def smallest(self) -> dict[str, Any]:
        return self._ends("low")

    @property
    def largest(self) -> dict[str, Any]:
        """The largest value of each searched parameter: the most rounds a trial may train (the
        hyperband pruner's largest resource), the most memory it may take."""
        return self._ends("high")

    def _ends(self, end: str) -> dict[str, Any]:
        pick = min if end == "low" else max
        return {
            name: pick(dist.choices) if hasattr(dist, "choices") else getattr(dist, end)
            for name, dist in self.distributions.items()
        }


def check_search(
    options: TuneOptions, trainer: Trainer, params: Mapping[str, Any], data: TrainingData, most_parallel: int
) -> SearchSpace:
    """The search space, checked against the backend's bounds; InvalidParameter naming the field
    (`search.<name>`, `n_trials`, ...) at fault. `params` are the request's fixed ones, as given."""
    import optuna

    if not data.has_validation:
        raise InvalidParameter(
            "valid_fraction", "a search optimises a validation metric: send X_valid and y_valid, or valid_fraction"
        )
    if not 1 <= options.n_trials <= MAX_TRIALS:
        raise InvalidParameter("n_trials", f"n_trials must be from 1 to {MAX_TRIALS}, got {options.n_trials}")
    if not 1 <= options.parallel <= most_parallel:
        raise InvalidParameter(
            "parallel",
            f"parallel must be from 1 to {most_parallel} (the {trainer.title} jobs this server trains at once), "
            f"got {options.parallel}",
        )
    if options.timeout_s is not None and not (math.isfinite(options.timeout_s) and options.timeout_s > 0):
        raise InvalidParameter("timeout_s", f"timeout_s must be a number of seconds above 0, got {options.timeout_s}")
    for field, value, known in (("sampler", options.sampler, SAMPLERS), ("pruner", options.pruner, PRUNERS)):
        if value not in known:
            raise InvalidParameter(field, f"unknown {field} {value!r}; choose one of {list(known)}")
    if options.seed is not None and not 0 <= options.seed < 2**32:
        raise InvalidParameter("seed", f"seed must be from 0 to 2**32 - 1, got {options.seed}")
    if not options.search:
        raise InvalidParameter("search", 'name at least one hyperparameter to search, e.g. {"num_leaves": [15, 63]}')
    specs = {spec.name: spec for spec in trainer.params}
    distributions: dict[str, Any] = {}
    for name, given in options.search.items():
        field = f"search.{name}"
        if name not in specs:
            raise InvalidParameter(field, f"unknown parameter; known: {', '.join(sorted(specs))}")
        if name in params:
            raise InvalidParameter(field, f"{name} is searched: leave it out of params")
        distributions[name] = _distribution(specs[name], given, field, optuna)
    if options.sampler == "grid":
        ranges = [name for name, dist in distributions.items() if not hasattr(dist, "choices")]
        if ranges:
            raise InvalidParameter(f"search.{ranges[0]}", "the grid sampler takes lists of choices, not ranges")
    return SearchSpace(distributions, dict(options.search))


def _distribution(spec: ParamSpec, given: Any, field: str, optuna: Any) -> Any:
    if isinstance(given, list):
        if not given:
            raise InvalidParameter(field, "an empty list of choices")
        choices = [_bound(spec, value, field) for value in given]
        if len(set(choices)) != len(choices):
            raise InvalidParameter(field, "a choice is listed twice")
        return optuna.distributions.CategoricalDistribution(choices)
    if not isinstance(given, dict) or not {"low", "high"} <= set(given) or not set(given) <= {"low", "high", "log"}:
        raise InvalidParameter(
            field, 'a range {"low": ..., "high": ..., "log": true|false} or a list of choices, e.g. [15, 31, 63]'
        )
    if spec.kind is bool:
        raise InvalidParameter(field, "a true/false parameter is searched as the list [true, false]")
    low, high = _bound(spec, given["low"], f"{field}.low"), _bound(spec, given["high"], f"{field}.high")
    log_scale = given.get("log", False)
    if not isinstance(log_scale, bool):
        raise InvalidParameter(f"{field}.log", f"log must be true or false, got {log_scale!r}")
    if not low < high:
        raise InvalidParameter(field, f"low ({low}) must be below high ({high})")
    if log_scale and low <= 0:
        raise InvalidParameter(f"{field}.low", f"a log range needs low above 0, got {low}")
    if spec.kind is int:
        return optuna.distributions.IntDistribution(low, high, log=log_scale)
    return optuna.distributions.FloatDistribution(low, high, log=log_scale)


def _bound(spec: ParamSpec, value: Any, field: str) -> Any:
    """`value` checked as the parameter's own check does, the error naming `field`."""
    try:
        return spec.validate(value)
    except InvalidParameter as error:
        raise InvalidParameter(field, error.message) from None


@dataclasses.dataclass
class Trial:
    number: int
    params: dict[str, Any]
    job_id: str | None = None
    state: str = "running"  # running, complete, pruned, failed
    value: float | None = None
    best_iteration: int | None = None
    iterations: int | None = None
    artifact_id: str | None = None
    pruned_at: int | None = None

    def row(self) -> dict[str, Any]:
        """As the events and the leaderboard show it: its number as `trial`."""
        row = dataclasses.asdict(self)
        return {"trial": row.pop("number"), **row}


class Tune(EventLog):
    """A search: its state, its trials and its events, kept in order and followed live. `journal`
    keeps each event as it is emitted (`boostream.searches`)."""

    def __init__(
        self,
        tune_id: str,
        owner: str | None,
        options: TuneOptions,
        metric: str,
        model_type: str,
        created_at: float | None = None,
        journal: Callable[[Event], None] | None = None,
        kept: Callable[[], list[Event]] | None = None,
    ) -> None:
        super().__init__()
        self.id = tune_id
        self.owner = owner
        self.options = options
        self.metric = metric
        self.model_type = model_type
        self.status = "running"
        self.created_at = time.time() if created_at is None else created_at
        self.finished_at: float | None = None
        self.trials: list[Trial] = []
        self.best: Trial | None = None
        self.error: dict[str, Any] | None = None
        self.cancel_requested = False
        self.restarts = 0  # times the server stopped while it ran
        self.job_events: dict[int, int] = {}  # running trials: the last event of its job read, by trial
        self._journal = journal
        # Once it has ended, its events are read from where `journal` kept them (`kept`), not
        # held: a server keeps its finished searches for days.
        self._kept = kept
        self._last_id = 0  # the last event's id, once they are let go
        self._result: dict[str, Any] | None = None

    @property
    def last_id(self) -> int:
        return self._last_id or len(self.events)

    def let_go(self) -> None:
        """A finished search's events leave memory; followers read them from where they were kept."""
        if self.finished and self._kept is not None and self.events:
            self._result = self.result()
            self._last_id = len(self.events)
            self.events = []

    async def follow(self, after: int = 0) -> AsyncGenerator[Event, None]:
        if not self._last_id:
            async for event in super().follow(after):
                yield event
            return
        for event in await anyio.to_thread.run_sync(self._kept or list):
            if event.id > after:
                yield event

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        event = Event(len(self.events) + 1, kind, orjson.dumps({"tune_id": self.id, **data}).decode())
        if self._journal is not None:
            try:
                self._journal(event)  # first: an event followed is an event kept
            except OSError:  # a full disk, say: the search goes on; a restart would lose it
                log.exception("tune %s: event %d could not be kept on disk", self.id, event.id)
                self._kept = None  # what was kept is not the whole log: it stays in memory
        self.append(event)

    def next_number(self) -> int:
        return self.trials[-1].number + 1 if self.trials else 0

    def replay(self, events: list[Event], finished_at: float | None) -> None:
        """The state its events say it reached: its trials, its best, how it ended; and for each
        running trial, the last event of its job that it read. A trial is known from its first
        event, whichever it is: trials start in any order, and some end without starting."""
        trials: dict[int, Trial] = {}
        for event in events:
            self.append(event)
            data = orjson.loads(event.json)
            number = data.get("trial")
            if event.type in ("trial_waiting", "trial_started", *TRIAL_ENDS):
                trial = trials.setdefault(number, Trial(number, data.get("params") or {}))
            if event.type == "trial_started":
                trial.params, trial.job_id = data["params"], data["job_id"]
            elif event.type in ("progress", "trial_restarted") and "job_event" in data:
                self.job_events[number] = data["job_event"]
            elif event.type in TRIAL_ENDS:
                trial.state = TRIAL_ENDS[event.type]
                trial.value = data.get("value")
                trial.pruned_at = data.get("round")
                for name in ("best_iteration", "iterations", "artifact_id"):
                    setattr(trial, name, data.get(name))
            elif event.type == "best":
                self.best = trials[number]
            elif event.type == "restarted":
                self.restarts += 1
            elif event.type in ENDINGS:
                self.status, self.finished_at = ENDINGS[event.type], data.get("finished_at", finished_at)
                if event.type == "error":
                    self.error = {"code": data["code"], "message": data["message"]}
        self.trials = sorted(trials.values(), key=lambda trial: trial.number)

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def counts(self) -> dict[str, int]:
        counted = {state: 0 for state in ("running", "complete", "pruned", "failed")}
        for trial in self.trials:
            counted[trial.state] += 1
        return counted

    def view(self) -> dict[str, Any]:
        return {
            "tune_id": self.id,
            "status": self.status,
            "owner": self.owner,
            "model_type": self.model_type,
            "metric": self.metric,
            "n_trials": self.options.n_trials,
            "trials": self.counts(),
            "best": None if self.best is None else self.best.row(),
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "error": self.error,
        }

    def result(self) -> dict[str, Any] | None:
        """The `complete` event's data, once there is one."""
        if self._last_id:
            return self._result
        done = next((event for event in reversed(self.events) if event.type == "complete"), None)
        return None if done is None else dict(orjson.loads(done.json))


# What a search needs of the service: submit a trial's job, follow its events (after an id),
# cancel it; and keep each trial as it ends (with the values it reported, by round).
Submit = Callable[[TrainingData, dict[str, Any], Path], Awaitable[JobRecord]]
Follow = Callable[[str, int], AsyncIterator[Event]]
Cancel = Callable[[str], Awaitable[Any]]
KeepTrial = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class Resumed:
    """A search taken up after a restart: its ended trials as `Tuner` kept them (`KeepTrial`)."""

    ended: list[dict[str, Any]]
    reason: str


class Tuner:
    """Runs one search to its end: asks Optuna for trials, runs each as a job, tells Optuna how it
    went, and writes the search's events."""

    def __init__(
        self,
        tune: Tune,
        space: SearchSpace,
        trainer: Trainer,
        objective: str,
        params: dict[str, Any],
        data: TrainingData,
        folder: Path,
        submit: Submit,
        follow: Follow,
        cancel: Cancel,
        keep_trial: KeepTrial = lambda row: None,
    ) -> None:
        import optuna

        self.tune, self.space, self.trainer, self.objective = tune, space, trainer, objective
        self.params, self.data, self.folder = params, data, folder
        self._submit, self._follow, self._cancel, self._keep_trial = submit, follow, cancel, keep_trial
        options = tune.options
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rounds = trainer.rounds(validate_params(trainer.params, {**params, **space.largest}))
        self.study = optuna.create_study(
            # Named: the hyperband pruner puts a trial in its bracket by a hash of the study's name,
            # so a seeded search's is its seed's (the same trials), another's its own.
            study_name=tune.id if options.seed is None else f"search-{options.seed}",
            direction="minimize",
            sampler=_sampler(options, space),
            pruner=pruner(options.pruner, rounds),
        )
        self.n_trials = options.n_trials
        if options.sampler == "grid":
            self.n_trials = min(self.n_trials, math.prod(len(choices) for choices in space.grid.values()))
        self._reported: dict[int, dict[int, float]] = {}  # running trials' values, by trial and round
        self.timed_out = False

    async def run(self, resumed: Resumed | None = None) -> None:
        """The search to its end; or, cancelled (the server stopping), left as it is on disk, to go on
        after a restart (`resumed`)."""
        tune, options = self.tune, self.tune.options
        if resumed is None:
            tune.emit(
                "started",
                {
                    "space": self.space.given, "n_trials": self.n_trials, "parallel": options.parallel,
                    "sampler": options.sampler, "pruner": options.pruner, "seed": options.seed,
                    "metric": tune.metric, "model_type": self.trainer.name, "objective": self.objective,
                    "params": self.params,
                },
            )  # fmt: skip
        else:
            tune.emit("restarted", {"reason": resumed.reason, "restarts": tune.restarts + 1})
            tune.restarts += 1
        # Wall-clock time from the search's start: a restart does not give it more.
        deadline = None if options.timeout_s is None else tune.created_at + options.timeout_s
        try:
            async with anyio.create_task_group() as outer:
                if deadline is not None:
                    outer.start_soon(self._watch, deadline)
                async with anyio.create_task_group() as trials:
                    slots = anyio.Semaphore(options.parallel)
                    for trial, optuna_trial in self._restore(resumed) if resumed else ():
                        await slots.acquire()
                        # Followed where its job is; started where it had none yet.
                        restore = self._follow_trial if trial.job_id else self._trial
                        trials.start_soon(restore, trial, optuna_trial, slots)
                    for _ in range(self.n_trials - len(tune.trials)):
                        await slots.acquire()
                        if tune.cancel_requested or self.timed_out:
                            slots.release()
                            break
                        optuna_trial = await anyio.to_thread.run_sync(self.study.ask, self.space.distributions)
                        if tune.cancel_requested or self.timed_out:  # while Optuna was asked
                            self._tell(optuna_trial, state="FAIL")
                            slots.release()
                            break
                        trial = Trial(tune.next_number(), dict(optuna_trial.params))
                        tune.trials.append(trial)
                        trials.start_soon(self._trial, trial, optuna_trial, slots)
                outer.cancel_scope.cancel()  # every trial has ended: the watch too
        except Exception as error:  # a failure of the search itself, not of a trial
            log.exception("tune %s failed", tune.id)
            with anyio.CancelScope(shield=True):
                await self.stop_trials()
                self._end("failed", "error", {"code": "internal_error", "message": f"the search failed: {error}"})
                await anyio.to_thread.run_sync(inputs.remove, self.folder)
            return
        await anyio.to_thread.run_sync(inputs.remove, self.folder)  # ended: no trial more will read them
        if tune.cancel_requested:
            self._end("cancelled", "cancelled", {**self._summary(), "message": "the search was cancelled"})
        elif tune.best is None:
            said = "the search's time ran out before any trial completed" if self.timed_out else "no trial completed"
            self._end("failed", "error", {"code": "no_trial_completed", "message": said})
        else:
            importances = await anyio.to_thread.run_sync(self._importances)
            self._end(
                "succeeded", "complete", {**self._summary(), "importances": importances, "timed_out": self.timed_out}
            )

    def _restore(self, resumed: Resumed) -> list[tuple[Trial, Any]]:
        """The ended trials back in the study, with the values they reported; each running trial
        a new Optuna trial with its params (its job may start over: its values come again)."""
        import optuna

        states = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}
        for row in sorted(resumed.ended, key=lambda row: row["trial"]):
            state = getattr(optuna.trial.TrialState, states[row["state"]])
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=row["params"],
                    distributions={name: self.space.distributions[name] for name in row["params"]},
                    value=row["value"] if row["state"] == "complete" else None,
                    state=state,
                    intermediate_values={int(step): value for step, value in row["reported"].items()},
                )
            )
        running = []
        for trial in self.tune.trials:
            if trial.state == "running":
                self.study.enqueue_trial(trial.params)
                running.append((trial, self.study.ask(self.space.distributions)))
        if self.tune.options.sampler == "grid":
            # The grid sampler counts as done only the points it handed out itself: the rest of
            # the grid is handed out as fixed trials instead, in order, and no sampler asked.
            self.study.sampler = optuna.samplers.RandomSampler(self.tune.options.seed)
            grid = self.space.grid
            seen = {tuple(trial.params[name] for name in grid) for trial in self.tune.trials}
            for point in itertools.product(*grid.values()):
                if point not in seen:
                    self.study.enqueue_trial(dict(zip(grid, point, strict=True)))
        return running

    async def _watch(self, deadline: float) -> None:
        """At the search's deadline: no trial more, and those running stop after their round."""
        await anyio.sleep(max(0.0, deadline - time.time()))
        self.timed_out = True
        await self.stop_trials()

    async def stop_trials(self) -> None:
        """Cancel every running trial's job: each stops after its current round. A job that does
        not take the cancel (it ended meanwhile, the store is out of reach) is said in the log, and
        the others are cancelled all the same."""
        for trial in list(self.tune.trials):
            if trial.state == "running" and trial.job_id is not None:
                try:
                    await self._cancel(trial.job_id)
                except Exception as error:
                    log.warning("tune %s: trial %d's job %s not cancelled: %s", self.tune.id, trial.number,
                                trial.job_id, error)  # fmt: skip

    async def _trial(self, trial: Trial, optuna_trial: Any, slots: anyio.Semaphore) -> None:
        tune = self.tune
        waited = False
        while True:
            if tune.cancel_requested or self.timed_out:  # while it waited for room
                self._failed(trial, optuna_trial, "stopped", f"never started: {self._stopped_why()}")
                slots.release()
                return
            incoming: Path | None = None
            try:
                params = validate_params(self.trainer.params, {**self.params, **trial.params})
                self.trainer.check(self.data, self.objective, params)
                incoming = self._linked_inputs()
                # A job submitted is a trial started, even as the server stops: never a job on
                # its own that nobody follows after a restart.
                with anyio.CancelScope(shield=True):
                    record = await self._submit(self.data, params, incoming)
                    trial.job_id = record.id
                    tune.emit("trial_started", {"trial": trial.number, "params": trial.params, "job_id": record.id})
                break
            except Exception as error:  # refused (a full queue, the memory limit...), or the disk
                if incoming is not None and incoming.exists():
                    await anyio.to_thread.run_sync(inputs.remove, incoming)
                if isinstance(error, QueueFull):  # no room for it yet: it waits, as a client would
                    if not waited:
                        waiting = {"trial": trial.number, "params": trial.params, "code": error.code,
                                   "message": error.message}  # fmt: skip
                        tune.emit("trial_waiting", {**waiting, "retry_after_s": error.retry_after_s})
                    waited = True
                    await anyio.sleep(min(max(error.retry_after_s, WAIT_MIN_S), WAIT_MAX_S))
                    continue
                if isinstance(error, BoostreamError):
                    self._failed(trial, optuna_trial, error.code, error.message, error.field)
                else:
                    log.exception("tune %s: trial %d could not start", tune.id, trial.number)
                    self._failed(trial, optuna_trial, "error", str(error))
                slots.release()
                return
        await self._follow_trial(trial, optuna_trial, slots)

    async def _follow_trial(self, trial: Trial, optuna_trial: Any, slots: anyio.Semaphore) -> None:
        """The trial's job to its end, from the last of its events the search read."""
        tune, job_id = self.tune, trial.job_id
        assert job_id is not None
        if tune.cancel_requested or self.timed_out:  # while it was submitted
            await self._cancel(job_id)
        try:
            async for event in self._follow(job_id, tune.job_events.get(trial.number, 0)):
                tune.job_events[trial.number] = event.id
                data = orjson.loads(event.json)
                if event.type == "restarted":  # its job starts over: so does the trial's curve
                    restarted = {"trial": trial.number, "job_id": job_id, "reason": data["reason"]}
                    tune.emit("trial_restarted", {**restarted, "job_event": event.id})
                elif event.type == "progress":
                    await self._progress(trial, optuna_trial, data)
                elif event.type == "complete":
                    if trial.state == "running":
                        self._complete(trial, optuna_trial, data)
                elif event.type == "error":
                    if trial.state == "running":
                        self._failed(trial, optuna_trial, data.get("code", "error"), data.get("message", ""))
                elif event.type == "cancelled" and trial.state == "running":
                    self._failed(
                        trial, optuna_trial, "stopped",
                        f"stopped after round {data.get('iteration')}: {self._stopped_why()}",
                    )  # fmt: skip
            if trial.state == "running":  # its events ended without saying how the job did
                self._failed(trial, optuna_trial, "job_lost", f"job {job_id} ended without a result")
        except Exception as error:  # following it failed (the store out of reach, a job expired)
            log.exception("tune %s: trial %d", tune.id, trial.number)
            with contextlib.suppress(Exception):
                await self._cancel(job_id)
            if trial.state == "running":
                self._failed(trial, optuna_trial, "error", f"following job {job_id} failed: {error}")
        finally:
            tune.job_events.pop(trial.number, None)
            slots.release()

    def _stopped_why(self) -> str:
        return "the search was cancelled" if self.tune.cancel_requested else "the search's time ran out"

    async def _progress(self, trial: Trial, optuna_trial: Any, data: dict[str, Any]) -> None:
        tune = self.tune
        history = data.get("history") or {}
        values = (history.get("metrics") or {}).get(tune.metric) or []
        # Every round's value of the searched metric since the job's last event: a trial's curve
        # is whole, however many rounds an event carries.
        rounds = {"first": history.get("first", data["iteration"]), "metrics": {tune.metric: values}}
        tune.emit(
            "progress",
            {
                "trial": trial.number, "job_id": trial.job_id, "iteration": data["iteration"],
                "metrics": data["metrics"], "history": rounds, "job_event": tune.job_events[trial.number],
            },
        )  # fmt: skip
        if trial.state != "running":
            return
        for offset, value in enumerate(values):
            if value is None:
                continue
            step = history["first"] + offset
            self._reported.setdefault(trial.number, {})[step] = value
            optuna_trial.report(value, step)
            if optuna_trial.should_prune():
                trial.state, trial.pruned_at, trial.value = "pruned", step, value
                self._tell(optuna_trial, trial, state="PRUNED")
                tune.emit(
                    "trial_pruned", {"trial": trial.number, "job_id": trial.job_id, "round": step, "value": value}
                )
                assert trial.job_id is not None
                await self._cancel(trial.job_id)
                return

    def _complete(self, trial: Trial, optuna_trial: Any, data: dict[str, Any]) -> None:
        tune = self.tune
        value = (data.get("metrics") or {}).get(tune.metric)
        if value is None:
            self._failed(trial, optuna_trial, "no_metric", f"the job reported no {tune.metric}")
            return
        trial.state, trial.value = "complete", float(value)
        trial.best_iteration, trial.iterations = data.get("best_iteration"), data.get("iterations")
        trial.artifact_id = data.get("artifact_id")
        self._tell(optuna_trial, trial, value=trial.value)
        tune.emit(
            "trial_complete",
            {
                "trial": trial.number, "job_id": trial.job_id, "value": trial.value, "params": trial.params,
                "best_iteration": trial.best_iteration, "iterations": trial.iterations,
                "artifact_id": trial.artifact_id,
            },
        )  # fmt: skip
        if tune.best is None or trial.value < (tune.best.value or math.inf):
            tune.best = trial
            tune.emit("best", trial.row())

    def _failed(self, trial: Trial, optuna_trial: Any, code: str, message: str, field: str | None = None) -> None:
        trial.state = "failed"
        self._tell(optuna_trial, trial, state="FAIL")
        self.tune.emit(
            "trial_failed",
            {"trial": trial.number, "job_id": trial.job_id, "params": trial.params, "code": code,
             "message": message, "field": field},
        )  # fmt: skip

    def _tell(
        self, optuna_trial: Any, trial: Trial | None = None, value: float | None = None, state: str = "COMPLETE"
    ) -> None:
        """Tell Optuna how a trial ended, and keep it (`KeepTrial`) for a study after a restart.
        Optuna's grid sampler calls `study.stop()` once the grid is done, which outside
        `optimize()` raises, after the trial is stored: the count of trials is capped at the grid's
        size already."""
        import optuna

        if trial is not None:
            reported = {str(step): value for step, value in self._reported.pop(trial.number, {}).items()}
            self._keep_trial(
                {"trial": trial.number, "params": trial.params, "state": trial.state, "value": trial.value,
                 "reported": reported}
            )  # fmt: skip
        try:
            self.study.tell(optuna_trial, value, state=getattr(optuna.trial.TrialState, state))
        except RuntimeError as error:
            if "Study.stop" not in str(error):
                raise

    def _summary(self) -> dict[str, Any]:
        tune = self.tune
        ranked = sorted((t for t in tune.trials if t.state == "complete"), key=lambda t: (t.value, t.number))
        others = [t for t in tune.trials if t.state != "complete"]
        best = tune.best
        return {
            "best": None if best is None else best.row(),
            "best_params": None if best is None else {**self.params, **best.params},
            "best_value": None if best is None else best.value,
            "artifact_id": None if best is None else best.artifact_id,
            "metric": tune.metric,
            "trials": tune.counts(),
            "leaderboard": [t.row() for t in ranked] + [t.row() for t in others],
        }

    def _importances(self) -> dict[str, float] | None:
        """Optuna's parameter importances, where there is enough to say (two completed trials or more)."""
        import optuna

        if sum(t.state == "complete" for t in self.tune.trials) < 2:
            return None
        try:
            return {name: float(value) for name, value in optuna.importance.get_param_importances(self.study).items()}
        except (ValueError, RuntimeError):  # every completed trial the same value, say
            return None

    def _end(self, status: str, kind: str, data: dict[str, Any]) -> None:
        end(self.tune, status, kind, data)

    def _linked_inputs(self) -> Path:
        """A folder of hard links to the search's arrays, for a trial's job to take as its own."""
        incoming = self.folder.parent / f"incoming-{uuid.uuid4().hex}"
        incoming.mkdir()
        for path in self.folder.iterdir():
            os.link(path, incoming / path.name)
        return incoming


def end(tune: Tune, status: str, kind: str, data: dict[str, Any]) -> None:
    """The search's last event, and its status."""
    tune.status, tune.finished_at = status, time.time()
    if kind == "error":
        tune.error = {"code": data["code"], "message": data["message"]}
    tune.emit(kind, {**data, "finished_at": tune.finished_at})
    log.info("tune %s %s: %s", tune.id, status, tune.counts())


def _sampler(options: TuneOptions, space: SearchSpace) -> Any:
    import optuna

    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=options.seed)
    if options.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid, seed=options.seed)
    return optuna.samplers.TPESampler(seed=options.seed)


def pruner(name: str, rounds: int) -> Any:
    """Optuna's pruner for trials of `rounds` rounds: `median` waits for STARTUP_TRIALS trials, and
    a share of the rounds, before it prunes; `hyperband` takes a round as its resource, up to the
    trials' rounds."""
    import optuna

    if name == "median":
        warmup = max(WARMUP_ROUNDS, int(rounds * WARMUP_SHARE))
        return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(rounds, 3))
    return optuna.pruners.NopPruner()


def save_inputs(folder: Path, data: TrainingData) -> TrainingData:
    """Write the search's arrays once, and map them back: the trials' jobs link to these files."""
    inputs.save(folder, data)
    loaded = inputs.load(folder)
    assert loaded is not None, folder
    return loaded
