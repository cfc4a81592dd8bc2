"""The operations every client needs, whatever its transport: submit a decoded request, follow a
job, its status, the list, cancel, delete, the result, artifacts, predictions, the backends.

HTTP routes, MCP tools and `boostream train --local` all call these. They speak in domain terms:
requests already read (bytes, a spooled file), answers as plain data, refusals as domain errors
(`boostream.errors`), which each edge maps once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Collection
from typing import IO, Any

import anyio
import numpy as np

from boostream import __version__
from boostream.config import Settings
from boostream.datasets import Dataset, DatasetStore
from boostream.errors import (
    Conflict,
    Gone,
    InvalidData,
    InvalidParameter,
    NotFound,
    QuotaExceeded,
    Unauthorized,
    quotable,
)
from boostream.jobs import inputs
from boostream.jobs.engine import JobEngine
from boostream.jobs.manager import JobManager
from boostream.jobs.queue import RETRY_AFTER_UNKNOWN_S
from boostream.jobs.records import Event, JobRecord, JobRequest, JobStatus
from boostream.jobs.redis_engine import RedisEngine
from boostream.jobs.redis_state import RedisState
from boostream.jobs.sqlite import SqliteJobStore
from boostream.jobs.webhooks import WebhookPolicy, WebhookSender
from boostream.keys import Caller, KeyRecord, KeyStore, RedisKeys, SqliteKeys, exposure_problem
from boostream.models.artifacts import FORMATS as ARTIFACT_FORMATS
from boostream.models.artifacts import ArtifactRecord, ArtifactStore, StoredBlob
from boostream.models.predicting import LoadedModel, ModelCache, ModelLoader
from boostream.models.signing import SigningKeys, load_or_create_key, sign
from boostream.requests.json_body import (
    PredictRequestBody,
    decode_predict_request,
    decode_train_request,
)
from boostream.requests.spec import TrainSpec
from boostream.searches import Searches
from boostream.trainers import create_trainers
from boostream.trainers.base import (
    OBJECTIVES,
    Availability,
    params_schema,
)
from boostream.views import artifact_view, availability_view, iso, job_view
from boostream.workers.decoding import Decoders, SharedBody, shared_bodies_work
from boostream.workers.local import LocalWorkers, WorkerConfig

log = logging.getLogger("boostream.service")

# Requests read and decoded at once: each may take a few times its size in memory while decoding.
INGEST_SLOTS = 2
JOB_STATUSES = tuple(status.value for status in JobStatus)


class Exposed(RuntimeError):
    """The server would listen beyond this machine without keys, and was not told to."""


def caller_of(record: KeyRecord) -> Caller:
    return Caller(record.name, record.admin)


class Service:
    """One per application; nothing global. `running()` opens the stores and starts the jobs;
    `model_types`, when given, limits the backends to those (the others are not even asked whether
    they can train: asking WarpGBM imports torch, which takes seconds)."""

    def __init__(self, settings: Settings, model_types: Collection[str] | None = None) -> None:
        self.settings = settings
        trainers = create_trainers(settings.predict_threads)  # these predict here; workers train
        chosen = {
            name: trainer for name, trainer in trainers.items() if model_types is not None and name in model_types
        }
        self.trainers = chosen or trainers  # none known: all of them, for the refusal that lists them
        self.availability: dict[str, Availability] = {}
        self.webhook_policy = WebhookPolicy(settings.allowed_webhook_hosts)
        self._jobs: JobEngine | None = None
        self._decoders: Decoders | None = None
        self._models: ModelLoader | None = None
        self._ingest: anyio.Semaphore | None = None
        self._keys: KeyStore | None = None
        self._keys_made = False  # once a key exists, every request needs one; none is ever deleted
        self.datasets = DatasetStore(settings.datasets_dir, settings.dataset_ttl_s)
        self.searches = Searches(self)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        settings = self.settings
        for name, trainer in self.trainers.items():
            if settings.redis:  # workers train, wherever they are: a job for a device none serves is refused
                self.availability[name] = Availability(True, device_name=f"{trainer.device} workers")
                continue
            # Importing torch to ask for a GPU takes seconds: do it once, off the loop.
            self.availability[name] = await anyio.to_thread.run_sync(trainer.availability)
            if not self.availability[name].available:
                log.info("%s is unavailable: %s", name, self.availability[name].reason)
        async with self._engine() as (engine, keys):
            self._jobs = engine
            self.signing_keys = keys
            await self._check_exposure()
            self._models = ModelLoader(keys.artifacts, self.trainers, ModelCache(settings.model_cache_bytes))
            self._ingest = anyio.Semaphore(INGEST_SLOTS)
            if shared_bodies_work():
                self._decoders = Decoders(INGEST_SLOTS, settings.inputs_dir, settings.lightgbm_threads)
                self._decoders.start()
            await engine.start()
            await self.searches.recover()
            # Not a task group around the yield: it would wrap the caller's errors in an ExceptionGroup.
            housekeeping = asyncio.get_running_loop().create_task(self._expire_datasets())
            try:
                yield
            finally:
                housekeeping.cancel()
                await self.searches.stop()  # each goes on after a restart, as its trials' jobs do
                if self._decoders is not None:
                    self._decoders.close()
                await engine.shutdown()

    @contextlib.asynccontextmanager
    async def _engine(self) -> AsyncIterator[tuple[JobEngine, SigningKeys]]:
        """The job engine these settings ask for, and the keys this service signs with: over Redis
        (`redis`), shared with other API processes and remote workers; else this process's, with
        SQLite and worker processes of its own."""
        settings = self.settings
        if settings.redis:
            state = RedisState(settings.redis, shared_dir=settings.shared_path)
            self._keys = RedisKeys(state.redis, state.prefix)
            keys = SigningKeys.of(await state.secret_key(settings.secret_key or None))
            engine: JobEngine = RedisEngine(
                state,
                self.trainers,
                max_queued=settings.max_queued,
                max_input_bytes=settings.max_table_bytes,
                job_ttl_s=settings.job_ttl_s,
                webhooks=WebhookSender(keys.webhooks),
                webhook_policy=self.webhook_policy,
                when_no_worker=settings.when_no_worker,
            )
            yield engine, keys
            return
        store = SqliteJobStore(settings.data_dir)
        api_keys = self._keys = SqliteKeys(settings.data_dir)
        try:
            keys = SigningKeys.of(load_or_create_key(settings.key_path, settings.secret_key or None))
            artifacts = ArtifactStore(settings.artifacts_dir, keys.artifacts)
            workers = {
                device: LocalWorkers(
                    WorkerConfig(
                        device,
                        settings.lightgbm_threads,
                        settings.artifacts_dir,
                        keys.artifacts,
                        settings.log_level,
                        shared_cores=settings.shared_cores if device == "cpu" else 0,
                    ),
                    slots,
                    settings.worker_memory_bytes,
                    settings.stop_grace_s,
                )
                for device, slots in (("cpu", settings.cpu_jobs), ("gpu", settings.gpu_jobs))
            }
            yield (
                JobManager(
                    store,
                    artifacts,
                    settings.inputs_dir,
                    self.trainers,
                    self.availability,
                    workers,
                    max_queued=settings.max_queued,
                    max_training_s=settings.max_training_s,
                    job_ttl_s=settings.job_ttl_s,
                    progress_interval_s=settings.progress_interval_s,
                    webhooks=WebhookSender(keys.webhooks),
                    webhook_policy=self.webhook_policy,
                ),
                keys,
            )
        finally:
            api_keys.close()
            store.close()

    @property
    def jobs(self) -> JobEngine:
        assert self._jobs is not None, "the service is not running"
        return self._jobs

    # Who calls

    @property
    def keys(self) -> KeyStore:
        assert self._keys is not None, "the service is not running"
        return self._keys

    async def keys_required(self) -> bool:
        """Whether a request needs an API key: once any key has been created, unless the operator
        said `--no-auth`."""
        if self.settings.no_auth:
            return False
        if not self._keys_made:
            self._keys_made = await self.keys.any()
        return self._keys_made

    async def key_of(self, key: str | None) -> KeyRecord:
        """The live key that `key` is (None: no key was sent); Unauthorized where it is none."""
        if key is None:
            raise Unauthorized(
                "this server needs an API key: send it as `Authorization: Bearer KEY` "
                "(the operator makes one with `boostream keys create NAME`)"
            )
        record = await self.keys.find(key)
        if record is None:
            raise Unauthorized("this API key is not valid: it is unknown or was revoked")
        return record

    async def _check_exposure(self) -> None:
        """A server that listens beyond this machine must not serve everyone unless told to."""
        problem = exposure_problem(self.settings, await self.keys_required())
        if problem is not None:
            raise Exposed(problem)

    # Decoding requests (in a thread or a decoder process each, at most INGEST_SLOTS at once)

    @contextlib.asynccontextmanager
    async def ingest_slot(self) -> AsyncIterator[None]:
        """Hold one of the slots for decoding a request body (received before: waiting on a slow
        client holds none)."""
        assert self._ingest is not None, "the service is not running"
        async with self._ingest:
            yield

    @property
    def unavailable(self) -> dict[str, str]:
        """The backends that cannot train here, with the reason."""
        return {name: a.reason or "unavailable" for name, a in self.availability.items() if not a.available}

    @property
    def body_buffer(self) -> type[bytearray] | type[SharedBody]:
        """What holds a JSON training body, where `decode_json` reads it best: memory shared with
        the decoder processes where they run (its pages taken only as the bytes are written)."""
        return SharedBody if self._decoders is not None else bytearray

    async def decode_json(self, body: bytes | bytearray | SharedBody) -> TrainSpec:
        """Decode and check a JSON training body, in a decoder process where the system allows (the
        arrays then wait on disk for the job's worker, and `saved_at` says where); a body from
        `body_buffer` is freed once its decoder is done with it."""
        if self._decoders is None:
            assert not isinstance(body, SharedBody), "bodies are shared only with decoder processes"
            return await anyio.to_thread.run_sync(
                decode_train_request, body, self.trainers, self.unavailable, self.settings.max_cells
            )
        decoded = await self._decoders.decode_train(body, self.unavailable, self.settings.max_cells)
        try:
            data = await anyio.to_thread.run_sync(inputs.load, decoded.folder)
        except BaseException:  # the request went away
            await anyio.to_thread.run_sync(inputs.remove, decoded.folder)
            raise
        assert data is not None, decoded.folder  # the decoder wrote it whole
        return TrainSpec(
            trainer=self.trainers[decoded.model_type],
            objective=decoded.objective,
            params=decoded.params,
            data=data,
            callback_url=decoded.callback_url,
            timeout_s=decoded.timeout_s,
            artifact_format=decoded.artifact_format,
            saved_at=decoded.folder,
        )

    async def decode_table(
        self, file: IO[bytes], kind: str, fields: dict[str, str], where: str = "on this server"
    ) -> TrainSpec:
        from boostream.requests.tables import decode_table_request  # pyarrow loads in ~0.3 s: only when used

        return await anyio.to_thread.run_sync(
            decode_table_request, file, kind, fields, self.trainers, self.unavailable, self.settings.max_cells, where
        )

    # Datasets: uploaded once, trained on as often as one likes

    async def create_dataset(
        self, caller: Caller, source: IO[bytes] | bytes | bytearray, kind: str, name: str | None
    ) -> dict[str, Any]:
        """Decode a table once and keep it as `caller`'s: an uploaded file (`kind`: csv, parquet or
        arrow), or a JSON body (`kind` json: `{"columns": {...}}`)."""
        from boostream.requests import tables  # pyarrow loads in ~0.3 s: only when used

        def keep(table: Any) -> Dataset:
            return self.datasets.create(table, caller.name, name, kind)

        max_cells = self.settings.max_cells
        if isinstance(source, bytes | bytearray):
            dataset = await anyio.to_thread.run_sync(tables.decode_json_dataset, source, max_cells, keep)
        else:
            dataset = await anyio.to_thread.run_sync(tables.decode_dataset, source, kind, max_cells, keep)
        log.info("dataset %s: %d rows x %d columns, from %s", dataset.id, dataset.rows, len(dataset.columns), kind)
        return dataset.view(self.settings.dataset_ttl_s)

    async def dataset(self, caller: Caller, dataset_id: str, field: str = "dataset_id") -> Dataset:
        """The dataset, if `caller` may use it: another key's is as unknown as one that never was."""
        return await anyio.to_thread.run_sync(self.datasets.find, dataset_id, caller.owns, field)

    async def dataset_view(self, caller: Caller, dataset_id: str) -> dict[str, Any]:
        return (await self.dataset(caller, dataset_id)).view(self.settings.dataset_ttl_s)

    async def list_datasets(self, caller: Caller) -> dict[str, Any]:
        found = await anyio.to_thread.run_sync(self.datasets.all)
        ttl_s = self.settings.dataset_ttl_s
        return {"datasets": [dataset.view(ttl_s) for dataset in found if caller.owns(dataset.owner)]}

    async def delete_dataset(self, caller: Caller, dataset_id: str) -> None:
        dataset = await self.dataset(caller, dataset_id)
        await anyio.to_thread.run_sync(self.datasets.delete, dataset)

    async def decode_on_dataset(
        self, caller: Caller, fields: dict[str, str], params: dict[str, Any] | None = None
    ) -> TrainSpec:
        """A training request on `caller`'s dataset (`dataset_id`, and `valid_dataset_id` for the
        validation rows), its other fields as a table request's (the hyperparameters among them,
        unless `params` holds them). Each is marked used."""
        from boostream.requests.tables import decode_dataset_request

        train = await self.dataset(caller, fields["dataset_id"])
        valid = None
        if fields.get("valid_dataset_id"):
            valid = await self.dataset(caller, fields["valid_dataset_id"], "valid_dataset_id")
        decode = functools.partial(decode_dataset_request, params=params)
        spec = await anyio.to_thread.run_sync(
            decode,
            train.table_path,
            None if valid is None else valid.table_path,
            fields,
            self.trainers,
            self.unavailable,
            self.settings.max_cells,
            train.format == "csv",
        )
        for used in (train, valid):
            if used is not None:
                await anyio.to_thread.run_sync(self.datasets.used, used)
        return spec

    async def _expire_datasets(self) -> None:
        period = max(1.0, min(self.settings.dataset_ttl_s / 4, 600.0))
        while True:
            try:
                removed = await anyio.to_thread.run_sync(self.datasets.expire)
            except Exception:  # the disk, say: tried again next time
                log.exception("expiring datasets failed")
            else:
                if removed:
                    log.info("expired %d datasets", removed)
            await anyio.sleep(period)

    async def decode_predict(self, body: bytes | bytearray) -> tuple[PredictRequestBody, np.ndarray | None]:
        return await anyio.to_thread.run_sync(decode_predict_request, body, self.settings.max_cells)

    # What there is

    async def health(self) -> dict[str, Any]:
        workers = await self.jobs.worker_views()
        if self.settings.redis:  # the backends are where the workers are
            backends = self._backends_of(workers)
        else:
            backends = {name: availability_view(a, self.trainers[name].device) for name, a in self.availability.items()}
        gpu = next((view for view in backends.values() if view["device"] == "gpu" and view["available"]), None)
        return {
            "status": "ok",
            "version": __version__,
            "backends": backends,
            "gpu": gpu["device_name"] if gpu else None,
            "queue": await self.jobs.counts(),
            "workers": [
                {name: iso(value) if name.endswith("_at") else value for name, value in view.items()}
                for view in workers
            ],
        }

    def _backends_of(self, workers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each backend as the live workers report it: available where one of them can train it."""
        backends = {}
        for name, trainer in self.trainers.items():
            reported = [worker["backends"][name] for worker in workers if name in worker.get("backends", {})]
            absent = {
                "available": False,
                "device": trainer.device,
                "reason": f"no {trainer.device.upper()} worker is up (boostream worker --device {trainer.device})",
            }
            backends[name] = next((view for view in reported if view["available"]), reported[0] if reported else absent)
        return backends

    def models(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "model_type": name,
                    **availability_view(self.availability[name], trainer.device),
                    "objectives": list(OBJECTIVES),
                    "params": params_schema(trainer.params),
                }
                for name, trainer in self.trainers.items()
            ]
        }

    # Jobs

    async def submit(
        self, caller: Caller, spec: TrainSpec, ingest_timings: dict[str, float], base_url: str = ""
    ) -> JobRecord:
        """A job of `caller`'s for a decoded request, once its options are checked against this server's limits.
        `ingest_timings`: `receive_s` (reading the body, where there was one) and `decode_s`;
        `base_url`: where the client reached the server, for the absolute URLs of webhooks."""
        try:
            await self.check_memory(spec)
            await self._check_quota(caller)
            job_request = JobRequest(
                model_type=spec.trainer.name,
                objective=spec.objective,
                params=spec.params,
                callback_url=None if spec.callback_url is None else self.webhook_policy.check(spec.callback_url),
                timeout_s=self._check_timeout(spec.timeout_s),
                artifact_format=spec.artifact_format,
                base_url=base_url,
            )
            return await self.jobs.submit(
                job_request, spec.data, ingest_timings, saved_at=spec.saved_at, owner=caller.name
            )
        except BaseException:
            if spec.saved_at is not None and spec.saved_at.exists():  # refused: its arrays go too
                inputs.remove(spec.saved_at)
            raise

    async def job(self, caller: Caller, job_id: str) -> JobRecord:
        """The job, if `caller` may see it: another key's job is as unknown as one that never was."""
        record = await self.jobs.job(job_id)
        if record is None or not caller.owns(record.owner):
            raise NotFound(f"no job {quotable(job_id)!r} (unknown, deleted, or expired)", field="job_id")
        return record

    async def status(self, caller: Caller, job_id: str) -> dict[str, Any]:
        return job_view(await self.job(caller, job_id))

    async def list_jobs(self, caller: Caller, statuses: list[str], limit: int, cursor: int | None) -> dict[str, Any]:
        """A page of the jobs `caller` may see, newest first, and the cursor of the next page (None
        on the last)."""
        unknown = [s for s in statuses if s not in JOB_STATUSES]
        if unknown:
            raise InvalidParameter("status", f"unknown status {unknown[0]!r}; choose from {list(JOB_STATUSES)}")
        records = await self.jobs.jobs(statuses, limit + 1, cursor, None if caller.admin else caller.name)
        page, more = records[:limit], len(records) > limit
        return {"jobs": [job_view(record) for record in page], "next_cursor": str(page[-1].seq) if more else None}

    def events(self, job_id: str) -> AsyncGenerator[Event, None]:
        """All the events of a job just submitted, live, to its terminal event."""
        return self.jobs.events(job_id, 0)

    async def follow(self, caller: Caller, job_id: str, after: int = 0) -> AsyncIterator[Event] | None:
        """The job's events after `after`, then live ones to the terminal event; None when the job
        has ended and no event is left after `after`."""
        record = await self.job(caller, job_id)
        if record.status.finished and not await self.jobs.has_events_after(record.id, after):
            return None
        return self.jobs.events(record.id, after)

    async def cancel(self, caller: Caller, job_id: str) -> dict[str, Any]:
        record = await self.job(caller, job_id)
        if record.status.finished:
            raise Conflict(
                "already_finished", f"job {record.id} already ended {record.status.value}", record.status.value
            )
        return {"job_id": record.id, "status": (await self.jobs.cancel(record.id)).value, "cancel_requested": True}

    def client_left(self, job_id: str, client: str, cancel: bool) -> None:
        """A client that followed a job went away: cancel the job if it asked to."""
        self.jobs.client_left(job_id, client, cancel)

    async def delete(self, caller: Caller, job_id: str) -> None:
        record = await self.job(caller, job_id)
        if not record.status.finished:
            raise Conflict(
                "not_finished", f"job {record.id} is {record.status.value}: cancel it first", record.status.value
            )
        await self.jobs.delete(record.id)

    async def result(self, caller: Caller, job_id: str) -> str:
        """The `complete` event of a job that succeeded, as JSON, with its artifact."""
        record = await self.job(caller, job_id)
        status = record.status
        if status is not JobStatus.SUCCEEDED:
            if status.finished:
                raise Conflict("no_result", f"job {record.id} ended {status.value}; it has no result", status.value)
            raise Conflict(
                "not_finished", f"job {record.id} is {status.value}; its result is not ready yet", status.value
            )
        return await self.jobs.result(record.id)

    # Artifacts and predictions

    async def artifact(self, caller: Caller, artifact_id: str) -> ArtifactRecord:
        """The artifact, if `caller` may see the job that made it."""
        record = await self.jobs.artifact(artifact_id)
        if record is not None and not caller.admin:
            job = await self.jobs.job(record.job_id)
            record = record if job is not None and caller.owns(job.owner) else None
        if record is None:
            raise NotFound(f"no artifact {quotable(artifact_id)!r} (unknown, deleted, or expired)", field="artifact_id")
        return record

    async def artifact_metadata(self, caller: Caller, artifact_id: str) -> dict[str, Any]:
        return artifact_view(await self.artifact(caller, artifact_id))

    async def artifact_file(self, caller: Caller, artifact_id: str, format: str) -> tuple[bytes, StoredBlob]:
        """The artifact's file in `format`, and what is known of it."""
        record = await self.artifact(caller, artifact_id)
        if format not in ARTIFACT_FORMATS:
            raise InvalidParameter("format", f"format must be one of {list(ARTIFACT_FORMATS)}, got {format!r}")
        try:
            content = await self.jobs.artifact_file(record.id, format)
        except FileNotFoundError:
            raise Gone(
                f"the {format} file of artifact {record.id} is missing from the server", field="artifact_id"
            ) from None
        # Signed now, with the key this server checks: one saved before artifacts had a key of their
        # own carries a signature that /predict no longer takes.
        blob = record.blobs[format]
        return content, dataclasses.replace(blob, signature=sign(self.signing_keys.artifacts, content))

    async def predict(self, caller: Caller, request: PredictRequestBody, X: np.ndarray | None) -> dict[str, Any]:
        """Predictions for X from a stored artifact of `caller`'s (`artifact_id`) or one handed back
        (`artifact`); for every row of `caller`'s dataset (`dataset_id`) where X is None."""
        assert self._models is not None, "the service is not running"
        if request.artifact_id is not None:
            record = await self.artifact(caller, request.artifact_id)
            if X is None:
                assert request.dataset_id is not None  # decode_predict_request checks that one is given
                dataset = await self.dataset(caller, request.dataset_id)
                X = await anyio.to_thread.run_sync(_dataset_rows, dataset, record.feature_names)
            loaded = self._models.cached(record.id)
            if loaded is None:
                native, _ = await self.artifact_file(caller, record.id, "native")
                loaded = await anyio.to_thread.run_sync(self._models.stored, record, native)
        else:
            assert request.artifact is not None and X is not None  # decode_predict_request checks them
            loaded = await anyio.to_thread.run_sync(
                self._models.uploaded, request.artifact, request.artifact_format, request.signature
            )
        return await self._predictions(loaded, X, request.output)

    async def _predictions(self, loaded: LoadedModel, X: np.ndarray, output: str) -> dict[str, Any]:
        values = await anyio.to_thread.run_sync(loaded.predict, X, output)
        return {
            "artifact_id": loaded.artifact_id,
            "model_type": loaded.predictor.name,
            "objective": loaded.shape.objective,
            "output": output,
            "shape": list(values.shape),
            "classes": loaded.classes,
            "predictions": values.tolist() if values.dtype == object else values,
        }

    async def _check_quota(self, caller: Caller) -> None:
        """Refuse a key its next job while it has as many waiting or training as a key may."""
        limit = self.settings.key_max_jobs
        if caller.name is None or limit <= 0:
            return
        unfinished = await self.jobs.jobs([JobStatus.QUEUED.value, JobStatus.RUNNING.value], limit, None, caller.name)
        if len(unfinished) >= limit:
            etas = [record.eta_s for record in unfinished if record.eta_s is not None]
            raise QuotaExceeded(
                f"the key {caller.name!r} has {limit} jobs waiting or training, as many as a key may "
                f"(--key-max-jobs); start more as they end",
                max(1, math.ceil(min(etas))) if etas else RETRY_AFTER_UNKNOWN_S,
            )

    async def check_memory(self, spec: TrainSpec) -> None:
        """Refuse a job that would need more memory to train than a training worker may hold: it
        would fail `out_of_memory` after taking the memory, or take the machine's. A first estimate
        from the shapes alone; where that is too much, a closer one from the data's values, off the
        loop."""
        limit = self.settings.worker_memory_bytes
        trainer = spec.trainer
        terms = trainer.memory(spec.data, spec.objective, spec.params)
        if not limit or sum(term.bytes for term in terms) <= limit:
            return
        terms = await anyio.to_thread.run_sync(trainer.memory, spec.data, spec.objective, spec.params, True)
        needed = sum(term.bytes for term in terms)
        if needed <= limit:
            return
        largest = max(terms, key=lambda term: term.bytes)
        what = "; ".join(f"{term.what}: {_size(term.bytes)}" for term in sorted(terms, key=lambda t: -t.bytes))
        field = f"params.{largest.params[0]}" if largest.params else "X"
        lower = " or ".join(largest.params) if largest.params else "the table"
        raise InvalidParameter(
            field,
            f"this job would need about {_size(needed)} of memory to train ({what}), more than the "
            f"{_size(limit)} a job may use on this server (--worker-memory-mb): lower {lower}",
        )

    def _check_timeout(self, timeout_s: float | None) -> float | None:
        limit = self.settings.max_training_s
        if timeout_s is not None and not 0 < timeout_s <= limit:
            raise InvalidParameter(
                "timeout_s",
                f"timeout_s must be greater than 0 and at most {limit:g} (this server's limit), got {timeout_s:g}",
            )
        return timeout_s


def _dataset_rows(dataset: Dataset, feature_names: list[str]) -> np.ndarray:
    """A dataset's rows to predict: its columns that the model's features name, in their order."""
    import pyarrow as pa

    from boostream import frames

    try:
        with pa.memory_map(str(dataset.table_path)) as source:
            return frames.feature_rows(pa.ipc.open_file(source).read_all(), feature_names)
    except FileNotFoundError:
        raise NotFound("the dataset is gone (deleted, or expired)", field="dataset_id") from None
    except ValueError as error:
        raise InvalidData("dataset_id", f"the dataset cannot be predicted with this model: {error}") from None


def _size(count: int) -> str:
    for unit, scale in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 1024:.0f} KB"
