"""Trained models as artifacts: a joblib blob, its sha256, kept on disk under the data directory.

Artifacts are written by this server from models it trained. Nothing here ever loads a blob that a
client sent.
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

log = logging.getLogger("boostream.artifacts")

FORMAT = "joblib"


@dataclasses.dataclass(frozen=True)
class Artifact:
    artifact_id: str
    sha256: str
    size_bytes: int
    blob: bytes

    def event_fields(self) -> dict[str, Any]:
        """What the `complete` event says of it, but the base64 blob: that comes last (`encoded`),
        where a stored event gets it back (`ArtifactStore.attach`)."""
        return {"artifact_id": self.artifact_id, "format": FORMAT, "sha256": self.sha256, "size_bytes": self.size_bytes}

    def encoded(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")


class ArtifactStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, model: Any) -> Artifact:
        buffer = io.BytesIO()
        joblib.dump(model, buffer, compress=3)
        blob = buffer.getvalue()
        artifact = Artifact(uuid.uuid4().hex, hashlib.sha256(blob).hexdigest(), len(blob), blob)
        path = self.path(artifact.artifact_id)
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as file:
            file.write(blob)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)  # a reader never sees half an artifact
        return artifact

    def path(self, artifact_id: str) -> Path:
        return self.directory / f"{artifact_id}.{FORMAT}"

    def attach(self, complete_json: str) -> str:
        """A stored `complete` event (kept without its artifact) with the artifact put back."""
        complete = orjson.loads(complete_json)
        try:
            blob = self.path(complete["artifact_id"]).read_bytes()
        except FileNotFoundError:
            log.warning("artifact %s is missing from %s", complete["artifact_id"], self.directory)
            complete["artifact"] = None
        else:
            complete["artifact"] = base64.b64encode(blob).decode("ascii")
        return orjson.dumps(complete).decode()

    def delete(self, artifact_id: str) -> None:
        self.path(artifact_id).unlink(missing_ok=True)
