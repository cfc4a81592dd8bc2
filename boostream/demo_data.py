"""The dashboard's demo tables, written out for trying the server from a shell: each as the CSV that
ships in the package, the regression table also as Parquet and as a JSON training request, so the
README's examples run as printed (`boostream demo-data demo`)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import orjson

DEMO_TABLES = Path(__file__).parent / "dashboard" / "static" / "demo"
# Each table's target is its last column.
TARGETS = {"diabetes": "progression", "breast_cancer": "diagnosis", "iris": "species"}
# The JSON request: 300 rounds with a fifth of the rows held out, as the README shows it.
JSON_REQUEST_FIELDS = {"valid_fraction": 0.2, "params": {"n_estimators": 300}}


def write_demo_data(directory: Path) -> list[Path]:
    """Write the demo files into `directory` (made if missing); the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copyfile(DEMO_TABLES / f"{name}.csv", directory / f"{name}.csv")) for name in TARGETS]
    written.append(_write_parquet(directory / "diabetes.csv", directory / "diabetes.parquet"))
    written.append(_write_json_request(directory / "diabetes.csv", directory / "diabetes.json"))
    return written


def _write_parquet(source: Path, target: Path) -> Path:
    import pyarrow.csv
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.csv.read_csv(source), target)
    return target


def _write_json_request(source: Path, target: Path) -> Path:
    with open(source, newline="") as file:
        header, *rows = csv.reader(file)
    body = {
        "X": [[float(cell) for cell in row[:-1]] for row in rows],
        "y": [float(row[-1]) for row in rows],
        "feature_names": header[:-1],
        **JSON_REQUEST_FIELDS,
    }
    target.write_bytes(orjson.dumps(body))
    return target
