"""The dashboard at `/`: served whole by the app (nothing from elsewhere), and driven in a real
Chromium through Playwright: start a job on a bundled demo table and watch it to its end, cancel one,
open a finished one from the list, and lose the connection mid-job without a gap or a duplicate.

The browser is Debian's `chromium` (`.ci/run` installs it), another on PATH named by
`$BOOSTREAM_CHROMIUM`, or Playwright's own; where there is none, or no Playwright, the browser tests
skip and say why. The finished job's screenshot is saved as a test artefact:
`$BOOSTREAM_TEST_ARTIFACTS/dashboard.png` (default `test-artifacts/` in the repository).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import conftest
from conftest import Server, running_server, start_server

ROOT = Path(__file__).resolve().parent.parent
DEMOS = {"diabetes.csv": ("progression", "regression"), "breast_cancer.csv": ("diagnosis", "binary"), "iris.csv": ("species", "multiclass")}
# A demo job that trains for a few seconds (a round takes about a third of a millisecond), so that
# its progress can be seen, about ten rounds a second.
WATCHED = {"n_estimators": 10_000, "learning_rate": 0.002, "num_leaves": 7}
ENDLESS = {"n_estimators": 100_000, "learning_rate": 0.001}
STATE = "window.__boostream.state()"


def artifacts_dir() -> Path:
    directory = Path(os.environ.get("BOOSTREAM_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own, so that its jobs list holds only this module's jobs."""
    yield from start_server(tmp_path_factory.mktemp("dashboard"), "--cpu-jobs", "2", "--heartbeat-s", "0.5")


# Served by the app itself: no browser needed.


def test_the_page_and_everything_it_loads_come_from_the_app(dashboard_server: Server):
    with dashboard_server.client() as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert links and all(link.startswith("/ui/") or link == "data:," for link in links), links
        for link in links:
            if link.startswith("/ui/"):
                asset = client.get(link)
                assert asset.status_code == 200, link
                assert asset.headers["cache-control"] == "no-cache"
                again = client.get(link, headers={"if-none-match": asset.headers["etag"]})
                assert again.status_code == 304, "a cached asset is revalidated, not sent again"
        assert client.get("/ui/dashboard.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/nothing.js").status_code == 404


@pytest.mark.parametrize("demo", list(DEMOS))
def test_each_demo_table_trains_as_the_dashboard_sends_it(dashboard_server: Server, demo: str):
    target, objective = DEMOS[demo]
    with dashboard_server.client() as client:
        table = client.get(f"/ui/demo/{demo}")
        assert table.headers["content-type"].startswith("text/csv")
        assert next(csv.reader(io.StringIO(table.text)))[-1] == target
        fields = {"target": target, "objective": objective, "valid_fraction": "0.2", "n_estimators": "20"}
        created = client.post("/jobs", params=fields, content=table.content, headers={"content-type": "text/csv"})
    assert created.status_code == 202, created.text
    assert dashboard_server.wait_for_job(created.json()["job_id"])["status"] == "succeeded"


# In a real browser.


def find_chromium() -> Optional[str]:
    for name in (os.environ.get("BOOSTREAM_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[test]'")
    executable = find_chromium()
    with sync_api.sync_playwright() as playwright:
        if executable is None and not Path(playwright.chromium.executable_path).exists():
            pytest.skip("no Chromium to drive: install Debian's (apt-get install chromium, as .ci/run does) or run `playwright install chromium`")
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@dataclasses.dataclass
class Dashboard:
    page: Any  # playwright.sync_api.Page
    server: Server
    problems: list[str]  # script errors, console errors, requests that left the server

    def state(self) -> dict[str, Any]:
        return self.page.evaluate(STATE)

    def wait_until(self, condition: str, timeout_s: float = 60) -> Any:
        """Wait until the JavaScript expression `condition` holds (`s` is the dashboard's state, `$` finds
        an element's text); its value then."""
        script = f"() => {{ const s = {STATE}, $ = (q) => document.querySelector(q).textContent; return {condition}; }}"
        return self.page.wait_for_function(script, timeout=timeout_s * 1000).json_value()

    def start_job(self, table: str = "diabetes.csv", **params: Any) -> str:
        before = self.state()["jobId"]
        self.page.select_option("#table", table)
        if table in DEMOS:
            self.page.wait_for_function(f"() => document.querySelector('#target').value === {DEMOS[table][0]!r}")
        for name, value in params.items():
            self.page.fill(f"#param-{name}", str(value))
        self.page.click("#start")
        self.page.wait_for_function(
            "(before) => window.__boostream.state().jobId !== before || document.querySelector('#form-error').textContent", arg=before
        )
        assert self.page.text_content("#form-error") == ""
        return self.state()["jobId"]

    def curves(self, points: Optional[int] = None) -> dict[str, int]:
        """The chart's curves: their names and how many points each has, once it has drawn `points`."""
        if points is not None:  # it draws at the next animation frame
            self.wait_until(f"[...document.querySelectorAll('#chart path.series')].every(p => p.getAttribute('d').match(/[ML]/g).length === {points})")
        paths = self.page.eval_on_selector_all("#chart path.series", "paths => paths.map(p => [p.dataset.name, p.getAttribute('d')])")
        return {name: len(re.findall(r"[ML]", d)) for name, d in paths}


@contextlib.contextmanager
def open_dashboard(browser: Any, server: Server) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    dashboard = Dashboard(page, server, [])
    page.on("console", lambda message: message.type == "error" and dashboard.problems.append(f"console: {message.text}"))
    page.on("pageerror", lambda error: dashboard.problems.append(f"script error: {error}"))
    page.on("request", lambda request: request.url.startswith((server.url + "/", "data:")) or dashboard.problems.append(f"request elsewhere: {request.url}"))
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        yield dashboard
    finally:
        context.close()


@pytest.fixture
def dashboard(browser: Any, dashboard_server: Server) -> Iterator[Dashboard]:
    with open_dashboard(browser, dashboard_server) as dashboard:
        yield dashboard


def progress_iterations(server: Server, job_id: str) -> list[int]:
    """The rounds of a job's progress events, from its last (re)start: what its chart must show."""
    events = server.events(job_id)
    starts = [i for i, event in enumerate(events) if event.event == "started"]
    return [event.data["iteration"] for event in events[starts[-1] :] if event.event == "progress"]


def test_a_job_on_a_demo_table_is_watched_live_to_its_model(dashboard: Dashboard):
    page = dashboard.page
    job_id = dashboard.start_job("diabetes.csv", **WATCHED)
    training = dashboard.wait_until("s.status === 'running' && s.points.length >= 3 && {points: s.points.length, percent: $('#job-percent'), eta: $('#job-eta')}")
    assert 0 < float(training["percent"].rstrip("%")) < 100 and training["eta"].endswith(" s")
    assert set(dashboard.curves()) == {"train_l2", "valid_l2"}
    dashboard.wait_until(f"s.points.length > {training['points']}")  # and more rounds arrive

    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=60_000)
    assert page.text_content("#job-percent") == "100.0%"
    assert page.text_content("#job-round") == f"{WATCHED['n_estimators']} of {WATCHED['n_estimators']}"
    iterations = progress_iterations(dashboard.server, job_id)
    assert [point["iteration"] for point in dashboard.state()["points"]] == iterations
    assert dashboard.curves(len(iterations)) == {"train_l2": len(iterations), "valid_l2": len(iterations)}
    final = page.inner_text("#final-metrics")
    assert "train_l2" in final and "valid_l2" in final and "best round" in final
    artifact_id = dashboard.server.job(job_id)["artifact_id"]
    with page.expect_download() as download:
        page.click("#download-joblib")
    assert download.value.suggested_filename == f"{artifact_id}.joblib"
    native = httpx.get(dashboard.server.url + page.get_attribute("#download-native", "href"))
    assert native.status_code == 200 and native.text.startswith("tree")
    page.wait_for_selector(f'tr[data-job="{job_id}"][aria-current] .status[data-status=succeeded]')
    page.screenshot(path=artifacts_dir() / "dashboard.png", full_page=True)
    assert dashboard.problems == []


def test_a_running_job_is_cancelled_with_its_button(dashboard: Dashboard):
    job_id = dashboard.start_job("iris.csv", **ENDLESS)
    dashboard.wait_until("s.points.length >= 2")
    dashboard.page.click("#cancel")
    dashboard.page.wait_for_selector("#job-status[data-status=cancelled]", timeout=30_000)
    assert dashboard.page.is_disabled("#cancel")
    assert "cancelled after round" in dashboard.page.text_content("#job-meta")
    assert dashboard.server.job(job_id)["status"] == "cancelled"
    dashboard.page.wait_for_selector(f'tr[data-job="{job_id}"] .status[data-status=cancelled]')
    assert dashboard.problems == []


def test_a_finished_job_opened_from_the_list_replays_its_curve(dashboard: Dashboard, diabetes):
    X, y = diabetes
    job_id = dashboard.server.create_job({"X": X.tolist(), "y": y.tolist(), "valid_fraction": 0.2, "params": {"n_estimators": 1000}})
    dashboard.server.wait_for_job(job_id)
    iterations = progress_iterations(dashboard.server, job_id)
    page = dashboard.page
    page.click("#refresh-jobs")
    page.click(f'tr[data-job="{job_id}"] button')
    for opened_by in ("the list", "the address, after a reload"):
        page.wait_for_selector("#job-status[data-status=succeeded]")
        dashboard.wait_until("!s.open")  # the stream ended, and was closed rather than reconnected
        state = dashboard.state()
        assert state["jobId"] == job_id, opened_by
        assert [point["iteration"] for point in state["points"]] == iterations, opened_by
        assert dashboard.curves(len(iterations)) == {"train_l2": len(iterations), "valid_l2": len(iterations)}
        assert page.is_visible("#download-native")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
    assert dashboard.problems == []


def test_a_dropped_connection_resumes_without_gaps_or_duplicates(dashboard: Dashboard):
    job_id = dashboard.start_job("diabetes.csv", **WATCHED)
    dashboard.wait_until("s.points.length >= 3")
    dashboard.page.evaluate("window.__boostream.dropConnection(0)")  # replays every event: all already seen
    dashboard.wait_until("s.points.length >= 6")
    dashboard.page.evaluate("window.__boostream.dropConnection()")  # resumes after the last event seen
    dashboard.page.wait_for_selector("#job-status[data-status=succeeded]", timeout=60_000)
    state = dashboard.state()
    assert state["connections"] == 3
    assert [point["iteration"] for point in state["points"]] == progress_iterations(dashboard.server, job_id)
    assert dashboard.problems == []


def test_the_browser_reconnects_by_itself_to_a_restarted_server(browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    port = conftest._free_port()
    monkeypatch.setattr(conftest, "_free_port", lambda: port)  # the restarted server listens where the first did
    with running_server(tmp_path, "--cpu-jobs", "2") as first, open_dashboard(browser, first) as dashboard:
        job_id = dashboard.start_job("diabetes.csv", **WATCHED)
        dashboard.wait_until("s.points.length >= 3")
        first.process.kill()
        first.process.wait()
        dashboard.page.wait_for_selector("#connection:text('reconnecting')")
        with running_server(tmp_path, "--cpu-jobs", "2") as second:
            dashboard.page.wait_for_selector("#job-status[data-status=succeeded]", timeout=60_000)
            assert "attempt 2" in dashboard.page.text_content("#job-meta")
            state = dashboard.state()
            assert state["connections"] == 1, "EventSource reconnected by itself, sending Last-Event-ID"
            assert [point["iteration"] for point in state["points"]] == progress_iterations(second, job_id), "only the second attempt's curve"
    # The browser reported the stream cut off and the connections refused while the server was down; nothing else.
    assert [problem for problem in dashboard.problems if not problem.startswith("console: Failed to load resource: net::ERR_")] == []


def test_a_refused_request_is_explained_next_to_the_form(dashboard: Dashboard):
    page = dashboard.page
    page.fill("#param-learning_rate", "0")
    page.click("#start")
    page.wait_for_selector("#param-learning_rate[aria-invalid=true]")
    assert "learning_rate" in page.text_content("#form-error")
    assert dashboard.state()["jobId"] is None
    assert all("422" in problem for problem in dashboard.problems), "only the refused request was reported"


def test_unavailable_backends_are_offered_disabled_with_the_reason(dashboard: Dashboard):
    models = httpx.get(dashboard.server.url + "/models").json()["models"]
    options = dashboard.page.eval_on_selector_all("#model_type option", "options => options.map(o => [o.value, o.disabled])")
    assert options == [[model["model_type"], not model["available"]] for model in models]
    note = dashboard.page.text_content("#backend-note")
    for model in models:
        assert (model.get("reason") or "") in note
    assert dashboard.problems == []


def test_a_parquet_file_of_ones_own_trains_with_the_named_target(dashboard: Dashboard, iris, tmp_path: Path):
    X, y = iris
    path = tmp_path / "flowers.parquet"
    pq.write_table(pa.table({"kind": y, **{f"x{i}": X[:, i] for i in range(X.shape[1])}}), path)
    page = dashboard.page
    page.select_option("#table", "")
    page.set_input_files("#file", path)
    page.select_option("#objective", "multiclass")
    page.fill("#target", "kind")
    page.fill("#param-n_estimators", "30")
    page.click("#start")
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=30_000)
    assert set(dashboard.curves()) == {"train_multi_logloss", "valid_multi_logloss"}
    assert dashboard.problems == []


def test_a_csv_file_of_ones_own_offers_its_header_as_target_columns(dashboard: Dashboard, iris, tmp_path: Path):
    X, y = iris
    path = tmp_path / "flowers.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file, quoting=csv.QUOTE_ALL)
        writer.writerow(["petal length", "petal width", "kind"])
        writer.writerows([*row[2:], label] for row, label in zip(X.tolist(), y))
    page = dashboard.page
    page.select_option("#table", "")
    page.set_input_files("#file", path)
    page.wait_for_function("() => document.querySelector('#target').value === 'kind'")
    options = page.eval_on_selector_all("#columns option", "options => options.map(o => o.value)")
    assert options == ["petal length", "petal width", "kind"]
    page.select_option("#objective", "multiclass")
    page.fill("#param-n_estimators", "30")
    page.click("#start")
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=30_000)
    assert dashboard.problems == []
