"""The scikit-learn estimators (README, "scikit-learn"): they pass scikit-learn's own estimator
checks, each fit a job on a real server, and work in Pipeline, GridSearchCV and cross_val_score."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from boostream.sklearn import BoostreamClassifier, BoostreamRegressor

from conftest import Server, running_server

SMALL = {"n_estimators": 10, "min_data_in_leaf": 1}
# LightGBM's bins and its `min_data_in_leaf` count rows, not their weights: a row of weight 2 is
# not the row twice (LightGBM's own estimators are no different).
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": "a weight is not a repetition to LightGBM's binning",
}


@pytest.fixture
def on_server(server: Server, monkeypatch) -> Server:
    """Estimators made without `server` find it in BOOSTREAM_SERVER, as scikit-learn's checks make them."""
    monkeypatch.setenv("BOOSTREAM_SERVER", server.url)
    return server


@pytest.mark.parametrize(
    "estimator", [BoostreamRegressor(**SMALL), BoostreamClassifier(**SMALL)], ids=lambda e: type(e).__name__
)
def test_scikit_learns_own_checks_pass(tmp_path, monkeypatch, estimator):
    with running_server(tmp_path) as server:
        monkeypatch.setenv("BOOSTREAM_SERVER", server.url)
        results = check_estimator(estimator, expected_failed_checks=EXPECTED_FAILURES, on_fail=None, on_skip=None)
        with server.client() as client:
            trained = client.get("/jobs", params={"status": "succeeded", "limit": 500}).json()["jobs"]
    failed = {r["check_name"]: str(r["exception"])[:300] for r in results if r["status"] == "failed"}
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert not failed, failed
    # The one skipped: array API inputs (CuPy, torch tensors) need SCIPY_ARRAY_API; the estimators
    # send tables as Arrow, which takes numpy.
    assert skipped <= {"check_array_api_input"}, skipped
    assert {r["check_name"] for r in results if r["status"] == "xfail"} == set(EXPECTED_FAILURES)
    assert len(results) > 45
    assert len(trained) >= 40, "each fit of the checks trains a job on the server"


def test_a_regressor_in_a_pipeline_scores_in_cross_val_score(on_server: Server):
    X, y = datasets.load_diabetes(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), BoostreamRegressor(n_estimators=50, num_leaves=7))
    scores = cross_val_score(pipeline, X, y, cv=3, scoring="r2")
    assert scores.shape == (3,) and scores.mean() > 0.2, scores


def test_grid_search_clones_and_sets_the_hyperparameters(on_server: Server):
    X, y = datasets.load_breast_cancer(return_X_y=True)
    search = GridSearchCV(BoostreamClassifier(n_estimators=20), {"num_leaves": [3, 15]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["num_leaves"] in (3, 15) and search.best_score_ > 0.9
    assert search.best_estimator_.model_.model.params["num_leaves"] == search.best_params_["num_leaves"]
    copy = clone(BoostreamClassifier(num_leaves=5, params={"max_bin": 63}))
    assert copy.get_params()["num_leaves"] == 5 and copy.get_params()["params"] == {"max_bin": 63}


def test_a_classifier_keeps_its_labels_features_and_best_iteration(on_server: Server):
    frame = datasets.load_iris(as_frame=True).frame
    X = frame.drop(columns="target")
    y = np.array(["setosa", "versicolor", "virginica"])[frame["target"]]
    train, valid = np.arange(0, 150, 2), np.arange(1, 150, 2)
    model = BoostreamClassifier(n_estimators=300, learning_rate=0.3, early_stopping_rounds=5)
    model.fit(X.iloc[train], y[train], eval_set=[(X.iloc[valid], y[valid])])
    assert list(model.classes_) == ["setosa", "versicolor", "virginica"]
    assert list(model.feature_names_in_) == list(X.columns) and model.n_features_in_ == 4
    assert 1 <= model.best_iteration_ < model.n_iter_ < 300  # early stopping watched eval_set
    assert (model.predict(X.iloc[valid]) == y[valid]).mean() > 0.9
    proba = model.predict_proba(X.iloc[valid])
    assert proba.shape == (75, 3) and np.allclose(proba.sum(axis=1), 1)
    with pytest.raises(ValueError, match="feature names"):
        model.predict(X.rename(columns={"sepal length (cm)": "sepal"}))
