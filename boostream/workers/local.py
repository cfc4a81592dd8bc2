"""Worker processes on this machine, one pool per device: training never runs in the server's
process, so a job that explodes in memory, crashes in a library's C++ code or holds the GIL in a
Python loop costs its worker, never the server or the other jobs.

Each worker is a process forked from multiprocessing's fork server, which has the trainers'
libraries loaded already, so starting one (or replacing one) takes milliseconds after the first.
It runs one job at a time (`task.run_task`, the code every worker runs) and speaks with its pool
over a pipe:

- pool → worker: `("run", TrainTask)`, `("stop", job_id)`: stop after the current round;
- worker → pool: `("ready",)` once, then for each job its rounds `("round", iteration, metrics)`
  and its outcome `("done", Finished | Failed)`.

A worker reads the job's input from the files the server saved (memory-mapped, not copied) and
writes the model to the artifact store itself; only rounds and the outcome cross the pipe.

The pool adds what a thread could not have: a stop that does not come within `grace_s` (a round
can take minutes) kills the worker; a worker whose own memory (`RssAnon`: not the mapped input)
passes `memory_limit_bytes` is killed and its job fails `out_of_memory`; a worker that dies
without being told to (`kill -9`, a crash, the kernel's OOM killer) makes its job `WorkerLost`,
for the job manager to run again. Every worker that dies is replaced. A worker whose server goes
away (its pipe closes) exits at once.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from boostream.models.artifacts import ArtifactStore
from boostream.trainers import create_trainers
from boostream.trainers.lightgbm import limit_threads as limit_lightgbm_threads
from boostream.workers.task import Failed, Finished, Outcome, TrainTask, run_task

log = logging.getLogger("boostream.workers")

# How often the pool reads its workers' memory.
MEMORY_CHECK_S = 0.1
# How long starting a worker process may take before it is given up (and tried again later), and
# how long closing waits for starts under way.
START_TIMEOUT_S, CLOSE_WAIT_S = 60.0, 5.0
# A worker that dies before it is ready (a broken install, say) is started again after this long,
# doubled each time up to the maximum, so that a crash loop does not spin.
RESTART_DELAY_S, MAX_RESTART_DELAY_S = 0.5, 30.0


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to know; sent to it once, when it starts."""

    device: str
    lightgbm_threads: int
    artifacts_dir: Path
    key: bytes  # signs the artifacts the worker writes
    log_level: str = "info"
    # Where more than 0: the cores that the jobs running at once on these workers share out, each
    # job's LightGBM threads capped at its share (`LocalWorkers._share_cores`).
    shared_cores: int = 0


class WorkerLost(Exception):
    """The worker running a job died without being told to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# In the worker process


def serve(conn: Connection, config: WorkerConfig) -> None:
    """A worker process's life: run the tasks the pool sends, one at a time."""
    ignore_stop_signals()
    logging.basicConfig(
        level=config.log_level.upper(), format="%(levelname)s:     worker %(process)d: %(name)s: %(message)s"
    )
    trainers = create_trainers(config.lightgbm_threads)
    for trainer in trainers.values():
        if trainer.device == config.device:
            trainer.availability()  # loads the device's libraries (torch for a GPU) before the first job
    artifacts = ArtifactStore(config.artifacts_dir, config.key)
    tasks: queue.SimpleQueue[TrainTask] = queue.SimpleQueue()
    stops: dict[str, threading.Event] = {}

    def listen() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server is gone: nobody would take this job's result
            if message[0] == "run":
                stops[message[1].job_id] = threading.Event()
                tasks.put(message[1])
            elif message[0] == "stop" and (stop := stops.get(message[1])) is not None:
                stop.set()
            elif message[0] == "threads":
                limit_lightgbm_threads(message[1])

    threading.Thread(target=listen, name="listen", daemon=True).start()
    conn.send(("ready",))
    while True:
        task = tasks.get()
        outcome: Outcome
        try:
            outcome = run_task(task, trainers, artifacts, _PipeReporter(conn, stops[task.job_id]))
        except BaseException as error:  # run_task returns failures: this is a defect, not the job's
            logging.getLogger(__name__).exception("job %s: the worker failed", task.job_id)
            outcome = Failed("training_failed", f"the worker failed: {type(error).__name__}: {error}")
        del stops[task.job_id]
        conn.send(("done", outcome))


class _PipeReporter:
    """The trainer's `Reporter` in a worker: rounds go down the pipe, the stop comes up it."""

    def __init__(self, conn: Connection, stop: threading.Event) -> None:
        self._conn = conn
        self._stop = stop

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def report(self, iteration: int, metrics: Mapping[str, float | None]) -> None:
        self._conn.send(("round", iteration, dict(metrics)))


# In the server


class _Worker:
    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.pid: int = process.pid
        self.state = "starting"  # then idle or busy; dying once killed or found dead
        self.started_at = time.time()
        self.jobs = 0  # jobs it has finished
        self.memory_bytes: int | None = None
        # While it runs a job (on the loop, but `last_round` and `on_round`: the listening thread).
        self.job_id: str | None = None
        self.outcome: asyncio.Future[Outcome] | None = None
        self.on_round: Callable[[int, Mapping[str, float | None]], None] | None = None
        self.last_round = 0
        self.stopping = False
        self.killed_for: str | None = None  # "stop" or "memory": why the pool killed it
        self.threads: int | None = None  # its LightGBM threads' cap, where the cores are shared

    def view(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": self.state,
            "job_id": self.job_id,
            "memory_bytes": self.memory_bytes,
            "jobs": self.jobs,
            "started_at": self.started_at,
            "threads": self.threads if self.job_id is not None else None,
        }


class LocalWorkers:
    """The worker processes of one device on this machine, `slots` of them, kept warm.

    :param memory_limit_bytes: a worker that holds more memory of its own is killed (0: no limit)
    :param grace_s: how long a job asked to stop may take to finish its round before its worker
        is killed
    """

    def __init__(self, config: WorkerConfig, slots: int, memory_limit_bytes: int, grace_s: float) -> None:
        self.config = config
        self.device = config.device
        self.slots = slots
        self.memory_limit_bytes = memory_limit_bytes
        self.grace_s = grace_s
        self._context = forkserver_context()
        self._workers: list[_Worker] = []
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._stops_waiting: dict[str, asyncio.Event] = {}  # jobs waiting for a worker: set to stop them
        self._restart_delay_s = RESTART_DELAY_S
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawning: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the workers (without waiting for them to be ready) and the memory watch."""
        self._loop = asyncio.get_running_loop()
        for _ in range(self.slots):
            self._start_spawning()
        if self.memory_limit_bytes:
            self._background(self._watch_memory())

    async def run(self, task: TrainTask, on_round: Callable[[int, Mapping[str, float | None]], None]) -> Outcome:
        """Run `task` on the next idle worker; `on_round` is called from another thread with each
        round. WorkerLost when the worker dies without having been told to."""
        self._loop = asyncio.get_running_loop()
        stop = self._stops_waiting.setdefault(task.job_id, asyncio.Event())
        try:
            while True:
                worker = await self._next_idle(stop)
                if worker is None:  # asked to stop while it waited for a worker
                    return Finished.stopped(0)
                worker.state, worker.job_id, worker.on_round = "busy", task.job_id, on_round
                worker.last_round, worker.stopping = 0, False
                outcome: asyncio.Future[Outcome] = self._loop.create_future()
                worker.outcome = outcome
                try:
                    self._share_cores(starting=worker)
                    worker.conn.send(("run", task))
                except OSError:  # it died while idle, and its end is not yet heard: take another
                    worker.outcome, worker.job_id, worker.state = None, None, "dying"
                    continue
                break
        finally:
            del self._stops_waiting[task.job_id]
        return await outcome

    async def _next_idle(self, stop: asyncio.Event) -> _Worker | None:
        """The next idle worker that is alive, or None once `stop` is set."""
        while True:
            taking = asyncio.ensure_future(self._idle.get())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait((taking, stopped), return_when=asyncio.FIRST_COMPLETED)
            except BaseException:  # cancelled: a worker it took goes back
                stopped.cancel()
                taking.cancel()
                if taking.done() and not taking.cancelled():
                    self._idle.put_nowait(taking.result())
                raise
            stopped.cancel()
            if not taking.done():
                taking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await taking  # it may have taken one meanwhile
            worker = taking.result() if taking.done() and not taking.cancelled() else None
            if stop.is_set():
                if worker is not None:
                    self._idle.put_nowait(worker)
                return None
            if worker is not None and worker in self._workers and worker.killed_for is None:
                return worker
            # a worker that died, or is being killed, while idle: its replacement comes instead

    def stop(self, job_id: str) -> None:
        """Ask the job to stop after its current round; kill its worker if it has not within the grace."""
        worker = next((w for w in self._workers if w.job_id == job_id), None)
        if worker is None:
            if (waiting := self._stops_waiting.get(job_id)) is not None:
                waiting.set()
            return
        if worker.stopping:
            return
        worker.stopping = True
        try:
            worker.conn.send(("stop", job_id))
        except OSError:
            pass  # it is dying already
        assert self._loop is not None
        self._loop.call_later(self.grace_s, self._kill_if_busy, worker, job_id, "stop")

    def _share_cores(self, starting: _Worker) -> None:
        """Where the cores are shared: the job `starting` gets the cores over the jobs then running
        (itself included; all of them when alone), and a running job whose share is larger is
        lowered to it. A share is never raised while its job runs: LightGBM sizes buffers by its
        threads as it starts, and a round with more threads than those would write past them."""
        cores = self.config.shared_cores
        if cores <= 0:
            return
        running = [w for w in self._workers if w.job_id is not None and w.killed_for is None]
        share = max(1, cores // max(1, len(running)))
        for worker in running:
            if worker is not starting and (worker.threads or cores) <= share:
                continue  # never raised mid-job
            try:
                worker.conn.send(("threads", share))
            except OSError:
                if worker is starting:
                    raise  # it died while idle: `run` takes another
                # a running one that died: its end is on the way
            worker.threads = share

    def views(self) -> list[dict[str, Any]]:
        return [{"device": self.device, **worker.view()} for worker in self._workers]

    async def close(self) -> None:
        """Kill every worker: the jobs they ran stay `running` in the store, for the next server."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._spawning:  # a process being started is killed once it is (`_spawn` sees `_closing`)
            await asyncio.wait(self._spawning, timeout=CLOSE_WAIT_S)
        for worker in self._workers:
            worker.process.kill()
        # Each worker's listening thread reaps it, and `_on_exit` lets it go.
        deadline = time.monotonic() + 5
        while self._workers and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # Starting and losing workers

    def _start_spawning(self) -> None:
        task = asyncio.get_running_loop().create_task(self._spawn())
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    async def _spawn(self) -> None:
        """Start one worker; on failure, try again later. Never cancelled (`close` waits for it)."""
        try:
            parent, child = self._context.Pipe()
            try:
                process = self._context.Process(
                    target=serve, args=(child, self.config), name=f"boostream-{self.device}-worker", daemon=True
                )
                # The first one starts the fork server: a second or so. In a thread of its own, which
                # never holds up the loop's or the interpreter's end if a start never returns.
                await asyncio.wait_for(asyncio.shield(_in_daemon_thread(_start, process)), START_TIMEOUT_S)
            finally:
                child.close()
            worker = _Worker(process, parent)
            if self._closing:
                process.kill()
                parent.close()
                await _in_daemon_thread(_join, process)
                return
            name = f"{self.device}-worker-{worker.pid}"
            threading.Thread(target=self._listen, args=(worker,), name=name, daemon=True).start()
            self._workers.append(worker)
        except Exception:
            log.exception("could not start a %s worker; trying again in %g s", self.device, self._restart_delay_s)
            self._background(self._spawn_later())

    async def _spawn_later(self) -> None:
        await asyncio.sleep(self._restart_delay_s)
        self._restart_delay_s = min(self._restart_delay_s * 2, MAX_RESTART_DELAY_S)
        if not self._closing:
            self._start_spawning()

    def _listen(self, worker: _Worker) -> None:
        """In a thread of its own: the worker's messages, until its pipe closes."""
        while True:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "round":
                worker.last_round = message[1]
                if worker.on_round is not None:
                    worker.on_round(message[1], message[2])
            else:
                self._call(self._on_message, worker, message)
        _join(worker.process)
        worker.conn.close()
        self._call(self._on_exit, worker)

    def _call(self, function: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(function, *args)
        except RuntimeError:
            pass  # the loop is closed: the server has gone

    def _on_message(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        if message[0] == "ready":
            log.debug("%s worker %d is ready", self.device, worker.pid)
            self._restart_delay_s = RESTART_DELAY_S
        elif message[0] == "done":
            worker.jobs += 1
            if worker.outcome is not None and not worker.outcome.done():
                worker.outcome.set_result(message[1])
        worker.job_id, worker.on_round, worker.outcome = None, None, None
        if worker.killed_for is not None:  # killed as it finished: its end is on the way
            worker.state = "dying"
            return
        worker.state = "idle"
        self._idle.put_nowait(worker)

    def _on_exit(self, worker: _Worker) -> None:
        self._workers.remove(worker)
        ready = worker.state != "starting"
        outcome = worker.outcome
        if outcome is not None and not outcome.done():
            if worker.killed_for == "stop":
                outcome.set_result(Finished.stopped(worker.last_round))
            elif worker.killed_for == "memory":
                limit_mb = self.memory_limit_bytes / 1024**2
                outcome.set_result(
                    Failed(
                        "out_of_memory",
                        f"the job took more than its worker's memory limit of {limit_mb:.0f} MB"
                        f" and was stopped in round {worker.last_round + 1}",
                    )
                )
            else:
                outcome.set_exception(WorkerLost(f"its worker process died ({_exit_reason(worker.process.exitcode)})"))
        if self._closing:
            return
        if worker.killed_for is None:
            log.warning("%s worker %d died (%s)", self.device, worker.pid, _exit_reason(worker.process.exitcode))
        if ready:
            self._start_spawning()
        else:
            self._background(self._spawn_later())

    def _kill_if_busy(self, worker: _Worker, job_id: str, reason: str) -> None:
        if worker.job_id == job_id and worker in self._workers:
            log.info("job %s: killing its %s worker %d (%s)", job_id, self.device, worker.pid, reason)
            worker.killed_for = reason
            worker.process.kill()

    async def _watch_memory(self) -> None:
        while True:
            for worker in list(self._workers):
                worker.memory_bytes = own_memory_bytes(worker.pid)
                if (
                    worker.job_id is not None
                    and worker.memory_bytes is not None
                    and worker.memory_bytes > self.memory_limit_bytes
                ):
                    self._kill_if_busy(worker, worker.job_id, "memory")
            await asyncio.sleep(MEMORY_CHECK_S)

    def _background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def ignore_stop_signals() -> None:
    """In a worker or decoder process: Ctrl-C, or a SIGTERM sent to the whole process group (as
    systemd does), is for the server, which then stops its processes itself; else they would die
    first, and the server take that for a crash."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _in_daemon_thread(function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """`function(*args)` in a daemon thread of its own, as a future of this loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(error: BaseException | None, result: Any) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = function(*args), None
        except BaseException as failure:  # noqa: B036 - handed to the loop, which raises it
            result, error = None, failure
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, error, result)

    threading.Thread(target=run, name="worker-process", daemon=True).start()
    return future


# Starting a process polls every child this process has started (multiprocessing's `_cleanup`),
# and reading a forkserver child's exit status twice gives 255: one at a time.
_PROCESSES = threading.Lock()


# Every worker process started and not yet reaped. Workers ignore SIGTERM, which is what
# multiprocessing sends its daemonic children at exit before it waits for them: whatever a pool
# has not closed is killed first, so that the interpreter's end never waits forever.
_STARTED: set[Any] = set()


@atexit.register
def _kill_the_rest() -> None:
    for process in list(_STARTED):
        with contextlib.suppress(Exception):
            process.kill()


def _start(process: Any) -> None:
    with _PROCESSES:
        process.start()
        _STARTED.add(process)


def _join(process: Any) -> None:
    # A worker's pipe ends as it exits; the fork server writes its status just after.
    multiprocessing.connection.wait([process.sentinel], timeout=5)
    with _PROCESSES:
        process.join(0)
        if process.exitcode is not None:
            _STARTED.discard(process)


def forkserver_context() -> Any:
    """Where worker and decoder processes come from: forked from one fork server, a fresh process
    (never this threaded one) that has their modules loaded already."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["boostream.workers.local", "boostream.workers.decoding"])
    return context


def own_memory_bytes(pid: int) -> int | None:
    """The process's own resident memory (anonymous pages: not the files it maps, such as its job's
    input), or None where the system does not say."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"
