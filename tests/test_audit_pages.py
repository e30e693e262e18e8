"""What one audit commit writes: no index that no query needs (every index is one more WAL page per commit).

The text ``ts`` had its own index next to ``ts_unix`` (the same instant); every time range in docs/audit.md
and in ``valet audit browse`` uses ``ts_unix``. A new log has no ``ts`` index, an older one loses it at start,
and the "agent's day" recipe still finds its rows through the ``ts_unix`` index.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from addon.audit import log as audit_log
from addon.cli.browse import QUERIES


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                                  "AND tbl_name = 'exchanges' AND sql IS NOT NULL")}


def test_a_new_log_has_no_index_on_the_text_ts(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    audit_log.connect(path).close()
    assert _indexes(path) == {"exchanges_key", "exchanges_ts_unix", "exchanges_pending"}


def test_an_older_log_loses_it_at_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    audit_log.connect(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE INDEX exchanges_ts ON exchanges (ts)")
    assert "exchanges_ts" in _indexes(path)
    audit_log.connect(path).close()
    assert "exchanges_ts" not in _indexes(path)


def test_an_agents_day_uses_the_ts_unix_index_and_finds_the_day(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    conn = audit_log.connect(path)
    day = 1_795_000_000 - 1_795_000_000 % 86400  # a UTC midnight
    for ts_unix, agent in ((day - 1, "a"), (day, "a"), (day + 86399.9, "a"), (day + 86400, "a"), (day + 5, "b")):
        conn.execute("INSERT INTO exchanges (ts, ts_unix, mode, http_method, http_path, decision, agent) "
                     "VALUES (?, ?, 'reverse', 'POST', '/', 'allow', ?)", (audit_log.utc_iso(ts_unix), ts_unix, agent))
    sql = QUERIES["agent_day"]["sql"]
    params = {"agent": "a", "day": time.strftime("%Y-%m-%d", time.gmtime(day))}
    rows = conn.execute(sql, params).fetchall()
    assert [r[1] for r in rows] == [audit_log.utc_iso(day), audit_log.utc_iso(day + 86399.9)]
    plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "exchanges_ts_unix" in plan, plan
    conn.close()
