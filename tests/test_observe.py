"""What an operator watches: GET /metrics (Prometheus's text format) and the access log, one JSON
line per request."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from test_access import bearer, make_key
from test_jobs import body_for

from conftest import parse_sse, running_server


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, parsed by the client library's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_jobs_training_and_events(tmp_path: Path, diabetes):
    body = body_for(diabetes, 20)
    with running_server(tmp_path) as server, server.client() as client:
        with client.stream("POST", "/train/stream", json=body) as stream:
            streamed = list(parse_sse(stream.iter_lines()))
        job_id = client.post("/jobs", json=body).json()["job_id"]
        server.wait_for_job(job_id)
        assert client.get("/nowhere").status_code == 404
        page = client.get("/metrics")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain; version=0.0.4")
        found = samples(page.text)
    assert found[("boostream_jobs", (("backend", "lightgbm"), ("status", "succeeded")))] == 2
    assert found[("boostream_training_rounds", (("backend", "lightgbm"),))] == 40
    assert found[("boostream_training_seconds", (("backend", "lightgbm"),))] > 0
    assert found[("boostream_training_rounds_per_second", (("backend", "lightgbm"),))] > 0
    assert found[("boostream_events_sent_total", ())] >= len(streamed)
    assert found[("boostream_event_streams", ())] == 0, "the stream ended"
    assert found[("boostream_ingest_bytes_total", ())] == 2 * len(httpx.Request("POST", "/", json=body).read())
    jobs_posted = (("method", "POST"), ("route", "/jobs"), ("status", "202"))
    assert found[("boostream_http_requests_total", jobs_posted)] == 1
    assert found[("boostream_http_requests_total", (("method", "GET"), ("route", "other"), ("status", "404")))] == 1
    assert not any("job_id" in dict(labels) or job_id in str(labels) for _, labels in found), "one series per route"
    assert found[("boostream_queue_limit", (("device", "cpu"),))] == 2


def test_each_request_is_one_json_access_line_with_the_key_name_never_the_key(tmp_path: Path, diabetes):
    with running_server(tmp_path) as server:
        key = make_key(server.data_dir, "ada")
        with server.client(headers=bearer(key)) as client:
            job_id = client.post("/jobs", json=body_for(diabetes, 5)).json()["job_id"]
            while client.get(f"/jobs/{job_id}").json()["status"] != "succeeded":
                time.sleep(0.05)
            assert httpx.get(f"{server.url}/jobs/{job_id}").status_code == 401
            with client.stream("POST", "/train/stream", json=body_for(diabetes, 5)) as stream:
                streamed = stream.headers["x-boostream-job-id"]
                list(stream.iter_lines())
            assert client.get("/metrics").status_code == 403, "an admin's"
        deadline = time.monotonic() + 10
        # A line is written once its answer has been sent, which may be just after its client has
        # read it: wait for those of the stream and of the last request.
        while not all(f'"route":"{route}"' in (log := server.log()) for route in ("/train/stream", "/metrics")):
            assert time.monotonic() < deadline, "an access line never came"
            time.sleep(0.05)
    assert key not in log
    lines = [json.loads(line.split("boostream.access: ", 1)[1]) for line in log.splitlines() if "access: {" in line]
    posted = next(line for line in lines if line["route"] == "/jobs" and line["method"] == "POST")
    assert posted["status"] == 202 and posted["job_id"] == job_id and posted["key"] == "ada"
    assert posted["bytes_in"] > 0 and posted["duration_ms"] > 0 and re.fullmatch(r"127\.0\.0\.1:\d+", posted["client"])
    polled = [line for line in lines if line["route"] == "/jobs/{job_id}"]
    assert polled and all(line["job_id"] == job_id and line["path"] == f"/jobs/{job_id}" for line in polled)
    stream_line = next(line for line in lines if line["route"] == "/train/stream")
    assert stream_line["job_id"] == streamed and stream_line["bytes_out"] > 0
    assert [line["status"] for line in lines if line["route"] == "/metrics"] == [403]
    refused = [line for line in lines if line["status"] == 401]
    assert [(line["route"], line["key"], line["job_id"]) for line in refused] == [("/jobs/{job_id}", None, job_id)]


def test_with_redis_the_jobs_are_counted_from_redis(tmp_path: Path, redis_server, diabetes):
    with (
        running_server(tmp_path / "a", redis=redis_server.url, when_no_worker="wait") as a,
        running_server(tmp_path / "b", redis=redis_server.url, when_no_worker="wait") as b,
    ):
        with a.client() as on_a:
            for _ in range(3):
                assert on_a.post("/jobs", json=body_for(diabetes, 5)).status_code == 202  # waiting for a worker
        with b.client() as on_b:
            found = samples(on_b.get("/metrics").text)
    assert found[("boostream_jobs", (("backend", "lightgbm"), ("status", "queued")))] == 3, "made on the other replica"
    assert found[("boostream_queue_jobs", (("device", "cpu"), ("state", "queued")))] == 3
