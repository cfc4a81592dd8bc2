"""The `boostream` command, run as a user types it, against a live server; and the client beneath it."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import lightgbm
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from boostream import cli
from boostream import client as client_module
from boostream.client import Client, Event, Unreachable
from boostream.requests.spec import VALID_SPLIT_SEED

from conftest import Server, _free_port, running_server_process

LONG_JOB = ["--param", "n_estimators=100000", "--param", "learning_rate=0.001", "--param", "num_leaves=8"]
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
DIABETES_FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def boostream(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The command as a user types it, in a fresh process (whatever server the caller's shell names)."""
    environment = {name: value for name, value in os.environ.items() if name != "BOOSTREAM_SERVER"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "boostream", *args], capture_output=True, text=True, env=environment, timeout=timeout
    )


def write_csv(path: Path, X: np.ndarray, y: np.ndarray, names: list[str]) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*names, "y"])
        writer.writerows([*row, label] for row, label in zip(X.tolist(), y.tolist(), strict=False))
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory, diabetes, iris) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tables")
    return {
        "diabetes": write_csv(folder / "diabetes.csv", *diabetes, DIABETES_FEATURES),
        "iris": write_csv(folder / "iris.csv", *iris, ["sepal_length", "sepal_width", "petal_length", "petal_width"]),
    }


@pytest.fixture(scope="module")
def trained(
    server: Server, tables, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess, Path]:
    """`boostream train` of 30 rounds on the diabetes CSV, with the model written to a file."""
    out = tmp_path_factory.mktemp("model") / "model.joblib"
    done = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--server", server.url, "--param", "n_estimators=30",
        "--out", str(out),
    )
    return done, out


def server_predictions(server: Server, artifact_id: str, X: np.ndarray, output: str = "value") -> list:
    with server.client() as http:
        response = http.post("/predict", json={"artifact_id": artifact_id, "X": X.tolist(), "output": output})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def with_stdout_closed(*args: str) -> subprocess.CompletedProcess:
    """The command with its stdout a pipe whose reader has gone, as `| head` leaves it."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "boostream", *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(write_end)


def read_until_a_round(process: subprocess.Popen) -> list[str]:
    """Lines of the command's stderr up to its first progress line."""
    lines: list[str] = []
    while not lines or not lines[-1].startswith("round "):
        lines.append(process.stderr.readline())
        assert lines[-1], "the command ended first:\n" + "".join(lines)
    return lines


@pytest.fixture
def long_jobs(server: Server) -> Iterator[list[str]]:
    """Ids of jobs a test starts that train until stopped: cancelled whatever the test's outcome,
    so they do not hold the server's slots."""
    job_ids: list[str] = []
    yield job_ids
    with server.client() as http:
        for job_id in job_ids:
            http.post(f"/jobs/{job_id}/cancel")


# train


def test_train_shows_rounds_and_metrics_and_writes_a_model_that_predicts_as_the_server_does(
    server: Server, trained, diabetes
):
    done, out = trained
    assert done.returncode == 0, done.stderr
    artifact_id = done.stdout.strip()
    assert HEX_ID.match(artifact_id), done.stdout
    assert "round 1/30" in done.stderr and "round 30/30" in done.stderr, done.stderr
    assert "train_l2" in done.stderr and "ETA" in done.stderr
    rounds = [line for line in done.stderr.splitlines() if line.startswith("round ")]
    assert rounds[0].endswith("ETA -") and rounds[-1].endswith("ETA 0.0s"), rounds  # 30 rounds: too fast to time
    booster = joblib.load(out)
    assert isinstance(booster, lightgbm.Booster) and booster.num_trees() == 30
    X = diabetes[0]
    np.testing.assert_allclose(booster.predict(X), server_predictions(server, artifact_id, X), rtol=1e-12)


def test_train_writes_the_native_format_when_asked(server: Server, tables, tmp_path: Path, diabetes):
    out = tmp_path / "model.txt"
    done = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--server", server.url, "--param", "n_estimators=20",
        "--format", "native", "--out", str(out),
    )
    assert done.returncode == 0, done.stderr
    booster = lightgbm.Booster(model_str=out.read_text())
    X = diabetes[0]
    np.testing.assert_allclose(booster.predict(X), server_predictions(server, done.stdout.strip(), X), rtol=1e-12)


@pytest.mark.parametrize("command", ["train", "watch", "train --local"])
def test_curve_writes_every_round_as_lightgbm_computes_it_from_the_model(
    server: Server, tables, tmp_path: Path, diabetes, command: str
):
    model, curve = tmp_path / "model.joblib", tmp_path / "curve.csv"
    job = [str(tables["diabetes"]), "--target", "y", "--param", "n_estimators=300", "--valid-fraction", "0.2"]
    outputs = ["--out", str(model), "--curve", str(curve)]
    if command == "train --local":
        done = boostream("train", *job, "--local", *outputs)
    elif command == "train":
        done = boostream("train", *job, "--server", server.url, *outputs)
    else:
        job_id = boostream("train", *job, "--server", server.url, "--detach").stdout.strip()
        done = boostream("watch", job_id, "--server", server.url, *outputs)
    assert done.returncode == 0, done.stderr
    assert re.search(r"done: 300 rounds.*, best 300;", done.stderr), done.stderr
    assert f"wrote the learning curve to {curve} (300 rounds)" in done.stderr
    header, *rows = list(csv.reader(io.StringIO(curve.read_text())))
    assert header == ["iteration", "train_l2", "valid_l2"]
    assert [int(row[0]) for row in rows] == list(range(1, 301))
    # The rows the server held out for validation_fraction (the same seed, the same draw).
    X, y = diabetes
    order = np.random.default_rng(VALID_SPLIT_SEED).permutation(len(X))
    n_valid = round(len(X) * 0.2)
    valid, train = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    booster = joblib.load(model)
    for iteration in (1, 2, 150, 300):
        computed = [
            np.mean((booster.predict(X[part], num_iteration=iteration) - y[part]) ** 2) for part in (train, valid)
        ]
        np.testing.assert_allclose([float(value) for value in rows[iteration - 1][1:]], computed, rtol=1e-9)


def test_a_non_tty_log_gets_a_progress_line_a_second_at_most(server: Server, tables):
    done = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--server", server.url, "--param", "n_estimators=2000",
        "--param", "learning_rate=0.01",
    )
    assert done.returncode == 0, done.stderr
    rounds = [line for line in done.stderr.splitlines() if line.startswith("round ")]
    assert rounds[0].startswith("round 1/2000") and rounds[-1].startswith("round 2000/2000")
    elapsed = float(re.search(r"elapsed ([\d.]+)s", rounds[-1]).group(1))
    assert len(rounds) <= elapsed / 0.9 + 2, rounds  # the first, one a second, the last


def test_a_failed_job_exits_1_with_the_servers_error(server: Server, tables, long_jobs):
    done = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--server", server.url, *LONG_JOB, "--timeout", "0.5"
    )
    long_jobs.append(re.match(r"job ([0-9a-f]{32}):", done.stderr).group(1))
    assert done.returncode == 1, done.stderr
    assert "failed: timeout: " in done.stderr
    assert done.stdout == ""


def test_a_bad_parameter_exits_2_with_the_servers_message(server: Server, tables):
    done = boostream("train", str(tables["diabetes"]), "--target", "y", "--server", server.url, "--param", "x=1")
    assert done.returncode == 2
    assert "params.x" in done.stderr and "unknown parameter" in done.stderr, done.stderr


def test_a_missing_target_column_exits_2_naming_it(server: Server, tables):
    done = boostream("train", str(tables["diabetes"]), "--target", "label", "--server", server.url)
    assert done.returncode == 2
    assert "'label'" in done.stderr and "invalid_data" in done.stderr, done.stderr


def test_an_unreachable_server_exits_3(tables):
    url = f"http://127.0.0.1:{_free_port()}"
    done = boostream("train", str(tables["diabetes"]), "--target", "y", "--server", url)
    assert done.returncode == 3
    assert f"cannot reach the server at {url}" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "options, words",
    [
        (["--param", "n_estimators"], "NAME=VALUE"),
        (["--param", "target=z"], "not a hyperparameter"),
        (["--param", "seed=1", "--param", "seed=2"], "given twice"),
        (["--out", "{tmp}/no/m.joblib"], "does not exist"),
        (["--detach", "--out", "{tmp}/m.joblib"], "--detach"),
        (["--detach", "--curve", "{tmp}/c.csv"], "--curve needs the job followed"),
        (["--curve", "{tmp}/no/c.csv"], "does not exist"),
        (["--local"], "needs --out"),
        (["--local", "--out", "{tmp}/m.joblib", "--server", "{nowhere}"], "no --server"),
    ],
)
def test_bad_usage_exits_2_before_anything_is_sent(tables, tmp_path: Path, options: list[str], words: str):
    nowhere = f"http://127.0.0.1:{_free_port()}"  # were anything sent, the exit code would be 3
    options = [option.format(tmp=tmp_path, nowhere=nowhere) for option in options]
    server = [] if "--local" in options else ["--server", nowhere]
    done = boostream("train", str(tables["diabetes"]), "--target", "y", *server, *options)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr, done.stderr


@pytest.mark.parametrize("name, words", [("table.json", ".csv"), ("absent.csv", "no such file")])
def test_a_table_that_is_not_a_csv_or_parquet_file_exits_2(tmp_path: Path, name: str, words: str):
    (tmp_path / "table.json").write_text("{}")
    done = boostream("train", str(tmp_path / name), "--target", "y", "--server", f"http://127.0.0.1:{_free_port()}")
    assert done.returncode == 2
    assert words in done.stderr, done.stderr


def test_ctrl_c_cancels_the_job_on_the_server_and_exits_130(server: Server, tables, long_jobs):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "boostream",
            "train",
            str(tables["diabetes"]),
            "--target",
            "y",
            "--server",
            server.url,
            *LONG_JOB,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = read_until_a_round(process)
        job_id = re.match(r"job ([0-9a-f]{32}):", lines[0]).group(1)
        long_jobs.append(job_id)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert f"cancelling job {job_id}" in stderr and "cancelled after round" in stderr, stderr
    assert stdout == ""
    assert server.job(job_id)["status"] == "cancelled"


def test_ctrl_c_stops_a_local_training_after_its_round_and_writes_no_model(tables, tmp_path: Path):
    out = tmp_path / "model.joblib"
    command = [sys.executable, "-m", "boostream", "train", str(tables["diabetes"]), "--target", "y", "--local"]
    process = subprocess.Popen(
        [*command, *LONG_JOB, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        read_until_a_round(process)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "stopping after this round" in stderr and "cancelled after round" in stderr, stderr
    assert stdout == "" and not out.exists()


# --detach, watch, jobs, cancel


def test_detach_prints_the_job_id_and_watch_follows_it_to_its_model(server: Server, tables, tmp_path: Path):
    detached = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--server", server.url, "--param", "n_estimators=25",
        "--detach",
    )
    assert detached.returncode == 0, detached.stderr
    job_id = detached.stdout.strip()
    assert HEX_ID.match(job_id) and detached.stdout == job_id + "\n"

    out = tmp_path / "watched.txt"
    watched = boostream("watch", job_id, "--server", server.url, "--out", str(out), "--format", "native")
    assert watched.returncode == 0, watched.stderr
    assert "round 25/25" in watched.stderr and "done" in watched.stderr
    artifact_id = watched.stdout.strip()
    assert artifact_id == server.job(job_id)["artifact_id"]
    # The job asked for joblib: the native file is downloaded, and checked against its sha256.
    assert lightgbm.Booster(model_str=out.read_text()).num_trees() == 25


@pytest.mark.parametrize("command", ["jobs", "predict"])
def test_output_to_a_reader_that_went_away_ends_quietly_with_141(server: Server, trained, tables, command: str):
    arguments = ["predict", trained[0].stdout.strip(), str(tables["diabetes"])] if command == "predict" else ["jobs"]
    done = with_stdout_closed(*arguments, "--server", server.url)
    assert (done.returncode, done.stderr) == (141, "")


def test_jobs_lists_a_job_with_its_status_model_and_progress(server: Server, tables):
    job_id = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--server", server.url, "--param", "n_estimators=15",
        "--detach",
    ).stdout.strip()
    server.wait_for_job(job_id)
    listed = boostream("jobs", "--status", "succeeded", "--limit", "500", env={"BOOSTREAM_SERVER": server.url})
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "MODEL", "OBJECTIVE", "PROGRESS", "CREATED"]
    row = next(row for row in rows if row.startswith(job_id))
    assert row.split()[1:5] == ["succeeded", "lightgbm", "regression", "15/15"]
    assert all(row.split()[1] == "succeeded" for row in rows)


def test_a_cancelled_job_makes_watch_exit_4(server: Server, tables, long_jobs):
    job_id = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--server", server.url, *LONG_JOB, "--detach"
    ).stdout.strip()
    long_jobs.append(job_id)
    server.wait_for_job(job_id, ("running",))
    cancelled = boostream("cancel", job_id, "--server", server.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert job_id in cancelled.stdout
    watched = boostream("watch", job_id, "--server", server.url)
    assert watched.returncode == 4, watched.stderr
    assert "cancelled after round" in watched.stderr
    again = boostream("cancel", job_id, "--server", server.url)
    assert again.returncode == 2 and "already_finished" in again.stderr


def test_ctrl_c_in_watch_stops_watching_but_not_the_job(server: Server, tables, long_jobs):
    job_id = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--server", server.url, *LONG_JOB, "--detach"
    ).stdout.strip()
    long_jobs.append(job_id)
    process = subprocess.Popen(
        [sys.executable, "-m", "boostream", "watch", job_id, "--server", server.url], stderr=subprocess.PIPE, text=True
    )
    try:
        read_until_a_round(process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "goes on" in stderr
    assert server.job(job_id)["status"] in ("queued", "running")


def test_watching_an_unknown_job_exits_2(server: Server):
    done = boostream("watch", "0" * 32, "--server", server.url)
    assert done.returncode == 2
    assert "not_found" in done.stderr


# predict


def test_predict_prints_one_prediction_per_row_as_the_model_does(server: Server, trained, tables, diabetes):
    done, out = trained
    artifact_id = done.stdout.strip()
    # The training file itself: its target column is not a feature of the model, and is left out.
    predicted = boostream("predict", artifact_id, str(tables["diabetes"]), "--server", server.url)
    assert predicted.returncode == 0, predicted.stderr
    values = [float(line) for line in predicted.stdout.splitlines()]
    X = diabetes[0]
    assert values == server_predictions(server, artifact_id, X)
    np.testing.assert_allclose(values, joblib.load(out).predict(X), rtol=1e-12)


def test_predict_proba_writes_a_csv_of_class_probabilities(server: Server, tables, tmp_path: Path, iris):
    trained = boostream(
        "train", str(tables["iris"]), "--target", "y", "--objective", "multiclass", "--server", server.url, "--param",
        "n_estimators=10",
    )
    assert trained.returncode == 0, trained.stderr
    artifact_id = trained.stdout.strip()
    out = tmp_path / "proba.csv"
    done = boostream(
        "predict", artifact_id, str(tables["iris"]), "--output", "proba", "--out", str(out), "--server", server.url
    )
    assert done.returncode == 0, done.stderr
    header, *rows = list(csv.reader(io.StringIO(out.read_text())))
    assert header == ["setosa", "versicolor", "virginica"]
    probabilities = np.array(rows, dtype=float)
    assert probabilities.shape == (150, 3)
    np.testing.assert_allclose(probabilities, server_predictions(server, artifact_id, iris[0], "proba"), rtol=1e-12)
    labels = boostream("predict", artifact_id, str(tables["iris"]), "--server", server.url).stdout.splitlines()
    assert labels == server_predictions(server, artifact_id, iris[0])
    assert np.mean(np.array(labels) == iris[1]) > 0.9


def test_predict_takes_a_parquet_file_by_column_name(server: Server, trained, tmp_path: Path, diabetes):
    artifact_id = trained[0].stdout.strip()
    X, y = diabetes
    table = tmp_path / "diabetes.parquet"
    # The target first and the features in reverse: they are taken by name, in the model's order.
    columns = {"y": y, **{name: X[:, index] for index, name in reversed(list(enumerate(DIABETES_FEATURES)))}}
    pq.write_table(pa.table(columns), table)
    predicted = boostream("predict", artifact_id, str(table), "--server", server.url)
    assert predicted.returncode == 0, predicted.stderr
    assert [float(line) for line in predicted.stdout.splitlines()] == server_predictions(server, artifact_id, X)


def test_predict_takes_parquet_columns_by_position_where_names_differ(
    server: Server, trained, tmp_path: Path, diabetes
):
    artifact_id = trained[0].stdout.strip()
    X = diabetes[0][:5]
    table = tmp_path / "unnamed.parquet"
    pq.write_table(pa.table({f"column_{index}": X[:, index] for index in range(X.shape[1])}), table)
    predicted = boostream("predict", artifact_id, str(table), "--server", server.url)
    assert predicted.returncode == 0, predicted.stderr
    assert [float(line) for line in predicted.stdout.splitlines()] == server_predictions(server, artifact_id, X)


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("table.json", "parquet", "name a CSV file .csv, a Parquet file .parquet or .pq"),
        ("parquet.csv", "parquet", "is not a CSV file: it is not UTF-8 text"),
        ("csv.parquet", "csv", "cannot be read as Parquet"),
    ],
)
def test_predict_refuses_a_file_that_is_not_csv_or_parquet_in_one_line(
    server: Server, trained, tables, tmp_path: Path, name: str, content: str, words: str
):
    parquet = tmp_path / "diabetes.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0]}), parquet)
    table = tmp_path / name
    table.write_bytes((parquet if content == "parquet" else tables["diabetes"]).read_bytes())
    done = boostream("predict", trained[0].stdout.strip(), str(table), "--server", server.url)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr


def test_predict_refuses_infinite_values_and_twice_named_columns_in_one_line(
    server: Server, trained, tmp_path: Path, diabetes
):
    artifact_id = trained[0].stdout.strip()
    X = diabetes[0][:3].copy()
    names = [f"c{index}" for index in range(X.shape[1])]
    infinite_csv = tmp_path / "infinite.csv"
    infinite_csv.write_text(
        ",".join(names) + "\n" + "\n".join(",".join(map(str, row)) for row in X).replace(str(X[1, 2]), "inf", 1) + "\n"
    )
    X[2, 4] = -np.inf
    infinite_parquet = tmp_path / "infinite.parquet"
    pq.write_table(pa.table({name: X[:, index] for index, name in enumerate(names)}), infinite_parquet)
    twice = tmp_path / "twice.parquet"
    pq.write_table(
        pa.table([pa.array(X[:, index]) for index in range(X.shape[1])], names=["age", *names[1:-1], "age"]), twice
    )
    for table, words in (
        (infinite_csv, "line 3, column 'c2': 'inf' is infinite"),
        (infinite_parquet, "row 3, column 'c4': -inf is infinite"),
        (twice, "two columns named 'age'"),
    ):
        done = boostream("predict", artifact_id, str(table), "--server", server.url)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr


def test_demo_data_writes_the_readmes_files_or_says_in_one_line_why_not(tmp_path: Path):
    done = boostream("demo-data", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in (tmp_path / "demo").iterdir()) == sorted(
        Path(line).name for line in done.stdout.splitlines()
    )
    (tmp_path / "a-file").write_text("")
    refused = boostream("demo-data", str(tmp_path / "a-file"))
    assert (
        refused.returncode == 1 and refused.stderr.count("\n") == 1 and "cannot write the demo files" in refused.stderr
    ), refused.stderr


def test_predict_refuses_a_csv_without_the_models_columns(server: Server, trained, tmp_path: Path):
    artifact_id = trained[0].stdout.strip()
    table = tmp_path / "two.csv"
    table.write_text("a,b\n1,2\n")
    done = boostream("predict", artifact_id, str(table), "--server", server.url)
    assert done.returncode == 2
    assert "the model takes 10 features" in done.stderr


# train --local


def test_local_training_shows_progress_and_writes_the_model(tables, tmp_path: Path, diabetes):
    out = tmp_path / "local.joblib"
    done = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--local", "--param", "n_estimators=30", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert "round 30/30" in done.stderr and "train_l2" in done.stderr
    booster = joblib.load(out)
    assert isinstance(booster, lightgbm.Booster) and booster.num_trees() == 30
    assert np.mean((booster.predict(diabetes[0]) - diabetes[1]) ** 2) < np.var(diabetes[1]) / 2


def test_local_training_checks_the_request_as_the_server_does(tables, tmp_path: Path):
    done = boostream(
        "train", str(tables["diabetes"]), "--target", "y", "--local", "--param", "x=1", "--out",
        str(tmp_path / "m.joblib"),
    )
    assert done.returncode == 2
    assert "params.x" in done.stderr


def test_the_client_reads_health_models_results_and_artifacts_and_deletes_jobs(server: Server, diabetes):
    X, y = diabetes
    with Client(server.url) as client:
        assert client.health()["status"] == "ok"
        assert "lightgbm" in [model["model_type"] for model in client.models()["models"]]
        job_id = client.create_job({"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 5}})["job_id"]
        events = list(client.events(job_id))
        assert events[-1].type == "complete" and events[-1].data == client.job_result(job_id)
        assert client.artifact(events[-1].data["artifact_id"], "native").content.startswith(b"tree")
        client.delete_job(job_id)
        with pytest.raises(client_module.ApiError) as raised:
            client.job(job_id)
    assert (raised.value.status, raised.value.code, raised.value.field) == (404, "not_found", "job_id")


class _CutAfter(httpx.SyncByteStream):
    """A server's response body that breaks off after a few chunks, as a dropped connection does."""

    def __init__(self, stream: httpx.SyncByteStream, chunks: int) -> None:
        self.stream, self.chunks = stream, chunks

    def __iter__(self) -> Iterator[bytes]:
        for count, chunk in enumerate(self.stream, start=1):
            yield chunk
            if count == self.chunks:
                raise httpx.ReadError("connection reset")

    def close(self) -> None:
        self.stream.close()


def test_a_dropped_stream_resumes_from_the_server_missing_and_repeating_nothing(server: Server, diabetes):
    X, y = diabetes
    asked_after: list[str] = []

    class DropsTheFirstStream(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.url.path.endswith("/events"):
                asked_after.append(request.headers["last-event-id"])
                if len(asked_after) == 1:
                    response.stream = _CutAfter(response.stream, chunks=3)
            return response

    with Client(server.url, transport=DropsTheFirstStream(), sleep=lambda seconds: None) as client:
        job_id = client.create_job({"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 200}})["job_id"]
        events = list(client.events(job_id))
    assert len(asked_after) == 2 and asked_after[0] == "0"
    assert [event.id for event in events] == list(range(1, len(events) + 1))
    assert events[-1].type == "complete"


# The client, without a server


class _Body(httpx.SyncByteStream):
    """A response body that may break off, as a dropped connection does."""

    def __init__(self, text: str, then: Exception | None = None) -> None:
        self.text, self.then = text, then

    def __iter__(self) -> Iterator[bytes]:
        yield self.text.encode()
        if self.then is not None:
            raise self.then


def _sse(event_id: int, kind: str, data: str, retry: str = "") -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {data}\n{retry}\n"


def test_events_resume_after_a_dropped_connection_with_last_event_id():
    asked_after: list[str] = []
    answers = [
        _Body(
            ": ping\n\n"
            + _sse(1, "started", '{"job_id": "j"}', "retry: 2000\n")
            + _sse(2, "progress", '{"iteration": 1}'),
            httpx.ReadError("reset"),
        ),
        _Body(_sse(3, "complete", '{"artifact_id": "a"}')),
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        asked_after.append(request.headers["last-event-id"])
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=answers.pop(0))

    sleeps: list[float] = []
    with Client("http://server", transport=httpx.MockTransport(handle), sleep=sleeps.append) as client:
        events = list(client.events("j"))
    assert [(e.id, e.type) for e in events] == [(1, "started"), (2, "progress"), (3, "complete")]
    assert asked_after == ["0", "2"]
    assert sleeps == [2.0]  # the server's retry hint


def test_events_give_up_after_a_bounded_number_of_reconnections():
    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers["last-event-id"] == "0":
            return httpx.Response(200, stream=_Body(_sse(1, "started", "{}")))  # then the stream just ends
        raise httpx.ConnectError("refused")

    sleeps: list[float] = []
    with Client(
        "http://server", transport=httpx.MockTransport(handle), reconnects=3, backoff_s=1.0, sleep=sleeps.append
    ) as client:
        with pytest.raises(Unreachable, match="after event 1"):
            list(client.events("j"))
    assert sleeps == [1.0, 2.0, 4.0]


def test_a_server_that_cannot_be_reached_at_first_is_not_retried():
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    sleeps: list[float] = []
    with Client("http://server", transport=httpx.MockTransport(handle), sleep=sleeps.append) as client:
        with pytest.raises(Unreachable, match="cannot reach the server at http://server"):
            list(client.events("j"))
    assert sleeps == []


def test_an_upload_streams_the_file_with_its_length_and_fields_in_the_query(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(client_module, "UPLOAD_CHUNK_BYTES", 1000)
    table = tmp_path / "t.csv"
    table.write_bytes(b"a,y\n" + b"".join(b"%d,%d\n" % (i, i % 2) for i in range(2000)))
    received = {}

    class Recorder(httpx.BaseTransport):
        """Takes the body as it is sent (MockTransport would read it whole first)."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            received.update(headers=request.headers, params=dict(request.url.params), chunks=list(request.stream))
            return httpx.Response(202, json={"job_id": "j"})

    with Client("http://server", transport=Recorder()) as client:
        assert client.upload_job(table, {"target": "y", "n_estimators": "30"}) == {"job_id": "j"}
    assert received["params"] == {"target": "y", "n_estimators": "30"}
    assert received["headers"]["content-type"] == "text/csv"
    assert received["headers"]["content-length"] == str(table.stat().st_size)
    assert "transfer-encoding" not in received["headers"]
    assert len(received["chunks"]) > 1 and max(map(len, received["chunks"])) <= 1000
    assert b"".join(received["chunks"]) == table.read_bytes()


def test_an_error_answer_carries_the_servers_code_message_and_field():
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422, json={"error": {"code": "invalid_parameter", "message": "unknown parameter", "field": "params.x"}}
        )

    with Client("http://server", transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(client_module.ApiError) as raised:
            client.jobs()
    assert (raised.value.status, raised.value.code, raised.value.field) == (422, "invalid_parameter", "params.x")


# The progress display


class _Log(io.StringIO):
    def isatty(self) -> bool:
        return False


def _progress(iteration: int, total: int = 100) -> Event:
    data = {
        "iteration": iteration,
        "total": total,
        "percent": 100 * iteration / total,
        "elapsed_s": iteration / 10,
        "eta_s": 1.0,
        "metrics": {"valid_l2": 2.5},
    }
    return Event(iteration, "progress", data)


def test_a_log_gets_the_first_round_one_a_second_the_latest_before_other_lines_and_the_last():
    now = [0.0]
    log = _Log()
    display = cli.ProgressDisplay(log, interval_s=1.0, clock=lambda: now[0])
    for iteration, at in [(1, 0.0), (2, 0.3), (3, 0.9), (4, 1.1), (5, 1.5)]:
        now[0] = at
        display.show(_progress(iteration))
    display.note("cancelling")
    display.show(_progress(100))
    lines = log.getvalue().splitlines()
    assert [line.split()[1] for line in lines if line.startswith("round")] == ["1/100", "4/100", "5/100", "100/100"]
    assert lines[3] == "cancelling" and "valid_l2 2.5" in lines[0]


def _timed_round(iteration: int, total: int = 1000) -> Event:
    """Round `iteration` of a job whose first round took 0.6 s of setup, and every other 0.01 s."""
    elapsed_s = 0.6 + 0.01 * (iteration - 1)
    # What the server's ETA (elapsed / iteration) would say: 9:59 after the first round.
    eta_s = elapsed_s / iteration * (total - iteration)
    data = {
        "iteration": iteration,
        "total": total,
        "percent": 100 * iteration / total,
        "elapsed_s": elapsed_s,
        "eta_s": eta_s,
        "metrics": {},
    }
    return Event(iteration, "progress", data)


def test_no_eta_is_shown_until_the_pace_of_rounds_after_the_first_is_measured():
    log = _Log()
    display = cli.ProgressDisplay(log, interval_s=0.0)
    for iteration in (1, 2, 6, 50, 201, 600, 1000):
        display.show(_timed_round(iteration))
    etas = [line.rpartition("ETA ")[2] for line in log.getvalue().splitlines()]
    # 5 rounds after the first, but 0.05 s; 49 rounds, 0.49 s; then 0.01 s a round, as they took.
    assert etas == ["-", "-", "-", "-", "8.0s", "4.0s", "0.0s"]


def test_the_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = capsys.readouterr().out
    for code in ("0", "1", "2", "3", "4", "130", "141"):
        assert re.search(rf"^  {code} +\S", help_text, re.MULTILINE), code


def test_serve_on_a_data_directory_in_use_says_which_server_holds_it_in_one_line(tmp_path: Path):
    with running_server_process(tmp_path) as server:  # a process: its pid is the one named
        done = boostream("serve", "--port", str(_free_port()), "--data-dir", str(server.data_dir), timeout=60)
    assert done.returncode == 1
    holder = f"another boostream server (pid {server.process.pid})"
    assert done.stderr == f"boostream: {holder} is using the data directory {server.data_dir}\n"


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_redis_that_never_answers_is_one_line_after_a_wait_not_a_traceback(
    command: str, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.setattr(cli, "REDIS_PATIENCE_S", 0.5)
    redis_url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    options = ["--data-dir", str(tmp_path)] if command == "serve" else []
    assert cli.main([command, "--redis", redis_url, *options]) == cli.EXIT_FAILED
    error = capsys.readouterr().err
    assert "Traceback" not in error
    last = error.splitlines()[-1]
    assert last.startswith(f"boostream: Redis at {redis_url} cannot be reached (") and last.endswith("; check --redis")
