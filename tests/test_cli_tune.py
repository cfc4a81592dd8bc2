"""`boostream tune`, run as a user types it, against a live server: a trial's line as each ends, the
leaderboard, the best model written and equal to the server's; Ctrl-C cancels the search; bad
options are refused before anything is sent; and the live block a terminal gets."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightgbm
import numpy as np
import pytest
from test_cli import DIABETES_FEATURES, HEX_ID, boostream, write_csv

from boostream import cli
from boostream.client import Event

from conftest import Server

SEARCH = ["--search", "num_leaves=4..32:log", "--search", "learning_rate=0.02..0.3:log"]
ENDED = re.compile(r"^trial (\d+) (complete|pruned|failed)\b", re.MULTILINE)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory, diabetes) -> Path:
    return write_csv(tmp_path_factory.mktemp("tune") / "diabetes.csv", *diabetes, DIABETES_FEATURES)


def test_tune_shows_each_trial_and_the_leaderboard_and_writes_the_best_model(
    server: Server, table: Path, tmp_path: Path, diabetes
):
    out = tmp_path / "best.txt"
    done = boostream(
        "tune", str(table), "--target", "y", *SEARCH, "--trials", "8", "--parallel", "2", "--seed", "1",
        "--param", "n_estimators=60", "--out", str(out), "--format", "native", "--server", server.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    artifact_id = done.stdout.strip()
    assert HEX_ID.match(artifact_id), done.stdout
    tune_id = re.search(r"^search ([0-9a-f]{32}): 8 trials of lightgbm regression", done.stderr, re.MULTILINE)
    assert tune_id, done.stderr
    assert sorted(int(number) for number, _ in ENDED.findall(done.stderr)) == list(range(8)), done.stderr
    assert "RANK  TRIAL  STATE     VALID_L2" in done.stderr and "importances: " in done.stderr
    with server.client() as http:
        search = http.get(f"/tunes/{tune_id.group(1)}").json()
        # What the server kept is what was asked, on the table's columns, and the dataset went.
        assert search["status"] == "succeeded" and search["best"]["artifact_id"] == artifact_id
        assert set(search["best"]["params"]) == {"num_leaves", "learning_rate"}
        assert f"done: best trial {search['best']['trial']}, valid_l2 {search['best']['value']:.6g}" in done.stderr
        assert http.get(f"/artifacts/{artifact_id}/metadata").json()["feature_names"] == DIABETES_FEATURES
        assert not [d for d in http.get("/datasets").json()["datasets"] if d["name"] == "tune diabetes.csv"]
        X = diabetes[0][:50]
        served = http.post("/predict", json={"artifact_id": artifact_id, "X": X.tolist()}).json()["predictions"]
    np.testing.assert_allclose(lightgbm.Booster(model_file=str(out)).predict(X), served, rtol=1e-12)


def test_ctrl_c_cancels_the_search_and_leaves_no_trial_running(server: Server, table: Path):
    process = subprocess.Popen(
        [
            sys.executable, "-m", "boostream", "tune", str(table), "--target", "y", "--search", "num_leaves=4,8",
            "--trials", "4", "--parallel", "2", "--pruner", "none", "--param", "n_estimators=100000",
            "--param", "learning_rate=0.001", "--server", server.url,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = process.stderr.readline()
        tune_id = re.match(r"search ([0-9a-f]{32}):", first)
        assert tune_id, first + process.stderr.read()
        tune_id = tune_id.group(1)
        with server.client() as http:
            deadline = time.monotonic() + 60
            while http.get(f"/tunes/{tune_id}").json()["trials"]["running"] < 2:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert f"cancelling search {tune_id}" in stderr and "search cancelled" in stderr, stderr
    assert stdout == ""
    with server.client() as http:
        assert http.get(f"/tunes/{tune_id}").json()["status"] == "cancelled"
        events = http.get(f"/tunes/{tune_id}/events").text
        job_ids = re.findall(r'"job_id":"([0-9a-f]{32})"', events)
        assert job_ids
        assert {http.get(f"/jobs/{job_id}").json()["status"] for job_id in job_ids} <= {"cancelled", "succeeded"}


@pytest.mark.parametrize(
    "options, words",
    [
        (["--search", "num_leaves"], "NAME=LOW..HIGH"),
        (["--search", "num_leaves=a..b"], "a range's ends are numbers"),
        (["--search", "learning_rate=0.01..0.3:lin"], "not :lin"),
        (["--search", "lambda_l1=nan,1"], "not a finite number"),
        (["--search", "lambda_l1=0..inf"], "not a finite number"),
        (["--search", "num_leaves=4,8", "--search", "num_leaves=2..8"], "--search num_leaves is given twice"),
        (["--search", "num_leaves=4,8", "--param", "target=x"], "not a hyperparameter"),
        (["--search", "num_leaves=4,8", "--detach", "--out", "model.txt"], "drop --detach"),
    ],
)
def test_bad_options_exit_2_before_anything_is_sent(table: Path, options: list[str], words: str):
    # No server listens there: a command that sent anything would exit 3.
    done = boostream("tune", str(table), "--target", "y", *options, "--server", "http://127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_a_search_the_server_refuses_exits_2_naming_the_field(server: Server, table: Path):
    done = boostream("tune", str(table), "--target", "y", "--search", "leaves=4,8", "--server", server.url)
    assert done.returncode == 2, done.stderr
    assert "(search.leaves)" in done.stderr and "unknown parameter" in done.stderr, done.stderr


def test_search_options_become_the_requests_space():
    space = cli._search_space(["num_leaves=8..256:log", "learning_rate=0.01..0.3", "boosting=gbdt,dart", "x=1,2.5"])
    assert space == {
        "num_leaves": {"low": 8, "high": 256, "log": True},
        "learning_rate": {"low": 0.01, "high": 0.3, "log": False},
        "boosting": ["gbdt", "dart"],
        "x": [1, 2.5],
    }


# The live block on a terminal


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _events() -> list[Event]:
    started = {
        "tune_id": "t", "metric": "valid_l2", "n_trials": 2, "parallel": 2, "sampler": "tpe", "pruner": "median",
        "model_type": "lightgbm", "objective": "regression", "params": {"n_estimators": 50},
        "space": {"num_leaves": {"low": 4, "high": 32, "log": True}},
    }  # fmt: skip
    return [
        Event(1, "started", started),
        Event(2, "trial_started", {"trial": 0, "params": {"num_leaves": 5}, "job_id": "a"}),
        Event(3, "trial_started", {"trial": 1, "params": {"num_leaves": 30}, "job_id": "b"}),
        Event(4, "progress", {"trial": 1, "iteration": 7, "metrics": {"valid_l2": 3500.0}}),
        Event(5, "trial_pruned", {"trial": 1, "job_id": "b", "round": 7, "value": 3500.0}),
        Event(6, "progress", {"trial": 0, "iteration": 40, "metrics": {"valid_l2": 3100.5}}),
    ]


def test_a_terminal_gets_a_live_block_of_trials_redrawn_in_place_below_the_lines():
    now = [0.0]
    terminal = _Terminal()
    display = cli.TuneDisplay(terminal, redraw_s=0.2, clock=lambda: now[0])
    for event in _events():
        now[0] += 0.3
        display.show(event)
    shown = terminal.getvalue()
    # The latest block: the counts, and the running trial's round and value.
    last_block = shown.rsplit("\x1b[J", 1)[-1]
    assert last_block.startswith("trials 1/2 done (0 complete, 1 pruned, 0 failed), 1 running"), last_block
    assert "trial 0 running: round 40/50  valid_l2 3100.5  num_leaves=5" in last_block
    assert "trial 1 pruned at round 7: valid_l2 3500; num_leaves=30" in shown
    display.close()
    # Closed: the cursor went up over the block and cleared it, and nothing was drawn after.
    assert terminal.getvalue().endswith("\x1b[J") and terminal.getvalue().count("\x1b[J") >= 2


def test_a_log_gets_a_summary_line_at_most_every_interval():
    now = [0.0]
    log = io.StringIO()
    display = cli.TuneDisplay(log, interval_s=10.0, clock=lambda: now[0])
    late = Event(7, "progress", {"trial": 0, "iteration": 41, "metrics": {"valid_l2": 3100.0}})
    for event, at in zip([*_events(), late], [1, 2, 3, 11, 12, 15, 24], strict=True):
        now[0] = at
        display.show(event)
    lines = log.getvalue().splitlines()
    assert "\x1b" not in log.getvalue()
    summaries = [line for line in lines if line.startswith("trials ")]
    # At 11 s (the first 10 s after the start), not at 15 s, then at 24 s.
    assert summaries == [
        "trials 0/2 done (0 complete, 0 pruned, 0 failed), 2 running",
        "trials 1/2 done (0 complete, 1 pruned, 0 failed), 1 running",
    ], lines
