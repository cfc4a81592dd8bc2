"""A synchronous client for the boostream HTTP API (httpx): one method per endpoint, uploads streamed
from disk, and job event streams that survive a dropped connection; and, for notebooks, `train`:
a DataFrame (pandas or polars), an Arrow table, numpy arrays or a file in, sent as Arrow, a live
progress bar while it trains, the trained model out (`TrainedModel`). `AsyncClient` is its twin
for `await`.

Errors come as exceptions: `ApiError` when the server answered with an error (its status, `code`,
`message` and `field`), `TrainingFailed` when a job ended in an error (its `code`, `message` and
`field` as the `error` event gave them) or was cancelled, `Unreachable` when there was no answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx

if TYPE_CHECKING:  # numpy, pyarrow and the trainers load only where a model is trained or loaded
    import numpy as np

    from boostream.models.predicting import LoadedModel

DEFAULT_SERVER = "http://127.0.0.1:8000"
TABLE_KINDS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".arrows": "arrow", ".arrow": "arrow"}
TABLE_MEDIA_TYPES = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}
TERMINAL_EVENTS = ("complete", "error", "cancelled")
UPLOAD_CHUNK_BYTES = 1 << 20
# The server sends a heartbeat every 15 s by default: a read that waits much longer than that is
# a connection that died without closing.
STREAM_READ_TIMEOUT_S = 60.0
# The server decodes a whole uploaded table before it answers POST /jobs: seconds per GB.
UPLOAD_ANSWER_TIMEOUT_S = 600.0
RECONNECTS = 6
GATEWAY_ERRORS = (502, 503, 504)
# Refusals that say when to come back (Retry-After): the queue, the server's room for bodies, a
# key's request rate. Not a key's quota of jobs, which frees only as its own jobs end.
RETRIED_CODES = frozenset({"queue_full", "busy", "rate_limited"})
MAX_BACKOFF_S = 30.0


def server_from_environment(given: str | None) -> str:
    """The server's URL: the one given, else $BOOSTREAM_SERVER, else the default."""
    return given or os.environ.get("BOOSTREAM_SERVER") or DEFAULT_SERVER


def api_key_from_environment(given: str | None) -> str | None:
    """The API key: the one given, else $BOOSTREAM_API_KEY, else none (a server without keys)."""
    return given or os.environ.get("BOOSTREAM_API_KEY") or None


class ApiError(Exception):
    """The server refused a request: `status` is its HTTP status, the rest its error body, and
    `retry_after_s` its Retry-After (seconds), where it said when to try again."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


class Unreachable(Exception):
    """No answer from the server: refused, timed out, or a stream that could not be resumed."""


class TrainingFailed(Exception):
    """A job that ended without a model: failed (`code`, `message` and `field` as its `error` event
    gave them) or cancelled (`code` "cancelled")."""

    def __init__(self, job_id: str, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"job {job_id}: {code}: {message}")
        self.job_id = job_id
        self.code = code
        self.message = message
        self.field = field


class SearchFailed(Exception):
    """A search that ended without a best model: no trial completed (`code` and `message` as its
    `error` event gave them), or it was cancelled (`code` "cancelled")."""

    def __init__(self, tune_id: str, code: str, message: str) -> None:
        super().__init__(f"search {tune_id}: {code}: {message}")
        self.tune_id = tune_id
        self.code = code
        self.message = message


@dataclasses.dataclass
class TrainedModel:
    """A model trained on the server, loaded here from its native form (no pickle): a LightGBM
    Booster, or WarpGBM's Forest, in `model`. `curve` holds every round's metrics, by metric
    name; `predict` and `predict_proba` answer as the server's /predict does."""

    model: Any
    job_id: str
    artifact_id: str
    model_type: str
    objective: str
    metrics: dict[str, float | None]
    curve: dict[str, list[float | None]]
    iterations: int
    best_iteration: int
    feature_names: list[str]
    classes: list[Any] | None
    loaded: LoadedModel = dataclasses.field(repr=False)

    def predict(self, X: Any) -> np.ndarray:
        """Values for regression, class labels for classifiers."""
        return self.loaded.predict(features_array(X, self.feature_names), "value")

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, a column per class in `classes` order (classifiers only)."""
        return self.loaded.predict(features_array(X, self.feature_names), "proba")


@dataclasses.dataclass
class SearchResult:
    """A finished search (`Client.tune`): the best trial's model (trained during the search) and
    params, its value of `metric`, every trial as the leaderboard ranks them (`pandas.DataFrame(
    result.leaderboard)` makes a table of it), and Optuna's parameter importances."""

    tune_id: str
    model: TrainedModel
    best_params: dict[str, Any]
    best_value: float
    metric: str
    leaderboard: list[dict[str, Any]]
    importances: dict[str, float] | None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A table the server keeps decoded (`Client.upload`): train on it by passing it as `data`."""

    dataset_id: str
    name: str | None
    rows: int
    columns: list[dict[str, str]]  # {"name": ..., "type": ...}
    expires_at: float  # Unix time; a training pushes it back

    @classmethod
    def of(cls, made: Mapping[str, Any]) -> Dataset:
        return cls(made["dataset_id"], made.get("name"), made["rows"], made["columns"], made["expires_at"])


@dataclasses.dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]
    retry_ms: int | None = None


@dataclasses.dataclass(frozen=True)
class Artifact:
    content: bytes
    sha256: str  # as the server states it, for the caller to check against the content


class Client:
    """One server's API, called with `api_key` where the server needs one. `sleep` and `transport`
    are there for tests."""

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        reconnects: int = RECONNECTS,
        backoff_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.reconnects = reconnects
        self.backoff_s = backoff_s
        self._sleep = sleep
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Endpoints

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def models(self) -> dict[str, Any]:
        return self._json("GET", "/models")

    def create_job(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """POST /jobs with a JSON training request; the 202 answer (`job_id` and its URLs)."""
        return self._json("POST", "/jobs", json=request)

    def upload_job(self, table: Path, fields: Mapping[str, str], path: str = "/jobs") -> dict[str, Any]:
        """POST /jobs (or `path`) with a CSV or Parquet file as the body, read from disk as it is
        sent, and the request's `fields` (target, objective, hyperparameters, ...) in the query string."""
        media_type = TABLE_MEDIA_TYPES[table_kind(table)]
        size = table.stat().st_size
        with open(table, "rb") as file:
            return self._json(
                "POST",
                path,
                params=dict(fields),
                content=_chunks(file),
                # With a length, httpx sends the body as it is, not chunked: the server can refuse
                # a body over its limit before reading any of it.
                headers={"content-type": media_type, "content-length": str(size)},
                timeout=httpx.Timeout(self._http.timeout.connect, read=UPLOAD_ANSWER_TIMEOUT_S),
            )

    def upload(self, data: Any, name: str | None = None) -> Dataset:
        """Upload a table once, as a dataset the server keeps decoded (POST /datasets): a pandas or
        polars DataFrame, an Arrow table, a 2-D numpy array, or the path of a CSV, Parquet or Arrow
        file. Pass what it returns to `train` or `start` as their `data`, as often as you like:
        the table is neither sent nor decoded again."""
        fields = {} if name is None else {"name": name}
        if isinstance(data, str | os.PathLike):
            return Dataset.of(self.upload_job(Path(data), fields, "/datasets"))
        from boostream import frames

        table = frames.as_table(data)
        return Dataset.of(self._post_table(frames.ipc_stream(table), "arrow", fields, "/datasets"))

    def datasets(self) -> list[Dataset]:
        return [Dataset.of(made) for made in self._json("GET", "/datasets")["datasets"]]

    def delete_dataset(self, dataset: Dataset | str) -> None:
        dataset_id = dataset.dataset_id if isinstance(dataset, Dataset) else dataset
        self._send("DELETE", f"/datasets/{dataset_id}")

    def jobs(self, statuses: Sequence[str] = (), limit: int | None = None) -> list[dict[str, Any]]:
        """The newest jobs (the first page: at most `limit`, 500 at the most), with these statuses."""
        params: dict[str, Any] = {}
        if statuses:
            params["status"] = ",".join(statuses)
        if limit is not None:
            params["limit"] = limit
        jobs: list[dict[str, Any]] = self._json("GET", "/jobs", params=params)["jobs"]
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}")

    def job_result(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}/result: the `complete` event's data, artifact included."""
        return self._json("GET", f"/jobs/{job_id}/result")

    # Training from a notebook

    def train(
        self,
        data: Any,
        target: Any = None,
        *,
        model: str = "lightgbm",
        objective: str = "regression",
        params: Mapping[str, Any] | None = None,
        valid: Any = None,
        features: Sequence[str] | None = None,
        weight: Any = None,
        timeout_s: float | None = None,
        progress: bool = True,
    ) -> TrainedModel:
        """Train on the server and return the model: `start`, `watch` (a progress bar with the
        metrics, unless `progress=False`), then `result`. See `start` for the arguments."""
        job_id = self.start(
            data, target, model=model, objective=objective, params=params, valid=valid,
            features=features, weight=weight, timeout_s=timeout_s,
        )  # fmt: skip
        complete = self.watch(job_id, progress=progress)
        return self._trained(job_id, model, objective, complete)

    def start(
        self,
        data: Any,
        target: Any = None,
        *,
        model: str = "lightgbm",
        objective: str = "regression",
        params: Mapping[str, Any] | None = None,
        valid: Any = None,
        features: Sequence[str] | None = None,
        weight: Any = None,
        timeout_s: float | None = None,
    ) -> str:
        """Send a training job; its id. `data`: a pandas or polars DataFrame, an Arrow table, a 2-D
        numpy array, the path of a CSV, Parquet or Arrow file, or a `Dataset` (`upload`; `valid`
        may be one too). `target`: the label column's name,
        or the labels themselves (an array as long as `data`). `valid`: a fraction of the rows to
        hold out (0.2), or a table like `data` (with its labels in the same column, or as
        `(table, labels)`). `features`: the feature columns (default: every other column).
        `weight`: sample weights (LightGBM), the name of a column (of the validation table too,
        where there is one) or an array as long as `data`. Tables go as an Arrow IPC stream; to a
        server that takes no Arrow, as Parquet."""
        # Native: the model in the `complete` event is one `train` can load without another download.
        fields: dict[str, str] = {"model_type": model, "objective": objective, "artifact_format": "native"}
        fields.update({name: _field_text(value) for name, value in (params or {}).items()})
        if features is not None:
            fields["features"] = ",".join(features)
        if timeout_s is not None:
            fields["timeout_s"] = str(timeout_s)
        if isinstance(valid, float | int) and not isinstance(valid, bool):
            fields["valid_fraction"] = str(valid)
            valid = None
        if isinstance(weight, str):
            fields["weight"] = weight
        if isinstance(data, Dataset):
            if not isinstance(target, str) or not isinstance(weight, str | None):
                raise ValueError("with a dataset, target= (and weight=) name its columns")
            fields.update(dataset_id=data.dataset_id, target=target)
            if valid is not None:
                if not isinstance(valid, Dataset):
                    raise ValueError("a dataset trains with valid=<fraction>, or valid=<another dataset>")
                fields["valid_dataset_id"] = valid.dataset_id
            return str(self._post_table(None, "", fields)["job_id"])
        if isinstance(data, str | os.PathLike):
            if valid is not None:
                raise ValueError("a file trains with valid=<fraction>, or put its validation rows in a table")
            if not isinstance(target, str) or not isinstance(weight, str | None):
                raise ValueError("with a file, target= (and weight=) name its columns")
            job: dict[str, Any] = self.upload_job(Path(data), {**fields, "target": target})
            return str(job["job_id"])
        return self._send_table(data, target, valid, None if isinstance(weight, str) else weight, fields)

    def watch(self, job_id: str, progress: bool = True) -> dict[str, Any]:
        """Follow a job to its end, with a progress bar of its rounds and latest metrics (tqdm's
        auto bar: a widget in Jupyter, a line in a terminal); the `complete` event's data.
        TrainingFailed when it fails or is cancelled."""
        bar = None
        try:
            for event in self.events(job_id):
                if event.type == "started" and progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=event.data.get("n_estimators"), unit="round", desc=f"job {job_id[:8]}")
                elif event.type == "progress" and bar is not None:
                    bar.update(event.data["iteration"] - bar.n)
                    bar.set_postfix({name: value for name, value in event.data["metrics"].items()}, refresh=False)
                elif event.type == "complete":
                    return event.data
                elif event.type == "error":
                    raise TrainingFailed(
                        job_id, event.data["code"], event.data["message"], event.data.get("field")
                    )
                elif event.type == "cancelled":
                    rounds = event.data.get("iteration", 0)
                    raise TrainingFailed(job_id, "cancelled", f"the job was cancelled after round {rounds}")
        finally:
            if bar is not None:
                bar.close()
        raise Unreachable(f"the event stream of job {job_id} ended before the job did")  # events() ends at the end

    def result(self, job_id: str) -> TrainedModel:
        """The model a job trained, loaded from its native form, with its metrics and curve."""
        done = self._json("GET", f"/jobs/{job_id}")
        if done["status"] != "succeeded":
            error = done.get("error") or {}
            raise TrainingFailed(
                job_id, error.get("code", done["status"]), error.get("message", f"the job is {done['status']}"),
                error.get("field"),
            )  # fmt: skip
        return self._trained(job_id, done["model_type"], done["objective"], self.job_result(job_id))

    def _trained(self, job_id: str, model_type: str, objective: str, complete: Mapping[str, Any]) -> TrainedModel:
        """The model of a `complete` event's data: from the event itself where it carries the native
        form, else downloaded in it (never a pickle)."""
        from boostream.models.predicting import LoadedModel, model_classes
        from boostream.trainers import create_trainers

        if complete.get("format") == "native" and "artifact" in complete:
            artifact = base64.b64decode(complete["artifact"])
        else:
            url = f"/artifacts/{complete['artifact_id']}"
            artifact = self._send("GET", url, params={"format": "native"}).content
        trainer = create_trainers(0)[model_type]
        model = trainer.from_native(artifact, trusted=True)  # from this client's own server
        shape = trainer.describe(model)
        curve = complete.get("curve") or {}
        loaded = LoadedModel(model, trainer, shape, model_classes(complete.get("classes"), shape), None, len(artifact))
        return TrainedModel(
            model=model,
            job_id=job_id,
            artifact_id=complete["artifact_id"],
            model_type=model_type,
            objective=objective,
            metrics=complete["metrics"],
            curve=dict(curve.get("metrics", {})),
            iterations=complete["iterations"],
            best_iteration=complete["best_iteration"],
            feature_names=complete["feature_names"],
            classes=complete.get("classes"),
            loaded=loaded,
        )

    def _send_table(self, data: Any, target: Any, valid: Any, weight: Any, fields: dict[str, str]) -> str:
        from boostream import frames

        if target is None:
            raise ValueError("name the label column with target=, or pass the labels as target=")
        table, label = frames.with_target(data, target)
        if weight is not None:
            if valid is not None and not isinstance(valid, float | int):
                raise ValueError("with a validation table, weight= names a column of both tables")
            table = frames.with_column(table, frames.WEIGHT_COLUMN, weight)
            fields["weight"] = frames.WEIGHT_COLUMN
        if valid is not None:
            valid_data, valid_target = valid if isinstance(valid, tuple) else (valid, label)
            valid_table, valid_label = frames.with_target(valid_data, valid_target)
            if valid_table.num_rows == 0:
                raise ValueError("the validation table has no rows")
            fields["valid_rows"] = str(valid_table.num_rows)
            names = [label if name == valid_label else name for name in valid_table.column_names]
            table = frames.stacked(table, valid_table.rename_columns(names))
        fields["target"] = label
        try:
            job = self._post_table(frames.ipc_stream(table), "arrow", fields)
        except ApiError as error:
            if error.status != 415:
                raise
            job = self._post_table(frames.parquet(table), "parquet", fields)  # a server from before Arrow
        return str(job["job_id"])

    def _post_table(
        self, body: bytes | None, kind: str, fields: Mapping[str, str], path: str = "/jobs"
    ) -> dict[str, Any]:
        """POST /jobs (or `path`) with a table (none: a training on a dataset), asked again when the
        server says to come back (`_asked_again`)."""
        return self._asked_again(
            lambda: self._json(
                "POST",
                path,
                params=dict(fields),
                content=body,
                headers={"content-type": TABLE_MEDIA_TYPES[kind]} if kind else {},
                timeout=httpx.Timeout(self._http.timeout.connect, read=UPLOAD_ANSWER_TIMEOUT_S),
            )
        )

    def _asked_again(self, send: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """`send`'s answer; a server that says to come back (a full queue, bodies enough being
        received, a key at its rate) is asked again when it says, up to `reconnects` times."""
        for attempt in range(self.reconnects + 1):
            try:
                return send()
            except ApiError as error:
                if error.code not in RETRIED_CODES or error.retry_after_s is None or attempt == self.reconnects:
                    raise
                self._sleep(min(max(error.retry_after_s, self.backoff_s), MAX_BACKOFF_S))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def delete_job(self, job_id: str) -> None:
        """Remove a finished job, its events and its artifact."""
        self._send("DELETE", f"/jobs/{job_id}")

    def artifact_metadata(self, artifact_id: str) -> dict[str, Any]:
        return self._json("GET", f"/artifacts/{artifact_id}/metadata")

    def artifact(self, artifact_id: str, format: str = "joblib") -> Artifact:
        """A model file, with the sha256 its metadata states."""
        expected = self.artifact_metadata(artifact_id)["formats"][format]["sha256"]
        response = self._send("GET", f"/artifacts/{artifact_id}", params={"format": format})
        return Artifact(response.content, expected)

    def predict(self, artifact_id: str, X: Sequence[Sequence[float | None]], output: str = "value") -> dict[str, Any]:
        return self._json("POST", "/predict", json={"artifact_id": artifact_id, "X": X, "output": output})

    def events(self, job_id: str, after: int = 0) -> Iterator[Event]:
        """A job's events after event `after`, to its terminal event. A connection that drops is
        reopened with `Last-Event-ID`, so no event is missed or repeated; after `reconnects`
        failures in a row without an event in between, Unreachable. The first connection is not
        retried: a server that cannot be reached at all is reported at once."""
        return self._events(f"/jobs/{job_id}/events", f"job {job_id}", after)

    # Hyperparameter searches

    def start_tune(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """POST /tunes with a JSON search request; the 202 answer (`tune_id` and its URLs). The
        server reads and writes the search's table before it answers: as long as a training
        request may take, and asked again as one is."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=UPLOAD_ANSWER_TIMEOUT_S)
        return self._asked_again(lambda: self._json("POST", "/tunes", json=request, timeout=timeout))

    def tune_status(self, tune_id: str) -> dict[str, Any]:
        return self._json("GET", f"/tunes/{tune_id}")

    def tune_events(self, tune_id: str, after: int = 0) -> Iterator[Event]:
        """A search's events after event `after`, to its end; resumed as `events` resumes a job's."""
        return self._events(f"/tunes/{tune_id}/events", f"search {tune_id}", after)

    def cancel_tune(self, tune_id: str) -> dict[str, Any]:
        return self._json("POST", f"/tunes/{tune_id}/cancel")

    def tune(
        self,
        data: Any,
        target: str,
        *,
        search: Mapping[str, Any],
        trials: int = 20,
        parallel: int = 1,
        model: str = "lightgbm",
        objective: str = "regression",
        params: Mapping[str, Any] | None = None,
        valid: Any = 0.2,
        features: Sequence[str] | None = None,
        sampler: str = "tpe",
        pruner: str = "median",
        seed: int | None = None,
        timeout_s: float | None = None,
        progress: bool = True,
    ) -> SearchResult:
        """Search hyperparameters on the server and return the best trial's model, with the
        leaderboard. `data`: a pandas or polars DataFrame, an Arrow table, the path of a CSV,
        Parquet or Arrow file, or a `Dataset`; anything but a dataset goes up once as one, removed
        once the search has its copy. `target`: its label column. `search`: per hyperparameter a
        range `{"low": ..., "high": ..., "log": True}` or a list of choices. `valid`: the share of
        rows held out for the validation metric the search minimises, or a `Dataset` of
        validation rows. A progress bar counts the trials done and shows the best value so far
        (unless `progress=False`); KeyboardInterrupt cancels the search. SearchFailed when no
        trial completed, or the search was cancelled."""
        uploaded = None if isinstance(data, Dataset) else self.upload(data)
        dataset = data if isinstance(data, Dataset) else uploaded
        assert dataset is not None
        columns: dict[str, Any] = {"dataset_id": dataset.dataset_id, "target": target}
        if features is not None:
            columns["features"] = ",".join(features)
        request: dict[str, Any] = {
            "dataset": columns, "model_type": model, "objective": objective, "params": dict(params or {}),
            "search": dict(search), "n_trials": trials, "parallel": parallel, "sampler": sampler, "pruner": pruner,
            "artifact_format": "native",
        }  # fmt: skip
        if isinstance(valid, Dataset):
            columns["valid_dataset_id"] = valid.dataset_id
        elif valid is not None:
            request["valid_fraction"] = valid
        request.update({name: value for name, value in (("seed", seed), ("timeout_s", timeout_s)) if value is not None})
        try:
            tune_id = self.start_tune(request)["tune_id"]
        finally:
            if uploaded is not None:
                with contextlib.suppress(ApiError, Unreachable):
                    self.delete_dataset(uploaded)
        try:
            done = self._watch_tune(tune_id, progress)
        except KeyboardInterrupt:
            with contextlib.suppress(ApiError, Unreachable):
                self.cancel_tune(tune_id)  # every running trial stops after its round
            raise
        best_job = done["best"]["job_id"]
        trained = self._trained(best_job, model, objective, self.job_result(best_job))
        return SearchResult(
            tune_id, trained, done["best_params"], done["best_value"], done["metric"], done["leaderboard"],
            done.get("importances"),
        )  # fmt: skip

    def _watch_tune(self, tune_id: str, progress: bool) -> dict[str, Any]:
        """A search's events to its end, with a bar of trials done; the `complete` event's data."""
        bar = None
        try:
            for event in self.tune_events(tune_id):
                if event.type == "started" and progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=event.data["n_trials"], unit="trial", desc=f"search {tune_id[:8]}")
                elif event.type in ("trial_complete", "trial_pruned", "trial_failed") and bar is not None:
                    bar.update(1)
                elif event.type == "best" and bar is not None:
                    bar.set_postfix({"best": event.data["value"], "trial": event.data["trial"]}, refresh=False)
                elif event.type == "complete":
                    return event.data
                elif event.type == "error":
                    raise SearchFailed(tune_id, event.data["code"], event.data["message"])
                elif event.type == "cancelled":
                    raise SearchFailed(tune_id, "cancelled", event.data.get("message", "the search was cancelled"))
        finally:
            if bar is not None:
                bar.close()
        raise Unreachable(f"the event stream of search {tune_id} ended before the search did")

    def _events(self, path: str, what: str, after: int) -> Iterator[Event]:
        connected, failures, backoff_s = False, 0, self.backoff_s
        while True:
            try:
                with self._event_stream(path, after) as response:
                    connected = True
                    if response.status_code == 204:  # the job ended and nothing is left after `after`
                        return
                    for event in parse_events(response.iter_lines()):
                        after, failures = event.id, 0
                        if event.retry_ms is not None:
                            backoff_s = event.retry_ms / 1000
                        yield event
                        if event.type in TERMINAL_EVENTS:
                            return
                reason = f"the stream ended before the {what.split()[0]} did"
            except httpx.TransportError as error:
                if not connected:
                    raise Unreachable(_describe(error, self.base_url)) from None
                reason = _describe(error, self.base_url)
            except ApiError as error:
                # A proxy in front of a restarting server answers these for a while.
                if not connected or error.status not in GATEWAY_ERRORS:
                    raise
                reason = str(error)
            failures += 1
            if failures > self.reconnects:
                raise Unreachable(f"lost the event stream of {what} after event {after}: {reason}")
            self._sleep(min(backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S))

    # Transport

    @contextlib.contextmanager
    def _event_stream(self, path: str, after: int) -> Iterator[httpx.Response]:
        headers = {"accept": "text/event-stream", "last-event-id": str(after)}
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_S)
        with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.is_error:
                response.read()
                raise _api_error(response)
            yield response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self._send(method, path, **kwargs).json()  # every answer of the API is an object
        return body

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise Unreachable(_describe(error, self.base_url)) from None
        if response.is_error:
            raise _api_error(response)
        return response


class AsyncClient:
    """The notebook calls of `Client` (`train`, `start`, `watch`, `result`, `tune`) for `await`: each runs
    the synchronous call in a thread, so the event loop (a notebook's, a web app's) goes on while a
    job trains, and several can be awaited at once. Takes `Client`'s arguments; `client` is the
    synchronous one, for the other endpoints."""

    def __init__(self, base_url: str = DEFAULT_SERVER, **options: Any) -> None:
        self.client = Client(base_url, **options)

    async def train(self, data: Any, target: Any = None, **options: Any) -> TrainedModel:
        return await asyncio.to_thread(functools.partial(self.client.train, data, target, **options))

    async def start(self, data: Any, target: Any = None, **options: Any) -> str:
        return await asyncio.to_thread(functools.partial(self.client.start, data, target, **options))

    async def watch(self, job_id: str, progress: bool = True) -> dict[str, Any]:
        return await asyncio.to_thread(self.client.watch, job_id, progress)

    async def result(self, job_id: str) -> TrainedModel:
        return await asyncio.to_thread(self.client.result, job_id)

    async def tune(self, data: Any, target: str, **options: Any) -> SearchResult:
        return await asyncio.to_thread(functools.partial(self.client.tune, data, target, **options))

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class EventParser:
    """Server-Sent Events as the HTML specification reads them, a line at a time (lines as
    httpx's `iter_lines` splits them, at CRLF, LF or CR): `field: value` (one space after the colon
    dropped), `data` lines joined with LF, a blank line ending the event (none if it had no data),
    a byte order mark at the very start dropped, unknown fields ignored, a `retry` that is not all
    digits ignored. The event id persists from one event to the next, unless one with a NUL in it.

    Every event of this API has an id, an integer, and JSON data, which `loads` reads (json.loads
    by default; a stricter loader, or `str` to keep the text). Comments (heartbeats, `: ping`) are
    skipped, or appended to `comments` when it is given."""

    def __init__(self, loads: Callable[[str], Any] = json.loads, comments: list[str] | None = None) -> None:
        self.loads = loads
        self.comments = comments
        self.last_event_id: str | None = None
        self._first = True
        self._type = ""
        self._data: list[str] = []
        self._retry: int | None = None

    def feed(self, line: str) -> Event | None:
        """The event this line ends, if it is the blank line after one."""
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            if self.comments is not None:
                self.comments.append(line)
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, kind, retry = self._data, self._type or "message", self._retry
        self._data, self._type, self._retry = [], "", None
        if not data:
            return None
        if not self.last_event_id:  # none yet, or reset by an empty `id`
            raise ValueError(f"a {kind!r} event without an id")
        return Event(int(self.last_event_id), kind, self.loads("\n".join(data)), retry)


def parse_events(
    lines: Iterator[str], loads: Callable[[str], Any] = json.loads, comments: list[str] | None = None
) -> Iterator[Event]:
    """The events of a stream's lines (see EventParser), as each one ends."""
    parser = EventParser(loads, comments)
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


def table_kind(table: Path) -> str:
    """"csv", "parquet" or "arrow", from the file's extension; ValueError for anything else."""
    kind = TABLE_KINDS.get(table.suffix.lower())
    if kind is None:
        raise ValueError(f"{table}: name a CSV file .csv, a Parquet file .parquet or .pq, an Arrow file .arrows")
    return kind


def features_array(X: Any, feature_names: Sequence[str]) -> np.ndarray:
    """Rows to predict as a float64 array (an array of Python values where a column holds
    categories): a table's columns picked by the model's feature names (in their order), or a 2-D
    array as it is."""
    import numpy as np

    from boostream import frames

    if isinstance(X, np.ndarray):
        return X if X.dtype == object else np.asarray(X, dtype=np.float64)
    return frames.feature_rows(frames.as_table(X), feature_names)


def _field_text(value: Any) -> str:
    """A hyperparameter as the query string carries it: JSON's spelling for booleans."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    while chunk := file.read(UPLOAD_CHUNK_BYTES):
        yield chunk


def _api_error(response: httpx.Response) -> ApiError:
    retry_after = response.headers.get("retry-after", "")
    retry_after_s = float(retry_after) if retry_after.isascii() and retry_after.isdigit() else None
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error["code"], error["message"], error.get("field"), retry_after_s)
    except (ValueError, KeyError, TypeError):
        # Not this API's error body: a proxy's page, or not a boostream server at all.
        text = response.text.strip()[:200] or response.reason_phrase
        return ApiError(response.status_code, f"http_{response.status_code}", f"{response.request.url}: {text}")


def _describe(error: httpx.TransportError, base_url: str) -> str:
    return f"cannot reach the server at {base_url}: {str(error) or type(error).__name__}"

