"""What can go wrong with a request, in the domain's words: no transport meaning here.

Every error carries a `code` (a stable string a client can branch on), a message for a person,
and where there is one the request `field` at fault. The core raises them; each edge maps them
once: the HTTP edge to statuses (`streaming_server/errors.py`), the MCP edge to tool errors
(`mcp_server.py`), the CLI prints them as they are.
"""

from __future__ import annotations

import errno
from typing import Any, ClassVar

# What a message quotes of a client's input (a path, a row of a file, a parser's words on it) is cut
# to this length.
QUOTE_CHARS = 200


class BoostreamError(Exception):
    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its attributes, whatever its constructor takes: it crosses from a decoder
        process as itself."""
        return (_restore, (type(self), self.args, self.__dict__))

    def details(self) -> dict[str, Any]:
        """The error as JSON shows it: code, message, and the field when one is at fault."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return error

    def line(self) -> str:
        """The error on one line, as the MCP edge and the CLI show it: `code (field): message`."""
        return self.code + (f" ({self.field})" if self.field else "") + f": {self.message}"


class FieldError(BoostreamError):
    """Input refused, naming the request field at fault; the field comes first, as it is the point."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message, field=field)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidData(FieldError):
    """Arrays that no model can be trained on, or a table that cannot be read: the data is at fault."""

    code = "invalid_data"


class InvalidJson(InvalidData):
    """A body that is not the JSON it should be."""

    code = "invalid_json"


class InvalidParameter(FieldError):
    """An option or hyperparameter that is unknown, of the wrong type or out of bounds."""

    code = "invalid_parameter"


class TooSlow(BoostreamError):
    """A client stopped sending its request's body."""

    code = "request_timeout"


class TooLarge(BoostreamError):
    """More than a limit of this server allows (body bytes, table cells)."""

    code = "too_large"


class Unauthorized(BoostreamError):
    """No API key where the server needs one, or one that is unknown or revoked."""

    code = "unauthorized"


class NotFound(BoostreamError):
    """No such job or artifact: unknown, deleted, or expired."""

    code = "not_found"


class Gone(BoostreamError):
    """A record that exists but whose files are missing from the server."""

    code = "gone"


class Untrusted(BoostreamError):
    """A model blob that would run code if loaded, and that this server did not sign."""

    code = "untrusted_artifact"


class Unavailable(BoostreamError):
    """A backend that cannot train here, with the reason."""

    code = "backend_unavailable"


class StorageFailed(BoostreamError):
    """What the server must keep on disk could not be written (a full or read-only disk)."""

    code = "storage_failed"


class StorageFull(StorageFailed):
    """The disk that the server keeps its jobs, tables or models on is full."""

    code = "insufficient_storage"

    @classmethod
    def of(cls, error: BaseException) -> StorageFull:
        """The refusal of a request that `error` (a full disk) stopped."""
        return cls(f"the server's disk is full ({error}); try again once its operator has made room")


def disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or what caused it, is a full disk: ENOSPC or EDQUOT, or SQLite's "database
    or disk is full"."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(error, "sqlite_errorname", None) == "SQLITE_FULL":
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


class StoreUnreachable(BoostreamError):
    """Where job state is kept (Redis) cannot be reached just now; trying again may work."""

    code = "store_unreachable"


class Interrupted(BoostreamError):
    """The process serving the request died before it finished; sending it again may work."""

    code = "interrupted"


class Conflict(BoostreamError):
    """The job is not where the request needs it: `code` says which way (`not_finished`,
    `no_result`, `already_finished`) and `job_status` where it stands."""

    def __init__(self, code: str, message: str, job_status: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # per instance: one kind of error, three codes
        self.job_status = job_status

    def details(self) -> dict[str, Any]:
        return {**super().details(), "status": self.job_status}


class QueueFull(BoostreamError):
    """As many jobs wait for a device as the server takes; `retry_after_s` estimates when one frees."""

    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Busy(QueueFull):
    """The server holds as many bytes of request bodies not yet decoded as it may."""

    code = "busy"


class QuotaExceeded(QueueFull):
    """One API key has as many jobs waiting or training as a key may."""

    code = "too_many_jobs"


class RateLimited(QueueFull):
    """One API key sends requests faster than a key may."""

    code = "rate_limited"


def quotable(text: str) -> str:
    """Client input fit to quote in a message: cut short, control characters escaped, so that a
    terminal printing the message shows them rather than obeys them."""
    short = text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + " ..."
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in short)


def _restore(kind: type[BoostreamError], args: tuple[Any, ...], state: dict[str, Any]) -> BoostreamError:
    error = kind.__new__(kind)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error
