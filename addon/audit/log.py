"""The audit log: one row per exchange in ``<data-dir>/audit.db``, table ``exchanges``.

Write-ahead: an exchange's row (who, what, decision) is *committed* before the
request is forwarded or refused (:meth:`AuditWriter.begin` returns a future the
event loop awaits); the outcome (status, bytes, duration) completes the same
row when the exchange ends (:meth:`AuditWriter.complete`). A crash therefore
leaves a ``state = 'pending'`` row, never a forwarded request without a row;
the next start marks those rows ``interrupted``.

Group commit: one background thread owns the only writing connection; it takes
everything queued since its last commit and commits it in one transaction, then
resolves the waiting futures. The event loop never touches the disk.

Fail closed, fast: if a commit has not completed within ``commit_timeout``
(a lock held by another process, a failing disk) the writer reports itself
unhealthy and the proxy refuses new requests until a commit succeeds again. If
the file is deleted or replaced under the writer (its device/inode no longer
match the path's) the writer keeps a copy of what the open file holds and stays
closed: a log that silently forks is worse than a refusal (see docs/audit.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

log = logging.getLogger("valet.audit")

from addon.audit import chain, ledger
from addon.audit.columns import COLUMN_TYPES, COLUMNS, OUTCOME

SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT NOT NULL,     -- UTC ISO 8601, when the request arrived
    ts_unix     REAL,              -- the same instant in seconds since the epoch (for ranges and datetime())
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
    reason      TEXT,              -- stable reason code (see docs/errors.md), e.g. unknown_key
    error_code  INTEGER,           -- JSON-RPC error code the agent got, if any
    session_id  TEXT,              -- Mcp-Session-Id
    bytes_in    INTEGER,           -- request body bytes from the agent
    bytes_out   INTEGER,           -- response body bytes to the agent
    injected    TEXT,              -- JSON list of secret names Valet injected
    overridden  TEXT,              -- JSON list of injected arguments the agent had set itself
    state       TEXT               -- pending (written ahead) | done | interrupted
);
CREATE INDEX IF NOT EXISTS exchanges_key ON exchanges (key_id, id);
"""

_INDEXES_AFTER_MIGRATION = """
-- Time ranges use ts_unix (docs/audit.md, "SQL recipes"). A log written before 2026-11-28 also had an index on
-- the text ts, the same instant: one more page written by every commit for no query (dropped at connect).
DROP INDEX IF EXISTS exchanges_ts;
CREATE INDEX IF NOT EXISTS exchanges_ts_unix ON exchanges (ts_unix);
CREATE INDEX IF NOT EXISTS exchanges_pending ON exchanges (state) WHERE state = 'pending';
-- ``ts`` stays ISO 8601 (2026-11-21T09:01:02.113Z); SQLite's datetime() writes '2026-11-21 09:01:02',
-- which compares wrongly with it as text. ``at`` is the same instant in SQLite's own format.
CREATE VIEW IF NOT EXISTS exchanges_at AS
    SELECT *, strftime('%Y-%m-%d %H:%M:%f', ts_unix, 'unixepoch') AS at FROM exchanges;
"""

_INSERT = f"INSERT INTO exchanges ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_TS_UNIX = COLUMNS.index("ts_unix")
# Only a row still pending takes an outcome: one already marked interrupted (by a start that took its process
# for dead) or completed stays as it is, and its chain gets no second outcome record.
_COMPLETE = (f"UPDATE exchanges SET {', '.join(c + ' = ?' for c in OUTCOME)}, state = 'done' "
             "WHERE id = ? AND state = 'pending'")
_INTERRUPT = ("UPDATE exchanges SET state = 'interrupted', reason = coalesce(reason, 'interrupted') "
              "WHERE state = 'pending' RETURNING id, " + ", ".join(OUTCOME))

CHECKPOINT_SECONDS = 5.0  # how often a signed checkpoint (count, head MAC) is appended, if the chain grew
LINGER_SECONDS = 0.05  # outcomes wait at most this long for a row written ahead to share its commit
COMPANIONS = ("-wal", "-shm")  # SQLite's files next to audit.db, watched with it (see _check_identity)
IDENTITY_CHECK_SECONDS = 0.25  # the file deleted or replaced is noticed within this (plus a commit)
RETRY_SECONDS = 0.1
PAGE_SIZE = 1024  # for a new audit.db (see connect)
WAL_CHECKPOINT_PAGES = 4000  # pages in the WAL before it is copied back into audit.db (see connect)

_STOP = object()


def connect(path: Path, timeout: float = 10.0) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
    if new:
        # Each commit appends every page it changed to the WAL (the row, four indexes, the ledger and the
        # chain: about ten pages for one exchange). Audit rows are small: 1 KiB pages write a quarter of
        # the bytes per commit and cost the writer thread about 15 % less CPU (bench/audit_writer_bench.py).
        # Only a new file can get it (SQLite fixes the page size when the file is created).
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit is durable against a crash of the process (the case write-ahead is
    # about); FULL would also survive a power cut at the price of an fsync per group commit.
    conn.execute("PRAGMA synchronous=NORMAL")
    # SQLite copies the WAL back into the file every N pages written (default 1000, ~90 sequential commits):
    # each checkpoint writes every page changed since the last one, once. Most pages a commit changes are the
    # same few (the tables' and indexes' last leaves), so rarer checkpoints copy far fewer pages per commit:
    # ~12 % less writer CPU per exchange (bench/audit_writer_bench.py), for a WAL of up to ~4 MiB.
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    conn.executescript(SCHEMA)
    _add_missing_columns(conn)
    conn.executescript(_INDEXES_AFTER_MIGRATION)
    chain.start_chain(conn)
    conn.executescript(ledger.SCHEMA)
    return conn


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Logs written by an older Valet gain the newer columns (sqlite-utils); ``ts_unix`` is filled from ``ts``."""
    table = sqlite_utils.Database(conn).table("exchanges")
    present = set(table.columns_dict)
    for column in COLUMNS:
        if column not in present:
            table.add_column(column, COLUMN_TYPES.get(column, "TEXT"))
    if "ts_unix" not in present:
        conn.execute("UPDATE exchanges SET ts_unix = (julianday(replace(ts, 'Z', '')) - 2440587.5) * 86400.0 "
                     "WHERE ts_unix IS NULL")
    if "state" not in present:
        conn.execute("UPDATE exchanges SET state = 'done' WHERE state IS NULL")


def utc_iso(ts_unix: float) -> str:
    return datetime.fromtimestamp(ts_unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Pending:
    """The handle of a row written ahead: the writer thread fills in its row id once inserted, and marks it
    ``settled`` once its transaction ended (committed, or given up: then ``row_id`` is None)."""

    __slots__ = ("row_id", "settled")

    def __init__(self) -> None:
        self.row_id: int | None = None
        self.settled = False


class AuditWriter:
    """Owns the only writing connection; every public method is safe to call from the event loop."""

    def __init__(self, path: Path, commit_timeout: float = 1.0, max_batch: int = 1000,
                 max_queue: int = 100_000, recover: bool = False, keys: chain.ChainKeys | None = None) -> None:
        self.path = path
        if keys is None:  # the vault's master keys (key file or VALET_MASTER_KEY) key the MAC chain
            from addon.secrets.vault import load_master_keys

            keys = chain.ChainKeys(load_master_keys(path.parent))
        self._chain = chain.Appender(keys)
        self._checkpoints = path.with_name(chain.CHECKPOINT_FILE)
        self._checkpointed: tuple[int, float] = (-1, time.monotonic())
        self.commit_timeout = commit_timeout
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Outcomes wait here, not in the queue: putting one in the queue would wake the writer for a
        # record nobody waits for. They ride along with the next commit, or go LINGER_SECONDS later.
        self._outcomes: collections.deque[Any] = collections.deque()
        self._failing = False
        self._checkpoint_failing = False  # the last checkpoint could not be written: unhealthy until one is
        self._busy_since: float | None = None  # when the commit in progress began (None: idle)
        self.lost: str | None = None  # why the file can no longer be written (deleted, replaced): stays closed
        self._written = 0
        self._commits = 0
        self._dropped = 0
        self._dropped_logged = 0.0
        # Fail at startup, not on the first request, if it cannot be opened.
        self._conn = connect(path, timeout=max(0.05, min(commit_timeout, 1.0)))
        self._identity = _identity(path)
        self._sizes: dict[Path, int] = {}  # the largest size seen of audit.db and its companions (see _tampered)
        self._heads = _Heads()
        # The WAL holds every commit since the last checkpoint (the only durable copy of recent rows) and the
        # -shm file indexes it: deleting either is not reported by SQLite, the open connection writes on into
        # the unlinked inode. Their identity is watched like the database's (None: not seen yet).
        self._companions: dict[Path, tuple[int, int] | None] = {
            path.with_name(path.name + suffix): _identity_or_none(path.with_name(path.name + suffix))
            for suffix in COMPANIONS}
        self._owner = recover
        if recover:  # the proxy (not a CLI command) owns the pending rows of earlier processes
            interrupted = self._interrupt(self._conn)
            if interrupted:
                log.warning("audit: %d exchanges of a previous run had no outcome; marked interrupted",
                            interrupted)
        try:  # a signed line from the start: the chain's start and head, before any traffic (review G2)
            self._checkpoint(self._conn, force=True, announce=False)
        except (sqlite3.Error, OSError) as exc:
            log.error("audit checkpoint failed (%s)", exc.__class__.__name__)
        self._thread = threading.Thread(target=self._run, name="valet-audit", daemon=True)
        self._thread.start()

    # --- the event loop's side ---
    @property
    def healthy(self) -> bool:
        if self.lost is not None or self._failing or self._checkpoint_failing or not self._thread.is_alive():
            return False
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > self.commit_timeout:
            return False
        return self._queue.qsize() < self.max_queue

    @property
    def written(self) -> int:
        return self._written

    @property
    def backlog(self) -> int:
        """Records queued and not yet taken by a commit (the ``valet_audit_queue_depth`` gauge)."""
        return self._queue.qsize()

    @property
    def commits(self) -> int:
        return self._commits

    def begin(self, row: dict[str, Any], uses: list[tuple[Any, ...]] | None = None
              ) -> tuple[Pending, asyncio.Future[bool]]:
        """Queue the row of an exchange about to be forwarded or refused; the future says if it is committed.

        ``uses``: the secrets it carries upstream, (name, fingerprint, scope, server, host) each (the ledger).
        """
        return self.begin_values(_values(row, "pending"), uses)

    def begin_values(self, values: tuple[Any, ...], uses: list[tuple[Any, ...]] | None = None
                     ) -> tuple[Pending, asyncio.Future[bool]]:
        """:meth:`begin` with the row already a tuple in ``COLUMNS`` order, ``state`` 'pending'
        (:meth:`Exchange.values <addon.audit.exchange.Exchange.values>`): no dict per request."""
        pending = Pending()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put((_INSERT, values, pending, future, uses))
        return pending, future

    def complete(self, pending: Pending, row: dict[str, Any]) -> None:
        """The outcome of an exchange written ahead (not awaited: the exchange is over)."""
        self._outcomes.append((_COMPLETE, tuple(row.get(c) for c in OUTCOME), pending, None, None))

    def submit(self, row: dict[str, Any], wait: bool = False) -> asyncio.Future[bool] | None:
        """A whole row at once (its outcome is known already); with ``wait``, a future for its commit."""
        future = None
        if wait:
            try:
                future = asyncio.get_running_loop().create_future()
            except RuntimeError:  # no event loop (shutting down, or a CLI): nobody can wait anyway
                future = None
        self._queue.put((_INSERT, _values(row, "done"), None, future, None))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything submitted so far, mark what is still pending ``interrupted``, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # --- the writer thread ---
    def _run(self) -> None:
        conn = self._conn
        last_check = time.monotonic()
        stopping = False
        while not stopping:
            try:
                # Outcomes waiting: they go with the next row written ahead or within LINGER_SECONDS, which
                # halves the commits (and the writer's wake-ups) of sequential traffic.
                batch = [self._queue.get(timeout=LINGER_SECONDS if self._outcomes else IDENTITY_CHECK_SECONDS)]
            except queue.Empty:
                batch = []
                if not self._outcomes:
                    self._check_identity(conn)
                    last_check = time.monotonic()
                    if self._checkpoint_failing and self.lost is None:
                        try:
                            self._checkpoint(conn)
                        except (sqlite3.Error, OSError):
                            pass  # logged once by _checkpoint; still unhealthy
                    continue
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch += self._take_outcomes(batch)
            if not batch:
                continue
            if _STOP in batch:
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            if time.monotonic() - last_check > IDENTITY_CHECK_SECONDS:
                self._check_identity(conn)
                last_check = time.monotonic()
            ok = self._commit(conn, batch, stopping) if batch else True
            for _sql, _values_, pending, _future, _uses in batch:
                if pending is not None and _sql is _INSERT:
                    if not ok:
                        pending.row_id = None  # given up (the file is lost): its outcome has no row
                    pending.settled = True
            _resolve([item[3] for item in batch if item[3] is not None], ok)
            if ok and self._owner:
                try:
                    self._checkpoint(conn)
                except (sqlite3.Error, OSError) as exc:
                    if not self._checkpoint_failing:  # that one is logged once, where it is noticed
                        log.error("audit checkpoint failed (%s)", exc.__class__.__name__)
        if self.lost is None:
            try:
                if self._owner:
                    interrupted = self._interrupt(conn)
                    if interrupted:
                        log.warning("audit: %d exchanges still open at shutdown marked interrupted", interrupted)
                self._checkpoint(conn, force=True)  # a CLI's rows (valet oauth login) are vouched for too
            except (sqlite3.Error, OSError) as exc:
                log.error("audit: could not mark open exchanges interrupted (%s)", exc.__class__.__name__)
        conn.close()
        self._heads.close()  # only now: closing them earlier would drop SQLite's locks (see _Heads)

    def _take_outcomes(self, batch: list[Any]) -> list[Any]:
        """The outcomes that can go in this batch: those whose row is written, or written ahead in ``batch``
        itself (it is then inserted first). An outcome whose row is still queued (its request was refused
        while the row was being written, say) waits for it; one whose row was given up is dropped."""
        ahead = {id(item[2]) for item in batch if item is not _STOP and item[0] is _INSERT and item[2] is not None}
        taken: list[Any] = []
        kept: list[Any] = []
        outcomes = self._outcomes
        for _ in range(len(outcomes)):
            try:
                item = outcomes.popleft()
            except IndexError:
                break
            pending = item[2]
            if pending.settled or id(pending) in ahead:
                if pending.settled and pending.row_id is None:
                    continue  # its row was never written: nothing to complete
                taken.append(item)
            else:
                kept.append(item)
        outcomes.extendleft(reversed(kept))
        return taken

    def _interrupt(self, conn: sqlite3.Connection) -> int:
        """Rows written ahead whose outcome never came: ``interrupted``, chained like any outcome."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._chain.start(conn)
            rows = conn.execute(_INTERRUPT).fetchall()
            for row_id, *outcome in rows:
                self._chain.outcome(row_id, (*outcome, "interrupted"))
            self._chain.flush(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return len(rows)

    def _checkpoint(self, conn: sqlite3.Connection, force: bool = False, announce: bool = True) -> None:
        """Append a signed (count, head MAC) to the checkpoint file and the log, if the chain grew.

        ``announce=False`` (the line signed when the log is opened): the file only, the log at DEBUG; the
        start and head it signs are in the next announced line too, and the proxy's banner stays first."""
        last_seq, last_time = self._checkpointed
        if not force and not self._checkpoint_failing and time.monotonic() - last_time < CHECKPOINT_SECONDS:
            return
        row = conn.execute("SELECT seq, mac FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
        seq, head = (row[0], row[1]) if row else (0, chain.GENESIS)
        self._checkpointed = (seq, time.monotonic())
        if seq == last_seq:
            return
        try:
            start: int | None = chain.read_chain_from(conn)
        except ValueError:  # edited: verify reports it; a checkpoint must not vouch for it
            start = None
        line = chain.checkpoint_line(self._chain.keys, utc_iso(time.time()), seq, head, start)
        try:
            with open(self._checkpoints, "a", encoding="utf-8") as out:
                out.write(line + "\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            # No truncation evidence is being kept: unhealthy (503 audit_unavailable) until a checkpoint is
            # written again, retried every IDENTITY_CHECK_SECONDS (review 3, "checkpoint writes that fail")
            self._checkpointed = (last_seq, last_time)
            if not self._checkpoint_failing:
                log.error("audit checkpoint cannot be written to %s; refusing traffic until it can",
                          self._checkpoints)
            self._checkpoint_failing = True
            raise
        if self._checkpoint_failing:
            log.warning("audit checkpoints are written again; accepting traffic")
        self._checkpoint_failing = False
        log.log(logging.INFO if announce else logging.DEBUG, "audit checkpoint: %s", line)

    def _commit(self, conn: sqlite3.Connection, batch: list[Any], stopping: bool) -> bool:
        """One transaction for the whole batch; retried until it succeeds (or the file is lost)."""
        self._busy_since = time.monotonic()
        sanitized = False
        try:
            while True:
                if self.lost is not None:
                    self._dropped += len(batch)
                    if time.monotonic() - self._dropped_logged > 10.0:
                        self._dropped_logged = time.monotonic()
                        log.error("audit: %d records not written so far: %s", self._dropped, self.lost)
                    return False
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        appender = self._chain
                        appender.start(conn)
                        for sql, values, pending, _future, uses in batch:
                            if sql is _INSERT:
                                row_id = conn.execute(_INSERT, values).lastrowid
                                assert row_id is not None
                                appender.request(row_id, values, uses)
                                if uses:
                                    ts_unix = values[_TS_UNIX]
                                    conn.executemany(ledger.INSERT, [(row_id, ts_unix, *use) for use in uses])
                                if pending is not None:
                                    pending.row_id = row_id
                                else:  # a whole row: its outcome is known already
                                    appender.outcome(row_id, [values[i] for i in chain.OUTCOME_INDEX_IN_ROW])
                            elif pending is not None and pending.row_id is not None:
                                if conn.execute(_COMPLETE, (*values, pending.row_id)).rowcount == 1:
                                    appender.outcome(pending.row_id, (*values, "done"))
                        appender.flush(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                except sqlite3.Error as exc:  # locked, read-only, disk full: keep the batch, retry, refuse meanwhile
                    if not self._failing:
                        log.error("audit write failed (%s: %s); refusing traffic until it succeeds",
                                  exc.__class__.__name__, _sqlite_reason(exc))
                    self._failing = True
                    if stopping and time.monotonic() - self._busy_since > 5.0:
                        return False
                    time.sleep(RETRY_SECONDS)
                    self._check_identity(conn)
                except Exception as exc:  # a value SQLite cannot store (e.g. a lone surrogate from an agent)
                    log.debug("audit batch retried with storable values", exc_info=True)
                    if sanitized:
                        self._failing = True
                        log.error("audit rows could not be stored (%s); refusing traffic", exc.__class__.__name__)
                        return False
                    batch = [(q, _storable(v), p, f, u) for q, v, p, f, u in batch]
                    sanitized = True
                else:
                    self._written += sum(1 for item in batch if item[0] is _INSERT)
                    self._commits += 1
                    if self._failing:
                        log.warning("audit writes succeed again; accepting traffic")
                    self._failing = False
                    return True
        finally:
            self._busy_since = None

    def _check_identity(self, conn: sqlite3.Connection) -> None:
        """Deleted, replaced, truncated or overwritten under us: what is written from now on would go nowhere
        anyone looks, and a crash would lose what the WAL held (review 3 G1, review 4 H7)."""
        if self.lost is not None:
            return
        lost, what = self.path, _tampered(self.path, self._identity, self._sizes, self._heads)
        if what is None:
            for companion, seen in self._companions.items():
                if seen is None:  # remembered on first sight (SQLite creates them with the first access)
                    self._companions[companion] = _identity_or_none(companion)
                    continue
                what = _tampered(companion, seen, self._sizes, self._heads)
                if what is not None:
                    lost = companion
                    break
            else:
                return
        self.lost = f"{lost} was {what} while Valet was writing it"
        keep = self.path.with_name(f"audit-recovered-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.db")
        try:
            with sqlite3.connect(keep) as copy:
                conn.backup(copy)
            saved = f"what the old file held is saved in {keep}"
        except sqlite3.Error as exc:
            saved = f"its contents could not be saved ({exc.__class__.__name__})"
        if lost != self.path and what in ("deleted", "replaced"):
            # audit.db itself is in place and the connection still holds the intact WAL (the unlinked or
            # renamed inode): copy its rows into audit.db. Not for a WAL cut or overwritten in place: a
            # checkpoint would copy what is there now into audit.db.
            try:
                busy, _frames, _done = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
                saved += "; audit.db holds them too" if not busy else ""
            except sqlite3.Error as exc:
                saved += f"; they could not be copied into audit.db ({exc.__class__.__name__})"
        log.error("audit: %s; %s; refusing all traffic until Valet is restarted (see docs/audit.md, "
                  "'Recovery')", self.lost, saved)


# The first bytes each file must start with while Valet writes it (SQLite's file header; the WAL's magic).
_MAGIC = {"": b"SQLite format 3\x00", "-wal": (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")}


class _Heads:
    """Reads the first bytes of audit.db and its WAL through descriptors opened once and kept open.

    Never open-read-close them: closing ANY descriptor of a file drops every POSIX lock this process holds
    on it, SQLite's included (the classic way to corrupt a database; it made another process's close
    delete the WAL under Valet). These are closed only after the connection is (:meth:`close`)."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def read(self, path: Path, size: int) -> bytes | None:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            return os.pread(fd, size, 0)
        except OSError:
            return None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _tampered(path: Path, identity: tuple[int, int], sizes: dict[Path, int], heads: _Heads) -> str | None:
    """How ``path`` was changed under the writer, or None: deleted, replaced (another inode), truncated in
    place (SQLite never shrinks audit.db, its WAL or its -shm while a connection is open: it resets the WAL
    by writing from its start again, and ``journal_size_limit`` is not set), or overwritten in place (the
    file no longer starts as SQLite wrote it). ``sizes`` keeps the largest size seen per file."""
    try:
        st = os.stat(path)
    except OSError:
        return "deleted"
    if (st.st_dev, st.st_ino) != identity:
        return "replaced"
    if st.st_size < sizes.get(path, 0):
        return "truncated in place"
    sizes[path] = st.st_size
    magic = _MAGIC.get(next((end for end in COMPANIONS if path.name.endswith(end)), ""))
    if magic is None or st.st_size == 0:
        return None
    expected = magic if isinstance(magic, tuple) else (magic,)
    head = heads.read(path, len(expected[0]))
    return None if head is None or head in expected else "overwritten in place"


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _identity_or_none(path: Path) -> tuple[int, int] | None:
    try:
        return _identity(path)
    except OSError:
        return None


def _values(row: dict[str, Any], state: str) -> tuple[Any, ...]:
    ts_unix = row.get("ts_unix")
    if ts_unix is None:
        ts_unix = time.time()
        row = {**row, "ts_unix": ts_unix}
    if row.get("ts") is None:
        row = {**row, "ts": utc_iso(ts_unix)}
    return tuple(state if c == "state" else row.get(c) for c in COLUMNS)


def _resolve(futures: list[asyncio.Future[bool]], ok: bool) -> None:
    if not futures:
        return
    loop = futures[0].get_loop()

    def settle() -> None:
        for future in futures:
            if not future.done():
                future.set_result(ok)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _sqlite_reason(exc: sqlite3.Error) -> str:
    """SQLite's own message names the condition (locked, readonly, full), never row data."""
    return getattr(exc, "sqlite_errorname", None) or "error"


def _storable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every value in a form SQLite stores, so that one row's content can never sink a batch (review 4, H12:
    an upstream's status line ``99999999999999999999`` raised OverflowError and the whole batch, other users'
    rows included, was dropped). Agent-supplied text may hold lone surrogates (from escapes or undecodable
    header bytes): escaped. Integers beyond SQLite's 64 bits, and any other type: stored as their text."""
    return tuple(_storable_value(v) for v in row)


def _storable_value(value: Any) -> Any:
    if value is None or isinstance(value, (float, bytes)):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int):
        # out of SQLite's range: text that cannot be read back as a number (an INTEGER column would turn
        # "99999999999999999999" into a REAL, and the row would no longer match its chain record)
        return value if -(1 << 63) <= value < (1 << 63) else f"out of range: {value}"
    return _storable_value(str(value))


def open_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot change the log, for ``valet audit query``."""
    if not path.exists():
        raise FileNotFoundError(f"no audit log at {path} (has the proxy run with this data dir?)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def rows_after(conn: sqlite3.Connection, last_id: int, limit: int = 1000) -> Iterator[sqlite3.Row]:
    yield from conn.execute("SELECT * FROM exchanges WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit))
