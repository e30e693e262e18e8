"""Session bindings that survive a restart: ``sessions.db`` in the data dir (SQLite, 0600).

Without it, every MCP client holding a session (legacy mode: ``Mcp-Session-Id``) got
``unknown_session`` after Valet restarted, and an SDK client in legacy mode does not re-initialize
on its own (22 of 22 calls failed). Rows hold a SHA-256 of (server, session id), never the id itself
(a session id is a bearer capability at the upstream), the key id that opened it, and when it was
last used. Bounded: entries unused for ``SESSION_TTL_SECONDS`` are pruned at load and periodically,
and at most ``max_sessions`` (the newest) are kept.

Writes never run on the event loop: they go through a queue to one writer thread that commits in
batches. Reads happen once, at startup (configure), before any agent is served.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger("valet")
SESSION_TTL_SECONDS = 7 * 24 * 3600
TOUCH_EVERY_SECONDS = 300.0  # last_used is persisted at most this often per session
_SCHEMA = ("CREATE TABLE IF NOT EXISTS bindings (digest BLOB PRIMARY KEY, key_id TEXT NOT NULL, "
           "last_used REAL NOT NULL)")


class SessionStore:
    def __init__(self, path: Path, max_sessions: int) -> None:
        self.path = path
        self.max_sessions = max_sessions
        self._queue: queue.Queue[tuple[str, bytes, str, float] | None] = queue.Queue(maxsize=100_000)
        self._thread: threading.Thread | None = None

    def load(self) -> list[tuple[bytes, str, float]]:
        """Prune what expired or overflows, then return (digest, key id, last used), oldest first."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        with sqlite3.connect(self.path) as db:
            db.execute(_SCHEMA)
            db.execute("DELETE FROM bindings WHERE last_used < ?", (time.time() - SESSION_TTL_SECONDS,))
            db.execute("DELETE FROM bindings WHERE digest NOT IN "
                       "(SELECT digest FROM bindings ORDER BY last_used DESC LIMIT ?)", (self.max_sessions,))
            rows = db.execute("SELECT digest, key_id, last_used FROM bindings ORDER BY last_used").fetchall()
        db.close()
        self._thread = threading.Thread(target=self._write, name="valet-sessions", daemon=True)
        self._thread.start()
        return [(bytes(d), k, t) for d, k, t in rows]

    def bind(self, digest: bytes, key_id: str) -> None:
        self._put(("bind", digest, key_id, time.time()))

    def touch(self, digest: bytes) -> None:
        self._put(("touch", digest, "", time.time()))

    def end(self, digest: bytes) -> None:
        self._put(("end", digest, "", 0.0))

    def _put(self, op: tuple[str, bytes, str, float]) -> None:
        try:
            self._queue.put_nowait(op)
        except queue.Full:  # the writer is stuck: the binding still holds in memory until a restart
            log.warning("session store: write queue full, a binding change was not persisted")

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def _write(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        last_prune = time.monotonic()
        try:
            while True:
                op = self._queue.get()
                batch = [op]
                while op is not None and len(batch) < 1000:
                    try:
                        op = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    batch.append(op)
                try:
                    with db:
                        for item in batch:
                            if item is None:
                                continue
                            kind, digest, key_id, ts = item
                            if kind == "bind":
                                db.execute("INSERT OR IGNORE INTO bindings VALUES (?, ?, ?)", (digest, key_id, ts))
                            elif kind == "touch":
                                db.execute("UPDATE bindings SET last_used = ? WHERE digest = ?", (ts, digest))
                            else:
                                db.execute("DELETE FROM bindings WHERE digest = ?", (digest,))
                        if time.monotonic() - last_prune > 3600:
                            last_prune = time.monotonic()
                            db.execute("DELETE FROM bindings WHERE last_used < ?",
                                       (time.time() - SESSION_TTL_SECONDS,))
                            db.execute("DELETE FROM bindings WHERE digest NOT IN (SELECT digest FROM bindings "
                                       "ORDER BY last_used DESC LIMIT ?)", (self.max_sessions,))
                except sqlite3.Error as exc:
                    log.error("session store: write failed (%s); bindings hold in memory", type(exc).__name__)
                if batch[-1] is None:
                    return
        finally:
            db.close()


class RedisSessions:
    """Bindings shared through Redis when ``rate_limits.storage`` is Redis: several Valets (or one that
    restarted with another data dir) know every session any of them bound. Keys are
    ``valet:session:<hex digest>`` (never the id) holding the key id, expiring after the TTL of disuse.
    Writes are fire-and-forget tasks; a lookup that fails or takes over a second finds nothing
    (``unknown_session``: fail closed)."""

    PREFIX = "valet:session:"
    LOOKUP_SECONDS = 1.0

    def __init__(self, url: str) -> None:
        from coredis import Redis

        self._redis = Redis.from_url(url, decode_responses=True)
        self._tasks: set[object] = set()

    def _spawn(self, coro: object) -> None:
        import asyncio

        try:
            task = asyncio.get_running_loop().create_task(self._quiet(coro))
        except RuntimeError:  # no loop (tests of the pure core)
            coro.close()  # type: ignore[attr-defined]
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quiet(coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - the binding still holds in memory and in sessions.db
            log.warning("session store: Redis write failed (%s)", type(exc).__name__)

    def bind(self, digest: bytes, key_id: str) -> None:
        self._spawn(self._redis.set(self.PREFIX + digest.hex(), key_id, ex=SESSION_TTL_SECONDS))

    def touch(self, digest: bytes) -> None:
        self._spawn(self._redis.expire(self.PREFIX + digest.hex(), SESSION_TTL_SECONDS))

    def end(self, digest: bytes) -> None:
        self._spawn(self._redis.delete([self.PREFIX + digest.hex()]))

    async def lookup(self, digest: bytes) -> str | None:
        import asyncio

        try:
            async with asyncio.timeout(self.LOOKUP_SECONDS):
                value = await self._redis.get(self.PREFIX + digest.hex())
        except Exception as exc:  # noqa: BLE001 - not found is the fail-closed answer
            log.warning("session store: Redis lookup failed (%s)", type(exc).__name__)
            return None
        return value if isinstance(value, str) else None
