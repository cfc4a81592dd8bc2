"""The server's secret key, the keys derived from it for each purpose, and HMAC-SHA256 signatures.

The key lives in a file under the data directory (or in Redis) unless the operator configures one,
so that signatures stay valid across restarts and across processes sharing it. Nothing is signed
with it directly: artifacts, webhooks and browser sessions each have a key of their own, derived
from it (`SigningKeys`), so that a signature made for one purpose is worthless for another (a
webhook body, signed and sent to a receiver, is not a signed artifact that /predict would load).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

MIN_KEY_BYTES = 16
NEW_KEY_BYTES = 32
PREFIX = "sha256="


def load_or_create_key(path: Path, configured: str | None = None) -> bytes:
    """The operator's key when given, else the key in `path`, created there on first use.

    An empty `configured` counts as none, as the `secret_key` setting's default is "".
    """
    if configured:
        return configured_key(configured)
    try:
        return _read_key(path)
    except FileNotFoundError:
        _create_key_file(path)
        return _read_key(path)


@dataclass(frozen=True)
class SigningKeys:
    """One key per purpose, derived from the server's secret key."""

    artifacts: bytes
    webhooks: bytes
    sessions: bytes

    @classmethod
    def of(cls, secret: bytes) -> SigningKeys:
        return cls(**{purpose: derived(secret, purpose) for purpose in ("artifacts", "webhooks", "sessions")})


def derived(secret: bytes, purpose: str) -> bytes:
    """The key for `purpose`: HMAC-SHA256 of its name under the secret key (as HKDF's expand step
    does with one block)."""
    return hmac.new(secret, b"boostream signing key: " + purpose.encode(), hashlib.sha256).digest()


def configured_key(configured: str) -> bytes:
    """The operator's key, ValueError when it is too short to sign with."""
    return _long_enough(configured.encode("utf-8"), "the configured key")


def sign(key: bytes, body: bytes) -> str:
    return PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(key: bytes, body: bytes, signature: str) -> bool:
    # Compared as bytes: compare_digest refuses non-ASCII str, and a signature comes from outside.
    return hmac.compare_digest(sign(key, body).encode(), signature.encode("utf-8", "replace"))


def _read_key(path: Path) -> bytes:
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"the key file {path} does not hold a hex-encoded key") from None
    return _long_enough(key, f"the key in {path}")


def _create_key_file(path: Path) -> None:
    """Write a new key to a private temporary file, then link it into place.

    `os.link` fails if the name exists, so when two processes race, the first link wins, the
    other keeps that key, and nobody ever reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(secrets.token_hex(NEW_KEY_BYTES) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process created the key first: everyone uses that one
    finally:
        temporary.unlink(missing_ok=True)


def _long_enough(key: bytes, what: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{what} has {len(key)} bytes; a signing key needs at least {MIN_KEY_BYTES}")
    return key
