"""The MCP edge: the service for AI agents, an MCP server over Streamable HTTP at `/mcp`, in the
same app (which mounts `sessions` there).

Its tools are the HTTP API's: list the backends, train (waiting, with a progress notification per
throttled round), start a job without waiting, a job's status, cancel, predict. They run on the
same jobs and stores, and their arguments go through the same decoding and checks as a JSON body
(re-encoded once, off the event loop), so a tool refuses what the HTTP API refuses, with the same
message naming the field. Such refusals (any domain error, `boostream.errors`), and jobs that fail
or are cancelled, come back as tool errors (`isError`: "code (field): message"), which an agent can
read and correct; an unknown tool is a protocol error.

When the caller of `train` cancels the call (`notifications/cancelled`, or on 2026-07-28
connections by aborting its HTTP request), the job trains on by default, like `POST /train/stream`
whose client leaves: its id is in every progress message, for `job_status` and `cancel_job`.
With `on_cancel: "cancel"` it stops at the next round instead. A client that merely drops a
2025-era connection does not cancel the call: the job trains on whatever `on_cancel` says.

The MCP specification requires validating `Origin` against DNS rebinding: the app's access checks
(`streaming_server/access.py`) do it for `/mcp` as for every route, before a request reaches the
SDK, together with `Host` and the caller's API key (the SDK's own check is off: one rule, and
errors in the API's JSON). Each tool acts for the caller of the HTTP request it came in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import mcp_types as types
import numpy as np
import orjson
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from boostream import __version__
from boostream.errors import BoostreamError, InvalidData, InvalidParameter, Unauthorized
from boostream.jobs.records import JobRecord, JobStatus, job_urls
from boostream.keys import Caller
from boostream.models.artifacts import FORMATS as ARTIFACT_FORMATS
from boostream.models.predicting import OUTPUTS
from boostream.requests.schema import (
    closed_object,
    table_schema,
    train_request_schema,
    tune_request_schema,
    with_properties,
)
from boostream.service import Service
from boostream.trainers.base import OBJECTIVES

log = logging.getLogger("boostream.mcp")

PATH = "/mcp"
ON_CANCEL = ("continue", "cancel")
# Tool arguments arrive inside one JSON-RPC body that the SDK parses on the event loop (about
# 70 ms per MiB here), so bodies stay at the SDK's 4 MiB; bigger tables go to `POST /jobs`.
MAX_BODY_BYTES = DEFAULT_MAX_REQUEST_BODY_SIZE
INSTRUCTIONS = (
    "Trains gradient-boosted tree models (LightGBM on the CPU, WarpGBM on an NVIDIA GPU) on tables you send. "
    "`train` waits for the model and reports each round as progress; `start_job` returns at once, then poll "
    "`job_status`. A trained model is kept on the server: pass its `artifact_id` to `predict`."
)


class ToolError(BoostreamError):
    """A job that did not succeed, told to the caller as a tool error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # per instance: the job's own error code


@dataclasses.dataclass(frozen=True)
class Tool:
    definition: types.Tool
    run: Callable[[ServerRequestContext, dict[str, Any]], Awaitable[dict[str, Any]]]


class McpEndpoint:
    """The MCP server of one `Service`: its tools, its sessions, and the route that serves them."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.server = Server(
            "boostream",
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        self.sessions = StreamableHTTPSessionManager(
            self.server,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=min(MAX_BODY_BYTES, service.settings.max_body_bytes),
        )
        self.tools = {tool.definition.name: tool for tool in self._tools()}
        self._stopping = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run inside the service's lifespan: sessions end before the jobs shut down."""
        async with self.sessions.run():
            try:
                yield
            finally:
                # Calls cancelled from here on are the server stopping, not their callers: their
                # jobs stay queued or running in the store, and the next server runs them again.
                self._stopping = True

    # The protocol

    async def _list_tools(
        self, ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool.definition for tool in self.tools.values()])

    async def _call_tool(self, ctx: ServerRequestContext, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = self.tools.get(params.name)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}; the tools are {sorted(self.tools)}")
        arguments = dict(params.arguments or {})
        try:
            _refuse_unknown(arguments, tool.definition.input_schema)
            answer = await tool.run(ctx, arguments)
        except BoostreamError as error:  # one rule for every domain error: its code, field and message
            return types.CallToolResult(content=[types.TextContent(text=error.line())], is_error=True)
        return types.CallToolResult(
            content=[types.TextContent(text=orjson.dumps(answer).decode())], structured_content=answer
        )

    # The tools

    async def list_models(self, ctx: ServerRequestContext, arguments: dict[str, Any]) -> dict[str, Any]:
        return self.service.models()

    async def train(self, ctx: ServerRequestContext, arguments: dict[str, Any]) -> dict[str, Any]:
        include_artifact = _flag(arguments.pop("include_artifact", False), "include_artifact")
        include_curve = _flag(arguments.pop("include_curve", False), "include_curve")
        on_cancel = _choice(arguments.pop("on_cancel", "continue"), "on_cancel", ON_CANCEL)
        job = await self._submit(ctx, arguments)
        try:
            kind, data = await self._follow(ctx, job)
        except anyio.get_cancelled_exc_class():
            self._caller_left(job.id, on_cancel)
            raise
        if kind == "error":
            raise ToolError(data["code"], f"job {job.id} failed: {data['message']}")
        if kind == "cancelled":
            raise ToolError("cancelled", f"job {job.id} was cancelled after round {data['iteration']}")
        if not include_artifact:
            data.pop("artifact", None)
        if not include_curve:  # one number per round and metric: tokens an agent pays for only when it asks
            data.pop("curve", None)
        return {"job_id": job.id, "status": JobStatus.SUCCEEDED.value, **data}

    async def start_job(self, ctx: ServerRequestContext, arguments: dict[str, Any]) -> dict[str, Any]:
        job = await self._submit(ctx, arguments)
        return {"job_id": job.id, "status": job.status.value, **job_urls(job.id)}

    async def job_status(self, ctx: ServerRequestContext, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.service.status(_caller(ctx), _text(arguments, "job_id"))

    async def cancel_job(self, ctx: ServerRequestContext, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.service.cancel(_caller(ctx), _text(arguments, "job_id"))

    async def predict(self, ctx: ServerRequestContext, arguments: dict[str, Any]) -> dict[str, Any]:
        _text(arguments, "artifact_id")
        async with self.service.ingest_slot():
            parsed, X = await self.service.decode_predict(await anyio.to_thread.run_sync(_as_json, arguments))
        answer = await self.service.predict(_caller(ctx), parsed, X)
        return {**answer, "predictions": np.asarray(answer["predictions"]).tolist()}

    async def tune(self, ctx: ServerRequestContext, arguments: dict[str, Any]) -> dict[str, Any]:
        """A search, followed to its end: a progress notification as each trial ends."""
        async with self.service.ingest_slot():
            body = await anyio.to_thread.run_sync(_as_json, arguments)
            base_url = getattr(ctx.request, "base_url", "")
            tune = await self.service.searches.start(_caller(ctx), body, str(base_url))
        n_trials, ended, best = tune.options.n_trials, 0, None
        try:
            async with contextlib.aclosing(tune.follow(0)) as events:
                async for event in events:
                    data = orjson.loads(event.json)
                    if event.type == "started":
                        n_trials = data["n_trials"]
                        await ctx.session.report_progress(0, n_trials, f"tune {tune.id}: {n_trials} trials")
                    elif event.type == "best":
                        best = data["value"]
                    elif event.type in ("trial_complete", "trial_pruned", "trial_failed"):
                        ended += 1
                        said = f"best {best:.6g}" if best is not None else "no trial complete yet"
                        message = f"tune {tune.id}: {ended} of {n_trials} trials done ({event.type[6:]}); {said}"
                        await ctx.session.report_progress(ended, n_trials, message)
                    elif event.type == "complete":
                        return {"tune_id": tune.id, "status": tune.status, **data}
                    elif event.type in ("error", "cancelled"):
                        raise ToolError(data.get("code", event.type), f"tune {tune.id}: {data['message']}")
        except anyio.get_cancelled_exc_class():
            if not self._stopping:  # the caller went: the search's trials would train for nobody
                with anyio.CancelScope(shield=True):
                    await self.service.searches.cancel(_caller(ctx), tune.id)
            raise
        raise ToolError("interrupted", f"tune {tune.id} ended without a result")

    # Jobs

    async def _submit(self, ctx: ServerRequestContext, arguments: dict[str, Any]) -> JobRecord:
        """A job from tool arguments, decoded and checked as `POST /jobs` checks its body."""
        async with self.service.ingest_slot():
            started = time.perf_counter()
            body = await anyio.to_thread.run_sync(_as_json, arguments)
            spec = await self.service.decode_json(body)
            decode_s = time.perf_counter() - started
        base_url = getattr(ctx.request, "base_url", "")  # the HTTP request the call came in, where there is one
        return await self.service.submit(_caller(ctx), spec, {"decode_s": decode_s}, str(base_url))

    async def _follow(self, ctx: ServerRequestContext, job: JobRecord) -> tuple[str, dict[str, Any]]:
        """Wait for the job's end, telling the caller its progress; its terminal event's type and data.
        Progress only rises: 0 once the job waits or starts, then each round the job reports."""
        total = job.total
        reported = -1
        async with contextlib.aclosing(self.service.events(job.id)) as events:
            async for event in events:
                data = orjson.loads(event.json)
                if event.terminal:
                    return event.type, data
                iteration = data["iteration"] if event.type == "progress" else 0
                if event.type in ("queued", "started", "progress") and iteration > reported:
                    reported = iteration
                    await ctx.session.report_progress(
                        iteration, total, _progress_message(job.id, event.type, data, total)
                    )
        raise ToolError("interrupted", f"job {job.id} ended without a result")

    def _caller_left(self, job_id: str, on_cancel: str) -> None:
        if self._stopping:
            log.info("job %s: MCP call ended by the server stopping; the job is run again by the next server", job_id)
        else:
            self.service.client_left(job_id, "MCP caller", cancel=on_cancel == "cancel")

    # What the tools say about themselves

    def _tools(self) -> list[Tool]:
        trainers = self.service.trainers
        train_inputs = train_request_schema(trainers, self.service.settings.max_training_s)
        job_id = closed_object(
            {"job_id": {"type": "string", "minLength": 1, "description": "The id `train` or `start_job` gave."}},
            ["job_id"],
        )
        return [
            Tool(
                types.Tool(
                    name="list_models",
                    title="List the model backends",
                    description="The backends (lightgbm, warpgbm): whether each can train here and why not, its "
                    "device, the objectives, and each hyperparameter as JSON Schema with its default and bounds.",
                    input_schema=closed_object({}, []),
                    output_schema=closed_object(
                        {"models": {"type": "array", "items": {"type": "object"}}}, ["models"], closed=False
                    ),
                    annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
                ),
                self.list_models,
            ),
            Tool(
                types.Tool(
                    name="train",
                    title="Train a model and wait for it",
                    description="Train a gradient-boosted tree model on X and y and wait until it is trained. With a "
                    "progress token, each boosting round (at most about 10 a second) comes as a progress "
                    "notification: progress is the round, total the rounds asked for, the message names the job and "
                    "its latest metrics. Returns the job id, the `artifact_id` to `predict` with, metrics, "
                    "iterations, best_iteration and timings; the learning curve (every round's metrics) only with "
                    "include_curve, the model file itself (base64) only with include_artifact. A failed or cancelled "
                    "job is a tool error. If this call is cancelled the job trains on (see job_status, cancel_job) "
                    "unless on_cancel is 'cancel'.",
                    input_schema=with_properties(
                        train_inputs,
                        {
                            "include_artifact": {
                                "type": "boolean",
                                "default": False,
                                "description": "Also return the model file, base64, in `artifact`.",
                            },
                            "include_curve": {
                                "type": "boolean",
                                "default": False,
                                "description": "Also return every round's metrics, in `curve`.",
                            },
                            "on_cancel": {
                                "type": "string",
                                "enum": list(ON_CANCEL),
                                "default": "continue",
                                "description": "What happens to the job when this call is cancelled: "
                                "it trains on, or it stops at the next round.",
                            },
                        },
                    ),
                    output_schema=TRAIN_OUTPUT_SCHEMA,
                    annotations=types.ToolAnnotations(
                        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
                    ),
                ),
                self.train,
            ),
            Tool(
                types.Tool(
                    name="tune",
                    title="Search hyperparameters and wait for the best model",
                    description="A hyperparameter search over a training request (X, y and validation data: X_valid "
                    "and y_valid, or valid_fraction): `search` gives each hyperparameter a range {low, high, log} or "
                    "a list of choices; n_trials, parallel, sampler (tpe, random, grid), pruner (median, hyperband, "
                    "none), seed, timeout_s (the search's). Each trial is a job; trials whose validation curve lags "
                    "are stopped early. With a progress token, each trial's end comes as a progress notification "
                    "(trials done of the total, the best value so far). Returns the best params and value, the "
                    "best model's `artifact_id` (to `predict` with), the leaderboard and the parameter importances. "
                    "If this call is cancelled, the search is cancelled.",
                    input_schema=tune_request_schema(train_inputs),
                    output_schema=closed_object(
                        {
                            "tune_id": {"type": "string"},
                            "best_params": {"type": "object"},
                            "best_value": {"type": "number"},
                            "artifact_id": {"type": "string"},
                            "leaderboard": {"type": "array", "items": {"type": "object"}},
                        },
                        ["tune_id", "best_params", "best_value", "artifact_id", "leaderboard"],
                        closed=False,
                    ),
                    annotations=types.ToolAnnotations(
                        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
                    ),
                ),
                self.tune,
            ),
            Tool(
                types.Tool(
                    name="start_job",
                    title="Start a training job",
                    description="Start training as `train` does, but return at once with the job id and its status "
                    "(queued or running); follow it with job_status, stop it with cancel_job.",
                    input_schema=train_inputs,
                    output_schema=closed_object(
                        {"job_id": {"type": "string"}, "status": STATUS_SCHEMA}, ["job_id", "status"], closed=False
                    ),
                    annotations=types.ToolAnnotations(
                        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
                    ),
                ),
                self.start_job,
            ),
            Tool(
                types.Tool(
                    name="job_status",
                    title="A job's status",
                    description="A job as `GET /jobs/{id}` shows it: status (queued, running, succeeded, failed, "
                    "cancelled), progress (iteration, total, percent, elapsed_s, eta_s), latest metrics, times, "
                    "error, artifact_id.",
                    input_schema=job_id,
                    output_schema=closed_object(
                        {
                            "job_id": {"type": "string"},
                            "status": STATUS_SCHEMA,
                            "artifact_id": {"type": ["string", "null"]},
                        },
                        ["job_id", "status"],
                        closed=False,
                    ),
                    annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
                ),
                self.job_status,
            ),
            Tool(
                types.Tool(
                    name="cancel_job",
                    title="Cancel a job",
                    description="Stop a job: a waiting one ends cancelled at once, a training one after its current "
                    "round. A job that has already ended is a tool error (already_finished).",
                    input_schema=job_id,
                    output_schema=closed_object(
                        {
                            "job_id": {"type": "string"},
                            "status": STATUS_SCHEMA,
                            "cancel_requested": {"type": "boolean"},
                        },
                        ["job_id", "status", "cancel_requested"],
                        closed=False,
                    ),
                    annotations=types.ToolAnnotations(
                        read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
                    ),
                ),
                self.cancel_job,
            ),
            Tool(
                types.Tool(
                    name="predict",
                    title="Predict with a trained model",
                    description="Predict rows of X with the model `train` made (its artifact_id). output 'value' "
                    "gives numbers for a regression and class labels for a classifier; 'proba' gives one probability "
                    "per class, in the order of `classes`.",
                    input_schema=closed_object(
                        {
                            "artifact_id": {
                                "type": "string",
                                "minLength": 1,
                                "description": "The `artifact_id` that `train` or `job_status` gave.",
                            },
                            "X": table_schema(
                                "Rows to predict, each with as many values as the model has features; null "
                                "marks a missing value, and a categorical feature takes its values as in training."
                            ),
                            "output": {"type": "string", "enum": list(OUTPUTS), "default": "value"},
                        },
                        ["artifact_id", "X"],
                    ),
                    output_schema=PREDICT_OUTPUT_SCHEMA,
                    annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
                ),
                self.predict,
            ),
        ]


def _caller(ctx: ServerRequestContext) -> Caller:
    """Who called the tool: the caller of the HTTP request it came in, as the access checks found."""
    state = getattr(getattr(ctx, "request", None), "state", None)
    caller = getattr(state, "caller", None)
    if not isinstance(caller, Caller):
        raise Unauthorized("this call came without a caller that the server checked")
    return caller


# Arguments


def _as_json(arguments: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(arguments)
    except orjson.JSONEncodeError as error:  # e.g. an integer beyond 64 bits
        raise InvalidData(None, f"the arguments cannot be read as numbers: {error}") from None


def _refuse_unknown(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    known = schema["properties"]
    for name in arguments:
        if name not in known:
            raise InvalidParameter(name, f"unknown field {name!r}; known: {', '.join(known) or 'none'}")


def _text(arguments: Mapping[str, Any], name: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidParameter(name, f"{name} must be a non-empty string, got {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidParameter(name, f"{name} must be true or false, got {value!r}")
    return value


def _choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidParameter(name, f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _progress_message(job_id: str, kind: str, data: Mapping[str, Any], total: int) -> str:
    if kind == "queued":
        return f"job {job_id}: waiting for a {data['device'].upper()} slot, position {data['position']}"
    if kind == "started":
        return f"job {job_id}: training {total} rounds on {data['n_rows']} rows x {data['n_features']} features"
    metrics = ", ".join(
        f"{name} {'n/a' if value is None else format(value, '.6g')}" for name, value in data["metrics"].items()
    )
    return f"job {job_id}: round {data['iteration']} of {total}" + (f"; {metrics}" if metrics else "")


# Schemas


STATUS_SCHEMA = {"type": "string", "enum": [status.value for status in JobStatus]}
NUMBERS = {"type": "object", "additionalProperties": {"type": ["number", "null"]}}
TRAIN_OUTPUT_SCHEMA = closed_object(
    {
        "job_id": {"type": "string"},
        "status": {"const": JobStatus.SUCCEEDED.value},
        "artifact_id": {
            "type": "string",
            "description": "Pass it to predict; GET /artifacts/{id} downloads the model.",
        },
        "metrics": NUMBERS,
        "iterations": {"type": "integer"},
        "best_iteration": {"type": "integer", "description": "The round the model predicts with."},
        "curve": {
            "type": "object",
            "description": "Every round's metrics, only with include_curve: "
            "metrics[name][k] is the value at round first + k.",
            "properties": {
                "first": {"type": "integer"},
                "metrics": {"type": "object", "additionalProperties": {"type": "array"}},
            },
        },
        "timings": NUMBERS,
        "training_time_s": {"type": "number"},
        "classes": {"type": ["array", "null"]},
        "feature_names": {"type": "array", "items": {"type": "string"}},
        "format": {"type": "string", "enum": list(ARTIFACT_FORMATS)},
        "artifact": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "The model file, only with include_artifact.",
        },
    },
    ["job_id", "status", "artifact_id", "metrics", "iterations", "best_iteration", "timings"],
    closed=False,
)
PREDICT_OUTPUT_SCHEMA = closed_object(
    {
        "artifact_id": {"type": "string"},
        "model_type": {"type": "string"},
        "objective": {"type": "string", "enum": list(OBJECTIVES)},
        "output": {"type": "string", "enum": list(OUTPUTS)},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "classes": {"type": ["array", "null"]},
        "predictions": {"type": "array"},
    },
    ["artifact_id", "output", "shape", "predictions"],
    closed=False,
)
