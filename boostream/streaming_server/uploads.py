"""Request bodies, received with their size checked as they arrive: a JSON body into one buffer,
and tables sent as files (CSV or Parquet) spooled to disk as they arrive, so a large upload is
never held whole in memory, then parsed from there off the event loop.

A body is received before its request takes one of the few slots that decode bodies, so that one
that comes slowly holds up no other request; what the server holds of bodies not yet decoded is
counted as it arrives, against a `BodyBudget`.

A file comes either as the whole body, with its media type as Content-Type and the request's other
fields in the query string, or as the one file of a `multipart/form-data` upload, with the fields
as form fields (and in the query string).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, overload

import anyio
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from boostream import memory
from boostream.errors import Busy, InvalidData, InvalidJson, TooLarge
from boostream.streaming_server.errors import ApiError

TABLE_TYPES = {
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.arrow.file": "arrow",
}
EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrows": "arrow",  # an Arrow IPC stream
    ".arrow": "arrow",  # the Arrow IPC file format (Feather 2)
    ".feather": "arrow",
}
MULTIPART = "multipart/form-data"
# Chunks are gathered to this size before each write, which runs in a thread.
WRITE_BATCH_BYTES = 8 * 1024 * 1024
MAX_FORM_FIELDS = 200
Buffer = TypeVar("Buffer", bound=bytearray | mmap.mmap)
# A body buffer up to this size is allocated on the event loop; a larger one in a thread.
LOOP_ALLOCATION_BYTES = 4 << 20
# The memory of a body with a Content-Length is taken (counted, and populated in a thread where it
# is a map) this much at a time, ahead of the bytes as they come.
COMMIT_STEP_BYTES = 32 << 20
# Starlette's words for a multipart body it cannot parse (as HTTPException's detail), by their start,
# and what to do about them.
FORM_PROBLEMS = {
    "Too many files": "the upload has more than one file: attach only the table; the other fields go as text fields",
    "Missing boundary": "the Content-Type has no boundary: let the HTTP client write it (curl -F does), not by hand",
}


class BodyBudget:
    """The bytes of request bodies the server holds before they are decoded, counted as they
    arrive (a body that comes slowly holds only what came), against `total`: a body that would
    take more is refused with `Busy` (503, with Retry-After) rather than waited for."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0

    @contextlib.contextmanager
    def share(self) -> Iterator[Share]:
        """One request's part of the budget, given back when the block ends (its body decoded)."""
        share = Share(self)
        try:
            yield share
        finally:
            self.held -= share.taken


class Share:
    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.taken = 0

    def take(self, size: int) -> None:
        budget = self.budget
        if budget.held + size > budget.total:
            held = budget.held >> 20
            raise Busy(
                f"the server holds {held} MiB of request bodies not yet decoded, as much as it may; send again shortly",
                retry_after_s=1,
            )
        budget.held += size
        self.taken += size


@dataclasses.dataclass
class Upload:
    file: BinaryIO  # positioned at the start
    kind: str  # "csv" or "parquet"
    fields: dict[str, str]

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.file.close)


async def receive_table(request: Request, media_type: str, limit: int, directory: Path, share: Share) -> Upload:
    """The uploaded table, spooled; refused when it is too large or not a table. A table sent as
    the body counts against `share` as it comes; a multipart upload is spooled by Starlette."""
    if media_type == MULTIPART:
        return await _receive_form(request, limit)
    return Upload(
        await _spool_body(request, limit, directory, share), TABLE_TYPES[media_type], dict(request.query_params)
    )


@overload
async def read_body(request: Request, limit: int, *, share: Share | None = None) -> bytearray: ...


@overload
async def read_body(
    request: Request, limit: int, allocate: type[Buffer], *, share: Share | None = None
) -> Buffer | bytearray: ...


async def read_body(
    request: Request, limit: int, allocate: type[Any] = bytearray, *, share: Share | None = None
) -> Any:
    """The body, refused (TooLarge) as soon as it is known to exceed `limit`, before reading the rest.
    With a Content-Length the buffer is allocated once, by `allocate`: growing it chunk by chunk
    cost seconds per GB. Where `allocate` makes a map (a class of mmap), its pages are taken
    COMMIT_STEP_BYTES at a time as the bytes come, each step counted against `share`; anything else
    (a bytearray, zero-filled at once) is counted whole before it is allocated. Without a
    Content-Length, the body grows in a bytearray, counted as it grows."""
    declared = declared_length(request, limit)
    if declared == 0:
        return bytearray()  # a map cannot be empty
    if declared is not None:
        lazy = isinstance(allocate, type) and issubclass(allocate, mmap.mmap)
        if not lazy and share is not None:
            share.take(declared)
        # Zero-filling fresh memory takes about 0.5 s per GB here: not on the event loop.
        body = (
            allocate(declared)
            if declared < LOOP_ALLOCATION_BYTES
            else await anyio.to_thread.run_sync(allocate, declared)
        )
        view, filled, taken = memoryview(body), 0, 0 if lazy else declared
        async for chunk in request.stream():
            end = filled + len(chunk)
            if end > len(body):
                raise InvalidJson(None, "the body is longer than its Content-Length")
            if end > taken:
                taken = await _take(body, taken, end, share)
            view[filled:end] = chunk
            filled = end
        view.release()
        if filled != len(body):
            raise InvalidJson(None, f"the body ended after {filled} of its {len(body)} bytes")
        return body
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the body is more than the limit of {limit} bytes")
        if share is not None:
            share.take(len(chunk))
    return body


async def _take(body: bytearray | mmap.mmap, taken: int, needed: int, share: Share | None) -> int:
    """Take the body's memory on from `taken` to past `needed`, a step at a time; how far it goes."""
    steps = -(-needed // COMMIT_STEP_BYTES)
    until = min(len(body), steps * COMMIT_STEP_BYTES)
    if share is not None:
        share.take(until - taken)
    if isinstance(body, mmap.mmap) and until - taken >= memory.MAPPED_MIN_BYTES:
        # In one call off the loop, not a page fault per 4 KiB as it fills.
        await anyio.to_thread.run_sync(memory.populate, body, taken, until)
    return until


def declared_length(request: Request, limit: int) -> int | None:
    """The body's Content-Length, if it has one; TooLarge at once when it is over `limit`."""
    declared = request.headers.get("content-length", "")
    if not (declared.isascii() and declared.isdigit()):
        return None
    if int(declared) > limit:
        raise TooLarge(f"the body is {declared} bytes, more than the limit of {limit}")
    return int(declared)


async def _spool_body(request: Request, limit: int, directory: Path, share: Share) -> BinaryIO:
    declared_length(request, limit)
    directory.mkdir(parents=True, exist_ok=True)
    # Unlinked at once: the open file is all there is, and it vanishes however the request ends.
    file = tempfile.TemporaryFile(dir=directory)
    # Two buffers: one is written to the file in a thread while the body fills the other.
    buffers = [bytearray(WRITE_BATCH_BYTES), bytearray(WRITE_BATCH_BYTES)]
    writing: asyncio.Future[None] | None = None
    loop = asyncio.get_running_loop()
    try:
        received, filled = 0, 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise TooLarge(f"the body is more than the limit of {limit} bytes")
            share.take(len(chunk))
            rest = memoryview(chunk)
            while rest:
                taken = min(len(rest), WRITE_BATCH_BYTES - filled)
                buffers[0][filled : filled + taken] = rest[:taken]
                filled, rest = filled + taken, rest[taken:]
                if filled == WRITE_BATCH_BYTES:
                    if writing is not None:
                        await writing
                    writing = loop.run_in_executor(None, memory.write_all, file, buffers[0])
                    buffers.reverse()
                    filled = 0
        if writing is not None:
            await writing
        await loop.run_in_executor(None, memory.write_all, file, memoryview(buffers[0])[:filled])
        file.seek(0)
    except BaseException:
        if writing is not None:
            await asyncio.wait([writing])  # the thread must be done with the file before it closes
        file.close()
        raise
    return file


async def _receive_form(request: Request, limit: int) -> Upload:
    if declared_length(request, limit) is None:
        raise ApiError(411, "length_required", "send a multipart upload with its Content-Length")
    # Starlette spools each file part to a temporary file beyond 1 MiB.
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except HTTPException as error:
        raise _form_error(error.detail) from None
    files = [(name, value) for name, value in form.multi_items() if isinstance(value, UploadFile)]
    if not files:
        await form.close()
        raise InvalidData("file", "the multipart upload has no file: attach the table as a file part")
    name, upload = files[0]
    kind = _kind_of(upload)
    if kind is None:
        await form.close()
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the file {upload.filename or name!r} is not CSV, Parquet or Arrow: name it "
            f".csv, .parquet or .arrows, or give its part a Content-Type of {sorted(TABLE_TYPES)}",
            name,
        )
    fields = {**request.query_params, **{k: v for k, v in form.multi_items() if isinstance(v, str)}}
    upload.file.seek(0)
    return Upload(upload.file, kind, fields)


def _form_error(detail: str) -> ApiError:
    problem = next((advice for start, advice in FORM_PROBLEMS.items() if detail.startswith(start)), None)
    return ApiError(400, "invalid_multipart", problem or f"the multipart upload cannot be read: {detail}", "file")


def _kind_of(upload: UploadFile) -> str | None:
    media_type = (upload.content_type or "").split(";")[0].strip().lower()
    if media_type in TABLE_TYPES:
        return TABLE_TYPES[media_type]
    return EXTENSIONS.get(os.path.splitext(upload.filename or "")[1].lower())

