"""POST /train/stream on LightGBM, read as a client reads it."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time

import joblib
import lightgbm
import numpy as np
import pytest

from boostream.client import Event

from conftest import Server, parse_sse


def check_stream(events: list[Event], n_estimators: int) -> Event:
    """What every successful stream looks like; returns its `complete` event."""
    kinds = [e.type for e in events]
    assert kinds[0] == "started" and kinds[-1] == "complete", kinds
    assert set(kinds[1:-1]) == {"progress"}, kinds
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[0].retry_ms == 2000
    job_id = events[0].data["job_id"]
    assert all(e.data["job_id"] == job_id for e in events)
    started, complete = events[0].data, events[-1]
    assert started["n_estimators"] == n_estimators

    iterations = [e.data["iteration"] for e in events[1:-1]]
    assert iterations[0] == 1
    assert all(a < b for a, b in zip(iterations, iterations[1:], strict=False)), "strictly increasing"
    assert iterations[-1] == complete.data["iterations"]
    for e in events[1:-1]:
        assert e.data["total"] == n_estimators
        assert e.data["percent"] == pytest.approx(100 * e.data["iteration"] / n_estimators, abs=0.01)
        assert e.data["elapsed_s"] >= 0 and e.data["eta_s"] >= 0
        assert e.data["metrics"] and all(isinstance(v, float) for v in e.data["metrics"].values())
    # Throttled or not, the events' histories hold every round once, and add up to the curve.
    curve = streamed_curve(events)
    assert curve == complete.data["curve"]["metrics"] and complete.data["curve"]["first"] == 1
    assert all(len(values) == complete.data["iterations"] for values in curve.values())
    return complete


def streamed_curve(events: list[Event]) -> dict[str, list]:
    """Every round's metrics, put together from the `history` of each `progress` event."""
    curve: dict[str, list] = {}
    for event in events:
        if event.type == "progress":
            history = event.data["history"]
            for name, values in history["metrics"].items():
                assert len(curve.setdefault(name, [])) == history["first"] - 1, "no gap, no round twice"
                curve[name] += values
                assert values[-1] == event.data["metrics"][name]
    return curve


def load_artifact(complete: Event):
    data = complete.data
    blob = base64.b64decode(data["artifact"])
    assert len(blob) == data["size_bytes"]
    assert hashlib.sha256(blob).hexdigest() == data["sha256"]
    assert data["format"] == "joblib"
    return joblib.load(io.BytesIO(blob))


def split(X, y, n_valid):
    order = np.random.default_rng(1).permutation(len(X))
    return X[order[n_valid:]], y[order[n_valid:]], X[order[:n_valid]], y[order[:n_valid]]


def test_models_lists_each_backend_with_its_parameters_and_bounds(server: Server):
    with server.client() as client:
        models = {m["model_type"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"lightgbm", "warpgbm"}
    lightgbm_model = models["lightgbm"]
    assert lightgbm_model["available"] and lightgbm_model["objectives"] == ["regression", "binary", "multiclass"]
    n_estimators = lightgbm_model["params"]["properties"]["n_estimators"]
    assert n_estimators["type"] == "integer" and n_estimators["minimum"] == 1 and n_estimators["default"] == 100
    assert models["warpgbm"]["available"] or models["warpgbm"]["reason"]
    if "not installed" in models["warpgbm"].get("reason", ""):  # the whole recipe, not just a package name
        assert "--no-build-isolation" in models["warpgbm"]["reason"] and "README" in models["warpgbm"]["reason"]


def test_regression_with_validation_data(server: Server, diabetes):
    X, y, Xv, yv = split(*diabetes, 100)
    events = server.train({"X": X.tolist(), "y": y.tolist(), "X_valid": Xv.tolist(), "y_valid": yv.tolist(),
                           "params": {"n_estimators": 60, "learning_rate": 0.05}})
    complete = check_stream(events, 60)
    assert set(events[1].data["metrics"]) == {"train_l2", "valid_l2"}
    booster = load_artifact(complete)
    assert isinstance(booster, lightgbm.Booster)
    predictions = booster.predict(Xv)
    # The metrics reported are the model's own: recompute them from the artifact.
    assert complete.data["metrics"]["valid_l2"] == pytest.approx(np.mean((predictions - yv) ** 2), rel=1e-6)
    assert 1 - np.mean((predictions - yv) ** 2) / np.var(yv) > 0.3  # R^2 on held-out rows
    assert complete.data["iterations"] == complete.data["best_iteration"] == 60
    assert complete.data["training_time_s"] > 0
    assert set(complete.data["timings"]) >= {"receive_s", "decode_s", "queued_s", "fit_s", "artifact_s"}
    assert (server.data_dir / "artifacts" / f"{complete.data['artifact_id']}.joblib").read_bytes() == base64.b64decode(
        complete.data["artifact"]
    )


def test_regression_without_validation_reports_training_metrics(server: Server, diabetes):
    X, y = diabetes
    complete = check_stream(server.train({"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 30}}), 30)
    assert set(complete.data["metrics"]) == {"train_l2"}
    predictions = load_artifact(complete).predict(X)
    assert complete.data["metrics"]["train_l2"] == pytest.approx(np.mean((predictions - y) ** 2), rel=1e-6)


def test_binary_with_valid_fraction(server: Server, breast_cancer):
    X, y = breast_cancer
    events = server.train({"objective": "binary", "X": X.tolist(), "y": y.tolist(), "valid_fraction": 0.25,
                           "feature_names": [f"col{i}" for i in range(X.shape[1])], "params": {"n_estimators": 50}})
    complete = check_stream(events, 50)
    assert events[0].data["n_valid_rows"] == 142 and events[0].data["n_rows"] == 427
    assert set(complete.data["metrics"]) == {"train_binary_logloss", "valid_binary_logloss"}
    assert complete.data["classes"] == [0, 1]
    booster = load_artifact(complete)
    assert booster.feature_name() == [f"col{i}" for i in range(X.shape[1])]
    accuracy = np.mean((booster.predict(X) > 0.5) == y)
    assert accuracy > 0.95


def test_multiclass_with_string_labels(server: Server, iris):
    X, y, Xv, yv = split(*iris, 30)
    complete = check_stream(
        server.train(
            {
                "objective": "multiclass",
                "X": X.tolist(),
                "y": y.tolist(),
                "X_valid": Xv.tolist(),
                "y_valid": yv.tolist(),
                "params": {"n_estimators": 40},
            }
        ),
        40,
    )
    assert complete.data["classes"] == ["setosa", "versicolor", "virginica"]
    assert set(complete.data["metrics"]) == {"train_multi_logloss", "valid_multi_logloss"}
    probabilities = load_artifact(complete).predict(Xv)
    assert probabilities.shape == (30, 3)
    labels = np.array(complete.data["classes"])[probabilities.argmax(axis=1)]
    assert np.mean(labels == yv) > 0.85


@pytest.mark.parametrize("objective", ["regression", "binary", "multiclass"])
def test_early_stopping_ends_training_and_keeps_the_best_round(
    server: Server, objective, diabetes, breast_cancer, iris
):
    X, y = {"regression": diabetes, "binary": breast_cancer, "multiclass": iris}[objective]
    events = server.train({"objective": objective, "X": X.tolist(), "y": y.tolist(), "valid_fraction": 0.3,
                           "params": {"n_estimators": 2000, "learning_rate": 0.3, "early_stopping_rounds": 5}})
    complete = check_stream(events, 2000)
    iterations, best = complete.data["iterations"], complete.data["best_iteration"]
    assert iterations < 2000
    assert best == iterations - 5
    booster = load_artifact(complete)
    assert booster.best_iteration == best
    # The final metrics are those of the best round, as the stream reported it, not of the last one.
    curve = streamed_curve(events)
    assert complete.data["metrics"] == {name: values[best - 1] for name, values in curve.items()}
    assert complete.data["metrics"] != {name: values[-1] for name, values in curve.items()}


def test_many_rounds_are_throttled_to_about_ten_events_a_second(server: Server, diabetes):
    X, y = diabetes
    started = time.monotonic()
    events = server.train({"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 3000, "num_leaves": 4}})
    elapsed = time.monotonic() - started
    complete = check_stream(events, 3000)
    progress = [e for e in events if e.type == "progress"]
    assert complete.data["iterations"] == 3000
    assert len(progress) <= elapsed * 10 + 3


def test_a_300_round_job_streams_every_round_of_its_curve_in_few_events(server: Server, diabetes):
    X, y, Xv, yv = split(*diabetes, 100)
    events = server.train({"X": X.tolist(), "y": y.tolist(), "X_valid": Xv.tolist(), "y_valid": yv.tolist(),
                           "params": {"n_estimators": 300, "learning_rate": 0.05}})
    complete = check_stream(events, 300)
    assert len([e for e in events if e.type == "progress"]) < 300
    curve = streamed_curve(events)
    assert set(curve) == {"train_l2", "valid_l2"} and len(curve["valid_l2"]) == 300
    # Each round's value is the model's own at that round: recompute some from the artifact.
    booster = load_artifact(complete)
    for rounds in (1, 7, 150, 300):
        assert curve["valid_l2"][rounds - 1] == pytest.approx(
            np.mean((booster.predict(Xv, num_iteration=rounds) - yv) ** 2), rel=1e-6
        )
        assert curve["train_l2"][rounds - 1] == pytest.approx(
            np.mean((booster.predict(X, num_iteration=rounds) - y) ** 2), rel=1e-6
        )
    with server.client() as client:
        result = client.get(f"/jobs/{complete.data['job_id']}/result").json()
    assert result["curve"]["metrics"] == curve


def test_two_jobs_train_at_once_and_both_complete(server: Server, diabetes):
    X, y = diabetes
    results = []

    def train():
        results.append(
            server.train({"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 3000, "learning_rate": 0.01}})
        )

    threads = [threading.Thread(target=train) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r[-1].type for r in results] == ["complete", "complete"]
    assert all(event.type != "queued" for events in results for event in events), "neither waited for a slot"
    first, second = (server.job(events[0].data["job_id"]) for events in results)
    assert first["job_id"] != second["job_id"]
    # They trained at the same time: each started before the other finished.
    assert first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"]


def open_stream_and_leave(server: Server, body: dict, progress_events: int, **params: str) -> str:
    """Start a stream, read a few progress events, then drop the connection; return the job id."""
    with server.client() as client:
        with client.stream("POST", "/train/stream", json=body, params=params) as response:
            assert response.status_code == 200
            seen = []
            for event in parse_sse(response.iter_lines()):
                seen.append(event)
                if sum(e.type == "progress" for e in seen) >= progress_events:
                    break
    return seen[0].data["job_id"]


def artifact_count(server: Server) -> int:
    return len(list((server.data_dir / "artifacts").glob("*.joblib")))


def test_disconnect_with_on_disconnect_cancel_stops_training(server: Server, diabetes):
    X, y = diabetes
    server.wait_idle()
    before = artifact_count(server)
    body = {"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 100_000, "learning_rate": 0.001}}
    job_id = open_stream_and_leave(server, body, progress_events=3, on_disconnect="cancel")
    left = time.monotonic()
    health = server.wait_idle(timeout=10)
    assert sum(q["running"] for q in health["queue"].values()) == 0
    assert time.monotonic() - left < 5, "training stopped at the next round, not after 100000"
    assert f"job {job_id}: client left; cancelling" in server.log()
    assert artifact_count(server) == before  # a cancelled job leaves no model


def test_disconnect_by_default_lets_the_job_finish(server: Server, diabetes):
    X, y = diabetes
    server.wait_idle()
    before = artifact_count(server)
    body = {"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 1500, "num_leaves": 8}}
    job_id = open_stream_and_leave(server, body, progress_events=1)
    server.wait_idle(timeout=60)
    assert f"job {job_id}: client left; the job keeps training" in server.log()
    assert artifact_count(server) == before + 1


