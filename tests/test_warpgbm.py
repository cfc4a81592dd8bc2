"""WarpGBM on the GPU: streamed like LightGBM, exported to a Forest that predicts on the CPU.

Marked `gpu`; skipped, with the reason, wherever WarpGBM cannot train."""

from __future__ import annotations

import numpy as np
import pytest
from test_train_stream import check_stream, load_artifact

from boostream.trainers.base import TrainingData
from boostream.trainers.forest import Forest
from boostream.trainers.warpgbm import WarpGBMTrainer

from conftest import Server

_availability = WarpGBMTrainer().availability()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _availability.available, reason=f"WarpGBM cannot train here: {_availability.reason}"),
]


def regression_data(rows: int = 20_000, features: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    y = 2 * X[:, 0] + np.sin(3 * X[:, 1]) + X[:, 2] * X[:, 3] + 0.1 * rng.normal(size=rows)
    return X, y


def classification_data(classes: int, rows: int = 20_000, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 8))
    score = X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=rows)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return X, y


def test_regression_streams_and_its_forest_predicts_on_the_cpu(server: Server):
    X, y = regression_data()
    Xv, yv = regression_data(4000, seed=9)
    events = server.train({"model_type": "warpgbm", "X": X.tolist(), "y": y.tolist(), "X_valid": Xv.tolist(),
                           "y_valid": yv.tolist(), "params": {"n_estimators": 60, "max_depth": 5}})
    complete = check_stream(events, 60)
    assert events[0].data["device"] and "cpu" not in events[0].data["device"].lower()
    assert set(complete.data["metrics"]) == {"train_l2", "valid_l2"}
    forest = load_artifact(complete)
    assert isinstance(forest, Forest) and forest.n_trees == 60
    predictions = forest.predict(Xv)
    # The validation loss streamed from the GPU is the loss of the exported CPU forest.
    assert complete.data["metrics"]["valid_l2"] == pytest.approx(np.mean((predictions - yv) ** 2), rel=1e-4)
    assert 1 - np.mean((predictions - yv) ** 2) / np.var(yv) > 0.8
    assert complete.data["size_bytes"] < 2_000_000


@pytest.mark.parametrize("objective, classes", [("binary", 2), ("multiclass", 4)])
def test_classifiers_stop_early_and_predict_probabilities(server: Server, objective, classes):
    X, y = classification_data(classes)
    Xv, yv = classification_data(classes, rows=4000, seed=5)
    events = server.train({"model_type": "warpgbm", "objective": objective, "X": X.tolist(), "y": y.tolist(),
                           "X_valid": Xv.tolist(), "y_valid": yv.tolist(),
                           "params": {"n_estimators": 1000, "learning_rate": 0.5, "early_stopping_rounds": 5}})
    complete = check_stream(events, 1000)
    iterations, best = complete.data["iterations"], complete.data["best_iteration"]
    assert iterations < 1000 and best == iterations - 5
    metric = "binary_logloss" if objective == "binary" else "multi_logloss"
    assert set(complete.data["metrics"]) == {f"train_{metric}", f"valid_{metric}"}
    forest = load_artifact(complete)
    assert forest.n_trees == best * classes  # the model keeps the best round
    proba = forest.predict_proba(Xv)
    assert proba.shape == (len(Xv), classes)
    logloss = -np.mean(np.log(proba[np.arange(len(yv)), yv]))
    assert complete.data["metrics"][f"valid_{metric}"] == pytest.approx(logloss, rel=1e-3)
    assert np.mean(forest.predict(Xv) == yv) > 0.6


def test_era_ids_are_accepted(server: Server):
    X, y = regression_data(5000)
    era = (np.arange(5000) // 1000).tolist()
    events = server.train(
        {"model_type": "warpgbm", "X": X.tolist(), "y": y.tolist(), "era": era, "params": {"n_estimators": 20}}
    )
    check_stream(events, 20)


class Recorder:
    def __init__(self, cancel_at: int = 0) -> None:
        self.rounds: list[tuple[int, dict]] = []
        self.cancel_at = cancel_at

    @property
    def cancelled(self) -> bool:
        return bool(self.cancel_at) and len(self.rounds) >= self.cancel_at

    def report(self, iteration, metrics) -> None:
        self.rounds.append((iteration, metrics))


def fit(objective: str, X, y, reporter, **params):
    trainer = WarpGBMTrainer()
    data = TrainingData(X=X, y=y, feature_names=[f"f{i}" for i in range(X.shape[1])])
    if objective != "regression":
        data.classes = sorted(set(y.tolist()))
        data.y = y.astype(np.int32)
    full = {spec.name: spec.default for spec in trainer.params} | params
    return trainer.fit(data, objective, full, reporter)


def test_regression_forest_equals_warpgbm_own_gpu_predictions():
    import warpgbm.core

    X, y = regression_data()
    model = warpgbm.core.WarpGBM(n_estimators=100, max_depth=6, num_bins=63, learning_rate=0.1)
    model.fit(X.astype(np.float32), y)
    from boostream.trainers.warpgbm import _export

    data = TrainingData(X=X, y=y, feature_names=[f"f{i}" for i in range(X.shape[1])])
    forest = _export(model, 100, "regression", np.array([model.base_prediction]), data)
    np.testing.assert_allclose(forest.predict(X[:5000]), model.predict(X[:5000].astype(np.float32)), atol=1e-5)


def test_classifier_forest_equals_warpgbm_own_gpu_probabilities():
    import warpgbm.core

    from boostream.trainers.warpgbm import _export

    X, y = classification_data(3)
    model = warpgbm.core.WarpGBM(objective="multiclass", n_estimators=30, max_depth=5, num_bins=63)
    model.fit(X.astype(np.float32), y)
    data = TrainingData(X=X, y=y, feature_names=[f"f{i}" for i in range(X.shape[1])], classes=[0, 1, 2])
    # WarpGBM's own predict_proba starts from uniform priors; with a zero start the forests agree.
    forest = _export(model, 30, "multiclass", np.zeros(3), data)
    np.testing.assert_allclose(
        forest.predict_proba(X[:5000]), model.predict_proba(X[:5000].astype(np.float32)), atol=1e-5
    )


def test_cancellation_stops_after_the_current_round_and_frees_the_gpu():
    import torch

    X, y = regression_data()
    baseline = torch.cuda.memory_allocated()
    reporter = Recorder(cancel_at=5)
    result = fit("regression", X, y, reporter, n_estimators=500)
    assert result.cancelled and result.iterations == 5
    assert [i for i, _ in reporter.rounds] == [1, 2, 3, 4, 5]
    assert torch.cuda.memory_allocated() - baseline < 16 * 1024**2


def test_warpgbm_prints_nothing_to_the_server_output(capfd):
    X, y = regression_data(5000)
    fit("regression", X, y, Recorder(), n_estimators=10)
    assert capfd.readouterr().out == ""


def test_a_gpu_model_downloads_as_portable_json_and_predicts_through_the_api(server: Server):
    X, y = classification_data(3, rows=5000)
    events = server.train(
        {
            "model_type": "warpgbm",
            "objective": "multiclass",
            "X": X.tolist(),
            "y": [f"c{k}" for k in y],
            "artifact_format": "native",
            "params": {"n_estimators": 20},
        }
    )
    complete = events[-1].data
    assert complete["format"] == "native"
    with server.client() as client:
        portable = client.get(f"/artifacts/{complete['artifact_id']}", params={"format": "native"})
        assert portable.headers["content-type"].startswith("application/json")
        forest = Forest.from_json(portable.content)
        answer = client.post(
            "/predict", json={"artifact_id": complete["artifact_id"], "X": X[:100].tolist(), "output": "proba"}
        ).json()
    assert forest.classes == ["c0", "c1", "c2"] and answer["classes"] == ["c0", "c1", "c2"]
    np.testing.assert_allclose(answer["predictions"], forest.predict_proba(X[:100]), rtol=1e-12)


@pytest.mark.parametrize("format", ["artifact_id", "joblib", "native"])
def test_a_gpu_models_string_labels_survive_every_way_back(server: Server, format):
    from test_artifacts import handed_back, predict, with_native_artifact

    X, y = classification_data(2, rows=5000)
    labels = np.array(["no", "yes"])[y]
    complete = server.train({"model_type": "warpgbm", "objective": "binary", "X": X.tolist(), "y": labels.tolist(),
                             "params": {"n_estimators": 20}})[-1].data
    assert complete["classes"] == ["no", "yes"]
    if format == "native":
        complete = with_native_artifact(server, complete)
    answer = predict(server, **handed_back(complete, format), X=X[:200].tolist())
    assert answer["classes"] == ["no", "yes"]
    assert set(answer["predictions"]) == {"no", "yes"}
    assert np.mean(np.array(answer["predictions"]) == labels[:200]) > 0.6


def test_a_loss_that_overflows_on_the_gpu_is_streamed_as_null(server: Server):
    # WarpGBM computes its losses in float32: squares of targets near 1e20 overflow to infinity.
    X, y = regression_data(5000)
    events = server.train(
        {"model_type": "warpgbm", "X": X.tolist(), "y": (y * 1e20).tolist(), "params": {"n_estimators": 5}}
    )
    progress = [e for e in events if e.type == "progress"]
    assert progress and progress[0].data["metrics"]["train_l2"] is None  # parsed strictly: no NaN, no Infinity
    assert events[-1].type == "complete" and events[-1].data["curve"]["metrics"]["train_l2"][0] is None
