"""Trained models as artifacts, kept on disk under the data directory in two formats:

- `joblib`: the fitted model object (a `lightgbm.Booster`, or a numpy `Forest` for WarpGBM), for
  Python clients; loading it runs pickle, so it is only ever loaded when this server signed it;
- `native`: the backend's own format, which is data: LightGBM's text model, or the portable JSON
  of a `Forest` (docs/formats.md).

Each blob carries an HMAC-SHA256 signature made with the server's key, so a client can hand an
artifact back (to `/predict`) and the server can tell that it made it. Nothing here loads a blob
that a client sent.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import joblib
import orjson

from boostream.models.signing import sign
from boostream.trainers.base import Predictor

log = logging.getLogger("boostream.artifacts")

FORMATS = ("joblib", "native")
JOBLIB_MEDIA_TYPE = "application/octet-stream"
# zlib level: for a 200-tree LightGBM model (0.60 MB as text), level 3 took 15 ms for 0.23 MB,
# level 1 9 ms for 0.25 MB; this is on the path to every job's `complete` event.
JOBLIB_COMPRESS = 1


@dataclasses.dataclass(frozen=True)
class StoredBlob:
    media_type: str
    extension: str  # for the file name a download suggests
    size_bytes: int
    sha256: str
    signature: str

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ArtifactRecord:
    """What is known of a stored artifact besides its files: `GET /artifacts/{id}/metadata`."""

    id: str
    job_id: str
    model_type: str
    objective: str
    feature_names: list[str]
    classes: list[Any] | None
    metrics: dict[str, float | None]
    iterations: int
    best_iteration: int
    created_at: float
    blobs: dict[str, StoredBlob]  # by format


@dataclasses.dataclass(frozen=True)
class Artifact:
    artifact_id: str
    blobs: dict[str, StoredBlob]

    def event_fields(self, format: str) -> dict[str, Any]:
        """What the `complete` event says of the artifact, but the base64 blob: that comes last,
        where a stored event gets it back (`ArtifactStore.attach`)."""
        blob = self.blobs[format]
        return {
            "artifact_id": self.artifact_id,
            "format": format,
            "sha256": blob.sha256,
            "size_bytes": blob.size_bytes,
            "signature": blob.signature,
        }


class ArtifactStore:
    def __init__(self, directory: Path, key: bytes) -> None:
        self.directory = directory
        self.key = key
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, model: Any, predictor: Predictor) -> Artifact:
        """Write both formats (in the worker that trained the model)."""
        buffer = io.BytesIO()
        joblib.dump(model, buffer, compress=JOBLIB_COMPRESS)
        contents = {"joblib": buffer.getvalue(), "native": predictor.to_native(model)}
        kinds = {
            "joblib": (JOBLIB_MEDIA_TYPE, "joblib"),
            "native": (predictor.native_media_type, predictor.native_extension),
        }
        artifact_id = uuid.uuid4().hex
        blobs = {}
        for format, content in contents.items():
            try:
                self._write(self.path(artifact_id, format), content)
            except OSError:  # a full disk, say: nothing of it is left behind to fill it more
                self.delete(artifact_id)
                raise
            media_type, extension = kinds[format]
            blobs[format] = StoredBlob(
                media_type, extension, len(content), hashlib.sha256(content).hexdigest(), sign(self.key, content)
            )
        return Artifact(artifact_id, blobs)

    def path(self, artifact_id: str, format: str) -> Path:
        return self.directory / f"{artifact_id}.{format}"

    def read(self, artifact_id: str, format: str) -> bytes:
        return self.path(artifact_id, format).read_bytes()

    def encoded(self, artifact_id: str, format: str) -> str:
        """The file in base64, as events carry it."""
        return base64.b64encode(self.read(artifact_id, format)).decode("ascii")

    def attach(self, complete_json: str) -> str:
        """A stored `complete` event (kept without its artifact) with the artifact put back."""
        complete = orjson.loads(complete_json)
        try:
            complete["artifact"] = self.encoded(complete["artifact_id"], complete["format"])
        except FileNotFoundError:
            log.warning("artifact %s is missing from %s", complete["artifact_id"], self.directory)
            complete["artifact"] = None
        return orjson.dumps(complete).decode()

    def remove_unknown(self, known: set[str]) -> list[str]:
        """Remove files of artifacts no job has (a worker that outlived its server, a write
        cut short): each is a file `<id>.<format>` or `<id>.partial`. The ids removed."""
        removed = set()
        for path in self.directory.iterdir():
            artifact_id = path.name.split(".", 1)[0]
            if artifact_id not in known:
                path.unlink(missing_ok=True)
                removed.add(artifact_id)
        if removed:
            log.info("removed the files of %d artifacts that no job has", len(removed))
        return sorted(removed)

    def delete(self, artifact_id: str) -> None:
        for format in FORMATS:
            self.path(artifact_id, format).unlink(missing_ok=True)

    @staticmethod
    def _write(path: Path, content: bytes) -> None:
        partial = path.with_suffix(".partial")
        try:
            with open(partial, "wb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)  # a reader never sees half an artifact
        except OSError:
            partial.unlink(missing_ok=True)
            raise
