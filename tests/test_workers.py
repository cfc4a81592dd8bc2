"""Training runs in worker processes, never in the server's: what that promises (README, "Worker
processes"). A worker killed mid-job is replaced and its job runs again; a stop that a long round
would hold up kills the worker; a job over its worker's memory limit fails, and the server answers
throughout."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_jobs import body_for, check_log, long_body
from test_redis_deployment import running_worker
from test_restarts import kill_9, wait_until_training

from boostream.config import machine_cores

from conftest import Server, running_server, running_server_process


def workers(server: Server, state: str | None = None) -> list[dict]:
    with server.client() as client:
        found = client.get("/health").json()["workers"]
    return [worker for worker in found if state is None or worker["state"] == state]


def wait_for_workers(server: Server, count: int, timeout: float = 30.0) -> list[dict]:
    """Until `count` workers are up and idle."""
    deadline = time.monotonic() + timeout
    while len(idle := workers(server, "idle")) != count or len(workers(server)) != count:
        assert time.monotonic() < deadline, f"never {count} idle workers: {workers(server)}"
        time.sleep(0.05)
    return idle


def wait_until_finished(server: Server, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while (job := server.job(job_id))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} never finished: {job}"
        time.sleep(0.02)
    return job


def one_long_round(rows: int = 100_000) -> dict:
    """A job whose first round takes many seconds (about 17 s for 100,000 rows on two cores): as
    many leaves as rows allow, each searched over 64 bins, in little memory (0.6 GB)."""
    rng = np.random.default_rng(0)
    X, y = rng.random((rows, 3)), rng.random(rows)
    return body_for((X, y), 5, num_leaves=131_072, min_data_in_leaf=1, max_bin=64)


def test_a_worker_killed_mid_job_is_replaced_and_the_job_runs_again_as_attempt_2(tmp_path: Path, diabetes):
    with running_server(tmp_path, cpu_jobs=1, threads_per_job=1) as server:
        (first,) = wait_for_workers(server, 1)
        assert first["pid"] != os.getpid(), "training is not in the server's process"
        job_id = server.create_job(long_body(diabetes, rounds=3000))
        wait_until_training(server, job_id, attempt=1)
        (busy,) = workers(server, "busy")
        assert busy["pid"] == first["pid"] and busy["job_id"] == job_id

        os.kill(busy["pid"], signal.SIGKILL)

        job = wait_until_finished(server, job_id, timeout=120)
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        events = server.events(job_id)
        check_log(events, "complete")
        assert [e.data["attempt"] for e in events if e.type == "started"] == [1, 2]
        (restarted,) = [e for e in events if e.type == "restarted"]
        assert restarted.data["attempts"] == 1
        assert "worker process died (killed by SIGKILL)" in restarted.data["reason"]
        (replacement,) = wait_for_workers(server, 1)
        assert replacement["pid"] != first["pid"]


def test_a_sigterm_meant_for_the_whole_process_group_leaves_the_workers_to_their_server(tmp_path: Path, diabetes):
    """systemd, or a terminal, signals every process of the group: the server then stops its
    workers itself, and none of them dies first as if it had crashed."""
    with running_server(tmp_path, cpu_jobs=1, threads_per_job=1) as server:
        wait_for_workers(server, 1)
        job_id = server.create_job(long_body(diabetes, rounds=3000))
        wait_until_training(server, job_id, attempt=1)
        (busy,) = workers(server, "busy")
        os.kill(busy["pid"], signal.SIGTERM)
        os.kill(busy["pid"], signal.SIGINT)
        job = wait_until_finished(server, job_id, timeout=120)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert [worker["pid"] for worker in workers(server)] == [busy["pid"]]


def test_a_stop_held_up_by_a_long_round_kills_the_worker_within_2_s(tmp_path: Path):
    with running_server(tmp_path, cpu_jobs=1, stop_grace_s=1.0) as server:
        wait_for_workers(server, 1)
        for ask in ("cancel", "timeout"):
            body = one_long_round() | ({"timeout_s": 1} if ask == "timeout" else {})
            job_id = server.create_job(body)
            deadline = time.monotonic() + 30
            while server.job(job_id)["status"] != "running":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.5)  # inside round 1, which takes many seconds
            asked = time.monotonic()
            if ask == "cancel":
                with server.client() as client:
                    assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
            job = wait_until_finished(server, job_id)
            took = time.monotonic() - asked
            if ask == "cancel":
                assert job["status"] == "cancelled", job
                assert took < 2.0, f"cancelled {took:.2f} s after it was asked"
            else:
                assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
                assert took < 2.0, f"ended {took:.2f} s after its 1 s limit was near"
            check_log(server.events(job_id), "cancelled" if ask == "cancel" else "error")
            wait_for_workers(server, 1)

        # The replaced worker trains the next job.
        job_id = server.create_job(body_for(((np.arange(200.0).reshape(100, 2)), np.arange(100.0)), 5))
        assert wait_until_finished(server, job_id)["status"] == "succeeded"


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_workers(server: Server, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while len(busy := [w for w in workers(server, "busy") if w["threads"] is not None]) != count:
        assert time.monotonic() < deadline, workers(server)
        time.sleep(0.05)
    return busy


@pytest.mark.skipif(machine_cores() < 2 or not Path("/proc/self/stat").exists(), reason="needs 2 cores and /proc")
def test_a_job_alone_trains_on_every_core_and_jobs_at_once_share_them(tmp_path: Path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50_000, 20)).round(4)
    data = (X, X @ rng.normal(size=20))
    cores = machine_cores()
    with running_server(tmp_path) as server:  # the defaults: --cpu-jobs 2, --threads-per-job 0
        wait_for_workers(server, 2)
        first = server.create_job(long_body(data))
        [alone] = busy_workers(server, 1)
        assert alone["threads"] == cores
        time.sleep(1.0)  # past binning the table, into the rounds
        used, started = cpu_seconds(alone["pid"]), time.monotonic()
        time.sleep(3.0)
        ratio = (cpu_seconds(alone["pid"]) - used) / (time.monotonic() - started)
        # One thread cannot pass 1.0; every core would reach `cores` on a machine doing nothing else.
        assert ratio > 1.2, f"a job alone used {ratio:.2f} cores of {cores}"

        second = server.create_job(long_body(data))
        both = busy_workers(server, 2)
        assert [w["threads"] for w in both] == [cores // 2] * 2, both
        with server.client() as client:
            for job_id in (first, second):
                assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
        for job_id in (first, second):
            assert wait_until_finished(server, job_id)["status"] == "cancelled"


def test_a_job_over_its_workers_memory_limit_fails_out_of_memory_while_the_server_answers(
    tmp_path: Path, redis_server
):
    rng = np.random.default_rng(0)
    X, y = rng.random((20_000, 20)), rng.random(20_000)
    # Histograms of 65,535 bins for 20 features in each of up to 512 leaves: over 1 GB in its
    # first round, where the worker's limit is 300 MiB. A server refuses such a job up front when
    # its own --worker-memory-mb says so (test_server_options); this one has the default, and its
    # worker (on another machine, say) the lower limit: the hard stop is what holds.
    hungry = body_for((X, y), 3, num_leaves=512, max_bin=65_535, min_data_in_leaf=1)
    with (
        running_server(tmp_path, redis=redis_server.url, when_no_worker="wait") as server,
        running_worker(tmp_path, redis_server, "--worker-memory-mb", "300"),
    ):
        deadline = time.monotonic() + 30
        while not workers(server):  # the worker says it is alive
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
        job_id = server.create_job(hungry)
        slowest = 0.0
        with server.client() as client:
            while (job := server.job(job_id))["status"] in ("queued", "running"):
                asked = time.monotonic()
                assert client.get("/health", timeout=5).status_code == 200
                slowest = max(slowest, time.monotonic() - asked)
                time.sleep(0.02)
        assert job["status"] == "failed" and job["error"]["code"] == "out_of_memory", job
        assert "300 MB" in job["error"]["message"]
        assert slowest < 1.0, f"/health took {slowest:.2f} s while the job grew"
        check_log(server.events(job_id), "error")

        small = server.create_job(body_for((X[:500], y[:500]), 5))
        assert wait_until_finished(server, small)["status"] == "succeeded", "the worker was replaced"


def test_no_process_outlives_a_server_killed_with_kill_9(tmp_path: Path):
    """Its workers, its JSON decoders and the fork server they come from all go with it."""
    with running_server_process(tmp_path, "--cpu-jobs", "2") as server:
        pids = [worker["pid"] for worker in wait_for_workers(server, 2)]
        deadline = time.monotonic() + 10
        while len(descendants := _descendants(server.process.pid)) < 5:  # fork server, 2 workers, 2 decoders
            assert time.monotonic() < deadline, f"never all of the server's processes: {descendants}"
            time.sleep(0.05)
        assert set(pids) <= descendants
        kill_9(server)
    deadline = time.monotonic() + 10
    while alive := [pid for pid in descendants if _alive(pid)]:
        assert time.monotonic() < deadline, f"processes {alive} outlived their server"
        time.sleep(0.05)


def _descendants(pid: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_health_shows_each_worker(tmp_path: Path):
    with running_server(tmp_path, cpu_jobs=2) as server:
        found = wait_for_workers(server, 2)
        assert {worker["device"] for worker in found} == {"cpu"}
        assert len({worker["pid"] for worker in found}) == 2
        for worker in found:
            assert worker["job_id"] is None and worker["jobs"] == 0
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/health").json()["queue"]["cpu"]["limit"] == 2


def test_a_request_whose_table_cannot_be_kept_on_disk_fails_saying_why(tmp_path: Path, diabetes):
    """A job's worker reads its input from disk: where it cannot be written, a JSON request (whose
    decoder writes it) is refused with 503, and a job from a table (written once it is queued)
    fails; both say why."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "inputs").write_text("a file where the inputs' folder should be")
    X, y = diabetes
    table = "".join(f"{','.join(map(str, row))},{label}\n" for row, label in zip(X, y, strict=True))
    header = ",".join(f"f{i}" for i in range(X.shape[1])) + ",target\n"
    with running_server(tmp_path, cpu_jobs=1) as server, server.client() as client:
        response = client.post("/jobs", json=body_for(diabetes, 5))
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "storage_failed" and "Not a directory" in error["message"], error

        response = client.post(
            "/jobs", params={"target": "target"}, content=header + table, headers={"content-type": "text/csv"}
        )
        assert response.status_code == 202, response.text
        job = wait_until_finished(server, response.json()["job_id"])
        assert job["status"] == "failed" and job["error"]["code"] == "storage_failed", job
        assert "could not be kept on disk" in job["error"]["message"]
        check_log(server.events(job["job_id"]), "error")


def test_a_task_whose_input_is_gone_is_an_outcome_not_an_exception(tmp_path: Path):
    from boostream.models.artifacts import ArtifactStore
    from boostream.trainers import create_trainers
    from boostream.workers.task import Failed, TrainTask, run_task

    class Reporter:
        cancelled = False

        def report(self, iteration: int, metrics: dict) -> None:
            raise AssertionError("nothing to train")

    task = TrainTask("job", "lightgbm", "regression", {}, str(tmp_path / "missing"))
    outcome = run_task(task, create_trainers(1), ArtifactStore(tmp_path / "artifacts", b"k" * 32), Reporter())
    assert isinstance(outcome, Failed) and outcome.code == "interrupted", outcome


def test_a_json_request_refused_after_decoding_leaves_no_table_behind(tmp_path: Path, diabetes):
    """Its decoder process wrote the arrays for a job; the job is refused (its webhook host is not
    allowed), and the arrays go with it."""
    with running_server(tmp_path, cpu_jobs=1) as server, server.client() as client:
        body = body_for(diabetes, 5) | {"callback_url": "http://not-allowed.example/hook"}
        response = client.post("/jobs", json=body)
        assert response.status_code == 422 and response.json()["error"]["field"] == "callback_url", response.text
        assert list((server.data_dir / "inputs").iterdir()) == []
        job_id = server.create_job(body_for(diabetes, 5))
        assert wait_until_finished(server, job_id)["status"] == "succeeded"
        assert list((server.data_dir / "inputs").iterdir()) == [], "a finished job's input is removed"


def test_a_json_body_without_a_length_is_decoded_like_one_with_it(tmp_path: Path, diabetes):
    """Sent chunked, the body cannot be read straight into memory a decoder process maps; it is
    copied there, and the job is the same."""
    import orjson

    body = orjson.dumps(body_for(diabetes, 5))
    with running_server(tmp_path, cpu_jobs=1) as server, server.client() as client:
        finished = []
        for content in (body, iter([body[:1000], body[1000:]])):
            response = client.post("/jobs", content=content, headers={"content-type": "application/json"})
            assert response.status_code == 202, response.text
            finished.append(wait_until_finished(server, response.json()["job_id"]))
        assert [job["status"] for job in finished] == ["succeeded", "succeeded"]
        assert finished[0]["metrics"] == finished[1]["metrics"]


# The pool on its own, with interleavings forced: the event loop is held up (time.sleep) while a
# worker dies or finishes, so that what the worker does and what the loop learns of it cross.


def pool_setup(tmp_path: Path):
    import asyncio

    from boostream.jobs import inputs
    from boostream.trainers.base import TrainingData, validate_params
    from boostream.trainers.lightgbm import LightGBMTrainer
    from boostream.workers.local import LocalWorkers, WorkerConfig
    from boostream.workers.task import TrainTask

    rng = np.random.default_rng(0)
    inputs.save(tmp_path / "in", TrainingData(X=rng.random((200, 3)), y=rng.random(200), feature_names=["a", "b", "c"]))

    def task(job_id: str) -> TrainTask:
        params = validate_params(LightGBMTrainer.params, {"n_estimators": 5})
        return TrainTask(job_id, "lightgbm", "regression", params, str(tmp_path / "in"))

    def pool() -> LocalWorkers:
        return LocalWorkers(WorkerConfig("cpu", 1, tmp_path / "artifacts", b"k" * 32), 1, 0, 1.0)

    async def idle(workers: LocalWorkers) -> None:
        while not [w for w in workers._workers if w.state == "idle"]:
            await asyncio.sleep(0.02)

    return task, pool, idle


def test_a_worker_that_died_while_idle_is_not_given_the_next_job(tmp_path: Path):
    import asyncio

    from boostream.workers.task import Finished

    task, pool, idle = pool_setup(tmp_path)

    async def main() -> object:
        workers = pool()
        await workers.start()
        await idle(workers)
        (worker,) = workers._workers
        os.kill(worker.pid, signal.SIGKILL)
        time.sleep(0.3)  # dead, and the loop has not heard yet
        try:
            return await asyncio.wait_for(workers.run(task("j1"), lambda *_: None), 30)
        finally:
            await workers.close()

    outcome = asyncio.run(main())
    assert isinstance(outcome, Finished) and not outcome.cancelled and outcome.artifact_id, outcome


def test_a_worker_killed_just_as_its_job_finished_does_not_end_the_next_job(tmp_path: Path):
    import asyncio

    from boostream.workers.task import Finished

    task, pool, idle = pool_setup(tmp_path)

    async def main() -> tuple[object, object]:
        workers = pool()
        await workers.start()
        await idle(workers)
        (worker,) = workers._workers
        first = asyncio.ensure_future(workers.run(task("j1"), lambda *_: None))
        await asyncio.sleep(0)
        time.sleep(3)  # job 1 finishes; its "done" waits for the loop
        workers._kill_if_busy(worker, "j1", "stop")  # as a stop's grace ran out at that moment
        try:
            return await first, await asyncio.wait_for(workers.run(task("j2"), lambda *_: None), 30)
        finally:
            await workers.close()

    first, second = asyncio.run(main())
    assert isinstance(first, Finished) and not first.cancelled, first
    assert isinstance(second, Finished) and not second.cancelled and second.artifact_id, second


def test_a_job_waiting_for_a_worker_stops_when_asked(tmp_path: Path):
    """No worker comes (none was started here, as when they cannot start): cancel and time limits
    still end the job."""
    import asyncio

    from boostream.workers.task import Finished

    task, pool, _ = pool_setup(tmp_path)

    async def main() -> object:
        workers = pool()  # not started: no worker ever comes
        running = asyncio.ensure_future(workers.run(task("j1"), lambda *_: None))
        await asyncio.sleep(0.2)
        workers.stop("j1")
        return await asyncio.wait_for(running, 5)

    assert asyncio.run(main()) == Finished.stopped(0)
