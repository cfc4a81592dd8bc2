"""Who may call the server, and from where: API keys and what each key owns, browser sessions,
cross-site requests, host names, and a server that will not start exposed without keys.

Keys are made as an operator makes them, with `boostream keys` (a process of its own, on the
server's data directory or Redis, while the server runs)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from test_jobs import body_for, long_body
from test_mcp import INITIALIZE, error_text

from boostream.streaming_server.access import HostNames

from conftest import Server, _free_port, parse_sse, running_server, stop_process

KEYS = [sys.executable, "-m", "boostream", "keys"]


def make_key(data_dir: Path, name: str, *options: str) -> str:
    """`boostream keys create NAME`: the key it prints, once."""
    made = subprocess.run(
        [*KEYS, "create", name, "--data-dir", str(data_dir), *options], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert name in made.stderr and "shown only now" in made.stderr
    return made.stdout.strip()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class Keyed:
    """A server with three keys: alice's, bob's, and an admin's."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.alice = make_key(server.data_dir, "alice")
        self.bob = make_key(server.data_dir, "bob")
        self.admin = make_key(server.data_dir, "root", "--admin")

    def client(self, key: str | None) -> httpx.Client:
        return self.server.client(headers=bearer(key) if key else {})

    def trained(self, key: str, diabetes, rounds: int = 5) -> dict:
        """A job of `key`'s that succeeded: its status."""
        with self.client(key) as client:
            created = client.post("/jobs", json=body_for(diabetes, rounds))
            assert created.status_code == 202, created.text
            job_id = created.json()["job_id"]
            deadline = time.monotonic() + 60
            while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert job["status"] == "succeeded", job
        return job


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    # The keys are made while the server runs: it serves everyone until the first exists.
    with running_server(tmp_path_factory.mktemp("keyed"), cpu_jobs=2) as server:
        with server.client() as client:
            assert client.get("/jobs").status_code == 200
        yield Keyed(server)


def test_a_request_without_a_valid_key_is_401_json_and_says_how(keyed: Keyed):
    for headers in ({}, bearer("bst_not-a-key"), {"authorization": "Basic YWxpY2U6c2VjcmV0"}, {"authorization": ""}):
        with keyed.server.client(headers=headers) as client:
            for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/models"), ("POST", "/predict")):
                answer = client.request(method, path, json={})
                assert answer.status_code == 401, (headers, path, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer")
                error = answer.json()["error"]
                assert error["code"] == "unauthorized" and "key" in error["message"].lower()
    with keyed.server.client() as client:
        assert client.get("/health").status_code == 200, "probes need no key"
        assert client.get("/").status_code == 200, "the dashboard's page signs in itself"
        assert client.get("/session").json() == {
            "keys_required": True, "signed_in": False, "name": None, "admin": False
        }  # fmt: skip


def test_a_key_sees_and_acts_on_its_own_jobs_and_models_and_no_others(keyed: Keyed, diabetes):
    job = keyed.trained(keyed.alice, diabetes)
    job_id, artifact_id = job["job_id"], job["artifact_id"]
    assert job["owner"] == "alice"
    predict = {"artifact_id": artifact_id, "X": diabetes[0][:3].tolist()}
    with keyed.client(keyed.bob) as bob:
        for method, path in (
            ("GET", f"/jobs/{job_id}"),
            ("GET", f"/jobs/{job_id}/events"),
            ("GET", f"/jobs/{job_id}/result"),
            ("POST", f"/jobs/{job_id}/cancel"),
            ("DELETE", f"/jobs/{job_id}"),
            ("GET", f"/artifacts/{artifact_id}"),
            ("GET", f"/artifacts/{artifact_id}/metadata"),
        ):
            answer = bob.request(method, path)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["code"] == "not_found", "as if it did not exist"
        refused = bob.post("/predict", json=predict)
        assert refused.status_code == 404 and refused.json()["error"]["field"] == "artifact_id"
        assert job_id not in [j["job_id"] for j in bob.get("/jobs", params={"limit": 500}).json()["jobs"]]
    with keyed.client(keyed.alice) as alice:
        assert alice.post("/predict", json=predict).json()["shape"] == [3]
        assert alice.get(f"/artifacts/{artifact_id}").status_code == 200
        mine = alice.get("/jobs", params={"limit": 500}).json()["jobs"]
        assert job_id in [j["job_id"] for j in mine] and {j["owner"] for j in mine} == {"alice"}
    with keyed.client(keyed.admin) as admin:
        assert admin.get(f"/jobs/{job_id}/result").json()["artifact_id"] == artifact_id, "an admin sees every job"
        bobs = keyed.trained(keyed.bob, diabetes)
        owners = {j["job_id"]: j["owner"] for j in admin.get("/jobs", params={"limit": 500}).json()["jobs"]}
        assert owners[job_id] == "alice" and owners[bobs["job_id"]] == "bob"
        assert admin.delete(f"/jobs/{job_id}").status_code == 204


def test_another_key_cannot_cancel_a_running_job_and_its_owner_can(keyed: Keyed, diabetes):
    with keyed.client(keyed.alice) as alice, keyed.client(keyed.bob) as bob:
        job_id = alice.post("/jobs", json=long_body(diabetes)).json()["job_id"]
        assert bob.post(f"/jobs/{job_id}/cancel").status_code == 404
        assert alice.get(f"/jobs/{job_id}").json()["status"] in ("queued", "running")
        assert alice.post(f"/jobs/{job_id}/cancel").status_code == 202


def test_keys_are_kept_hashed_and_a_revoked_key_is_refused_at_once(tmp_path: Path, diabetes):
    with running_server(tmp_path) as server:
        key = make_key(server.data_dir, "carol")
        with server.client(headers=bearer(key)) as client:
            assert client.get("/jobs").status_code == 200
            listed = subprocess.run([*KEYS, "list", "--data-dir", str(server.data_dir)], capture_output=True, text=True)
            assert "carol" in listed.stdout and key not in listed.stdout
            revoked = subprocess.run(
                [*KEYS, "revoke", "carol", "--data-dir", str(server.data_dir)], capture_output=True, text=True
            )
            assert revoked.returncode == 0 and "revoked" in revoked.stderr
            assert client.get("/jobs").status_code == 401
        with server.client() as client:
            assert client.get("/jobs").status_code == 401, "revoking the last key does not open the server"
        unknown = subprocess.run(
            [*KEYS, "revoke", "nobody", "--data-dir", str(server.data_dir)], capture_output=True, text=True
        )
        assert unknown.returncode == 2 and "no live key has the id or name 'nobody'" in unknown.stderr
    # Read once the server is gone: closing any descriptor of a SQLite file drops the locks that
    # its process holds on it, and the server runs in this process.
    kept = b"".join(path.read_bytes() for path in server.data_dir.glob("keys.sqlite3*"))
    assert key.encode() not in kept and hashlib.sha256(key.encode()).hexdigest().encode() in kept


def test_a_browser_signs_in_once_and_follows_events_with_its_session_cookie(keyed: Keyed, diabetes):
    job_id = keyed.trained(keyed.alice, diabetes)["job_id"]
    with keyed.server.client() as browser:
        wrong = browser.post("/session", json={"api_key": "bst_wrong"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        basic = browser.post("/session", headers={"authorization": f"Basic {keyed.alice}"})
        assert basic.status_code == 401 and "set-cookie" not in basic.headers
        signed = browser.post("/session", json={"api_key": keyed.alice})
        assert signed.status_code == 200 and signed.json()["name"] == "alice"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert browser.get("/session").json()["signed_in"] is True
        # EventSource sends only cookies: the session is enough.
        with browser.stream("GET", f"/jobs/{job_id}/events") as stream:
            assert stream.status_code == 200
            assert [e.type for e in parse_sse(stream.iter_lines())][-1] == "complete"
        assert browser.get(f"/jobs/{keyed.trained(keyed.bob, diabetes)['job_id']}").status_code == 404
        forged = browser.cookies["boostream_session"].replace("v1.", "v1.0", 1)
        assert keyed.server.client(cookies={"boostream_session": forged}).get("/jobs").status_code == 401
        assert browser.delete("/session").status_code == 204
        assert browser.get("/jobs").status_code == 401, "signed out"


def test_a_cross_site_request_is_refused_and_the_servers_own_pages_are_not(keyed: Keyed, diabetes):
    with keyed.client(keyed.alice) as alice:
        before = len(alice.get("/jobs", params={"limit": 500}).json()["jobs"])
        foreign = alice.post("/jobs", json=body_for(diabetes, 5), headers={"origin": "http://evil.example"})
        form = alice.post(
            "/jobs",
            content=b"X=1",
            headers={"origin": "null", "content-type": "application/x-www-form-urlencoded"},
        )
        for answer in (foreign, form):
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "cross_origin"
        assert len(alice.get("/jobs", params={"limit": 500}).json()["jobs"]) == before, "nothing was started"
        other_port = alice.post("/jobs", json=body_for(diabetes, 5), headers={"origin": "http://127.0.0.1:3000"})
        assert other_port.status_code == 403, "a page of another port gets this server's cookies, but is not its own"
        own = alice.post("/jobs", json=body_for(diabetes, 5), headers={"origin": keyed.server.url})
        assert own.status_code == 202
        rebound = alice.get("/jobs", headers={"host": "evil.example"})
        assert rebound.status_code == 421 and rebound.json()["error"]["field"] == "Host"
        assert alice.get("/health", headers={"host": "10.1.2.3:8000"}).status_code == 200


def test_origins_the_operator_lists_may_call_it_across_sites(tmp_path: Path, diabetes):
    with running_server(tmp_path, allowed_origins="https://dash.example") as server:
        key = make_key(server.data_dir, "dash")
        with server.client() as client:
            preflight = client.options(
                "/jobs",
                headers={
                    "origin": "https://dash.example",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization, content-type",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "https://dash.example"
            assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
            posted = client.post(
                "/jobs", json=body_for(diabetes, 5), headers={**bearer(key), "origin": "https://dash.example"}
            )
            assert posted.status_code == 202
            assert posted.headers["access-control-allow-origin"] == "https://dash.example"
            other = client.post(
                "/jobs", json=body_for(diabetes, 5), headers={**bearer(key), "origin": "https://other.example"}
            )
            assert other.status_code == 403


def test_mcp_callers_need_a_key_and_see_only_their_own_jobs(keyed: Keyed, diabetes):
    alices = keyed.trained(keyed.alice, diabetes)["job_id"]
    headers = {"accept": "application/json, text/event-stream"}
    with keyed.server.client() as client:
        assert client.post("/mcp", json=INITIALIZE, headers=headers).status_code == 401

    async def as_bob() -> tuple[str, str]:
        async with httpx2.AsyncClient(headers=bearer(keyed.bob), timeout=30) as http:
            async with streamable_http_client(keyed.server.url + "/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    status = await session.call_tool("job_status", {"job_id": alices})
                    started = await session.call_tool(
                        "start_job",
                        {"X": diabetes[0].tolist(), "y": diabetes[1].tolist(), "params": {"n_estimators": 3}},
                    )
                    assert not started.is_error, started.content
                    return error_text(status), started.structured_content["job_id"]

    refused, bobs = asyncio.run(as_bob())
    assert refused.startswith("not_found")
    with keyed.client(keyed.bob) as bob:
        assert bob.get(f"/jobs/{bobs}").json()["owner"] == "bob"


def test_the_cli_sends_its_api_key(keyed: Keyed, diabetes):
    job_id = keyed.trained(keyed.alice, diabetes)["job_id"]
    command = [sys.executable, "-m", "boostream", "jobs", "--server", keyed.server.url]
    without = subprocess.run(command, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert without.returncode == 2 and "unauthorized" in without.stderr
    given = subprocess.run([*command, "--api-key", keyed.alice], capture_output=True, text=True)
    assert given.returncode == 0 and job_id in given.stdout
    from_environment = subprocess.run(
        command, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "BOOSTREAM_API_KEY": keyed.bob}
    )
    assert from_environment.returncode == 0 and job_id not in from_environment.stdout


@contextlib.contextmanager
def serving(tmp_path: Path, *options: str) -> Iterator[subprocess.Popen]:
    command = [sys.executable, "-m", "boostream", "serve", "--data-dir", str(tmp_path / "data"), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        stop_process(process)


def wait_for_health(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError("the server did not start")


def test_a_server_on_every_interface_without_keys_refuses_to_start_unless_told(tmp_path: Path):
    port = str(_free_port())
    with serving(tmp_path, "--host", "0.0.0.0", "--port", port) as refused:
        assert refused.wait(60) == 1
        said = refused.stdout.read() if refused.stdout else ""
        assert "no API key exists" in said and "--no-auth" in said and "Traceback" not in said
    with serving(tmp_path, "--host", "0.0.0.0", "--port", port, "--no-auth") as open_server:
        wait_for_health(f"http://127.0.0.1:{port}", open_server)
        assert httpx.get(f"http://127.0.0.1:{port}/jobs").status_code == 200, "--no-auth serves everyone"
    key = make_key(tmp_path / "data", "ops")
    with serving(tmp_path, "--host", "0.0.0.0", "--port", port) as keyed_server:
        wait_for_health(f"http://127.0.0.1:{port}", keyed_server)
        assert httpx.get(f"http://127.0.0.1:{port}/jobs").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/jobs", headers=bearer(key)).status_code == 200


def test_keys_in_redis_hold_for_every_replica(tmp_path: Path, redis_server, diabetes):
    def make(name: str, *options: str) -> str:
        made = subprocess.run([*KEYS, "create", name, "--redis", redis_server.url, *options], capture_output=True)
        assert made.returncode == 0, made.stderr
        return made.stdout.decode().strip()

    alice, bob, admin = make("alice"), make("bob"), make("root", "--admin")
    with (
        running_server(tmp_path / "a", redis=redis_server.url, when_no_worker="wait") as a,
        running_server(tmp_path / "b", redis=redis_server.url, when_no_worker="wait") as b,
    ):
        with a.client(headers=bearer(alice)) as on_a:
            job_id = on_a.post("/jobs", json=body_for(diabetes, 5)).json()["job_id"]  # it waits for a worker
        with b.client(headers=bearer(bob)) as on_b:
            assert on_b.get(f"/jobs/{job_id}").status_code == 404
            assert on_b.get("/jobs").json()["jobs"] == []
            assert on_b.post(f"/jobs/{job_id}/cancel").status_code == 404
        with b.client(headers=bearer(admin)) as as_admin:
            assert [j["owner"] for j in as_admin.get("/jobs").json()["jobs"]] == ["alice"]
        with b.client(headers=bearer(alice)) as alice_on_b:
            assert alice_on_b.get(f"/jobs/{job_id}").json()["status"] == "queued"
            assert alice_on_b.post(f"/jobs/{job_id}/cancel").status_code == 202
        with b.client() as nobody:
            assert nobody.get("/jobs").status_code == 401
        redis_server.kill_9()
        try:
            with a.client(headers=bearer(alice)) as during:
                out = during.get("/jobs")
            assert out.status_code == 503 and out.json()["error"]["code"] == "store_unreachable", out.text
        finally:
            redis_server.start()


def test_revoking_by_id_revokes_that_key_alone(tmp_path: Path):
    data_dir = str(tmp_path / "data")
    eve = make_key(tmp_path / "data", "eve")
    listed = subprocess.run([*KEYS, "list", "--json", "--data-dir", data_dir], capture_output=True, text=True)
    eves_id = json.loads(listed.stdout)["id"]
    named_like_it = make_key(tmp_path / "data", eves_id)  # a name that is another key's id
    revoked = subprocess.run([*KEYS, "revoke", eves_id, "--data-dir", data_dir], capture_output=True, text=True)
    assert revoked.returncode == 0 and revoked.stderr.count("revoked key") == 1, revoked.stderr
    with running_server(tmp_path) as server:
        assert httpx.get(server.url + "/jobs", headers=bearer(eve)).status_code == 401
        assert httpx.get(server.url + "/jobs", headers=bearer(named_like_it)).status_code == 200


def test_a_server_on_every_address_answers_to_its_own_names_and_those_listed():
    everywhere = HostNames("0.0.0.0", ["models.internal:*", "proxy.example:8443"])
    own = socket.gethostname()
    assert everywhere.allow(f"{own}:8000") and everywhere.allow("127.0.0.1:8000") and everywhere.allow("[::1]:8000")
    for address in {info[4][0] for info in socket.getaddrinfo(own, None)}:
        assert everywhere.allow(f"[{address}]:8000" if ":" in address else f"{address}:8000"), address
    assert everywhere.allow("models.internal:9000") and everywhere.allow("PROXY.example:8443")
    assert not everywhere.allow("proxy.example:8444") and not everywhere.allow("evil.example:8000")
    assert not everywhere.allow("") and not HostNames("10.0.0.5").allow(f"{own}:8000")


def test_a_key_may_have_so_many_jobs_unfinished_and_send_so_many_requests_a_second(tmp_path: Path, diabetes):
    with running_server(tmp_path, cpu_jobs=1, key_max_jobs=2, key_requests_per_s=5) as server:
        alice, bob = make_key(server.data_dir, "alice"), make_key(server.data_dir, "bob")
        with server.client(headers=bearer(alice)) as as_alice, server.client(headers=bearer(bob)) as as_bob:
            first, second = (as_alice.post("/jobs", json=long_body(diabetes)).json()["job_id"] for _ in range(2))
            third = as_alice.post("/jobs", json=long_body(diabetes))
            assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_jobs", third.text
            assert int(third.headers["retry-after"]) >= 1 and "--key-max-jobs" in third.json()["error"]["message"]
            assert as_bob.post("/jobs", json=body_for(diabetes, 3)).status_code == 202, "the quota is alice's"
            assert as_alice.post(f"/jobs/{first}/cancel").status_code == 202
            while as_alice.get(f"/jobs/{first}").json()["status"] != "cancelled":
                time.sleep(0.2)
            time.sleep(2)  # the requests above, and the polls, spent alice's burst: let it fill again
            again = as_alice.post("/jobs", json=body_for(diabetes, 3))
            assert again.status_code == 202, again.text
            assert as_alice.post(f"/jobs/{second}/cancel").status_code == 202

            time.sleep(2)
            answers = [as_alice.get("/jobs").status_code for _ in range(30)]  # a burst of 10, then 5 a second
            assert 200 in answers and 429 in answers, answers
            limited = as_alice.get("/jobs")
            assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
            assert int(limited.headers["retry-after"]) >= 1
            assert as_bob.get("/jobs").status_code == 200, "the rate is alice's"
            time.sleep(1.5)
            assert as_alice.get("/jobs").status_code == 200
