"""API keys: who may call the server, and who a caller is.

The operator creates keys (`boostream keys create NAME`); the key is printed once and only its
SHA-256 is kept. A key is random (32 bytes), so a fast hash is enough: nobody can guess one from
its hash, and checking a request costs one lookup by hash. A key has a short public id (the first
characters of its hash, for `keys list` and `keys revoke`), a name (what it owns: jobs belong to
the name, so a key revoked and created again under the same name keeps its jobs), and an admin
flag (an admin sees every job).

Keys live beside the jobs: in the data directory (`keys.sqlite3`, apart from the jobs' database,
which the running server holds, so that `boostream keys` works while it runs) or in Redis. A
server asks for a key once any key has ever been created (a revoked one counts: revoking the last
key does not open the server); before that, a server on loopback serves everyone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import re
import secrets
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from boostream.jobs.redis_state import reachable

if TYPE_CHECKING:
    from boostream.config import Settings

KEY_PREFIX = "bst_"
KEY_BYTES = 32
ID_CHARS = 12
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who sent a request: the name of its key, and whether that key is an admin's."""

    name: str | None  # None: a server without keys, where every client is everyone
    admin: bool = False

    def owns(self, owner: str | None) -> bool:
        """Whether this caller may see and act on what `owner` created (what a job this caller
        creates belongs to is its `name`)."""
        return self.admin or (self.name is not None and owner == self.name)


# Every client of a server without keys (or with --no-auth), and `train --local`.
EVERYONE = Caller(None, admin=True)


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    admin: bool
    created_at: float
    revoked_at: float | None = None

    def view(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class KeyStore(Protocol):
    async def create(self, name: str, admin: bool) -> tuple[str, KeyRecord]:
        """A new key, and its record; the key itself is kept nowhere."""

    async def records(self) -> list[KeyRecord]:
        """Every key, oldest first."""

    async def revoke(self, id_or_name: str) -> list[KeyRecord]:
        """Revoke the key with this id, or every key with this name; those revoked."""

    async def find(self, key: str) -> KeyRecord | None:
        """The live key that `key` is."""

    async def by_id(self, key_id: str) -> KeyRecord | None:
        """The live key with this id (a session names its key by id)."""

    async def any(self) -> bool:
        """Whether any key was ever created."""


def is_loopback(host: str) -> bool:
    """Whether an address to listen on reaches this machine only (`localhost`, 127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def exposure_problem(settings: Settings, keys_exist: bool) -> str | None:
    """Why a server may not start: it would listen beyond this machine and serve everyone, though
    nobody said so (`--no-auth`); None when it may."""
    if settings.no_auth or keys_exist or is_loopback(settings.host):
        return None
    where = "--redis URL" if settings.redis else f"--data-dir {settings.data_dir}"
    return (
        f"this server would listen on {settings.host or 'every address'}, which is not loopback, and no API key "
        f"exists: create one first (boostream keys create NAME {where}), or pass --no-auth to serve everyone"
    )


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hashed(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"a key's name is 1 to 64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit; "
            f"not {name[:80]!r}"
        )
    return name


def _new_record(name: str, admin: bool) -> tuple[str, str, KeyRecord]:
    key = new_key()
    digest = hashed(key)
    return key, digest, KeyRecord(digest[:ID_CHARS], check_name(name), admin, time.time())


def _chosen(records: list[KeyRecord], id_or_name: str) -> list[KeyRecord]:
    """The live key with this id, else the live keys of this name."""
    live = [record for record in records if record.revoked_at is None]
    chosen = [r for r in live if r.id == id_or_name] or [r for r in live if r.name == id_or_name]
    if not chosen:
        raise LookupError(f"no live key has the id or name {id_or_name!r}")
    return chosen


class SqliteKeys:
    """Keys in `keys.sqlite3` of a data directory. Each call is one short statement: cheap enough
    to run on the event loop, like the job store's writes."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "keys.sqlite3", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS keys (hash TEXT PRIMARY KEY, id TEXT NOT NULL, name TEXT NOT NULL, "
            "admin INTEGER NOT NULL, created_at REAL NOT NULL, revoked_at REAL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS keys_by_id ON keys (id)")

    def close(self) -> None:
        self._db.close()

    async def create(self, name: str, admin: bool) -> tuple[str, KeyRecord]:
        key, digest, record = _new_record(name, admin)
        self._db.execute(
            "INSERT INTO keys (hash, id, name, admin, created_at) VALUES (?, ?, ?, ?, ?)",
            (digest, record.id, record.name, int(admin), record.created_at),
        )
        return key, record

    async def records(self) -> list[KeyRecord]:
        rows = self._db.execute("SELECT id, name, admin, created_at, revoked_at FROM keys ORDER BY created_at")
        return [KeyRecord(i, n, bool(a), c, r) for i, n, a, c, r in rows]

    async def revoke(self, id_or_name: str) -> list[KeyRecord]:
        chosen = _chosen(await self.records(), id_or_name)
        now = time.time()
        with self._db:
            self._db.executemany("UPDATE keys SET revoked_at = ? WHERE id = ?", [(now, r.id) for r in chosen])
        return [dataclasses.replace(r, revoked_at=now) for r in chosen]

    async def find(self, key: str) -> KeyRecord | None:
        return self._live("hash", hashed(key))

    async def by_id(self, key_id: str) -> KeyRecord | None:
        return self._live("id", key_id)

    async def any(self) -> bool:
        return bool(self._db.execute("SELECT 1 FROM keys LIMIT 1").fetchall())

    def _live(self, column: str, value: str) -> KeyRecord | None:
        # fetchall, not fetchone: a statement left unfinished keeps its read open, and this
        # connection would go on seeing the keys as they were (a revoked key would still pass).
        rows = self._db.execute(
            f"SELECT id, name, admin, created_at FROM keys WHERE {column} = ? AND revoked_at IS NULL", (value,)
        ).fetchall()
        return KeyRecord(rows[0][0], rows[0][1], bool(rows[0][2]), rows[0][3]) if rows else None


class RedisKeys:
    """Keys in Redis, shared by every API process: one hash, the key's SHA-256 to its record, and
    one from its id to its SHA-256. Redis out of reach is `StoreUnreachable` (503), as for jobs."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self._by_hash = f"{prefix}keys"
        self._by_id = f"{prefix}key-ids"

    @reachable
    async def create(self, name: str, admin: bool) -> tuple[str, KeyRecord]:
        key, digest, record = _new_record(name, admin)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._by_hash, digest, json.dumps(record.view()))
            pipe.hset(self._by_id, record.id, digest)
            await pipe.execute()
        return key, record

    @reachable
    async def records(self) -> list[KeyRecord]:
        found = [KeyRecord(**json.loads(value)) for value in (await self.redis.hgetall(self._by_hash)).values()]
        return sorted(found, key=lambda record: record.created_at)

    @reachable
    async def revoke(self, id_or_name: str) -> list[KeyRecord]:
        now, revoked = time.time(), []
        for record in _chosen(await self.records(), id_or_name):
            digest = await self.redis.hget(self._by_id, record.id)
            revoked.append(dataclasses.replace(record, revoked_at=now))
            await self.redis.hset(self._by_hash, digest, json.dumps(revoked[-1].view()))
        return revoked

    @reachable
    async def find(self, key: str) -> KeyRecord | None:
        return await self._live(hashed(key))

    @reachable
    async def by_id(self, key_id: str) -> KeyRecord | None:
        digest = await self.redis.hget(self._by_id, key_id)
        return None if digest is None else await self._live(digest.decode() if isinstance(digest, bytes) else digest)

    @reachable
    async def any(self) -> bool:
        return bool(await self.redis.exists(self._by_hash))

    @reachable
    async def _live(self, digest: str) -> KeyRecord | None:
        value = await self.redis.hget(self._by_hash, digest)
        if value is None:
            return None
        record = KeyRecord(**json.loads(value))
        return record if record.revoked_at is None else None
