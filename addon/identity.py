"""Valet keys: the revocable tokens agents hold instead of real credentials.

A key looks like ``vk_<id>_<secret>``: the id (public, shown by ``valet key
list``, written in audit rows) finds the record, the secret proves possession.
Only SHA-256 of the whole key is stored. Keys carry 256 bits of randomness, so a
fast hash is enough (a slow KDF protects low-entropy passwords, which these are
not) and keeps verification off the CPU budget. Comparison is constant-time.

The proxy holds all key records in memory and reloads them when the key
database changes on disk (one ``stat`` per request, no I/O otherwise), so a
``valet key revoke`` takes effect on the very next request without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from addon import filewatch
from addon.timestamps import utc_now

KEY_PREFIX = "vk_"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS valet_keys (
    id         TEXT PRIMARY KEY,
    key_hash   BLOB NOT NULL,
    user       TEXT NOT NULL,
    agent      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    key_hash: bytes
    user: str
    agent: str
    created_at: str
    revoked_at: str | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, or None: malformed keys never reach the database."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != 12 or not key_id.isalnum() or not key_id.isascii() or len(secret) < 32:
        return None
    return key_id


def _now() -> str:
    return utc_now()


def key_id_from_argument(value: str) -> str:
    """What ``valet key revoke`` was given, as a key id: the id itself, or a whole key (the id is inside it).

    Accepting the key means an operator holding only ``$KEY`` can revoke it without a lookup.
    """
    value = value.strip()
    return key_id_of(value) or value


# Rows whose key failed authentication carry its id (so the audit log names who tried), but
# the key was not *used*: a revoked key's refused attempt must not show up as its last use.
_NOT_A_USE = ("revoked_key", "unknown_key")


def last_used(audit_db: Path) -> dict[str, str]:
    """Key id -> time of its last successfully authenticated exchange, from the audit log.

    Read-only and without creating anything: the proxy never writes to the key store,
    and a data dir without an audit log simply has no uses yet.
    """
    if not audit_db.exists():
        return {}
    conn = sqlite3.connect(f"file:{audit_db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT key_id, max(ts) FROM exchanges WHERE key_id IS NOT NULL"
            f" AND coalesce(reason, '') NOT IN ({', '.join('?' * len(_NOT_A_USE))}) GROUP BY key_id",
            _NOT_A_USE,
        ).fetchall()
    except sqlite3.OperationalError:  # a log being created right now: no uses to show yet
        return {}
    finally:
        conn.close()
    return {k: ts for k, ts in rows}


class KeyStore:
    """The key database (``<data-dir>/keys.db``): what the CLI writes and the proxy reads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            conn.execute(_SCHEMA)
            with conn:
                yield conn
        finally:
            conn.close()

    def create(self, user: str, agent: str) -> tuple[str, KeyRecord]:
        """Make a new key; the plaintext is returned once and never stored."""
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(key_id, hash_key(key), user, agent, _now(), None)
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO valet_keys (id, key_hash, user, agent, created_at) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.key_hash, user, agent, record.created_at),
            )
        return key, record

    def revoke(self, key_id: str) -> bool:
        with self._connect() as conn:
            cur = conn.execute(
                "UPDATE valet_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_now(), key_id)
            )
            return cur.rowcount == 1

    def all(self) -> list[KeyRecord]:
        if not self.path.exists():
            return []
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, key_hash, user, agent, created_at, revoked_at FROM valet_keys ORDER BY created_at, id"
            ).fetchall()
        return [KeyRecord(*row) for row in rows]

    def signature(self) -> tuple[int, ...]:
        """Changes whenever the database is written (see :mod:`addon.filewatch`)."""
        return filewatch.signature(self.path)


class KeyRing:
    """The proxy's in-memory view of the key store."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._records: dict[str, KeyRecord] = {}
        self._signature: tuple[int, ...] | None = None

    def stale(self) -> bool:
        return self.store.signature() != self._signature

    def reload(self) -> None:
        """Blocking (disk); the proxy calls it in a worker thread."""
        signature = self.store.signature()
        self._records = {r.id: r for r in self.store.all()}
        self._signature = signature

    def revoked(self, key_id: str) -> bool:
        """As of the last reload: a key that is gone counts as revoked."""
        record = self._records.get(key_id)
        return record is None or record.revoked

    def verify(self, key: str) -> KeyRecord | None:
        """The record for a presented key, or None if the key is unknown. Revocation is the caller's to check."""
        if not (key.isascii() and key.isprintable()) or len(key) > 256:
            return None  # valet keys are short printable ASCII; anything else is not one (and must not be hashed)
        key_id = key_id_of(key)
        record = self._records.get(key_id) if key_id else None
        presented = hash_key(key)
        expected = record.key_hash if record else b"\0" * len(presented)
        if hmac.compare_digest(presented, expected) and record is not None:
            return record
        return None
