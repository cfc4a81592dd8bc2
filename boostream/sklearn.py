"""scikit-learn estimators that train on a boostream server and predict here: `BoostreamRegressor`
and `BoostreamClassifier`, for `Pipeline`, `GridSearchCV` and `cross_val_score`.

`fit` sends the rows as an Arrow table (through `boostream.client.Client`) and waits for the job;
the model comes back in its native form (no pickle), and `predict`/`predict_proba` run on it in
this process. The server is `server` (else $BOOSTREAM_SERVER, else the default), resolved at
`fit`, so estimators clone and pickle without a connection. Hyperparameters left at None are the
backend's defaults; `params` takes any other the backend lists in `GET /models`.

scikit-learn is not a dependency of the package: this module needs it installed, 1.6 or later
(`validate_data`, `__sklearn_tags__`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from boostream.client import Client, TrainedModel, api_key_from_environment, server_from_environment

# The constructor's hyperparameters, sent to the server where they are not None.
HYPERPARAMETERS = (
    "n_estimators",
    "learning_rate",
    "num_leaves",
    "max_depth",
    "min_data_in_leaf",
    "feature_fraction",
    "bagging_fraction",
    "bagging_freq",
    "lambda_l1",
    "lambda_l2",
    "early_stopping_rounds",
    "seed",
)


class _BoostreamModel(BaseEstimator):
    _objective = "regression"

    def __init__(
        self,
        server: str | None = None,
        api_key: str | None = None,
        model_type: str = "lightgbm",
        n_estimators: int | None = None,
        learning_rate: float | None = None,
        num_leaves: int | None = None,
        max_depth: int | None = None,
        min_data_in_leaf: int | None = None,
        feature_fraction: float | None = None,
        bagging_fraction: float | None = None,
        bagging_freq: int | None = None,
        lambda_l1: float | None = None,
        lambda_l2: float | None = None,
        early_stopping_rounds: int | None = None,
        seed: int | None = None,
        params: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> None:
        self.server = server
        self.api_key = api_key
        self.model_type = model_type
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.bagging_freq = bagging_freq
        self.lambda_l1 = lambda_l1
        self.lambda_l2 = lambda_l2
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed
        self.params = params
        self.progress = progress

    def _fit(
        self, X: np.ndarray, objective: str, eval_set: Any, labels: np.ndarray, sample_weight: Any
    ) -> None:
        params = {name: getattr(self, name) for name in HYPERPARAMETERS if getattr(self, name) is not None}
        params.update(self.params or {})
        table, weight = _table(X), None
        if sample_weight is not None:
            weight = WEIGHT_COLUMN
            table = table.append_column(weight, pa.array(_check_sample_weight(sample_weight, X)))
        valid = None
        if eval_set:
            X_valid, y_valid = eval_set[0]
            X_valid = validate_data(self, X_valid, ensure_all_finite="allow-nan", dtype=np.float64, reset=False)
            valid_table = _table(X_valid)
            if weight is not None:  # the validation rows count alike, as without weights
                valid_table = valid_table.append_column(weight, pa.array(np.ones(len(X_valid))))
            valid = (valid_table, np.asarray(y_valid))
        with Client(server_from_environment(self.server), api_key=api_key_from_environment(self.api_key)) as client:
            self.model_: TrainedModel = client.train(
                table, labels, model=self.model_type, objective=objective, params=params, valid=valid,
                weight=weight, progress=self.progress,
            )  # fmt: skip
        self.best_iteration_ = self.model_.best_iteration
        self.n_iter_ = self.model_.iterations

    def _rows(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        rows: np.ndarray = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64, reset=False)
        return rows

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # a missing value, as LightGBM takes it
        tags.non_deterministic = False
        return tags


class BoostreamRegressor(RegressorMixin, _BoostreamModel):
    """A regressor trained on a boostream server (objective `regression`)."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None, eval_set: Any = None) -> BoostreamRegressor:
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64, y_numeric=True)
        self._fit(X, "regression", eval_set, y, sample_weight)
        return self

    def predict(self, X: Any) -> np.ndarray:
        rows = self._rows(X)
        predicted: np.ndarray = self.model_.predict(rows)
        return predicted


class BoostreamClassifier(ClassifierMixin, _BoostreamModel):
    """A classifier trained on a boostream server (objective `binary` for two classes, else
    `multiclass`); `classes_` in sorted order, as scikit-learn has them."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None, eval_set: Any = None) -> BoostreamClassifier:
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"y has 1 class ({self.classes_[0]!r}); a classifier needs at least two")
        # The server numbers the classes in sorted order too: send each label's index.
        indices = np.searchsorted(self.classes_, y)
        if eval_set:
            X_valid, y_valid = eval_set[0]
            y_valid = np.asarray(y_valid)
            unseen = np.setdiff1d(y_valid, self.classes_)
            if len(unseen):
                raise ValueError(f"eval_set has a label that y has not: {unseen[0]!r}")
            eval_set = [(X_valid, np.searchsorted(self.classes_, y_valid))]
        self._fit(X, "binary" if len(self.classes_) == 2 else "multiclass", eval_set, indices, sample_weight)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        rows = self._rows(X)
        proba: np.ndarray = self.model_.predict_proba(rows)
        return proba

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        labels: np.ndarray = self.classes_[np.argmax(proba, axis=1)]
        return labels


WEIGHT_COLUMN = "weight"  # beside the features, which are f0, f1, ...


def _table(X: np.ndarray) -> pa.Table:
    return pa.table({f"f{i}": X[:, i] for i in range(X.shape[1])})
