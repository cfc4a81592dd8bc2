"""Every error the server answers, from any route or from Starlette itself, is the documented JSON
body `{"error": {"code", "message", "field"?}}` with its status; /mcp speaks its own protocol."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route

from boostream.config import Settings
from boostream.mcp_server import PATH as MCP_PATH
from boostream.streaming_server.app import create_app

from conftest import Server, running_server

UNKNOWN_ID = "0" * 32
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
BAD_QUERY = {"limit": "x", "cursor": "-1", "status": "nope", "after": "z", "format": "zip", "on_disconnect": "explode"}
BAD_BODIES = [
    # (content type, body)
    (None, None),
    ("application/json", b""),
    ("application/json", b'{"X": [[1, 2]], "y": [1'),
    ("application/json", b'{"X": [[1, NaN]], "y": [1], "artifact_id": "x"}'),
    ("application/json", b'{"X": [[1, 2]], "y": [1], "model_type": "nope", "artifact_id": "x"}'),
    ("application/xml", b"<X>1</X>"),
    ("text/csv", b"a,y\n1,1\n"),
    ("multipart/form-data; boundary=xyz", b"not multipart at all"),
]


def assert_error_body(response: httpx.Response) -> None:
    where = f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text[:200]}"
    assert response.headers.get("content-type") == "application/json", where
    body = response.json()
    assert set(body) == {"error"}, where
    error = body["error"]
    assert isinstance(error.get("code"), str) and re.fullmatch(r"[a-z_]+", error["code"]), where
    assert isinstance(error.get("message"), str) and error["message"], where
    assert set(error) <= {"code", "message", "field", "status"}, where
    assert isinstance(error.get("field", ""), str), where


def paths_of(routes) -> list[str]:
    """A path for each route, its parameters an id that names nothing; under a mount, a file that is not there."""
    paths = []
    for route in routes:
        if isinstance(route, Mount):
            paths.append(route.path + "/nothing-here.js")
        elif isinstance(route, Route) and route.path != MCP_PATH:
            paths.append(re.sub(r"\{[^}]+\}", UNKNOWN_ID, route.path))
    return sorted(set(paths))


def test_every_route_answers_errors_as_json(server: Server, tmp_path: Path):
    app = create_app(Settings(data_dir=tmp_path))  # not started: only its routes are read
    paths = [*paths_of(app.routes), "/no/such/route"]
    assert f"/jobs/{UNKNOWN_ID}/events" in paths and "/predict" in paths
    statuses = set()
    with server.client() as client:
        for path, method, query, (content_type, content) in itertools.product(
            paths, METHODS, ({}, BAD_QUERY), BAD_BODIES
        ):
            headers = {"content-type": content_type} if content_type else {}
            response = client.request(method, path, params=query, headers=headers, content=content)
            statuses.add(response.status_code)
            if response.status_code >= 400:
                assert_error_body(response)
    assert {400, 404, 405, 415, 422} <= statuses, statuses


def test_an_unknown_route_is_a_json_404(server: Server):
    with server.client() as client:
        response = client.get("/no/such/route")
    assert response.status_code == 404
    assert_error_body(response)
    assert response.json()["error"] == {"code": "not_found", "message": "there is nothing at /no/such/route"}
    with server.client() as client:
        hostile = client.get("/nope%00%1b%5B31m" + "x" * 5000).json()["error"]["message"]
    assert "\x1b" not in hostile and "\x00" not in hostile and "\\x1b[31m" in hostile and len(hostile) < 300, hostile


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("PUT", "/jobs", "GET, HEAD, POST"),
        ("PATCH", f"/jobs/{UNKNOWN_ID}", "DELETE, GET, HEAD"),
        ("GET", "/predict", "POST"),
        ("POST", "/ui/dashboard.js", "GET, HEAD"),
    ],
)
def test_a_wrong_method_is_a_json_405_with_every_method_allowed(server: Server, method: str, path: str, allowed: str):
    with server.client() as client:
        response = client.request(method, path)
    assert response.status_code == 405
    assert_error_body(response)
    assert response.headers["allow"] == allowed
    error = response.json()["error"]
    assert (
        error["code"] == "method_not_allowed" and f"{path} does not take {method}; use {allowed}" == error["message"]
    ), error


def test_an_unexpected_failure_is_a_json_500_and_is_logged(tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "uploads").write_text("a file where the uploads folder should be")  # as a disk might break
    with running_server(tmp_path) as broken:
        with broken.client() as client:
            response = client.post(
                "/train/stream", content=b"a,y\n1,1\n", headers={"content-type": "text/csv"}, params={"target": "y"}
            )
            assert client.get("/health").status_code == 200
        log = broken.log()
    assert response.status_code == 500
    assert_error_body(response)
    assert response.json()["error"]["code"] == "internal_error"
    assert "Traceback" in log and "FileExistsError" in log, log


@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"X": [[1], [2], [3]], "y": [1, 2, 3], "y": [3, 2, 1]}', "y"),
        (b'{"X": [[1], [2], [3]], "y": [1, 2, 3], "params": {"n_estimators": 3, "n_estimators": 500}}', "n_estimators"),
        (b'{"model_type": "lightgbm", "X": [[1], [2], [3]], "model_type": "warpgbm", "y": [1, 2, 3]}', "model_type"),
    ],
    ids=["array", "parameter", "option"],
)
def test_a_key_sent_twice_is_refused_naming_it(server: Server, body: bytes, field: str):
    # One reader keeps the first, another the last: the request would mean two things.
    with server.client() as client:
        answer = client.post("/jobs", content=body, headers={"content-type": "application/json"})
        predicted = client.post(
            "/predict",
            content=b'{"artifact_id": "x", "X": [[1]], "X": [[2]]}',
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == {**answer.json()["error"], "code": "invalid_json", "field": field}
    assert "twice" in answer.json()["error"]["message"]
    assert predicted.status_code == 400 and predicted.json()["error"]["field"] == "X"


def test_an_array_sent_twice_is_refused_without_reading_it_all(server: Server):
    rows = b"[" + b",".join([b"[1.5, 2.5, 3.5, 4.5]"] * 1_000_000) + b"]"  # 20 MB
    body = b'{"X": ' + rows + b', "y": [1, 2], "X": ' + rows + b"}"
    with server.client() as client:
        started = time.perf_counter()
        answer = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    # Refused for its size outside the arrays, before the second array is read as Python objects.
    assert answer.status_code == 400 and "outside its arrays" in answer.json()["error"]["message"], answer.text
    assert time.perf_counter() - started < 30
