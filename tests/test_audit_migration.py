"""An audit.db written by the previous Valet opens, gains the new columns, and old rows get ts_unix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from addon.audit.log import AuditWriter

OLD_SCHEMA = """
CREATE TABLE exchanges (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, duration_ms REAL, key_id TEXT, user TEXT,
    agent TEXT, server TEXT, mode TEXT NOT NULL, http_method TEXT NOT NULL, http_path TEXT NOT NULL,
    http_status INTEGER, rpc_method TEXT, rpc_id TEXT, tool TEXT, arguments TEXT, decision TEXT NOT NULL,
    rule TEXT, reason TEXT, error_code INTEGER, session_id TEXT, bytes_in INTEGER, bytes_out INTEGER,
    injected TEXT, overridden TEXT
);
INSERT INTO exchanges (ts, mode, http_method, http_path, decision)
    VALUES ('2026-11-21T09:01:02.113Z', 'reverse', 'POST', '/notes', 'allow');
"""


def test_a_previous_versions_audit_db_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    AuditWriter(path, recover=True).close()
    conn = sqlite3.connect(path)
    columns = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(exchanges)")}
    assert columns["ts_unix"] == "REAL" and columns["state"] == "TEXT"
    ts_unix, state = conn.execute("SELECT ts_unix, state FROM exchanges").fetchone()
    assert abs(ts_unix - 1795251662.113) < 0.01 and state == "done"
    assert conn.execute("SELECT at FROM exchanges_at").fetchone() == ("2026-11-21 09:01:02.113",)
