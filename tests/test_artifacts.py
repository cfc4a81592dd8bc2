"""Artifacts out and back: downloads in both formats, signatures, and /predict, which never
unpickles a blob this server did not sign."""

from __future__ import annotations

import base64
import hashlib
import io
import pickle

import joblib
import lightgbm
import numpy as np
import pytest

from boostream.models.signing import SigningKeys, load_or_create_key, verify
from boostream.trainers.forest import Forest

from conftest import Server, running_server


@pytest.fixture(scope="module")
def trained(server: Server, diabetes, breast_cancer, iris) -> dict:
    """One finished model per objective: its `complete` event data."""
    bodies = {
        "regression": {"X": diabetes[0].tolist(), "y": diabetes[1].tolist(), "params": {"n_estimators": 30}},
        "binary": {
            "objective": "binary",
            "X": breast_cancer[0].tolist(),
            "y": breast_cancer[1].tolist(),
            "params": {"n_estimators": 20},
        },
        "multiclass": {
            "objective": "multiclass",
            "X": iris[0].tolist(),
            "y": iris[1].tolist(),
            "params": {"n_estimators": 20},
            "feature_names": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
        },
    }
    return {objective: server.train(body)[-1].data for objective, body in bodies.items()}


def predict(server: Server, **body) -> dict:
    with server.client() as client:
        response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def predict_error(server: Server, status: int, field: str, **body) -> dict:
    with server.client() as client:
        response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    return error


def booster_of(complete: dict) -> lightgbm.Booster:
    return joblib.load(io.BytesIO(base64.b64decode(complete["artifact"])))


def test_both_formats_download_signed_and_predict_alike(server: Server, trained, diabetes):
    complete = trained["regression"]
    key = SigningKeys.of(load_or_create_key(server.data_dir / "secret.key")).artifacts
    with server.client() as client:
        joblib_file = client.get(f"/artifacts/{complete['artifact_id']}")
        native_file = client.get(f"/artifacts/{complete['artifact_id']}", params={"format": "native"})
        assert client.get(f"/artifacts/{complete['artifact_id']}", params={"format": "pickle"}).status_code == 422
    assert joblib_file.content == base64.b64decode(complete["artifact"])
    assert joblib_file.headers["x-boostream-signature"] == complete["signature"]
    assert verify(key, joblib_file.content, complete["signature"])
    assert joblib_file.headers["etag"] == f'"{hashlib.sha256(joblib_file.content).hexdigest()}"'
    assert native_file.headers["content-type"].startswith("text/plain")
    assert verify(key, native_file.content, native_file.headers["x-boostream-signature"])
    assert f'{complete["artifact_id"]}.txt' in native_file.headers["content-disposition"]

    X = diabetes[0]
    from_text = lightgbm.Booster(model_str=native_file.text)
    np.testing.assert_array_equal(from_text.predict(X), booster_of(complete).predict(X))


def test_metadata_describes_the_artifact(server: Server, trained):
    complete = trained["multiclass"]
    with server.client() as client:
        meta = client.get(f"/artifacts/{complete['artifact_id']}/metadata").json()
        assert client.get("/artifacts/nope/metadata").status_code == 404
    assert (
        meta["job_id"] == complete["job_id"] and meta["model_type"] == "lightgbm" and meta["objective"] == "multiclass"
    )
    assert meta["feature_names"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert meta["classes"] == ["setosa", "versicolor", "virginica"]
    assert meta["metrics"] == complete["metrics"] and meta["iterations"] == 20
    assert meta["formats"]["joblib"]["sha256"] == complete["sha256"]
    assert meta["formats"]["native"]["media_type"] == "text/plain"


def test_a_request_may_ask_for_the_native_format_in_its_complete_event(server: Server, diabetes):
    X, y = diabetes
    complete = server.train(
        {"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 10}, "artifact_format": "native"}
    )[-1].data
    assert complete["format"] == "native"
    text = base64.b64decode(complete["artifact"])
    assert hashlib.sha256(text).hexdigest() == complete["sha256"]
    assert lightgbm.Booster(model_str=text.decode()).num_trees() == 10


def test_predict_by_artifact_id_equals_the_models_own_predictions(
    server: Server, trained, diabetes, breast_cancer, iris
):
    regression = predict(server, artifact_id=trained["regression"]["artifact_id"], X=diabetes[0].tolist())
    assert regression["shape"] == [len(diabetes[0])] and regression["classes"] is None
    np.testing.assert_allclose(
        regression["predictions"], booster_of(trained["regression"]).predict(diabetes[0]), rtol=1e-12
    )

    p = booster_of(trained["binary"]).predict(breast_cancer[0])
    proba = predict(server, artifact_id=trained["binary"]["artifact_id"], X=breast_cancer[0].tolist(), output="proba")
    np.testing.assert_allclose(proba["predictions"], np.column_stack([1 - p, p]), rtol=1e-12)
    labels = predict(server, artifact_id=trained["binary"]["artifact_id"], X=breast_cancer[0].tolist())
    assert labels["predictions"] == [int(v) for v in (p > 0.5)]

    probabilities = booster_of(trained["multiclass"]).predict(iris[0])
    answer = predict(server, artifact_id=trained["multiclass"]["artifact_id"], X=iris[0].tolist())
    assert answer["classes"] == ["setosa", "versicolor", "virginica"] and answer["shape"] == [150]
    assert answer["predictions"] == [answer["classes"][k] for k in probabilities.argmax(axis=1)]


def test_a_signed_joblib_artifact_handed_back_predicts(server: Server, trained, diabetes):
    complete = trained["regression"]
    answer = predict(
        server,
        artifact=complete["artifact"],
        artifact_format="joblib",
        signature=complete["signature"],
        X=diabetes[0][:5].tolist(),
    )
    np.testing.assert_allclose(answer["predictions"], booster_of(complete).predict(diabetes[0][:5]), rtol=1e-12)


def handed_back(complete: dict, format: str) -> dict:
    """The model as a client hands it back to /predict: `artifact_id`, or the file in one format."""
    if format == "artifact_id":
        return {"artifact_id": complete["artifact_id"]}
    fields = {"artifact": complete["artifact"], "artifact_format": format}
    return {**fields, "signature": complete["signature"]} if format == "joblib" else fields


def with_native_artifact(server: Server, complete: dict) -> dict:
    with server.client() as client:
        native = client.get(f"/artifacts/{complete['artifact_id']}", params={"format": "native"}).content
    return {**complete, "artifact": base64.b64encode(native).decode(), "format": "native"}


@pytest.mark.parametrize("format", ["artifact_id", "joblib", "native"])
@pytest.mark.parametrize(
    "objective, labels",
    [
        ("binary", ["no", "yes"]),
        ("multiclass", ["a=1", "b\nline", "c"]),
        ("binary", [-1.5, 3]),
        ("binary", [1e20, 2e20]),
    ],
)
def test_a_lightgbm_models_class_labels_survive_every_way_back(
    server: Server, breast_cancer, objective, labels, format
):
    X, y = breast_cancer
    y = np.array(labels, dtype=object)[(y + (X[:, 0] > 15)) % len(labels)]
    complete = server.train({"objective": objective, "X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 10}})[
        -1
    ].data
    assert complete["classes"] == sorted(labels)
    if format == "native":
        complete = with_native_artifact(server, complete)
    answer = predict(server, **handed_back(complete, format), X=X[:40].tolist())
    assert answer["classes"] == complete["classes"]
    assert set(answer["predictions"]) <= set(labels) and len(set(answer["predictions"])) > 1
    assert (
        answer["predictions"] == predict(server, artifact_id=complete["artifact_id"], X=X[:40].tolist())["predictions"]
    )


def test_a_joblib_lightgbm_model_knows_its_labels_and_its_text_model_loads_anywhere(server: Server, iris):
    complete = server.train(
        {"objective": "multiclass", "X": iris[0].tolist(), "y": iris[1].tolist(), "params": {"n_estimators": 5}}
    )[-1].data
    assert booster_of(complete).classes_ == ["setosa", "versicolor", "virginica"]
    text = base64.b64decode(with_native_artifact(server, complete)["artifact"]).decode()
    assert 'boostream_classes:["setosa","versicolor","virginica"]' in text
    plain = lightgbm.Booster(model_str=text)  # LightGBM itself reads the file as it is
    np.testing.assert_allclose(plain.predict(iris[0]), booster_of(complete).predict(iris[0]), rtol=1e-12)


def test_a_text_model_that_would_abort_lightgbm_is_refused_and_the_server_lives_on(server: Server, diabetes):
    X, y = diabetes
    booster = lightgbm.train({"objective": "regression", "verbose": -1, "num_threads": 1}, lightgbm.Dataset(X, y), 3)
    broken = booster.model_to_string().replace(
        "split_feature=", "split_feature=zz\x1b[31m ", 1
    )  # LightGBM's parser aborts on it
    error = predict_error(
        server,
        400,
        "artifact",
        artifact=base64.b64encode(broken.encode()).decode(),
        artifact_format="native",
        X=X[:2].tolist(),
    )
    assert "Model format error" in error["message"] and "\x1b" not in error["message"], error
    with server.client() as client:
        assert client.get("/health").status_code == 200


def test_a_native_lightgbm_model_with_bad_labels_is_refused(server: Server, iris):
    complete = server.train(
        {"objective": "multiclass", "X": iris[0].tolist(), "y": iris[1].tolist(), "params": {"n_estimators": 3}}
    )[-1].data
    text = base64.b64decode(with_native_artifact(server, complete)["artifact"]).decode()
    for bad in ('["a","b"]', '["a","a","b"]', '[["a"],"b","c"]', "not json"):
        changed = text.replace('["setosa","versicolor","virginica"]', bad)
        error = predict_error(
            server,
            400,
            "artifact",
            artifact=base64.b64encode(changed.encode()).decode(),
            artifact_format="native",
            X=[[1.0] * 4],
        )
        assert "boostream_classes" in error["message"]


def test_a_tampered_or_unsigned_joblib_artifact_is_refused(server: Server, trained, diabetes):
    complete = trained["regression"]
    blob = bytearray(base64.b64decode(complete["artifact"]))
    blob[len(blob) // 2] ^= 0xFF
    tampered = base64.b64encode(bytes(blob)).decode()
    rows = diabetes[0][:2].tolist()
    error = predict_error(
        server, 403, "signature", artifact=tampered, artifact_format="joblib", signature=complete["signature"], X=rows
    )
    assert error["code"] == "untrusted_artifact"
    predict_error(server, 403, "signature", artifact=complete["artifact"], artifact_format="joblib", X=rows)


class CreatesAFile:
    """A pickle that, when loaded, creates a file: what an attacker would send."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_pickle_is_never_loaded(server: Server, tmp_path):
    target = tmp_path / "pwned"
    buffer = io.BytesIO()
    joblib.dump(CreatesAFile(str(target)), buffer)
    evil = base64.b64encode(buffer.getvalue()).decode()
    raw = base64.b64encode(pickle.dumps(CreatesAFile(str(target)))).decode()
    for blob in (evil, raw):
        predict_error(server, 403, "signature", artifact=blob, artifact_format="joblib", X=[[1.0]])
        predict_error(
            server, 403, "signature", artifact=blob, artifact_format="joblib", signature="sha256=" + "0" * 64, X=[[1.0]]
        )
        predict_error(server, 400, "artifact", artifact=blob, artifact_format="native", X=[[1.0]])
    assert not target.exists()


def test_a_native_lightgbm_model_from_anywhere_is_read_as_data(server: Server, diabetes):
    X, y = diabetes
    booster = lightgbm.train({"objective": "regression", "verbose": -1, "num_threads": 1}, lightgbm.Dataset(X, y), 15)
    text = base64.b64encode(booster.model_to_string().encode()).decode()
    answer = predict(server, artifact=text, artifact_format="native", X=X[:20].tolist())
    assert answer["artifact_id"] is None and answer["model_type"] == "lightgbm"
    np.testing.assert_allclose(answer["predictions"], booster.predict(X[:20]), rtol=1e-12)
    error = predict_error(
        server,
        400,
        "artifact",
        artifact=base64.b64encode(b"tree\nnonsense").decode(),
        artifact_format="native",
        X=[[1.0]],
    )
    assert "not a valid lightgbm model" in error["message"]


def test_a_portable_warpgbm_forest_predicts_on_the_cpu(server: Server):
    rng = np.random.default_rng(3)
    edges = np.sort(rng.normal(size=(3, 7)), axis=1).astype(np.float32)

    def tree(depth: int) -> dict:
        if depth == 0:
            return {"leaf_value": float(rng.normal())}
        return {
            "feature": int(rng.integers(3)),
            "bin": int(rng.integers(7)),
            "left": tree(depth - 1),
            "right": tree(depth - 1),
        }

    forest = Forest.from_trees(
        [(k, tree(3)) for _ in range(10) for k in range(3)], objective="multiclass", learning_rate=0.3, bin_edges=edges,
        init_score=np.log([0.5, 0.3, 0.2]), feature_names=["a", "b", "c"], classes=["x", "y", "z"],
    )
    X = rng.normal(size=(50, 3))
    document = base64.b64encode(forest.to_json()).decode()
    proba = predict(server, artifact=document, artifact_format="native", X=X.tolist(), output="proba")
    assert proba["model_type"] == "warpgbm" and proba["classes"] == ["x", "y", "z"]
    np.testing.assert_allclose(proba["predictions"], forest.predict_proba(X), rtol=1e-12)
    labels = predict(server, artifact=document, artifact_format="native", X=X.tolist())
    assert labels["predictions"] == forest.predict(X).tolist()


def test_bad_prediction_requests_name_the_field(server: Server, trained):
    artifact_id = trained["regression"]["artifact_id"]
    predict_error(server, 400, "X", artifact_id=artifact_id, X=[[1.0, 2.0]])
    predict_error(server, 422, "output", artifact_id=artifact_id, X=[[0.0] * 10], output="proba")
    predict_error(server, 422, "output", artifact_id=artifact_id, X=[[0.0] * 10], output="labels")
    predict_error(server, 404, "artifact_id", artifact_id="nope", X=[[0.0] * 10])
    predict_error(server, 422, "artifact_id", X=[[0.0] * 10])
    predict_error(server, 422, "artifact_id", artifact_id=artifact_id, artifact="eA==", X=[[0.0] * 10])
    predict_error(server, 400, "artifact", artifact="not base64!", artifact_format="native", X=[[0.0]])
    predict_error(server, 400, "X", artifact_id=artifact_id, X=[[0.0] * 9 + ["a"]])


def test_an_artifact_whose_files_were_removed_by_hand_is_gone(server: Server, diabetes):
    complete = server.train({"X": diabetes[0].tolist(), "y": diabetes[1].tolist(), "params": {"n_estimators": 5}})[
        -1
    ].data
    for path in server.data_dir.glob(f"artifacts/{complete['artifact_id']}.*"):
        path.unlink()
    error = predict_error(server, 410, "artifact_id", artifact_id=complete["artifact_id"], X=diabetes[0][:2].tolist())
    assert error["code"] == "gone"
    with server.client() as client:
        assert client.get(f"/artifacts/{complete['artifact_id']}").status_code == 410


def test_predicting_by_artifact_id_never_unpickles_the_servers_own_file(server: Server, diabetes, tmp_path):
    complete = server.train({"X": diabetes[0].tolist(), "y": diabetes[1].tolist(), "params": {"n_estimators": 5}})[
        -1
    ].data
    target = tmp_path / "pwned"
    joblib.dump(CreatesAFile(str(target)), server.data_dir / "artifacts" / f"{complete['artifact_id']}.joblib")
    answer = predict(server, artifact_id=complete["artifact_id"], X=diabetes[0][:5].tolist())
    np.testing.assert_allclose(answer["predictions"], booster_of(complete).predict(diabetes[0][:5]), rtol=1e-12)
    assert not target.exists(), "the joblib file on disk was unpickled"


def test_models_stay_loaded_within_model_cache_bytes(tmp_path, diabetes):
    """A loaded model keeps predicting after its file is gone; one pushed out of the cache does not."""
    body = {"X": diabetes[0].tolist(), "y": diabetes[1].tolist(), "params": {"n_estimators": 20}}
    rows = diabetes[0][:3].tolist()
    for cache_bytes, kept in ((1, False), (64 * 1024**2, True)):  # room for one model (at least one stays), or for all
        folder = tmp_path / str(cache_bytes)
        folder.mkdir()
        with running_server(folder, model_cache_bytes=cache_bytes) as server:
            first, second = (server.train(body)[-1].data["artifact_id"] for _ in range(2))
            predict(server, artifact_id=first, X=rows)
            predict(server, artifact_id=second, X=rows)
            (server.data_dir / "artifacts" / f"{first}.native").unlink()
            with server.client() as client:
                status = client.post("/predict", json={"artifact_id": first, "X": rows}).status_code
            assert status == (200 if kept else 410), (cache_bytes, status)


def test_deleting_a_job_deletes_its_artifact(server: Server, diabetes):
    complete = server.train({"X": diabetes[0].tolist(), "y": diabetes[1].tolist(), "params": {"n_estimators": 5}})[
        -1
    ].data
    with server.client() as client:
        assert client.delete(f"/jobs/{complete['job_id']}").status_code == 204
        assert client.get(f"/artifacts/{complete['artifact_id']}").status_code == 404
    assert not list(server.data_dir.glob(f"artifacts/{complete['artifact_id']}.*"))
