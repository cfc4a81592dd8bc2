"""The Python client as a notebook uses it (README, "From Python"): `Client.train` takes a pandas
or polars DataFrame, an Arrow table, numpy arrays or a file, shows a progress bar while the job
trains, and returns the model, which predicts as the server's /predict does."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn import datasets

from boostream.client import ApiError, AsyncClient, Client, TrainedModel, TrainingFailed

from conftest import Server, running_server

PARAMS = {"n_estimators": 30, "num_leaves": 7, "min_data_in_leaf": 5}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    data = datasets.load_diabetes(as_frame=True)
    return data.frame  # ten features and `target`


def served_predictions(server: Server, trained: TrainedModel, X: np.ndarray) -> list:
    with server.client() as client:
        answer = client.post("/predict", json={"artifact_id": trained.artifact_id, "X": X.tolist()})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def test_a_pandas_frame_trains_with_a_progress_bar_and_the_model_predicts_as_the_server_does(
    server: Server, frame, capsys
):
    with Client(server.url) as client:
        trained = client.train(frame, target="target", params=PARAMS, valid=0.2)
    bar = capsys.readouterr().err
    assert "30/30" in bar and "round" in bar and "valid_l2" in bar, bar
    assert trained.model_type == "lightgbm" and trained.iterations == 30
    assert trained.feature_names == [name for name in frame.columns if name != "target"]
    assert len(trained.curve["valid_l2"]) == 30 and trained.metrics["valid_l2"] == trained.curve["valid_l2"][-1]
    X = frame.drop(columns="target").to_numpy()
    np.testing.assert_allclose(trained.predict(frame), served_predictions(server, trained, X))
    np.testing.assert_allclose(trained.predict(X), trained.model.predict(X))


def test_polars_arrow_numpy_and_a_file_train_the_same_model_as_pandas(server: Server, frame, tmp_path):
    X, y = frame.drop(columns="target"), frame["target"]
    path = tmp_path / "diabetes.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    with Client(server.url) as client:
        reference = client.train(frame, target="target", params=PARAMS, progress=False)
        others = [
            client.train(pl.from_pandas(frame), target="target", params=PARAMS, progress=False),
            client.train(pa.Table.from_pandas(frame), target="target", params=PARAMS, progress=False),
            client.train(X, y, params=PARAMS, progress=False),  # the labels beside the features
            client.train(X.to_numpy(), y.to_numpy(), params=PARAMS, progress=False),  # columns f0..f9
            client.train(path, target="target", params=PARAMS, progress=False),
        ]
    expected = reference.predict(X.to_numpy())
    for trained in others:
        np.testing.assert_array_equal(trained.predict(X.to_numpy()), expected)
    assert others[3].feature_names == [f"f{i}" for i in range(10)]


def test_a_validation_frame_is_sent_with_the_training_rows_and_scored_apart(server: Server, frame):
    train, valid = frame.iloc[:350], frame.iloc[350:]
    params = {**PARAMS, "n_estimators": 200, "early_stopping_rounds": 5, "learning_rate": 0.3}
    with Client(server.url) as client:
        trained = client.train(train, target="target", params=params, valid=valid, progress=False)
        started = next(event for event in client.events(trained.job_id) if event.type == "started")
    assert started.data["n_rows"] == 350 and started.data["n_valid_rows"] == len(valid)
    assert trained.best_iteration < trained.iterations <= 200  # early stopping watched the validation rows
    predicted = trained.predict(valid.drop(columns="target"))
    l2 = float(np.mean((predicted - valid["target"].to_numpy()) ** 2))
    assert l2 == pytest.approx(trained.metrics["valid_l2"], rel=1e-6)


def test_a_classifier_predicts_its_labels_and_probabilities(server: Server):
    data = datasets.load_iris(as_frame=True)
    frame = data.frame.assign(species=[data.target_names[i] for i in data.target])
    frame = frame.drop(columns="target")
    with Client(server.url) as client:
        trained = client.train(frame, target="species", objective="multiclass", params=PARAMS, progress=False)
    assert trained.classes == ["setosa", "versicolor", "virginica"]
    proba = trained.predict_proba(frame)
    assert proba.shape == (150, 3) and np.allclose(proba.sum(axis=1), 1)
    labels = trained.predict(frame)
    assert list(labels[:3]) == ["setosa"] * 3 and (labels == frame["species"].to_numpy()).mean() > 0.9


def test_errors_carry_the_servers_code_message_and_field(server: Server, frame):
    with Client(server.url) as client:
        with pytest.raises(ApiError) as refused:
            client.train(frame, target="target", params={"num_leaves": 1}, progress=False)
        assert refused.value.status == 422 and refused.value.field == "params.num_leaves"
        with pytest.raises(ApiError) as no_column:
            client.train(frame, target="target", features=["bmi", "height"], progress=False)
        assert no_column.value.code == "invalid_data" and no_column.value.field == "features"
        with pytest.raises(ValueError, match="no column 'label'"):
            client.train(frame, target="label", progress=False)
        job_id = client.start(frame, target="target", params={"n_estimators": 100_000, "learning_rate": 0.001})
        client.cancel(job_id)
        with pytest.raises(TrainingFailed) as cancelled:
            client.watch(job_id, progress=False)
        assert cancelled.value.code == "cancelled" and cancelled.value.job_id == job_id


def test_the_async_client_trains_too(server: Server, frame):
    async def train() -> TrainedModel:
        async with AsyncClient(server.url) as client:
            return await client.train(frame, target="target", params=PARAMS, progress=False)

    trained = asyncio.run(train())
    assert trained.iterations == 30 and "train_l2" in trained.metrics


def test_weights_go_as_an_array_or_as_a_column(server: Server, frame):
    weight = np.where(frame["target"] > frame["target"].median(), 4.0, 1.0)
    with Client(server.url) as client:
        plain = client.train(frame, target="target", params=PARAMS, progress=False)
        by_array = client.train(frame, target="target", params=PARAMS, weight=weight, progress=False)
        by_column = client.train(frame.assign(w=weight), target="target", params=PARAMS, weight="w", progress=False)
    X = frame.drop(columns="target").to_numpy()
    np.testing.assert_array_equal(by_array.predict(X), by_column.predict(X))
    assert by_column.feature_names == by_array.feature_names == plain.feature_names
    assert not np.allclose(by_array.predict(X), plain.predict(X))


def test_the_model_comes_once_in_the_complete_event_and_columns_of_any_name_are_kept(server: Server, frame):
    # A feature named `weight`, weights given apart, and a validation table whose integer column
    # holds fractions where the training table's holds whole numbers.
    train = frame.iloc[:300].assign(weight=np.arange(300) % 3, age=lambda f: (f["age"] * 100).round().astype("int64"))
    valid = frame.iloc[300:].assign(weight=np.arange(142) % 3, age=lambda f: f["age"] * 100.5)
    before = server.log().count('"path":"/artifacts/')
    with Client(server.url) as client:
        trained = client.train(
            train, target="target", params=PARAMS, weight=np.linspace(0.5, 2, 300), valid=0.2, progress=False
        )
        validated = client.train(train, target="target", params=PARAMS, valid=valid, progress=False)
    assert "weight" in trained.feature_names and "age" in validated.feature_names
    assert validated.metrics["valid_l2"] is not None
    assert server.log().count('"path":"/artifacts/') == before, "train loads the model from its complete event"


def test_a_server_that_says_come_back_is_asked_again_when_it_says(tmp_path, frame):
    from test_server_options import trickling_upload

    with running_server(tmp_path, max_body_bytes=100_000) as server:
        # Two bodies that come a byte at a time hold all the room for bodies (2 x 100 kB).
        held = [trickling_upload(server.url, 99_000) for _ in range(2)]
        time.sleep(0.5)
        with Client(server.url, reconnects=0) as impatient, pytest.raises(ApiError) as busy:
            impatient.start(frame, target="target", params=PARAMS)
        assert busy.value.status == 503 and busy.value.code == "busy" and busy.value.retry_after_s == 1
        threading.Timer(1.5, lambda: [connection.close() for connection in held]).start()
        with Client(server.url) as client:
            started = time.monotonic()
            trained = client.train(frame, target="target", params=PARAMS, progress=False)
        assert trained.iterations == 30 and 1.0 < time.monotonic() - started < 10
        assert server.log().count('"status":503') >= 2, "refused, then asked again"


SEARCH = {"num_leaves": {"low": 4, "high": 32, "log": True}, "learning_rate": [0.05, 0.1, 0.2]}


def test_a_search_from_a_frame_returns_the_best_model_with_its_leaderboard(server: Server, frame, capsys):
    with Client(server.url) as client:
        before = {dataset.dataset_id for dataset in client.datasets()}
        found = client.tune(
            frame, "target", search=SEARCH, trials=6, parallel=2, params={"n_estimators": 30}, seed=1
        )
        after = {dataset.dataset_id for dataset in client.datasets()}
        status = client.tune_status(found.tune_id)
    bar = capsys.readouterr().err
    assert "6/6" in bar and "trial" in bar and "best" in bar, bar
    assert after == before, "the table went up once as a dataset, removed once the search had its copy"
    assert status["status"] == "succeeded" and status["best"]["artifact_id"] == found.model.artifact_id
    assert len(found.leaderboard) == 6 and found.metric == "valid_l2"
    complete = [row["value"] for row in found.leaderboard if row["state"] == "complete"]
    assert found.best_value == min(complete) == status["best"]["value"]
    assert {"num_leaves", "learning_rate", "n_estimators"} <= set(found.best_params)
    assert set(found.importances or {}) == {"num_leaves", "learning_rate"}
    # The model the search trained, loaded here: it predicts as the server does.
    assert found.model.feature_names == [name for name in frame.columns if name != "target"]
    X = frame.drop(columns="target").to_numpy()
    np.testing.assert_allclose(found.model.predict(frame), served_predictions(server, found.model, X))


def test_a_search_the_server_refuses_leaves_no_dataset_behind(server: Server, frame):
    with Client(server.url) as client:
        before = {dataset.dataset_id for dataset in client.datasets()}
        with pytest.raises(ApiError) as refused:
            client.tune(frame, "target", search={"leaves": [4, 8]}, progress=False)
        after = {dataset.dataset_id for dataset in client.datasets()}
    assert refused.value.status == 422 and refused.value.field == "search.leaves"
    assert after == before
