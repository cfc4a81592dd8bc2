"""Hyperparameter search: POST /tune/stream with a pruner (median or hyperband), without pruning,
and a plain Optuna loop calling LightGBM in process.

Synthetic regression data (fixed seed), the last 20% of the rows a fixed validation set sent as
X_valid / y_valid, so that every run scores trials on exactly the same rows. A search of N trials,
each `n_estimators` rounds at learning rate 0.1, over num_leaves (log), min_data_in_leaf (log),
feature_fraction and lambda_l2 (log); TPE with a fixed seed; one trial at a time (`parallel` 1),
so that the service is compared with a sequential loop, each trial training on every core. Runs,
side by side in one process (the machine is shared and noisy: the ratios come from one command):

  (1) the service, pruner "median" (Optuna's MedianPruner, the service's patience) or, with
      --pruner hyperband, "hyperband" (Optuna's HyperbandPruner, a round as its resource);
  (2) the service, pruner "none";
  (3) in process, no pruning: optuna.create_study with the same sampler and seed, `study.ask` with
      the service's own distributions (boostream.tuning.check_search), and for the objective
      lightgbm.Dataset + lightgbm.train as the server calls them (boostream/trainers/lightgbm.py:
      its defaults, metric l2, num_threads = every core, verbose -1, the training and the
      validation set evaluated every round, the Dataset built in each trial); a trial's value is
      the last round's validation l2, as the service's;
  (4) in process with the same pruner (`boostream.tuning.pruner`, the service's own): the same loop,
      each round reported to its trial and the trial stopped when `should_prune` says so (what the
      service does with each progress event).

The service runs with its defaults (a job alone trains on every core). Its time runs from just
before the request is sent (the body serialized beforehand) to the receipt of `complete`, and so
includes receiving and decoding the body and writing the search's inputs once. Before timing, one
untimed 1-trial search warms the server's workers up, and one untimed fit warms LightGBM up here.
With --repeats, the runs are repeated in alternating order and the ratios' medians reported.

The hyperband pruner puts each trial in a bracket by a hash of the study's name and the trial's
number, and Optuna names a study at random: each hyperband search, in process or in the service,
brackets its trials otherwise (TPE samples within a trial's bracket too), so (1) and (4) search
alike only with the median pruner.

With --split N, instead: one service search of N trials with the pruner, each trial's time split
from its job's own record (queued, started, every round's time as the server received it, ended)
and set beside the same search in process, trial by trial (see `TrialSplit`).

Targets (the issue): pruning saves at least 40% of the time, (1) <= 0.60 x (2), with a best value
within 1% of the unpruned one; the service costs at most 10% more time than the in-process loop,
(2) <= 1.10 x (3).

    python bench/tune.py                    # 50 trials, 50k x 20 (40k train, 10k valid), 200 rounds
    python bench/tune.py --quick            # a smoke run: 6 trials of 5k x 20, 30 rounds
    python bench/tune.py --pruner hyperband # (1) and (4) with the hyperband pruner
    python bench/tune.py --split 20         # where a pruned trial's time goes in the service
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import lightgbm  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import orjson  # noqa: E402

from boostream import tuning  # noqa: E402
from boostream.config import machine_cores  # noqa: E402
from boostream.trainers.base import TrainingData, validate_params  # noqa: E402
from boostream.trainers.lightgbm import LightGBMTrainer  # noqa: E402
from boostream.tuning import TuneOptions, check_search  # noqa: E402

from _common import (  # noqa: E402
    Server,
    Watchdog,
    body_chunks,
    free_memory,
    median,
    print_header,
    regression_data,
    size_label,
    stream_events,
    verdict,
)

SPACE = {
    "num_leaves": {"low": 8, "high": 256, "log": True},
    "min_data_in_leaf": {"low": 5, "high": 200, "log": True},
    "feature_fraction": {"low": 0.5, "high": 1.0},
    "lambda_l2": {"low": 0.001, "high": 10.0, "log": True},
}
LEARNING_RATE = 0.1
METRIC = "valid_l2"
VALID_SHARE = 0.2
PRUNED_TIME_TARGET = 0.60  # pruning saves at least 40% of the time
BEST_VALUE_TARGET = 1.01  # at a best value within 1%
SERVICE_TARGET = 1.10  # the service at most 10% above the in-process loop

PRUNERS = ("median", "hyperband")
SERVICE_NONE, INPROC_NONE = "service, no pruning", "in process, no pruning"
LABEL_WIDTH = 28


def pruned_labels(pruner: str) -> tuple[str, str]:
    """Runs (1) and (4)'s labels, naming the pruner."""
    return f"service, {pruner} pruner", f"in process, {pruner} pruner"


@dataclasses.dataclass
class Search:
    """One search's outcome, timed on this side with time.perf_counter()."""

    label: str
    wall_s: float
    best_value: float
    best_trial: int
    complete: int
    failed: int
    values: dict[int, float]  # complete trials' values, by trial number
    params: dict[int, dict[str, Any]]  # every trial's sampled parameters
    pruned_at: dict[int, int]  # pruned trials: the round the pruner stopped them at, by trial number
    rounds: int  # boosting rounds trained, over all trials (a pruned job's rounds after its pruning too)
    steal_s: float = math.nan  # CPU time the hypervisor gave other machines during the run (all cores)
    started_s: float = math.nan  # service: request sent -> `started` (body received, decoded, inputs saved)
    job_timings: dict[str, float] = dataclasses.field(default_factory=dict)  # service: sums over its trials' jobs
    fits_s: list[float] = dataclasses.field(default_factory=list)  # service: each complete trial's job's fit_s
    fit_s: float = math.nan  # in process: the sum of its trials' Dataset + train
    # in process, by trial: time.perf_counter() as it was asked for, as its fit started, at its first
    # and last rounds (a pruned run's callback; nan without pruning), as its fit returned, once told
    marks: dict[int, tuple[float, float, float, float, float, float]] = dataclasses.field(default_factory=dict)
    # service, with keep_events: every event of the search (progress too), as (kind, data, time.time() on arrival)
    events: list[tuple[str, dict[str, Any], float]] = dataclasses.field(default_factory=list)

    @property
    def pruned(self) -> int:
        return len(self.pruned_at)

    def line(self) -> str:
        at = sorted(self.pruned_at.values())
        where = f" at rounds {at[0]}-{at[-1]} (median {median(at):.0f})" if at else ""
        return (
            f"  {self.label:<{LABEL_WIDTH}} wall {self.wall_s:8.2f} s | best {METRIC} {self.best_value:.6g} (trial "
            f"{self.best_trial}) | complete {self.complete}, pruned {self.pruned}{where}, failed {self.failed} | "
            f"{self.rounds} rounds trained | CPU steal {self.steal_s:.1f} s"
        )


# ----------------------------------------------------------------------------------------------
# The service


def tune_body(data: TrainingData, rounds: int, trials: int, pruner: str, seed: int) -> bytes:
    return orjson.dumps(
        {
            "model_type": "lightgbm", "objective": "regression", "X": data.X, "y": data.y,
            "X_valid": data.X_valid, "y_valid": data.y_valid,
            "params": {"n_estimators": rounds, "learning_rate": LEARNING_RATE},
            "search": SPACE, "n_trials": trials, "parallel": 1, "sampler": "tpe", "pruner": pruner, "seed": seed,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )  # fmt: skip


def service_search(client: httpx.Client, server: Server, body: bytes, label: str, keep_events: bool = False) -> Search:
    headers = {"content-type": "application/json", "accept": "text/event-stream", "content-length": str(len(body))}
    events: list[tuple[str, dict[str, Any], float]] = []
    kept: list[tuple[str, dict[str, Any], float]] = []  # with keep_events: every event, on time.time()
    sent = time.perf_counter()
    with client.stream(
        "POST", server.url + "/tune/stream", content=body_chunks(body), headers=headers, timeout=httpx.Timeout(900.0)
    ) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"POST /tune/stream answered {response.status_code}: {response.text[:2000]}")
        for event in stream_events(response):
            if keep_events:
                kept.append((event.event, event.json(), event.received))
            if event.event == "progress":
                continue  # every round of every trial: not parsed here
            events.append((event.event, event.json(), event.received_perf))
            if event.event in ("complete", "error", "cancelled"):
                break
    kind, done, ended = events[-1]
    if kind != "complete":
        raise RuntimeError(f"the search ended with {kind}: {done}")
    params = {data["trial"]: data["params"] for kind, data, _ in events if kind == "trial_started"}
    pruned_at = {data["trial"]: data["round"] for kind, data, _ in events if kind == "trial_pruned"}
    values = {data["trial"]: data["value"] for kind, data, _ in events if kind == "trial_complete"}
    counts = done["trials"]
    search = Search(
        label, ended - sent, done["best_value"], done["best"]["trial"], counts["complete"], counts["failed"],
        values, params, pruned_at, rounds=0, started_s=next(at for kind, _, at in events if kind == "started") - sent,
    )  # fmt: skip
    # After the timing: the rounds every trial's job trained, and where a complete trial's time went.
    for job_id in [data["job_id"] for kind, data, _ in events if kind == "trial_started"]:
        job = client.get(f"{server.url}/jobs/{job_id}", timeout=60.0)
        job.raise_for_status()
        search.rounds += job.json()["progress"]["iteration"]
    job_ids = [data["job_id"] for kind, data, _ in events if kind == "trial_complete"]
    sums: dict[str, float] = {}
    for job_id in job_ids:
        result = client.get(f"{server.url}/jobs/{job_id}/result", timeout=60.0)
        result.raise_for_status()
        timings = result.json()["timings"]
        for name in ("queued_s", "load_s", "fit_s", "artifact_s"):
            sums[name] = sums.get(name, 0.0) + timings.get(name, math.nan)
        search.fits_s.append(timings["fit_s"])
    search.job_timings = sums
    search.events = kept
    return search


# ----------------------------------------------------------------------------------------------
# In process


def lightgbm_trial(data: TrainingData, params: dict[str, Any], threads: int, on_round=None) -> tuple[float, int]:
    """The server's LightGBM call for one trial; the last round's validation l2 (the trial's value)
    and the rounds trained.
    `on_round(round, value)` returning True stops the training after that round."""
    booster_params = {k: v for k, v in params.items() if k not in ("n_estimators", "early_stopping_rounds")}
    booster_params.update(objective="regression", metric="l2", num_threads=threads, verbose=-1)
    dataset_params = {"max_bin": params["max_bin"], "verbose": -1, "num_threads": threads}
    seen: list[float] = []  # each round's validation l2

    def record(env: lightgbm.callback.CallbackEnv) -> None:
        value = env.evaluation_result_list[1][2]  # ("valid", "l2", value, ...), after ("train", "l2", ...)
        seen.append(value)
        if on_round is not None and on_round(env.iteration + 1, value):
            raise lightgbm.callback.EarlyStopException(env.iteration, env.evaluation_result_list)

    train_set = lightgbm.Dataset(data.X, data.y, feature_name=data.feature_names, params=dataset_params)
    valid_set = lightgbm.Dataset(data.X_valid, data.y_valid, reference=train_set)
    lightgbm.train(
        booster_params,
        train_set,
        num_boost_round=params["n_estimators"],
        valid_sets=[train_set, valid_set],
        valid_names=["train", "valid"],
        callbacks=[record],
    )
    return seen[-1], len(seen)


def in_process_search(
    data: TrainingData, rounds: int, trials: int, pruner: str, seed: int, threads: int, label: str
) -> Search:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainer = LightGBMTrainer(threads)
    fixed = {"n_estimators": rounds, "learning_rate": LEARNING_RATE}
    space = check_search(TuneOptions(search=SPACE, n_trials=trials, seed=seed), trainer, fixed, data, 1)
    started = time.perf_counter()
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=tuning.pruner(pruner, rounds),  # the service's own
    )
    values: dict[int, float] = {}
    params: dict[int, dict[str, Any]] = {}
    pruned_at: dict[int, int] = {}
    rounds_trained = 0
    fit_s = 0.0
    marks: dict[int, tuple[float, float, float, float, float, float]] = {}
    for _ in range(trials):
        asked = time.perf_counter()
        trial = study.ask(space.distributions)
        params[trial.number] = dict(trial.params)
        stopped: list[int] = []
        rounds_at: list[float] = []  # the first round's time and the latest's

        def on_round(step: int, value: float, trial=trial, stopped=stopped, rounds_at=rounds_at) -> bool:
            rounds_at[1:] = [time.perf_counter()]
            trial.report(value, step)
            if trial.should_prune():
                stopped.append(step)
                return True
            return False

        fit_started = time.perf_counter()
        trial_params = validate_params(trainer.params, {**fixed, **trial.params})
        value, trained = lightgbm_trial(data, trial_params, threads, on_round if pruner != "none" else None)
        fit_returned = time.perf_counter()
        rounds_trained += trained
        fit_s += fit_returned - fit_started
        if stopped:
            pruned_at[trial.number] = stopped[0]
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            values[trial.number] = value
            study.tell(trial, value)
        first, last = (rounds_at[0], rounds_at[-1]) if rounds_at else (math.nan, math.nan)
        marks[trial.number] = (asked, fit_started, first, last, fit_returned, time.perf_counter())
    wall = time.perf_counter() - started
    best = min(values, key=lambda number: (values[number], number))
    return Search(
        label, wall, values[best], best, len(values), 0, values, params, pruned_at, rounds_trained, fit_s=fit_s,
        marks=marks,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------


def split_data(rows: int, cols: int, seed: int) -> TrainingData:
    X, y = regression_data(rows, cols, seed)
    cut = rows - int(rows * VALID_SHARE)
    return TrainingData(
        X=np.ascontiguousarray(X[:cut]), y=y[:cut], feature_names=[f"f{i}" for i in range(cols)],
        X_valid=np.ascontiguousarray(X[cut:]), y_valid=y[cut:],
    )  # fmt: skip


def same_trials(a: Search, b: Search) -> str:
    """Whether two unpruned searches sampled the same trials and scored them alike."""
    if a.params != b.params:
        differ = sum(a.params.get(n) != b.params.get(n) for n in set(a.params) | set(b.params))
        return f"no: {differ} of {len(a.params)} trials sampled other parameters"
    worst = max((abs(a.values[n] - b.values[n]) / abs(b.values[n]) for n in b.values if n in a.values), default=0.0)
    return f"yes: the same {len(a.params)} trials' parameters, values within a relative {worst:.1e}"


def cpu_steal_s() -> float:
    """Seconds of CPU time stolen by the hypervisor so far, all cores together (/proc/stat)."""
    try:
        with open("/proc/stat") as file:
            fields = file.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def lost_to_pruning(unpruned: Search, pruned: Search) -> str:
    """The trials both searches sampled alike (same number, same parameters: before TPE's first
    model, at least) that the pruner stopped, though they finished better than the pruned search's best."""
    shared = [n for n, params in unpruned.params.items() if pruned.params.get(n) == params]
    stopped = [n for n in shared if n in pruned.pruned_at]
    lost = [n for n in stopped if unpruned.values.get(n, math.inf) < pruned.best_value]
    described = ", ".join(
        f"trial {n} (pruned at round {pruned.pruned_at[n]}, finished at {unpruned.values[n]:.6g} unpruned)"
        for n in lost
    )
    return (
        f"{len(shared)} trials sampled alike, {len(stopped)} of them pruned, {len(lost)} of those finished better "
        f"than the pruned search's best" + (f": {described}" if lost else "")
    )


def pruned_alike(service: Search, in_process: Search) -> str:
    """Whether the two pruned searches sampled the same trials and pruned them at the same rounds."""
    same = [n for n, params in service.params.items() if in_process.params.get(n) == params]
    both = [n for n in same if n in service.pruned_at and n in in_process.pruned_at]
    at_same = sum(service.pruned_at[n] == in_process.pruned_at[n] for n in both)
    return (
        f"{len(same)} of {len(service.params)} trials sampled alike; of those, {len(both)} pruned in both, "
        f"{at_same} at the same round"
    )


def print_service_detail(search: Search) -> None:
    t = search.job_timings
    print(
        f"    request sent -> `started` {search.started_s:.3f} s (body received, decoded, inputs saved); over its "
        f"{search.complete} complete trials' jobs: queued {t.get('queued_s', math.nan):.2f} s, load "
        f"{t.get('load_s', math.nan):.2f} s, fit {t.get('fit_s', math.nan):.2f} s, artifact "
        f"{t.get('artifact_s', math.nan):.2f} s; the slowest fit {max(search.fits_s, default=math.nan):.2f} s"
    )


# ----------------------------------------------------------------------------------------------
# --split: where a trial's time goes


@dataclasses.dataclass
class TrialSplit:
    """One trial of a service search, from its job's record (wall-clock times, time.time()): the
    job's life cut at its first round, its last useful round (the round it was pruned at, or its
    last), its last round and its end; and the same trial in process, where it was sampled alike."""

    number: int
    state: str  # complete, pruned, failed
    pruned_at: int | None  # the round the pruner stopped it at
    decided_at: int | None  # the round whose progress event carried that round (the search's decision)
    last: int  # the rounds its job trained
    created: float  # the job submitted
    started: float  # the job taken from the queue, its input mapped (then sent to a worker)
    first: float  # round 1 received from the worker
    useful: float  # the pruned round received (interpolated between progress events); the last otherwise
    decided: float  # the decision's round received; the last round otherwise
    ended: float  # the last round received
    finished: float  # the job's end event written
    next_created: float | None  # the next trial's job submitted
    client_started: float  # the client received `trial_started`
    client_ended: float  # ... and the trial's end event (`trial_pruned`, `trial_complete`)
    client_next: float | None  # ... and the next `trial_started`
    timings: dict[str, float]  # a complete trial's job timings (queued_s, load_s, fit_s, artifact_s)
    in_process: tuple[float, float, float, float, float] | None = None  # see `in_process_split`

    def service(self) -> tuple[float, float, float, float, float, float, float]:
        """Seconds: submitted -> started (queue, input); started -> round 1 (the worker gets the task,
        maps the input, builds the Dataset, trains round 1); round 1 -> the useful last round; that
        round -> the decision's round (rounds trained before the search heard of the pruned round:
        progress events come at most every --progress-interval-s); the decision's round -> the last
        round (rounds trained while the decision went back to the worker); the last round -> the
        job's end event (LightGBM returns; a complete job writes its model); the job's end -> the next
        trial's job submitted (the search hears the end, asks Optuna, links the inputs, submits)."""
        next_s = (self.next_created - self.finished) if self.next_created is not None else 0.0
        return (
            self.started - self.created, self.first - self.started, self.useful - self.first,
            self.decided - self.useful, self.ended - self.decided, self.finished - self.ended, next_s,
        )  # fmt: skip


SERVICE_PARTS = ("queue+input", "to round 1", "rounds", "to decision", "after decision", "to job end", "to next job")
IN_PROCESS_PARTS = ("to round 1", "rounds", "to tell", "next ask")


def in_process_split(marks: dict[int, tuple[float, ...]], number: int) -> tuple[float, float, float, float, float]:
    """A trial in process, in seconds: ask -> round 1 (Optuna's ask, the Dataset, round 1); round 1 ->
    its last round; the last round -> told (LightGBM returns, Optuna is told); told -> the next
    trial asked for; and its whole time, ask to the next ask (its own tell for the last trial)."""
    asked, _, first, last, _, told = marks[number]
    following = marks.get(number + 1)
    next_s = following[1] - told if following else 0.0  # the next trial's ask (to its fit's start)
    return first - asked, last - first, told - last, next_s, told - asked + next_s


def iso_seconds(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def job_events(client: httpx.Client, server: Server, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """A finished job's stored events, in order."""
    found = []
    with client.stream("GET", f"{server.url}/jobs/{job_id}/events", timeout=httpx.Timeout(60.0)) as response:
        response.raise_for_status()
        for event in stream_events(response):
            found.append((event.event, event.json()))
            if event.event in ("complete", "error", "cancelled"):
                break
    return found


def round_time(rounds: list[tuple[int, float]], iteration: int) -> float:
    """When round `iteration` was received, interpolated between the rounds that progress events
    carried (each event's own round and its time; the first and last rounds are always sent)."""
    for (i0, t0), (i1, t1) in zip(rounds, rounds[1:], strict=False):
        if i0 <= iteration <= i1:
            return t0 + (t1 - t0) * (iteration - i0) / (i1 - i0) if i1 > i0 else t0
    return rounds[-1][1] if iteration >= rounds[-1][0] else rounds[0][1]


def trial_splits(client: httpx.Client, server: Server, search: Search) -> list[TrialSplit]:
    """Each trial of a service search (run with keep_events) from its job's record and events."""
    started = {d["trial"]: (d["job_id"], at) for kind, d, at in search.events if kind == "trial_started"}
    ends = {
        d["trial"]: (kind, d, at)
        for kind, d, at in search.events
        if kind in ("trial_pruned", "trial_complete", "trial_failed")
    }
    search_end = search.events[-1][2]
    splits: list[TrialSplit] = []
    for number in sorted(started):
        job_id, client_started = started[number]
        record = client.get(f"{server.url}/jobs/{job_id}", timeout=60.0)
        record.raise_for_status()
        job = record.json()
        rounds = [(d["iteration"], d["ts"]) for kind, d in job_events(client, server, job_id) if kind == "progress"]
        kind, end, client_ended = ends[number]
        last = job["progress"]["iteration"]
        pruned_at = end.get("round") if kind == "trial_pruned" else None
        decided_at = next(i for i, _ in rounds if i >= pruned_at) if pruned_at is not None else None
        timings: dict[str, float] = {}
        if kind == "trial_complete":
            result = client.get(f"{server.url}/jobs/{job_id}/result", timeout=60.0)
            result.raise_for_status()
            timings = result.json()["timings"]
        following = started.get(number + 1)
        splits.append(
            TrialSplit(
                number, kind.removeprefix("trial_"), pruned_at, decided_at, last,
                iso_seconds(job["created_at"]), iso_seconds(job["started_at"]), rounds[0][1],
                round_time(rounds, pruned_at if pruned_at is not None else last),
                round_time(rounds, decided_at if decided_at is not None else last), rounds[-1][1],
                iso_seconds(job["finished_at"]), None, client_started, client_ended,
                following[1] if following else search_end, timings,
            )
        )  # fmt: skip
    for split, following in zip(splits, splits[1:], strict=False):
        split.next_created = following.created
    return splits


def print_splits(splits: list[TrialSplit], in_process: Search, rounds: int) -> None:
    alike = {
        s.number for s in splits
        if s.number in in_process.marks and in_process.pruned_at.get(s.number) == s.pruned_at
    }  # fmt: skip
    print(
        "\n## each trial (seconds; service: "
        + ", ".join(SERVICE_PARTS) + ", the whole; in process: " + ", ".join(IN_PROCESS_PARTS) + ", the whole)"
    )  # fmt: skip
    for s in splits:
        parts = s.service()
        where = (
            f"pruned at {s.pruned_at}, decided at {s.decided_at}, stopped at {s.last}"
            if s.pruned_at
            else f"{s.state}, {s.last} rounds"
        )
        line = f"  trial {s.number:>2} {where:<46} service {' '.join(f'{p:6.3f}' for p in parts)} = {sum(parts):6.3f}"
        if s.number in alike:
            s.in_process = in_process_split(in_process.marks, s.number)
            own = " ".join(f"{p:6.3f}" for p in s.in_process[:4])
            line += f" | in process {own} = {s.in_process[4]:6.3f}"
            line += f" | extra {sum(parts) - s.in_process[4]:+6.3f}"
        else:
            line += " | in process: sampled or pruned otherwise"
        print(line)
    for state in ("pruned", "complete"):
        group = [s for s in splits if s.state == state]
        if not group:
            continue
        print(f"\n## {state} trials: {len(group)} (median per trial / total, seconds)")
        columns = list(zip(*[s.service() for s in group], strict=True))
        for name, values in zip(SERVICE_PARTS, columns, strict=True):
            print(f"  service {name:<16} {median(values):7.3f} / {sum(values):7.2f}")
        whole = [sum(s.service()) for s in group]
        print(f"  service {'the whole':<16} {median(whole):7.3f} / {sum(whole):7.2f}")
        paired = [s for s in group if s.in_process is not None]
        if paired:
            print(f"  of these, {len(paired)} sampled and pruned alike in process:")
            columns = list(zip(*[s.in_process for s in paired], strict=True))
            for name, values in zip((*IN_PROCESS_PARTS, "the whole"), columns, strict=True):
                print(f"  in process {name:<13} {median(values):7.3f} / {sum(values):7.2f}")
            extra = [sum(s.service()) - s.in_process[4] for s in paired]
            print(f"  service - in process     {median(extra):7.3f} / {sum(extra):7.2f}")
        if state == "pruned":
            throttled = [s.decided_at - s.pruned_at for s in group]
            after = [s.last - s.decided_at for s in group]
            per_round = [(s.ended - s.first) / max(1, s.last - 1) for s in group]
            print(
                f"  rounds: pruned round -> the decision's round {median(throttled):.0f} (median) / {sum(throttled)}; "
                f"decision -> the job's stop {median(after):.0f} / {sum(after)}; {1000 * median(per_round):.1f} ms a "
                f"round (median)"
            )
        client_run = [s.client_ended - s.client_started for s in group]
        client_gap = [s.client_next - s.client_ended for s in group if s.client_next is not None]
        heard = [s.client_ended - s.decided for s in group]
        job_left = [s.finished - s.client_ended for s in group]
        print(
            f"  client: trial_started -> its end {median(client_run):.3f} / {sum(client_run):.2f}; its end -> the next "
            f"trial_started {median(client_gap):.3f} / {sum(client_gap):.2f}; the deciding round received -> the "
            f"client has the end {median(heard):.3f}; the client has the end -> the job's end {median(job_left):.3f} / "
            f"{sum(job_left):.2f}"
        )
        if state == "complete":
            for name in ("queued_s", "load_s", "fit_s", "artifact_s"):
                values = [s.timings.get(name, math.nan) for s in group]
                print(f"  job timings {name:<12} {median(values):7.3f} / {sum(values):7.2f}")


def split_main(args: argparse.Namespace) -> int:
    service_label, in_process_label = pruned_labels(args.pruner)
    print_header(f"tune --split: a service search with the {args.pruner} pruner, each trial's time split")
    threads = machine_cores()
    data = split_data(args.rows, args.cols, args.seed)
    print(
        f"# data: {size_label(args.rows, args.cols)}; {args.split} trials of {args.rounds} rounds; TPE seed "
        f"{args.search_seed}; parallel 1; {threads} LightGBM threads in process"
    )
    body = tune_body(data, args.rounds, args.split, args.pruner, args.search_seed)
    with Watchdog(args.max_seconds), Server() as server, httpx.Client() as client:
        print(f"# server: {' '.join(server.command[1:])}")
        warm = split_data(2_000, args.cols, args.seed)
        service_search(client, server, tune_body(warm, 10, 1, "none", 0), "warm-up")
        lightgbm_trial(warm, validate_params(LightGBMTrainer.params, {"n_estimators": 10}), threads)
        free_memory()
        steal = cpu_steal_s()
        service = service_search(client, server, body, service_label, keep_events=True)
        service.steal_s = cpu_steal_s() - steal
        print(service.line())
        free_memory()
        steal = cpu_steal_s()
        in_process = in_process_search(
            data, args.rounds, args.split, args.pruner, args.search_seed, threads, in_process_label
        )
        in_process.steal_s = cpu_steal_s() - steal
        print(in_process.line())
        print(f"  pruned alike: {pruned_alike(service, in_process)}")
        splits = trial_splits(client, server, service)
    print_splits(splits, in_process, args.rounds)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50, help="trials per search (default 50)")
    parser.add_argument("--rows", type=int, default=50_000, help="rows, the last 20%% for validation (default 50000)")
    parser.add_argument("--cols", type=int, default=20, help="features (default 20)")
    parser.add_argument("--rounds", type=int, default=200, help="boosting rounds per trial (default 200)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="times each search runs, in alternating order (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the data's seed (default 0)")
    parser.add_argument("--search-seed", type=int, default=7, help="the sampler's seed (default 7)")
    parser.add_argument(
        "--pruner", choices=PRUNERS, default="median", help="the pruner of runs (1) and (4) (default median)"
    )
    parser.add_argument("--no-in-process-pruning", action="store_true", help="leave out run (4)")
    parser.add_argument(
        "--split", type=int, default=0, metavar="N",
        help="instead: one service search of N trials with --pruner, each trial's time split (see TrialSplit)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 trials of 5k x 20, 30 rounds")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard limit for the whole run (default 900)")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.rows, args.rounds = 6, 5_000, 30

    SERVICE_PRUNED, INPROC_PRUNED = pruned_labels(args.pruner)
    if args.split:
        return split_main(args)
    print_header(f"tune: POST /tune/stream ({args.pruner} pruner, no pruning) vs a plain Optuna loop in process")
    threads = machine_cores()
    data = split_data(args.rows, args.cols, args.seed)
    print(
        f"# data: {size_label(args.rows, args.cols)} ({len(data.X)} training rows, {len(data.X_valid)} validation "
        f"rows); {args.trials} trials of {args.rounds} rounds, learning_rate {LEARNING_RATE}; TPE seed "
        f"{args.search_seed}; parallel 1; {threads} LightGBM threads in process; search space {SPACE}"
    )
    bodies = {p: tune_body(data, args.rounds, args.trials, p, args.search_seed) for p in (args.pruner, "none")}
    print(f"# body: {len(bodies['none']) / 1e6:.1f} MB of JSON, serialized before timing")
    sys.stdout.flush()

    runs = [SERVICE_NONE, INPROC_NONE, SERVICE_PRUNED] + ([] if args.no_in_process_pruning else [INPROC_PRUNED])
    results: list[dict[str, Search]] = []
    with Watchdog(args.max_seconds), Server() as server, httpx.Client() as client:
        print(f"# server: {' '.join(server.command[1:])}")
        warm = split_data(2_000, args.cols, args.seed)
        service_search(client, server, tune_body(warm, 10, 1, "none", 0), "warm-up")
        lightgbm_trial(warm, validate_params(LightGBMTrainer.params, {"n_estimators": 10}), threads)
        for repeat in range(args.repeats):
            print(f"\n## repeat {repeat + 1} of {args.repeats}")
            sys.stdout.flush()
            found: dict[str, Search] = {}
            for label in runs if repeat % 2 == 0 else runs[::-1]:
                free_memory()
                steal = cpu_steal_s()
                if label in (SERVICE_PRUNED, SERVICE_NONE):
                    pruner = args.pruner if label == SERVICE_PRUNED else "none"
                    search = service_search(client, server, bodies[pruner], label)
                else:
                    pruner = args.pruner if label == INPROC_PRUNED else "none"
                    search = in_process_search(data, args.rounds, args.trials, pruner, args.search_seed, threads, label)
                search.steal_s = cpu_steal_s() - steal
                print(search.line())
                sys.stdout.flush()
                found[label] = search
                if label in (SERVICE_PRUNED, SERVICE_NONE):
                    print_service_detail(search)
                else:
                    print(f"    its trials' Dataset + train: {search.fit_s:.2f} s")
            same = same_trials(found[SERVICE_NONE], found[INPROC_NONE])
            print(f"  same trials, service and in process without pruning: {same}")
            print(f"  the service's pruning: {lost_to_pruning(found[SERVICE_NONE], found[SERVICE_PRUNED])}")
            if INPROC_PRUNED in found:
                alike = pruned_alike(found[SERVICE_PRUNED], found[INPROC_PRUNED])
                print(f"  pruned alike, service and in process: {alike}")
            results.append(found)

    def ratios(key) -> list[float]:
        return [key(found) for found in results]

    print("\n## summary" + (f" (medians of {args.repeats} repeats)" if args.repeats > 1 else ""))
    print(f"{'run':<{LABEL_WIDTH}} {'wall s':>8} {'best ' + METRIC:>14} {'complete':>8} {'pruned':>6}")
    for label in runs:
        row = [found[label] for found in results]
        print(
            f"{label:<{LABEL_WIDTH}} {median([s.wall_s for s in row]):8.2f} "
            f"{median([s.best_value for s in row]):14.6g} {median([s.complete for s in row]):8.0f} "
            f"{median([s.pruned for s in row]):6.0f}"
        )
    pruned_time = median(ratios(lambda f: f[SERVICE_PRUNED].wall_s / f[SERVICE_NONE].wall_s))
    pruned_best = median(ratios(lambda f: f[SERVICE_PRUNED].best_value / f[SERVICE_NONE].best_value))
    service = median(ratios(lambda f: f[SERVICE_NONE].wall_s / f[INPROC_NONE].wall_s))
    overhead = median(ratios(lambda f: (f[SERVICE_NONE].wall_s - f[INPROC_NONE].wall_s) / args.trials))
    print(
        f"service with pruning / without = {pruned_time:.3f} (saves {100 * (1 - pruned_time):.1f}%)  -> "
        f"{verdict(pruned_time, PRUNED_TIME_TARGET)}"
    )
    print(
        f"best value with pruning / without = {pruned_best:.4f} ({100 * (pruned_best - 1):+.2f}%)  -> "
        f"{verdict(pruned_best, BEST_VALUE_TARGET)}"
    )
    print(f"service without pruning / in process = {service:.3f}  -> {verdict(service, SERVICE_TARGET)}")
    print(f"  the service's time beyond the in-process loop, per trial: {overhead:.3f} s")
    if INPROC_PRUNED in runs:
        inproc_pruned = median(ratios(lambda f: f[INPROC_PRUNED].wall_s / f[INPROC_NONE].wall_s))
        inproc_best = median(ratios(lambda f: f[INPROC_PRUNED].best_value / f[INPROC_NONE].best_value))
        service_pruned = median(ratios(lambda f: f[SERVICE_PRUNED].wall_s / f[INPROC_PRUNED].wall_s))
        print(
            f"like for like: in process with pruning / without = {inproc_pruned:.3f} (saves "
            f"{100 * (1 - inproc_pruned):.1f}%), best value {inproc_best:.4f}; service / in process, both pruned "
            f"= {service_pruned:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
