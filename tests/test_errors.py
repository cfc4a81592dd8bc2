"""Bad requests get a JSON error with the right status that names the field, before any stream."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import httpx
import pytest

from boostream import cli
from boostream.trainers import create_trainers

from conftest import Server, parse_sse, start_server

GOOD_X = [[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]]
GOOD_Y = [0.0, 1.0, 0.0, 1.0]


def body(**fields):
    return {"X": GOOD_X, "y": GOOD_Y, **fields}


BAD_REQUESTS = [
    # (what is wrong, JSON body, status, field, words in the message)
    ("ragged rows", body(X=[[1.0, 2.0], [3.0], [4.0, 5.0], [6.0, 7.0]]), 400, "X", "X[1] has 1 values"),
    (
        "a string in X", body(X=[[1.0, 2.0], [3.0, "a"], [4.0, 5.0], [6.0, 7.0]]), 400, "X",
        "X[1][1] is 'a', not a number",
    ),
    ("a nested list in X", body(X=[[1.0, 2.0], [3.0, [4.0]], [4.0, 5.0], [6.0, 7.0]]), 400, "X", "X[1][1] is list"),
    ("a bool in X", body(X=[[1.0, True], [3.0, 4.0], [4.0, 5.0], [6.0, 7.0]]), 400, "X", "X[0][1] is True"),
    ("X not a table", body(X=[1.0, 2.0, 3.0, 4.0]), 400, "X", "X[0] is not a list"),
    ("empty rows", body(X=[[], [], [], []]), 400, "X", "X[0] is an empty row"),
    ("empty table", body(X=[], y=[]), 400, "X", "empty"),
    ("missing y", {"X": GOOD_X}, 400, "y", "missing required field"),
    ("null in y", body(y=[0.0, None, 1.0, 0.0]), 400, "y", "y[1] is null"),
    ("a string in a regression y", body(y=[0.0, "b", 1.0, 0.0]), 400, "y", "y[1] is 'b', not a number"),
    ("length mismatch", body(y=[0.0, 1.0]), 400, "y", "has 2 values, but X has 4 rows"),
    ("single class", body(objective="binary", y=[1, 1, 1, 1]), 400, "y", "single class"),
    ("three classes for binary", body(objective="binary", y=[0, 1, 2, 0]), 400, "y", "needs exactly two"),
    (
        "feature names of the wrong count", body(feature_names=["a"]), 400, "feature_names",
        "has 1 names, but X has 2 features",
    ),
    (
        "a feature name LightGBM refuses", body(feature_names=["a:b", "c"]), 400, "feature_names",
        "'a:b' is not a usable feature name",
    ),
    ("X_valid without y_valid", body(X_valid=GOOD_X), 400, "y_valid", "sent together"),
    ("X_valid of another width", body(X_valid=[[1.0]], y_valid=[1.0]), 400, "X_valid", "rows have 1 values"),
    ("unknown model_type", body(model_type="xgboost"), 422, "model_type", "unknown model_type 'xgboost'"),
    ("unknown objective", body(objective="poisson"), 422, "objective", "unknown objective 'poisson'"),
    ("unknown parameter", body(params={"num_leafs": 8}), 422, "params.num_leafs", "unknown parameter"),
    ("parameter out of range", body(params={"learning_rate": 0.0}), 422, "params.learning_rate", "greater than 0.0"),
    (
        "parameter of the wrong type", body(params={"n_estimators": "100"}), 422, "params.n_estimators",
        "must be a number",
    ),
    (
        "integer parameter given a fraction", body(params={"num_leaves": 7.5}), 422, "params.num_leaves",
        "must be an integer",
    ),
    (
        "early stopping without validation", body(params={"early_stopping_rounds": 5}), 422,
        "params.early_stopping_rounds", "needs validation data",
    ),
    (
        "bagging that would silently do nothing", body(params={"bagging_fraction": 0.5}), 422,
        "params.bagging_fraction", "bagging_freq",
    ),
    ("valid_fraction out of range", body(valid_fraction=0.9), 422, "valid_fraction", "at most 0.5"),
    (
        "valid_fraction and X_valid both", body(valid_fraction=0.25, X_valid=GOOD_X, y_valid=GOOD_Y), 422,
        "valid_fraction", "not both",
    ),
    (
        "a validation label y does not have",
        body(objective="binary", y=["a", "b", "a", "b"], X_valid=GOOD_X[:2], y_valid=["a", "c"]), 400, "y_valid",
        "has the class 'c', which y does not have",
    ),
    ("an unknown top-level field", body(n_estimators=10), 422, "n_estimators", "unknown field"),
    ("era on LightGBM", body(era=[1, 1, 2, 2]), 422, "era", "WarpGBM"),
]


@pytest.mark.parametrize("case, request_body, status, field, words", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_answered_with_status_and_field(server: Server, case, request_body, status, field, words):
    with server.client() as client:
        response = client.post("/train/stream", json=request_body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["field"] == field
    assert words in error["message"]


def test_malformed_json_is_a_400(server: Server):
    with server.client() as client:
        response = client.post(
            "/train/stream", content=b'{"X": [[1, 2]], "y": [1', headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


NAN, INF = math.nan, math.inf
NOT_JSON_NUMBERS = [
    # (what is wrong, path, body as Python's json.dumps writes it by default, field, words in the message)
    ("NaN in X", "/train/stream", body(X=[[0.0, 1.0], [1.0, NAN], [2.0, 1.0], [3.0, 0.0]]), "X", "X[1][1] is NaN"),
    ("Infinity in y", "/train/stream", body(y=[0.0, 1.0, INF, 1.0]), "y", "y[2] is Infinity"),
    (
        "-Infinity in X_valid", "/jobs", body(X_valid=[[1.0, 2.0], [1.0, -INF]], y_valid=[1.0, 0.0]), "X_valid",
        "X_valid[1][1] is -Infinity",
    ),
    ("NaN as valid_fraction", "/train/stream", body(valid_fraction=NAN), "valid_fraction", "valid_fraction is NaN"),
    (
        "NaN in X to predict", "/predict", {"artifact_id": "0" * 32, "X": [[1.0, 2.0], [NAN, 1.0]]}, "X",
        "X[1][0] is NaN",
    ),
]


@pytest.mark.parametrize(
    "case, path, request_body, field, words", NOT_JSON_NUMBERS, ids=[c[0] for c in NOT_JSON_NUMBERS]
)
def test_nan_and_infinity_are_named_as_not_json(server: Server, case, path, request_body, field, words):
    with server.client() as client:
        response = client.post(path, content=json.dumps(request_body), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_json", field)
    assert words in error["message"] and "not JSON" in error["message"] and "null" in error["message"], error


BEYOND_DOUBLES = [
    # (what is wrong, path, body as text, field)
    ("1e400 in X", "/jobs", '{"X": [[1, 1e400], [2, 3]], "y": [1, 2]}', "X"),
    ("1e400 in y", "/jobs", '{"X": [[1, 2], [2, 3]], "y": [1, 1e400]}', "y"),
    ("1e400 to predict", "/predict", '{"artifact_id": "x", "X": [[1e400, 1]]}', "X"),
]


@pytest.mark.parametrize("case, path, text, field", BEYOND_DOUBLES, ids=[c[0] for c in BEYOND_DOUBLES])
def test_a_number_beyond_a_double_is_a_400_naming_its_field(server: Server, case, path, text, field):
    with server.client() as client:
        response = client.post(path, content=text, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_data", field)
    assert "infinity" in error["message"], error


def test_an_integer_beyond_64_bits_is_read_as_the_nearest_double(server: Server):
    big = "-9223372036854775809"  # one below the smallest 64-bit integer: JSON takes it, as a number
    rows = ", ".join(f"[{i}, {big if i == 1 else i}]" for i in range(40))
    text = f'{{"X": [{rows}], "y": [{", ".join(str(i % 2) for i in range(40))}], "params": {{"n_estimators": 3}}}}'
    with server.client() as client:
        response = client.post("/jobs", content=text, headers={"content-type": "application/json"})
        assert response.status_code == 202, response.text
        job = server.wait_for_job(response.json()["job_id"])
        assert job["status"] == "succeeded", job
        rows_big = client.post(  # and prediction takes such rows too
            "/predict", content=f'{{"artifact_id": "{job["artifact_id"]}", "X": [[1, {big}]]}}',
            headers={"content-type": "application/json"},
        )
    assert rows_big.status_code == 200, rows_big.text
    assert len(rows_big.json()["predictions"]) == 1


def test_a_body_nested_too_deeply_is_a_400(server: Server):
    params = '{"a": ' + "[" * 1000 + "]" * 1000 + "}"
    with server.client() as client:
        response = client.post(
            "/jobs", content='{"X": [[1, 2], [2, 3]], "y": [1, 2], "params": ' + params + "}",
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json" and "too deeply" in response.json()["error"]["message"]


def test_a_nan_nested_under_a_field_name_is_not_blamed_on_that_field(server: Server):
    request_body = body(params={"X": NAN})  # not the table X: a (wrong) parameter of that name
    with server.client() as client:
        response = client.post("/jobs", content=json.dumps(request_body), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "field" not in error and "(under 'X') is NaN" in error["message"], error


@pytest.mark.parametrize("path", ["/train/stream", "/jobs", "/predict"])
@pytest.mark.parametrize("content", [b"", b" \r\n"], ids=["empty", "blank"])
def test_an_empty_body_is_named_empty(server: Server, path: str, content: bytes):
    with server.client() as client:
        response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert "the body is empty" in error["message"] and "X" in error["message"], error


@pytest.mark.parametrize(
    "request_body, field, words",
    [
        (body(y=["a", "b", "a", "b"]), "y", "y[0] is 'a', not a number"),
        (body(X_valid=GOOD_X[:2], y_valid=[0.0, "b"]), "y_valid", "y_valid[1] is 'b', not a number"),
    ],
    ids=["y", "y_valid"],
)
def test_string_labels_for_a_regression_hint_at_a_classifier(server: Server, request_body, field, words):
    with server.client() as client:
        response = client.post("/train/stream", json=request_body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"]
    assert "strings are class labels: use a classifier objective" in error["message"], error


def test_other_content_types_are_refused(server: Server):
    with server.client() as client:
        response = client.post("/train/stream", content=b"<X>1</X>", headers={"content-type": "application/xml"})
    assert response.status_code == 415
    assert "text/csv" in response.json()["error"]["message"]


def test_bad_on_disconnect_is_a_422(server: Server):
    with server.client() as client:
        response = client.post("/train/stream", json=body(), params={"on_disconnect": "explode"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "on_disconnect"


def test_warpgbm_without_a_gpu_is_a_503_with_the_reason(server: Server):
    with server.client() as client:
        health = client.get("/health").json()
        if health["backends"]["warpgbm"]["available"]:
            pytest.skip("this machine can train WarpGBM")
        response = client.post("/train/stream", json=body(model_type="warpgbm"))
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "backend_unavailable" and error["field"] == "model_type"
    assert f"warpgbm cannot train on this server: {health['backends']['warpgbm']['reason']}" in error["message"]


def test_local_warpgbm_without_a_gpu_says_this_machine_not_server(tmp_path: Path, capsys):
    availability = create_trainers(1)["warpgbm"].availability()
    if availability.available:
        pytest.skip("this machine can train WarpGBM")
    table = tmp_path / "table.csv"
    table.write_text("a,y\n1,1\n2,2\n3,1\n")
    code = cli.main(
        ["train", str(table), "--target", "y", "--local", "--model", "warpgbm", "--out", str(tmp_path / "m.joblib")]
    )
    said = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert f"warpgbm cannot train on this machine: {availability.reason}" in said, said
    assert "this server" not in said


def test_the_server_still_trains_after_the_bad_requests_above(server: Server):
    events = server.train(body(params={"n_estimators": 3, "min_data_in_leaf": 1}))
    assert events[-1].type == "complete"


# A server with small limits and a single CPU slot.


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    yield from start_server(
        tmp_path_factory.mktemp("strict"), cpu_jobs=1, max_body_bytes=20000, max_cells=600, heartbeat_s=0.3
    )


def test_a_body_over_the_limit_is_a_413(strict_server: Server):
    X = [[float(i), 1.0] for i in range(2000)]
    with strict_server.client() as client:
        response = client.post("/train/stream", json={"X": X, "y": [0.0] * 2000})
    assert response.status_code == 413
    assert "20000" in response.json()["error"]["message"]


def test_a_chunked_body_over_the_limit_is_a_413(strict_server: Server):
    def chunks():
        yield b'{"X": ['
        for _ in range(3000):
            yield b"[1.0, 2.0],"
        yield b"[1.0, 2.0]], \"y\": [1]}"

    with strict_server.client() as client:
        try:
            response = client.post("/train/stream", content=chunks(), headers={"content-type": "application/json"})
        except httpx.HTTPError:
            pytest.fail("the server should answer 413, not drop the connection")
    assert response.status_code == 413


def test_a_table_over_the_cell_limit_is_a_413(strict_server: Server):
    X = [[1.0] * 10 for _ in range(61)]
    with strict_server.client() as client:
        response = client.post("/train/stream", json={"X": X, "y": [0.0] * 61})
    assert response.status_code == 413
    assert "61 x 10 = 610" in response.json()["error"]["message"]


def test_a_job_waits_queued_with_heartbeats_while_the_slot_is_taken(strict_server: Server, diabetes):
    X, y = diabetes
    long_body = {"X": X[:50].tolist(), "y": y[:50].tolist(), "params": {"n_estimators": 100_000, "min_data_in_leaf": 1}}
    short_body = {"X": X[:50].tolist(), "y": y[:50].tolist(), "params": {"n_estimators": 20, "min_data_in_leaf": 1}}
    first_running = threading.Event()
    release_first = threading.Event()

    def hold_the_slot():
        with strict_server.client() as client:
            with client.stream("POST", "/train/stream", json=long_body, params={"on_disconnect": "cancel"}) as response:
                for event in parse_sse(response.iter_lines()):
                    if event.type == "progress":
                        first_running.set()
                        release_first.wait(30)
                        return  # leaving cancels the long job and frees the slot

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    assert first_running.wait(30)
    comments: list[str] = []
    with strict_server.client() as client:
        with client.stream("POST", "/train/stream", json=short_body) as response:
            events = []
            for event in parse_sse(response.iter_lines(), comments):
                events.append(event)
                if event.type == "queued":
                    assert event.data["position"] == 1
                    threading.Timer(1.0, release_first.set).start()
    holder.join()
    assert [e.type for e in events][:2] == ["queued", "started"]
    assert events[-1].type == "complete"
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert any(c.startswith(": ping") for c in comments), "idle streams get heartbeats"
