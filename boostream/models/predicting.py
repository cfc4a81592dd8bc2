"""Predictions on the CPU from a stored artifact, or from an artifact a client hands back.

A stored artifact is loaded from its native format (data, not code). A client's blob is loaded
only as data (a LightGBM text model or a Forest's portable JSON), or, for a joblib blob, only when
its signature proves that this server made it: unpickling anything else would let a client run
code here. Loaded models are kept in a cache bounded by the size of their native form.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hashlib
import io
import threading
from collections.abc import Mapping
from typing import Any

import joblib
import numpy as np

from boostream import categories
from boostream.errors import InvalidData, InvalidParameter, Untrusted, quotable
from boostream.models.artifacts import ArtifactRecord
from boostream.models.signing import verify
from boostream.trainers.base import ModelShape, Predictor

OUTPUTS = ("value", "proba")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: Any
    predictor: Predictor
    shape: ModelShape
    classes: list[Any] | None  # labels for classifiers; class indices when unknown
    artifact_id: str | None
    size_bytes: int  # what it counts for against the cache's bound
    # Each categorical feature's code by category, made at its first use and kept with the model.
    _lookups: dict[int, categories.Lookup] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def predict(self, X: np.ndarray, output: str) -> np.ndarray:
        if X.shape[1] != self.shape.n_features:
            raise InvalidData(
                "X", f"rows have {X.shape[1]} values, but the model takes {self.shape.n_features} features"
            )
        if output == "proba" and self.shape.objective == "regression":
            raise InvalidParameter("output", "output 'proba' needs a classifier; this model is a regression")
        scores = self.predictor.scores(self.model, self.rows(X))
        if output == "proba" or self.shape.objective == "regression":
            return scores
        labels: np.ndarray = np.asarray(self.classes, dtype=object)[np.argmax(scores, axis=1)]
        return labels


    def rows(self, X: np.ndarray) -> np.ndarray:
        """X as the model takes it, float64: each categorical feature's values (strings or numbers)
        as their codes among its categories, NaN for one it never saw; any other feature numbers."""
        found = self.shape.categories or {}
        if X.dtype != object and not found:
            return X
        rows = np.empty(X.shape, np.float64)
        for at in range(X.shape[1]):
            if at in found:
                if at not in self._lookups:
                    self._lookups[at] = categories.lookup(found[at])
                rows[:, at] = categories.codes(X[:, at], self._lookups[at], at)
            elif X.dtype == object:
                rows[:, at] = categories.numbers(X[:, at], "X", at, ": the model's feature there is no categorical one")
            else:
                rows[:, at] = X[:, at]
        return rows


class ModelCache:
    """Least recently used models, up to `max_bytes` of their native size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._models: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._lock = threading.Lock()  # used from worker threads

    def get(self, key: str) -> LoadedModel | None:
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def put(self, key: str, model: LoadedModel) -> None:
        with self._lock:
            self._models[key] = model
            self._models.move_to_end(key)
            while len(self._models) > 1 and sum(m.size_bytes for m in self._models.values()) > self.max_bytes:
                self._models.popitem(last=False)

    def __len__(self) -> int:
        return len(self._models)


class ModelLoader:
    def __init__(self, key: bytes, predictors: Mapping[str, Predictor], cache: ModelCache) -> None:
        self.key = key  # what this service signs its artifacts with
        self.predictors = predictors
        self.cache = cache

    def cached(self, artifact_id: str) -> LoadedModel | None:
        return self.cache.get(artifact_id)

    def stored(self, record: ArtifactRecord, blob: bytes) -> LoadedModel:
        """A model this service trained, from its native file `blob` (runs in a worker thread)."""
        artifact_id = record.id
        predictor = self.predictors[record.model_type]
        model = predictor.from_native(blob, trusted=True)  # this service wrote it
        shape = predictor.describe(model)
        loaded = LoadedModel(model, predictor, shape, model_classes(record.classes, shape), artifact_id, len(blob))
        self.cache.put(artifact_id, loaded)
        return loaded

    def uploaded(self, encoded: str, format: str, signature: str | None) -> LoadedModel:
        """A model a client sent back (runs in a worker thread)."""
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidData("artifact", "artifact is not valid base64") from None
        if format == "joblib":
            self._check_signature(blob, signature)  # before the cache too: a hit proves nothing
        key = f"{format}:{hashlib.sha256(blob).hexdigest()}"
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        model, predictor = self._signed_joblib(blob) if format == "joblib" else self._native(blob)
        shape = predictor.describe(model)
        loaded = LoadedModel(model, predictor, shape, model_classes(shape.classes, shape), None, len(blob))
        self.cache.put(key, loaded)
        return loaded

    def _check_signature(self, blob: bytes, signature: str | None) -> None:
        if not signature:
            raise Untrusted(
                "a joblib artifact is loaded only with the signature "
                "this server gave it; send its native format instead",
                field="signature",
            )
        if not verify(self.key, blob, signature):
            raise Untrusted(
                "the signature does not match this artifact: it was changed, or another server made it",
                field="signature",
            )

    def _signed_joblib(self, blob: bytes) -> tuple[Any, Predictor]:
        model = joblib.load(io.BytesIO(blob))  # safe: this server wrote these very bytes
        for predictor in self.predictors.values():
            if predictor.owns(model):
                return model, predictor
        raise InvalidData(
            "artifact", f"the artifact holds a {type(model).__name__}, which no backend here predicts with"
        )

    def _native(self, blob: bytes) -> tuple[Any, Predictor]:
        predictor = next((predictor for predictor in self.predictors.values() if predictor.recognizes(blob)), None)
        if predictor is None:
            raise InvalidData("artifact", "artifact is in no native format a backend here reads")
        try:
            return predictor.from_native(blob), predictor
        except ValueError as error:
            raise InvalidData(
                "artifact", f"artifact is not a valid {predictor.name} model: {quotable(str(error))}"
            ) from None


def model_classes(known: list[Any] | None, shape: ModelShape) -> list[Any] | None:
    """The labels a model predicts: None for a regression, else those known or the class indices."""
    if shape.objective == "regression":
        return None
    return list(known) if known is not None else list(range(shape.n_classes))
