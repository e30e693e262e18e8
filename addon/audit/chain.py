"""Tamper evidence for the audit log: an HMAC chain over every row, keyed outside the database.

Each exchange contributes two records to the ``chain`` table, appended in the same
transaction as the change they cover:

- ``request``: the immutable part of the row (who, key, server, method, tool,
  arguments as forwarded, rule, injected names, ts...), appended when the row is
  written ahead;
- ``outcome``: what the end of the exchange filled in (status, decision, reason,
  error code, bytes, duration, session id, state), appended when it completes
  (or is marked ``interrupted``).

So completing a row never rewrites a chained record, while ``exchanges`` stays
one row per exchange for SQL users. Each record's MAC is
``HMAC-SHA256(key, canonical JSON of [prev_mac, seq, exchange_id, kind, values])``,
with ``seq`` counting 1, 2, 3... The key is derived (HKDF) from the vault's
master key version named in the record, so it lives with the vault's keys (the
key file or ``VALET_MASTER_KEY``), never in ``audit.db``. Whoever can write
``audit.db`` but not read the master key cannot edit, delete or insert a row
without breaking the chain; cutting off the newest records is caught against
signed checkpoints (record count and head MAC) appended periodically to
``<data-dir>/audit.checkpoints`` and to the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addon.audit.columns import COLUMN_TYPES, COLUMNS, OUTCOME

PURPOSE = b"valet audit chain v1"
GENESIS = "0" * 64
CHECKPOINT_FILE = "audit.checkpoints"

REQUEST_FIELDS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in OUTCOME and c != "state")
OUTCOME_FIELDS: tuple[str, ...] = (*OUTCOME, "state")
REQUEST_INDEX = tuple(COLUMNS.index(c) for c in REQUEST_FIELDS)
OUTCOME_INDEX_IN_ROW = tuple(COLUMNS.index(c) for c in OUTCOME_FIELDS)

SCHEMA = """
CREATE TABLE IF NOT EXISTS chain (
    seq         INTEGER PRIMARY KEY,  -- 1, 2, 3...: a gap is a deleted record
    exchange_id INTEGER NOT NULL,     -- exchanges.id
    kind        TEXT NOT NULL,        -- request | outcome
    key_version INTEGER NOT NULL,     -- the master key version the MAC key is derived from
    prev_mac    TEXT NOT NULL,        -- the previous record's mac (GENESIS for the first)
    mac         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_meta (name TEXT PRIMARY KEY, value TEXT);
"""


class ChainKeys:
    """MAC keys derived from the vault's master key versions (cached: one HKDF per version)."""

    def __init__(self, master: Any) -> None:
        self._master = master
        self._keys: dict[int, bytes] = {}
        self._hmacs: dict[int, Any] = {}

    @property
    def current(self) -> int:
        return int(self._master.current)

    def key(self, version: int) -> bytes:
        key = self._keys.get(version)
        if key is None:
            key = self._keys[version] = self._master.derive(version, PURPOSE)
        return key

    def hmac(self, version: int) -> Any:
        """A fresh HMAC-SHA256 object keyed for ``version``: copied from a keyed one (the key's pads are
        computed once per version, not once per record; the writer appends two records per call)."""
        keyed = self._hmacs.get(version)
        if keyed is None:
            keyed = self._hmacs[version] = hmac.new(self.key(version), digestmod=hashlib.sha256)
        return keyed.copy()

    def __repr__(self) -> str:  # never show key bytes
        return f"ChainKeys(current={self.current})"


def _canonical(column: str, value: Any) -> Any:
    """The value as SQLite gives it back (column affinity), so the MAC recomputes from a read row."""
    if value is None:
        return None
    kind = COLUMN_TYPES.get(column, "TEXT")
    if kind == "REAL":
        try:
            return float(value)
        except (TypeError, ValueError):  # text stored in a numeric column (see below)
            return ["bad", repr(value)]
    try:
        if kind == "INTEGER":
            return int(value)
    except (TypeError, ValueError):  # text in a numeric column: an edit, or the writer's "out of range: N" (log._storable)
        return ["bad", repr(value)]
    return value if isinstance(value, str) else str(value)


def mac(key: bytes, prev_mac: str, seq: int, exchange_id: int, kind: str,
        columns: Iterable[str], values: Iterable[Any], uses: Iterable[Iterable[Any]] | None = None) -> str:
    """``uses``: a request's secret-usage ledger rows (name, fingerprint, scope, server, host), chained with it."""
    return hmac.new(key, message(prev_mac, seq, exchange_id, kind, columns, values, uses), hashlib.sha256).hexdigest()


def message(prev_mac: str, seq: int, exchange_id: int, kind: str, columns: Iterable[str], values: Iterable[Any],
            uses: Iterable[Iterable[Any]] | None = None) -> bytes:
    """What a record's MAC covers: canonical JSON of [prev_mac, seq, exchange_id, kind, values(, uses)]."""
    payload: list[Any] = [prev_mac, seq, exchange_id, kind,
                          [_canonical(c, v) for c, v in zip(columns, values, strict=True)]]
    if kind == "request":
        payload.append([[_canonical("", v) for v in use] for use in (uses or ())])
    return _ENCODER.encode(payload).encode()


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def _c_encode() -> Any:
    """The stdlib's C encoder with :data:`_ENCODER`'s settings, built once (``JSONEncoder.encode`` builds it on
    every call, with a dict of ids to catch cycles; a record is a flat list). Same bytes (tests/test_perf_paths.py);
    None where the C accelerator is missing, and then :data:`_ENCODER` is used."""
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        iterencode = make(None, _ENCODER.default, encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
        probe: list[Any] = ["x\u00e9\"", 1, 1.5, None, True, [["a", None]]]
        if "".join(iterencode(probe, 0)) != _ENCODER.encode(probe):
            return None
    except TypeError:  # another signature in another Python
        return None
    return lambda payload: "".join(iterencode(payload, 0))


_ENCODE = _c_encode() or _ENCODER.encode


def _text(value: Any) -> Any:
    return value if value is None or type(value) is str else str(value)


def _real(value: Any) -> Any:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):  # as _canonical: text stored in a numeric column (the writer's "out of range")
        return ["bad", repr(value)]


def _integer(value: Any) -> Any:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):  # as _canonical
        return ["bad", repr(value)]


_CONVERTERS = {"REAL": _real, "INTEGER": _integer, "TEXT": _text}


def _converters(columns: tuple[str, ...]) -> tuple[Any, ...]:
    """:func:`_canonical` for each column, chosen once (the writer appends two records per exchange)."""
    return tuple(_CONVERTERS[COLUMN_TYPES.get(c, "TEXT")] for c in columns)


_REQUEST_CONVERTERS = _converters(REQUEST_FIELDS)
_OUTCOME_CONVERTERS = _converters(OUTCOME_FIELDS)


def _fast_message(prev_mac: str, seq: int, exchange_id: int, kind: str, converters: tuple[Any, ...],
                  values: Iterable[Any], uses: Iterable[Iterable[Any]] | None) -> bytes:
    """:func:`message` with the converters chosen in advance: the same bytes (verify uses :func:`message`;
    tests/test_audit_chain.py checks that both agree)."""
    payload: list[Any] = [prev_mac, seq, exchange_id, kind,
                          [convert(v) for convert, v in zip(converters, values, strict=True)]]
    if kind == "request":
        payload.append([[_text(v) for v in use] for use in (uses or ())])
    return _ENCODE(payload).encode()


@dataclass
class Appender:
    """Appends records inside the writer's transaction; reads the head first (another writer may have appended)."""

    keys: ChainKeys
    seq: int = 0
    head: str = GENESIS
    appended: list[tuple[Any, ...]] = field(default_factory=list)

    def start(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT seq, mac FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
        self.seq, self.head = (row[0], row[1]) if row else (0, GENESIS)
        self.appended = []

    def request(self, exchange_id: int, row_values: tuple[Any, ...], uses: Iterable[Iterable[Any]] | None) -> None:
        self._append(exchange_id, "request", _REQUEST_CONVERTERS, [row_values[i] for i in REQUEST_INDEX], uses)

    def outcome(self, exchange_id: int, outcome_values: Iterable[Any]) -> None:
        self._append(exchange_id, "outcome", _OUTCOME_CONVERTERS, outcome_values)

    def _append(self, exchange_id: int, kind: str, converters: tuple[Any, ...], values: Iterable[Any],
                uses: Iterable[Iterable[Any]] | None = None) -> None:
        version = self.keys.current
        seq = self.seq + 1
        h = self.keys.hmac(version)
        h.update(_fast_message(self.head, seq, exchange_id, kind, converters, values, uses))
        record_mac = h.hexdigest()
        self.appended.append((seq, exchange_id, kind, version, self.head, record_mac))
        self.seq, self.head = seq, record_mac

    def flush(self, conn: sqlite3.Connection) -> None:
        if self.appended:
            conn.executemany("INSERT INTO chain VALUES (?, ?, ?, ?, ?, ?)", self.appended)
            self.appended = []


def start_chain(conn: sqlite3.Connection) -> None:
    """Create the tables; a log that predates the chain records which rows the chain does not cover."""
    conn.executescript(SCHEMA)
    if conn.execute("SELECT 1 FROM audit_meta WHERE name = 'chain_from_id'").fetchone() is None:
        (max_id,) = conn.execute("SELECT coalesce(max(id), 0) FROM exchanges").fetchone()
        conn.execute("INSERT INTO audit_meta VALUES ('chain_from_id', ?)", (str(max_id),))


def checkpoint_line(keys: ChainKeys, ts: str, seq: int, head: str, chain_from: int | None = None) -> str:
    """A signed (count, head MAC); with ``chain_from``, the chain's start too (``audit_meta.chain_from_id``
    lives in the database it vouches for: only a signature outside it stops a rewrite from moving it)."""
    version = keys.current
    point: dict[str, Any] = {"ts": ts, "seq": seq, "head": head, "key_version": version}
    if chain_from is not None:
        point["from"] = chain_from
    point["sig"] = hmac.new(keys.key(version), _signed(point), hashlib.sha256).hexdigest()
    return json.dumps(point)


def _signed(point: dict[str, Any]) -> bytes:
    """What a checkpoint's signature covers (lines of older Valets have no ``from``)."""
    text = f"checkpoint|{point['ts']}|{point['seq']}|{point['head']}"
    if "from" in point:
        text += f"|from={point['from']}"
    return text.encode()


def read_chain_from(conn: sqlite3.Connection) -> int:
    """``audit_meta.chain_from_id``: the last row written before the chain existed (0: every row is chained)."""
    row = conn.execute("SELECT value FROM audit_meta WHERE name = 'chain_from_id'").fetchone()
    return int(row[0]) if row else 0


# ---------------------------------------------------------------- verify


@dataclass
class Report:
    records: int = 0
    rows: int = 0
    head: str = GENESIS
    checkpoint: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(conn: sqlite3.Connection, keys: ChainKeys, checkpoints: Path | None, limit: int = 50,
           shipped: Iterable[str] = ()) -> Report:
    """Walk the chain: broken links, deleted, edited and unchained rows, and a tail cut before a checkpoint.

    ``checkpoints``: the checkpoint file (None: do not look at checkpoints at all); ``shipped``: checkpoint
    lines from elsewhere (the proxy's log shipped off the machine), checked like the file's. A value that
    does not fit its column is reported as an edit, never raised: one bad cell must not hide the rest.
    """
    report = Report()
    conn.row_factory = sqlite3.Row
    problems = report.problems
    try:
        chain_from = read_chain_from(conn)
    except (TypeError, ValueError):
        problems.append("audit_meta.chain_from_id is not a number (edited)")
        chain_from = 0
    if chain_from:
        report.notes.append(f"rows 1..{chain_from} were written before the chain existed and are not covered")
    expected, prev = 1, GENESIS
    requested: set[int] = set()
    completed: set[int] = set()
    macs: dict[int, str] = {}
    for seq, exchange_id, kind, version, prev_mac, record_mac in conn.execute(
            "SELECT seq, exchange_id, kind, key_version, prev_mac, mac FROM chain ORDER BY seq"):
        report.records += 1
        if seq != expected:
            problems.append(f"chain records {expected}..{seq - 1} are missing (deleted)")
        if prev_mac != prev:
            problems.append(f"broken link at chain record {seq}: it does not follow the record before it")
        prev, expected = record_mac, seq + 1
        macs[seq] = record_mac
        if not isinstance(exchange_id, int) or not isinstance(version, int):
            problems.append(f"chain record {seq} holds a value that is not a number (edited)")
            continue
        if exchange_id <= chain_from:
            problems.append(f"chain record {seq} covers row {exchange_id}, which the chain says predates it")
        try:
            key = keys.key(version)
        except Exception:  # noqa: BLE001 - a pruned or unknown key version: say so, keep walking
            problems.append(f"chain record {seq}: master key version {version} is not available to verify it")
            continue
        row = conn.execute("SELECT * FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
        (requested if kind == "request" else completed).add(exchange_id)
        if row is None:
            if kind == "request":
                problems.append(f"row {exchange_id} was deleted (chain record {seq})")
            continue
        columns = REQUEST_FIELDS if kind == "request" else OUTCOME_FIELDS
        uses = conn.execute("SELECT name, fingerprint, scope, server, host FROM secret_uses WHERE exchange_id = ? "
                            "ORDER BY rowid", (exchange_id,)).fetchall() if kind == "request" else None
        if mac(key, prev_mac, seq, exchange_id, kind, columns, [row[c] for c in columns],
               [tuple(u) for u in uses or ()]) != record_mac:
            problems.append(f"row {exchange_id} was edited (its {kind} part; chain record {seq})")
        if len(problems) > limit:
            problems.append("(stopped: too many problems)")
            break
    report.head = prev
    for (row_id, state) in conn.execute("SELECT id, state FROM exchanges WHERE id > ? ORDER BY id", (chain_from,)):
        report.rows += 1
        if row_id not in requested:
            problems.append(f"row {row_id} is not in the chain (added without the key)")
        elif state != "pending" and row_id not in completed:
            problems.append(f"row {row_id} has an outcome that is not in the chain (edited)")
        if len(problems) > limit:
            break
    if checkpoints is not None:
        lines = [(f"{checkpoints.name} line {n}", line)
                 for n, line in enumerate(checkpoints.read_text().splitlines() if checkpoints.exists() else (), 1)]
        lines += [(f"--checkpoint {n}", line) for n, line in enumerate(shipped, 1)]
        last: dict[str, Any] | None = None
        starts: list[tuple[int, str]] = []
        for where, line in lines:
            try:
                point = json.loads(line[line.index("{"):])  # a line of the log ("... audit checkpoint: {...}") too
                key = keys.key(int(point["key_version"]))
                expect = hmac.new(key, _signed(point), hashlib.sha256).hexdigest()
                sig_ok = hmac.compare_digest(expect, str(point["sig"]))
                point["seq"] = int(point["seq"])
            except Exception:  # noqa: BLE001 - unreadable or unverifiable line
                problems.append(f"{where} cannot be read or verified")
                continue
            if not sig_ok:
                problems.append(f"{where} has a bad signature (forged)")
                continue
            if "from" in point:
                starts.append((int(point["from"]), str(point["ts"])))
            if last is None or point["seq"] >= last["seq"]:
                last = point
        report.checkpoint = last
        (total,) = conn.execute("SELECT count(*) FROM exchanges").fetchone()
        if last is None and (report.records or total):
            problems.append(f"no checkpoint ({checkpoints.name} missing or empty) although the log has {total} "
                            f"rows and {report.records} chain records: a rewrite of the whole log cannot be "
                            "ruled out (pass a shipped checkpoint line with --checkpoint)")
        for start, ts in starts:
            if start != chain_from:
                problems.append(f"the chain's start was moved: audit_meta.chain_from_id is {chain_from}, "
                                f"the checkpoint of {ts} says {start}")
                break
        if last is not None and not starts and chain_from:
            report.notes.append("no checkpoint names the chain's start (written by an older Valet): rows "
                                f"1..{chain_from} are taken as pre-chain on the database's word")
        if last is not None:
            seq = int(last["seq"])
            if seq > report.records and seq not in macs:
                problems.append(f"truncated: the checkpoint of {last['ts']} counted {seq} chain records, "
                                f"the log ends at {max(macs) if macs else 0}")
            elif seq and macs.get(seq) != last["head"]:
                problems.append(f"chain record {seq} differs from the checkpoint of {last['ts']} (rewritten)")
    return report
