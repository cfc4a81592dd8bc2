"""A server's hyperparameter searches (`boostream.tuning`): started, listed, cancelled, deleted,
expired, and kept on disk, so that a restart takes them up as it takes up jobs.

Each search has a folder of its own under the data directory, `tunes/<id>/`:
- `search.json`: what it searches and how, and for whom (written once, as it starts);
- `events.jsonl`: its events, a line each, written as each is emitted;
- `trials.jsonl`: each ended trial, with every value it reported, for Optuna after a restart;
- `cancelled`: there once a cancel is asked for, so that a restart does not undo it.
Its table waits among the jobs' inputs (`tune-<id>`), where its trials' jobs link to it, until the
search ends. Lines are appended, not fsynced, as jobs' inputs are: they survive the process being
killed; a line torn by a crash of the machine is skipped.

A search the server was running when it stopped goes on at the next start, by the rules a job
follows: unless the server stopped under it MAX_ATTEMPTS times, its table is gone, or its backend
cannot train here any more, when it ends `failed` (code `interrupted`). Its running trials' jobs
were left to run again (or, with Redis, went on), and it follows each from the last event of it
that it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
import msgspec
import orjson

from boostream.config import Settings
from boostream.errors import BoostreamError, Conflict, NotFound, quotable
from boostream.jobs import inputs
from boostream.jobs.engine import JobEngine
from boostream.jobs.records import MAX_ATTEMPTS, Event, JobRecord
from boostream.keys import Caller
from boostream.requests.json_body import decode_tune_request
from boostream.requests.spec import DATASET_FIELDS, TABLE_FIELDS, TrainSpec
from boostream.trainers.base import OBJECTIVE_METRICS, Availability, Backend, TrainingData, validate_params
from boostream.tuning import Resumed, Tune, TuneOptions, Tuner, check_search, end, save_inputs

log = logging.getLogger("boostream.searches")

SEARCH, EVENTS, TRIALS, CANCELLED = "search.json", "events.jsonl", "trials.jsonl", "cancelled"
# A search's trials at once, where workers elsewhere train (Redis): the server cannot count their slots.
MOST_PARALLEL_WITH_WORKERS = 64


@dataclasses.dataclass(frozen=True)
class SearchFolder:
    """A search on disk (see the module's docstring)."""

    path: Path

    def create(self, search: dict[str, Any]) -> None:
        self.path.mkdir(parents=True)
        partial = self.path / f"{SEARCH}.partial"
        partial.write_bytes(orjson.dumps(search))
        partial.replace(self.path / SEARCH)

    def keep_event(self, event: Event) -> None:
        self._append(EVENTS, {"id": event.id, "type": event.type, "data": orjson.Fragment(event.json)})

    def keep_trial(self, row: dict[str, Any]) -> None:
        self._append(TRIALS, row)

    def keep_cancel(self) -> None:
        (self.path / CANCELLED).touch()

    @property
    def cancelled(self) -> bool:
        return (self.path / CANCELLED).exists()

    def read(self) -> tuple[dict[str, Any], list[Event], list[dict[str, Any]], float]:
        """Its search, events and ended trials, and when its events were last written."""
        search = orjson.loads((self.path / SEARCH).read_bytes())
        return search, self.events(), list(self._lines(TRIALS)), (self.path / EVENTS).stat().st_mtime

    def events(self) -> list[Event]:
        events = [Event(line["id"], line["type"], orjson.dumps(line["data"]).decode()) for line in self._lines(EVENTS)]
        # An event torn off the end leaves ids in order: whatever follows a gap is not the search's.
        return [event for index, event in enumerate(events, 1) if event.id == index]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _append(self, name: str, line: dict[str, Any]) -> None:
        with open(self.path / name, "ab") as file:  # written whole, or OSError
            file.write(orjson.dumps(line) + b"\n")

    def _lines(self, name: str) -> Iterator[dict[str, Any]]:
        """Its lines; a last one torn by a crash (no newline) is cut off the file, so that the
        next line appended starts a line of its own."""
        path = self.path / name
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return
        whole = content.rfind(b"\n") + 1
        if whole < len(content):
            log.warning("%s: cut off a last line that was not written whole", path)
            os.truncate(path, whole)
        for line in content[:whole].splitlines():
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("%s: skipped a line that is not JSON", path)


class Service(Protocol):
    """What searches need of the service (`boostream.service.Service`): its settings and backends,
    a request's table from a dataset, its checks, and its jobs, which a search's trials are."""

    @property
    def settings(self) -> Settings: ...

    @property
    def trainers(self) -> Mapping[str, Backend]: ...

    @property
    def availability(self) -> Mapping[str, Availability]: ...

    @property
    def unavailable(self) -> dict[str, str]: ...

    @property
    def jobs(self) -> JobEngine: ...

    async def decode_on_dataset(
        self, caller: Caller, fields: dict[str, str], params: dict[str, Any] | None = None
    ) -> TrainSpec: ...

    async def check_memory(self, spec: TrainSpec) -> None: ...

    async def submit(
        self, caller: Caller, spec: TrainSpec, ingest_timings: dict[str, float], base_url: str = ""
    ) -> JobRecord: ...


class Searches:
    """The searches of `service`, by id, until they expire (`--job-ttl-s` after they end)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.folder = self.settings.data_dir / "tunes"
        self._tunes: dict[str, Tune] = {}
        self._tuners: dict[str, Tuner] = {}  # those running
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self, caller: Caller, body: bytes | bytearray, base_url: str = "") -> Tune:
        """Decode and check a search request, and start the search; the `Tune` to follow."""
        service, settings = self.service, self.settings
        found, request = await anyio.to_thread.run_sync(
            decode_tune_request, body, service.trainers, service.unavailable, settings.max_cells
        )
        spec = found or await self._on_dataset(caller, request.dataset_fields(), request.params)
        spec.timeout_s = None  # the search's, not its trials'
        trainer = spec.trainer
        options = request.tune_options()
        slots = settings.cpu_jobs if trainer.device == "cpu" else settings.gpu_jobs
        most = MOST_PARALLEL_WITH_WORKERS if settings.redis else slots
        space = check_search(options, trainer, request.params, spec.data, most)
        # Refused now what would fail every trial: a combination the backend refuses, or memory
        # beyond a worker's with the largest values searched.
        largest = validate_params(trainer.params, {**request.params, **space.largest})
        for bound in (largest, validate_params(trainer.params, {**request.params, **space.smallest})):
            trainer.check(spec.data, spec.objective, bound)
        await service.check_memory(dataclasses.replace(spec, params=largest))
        tune_id = uuid.uuid4().hex
        search = {
            "tune_id": tune_id, "owner": caller.name, "admin": caller.admin, "created_at": time.time(),
            "options": msgspec.to_builtins(options), "metric": f"valid_{OBJECTIVE_METRICS[spec.objective]}",
            "model_type": trainer.name, "objective": spec.objective, "params": spec.params,
            "artifact_format": spec.artifact_format, "base_url": base_url,
        }  # fmt: skip
        record = SearchFolder(self.folder / tune_id)
        table = self._table_folder(tune_id)
        try:
            await anyio.to_thread.run_sync(record.create, search)
            # The trials read the arrays mapped from the search's files, not this request's copy.
            data = await anyio.to_thread.run_sync(save_inputs, table, spec.data)
            tune = self._tune(search, record)
            tuner = self._tuner(tune, search, dataclasses.replace(spec, data=data), space, record)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(record.remove)
                await anyio.to_thread.run_sync(inputs.remove, table)
            raise
        self._run(tuner, None)
        log.info("tune %s: %d trials of %s, %s", tune_id, tuner.n_trials, trainer.name, sorted(space.distributions))
        return tune

    async def _on_dataset(self, caller: Caller, fields: dict[str, str], params: dict[str, Any]) -> TrainSpec:
        """A search's table from a dataset, as a training request on it takes it; an error names
        the field where the search request has it (`dataset.target`, not `target`)."""
        try:
            return await self.service.decode_on_dataset(caller, fields, params)
        except BoostreamError as error:
            if error.field in TABLE_FIELDS | DATASET_FIELDS:
                error.field = f"dataset.{error.field}"
            raise

    def get(self, caller: Caller, tune_id: str) -> Tune:
        """The search, if `caller` may see it: another key's is as unknown as one that never was."""
        self._expire()
        tune = self._tunes.get(tune_id)
        if tune is None or not caller.owns(tune.owner):
            raise NotFound(f"no tune {quotable(tune_id)!r} (unknown, deleted, or expired)", field="tune_id")
        return tune

    def visible(self, caller: Caller) -> dict[str, Any]:
        """The searches `caller` may see, newest first."""
        self._expire()
        mine = [tune for tune in self._tunes.values() if caller.owns(tune.owner)]
        return {"tunes": [tune.view() for tune in sorted(mine, key=lambda tune: tune.created_at, reverse=True)]}

    async def cancel(self, caller: Caller, tune_id: str) -> dict[str, Any]:
        tune = self.get(caller, tune_id)
        if tune.finished:
            raise Conflict("already_finished", f"tune {tune.id} already ended {tune.status}", tune.status)
        tune.cancel_requested = True
        await anyio.to_thread.run_sync(SearchFolder(self.folder / tune.id).keep_cancel)
        tuner = self._tuners.get(tune.id)
        if tuner is not None:
            await tuner.stop_trials()
        return {"tune_id": tune.id, "status": tune.status, "cancel_requested": True}

    async def delete(self, caller: Caller, tune_id: str) -> None:
        """Forget a finished search (its trials' jobs and models stay, as jobs of their own)."""
        tune = self.get(caller, tune_id)
        if not tune.finished:
            raise Conflict("not_finished", f"tune {tune.id} is running: cancel it first", tune.status)
        del self._tunes[tune.id]
        await anyio.to_thread.run_sync(SearchFolder(self.folder / tune.id).remove)

    def result(self, caller: Caller, tune_id: str) -> dict[str, Any]:
        tune = self.get(caller, tune_id)
        result = tune.result()
        if result is None:
            if tune.finished:
                raise Conflict("no_result", f"tune {tune.id} ended {tune.status}; it has no result", tune.status)
            raise Conflict("not_finished", f"tune {tune.id} is running; its result is not ready yet", tune.status)
        return result

    # The server starting and stopping

    async def recover(self) -> None:
        """Every search kept on disk: a finished one to be read, one that was running to go on."""
        folders = sorted(self.folder.iterdir()) if self.folder.is_dir() else []
        for path in folders:
            record = SearchFolder(path)
            try:
                search, events, ended, written_at = await anyio.to_thread.run_sync(record.read)
                tune = self._tune(search, record)
                tune.replay(events, finished_at=written_at)
            except Exception as error:  # one search that cannot be read stops no server
                log.warning("%s: not a search that can be read (%r); removed", path, error)
                await anyio.to_thread.run_sync(record.remove)
                continue
            self._tunes[tune.id] = tune
            if not tune.finished:
                try:
                    await self._resume(tune, search, ended)
                except Exception as error:  # nor one that cannot go on
                    log.exception("tune %s could not go on", tune.id)
                    await self._interrupt(tune, f"it could not go on: {error}")
            tune.let_go()  # where it has ended
        self._expire()
        await self._sweep_tables()

    async def _sweep_tables(self) -> None:
        """The tables of searches that are not running: a search whose folder went, or that ended
        as the server stopped. Not in a shared directory, whose tables are other servers' too."""
        if self.settings.shared_path is not None or not self.settings.inputs_dir.is_dir():
            return
        running = {f"tune-{tune.id}" for tune in self._tunes.values() if not tune.finished}
        for folder in self.settings.inputs_dir.glob("tune-*"):
            if folder.name not in running:
                await anyio.to_thread.run_sync(inputs.remove, folder)

    async def stop(self) -> None:
        """The server is stopping: each running search stops where it is, on disk, its trials'
        jobs left to the job engine (which runs them again at the next start, as any job)."""
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=10)

    # Inside

    async def _resume(self, tune: Tune, search: dict[str, Any], ended: list[dict[str, Any]]) -> None:
        record = SearchFolder(self.folder / tune.id)
        tune.cancel_requested = record.cancelled
        # A pruned trial's job may have been stopping as the server stopped: it would train again
        # for nobody.
        await self._cancel_jobs([trial.job_id for trial in tune.trials if trial.state == "pruned"])
        trainer = self.service.trainers.get(tune.model_type)
        availability = self.service.availability.get(tune.model_type)
        table = self._table_folder(tune.id)
        data = await anyio.to_thread.run_sync(inputs.load, table)
        problem, space = None, None
        if tune.restarts + 1 >= MAX_ATTEMPTS:
            problem = f"the server stopped while this search ran, {tune.restarts + 1} times; it is not tried again"
        elif data is None:
            problem = "its table is gone from the server's disk"
        elif trainer is None or availability is None or not availability.available:
            reason = availability.reason if availability else "not a backend of this server"
            problem = f"{tune.model_type} cannot train on this server any more: {reason}"
        else:
            try:
                space = check_search(tune.options, trainer, {}, data, MOST_PARALLEL_WITH_WORKERS)
            except Exception as error:  # the backend's bounds changed since
                problem = f"its search no longer fits {trainer.title}: {error}"
        if problem is not None or data is None or trainer is None:
            log.warning("tune %s was running when the server stopped; it ends interrupted: %s", tune.id, problem)
            await self._interrupt(tune, problem or "it cannot go on")
            return
        log.info("tune %s was running when the server stopped; it goes on", tune.id)
        spec = TrainSpec(trainer, search["objective"], search["params"], data)
        spec.artifact_format = search["artifact_format"]
        tuner = self._tuner(tune, search, spec, space, record)
        self._run(tuner, Resumed(ended, "the server restarted while the search ran"))

    async def _interrupt(self, tune: Tune, problem: str) -> None:
        """End a search that cannot go on after a restart: its running trials fail, their jobs are
        cancelled, and it ends `failed` (`interrupted`), or `cancelled` where that was asked for."""
        stopped = [trial for trial in tune.trials if trial.state == "running"]
        for trial in stopped:
            trial.state = "failed"
            failed = {"trial": trial.number, "job_id": trial.job_id, "params": trial.params}
            tune.emit("trial_failed", {**failed, "code": "interrupted", "message": problem, "field": None})
        await self._cancel_jobs([trial.job_id for trial in stopped])
        if tune.cancel_requested:
            end(tune, "cancelled", "cancelled", {"message": f"the search was cancelled; {problem}"})
        else:
            end(tune, "failed", "error", {"code": "interrupted", "message": problem})
        await anyio.to_thread.run_sync(inputs.remove, self._table_folder(tune.id))

    async def _cancel_jobs(self, job_ids: list[str | None]) -> None:
        for job_id in job_ids:
            if job_id is not None:
                with contextlib.suppress(Exception):  # it ended already, or expired
                    await self.service.jobs.cancel(job_id)

    def _tune(self, search: dict[str, Any], record: SearchFolder) -> Tune:
        options = msgspec.convert(search["options"], TuneOptions)
        return Tune(
            search["tune_id"], search["owner"], options, search["metric"], search["model_type"],
            created_at=search["created_at"], journal=record.keep_event, kept=record.events,
        )  # fmt: skip

    def _tuner(self, tune: Tune, search: dict[str, Any], spec: TrainSpec, space: Any, record: SearchFolder) -> Tuner:
        caller, base_url = Caller(search["owner"], search["admin"]), search["base_url"]
        service = self.service

        async def submit(data: TrainingData, params: dict[str, Any], saved_at: Path) -> JobRecord:
            trial = dataclasses.replace(spec, params=params, data=data, saved_at=saved_at, callback_url=None)
            return await service.submit(caller, trial, {}, base_url)

        return Tuner(
            tune, space, spec.trainer, spec.objective, spec.params, spec.data, self._table_folder(tune.id),
            submit, service.jobs.events, service.jobs.cancel, record.keep_trial,
        )  # fmt: skip

    def _run(self, tuner: Tuner, resumed: Resumed | None) -> None:
        tune = tuner.tune
        self._expire()
        self._tunes[tune.id], self._tuners[tune.id] = tune, tuner
        task = asyncio.get_running_loop().create_task(tuner.run(resumed))
        self._tasks[tune.id] = task
        task.add_done_callback(lambda _: self._ran(tune))

    def _ran(self, tune: Tune) -> None:
        self._tasks.pop(tune.id, None)
        self._tuners.pop(tune.id, None)
        tune.let_go()  # where it has ended (not where the server stops under it)

    def _table_folder(self, tune_id: str) -> Path:
        return self.settings.inputs_dir / f"tune-{tune_id}"

    def _expire(self) -> None:
        cutoff = time.time() - self.settings.job_ttl_s
        for tune in [t for t in self._tunes.values() if t.finished_at is not None and t.finished_at < cutoff]:
            del self._tunes[tune.id]
            SearchFolder(self.folder / tune.id).remove()  # a few small files
