"""The dashboard's search view, driven in a real Chromium against a server of its own: a search
started from the page's form on a bundled demo table (uploaded as a dataset, which the page deletes
once the search has started) and watched to its end: one curve per trial, as many rounds as the
trial's job trained, the pruned ones faded and the best one on top; the leaderboard and the best as
the server has them; the best model downloadable; its events followed again after dropped
connections without a point lost or twice. Then a search cancelled with its button, which leaves no
trial's job running; a search followed across a restart of the server, each trial's curve starting
over with its job; a CSV with text searched with that text as categories; a Parquet file searched;
and refusals explained next to the form, leaving no dataset behind. The browser fixtures and the
skip reasons are test_dashboard's; the finished search's screenshot is saved as `dashboard-tune.png`
beside its `dashboard.png`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from test_dashboard import Dashboard, artifacts_dir, browser, open_dashboard  # noqa: F401 - browser: a fixture

import conftest
from conftest import Server, parse_sse, running_server_process, start_server

TABLE, TARGET = "breast_cancer.csv", "diagnosis"
DEMO = Path(__file__).parent.parent / "boostream" / "dashboard" / "static" / "demo"
ROUNDS = 1000
# About three seconds of search on two cores: 8 trials of 1000 rounds, two at a time. The learning
# rate is searched from 0.001: seed 2 draws rates under 0.003 for the last trials, which learn too
# slowly for the median pruner (it waits for 5 trials to complete, and a quarter of the rounds).
SEARCH = {"n_trials": "8", "parallel": "2", "pruner": "median", "seed": "2"}
LOW_LEARNING_RATE = "0.001"
# Trials that train until they are cancelled: tens of seconds each.
ENDLESS_ROUNDS = 100_000
TUNE_STATE = "window.__boostream.tuneState()"
PATHS = """[...document.querySelectorAll('#tune-chart path.trial')].map((path) => ({
  trial: Number(path.dataset.trial), state: path.dataset.state, rounds: Number(path.dataset.rounds),
  classes: [...path.classList].sort(), opacity: Number(getComputedStyle(path).opacity),
}))"""
ROWS = """[...document.querySelectorAll('#leaderboard-body tr')].map((row) => ({
  trial: Number(row.dataset.trial), state: row.dataset.state, best: row.hasAttribute('aria-current'),
  cells: [...row.cells].map((cell) => cell.textContent),
}))"""


@pytest.fixture(scope="module")
def tune_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own, two jobs at a time: a search of two trials at once."""
    yield from start_server(tmp_path_factory.mktemp("dashboard-tune"), cpu_jobs=2, heartbeat_s=0.5)


@pytest.fixture
def dashboard(browser: Any, tune_server: Server) -> Iterator[Dashboard]:  # noqa: F811 - test_dashboard's browser
    with open_dashboard(browser, tune_server) as dashboard:
        yield dashboard


def tune_state(dashboard: Dashboard) -> dict[str, Any]:
    return dashboard.page.evaluate(TUNE_STATE)


def wait_for_tune(dashboard: Dashboard, condition: str, timeout_s: float = 60) -> Any:
    """Wait until the JavaScript expression `condition` holds, `t` being the search's state."""
    script = f"() => {{ const t = {TUNE_STATE}; return {condition}; }}"
    return dashboard.page.wait_for_function(script, timeout=timeout_s * 1000).json_value()


def fill_search(dashboard: Dashboard, table: str, n_estimators: int, **settings: str) -> None:
    """The form, as a user fills it in for a search: a demo table, its rounds, the search's settings
    (`n_trials`, `pruner`, `search-learning_rate-low`: the inputs' ids)."""
    page = dashboard.page
    page.select_option("#table", table)
    page.wait_for_function(f"() => document.querySelector('#target').value === {TARGET!r}")
    page.fill("#param-n_estimators", str(n_estimators))
    for field, value in settings.items():
        if page.get_attribute(f"#{field}", "type") == "number":
            page.fill(f"#{field}", value)
        else:
            page.select_option(f"#{field}", value)


def start_search(dashboard: Dashboard) -> str:
    """Click Search; the new search's id, once the page follows it (and has deleted the dataset it
    uploaded: the search keeps its own copy of the table)."""
    dashboard.page.click("#search-start")
    wait_for_tune(dashboard, "t.tuneId || document.querySelector('#form-error').textContent")
    assert dashboard.page.text_content("#form-error") == ""
    tune_id: str = tune_state(dashboard)["tuneId"]
    assert dashboard.page.is_visible("#tune") and dashboard.page.text_content("#tune-id") == tune_id
    assert datasets_left(dashboard.server) == [], "the page deleted its dataset once the search started"
    return tune_id


def datasets_left(server: Server) -> list[Any]:
    with server.client() as client:
        listed = client.get("/datasets")
    assert listed.status_code == 200, listed.text
    datasets: list[Any] = listed.json()["datasets"]
    return datasets


def tune_events(server: Server, tune_id: str) -> list[Any]:
    with server.client() as client, client.stream("GET", f"/tunes/{tune_id}/events") as response:
        assert response.status_code == 200, response.read()
        return list(parse_sse(response.iter_lines()))


def sent_curves(events: list[Any], metric: str) -> dict[int, dict[str, list[Any]]]:
    """Each trial's rounds of `metric`, as the search's progress events carried them (every round of
    their `history` where they have one, else the event's own round) since its job last started:
    what its curve must show."""
    curves: dict[int, dict[str, list[Any]]] = {}
    for event in events:
        if event.type in ("trial_started", "trial_restarted"):
            curves[event.data["trial"]] = {"iterations": [], "values": []}
        elif event.type == "progress":
            data = event.data
            single = {"first": data["iteration"], "metrics": {name: [value] for name, value in data["metrics"].items()}}
            history = data.get("history") or single
            curve = curves[data["trial"]]
            for offset, value in enumerate(history["metrics"][metric]):
                curve["iterations"].append(history["first"] + offset)
                curve["values"].append(value)
    for trial, curve in curves.items():  # the server never sends a trial's round twice, nor out of order
        assert curve["iterations"] == sorted(set(curve["iterations"])), trial
    return curves


def shown_number(text: str) -> float:
    """A figure as the page writes it (4 significant digits), read back."""
    return float(text.split()[0])


def test_a_search_from_the_form_is_watched_to_its_best_model(dashboard: Dashboard):
    page, server = dashboard.page, dashboard.server
    # learning_rate and num_leaves are searched by default: the rate from lower than its default low.
    fill_search(dashboard, TABLE, ROUNDS, **SEARCH, **{"search-learning_rate-low": LOW_LEARNING_RATE})
    tune_id = start_search(dashboard)
    # Lose the connection twice while trials train: once resuming from the start (every event a
    # replay, to be ignored), then, once new events came, after the last event seen.
    seen, statuses = 0, []
    for after, connections in (("0", 2), ("", 3)):
        seen = wait_for_tune(
            dashboard, f"t.trials.some((trial) => trial.rounds > 0) && t.lastEventId > {seen} && t.lastEventId"
        )
        statuses.append(tune_state(dashboard)["status"])
        page.evaluate(f"window.__boostream.dropTuneConnection({after})")
        wait_for_tune(dashboard, f"t.connections === {connections}")
    assert statuses == ["running", "running"], "the connection was lost while the search ran"
    page.wait_for_selector("#tune-status[data-status=succeeded]", timeout=60_000)
    assert page.text_content("#tune-status") == "succeeded" and page.is_disabled("#tune-cancel")

    with server.client() as client:
        status = client.get(f"/tunes/{tune_id}").json()
        result = client.get(f"/tunes/{tune_id}/result").json()
        jobs = {row["trial"]: client.get(f"/jobs/{row['job_id']}").json() for row in result["leaderboard"]}
    events = tune_events(server, tune_id)
    counts, best = status["trials"], status["best"]
    assert status["status"] == "succeeded" and counts["complete"] + counts["pruned"] == 8 and counts["failed"] == 0
    pruned = {row["trial"] for row in result["leaderboard"] if row["state"] == "pruned"}
    assert pruned, "the seed's slowest learners were pruned: there is a faded curve to see"
    state = tune_state(dashboard)
    assert (state["connections"], state["lastEventId"], state["open"]) == (3, len(events), False)

    # The chart: a curve per trial, each to the last round its job trained, every point the server sent
    # once; the pruned ones faded, the best one drawn last, over the others.
    paths = page.evaluate(PATHS)
    assert sorted(path["trial"] for path in paths) == list(range(8))
    assert paths[-1]["trial"] == best["trial"] and "best" in paths[-1]["classes"]
    for path in paths:
        trial, job = path["trial"], jobs[path["trial"]]
        assert path["rounds"] == job["progress"]["iteration"], f"trial {trial}: its job's rounds"
        expected_state = "pruned" if trial in pruned else "complete"
        assert path["state"] == expected_state and (expected_state in path["classes"]), path
        assert ("pruned" in path["classes"]) == (path["opacity"] < 0.5), f"trial {trial}: faded iff pruned"
        assert job["status"] == ("cancelled" if trial in pruned else "succeeded"), (trial, job["status"])
    curves = page.evaluate("window.__boostream.tuneCurves()")
    assert {int(trial): curve for trial, curve in curves.items()} == sent_curves(events, result["metric"])

    # The leaderboard: the server's, row for row, completed trials by value; the best one marked.
    rows = page.evaluate(ROWS)
    leaderboard = result["leaderboard"]
    assert [(row["trial"], row["state"]) for row in rows] == [(r["trial"], r["state"]) for r in leaderboard]
    for row, server_row in zip(rows, leaderboard, strict=True):
        trial_cell, state_cell, value_cell, best_round_cell, params_cell = row["cells"]
        assert trial_cell == str(server_row["trial"]), row
        assert shown_number(value_cell) == pytest.approx(server_row["value"], rel=1e-3), row
        if server_row["state"] == "complete":
            assert best_round_cell == str(server_row["best_iteration"]), row
        else:
            assert state_cell == f"pruned at round {server_row['pruned_at']}" and best_round_cell == "–", row
        assert set(params_cell.replace(" · ", " ").split()[::2]) == {"learning_rate", "num_leaves"}, row
        assert row["best"] == (row["trial"] == best["trial"])
    values = [shown_number(row["cells"][2]) for row in rows if row["state"] == "complete"]
    assert values == sorted(values)

    # The figures: trials done, the best so far (the server's best), and its model.
    assert page.text_content("#tune-counts") == (
        f"8 of 8 trials done: {counts['complete']} complete, {counts['pruned']} pruned, 0 failed"
    )
    assert page.evaluate("document.querySelector('#tune-progress').value") == 8
    assert shown_number(page.text_content("#tune-best-value")) == pytest.approx(best["value"], rel=1e-3)
    assert result["metric"] in page.text_content("#tune-best-value")
    assert page.text_content("#tune-best-trial").startswith(f"{best['trial']}, best round {best['best_iteration']}")
    best_params = page.text_content("#tune-best-params")
    for name, value in best["params"].items():
        assert f"{name} " in best_params and shown_number(best_params.split(f"{name} ")[1]) == pytest.approx(
            value, rel=1e-3
        )
    href = page.get_attribute("#tune-download-joblib", "href")
    assert href == f"/artifacts/{result['artifact_id']}?format=joblib" and best["artifact_id"] == result["artifact_id"]
    with page.expect_download() as download:
        page.click("#tune-download-joblib")
    assert download.value.suggested_filename == f"{result['artifact_id']}.joblib"
    native = httpx.get(server.url + page.get_attribute("#tune-download-native", "href"))
    assert native.status_code == 200 and native.text.startswith("tree")
    page.locator("#tune").screenshot(path=artifacts_dir() / "dashboard-tune.png")

    # A reload follows the search again from its address, to the same view.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("#tune-status[data-status=succeeded]")
    assert page.evaluate(PATHS) == paths and page.evaluate(ROWS) == rows
    assert dashboard.problems == []


def test_a_running_search_is_cancelled_with_its_button(dashboard: Dashboard):
    page, server = dashboard.page, dashboard.server
    fill_search(dashboard, TABLE, ENDLESS_ROUNDS, n_trials="6", parallel="2", pruner="none")
    tune_id = start_search(dashboard)
    wait_for_tune(dashboard, "t.trials.filter((trial) => trial.rounds > 0).length === 2")
    assert page.text_content("#tune-counts") == "0 of 6 trials done: 0 complete, 0 pruned, 0 failed · 2 running"
    page.click("#tune-cancel")
    page.wait_for_selector("#tune-status[data-status=cancelled]", timeout=30_000)
    assert page.text_content("#tune-status") == "cancelled" and page.is_disabled("#tune-cancel")
    with server.client() as client:
        assert client.get(f"/tunes/{tune_id}").json()["status"] == "cancelled"
        trials = tune_state(dashboard)["trials"]
        assert len(trials) == 2, "no trial started after the cancel"
        for trial in trials:
            job = client.get(f"/jobs/{trial['job_id']}").json()
            assert job["status"] == "cancelled", trial
            assert trial["state"] == "failed" and trial["lastRound"] == job["progress"]["iteration"], trial
    assert server.wait_idle()["queue"]["cpu"]["running"] == 0, "no trial's job is left training"
    assert page.text_content("#tune-counts") == "2 of 6 trials done: 0 complete, 0 pruned, 2 failed"
    assert page.eval_on_selector_all("#leaderboard-body tr", "rows => rows.map((row) => row.cells[1].textContent)") == [
        "failed (stopped)",
        "failed (stopped)",
    ]
    assert page.is_hidden("#tune-download"), "no model to download"
    assert dashboard.problems == []


def test_a_search_is_followed_across_a_restart_of_the_server(
    browser: Any,  # noqa: F811 - test_dashboard's browser
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Killed while its trials train, the server goes on with the search when it starts again: the
    page reconnects by itself (EventSource, sending Last-Event-ID), and each trial's curve starts over
    with its job, ending with every point its restarted job sent, once."""
    port = conftest._free_port()
    monkeypatch.setattr(conftest, "_free_port", lambda: port)  # the restarted server listens where the first did
    rounds = 6000
    with running_server_process(tmp_path, "--cpu-jobs", "2") as first, open_dashboard(browser, first) as dashboard:
        page = dashboard.page
        fill_search(dashboard, TABLE, rounds, n_trials="2", parallel="2", pruner="none")
        tune_id = start_search(dashboard)
        wait_for_tune(dashboard, "t.trials.filter((trial) => trial.rounds > 1).length === 2")
        first.process.kill()
        first.process.wait()
        page.wait_for_selector("#tune-connection:text('reconnecting')")
        with running_server_process(tmp_path, "--cpu-jobs", "2") as second:
            page.wait_for_selector("#tune-status[data-status=succeeded]", timeout=60_000)
            events = tune_events(second, tune_id)
            state = tune_state(dashboard)
            with second.client() as client:
                jobs = {trial["trial"]: client.get(f"/jobs/{trial['job_id']}").json() for trial in state["trials"]}
        kinds = [event.type for event in events]
        assert kinds.count("restarted") == 1 and kinds.count("trial_restarted") == 2, kinds
        assert "restarted" in page.text_content("#tune-meta")
        assert (state["connections"], state["lastEventId"]) == (1, len(events)), "EventSource reconnected by itself"
        curves = page.evaluate("window.__boostream.tuneCurves()")
        assert {int(trial): curve for trial, curve in curves.items()} == sent_curves(events, state["metric"])
        for trial in state["trials"]:
            assert trial["state"] == "complete", trial
            assert trial["lastRound"] == rounds == jobs[trial["trial"]]["progress"]["iteration"], trial
        assert sorted(path["rounds"] for path in page.evaluate(PATHS)) == [rounds, rounds]
    assert [
        problem
        for problem in dashboard.problems
        if not problem.startswith("console: Failed to load resource: net::ERR_")
    ] == []


def test_a_table_with_text_is_searched_with_its_text_as_categories(dashboard: Dashboard, tmp_path: Path):
    """A CSV of one's own, a column of words among its features: the page names it as a categorical
    feature of the dataset it uploads (a CSV's text is a category only where named), and the best
    model has it so; the unnamed index column is left out, as the target list leaves it out."""
    path = tmp_path / "fruit.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["", "grams", "colour", TARGET])  # an unnamed index column, left out
        for i in range(120):
            colour = ("red", "green", "yellow, ripe")[i % 3]
            writer.writerow([i, "" if i % 17 == 0 else 100 + i % 13, colour, "sweet" if i % 3 else "sour"])
    page = dashboard.page
    page.select_option("#table", "")
    page.set_input_files("#file", path)
    page.wait_for_function(f"() => document.querySelector('#target').value === {TARGET!r}")
    page.select_option("#objective", "binary")
    page.fill("#param-n_estimators", "20")
    page.fill("#n_trials", "2")
    page.fill("#valid_fraction", "0.25")
    tune_id = start_search(dashboard)
    page.wait_for_selector("#tune-status[data-status=succeeded]", timeout=30_000)
    assert page.text_content("#tune-counts") == "2 of 2 trials done: 2 complete, 0 pruned, 0 failed"
    with dashboard.server.client() as client:
        assert client.get(f"/tunes/{tune_id}/result").json()["trials"]["complete"] == 2
    model = httpx.get(dashboard.server.url + page.get_attribute("#tune-download-native", "href")).text
    assert "\nfeature_names=grams colour\n" in model
    assert '["green", "red", "yellow, ripe"]' in model.split("pandas_categorical:")[1]
    assert dashboard.problems == []


def test_a_refused_search_is_explained_next_to_the_form(dashboard: Dashboard, tmp_path: Path):
    page = dashboard.page
    page.select_option("#table", TABLE)
    page.wait_for_function(f"() => document.querySelector('#target').value === {TARGET!r}")
    page.fill("#search-num_leaves-low", "200")  # above its high, 128
    page.click("#search-start")
    page.wait_for_selector("#search-num_leaves-low[aria-invalid=true]")
    assert page.text_content("#form-error") == "search.num_leaves: low (200) must be below high (128)"
    assert page.is_hidden("#tune") and tune_state(dashboard)["tuneId"] is None
    assert dashboard.problems and all("422" in problem for problem in dashboard.problems), dashboard.problems

    assert datasets_left(dashboard.server) == [], "the dataset of a refused search is deleted"

    # A target the table does not have: the server names it (as the search's dataset.target).
    dashboard.problems.clear()
    page.fill("#search-num_leaves-low", "8")
    page.fill("#target", "nope")
    page.click("#search-start")
    page.wait_for_selector("#target[aria-invalid=true]")
    assert page.text_content("#form-error").startswith("dataset.target: the table has no column 'nope'")
    assert page.get_attribute("#search-num_leaves-low", "aria-invalid") is None
    assert page.is_hidden("#tune") and datasets_left(dashboard.server) == []
    assert dashboard.problems and all("422" in problem or "400" in problem for problem in dashboard.problems)

    # A file the server cannot read as Parquet: refused as it is uploaded, the file marked.
    dashboard.problems.clear()
    path = tmp_path / "table.parquet"
    path.write_bytes(b"PAR1")
    page.select_option("#table", "")
    page.set_input_files("#file", path)
    page.fill("#target", TARGET)
    page.click("#search-start")
    page.wait_for_selector("#file[aria-invalid=true]")
    assert page.text_content("#form-error").startswith("file: ")
    assert page.is_hidden("#tune") and tune_state(dashboard)["tuneId"] is None
    assert datasets_left(dashboard.server) == []
    assert dashboard.problems and all("400" in problem for problem in dashboard.problems), dashboard.problems


def test_a_parquet_file_is_searched(dashboard: Dashboard, tmp_path: Path):
    """A Parquet file of one's own (a demo table written by pyarrow), its target named by hand: the
    page uploads it as it is, and the best model's features are the file's other columns."""
    path = tmp_path / "iris.parquet"
    table = pcsv.read_csv(DEMO / "iris.csv")
    pq.write_table(table, path)
    target = "species"
    page = dashboard.page
    page.select_option("#table", "")
    page.set_input_files("#file", path)
    page.fill("#target", target)
    page.select_option("#objective", "multiclass")
    page.fill("#param-n_estimators", "20")
    page.fill("#n_trials", "2")
    tune_id = start_search(dashboard)
    page.wait_for_selector("#tune-status[data-status=succeeded]", timeout=30_000)
    assert page.text_content("#tune-counts") == "2 of 2 trials done: 2 complete, 0 pruned, 0 failed"
    with dashboard.server.client() as client:
        result = client.get(f"/tunes/{tune_id}/result").json()
    assert result["trials"]["complete"] == 2 and result["metric"] == "valid_multi_logloss"
    model = httpx.get(dashboard.server.url + page.get_attribute("#tune-download-native", "href")).text
    features = [name for name in table.column_names if name != target]
    assert f"\nfeature_names={' '.join(features)}\n" in model
    assert dashboard.problems == []
