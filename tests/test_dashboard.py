"""The dashboard at `/`: served whole by the app (nothing from elsewhere), and driven in a real
Chromium through Playwright: start a job on a bundled demo table and watch it to its end, with one
point per round on its chart; cancel one; open a finished one from the list; lose the connection
mid-job without a gap or a duplicate; see where early stopping left the model; and find the figures
of the panel and of the jobs list the same, live and once a job has ended; train on a CSV of one's
own with a column of text, that column a categorical feature of the model.

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import conftest
from conftest import Server, running_server_process, start_server

ROOT = Path(__file__).resolve().parent.parent
DEMOS = {
    "diabetes.csv": ("progression", "regression"),
    "breast_cancer.csv": ("diagnosis", "binary"),
    "iris.csv": ("species", "multiclass"),
}
# A demo job that trains for a few seconds (a round takes about a third of a millisecond), so that
# its progress can be seen, about ten rounds a second.
WATCHED = {"n_estimators": 10_000, "learning_rate": 0.002, "num_leaves": 7}
ENDLESS = {"n_estimators": 100_000, "learning_rate": 0.001}
# Stops after a few dozen rounds: the validation loss stops improving long before round 2000.
EARLY_STOPPED = {"n_estimators": 2000, "early_stopping_rounds": 5}
STATE = "window.__boostream.state()"
# What the panel shows, read at one instant: the status, the round ("N of T ..."), the percent, the
# number of points of each of the chart's curves, and the open job's row in the jobs list.
SHOWN = """(() => {
  const text = (query) => document.querySelector(query)?.textContent ?? null;
  const id = window.__boostream.state().jobId;
  const row = document.querySelector(`tr[data-job="${id}"]`);
  return {
    status: document.querySelector('#job-status').dataset.status, round: parseInt(text('#job-round')),
    percent: text('#job-percent'), bar: document.querySelector('#job-progress').value, eta: text('#job-eta'),
    points: Object.fromEntries([...document.querySelectorAll('#chart path.series')]
      .map((path) => [path.dataset.name, Number(path.dataset.rounds)])),
    row: row && {status: row.querySelector('.status').dataset.status, progress: row.cells[4].textContent},
  };
})()"""
JOBS_REFRESH_LIVE_MS = 1000  # dashboard.js: how often the jobs list is polled while a listed job waits or trains


def artifacts_dir() -> Path:
    directory = Path(os.environ.get("BOOSTREAM_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own, so that its jobs list holds only this module's jobs."""
    yield from start_server(tmp_path_factory.mktemp("dashboard"), cpu_jobs=2, heartbeat_s=0.5)


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
        uploaded = client.post(
            "/datasets", params={"name": demo}, content=table.content, headers={"content-type": "text/csv"}
        )
        assert uploaded.status_code == 201, uploaded.text
        dataset_id = uploaded.json()["dataset_id"]
        fields = {
            "dataset_id": dataset_id,
            "target": target,
            "objective": objective,
            "valid_fraction": "0.2",
            "n_estimators": "20",
        }
        created = client.post("/jobs", params=fields)  # no body: the table is the dataset's
        assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert created.status_code == 202, created.text
    assert dashboard_server.wait_for_job(created.json()["job_id"])["status"] == "succeeded"


# In a real browser.


def find_chromium() -> str | None:
    for name in (os.environ.get("BOOSTREAM_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed: pip install -e '.[test]'"
    )
    executable = find_chromium()
    with sync_api.sync_playwright() as playwright:
        if executable is None and not Path(playwright.chromium.executable_path).exists():
            pytest.skip(
                "no Chromium to drive: install Debian's (apt-get install "
                "chromium, as .ci/run does) or run `playwright install chromium`"
            )
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
            "(before) => window.__boostream.state().jobId !== before "
            "|| document.querySelector('#form-error').textContent",
            arg=before,
        )
        assert self.page.text_content("#form-error") == ""
        return self.state()["jobId"]

    def shown(self) -> dict[str, Any]:
        return self.page.evaluate(SHOWN)

    def chart_rounds(self) -> dict[str, Any]:
        """The rounds behind the chart and their metrics: `{"iterations": [...], "metrics": {name: [...]}}`."""
        return self.page.evaluate("window.__boostream.curve?.() ?? null")

    def catch_up_while_running(self, rounds: int) -> dict[str, Any]:
        """What the panel shows once it has charted at least `rounds` rounds, at an instant when each curve
        has one point for every round up to the one shown (not one drawn behind) while the job runs;
        what it shows when the job ended before such an instant. Before its stream's first event the
        panel reads `…` (then `queued`): it is waited past, not taken for an end."""
        return self.wait_until(
            f"(c => (['succeeded', 'failed', 'cancelled'].includes(c.status) || c.status === 'running'"
            f" && c.round >= {rounds} && Object.keys(c.points).length > 0"
            f" && Object.values(c.points).every((n) => n === c.round)) && c)({SHOWN})"
        )

    def curves(self, rounds: int | None = None) -> dict[str, int]:
        """The chart's curves: their names and how many rounds each draws, once it draws `rounds` (or
        after 10 s, for the assertion that follows to show what it drew)."""
        from playwright.sync_api import TimeoutError as Timeout  # only here: without Playwright, the browser tests skip

        if rounds is not None:  # it draws at the next animation frame
            with contextlib.suppress(Timeout):
                self.wait_until(
                    f"[...document.querySelectorAll('#chart path.series')].every(p => p.dataset.rounds === '{rounds}')",
                    timeout_s=10,
                )
        return dict(
            self.page.eval_on_selector_all(
                "#chart path.series", "paths => paths.map(p => [p.dataset.name, Number(p.dataset.rounds)])"
            )
        )

    def drawn_points(self) -> dict[str, int]:
        """How many points each curve's path has (every round, or a few per pixel column)."""
        paths = self.page.eval_on_selector_all(
            "#chart path.series", "paths => paths.map(p => [p.dataset.name, p.getAttribute('d')])"
        )
        return {name: len(re.findall(r"[ML]", d)) for name, d in paths}


@contextlib.contextmanager
def open_dashboard(browser: Any, server: Server, paused_clock: bool = False) -> Iterator[Dashboard]:
    """A fresh page on the dashboard; with `paused_clock`, its timers fire only when the test runs the clock."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    if paused_clock:
        page.clock.install()
        page.clock.pause_at(time.time() + 1)
    dashboard = Dashboard(page, server, [])
    page.on(
        "console", lambda message: message.type == "error" and dashboard.problems.append(f"console: {message.text}")
    )
    page.on("pageerror", lambda error: dashboard.problems.append(f"script error: {error}"))
    page.on(
        "request",
        lambda request: (
            request.url.startswith((server.url + "/", "data:"))
            or dashboard.problems.append(f"request elsewhere: {request.url}")
        ),
    )
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


def sent_rounds(server: Server, job_id: str) -> dict[str, Any]:
    """Every round's metrics as the job's progress events carried them (their `history`), from its last
    (re)start: what its chart must show, in the shape of `Dashboard.chart_rounds`."""
    events = server.events(job_id)
    starts = [i for i, event in enumerate(events) if event.type == "started"]
    rounds: dict[str, Any] = {"iterations": [], "metrics": {}}
    for event in events[starts[-1] :]:
        if event.type == "progress":
            history = event.data["history"]
            count = max(len(values) for values in history["metrics"].values())
            rounds["iterations"] += range(history["first"], history["first"] + count)
            for name, values in history["metrics"].items():
                rounds["metrics"].setdefault(name, []).extend(values)
    return rounds


def terminal_event(server: Server, job_id: str) -> Any:
    return server.events(job_id)[-1]


def every_round(count: int) -> list[int]:
    return list(range(1, count + 1))


def first_rounds(rounds: dict[str, Any], count: int) -> dict[str, Any]:
    """The first `count` rounds of `sent_rounds`."""
    return {
        "iterations": rounds["iterations"][:count],
        "metrics": {name: values[:count] for name, values in rounds["metrics"].items()},
    }


def test_a_job_on_a_demo_table_is_watched_live_to_its_model(dashboard: Dashboard):
    page = dashboard.page
    rounds = WATCHED["n_estimators"]
    job_id = dashboard.start_job("diabetes.csv", **WATCHED)
    training = dashboard.catch_up_while_running(100)  # a progress event carries a few hundred rounds
    assert training["status"] == "running", f"the chart never had a point for every round so far: {training}"
    assert 0 < float(training["percent"].rstrip("%")) < 100 and training["eta"].endswith(" s")
    assert set(training["points"]) == {"train_l2", "valid_l2"}
    so_far = dashboard.chart_rounds()
    assert so_far["iterations"] == every_round(len(so_far["iterations"])), "each round once, in order, from the first"
    dashboard.wait_until(f"s.rounds > {len(so_far['iterations'])}")  # and more rounds arrive

    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=60_000)
    assert page.text_content("#job-percent") == "100.0%"
    assert page.text_content("#job-round") == f"{rounds} of {rounds}"
    assert dashboard.curves(rounds) == {"train_l2": rounds, "valid_l2": rounds}
    # 10,000 rounds on a plot some 560 pixels wide: a few points per pixel column, not one per round.
    assert all(600 <= points <= 4 * 560 for points in dashboard.drawn_points().values()), dashboard.drawn_points()
    sent = sent_rounds(dashboard.server, job_id)
    assert sent["iterations"] == every_round(rounds)
    assert dashboard.chart_rounds() == sent
    count = len(so_far["iterations"])  # what was charted while it trained: the rounds the server sent, as it sent them
    assert so_far == first_rounds(sent, count)
    assert page.query_selector("#chart .best-round") is None, "no early stopping, no best-round marker"
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
    page = dashboard.page
    job_id = dashboard.start_job("iris.csv", **ENDLESS)
    running = dashboard.wait_until(f"s.lastRound >= 2 && {SHOWN}")
    assert running["eta"].endswith(" s")
    page.click("#cancel")
    page.wait_for_selector("#job-status[data-status=cancelled]", timeout=30_000)
    assert page.is_disabled("#cancel")
    assert "cancelled after round" in page.text_content("#job-meta")
    assert dashboard.server.job(job_id)["status"] == "cancelled"
    page.wait_for_selector(f'tr[data-job="{job_id}"] .status[data-status=cancelled]')
    shown = dashboard.shown()
    assert shown["eta"] == "–", "nothing is left to wait for"
    assert shown["row"] == {"status": "cancelled", "progress": shown["percent"]}
    assert 0 < shown["bar"] < 100 and shown["percent"] != "100.0%"

    # A cancelled job has no final curve: its chart is what the progress events carried, every round once.
    trained = sent_rounds(dashboard.server, job_id)
    assert trained["iterations"] == every_round(len(trained["iterations"]))
    for opened_by in ("the stream it was watched on", "the list, after a reload"):
        count = len(trained["iterations"])
        assert dashboard.curves(count) == {"train_multi_logloss": count, "valid_multi_logloss": count}, opened_by
        assert dashboard.chart_rounds() == trained, opened_by
        page.goto(dashboard.server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        page.click(f'tr[data-job="{job_id}"] button')
        page.wait_for_selector("#job-status[data-status=cancelled]")
        dashboard.wait_until(
            f"!s.open && s.lastEventId === {len(dashboard.server.events(job_id))}"
        )  # the replay reached its end
    assert dashboard.shown()["eta"] == "–"
    assert dashboard.problems == []


def test_a_300_round_job_has_300_points_on_each_curve(dashboard: Dashboard):
    """About three progress events carry the 300 rounds: the chart draws every one of them."""
    job_id = dashboard.start_job("diabetes.csv", n_estimators=300)
    dashboard.page.wait_for_selector("#job-status[data-status=succeeded]", timeout=30_000)
    assert dashboard.curves(300) == {"train_l2": 300, "valid_l2": 300}
    assert dashboard.drawn_points() == {"train_l2": 300, "valid_l2": 300}, (
        "fewer rounds than pixels: every one is a point"
    )
    assert dashboard.chart_rounds()["iterations"] == every_round(300)
    assert dashboard.page.text_content("#job-round") == "300 of 300"
    assert len(dashboard.server.events(job_id)) < 10, "far fewer events than rounds"
    assert dashboard.problems == []


def test_a_finished_job_opened_from_the_list_replays_its_curve(dashboard: Dashboard, diabetes):
    X, y = diabetes
    job_id = dashboard.server.create_job(
        {"X": X.tolist(), "y": y.tolist(), "valid_fraction": 0.2, "params": {"n_estimators": 300}}
    )
    dashboard.server.wait_for_job(job_id)
    rounds = sent_rounds(dashboard.server, job_id)
    assert rounds["iterations"] == every_round(300)
    page = dashboard.page
    page.click("#refresh-jobs")
    page.click(f'tr[data-job="{job_id}"] button')
    for opened_by in ("the list", "the address, after a reload"):
        page.wait_for_selector("#job-status[data-status=succeeded]")
        dashboard.wait_until("!s.open")  # the stream ended, and was closed rather than reconnected
        state = dashboard.state()
        assert state["jobId"] == job_id, opened_by
        assert dashboard.curves(300) == {"train_l2": 300, "valid_l2": 300}, opened_by
        assert dashboard.chart_rounds() == rounds, opened_by
        assert dashboard.shown()["row"] == {"status": "succeeded", "progress": "100.0%"}, opened_by
        assert page.is_visible("#download-native")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
    assert dashboard.problems == []


def test_a_dropped_connection_resumes_without_gaps_or_duplicates(dashboard: Dashboard):
    # Three times WATCHED's rounds: a job alone trains on every core now, and in 10,000 rounds (about
    # 5 s) a busy machine's browser sometimes never drew every round so far before the job ended.
    job_id = dashboard.start_job("diabetes.csv", **{**WATCHED, "n_estimators": 30_000})
    charted = 100
    for after in ("0", ""):  # 0 replays every event, all already seen; none resumes after the last event seen
        dashboard.wait_until(f"s.lastRound >= {charted}")
        dashboard.page.evaluate(f"window.__boostream.dropConnection({after})")
        dashboard.wait_until(f"s.connections === {2 if after else 3}")
        shown = dashboard.catch_up_while_running(dashboard.state()["lastRound"] + 1)  # a round that came after the drop
        assert shown["status"] == "running", f"the chart never had a point for every round so far: {shown}"
        so_far = dashboard.chart_rounds()
        assert so_far["iterations"] == every_round(len(so_far["iterations"])), "no gap and no duplicate"
        charted = len(so_far["iterations"]) + 1
    dashboard.page.wait_for_selector("#job-status[data-status=succeeded]", timeout=60_000)
    assert dashboard.state()["connections"] == 3
    sent = sent_rounds(dashboard.server, job_id)
    count = len(so_far["iterations"])
    assert so_far == first_rounds(sent, count)
    assert dashboard.chart_rounds() == sent
    assert dashboard.problems == []


def test_early_stopping_marks_the_best_round_and_the_job_reads_done_everywhere(dashboard: Dashboard):
    page = dashboard.page
    planned = EARLY_STOPPED["n_estimators"]
    job_id = dashboard.start_job("diabetes.csv", **EARLY_STOPPED)
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=30_000)
    complete = terminal_event(dashboard.server, job_id).data
    trained, best = complete["iterations"], complete["best_iteration"]
    assert best < trained < planned, "early stopping ended the job"
    done = f"100.0% (stopped early: {trained} of {planned} rounds)"
    page.wait_for_selector(f'tr[data-job="{job_id}"] .status[data-status=succeeded]')
    for opened_by in ("the stream it was watched on", "the list, in a page loaded afresh"):
        shown = dashboard.shown()
        assert (shown["percent"], shown["bar"], shown["eta"]) == ("100.0%", 100, "–"), opened_by
        assert page.text_content("#job-round") == f"{trained} of {planned} (stopped early, best {best})", opened_by
        assert shown["row"] == {"status": "succeeded", "progress": done}, opened_by
        assert dashboard.curves(trained) == {"train_l2": trained, "valid_l2": trained}, opened_by
        # The marker: a line at the best round, through the best round's point of each curve, and its label.
        marker = page.query_selector("#chart .best-round")
        assert marker is not None, "a marker at the best round"
        assert marker.get_attribute("data-round") == str(best)
        assert marker.text_content() == f"best round {best}"
        line = marker.eval_on_selector("line", "line => [line.x1.baseVal.value, line.x2.baseVal.value]")
        dots = marker.eval_on_selector_all(
            "circle", "dots => dots.map(d => [d.dataset.name, d.cx.baseVal.value, d.cy.baseVal.value])"
        )
        for name, path in page.eval_on_selector_all(
            "#chart path.series", "paths => paths.map(p => [p.dataset.name, p.getAttribute('d')])"
        ):
            points = [(float(x), float(y)) for x, y in re.findall(r"[ML]([-\d.]+),([-\d.]+)", path)]
            x, y = points[best - 1]
            assert line == pytest.approx([x, x], abs=0.1), name
            assert [dot[1:] for dot in dots if dot[0] == name] == [pytest.approx([x, y], abs=0.1)], name
            assert points[-1][0] > x + 5, "the rounds after the best one are drawn to its right"
        page.goto(dashboard.server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        # Before any stream is opened, the list alone says the job is done, whatever round it stopped at.
        assert page.text_content(f'tr[data-job="{job_id}"] td:nth-child(5)') == done
        page.click(f'tr[data-job="{job_id}"] button')
        page.wait_for_selector("#job-status[data-status=succeeded]")
        dashboard.wait_until("!s.open")
    assert dashboard.problems == []


def test_the_open_jobs_row_in_the_list_follows_its_stream(dashboard: Dashboard):
    page = dashboard.page
    job_id = dashboard.start_job("diabetes.csv", **WATCHED)
    page.wait_for_selector(f'tr[data-job="{job_id}"]')
    dashboard.wait_until("s.lastRound >= 100")
    samples = []
    for _ in range(6):
        samples.append(dashboard.shown())
        page.wait_for_timeout(120)
    running = [sample for sample in samples if sample["status"] == "running"]
    assert len(running) >= 3, samples
    for sample in running:
        assert sample["row"] == {"status": "running", "progress": sample["percent"]}, (
            "the row shows what the panel shows"
        )
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=60_000)
    assert dashboard.shown()["row"] == {"status": "succeeded", "progress": "100.0%"}
    assert dashboard.problems == []


def test_the_jobs_list_shows_within_a_second_that_a_job_ended_elsewhere(browser: Any, dashboard_server: Server, iris):
    X, y = iris
    job_id = dashboard_server.create_job(
        {"X": X.tolist(), "y": y.tolist(), "objective": "multiclass", "params": ENDLESS}
    )
    dashboard_server.wait_for_job(job_id, ("running",))
    with open_dashboard(browser, dashboard_server, paused_clock=True) as dashboard:
        page = dashboard.page
        page.wait_for_selector(f'tr[data-job="{job_id}"] .status[data-status=running]')
        with dashboard_server.client() as client:
            assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
        assert dashboard_server.wait_for_job(job_id)["status"] == "cancelled"
        page.clock.run_for(JOBS_REFRESH_LIVE_MS)  # no stream tells the page of this job: its next poll does
        page.wait_for_selector(f'tr[data-job="{job_id}"] .status[data-status=cancelled]', timeout=5_000)
        assert dashboard.problems == []


def test_the_browser_reconnects_by_itself_to_a_restarted_server(
    browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    port = conftest._free_port()
    monkeypatch.setattr(conftest, "_free_port", lambda: port)  # the restarted server listens where the first did
    with running_server_process(tmp_path, "--cpu-jobs", "2") as first, open_dashboard(browser, first) as dashboard:
        job_id = dashboard.start_job("diabetes.csv", **WATCHED)
        dashboard.wait_until("s.lastRound >= 3")
        first.process.kill()
        first.process.wait()
        dashboard.page.wait_for_selector("#connection:text('reconnecting')")
        with running_server_process(tmp_path, "--cpu-jobs", "2") as second:
            dashboard.page.wait_for_selector("#job-status[data-status=succeeded]", timeout=60_000)
            assert "attempt 2" in dashboard.page.text_content("#job-meta")
            assert dashboard.state()["connections"] == 1, "EventSource reconnected by itself, sending Last-Event-ID"
            rounds = WATCHED["n_estimators"]
            assert dashboard.curves(rounds) == {"train_l2": rounds, "valid_l2": rounds}, (
                "only the second attempt's curve"
            )
            assert dashboard.chart_rounds() == sent_rounds(second, job_id)
    # The browser reported the stream cut off and the connections refused while the server was down; nothing else.
    assert [
        problem
        for problem in dashboard.problems
        if not problem.startswith("console: Failed to load resource: net::ERR_")
    ] == []


def test_a_refused_request_is_explained_next_to_the_form(dashboard: Dashboard):
    page = dashboard.page
    page.fill("#param-learning_rate", "0")
    page.click("#start")
    page.wait_for_selector("#param-learning_rate[aria-invalid=true]")
    assert "learning_rate" in page.text_content("#form-error")
    assert dashboard.state()["jobId"] is None
    assert dashboard.problems and all("422" in problem for problem in dashboard.problems), (
        "only the refused request was reported"
    )


def test_unavailable_backends_are_offered_disabled_with_the_reason(dashboard: Dashboard):
    models = httpx.get(dashboard.server.url + "/models").json()["models"]
    options = dashboard.page.eval_on_selector_all(
        "#model_type option", "options => options.map(o => [o.value, o.disabled])"
    )
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
        writer.writerows([*row[2:], label] for row, label in zip(X.tolist(), y, strict=False))
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


def test_a_csv_file_with_text_trains_with_its_text_as_categories(dashboard: Dashboard, tmp_path: Path):
    """A CSV of one's own, a column of words among its features: the page uploads it as a dataset,
    names that column in `categorical` (a CSV's text is a category only where named), the job trains
    with it as a categorical feature, and the dataset is deleted once the job is created."""
    with dashboard.server.client() as client:
        rows = list(csv.reader(io.StringIO(client.get("/ui/demo/diabetes.csv").text)))
    cities = ("Oslo", "Lima", "Porto, Norte")
    path = tmp_path / "patients.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["city", *rows[0]])
        writer.writerows([cities[i % 3], *row] for i, row in enumerate(rows[1:]))
    page = dashboard.page
    page.select_option("#table", "")
    page.set_input_files("#file", path)
    page.wait_for_function("() => document.querySelector('#target').value === 'progression'")
    page.select_option("#objective", "regression")
    page.fill("#param-n_estimators", "20")
    before = dashboard.state()["jobId"]
    page.click("#start")
    page.wait_for_function(
        "(before) => window.__boostream.state().jobId !== before || document.querySelector('#form-error').textContent",
        arg=before,
    )
    assert page.text_content("#form-error") == ""
    job_id = dashboard.state()["jobId"]
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=30_000)
    artifact_id = dashboard.server.job(job_id)["artifact_id"]
    with dashboard.server.client() as client:
        metadata = client.get(f"/artifacts/{artifact_id}/metadata").json()
        model = client.get(f"/artifacts/{artifact_id}", params={"format": "native"}).text
        assert client.get("/datasets").json()["datasets"] == [], "the page deleted its dataset once the job was created"
    assert metadata["feature_names"] == ["city", *rows[0][:-1]]
    assert f"\nfeature_names={' '.join(metadata['feature_names'])}\n" in model
    assert '["Lima", "Oslo", "Porto, Norte"]' in model.split("pandas_categorical:")[1]
    assert dashboard.problems == []


def test_on_a_server_with_keys_the_page_signs_in_once_and_watches_its_own_jobs(browser: Any, tmp_path: Path):
    from test_access import make_key

    with conftest.running_server(tmp_path, heartbeat_s=0.5) as server:
        key = make_key(server.data_dir, "ada")
        other = make_key(server.data_dir, "bob")
        with server.client(headers={"authorization": f"Bearer {other}"}) as client:
            table = client.get("/ui/demo/iris.csv").content
            fields = {"target": "species", "objective": "multiclass", "n_estimators": "5"}
            created = client.post("/jobs", params=fields, content=table, headers={"content-type": "text/csv"})
            bobs = created.json()["job_id"]
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(server.url + "/")
            page.wait_for_selector("#sign-in:not([hidden])")
            page.fill("#api-key", "bst_wrong")
            page.click("#sign-in button")
            page.wait_for_function("() => document.querySelector('#sign-in-error').textContent")
            assert "not valid" in page.text_content("#sign-in-error")
            page.fill("#api-key", key)
            page.click("#sign-in button")
            page.wait_for_selector("body[data-ready=true]")
            assert page.is_hidden("#sign-in") and page.text_content("#who-name") == "ada"
            cookie = next(c for c in context.cookies() if c["name"] == "boostream_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            dashboard = Dashboard(page, server, [])
            job_id = dashboard.start_job("diabetes.csv", n_estimators=30)
            page.wait_for_selector("#job-status[data-status=succeeded]", timeout=60_000)  # followed by EventSource
            listed = page.eval_on_selector_all("#jobs-body tr", "rows => rows.map((row) => row.dataset.job)")
            assert job_id in listed and bobs not in listed, "the list shows this key's jobs only"
            page.reload()
            page.wait_for_selector("body[data-ready=true]")
            assert page.is_hidden("#sign-in"), "the session outlives a reload"
            page.click("#sign-out")
            page.wait_for_selector("#sign-in:not([hidden])")
        finally:
            context.close()
