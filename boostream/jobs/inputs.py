"""A job's decoded training arrays, kept on disk until the job ends, so that a job the server was
running when it died can run again from the start.

Each array is one `.npy` file (read back with `allow_pickle=False`, memory-mapped); labels, names,
classes and categories go in a small JSON file, written last: a folder without it is incomplete. Files are not
fsynced: they must survive the process being killed, which the page cache already ensures, and
syncing hundreds of megabytes would slow every job down for the rare crash of the whole machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson

from boostream.memory import save_array
from boostream.trainers.base import TrainingData

ARRAYS = ("X", "y", "X_valid", "y_valid", "era", "weight", "weight_valid")
META = "meta.json"


def save(folder: Path, data: TrainingData) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ARRAYS:
        array = getattr(data, name)
        if array is not None:
            save_array(folder / f"{name}.npy", array)
    meta = {
        "feature_names": data.feature_names,
        "classes": data.classes,
        "categories": data.categories,
        "arrays": [n for n in ARRAYS if getattr(data, n) is not None],
    }
    partial = folder / (META + ".partial")
    partial.write_bytes(orjson.dumps(meta, option=orjson.OPT_SERIALIZE_NUMPY))
    partial.replace(folder / META)


def complete(folder: Path) -> bool:
    """Whether every file was written: the metadata goes last."""
    return (folder / META).exists()


def load(folder: Path) -> TrainingData | None:
    """The arrays as saved, or None when the folder is missing or incomplete."""
    try:
        meta = orjson.loads((folder / META).read_bytes())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in meta["arrays"]}
    except (OSError, ValueError, KeyError):
        return None
    return TrainingData(
        feature_names=meta["feature_names"], classes=meta["classes"], categories=meta.get("categories"), **arrays
    )


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
