"""Webhooks: a signed JSON POST to a client's `callback_url` when a job ends.

A callback URL makes this server send requests wherever a client says, so only hosts the operator
allowed are accepted (`WebhookPolicy`), and redirects are never followed. Receivers check the
`X-Boostream-Signature` header with the server's key, and de-duplicate retries by
`X-Boostream-Delivery`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from typing import Any

import httpx
import orjson

from boostream import __version__
from boostream.errors import InvalidParameter
from boostream.jobs.records import JobRecord, job_urls
from boostream.models.signing import sign

log = logging.getLogger("boostream.webhooks")

FIELD = "callback_url"
ANY_HOST = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}
RETRYABLE_STATUSES = {408, 429}  # and every 5xx
RETRY_AFTER_STATUSES = {429, 503}
MAX_RETRY_AFTER_S = 60.0


class WebhookPolicy:
    """Which callback URLs clients may give: the operator's allow-list of `host` or `host:port`."""

    def __init__(self, allowed_hosts: tuple[str, ...] = ()) -> None:
        entries = {entry.strip() for entry in allowed_hosts} - {""}  # "a,b," has a blank entry
        self.any_host = ANY_HOST in entries
        self.allowed = {_parse_allowed(entry) for entry in entries - {ANY_HOST}}

    def check(self, url: str) -> str:
        """The URL, normalised, or InvalidParameter saying why it is refused."""
        if not self.any_host and not self.allowed:
            raise _invalid(
                "webhooks are disabled on this server; the operator can allow callback hosts "
                "with --webhook-hosts (or BOOSTREAM_WEBHOOK_HOSTS), comma-separated"
            )
        try:
            # httpx parses it here because httpx sends it: no room for two parsers to disagree.
            parsed = httpx.URL(url)
        except httpx.InvalidURL as error:
            raise _invalid(f"callback_url is not a valid URL: {error}") from None
        if parsed.scheme not in DEFAULT_PORTS:
            raise _invalid("callback_url must be an http or https URL (http://... or https://...)")
        if not parsed.host:
            raise _invalid("callback_url has no host")
        if parsed.userinfo:
            raise _invalid(
                "callback_url must not contain credentials (user:password@); "
                "receivers check the X-Boostream-Signature header instead"
            )
        port = parsed.port if parsed.port is not None else DEFAULT_PORTS[parsed.scheme]
        if not 0 < port < 65536:
            raise _invalid(f"callback_url has an invalid port {port}")
        if not self._allows(_comparable(parsed.host), port):
            raise _invalid(
                f"callback_url host {parsed.host!r} is not in this server's webhook allow-list (--webhook-hosts)"
            )
        return str(parsed.copy_with(fragment=None))  # a fragment is never sent anyway

    def _allows(self, host: str, port: int) -> bool:
        return self.any_host or (host, None) in self.allowed or (host, port) in self.allowed


@dataclasses.dataclass(frozen=True)
class _Failure:
    """One attempt that got no 2xx answer."""

    reason: str
    retry: bool
    wait_s: float | None = None  # what the receiver asked for (Retry-After); None: back off


class WebhookSender:
    """Delivers payloads as signed JSON POSTs, retrying with backoff; never raises to the caller."""

    def __init__(self, key: bytes, *, attempts: int = 5, first_backoff_s: float = 1.0, timeout_s: float = 10.0) -> None:
        if attempts < 1:
            raise ValueError("a webhook needs at least one attempt")
        self.key = key
        self.attempts = attempts
        self.first_backoff_s = first_backoff_s
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def deliver(self, url: str, payload: dict[str, Any], delivery: str | None = None) -> bool:
        """True once a 2xx answer came back; False after giving up (logged, not raised).
        `delivery`: the X-Boostream-Delivery id (the job's id for a job's webhook, so that a
        receiver also recognises one sent again after a server restart); new when not given."""
        delivery = delivery or uuid.uuid4().hex
        try:
            return await self._deliver(url, orjson.dumps(payload), delivery)
        except Exception:
            # A webhook is a courtesy to the client: it must never fail the job that triggered it.
            log.exception("webhook %s to %s: not delivered", delivery, _where(url))
            return False

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver(self, url: str, body: bytes, delivery: str) -> bool:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"boostream/{__version__}",
            "X-Boostream-Signature": sign(self.key, body),
            "X-Boostream-Delivery": delivery,  # the same on every retry, for de-duplication
        }
        backoff = self.first_backoff_s
        for attempt in range(1, self.attempts + 1):
            failure = await self._attempt(url, body, headers)
            if failure is None:
                log.info("webhook %s to %s: delivered on attempt %d", delivery, _where(url), attempt)
                return True
            log.warning(
                "webhook %s to %s: attempt %d of %d failed: %s", delivery, _where(url), attempt, self.attempts,
                failure.reason,
            )
            if not failure.retry or attempt == self.attempts:
                break
            await asyncio.sleep(failure.wait_s if failure.wait_s is not None else _jittered(backoff))
            backoff *= 2
        log.warning("webhook %s to %s: gave up after %d attempts", delivery, _where(url), attempt)
        return False

    async def _attempt(self, url: str, body: bytes, headers: dict[str, str]) -> _Failure | None:
        """None when the receiver answered 2xx, else why not and whether to try again."""
        try:
            # One deadline for the whole attempt: httpx's own timeouts count per read, so a
            # receiver that drips bytes could otherwise hold an attempt for ever.
            status, retry_after = await asyncio.wait_for(self._post(url, body, headers), self.timeout_s)
        except (httpx.TransportError, asyncio.TimeoutError) as error:
            return _Failure(_describe(error), retry=True)
        if 200 <= status < 300:
            return None
        if status in RETRYABLE_STATUSES or status >= 500:
            return _Failure(
                f"HTTP {status}", retry=True, wait_s=retry_after if status in RETRY_AFTER_STATUSES else None
            )
        if 300 <= status < 400:
            return _Failure(f"HTTP {status}, a redirect, not followed", retry=False)
        return _Failure(f"HTTP {status}, not retried", retry=False)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, float | None]:
        # Streamed so that the answer's body is never read: a receiver cannot make it large.
        async with self._http().stream("POST", url, content=body, headers=headers) as response:
            return response.status_code, _retry_after(response.headers.get("Retry-After"))

    def _http(self) -> httpx.AsyncClient:
        # Made on first use so that it belongs to the running event loop, then kept for reuse.
        if self._client is None:
            # A redirect could lead outside the allow-list, so it is an answer, not a hop.
            self._client = httpx.AsyncClient(timeout=None, follow_redirects=False)
        return self._client


def _parse_allowed(entry: str) -> tuple[str, int | None]:
    refused = ValueError(f"webhook host {entry!r} is not a host name or host:port")
    try:
        parsed = httpx.URL("//" + entry)
    except httpx.InvalidURL:
        raise refused from None
    if not parsed.host or parsed.userinfo or parsed.raw_path != b"/" or parsed.fragment:
        raise refused
    return _comparable(parsed.host), parsed.port


def _comparable(host: str) -> str:
    # httpx lowercases hosts; a trailing dot names the same DNS host.
    return host.rstrip(".")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a numeric Retry-After, capped; None when absent or an HTTP date (back off)."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return min(seconds, MAX_RETRY_AFTER_S) if seconds >= 0 else None  # NaN is not >= 0 either


def _jittered(seconds: float) -> float:
    # A little jitter keeps many jobs that failed together from retrying in lockstep.
    return seconds * random.uniform(1.0, 1.2)


def _where(url: str) -> str:
    """Scheme, host and port only: receivers often put secrets in the path or query."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "an invalid URL"
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _invalid(message: str) -> InvalidParameter:
    return InvalidParameter(FIELD, message)


def webhook_payload(record: JobRecord) -> dict[str, Any]:
    """What a callback receives when a job ends: enough to act on, not the artifact itself."""
    urls = job_urls(record.id, record.request.base_url)
    return {
        "job_id": record.id,
        "status": record.status.value,
        "model_type": record.model_type,
        "objective": record.objective,
        "iterations": record.iteration,
        "metrics": record.metrics,
        "artifact_id": record.artifact_id,
        "error": {"code": record.error_code, "message": record.error_message} if record.error_code else None,
        "finished_at": record.finished_at,
        "status_url": urls["status_url"],
        "result_url": urls["result_url"],
    }


async def send_job_webhook(sender: WebhookSender, policy: WebhookPolicy, record: JobRecord) -> str:
    """Send the webhook of a job that ended, under the allow-list as it is now (the operator may
    have changed it since the job was submitted); its `callback_state`: delivered, failed or
    refused."""
    assert record.request.callback_url is not None
    try:
        url = policy.check(record.request.callback_url)
    except InvalidParameter as refused:
        log.warning("job %s: webhook not sent: %s", record.id, refused.message)
        return "refused"
    return "delivered" if await sender.deliver(url, webhook_payload(record), delivery=record.id) else "failed"

