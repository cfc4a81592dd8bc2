"""JSON training bodies decoded in processes of their own, so that the server's event loop never
waits on a decoder holding Python's GIL: msgspec's scan of a body's shape holds it for about
1.2 s per GB, which stopped every stream's events and `/health` for as long.

A body arrives in a `SharedBody`: memory of its own (a memfd) that a decoder process opens through
`/proc`, so the body is not copied across. The decoder checks the request as the server would
(`decode_train_request`) and writes the arrays where the job's worker will read them (an
`incoming-*` folder under the inputs directory, which the job manager renames to the job's); what
comes back is the request without its arrays (`Decoded`). Domain errors come back as themselves.
A large table in the body is parsed on every core this process may use (`parse_tables_with`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import mmap
import os
import shutil
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from boostream.config import machine_cores
from boostream.errors import Interrupted, StorageFailed, StorageFull, disk_full
from boostream.jobs import inputs
from boostream.memory import MAPPED_MIN_BYTES, populate
from boostream.requests.json_body import decode_train_request, parse_tables_with
from boostream.trainers import create_trainers
from boostream.trainers.base import Backend
from boostream.workers.local import forkserver_context, ignore_stop_signals

INCOMING_PREFIX = "incoming-"


class SharedBody(mmap.mmap):
    """A request body's memory that another process can map: an anonymous file (memfd), so no
    size limit of /dev/shm applies. Written like a bytearray; `close()` frees it. Its pages are
    taken as they are written (or populated, with `memory.populate`), not all at once: a body that
    is slow to come holds only what came."""

    fd: int

    def __new__(cls, size: int) -> SharedBody:
        fd = os.memfd_create("boostream-body", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            body = super().__new__(cls, fd, size)
        except BaseException:
            os.close(fd)
            raise
        body.fd = fd
        return body

    @property
    def source(self) -> str:
        """Where another process of this user opens it."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def close(self) -> None:
        super().close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # a request cut short leaves its body to the garbage collector
        if getattr(self, "fd", -1) >= 0:
            self.close()


def shared_bodies_work() -> bool:
    """Whether this system has memfds and /proc (Linux): else bodies are decoded in threads."""
    return hasattr(os, "memfd_create") and Path(f"/proc/{os.getpid()}/fd").is_dir()


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A training request checked in a decoder process; its arrays are in `folder`."""

    model_type: str
    objective: str
    params: dict[str, Any]
    callback_url: str | None
    timeout_s: float | None
    artifact_format: str
    folder: Path


class Decoders:
    """`processes` decoder processes, started by `start` (else by the first body)."""

    def __init__(self, processes: int, inputs_dir: Path, lightgbm_threads: int) -> None:
        self.processes = processes
        self.inputs_dir = inputs_dir
        self.lightgbm_threads = lightgbm_threads
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._alive: Connection | None = None

    def start(self) -> None:
        """Start the processes now, in the background: the first body need not wait for them."""
        pool = self._pool()
        for _ in range(self.processes):
            pool.submit(os.getpid)

    async def decode_train(
        self, body: SharedBody | bytes | bytearray, unavailable: Mapping[str, str], max_cells: int
    ) -> Decoded:
        """Decode and check `body`, leaving its arrays in a new incoming folder; a domain error
        naming the field at fault, as `decode_train_request` raises them. A `SharedBody` is this
        call's from then on: it is freed once its decoder is done with it, whatever happens here
        meanwhile (the request cancelled, say)."""
        if not isinstance(body, SharedBody):  # sent without a Content-Length, or by MCP
            body = await asyncio.to_thread(_shared_copy, body)
        shared = body
        folder = self.inputs_dir / f"{INCOMING_PREFIX}{uuid.uuid4().hex}"
        args = (shared.source, len(shared), folder, dict(unavailable), max_cells, self.lightgbm_threads)
        abandoned = threading.Event()  # nobody will take the folder: the request failed or went away

        def done(decoding: concurrent.futures.Future[Decoded]) -> None:
            # In the pool's own thread, once the decoder has let go of the body (or never got it).
            shared.close()
            if abandoned.is_set() or decoding.cancelled() or decoding.exception() is not None:
                shutil.rmtree(folder, ignore_errors=True)

        pool = self._pool()
        try:
            decoding = pool.submit(_decode, *args)
        except BaseException:
            shared.close()
            raise
        decoding.add_done_callback(done)  # run by the pool's thread: unmapping a GB takes 0.1 s
        try:
            return await asyncio.wrap_future(decoding)
        except BrokenProcessPool:
            self._close(pool)  # a new pool for the next body
            raise Interrupted(
                "the process decoding this request died (out of memory for a body this large?); try again"
            ) from None
        except BaseException:
            abandoned.set()
            if decoding.done():  # else `done` removes it when the decoder finishes
                await asyncio.to_thread(shutil.rmtree, folder, True)
            raise

    def close(self) -> None:
        if self._executor is not None:
            self._close(self._executor)

    def _close(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        pool.shutdown(wait=False, cancel_futures=True)
        if self._executor is pool:  # not a newer one, made since this one broke
            self._executor = None

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            context = forkserver_context()
            # Each decoder waits on `alive`'s other end, which only this process writes to: when it
            # goes, even by kill -9, the decoders see the end of the pipe and exit. (A pool's own
            # queues never end for them: they hold both ends.)
            alive, self._alive = context.Pipe(duplex=False)
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.processes, mp_context=context, initializer=_exit_with_server, initargs=(alive,)
            )
        return self._executor


def _shared_copy(data: bytes | bytearray) -> SharedBody:
    body = SharedBody(max(len(data), 1))  # a map cannot be empty: one space, which JSON ignores
    if len(body) >= MAPPED_MIN_BYTES:
        populate(body)  # in one call, not a page fault per 4 KiB as it fills
    body[: len(data)] = data
    if not data:
        body[:1] = b" "
    return body


# In a decoder process

_TRAINERS: dict[str, Backend] = {}


def _exit_with_server(alive: Connection) -> None:
    ignore_stop_signals()

    def wait() -> None:
        try:
            alive.recv()
        except (EOFError, OSError):
            pass
        os._exit(0)

    threading.Thread(target=wait, name="alive", daemon=True).start()


def _decode(
    source: str, size: int, folder: Path, unavailable: dict[str, str], max_cells: int, lightgbm_threads: int
) -> Decoded:
    if not _TRAINERS:
        _TRAINERS.update(create_trainers(lightgbm_threads))
        parse_tables_with(machine_cores())  # this process has no thread but `alive`'s, which holds no lock
    with open(source, "rb") as file:
        body = file.read(size)  # the decoder searches it with bytes' methods, which a map lacks
    spec = decode_train_request(body, _TRAINERS, unavailable, max_cells)
    del body
    try:
        inputs.save(folder, spec.data)
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)
        kind = StorageFull if disk_full(error) else StorageFailed
        raise kind(f"the request's table could not be kept on disk: {error}") from None
    return Decoded(
        model_type=spec.trainer.name,
        objective=spec.objective,
        params=spec.params,
        callback_url=spec.callback_url,
        timeout_s=spec.timeout_s,
        artifact_format=spec.artifact_format,
        folder=folder,
    )
