"""Trained models as artifacts: a joblib blob, its sha256, kept on disk under the data directory.

Artifacts are written by this server from models it trained. Nothing here ever loads a blob that a
client sent.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import Any

import joblib

FORMAT = "joblib"


@dataclasses.dataclass(frozen=True)
class Artifact:
    artifact_id: str
    sha256: str
    size_bytes: int
    blob: bytes

    def event_fields(self) -> dict[str, Any]:
        return {
            "artifact_id": self.artifact_id,
            "format": FORMAT,
            "artifact": base64.b64encode(self.blob).decode("ascii"),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
        }


class ArtifactStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, model: Any) -> Artifact:
        buffer = io.BytesIO()
        joblib.dump(model, buffer, compress=3)
        blob = buffer.getvalue()
        artifact = Artifact(uuid.uuid4().hex, hashlib.sha256(blob).hexdigest(), len(blob), blob)
        path = self.directory / f"{artifact.artifact_id}.{FORMAT}"
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as file:
            file.write(blob)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)  # a reader never sees half an artifact
        return artifact
