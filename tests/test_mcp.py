"""The MCP endpoint, through the official MCP client over Streamable HTTP against a real server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import joblib
import jsonschema
import numpy as np
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client

from boostream.mcp_server import MAX_BODY_BYTES
from boostream.requests.schema import train_request_schema
from boostream.trainers import create_trainers

from conftest import Server, running_server

TOOLS = {"list_models", "train", "tune", "start_job", "job_status", "cancel_job", "predict"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}


@contextlib.asynccontextmanager
async def mcp_session(server: Server) -> AsyncIterator[ClientSession]:
    async with streamable_http_client(server.url + "/mcp") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


class ProgressLog:
    def __init__(self) -> None:
        self.notes: list[tuple[float, float | None, str | None]] = []
        self.round_seen = anyio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.notes.append((progress, total, message))
        if progress >= 1:
            self.round_seen.set()

    def job_id(self) -> str:
        return re.match(r"job ([0-9a-f]{32}):", self.notes[0][2]).group(1)


def train_arguments(data, rounds: int, **params) -> dict[str, Any]:
    X, y = data
    return {"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": rounds, **params}}


def long_arguments(data) -> dict[str, Any]:
    """A job that trains until it is stopped (a round takes about a millisecond)."""
    return train_arguments(data, 100_000, learning_rate=0.001, num_leaves=8)


def error_text(result) -> str:
    assert result.is_error, result
    return result.content[0].text


def test_an_agent_lists_the_tools_trains_with_progress_and_predicts_with_the_artifact(server: Server, diabetes):
    X, y = diabetes

    async def agent():
        progress = ProgressLog()
        async with mcp_session(server) as session:
            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            trained = await session.call_tool(
                "train", {**train_arguments(diabetes, 300), "include_curve": True}, progress_callback=progress
            )
            predicted = await session.call_tool(
                "predict", {"artifact_id": trained.structured_content["artifact_id"], "X": X.tolist()}
            )
            return tools, progress, trained, predicted

    tools, progress, trained, predicted = asyncio.run(agent())

    assert set(tools) == TOOLS
    train_schema = tools["train"].input_schema
    assert train_schema["required"] == ["X", "y"] and train_schema["additionalProperties"] is False
    assert {"X", "y", "model_type", "objective", "params", "valid_fraction", "include_artifact"} <= set(
        train_schema["properties"]
    )
    lightgbm_params = train_schema["allOf"][0]["then"]["properties"]["params"]["properties"]
    assert lightgbm_params["n_estimators"] == {**lightgbm_params["n_estimators"], "minimum": 1, "maximum": 100000}
    assert tools["predict"].input_schema["required"] == ["artifact_id", "X"]

    assert not trained.is_error, trained.content
    result = trained.structured_content
    assert result["status"] == "succeeded" and result["iterations"] == 300
    assert set(result["metrics"]) == {"train_l2"} and set(result["timings"]) >= {
        "decode_s",
        "queued_s",
        "fit_s",
        "artifact_s",
    }
    assert "artifact" not in result
    # The whole learning curve comes back, one value per round, ending at the reported metrics.
    curve = result["curve"]
    assert curve["first"] == 1 and len(curve["metrics"]["train_l2"]) == 300
    assert curve["metrics"]["train_l2"][-1] == result["metrics"]["train_l2"]

    values = [note[0] for note in progress.notes]
    assert len(values) >= 3 and values[0] == 0 and values[-1] == 300, values
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    assert {note[1] for note in progress.notes} == {300}
    assert all(note[2].startswith(f"job {result['job_id']}: ") for note in progress.notes)
    assert re.search(r"round 300 of 300; train_l2 \d", progress.notes[-1][2])

    with server.client() as client:
        blob = client.get(f"/artifacts/{result['artifact_id']}").content
    expected = joblib.load(io.BytesIO(blob)).predict(X)
    assert not predicted.is_error, predicted.content
    assert predicted.structured_content["shape"] == [len(X)]
    np.testing.assert_allclose(predicted.structured_content["predictions"], expected, rtol=1e-9)


def test_train_returns_the_artifact_only_when_asked(server: Server, breast_cancer):
    async def agent():
        async with mcp_session(server) as session:
            arguments = {**train_arguments(breast_cancer, 5), "objective": "binary", "include_artifact": True}
            return await session.call_tool("train", arguments)

    result = asyncio.run(agent()).structured_content
    model = joblib.load(io.BytesIO(base64.b64decode(result["artifact"])))
    assert model.num_trees() == 5 and result["classes"] == [0, 1]
    assert "curve" not in result, "the curve comes only with include_curve"


def test_a_started_job_is_polled_and_cancelled(server: Server, diabetes):
    async def agent():
        async with mcp_session(server) as session:
            started = await session.call_tool("start_job", long_arguments(diabetes))
            job_id = started.structured_content["job_id"]
            assert started.structured_content["status"] in ("queued", "running")

            async def status() -> dict:
                return (await session.call_tool("job_status", {"job_id": job_id})).structured_content

            with anyio.fail_after(30):
                while (running := await status())["progress"]["iteration"] < 1:
                    await anyio.sleep(0.05)
                cancelled = await session.call_tool("cancel_job", {"job_id": job_id})
                while (ended := await status())["status"] == "running":
                    await anyio.sleep(0.05)
            again = await session.call_tool("cancel_job", {"job_id": job_id})
            return running, cancelled, ended, again

    running, cancelled, ended, again = asyncio.run(agent())
    assert running["status"] == "running" and running["progress"]["total"] == 100_000
    assert cancelled.structured_content["cancel_requested"] is True
    assert ended["status"] == "cancelled" and ended["artifact_id"] is None
    assert error_text(again).startswith("already_finished")


def test_refusals_are_tool_errors_that_name_the_field(server: Server, diabetes):
    async def agent():
        async with mcp_session(server) as session:
            return [
                await session.call_tool("train", train_arguments(diabetes, 5, x=1)),
                await session.call_tool("train", {**train_arguments(diabetes, 5), "valid_fraction": 0.9}),
                await session.call_tool("start_job", {**train_arguments(diabetes, 5), "bogus": True}),
                await session.call_tool("train", {"X": [[1, 2], [3]], "y": [1, 2]}),
                await session.call_tool("train", {**train_arguments(diabetes, 5), "model_type": "warpgbm"}),
                await session.call_tool("job_status", {"job_id": "nope"}),
                await session.call_tool("predict", {"artifact_id": "nope", "X": [[1.0]]}),
            ]

    bad_param, bad_fraction, unknown, ragged, unavailable, no_job, no_artifact = asyncio.run(agent())
    assert error_text(bad_param).startswith("invalid_parameter (params.x): unknown parameter")
    assert error_text(bad_fraction).startswith(
        "invalid_parameter (valid_fraction): must be greater than 0 and at most 0.5"
    )
    assert error_text(unknown).startswith("invalid_parameter (bogus): unknown field 'bogus'")
    assert error_text(ragged).startswith("invalid_data (X): X[1] has 1 values")
    assert error_text(unavailable).startswith("backend_unavailable (model_type): warpgbm cannot train on this server")
    assert error_text(no_job).startswith("not_found (job_id)")
    assert error_text(no_artifact).startswith("not_found (artifact_id)")


def test_a_cancelled_train_call_leaves_its_job_training_unless_asked_to_stop_it(server: Server, diabetes):
    async def cancel_after_a_round(session: ClientSession, arguments: dict) -> str:
        progress = ProgressLog()
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: session.call_tool("train", arguments, progress_callback=progress))
            with anyio.fail_after(30):
                await progress.round_seen.wait()
            group.cancel_scope.cancel()  # the client sends notifications/cancelled
        return progress.job_id()

    async def agent():
        async with mcp_session(server) as session:
            kept = await cancel_after_a_round(session, long_arguments(diabetes))
            stopped = await cancel_after_a_round(session, {**long_arguments(diabetes), "on_cancel": "cancel"})
            await anyio.sleep(0.5)
            kept_status = (await session.call_tool("job_status", {"job_id": kept})).structured_content
            await session.call_tool("cancel_job", {"job_id": kept})
            return kept_status, stopped

    kept_status, stopped = asyncio.run(agent())
    assert kept_status["status"] == "running" and kept_status["progress"]["iteration"] > 1
    assert server.wait_for_job(stopped)["status"] == "cancelled"
    assert "MCP caller left; the job keeps training" in server.log()


def test_an_agent_searches_hyperparameters_with_a_notification_per_trial_and_predicts_with_the_best(
    server: Server, diabetes
):
    X, y = diabetes
    arguments = {
        **train_arguments(diabetes, 30), "valid_fraction": 0.2, "n_trials": 5, "seed": 2,
        "search": {"num_leaves": {"low": 4, "high": 32, "log": True}, "learning_rate": [0.05, 0.2]},
    }  # fmt: skip

    async def agent():
        progress = ProgressLog()
        async with mcp_session(server) as session:
            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            tuned = await session.call_tool("tune", arguments, progress_callback=progress)
            predicted = await session.call_tool(
                "predict", {"artifact_id": tuned.structured_content["artifact_id"], "X": X[:5].tolist()}
            )
            refused = await session.call_tool("tune", {**arguments, "search": {"num_leaves": {"low": 1, "high": 8}}})
            return tools, progress, tuned, predicted, refused

    tools, progress, tuned, predicted, refused = asyncio.run(agent())
    assert {"search", "n_trials", "pruner"} <= set(tools["tune"].input_schema["properties"])
    assert not tuned.is_error, tuned.content
    result = tuned.structured_content
    assert result["status"] == "succeeded" and len(result["leaderboard"]) == 5
    assert set(result["best_params"]) >= {"num_leaves", "learning_rate", "n_estimators"}
    assert [note[0] for note in progress.notes] == [0, 1, 2, 3, 4, 5] and progress.notes[-1][1] == 5
    assert f"tune {result['tune_id']}: 5 of 5 trials done" in progress.notes[-1][2]
    assert not predicted.is_error and len(predicted.structured_content["predictions"]) == 5
    assert refused.is_error and "search.num_leaves.low" in refused.content[0].text


def test_a_2026_client_trains_with_progress_too(server: Server, iris):
    async def agent():
        progress = ProgressLog()
        async with Client(server.url + "/mcp") as client:
            arguments = {**train_arguments(iris, 20), "objective": "multiclass"}
            trained = await client.call_tool("train", arguments, progress_callback=progress)
            X = iris[0][:3].tolist()
            predicted = await client.call_tool(
                "predict", {"artifact_id": trained.structured_content["artifact_id"], "X": X, "output": "proba"}
            )
            return client.session.discover_result, progress, trained, predicted

    discovered, progress, trained, predicted = asyncio.run(agent())
    assert discovered is not None, "the client should have spoken the 2026-07-28 protocol"
    assert not trained.is_error, trained.content
    assert [note[0] for note in progress.notes][-1] == 20
    assert predicted.structured_content["classes"] == ["setosa", "versicolor", "virginica"]
    assert predicted.structured_content["shape"] == [3, 3]


def test_a_foreign_origin_is_refused_before_any_session(server: Server):
    headers = {"accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        foreign = client.post("/mcp", json=INITIALIZE, headers={**headers, "origin": "http://evil.example"})
        rebound = client.post(
            "/mcp",
            json=INITIALIZE,
            headers={**headers, "origin": "http://evil.example:8000", "host": "evil.example:8000"},
        )
        loopback = client.post("/mcp", json=INITIALIZE, headers={**headers, "origin": server.url})  # its own page
        other_port = client.post("/mcp", json=INITIALIZE, headers={**headers, "origin": "http://127.0.0.1:3000"})
        listing = client.get("/mcp", headers={**headers, "origin": "http://evil.example"})
        without = client.post("/mcp", json=INITIALIZE, headers=headers)
        modern = client.post(
            "/mcp",
            json=INITIALIZE,
            headers={**headers, "origin": "http://evil.example", "mcp-protocol-version": "2026-07-28"},
        )
    assert foreign.status_code == 403 and modern.status_code == 403
    assert other_port.status_code == 403, "another port's page gets this server's cookies: not its own page"
    assert listing.status_code == 403 and listing.json()["error"]["code"] == "cross_origin", "every method of /mcp"
    assert rebound.status_code == 421  # a DNS-rebound name is not one this server answers to
    assert loopback.status_code == 200 and loopback.headers["mcp-session-id"]
    assert without.status_code == 200


def test_hosts_and_origins_the_operator_lists_are_served_and_no_others(tmp_path):
    headers = {"accept": "application/json, text/event-stream"}
    with (
        running_server(
            tmp_path, allowed_hosts="models.internal", allowed_origins="https://dashboard.example"
        ) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):

        def initialize(**extra: str) -> int:
            return client.post("/mcp", json=INITIALIZE, headers={**headers, **extra}).status_code

        assert initialize(host="models.internal:8000") == 200
        assert (
            initialize(host="models.internal:8000", origin="http://models.internal:8000") == 200
        )  # a page of a listed host
        assert initialize(origin="https://dashboard.example") == 200
        assert initialize(host="other.internal:8000") == 421
        assert initialize(origin="https://other.example") == 403
        assert initialize(origin="https://dashboard.example:8443") == 403  # the origin listed has no port


def test_tool_arguments_over_4_mib_are_refused_and_the_server_carries_on(server: Server, diabetes):
    X, y = diabetes
    rows = 4 * 1024**2 // len(str(X[0].tolist())) + 100
    big = {"X": np.resize(X, (rows, X.shape[1])).tolist(), "y": np.resize(y, rows).tolist()}
    request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "train", "arguments": big}}
    assert len(json.dumps(request)) > MAX_BODY_BYTES
    headers = {"accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        session = client.post("/mcp", json=INITIALIZE, headers=headers).headers["mcp-session-id"]
        refused = client.post("/mcp", json=request, headers={**headers, "mcp-session-id": session})
        assert refused.status_code == 413, refused.text
        assert client.get("/health").json()["queue"]["cpu"]["queued"] == 0

    async def agent():
        async with mcp_session(server) as session:
            return await session.call_tool("train", train_arguments((X[:100], y[:100]), 5))

    assert not asyncio.run(agent()).is_error, "a call under the cap still trains"


def test_the_train_schema_checks_params_against_the_chosen_backend(diabetes):
    validator = jsonschema.Draft202012Validator(train_request_schema(create_trainers(1), max_training_s=60))
    base = {"X": [[1.0, None]], "y": [1]}
    assert validator.is_valid({**base, "params": {"num_leaves": 8}})
    assert not validator.is_valid({**base, "params": {"num_bins": 8}})  # WarpGBM's, not LightGBM's
    assert validator.is_valid({**base, "model_type": "warpgbm", "params": {"num_bins": 8}})
    assert not validator.is_valid({**base, "model_type": "warpgbm", "params": {"num_bins": 500}})
    assert not validator.is_valid({**base, "X_valid": [[1.0, 2.0]]})  # without y_valid
    assert not validator.is_valid({**base, "timeout_s": 61})
    assert not validator.is_valid({**base, "X": [[True]]})
    assert not validator.is_valid({**base, "X": [[[1.0]]]})
    assert validator.is_valid({**base, "X": [[1.0, "a"]], "categorical": ["f1"]})  # a category
