"""Rows say what the agent actually got, and SQL on them works as people write it."""

from __future__ import annotations

import json
import sqlite3

import httpx
from pathlib import Path

from .audit_support import recording, upstream_ids  # noqa: F401 - a fixture
from .support import MCP_HEADERS, Upstream, jsonrpc, post, running_valet


def test_an_upstream_dying_mid_answer_is_recorded_as_the_502_the_agent_got(tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        r = post(f"{valet.base}/notes", jsonrpc("tools/call", {"name": "x", "arguments": {"die": True}}, 7), key)
        assert r.status_code == 502 and r.json()["error"]["code"] == -32011
        row = valet.rows("rpc_id = '7'")[0]
        assert row["http_status"] == 502 and row["error_code"] == -32011
        assert row["decision"] == "error" and row["reason"] == "upstream_error"
        assert row["bytes_out"] == len(r.content)
        assert row["state"] == "done"


def test_the_session_id_is_recorded_when_the_agent_leaves_right_after_initialize(
        tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        init = jsonrpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "raw", "version": "0"}}, 1)
        with httpx.stream("POST", f"{valet.base}/notes", json=init, timeout=10,
                          headers={**MCP_HEADERS, "authorization": f"Bearer {key}"}) as r:
            assert r.headers["mcp-session-id"] == "sess-recording-1"
            next(r.iter_raw())  # the first event, then the agent leaves
        row = valet.rows("rpc_method = 'initialize'")[0]
        assert row["session_id"] == "sess-recording-1"
        assert row["reason"] == "client_disconnected" and row["http_status"] == 200 and row["decision"] == "allow"


def test_ts_unix_makes_datetime_now_ranges_right(tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        for i in range(3):
            assert post(f"{valet.base}/notes", jsonrpc("tools/call", {"name": "x", "arguments": {}}, i), key).is_success
        valet.rows("rpc_method = 'tools/call'", expect=3)
    conn = sqlite3.connect(valet.data_dir / "audit.db")
    # Rows "from the future" (ts later today than now): a text comparison of ts with datetime() counts them.
    conn.execute("UPDATE exchanges SET ts_unix = ts_unix - 7200, ts = strftime('%Y-%m-%dT%H:%M:%fZ', "
                 "ts_unix - 7200, 'unixepoch') WHERE rpc_id = '0'")
    conn.commit()
    recent = conn.execute("SELECT count(*) FROM exchanges WHERE rpc_method = 'tools/call' "
                          "AND ts_unix > unixepoch('now', '-3 minutes')").fetchone()[0]
    assert recent == 2
    via_view = conn.execute("SELECT count(*) FROM exchanges_at WHERE rpc_method = 'tools/call' "
                            "AND at > datetime('now', '-3 minutes')").fetchone()[0]
    assert via_view == 2
    exported = [json.loads(line) for line in valet.cli("audit", "export", "--format", "jsonl",
                                                        "--since", "3m").stdout.splitlines()]
    assert sorted(r["rpc_id"] for r in exported if r["rpc_method"] == "tools/call") == ["1", "2"]
    last = max(r["id"] for r in exported)
    assert valet.cli("audit", "export", "--after-id", str(last)).stdout == ""
    old = valet.cli("audit", "export", "--since", "2026-01-01T00:00:00Z", "--until", "1h").stdout.splitlines()
    assert [json.loads(line)["rpc_id"] for line in old] == ["0"]
    csv_out = valet.cli("audit", "query", "--format", "csv", "SELECT rpc_id, state FROM exchanges "
                        "WHERE rpc_method = 'tools/call' ORDER BY id").stdout.splitlines()
    assert csv_out == ["rpc_id,state", "0,done", "1,done", "2,done"]
    in_range = conn.execute("SELECT count(*) FROM exchanges_at WHERE rpc_method = 'tools/call' AND at "
                            "BETWEEN datetime('now', '-3 hours') AND datetime('now', '-1 hour')").fetchone()[0]
    assert in_range == 1
