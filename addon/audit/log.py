"""The audit log: one row per exchange in ``<data-dir>/audit.db``, table ``exchanges``.

Rows are written by one background thread, in batches, in WAL mode, so the
proxy's event loop never waits for the disk and readers (``valet audit``,
``sqlite3``) never block the writer. If the database cannot be written, the
writer keeps the batch, retries, and reports itself unhealthy; the proxy then
refuses new requests (fail closed) rather than forwarding unrecorded traffic.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("valet.audit")

COLUMNS: tuple[str, ...] = (
    "ts",
    "duration_ms",
    "key_id",
    "user",
    "agent",
    "server",
    "mode",
    "http_method",
    "http_path",
    "http_status",
    "rpc_method",
    "rpc_id",
    "tool",
    "arguments",
    "decision",
    "rule",
    "reason",
    "error_code",
    "session_id",
    "bytes_in",
    "bytes_out",
    "injected",
    "overridden",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT NOT NULL,     -- UTC ISO 8601, when the request arrived
    duration_ms REAL,              -- until the response (or stream) ended
    key_id      TEXT,              -- valet key id; NULL when no valid key was presented
    user        TEXT,
    agent       TEXT,
    server      TEXT,              -- configured server name; NULL if unknown
    mode        TEXT NOT NULL,     -- reverse | forward
    http_method TEXT NOT NULL,
    http_path   TEXT NOT NULL,     -- as the agent sent it (no query values are secrets here)
    http_status INTEGER,           -- status sent to the agent
    rpc_method  TEXT,              -- JSON-RPC method; 'batch' for a batch
    rpc_id      TEXT,              -- JSON-encoded id
    tool        TEXT,              -- tools/call name
    arguments   TEXT,              -- JSON: tools/call arguments; for a batch, the list of messages
    decision    TEXT NOT NULL,     -- allow | deny | error
    rule        TEXT,              -- the policy rule id (or switch, or default:SERVER) that decided
    reason      TEXT,              -- stable reason code (see README), e.g. unknown_key
    error_code  INTEGER,           -- JSON-RPC error code Valet answered with, if any
    session_id  TEXT,              -- Mcp-Session-Id
    bytes_in    INTEGER,           -- request body bytes from the agent
    bytes_out   INTEGER,           -- response body bytes to the agent
    injected    TEXT,              -- JSON list of secret names Valet injected
    overridden  TEXT               -- JSON list of injected arguments the agent had set itself
);
CREATE INDEX IF NOT EXISTS exchanges_ts ON exchanges (ts);
CREATE INDEX IF NOT EXISTS exchanges_key ON exchanges (key_id, id);
"""

_INSERT = f"INSERT INTO exchanges ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_STOP = object()


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    _add_missing_columns(conn)
    return conn


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Logs written by an older Valet gain the newer columns (NULL in old rows)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(exchanges)")}
    for column in COLUMNS:
        if column not in present:
            conn.execute(f"ALTER TABLE exchanges ADD COLUMN {column} TEXT")


class AuditWriter:
    """Owns the only writing connection; ``submit`` is safe to call from the event loop."""

    def __init__(self, path: Path, max_batch: int = 500, max_queue: int = 100_000, linger: float = 0.05) -> None:
        self.path = path
        self.linger = linger
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._healthy = True
        self._written = 0
        connect(path).close()  # fail at startup, not on the first request, if it cannot be opened
        self._thread = threading.Thread(target=self._run, name="valet-audit", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self._healthy and self._thread.is_alive() and self._queue.qsize() < self.max_queue

    @property
    def written(self) -> int:
        return self._written

    def submit(self, row: dict[str, Any]) -> None:
        self._queue.put(tuple(row.get(c) for c in COLUMNS))

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything submitted so far, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        conn = connect(self.path)
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            # Linger briefly so that a steady trickle of rows shares one transaction.
            deadline = time.monotonic() + self.linger
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [row for row in batch if row is not _STOP]
            sanitized = False
            while batch:
                try:
                    with conn:
                        conn.executemany(_INSERT, batch)
                except sqlite3.Error as exc:  # the disk or the database: keep the batch, retry, refuse meanwhile
                    self._healthy = False
                    log.error("audit write failed (%s); retrying", exc.__class__.__name__)
                    time.sleep(0.5)
                    if stopping:
                        break
                except Exception as exc:  # a value SQLite cannot store (e.g. a lone surrogate from an agent)
                    if sanitized:
                        self._healthy = False  # cannot happen with _storable rows; refuse traffic rather than spin
                        log.error("audit rows could not be stored (%s); refusing traffic", exc.__class__.__name__)
                        batch = []
                        break
                    batch, sanitized = [_storable(row) for row in batch], True
                else:
                    self._written += len(batch)
                    self._healthy = True
                    batch = []
        conn.close()


def _storable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Agent-supplied text may hold lone surrogates (from escapes or undecodable header bytes): escape them."""
    return tuple(
        v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v for v in row
    )


def open_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot change the log, for ``valet audit query``."""
    if not path.exists():
        raise FileNotFoundError(f"no audit log at {path} (has the proxy run with this data dir?)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def rows_after(conn: sqlite3.Connection, last_id: int, limit: int = 1000) -> Iterator[sqlite3.Row]:
    yield from conn.execute("SELECT * FROM exchanges WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit))
