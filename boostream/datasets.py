"""Datasets: a table uploaded once and decoded once, then trained on as often as one likes.

A dataset is kept as an uncompressed Arrow IPC file (`table.arrow`), its columns already decoded
(a CSV's text parsed, a Parquet file's pages decompressed): training maps it and copies the columns
it uses into X, as it does an Arrow body, so a sweep or a retrain neither uploads nor decodes the
table again. Beside it, `meta.json` (written last: a folder without it is incomplete) says whose it
is, its shape and its columns. A dataset expires `ttl_s` after it was last used (made or trained
on): its `meta.json`'s modification time is its last use.

Datasets live on disk under one folder, the shared directory's where replicas share one, so any
replica that sees the folder sees them; the folder is their only index.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc

from boostream.errors import NotFound, quotable

TABLE, META = "table.arrow", "meta.json"
ID_PREFIX = "ds_"


@dataclasses.dataclass(frozen=True)
class Dataset:
    id: str
    owner: str | None
    name: str | None
    rows: int
    columns: list[dict[str, str]]  # {"name": ..., "type": ...}, in the table's order
    format: str  # what it was uploaded as: csv, parquet, arrow
    size_bytes: int  # of its decoded form, on disk
    created_at: float
    used_at: float
    folder: Path

    @property
    def table_path(self) -> Path:
        return self.folder / TABLE

    def view(self, ttl_s: float) -> dict[str, Any]:
        """What the API shows of it."""
        return {
            "dataset_id": self.id,
            "name": self.name,
            "rows": self.rows,
            "columns": self.columns,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
            "expires_at": self.used_at + ttl_s,
        }


class DatasetStore:
    """The datasets under `root`. Its methods touch the disk: call them from a worker thread."""

    def __init__(self, root: Path, ttl_s: float) -> None:
        self.root = root
        self.ttl_s = ttl_s

    def create(self, table: pa.Table, owner: str | None, name: str | None, format: str) -> Dataset:
        """Write `table` (decoded, checked) as a new dataset; on any failure nothing is left behind."""
        dataset_id = ID_PREFIX + secrets.token_hex(12)
        folder = self.root / dataset_id
        folder.mkdir(parents=True)
        try:
            # One dictionary per column for the whole file (the IPC file format takes no replacements).
            table = table.unify_dictionaries()
            with pa.OSFile(str(folder / TABLE), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            now = time.time()
            meta = {
                "id": dataset_id,
                "owner": owner,
                "name": name,
                "rows": table.num_rows,
                "columns": [{"name": field.name, "type": str(field.type)} for field in table.schema],
                "format": format,
                "size_bytes": (folder / TABLE).stat().st_size,
                "created_at": now,
            }
            partial = folder / (META + ".partial")
            partial.write_bytes(orjson.dumps(meta))
            partial.replace(folder / META)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        found = self._read(folder)
        assert found is not None
        return found

    def get(self, dataset_id: str) -> Dataset | None:
        if not dataset_id.startswith(ID_PREFIX) or not dataset_id[len(ID_PREFIX) :].isalnum():
            return None  # never a path: an id is ours or unknown
        found = self._read(self.root / dataset_id)
        if found is None or self._expired(found, time.time()):
            return None
        return found

    def find(self, dataset_id: str, owns: Any, field: str = "dataset_id") -> Dataset:
        """The dataset, if `owns(owner)` says its caller may use it; NotFound naming `field` else
        (another key's dataset is as unknown as one that never was)."""
        found = self.get(dataset_id)
        if found is None or not owns(found.owner):
            raise NotFound(f"no dataset {quotable(dataset_id)!r} (unknown, deleted, or expired)", field=field)
        return found

    def used(self, dataset: Dataset) -> None:
        """Mark `dataset` used now: it expires `ttl_s` from now."""
        try:
            os.utime(dataset.folder / META)
        except FileNotFoundError:  # deleted meanwhile: the training has its arrays already
            pass

    def all(self) -> list[Dataset]:
        """Every dataset not expired, newest first."""
        now = time.time()
        found = [self._read(folder) for folder in self._folders()]
        live = [dataset for dataset in found if dataset is not None and not self._expired(dataset, now)]
        return sorted(live, key=lambda dataset: dataset.created_at, reverse=True)

    def delete(self, dataset: Dataset) -> None:
        # meta.json first: a folder without it is no dataset, whatever is left of it.
        (dataset.folder / META).unlink(missing_ok=True)
        shutil.rmtree(dataset.folder, ignore_errors=True)

    def expire(self) -> int:
        """Remove expired datasets, and folders left incomplete by a crash an hour ago or more."""
        now, removed = time.time(), 0
        for folder in self._folders():
            found = self._read(folder)
            stale = found is None and now - _mtime(folder) > 3600
            if stale or (found is not None and self._expired(found, now)):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def _expired(self, dataset: Dataset, now: float) -> bool:
        return now - dataset.used_at > self.ttl_s

    def _folders(self) -> list[Path]:
        try:
            return [path for path in self.root.iterdir() if path.name.startswith(ID_PREFIX)]
        except FileNotFoundError:
            return []

    @staticmethod
    def _read(folder: Path) -> Dataset | None:
        try:
            meta_path = folder / META
            meta = orjson.loads(meta_path.read_bytes())
            used_at = meta_path.stat().st_mtime
        except (OSError, orjson.JSONDecodeError):
            return None
        try:
            return DatasetStore._of(meta, used_at, folder)
        except (KeyError, TypeError):  # not a meta.json this wrote: no dataset
            return None

    @staticmethod
    def _of(meta: dict[str, Any], used_at: float, folder: Path) -> Dataset:
        return Dataset(
            id=meta["id"],
            owner=meta["owner"],
            name=meta["name"],
            rows=meta["rows"],
            columns=meta["columns"],
            format=meta["format"],
            size_bytes=meta["size_bytes"],
            created_at=meta["created_at"],
            used_at=used_at,
            folder=folder,
        )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
