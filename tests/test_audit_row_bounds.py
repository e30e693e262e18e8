"""Review G11: the audit row's bounds cannot be aimed, and bound every agent-chosen column.

``arguments`` was cut at 64 KiB of its text in the agent's member order (padding first hid ``path``);
``rpc_id`` and ``rpc_method`` had no bound (a 3 MB id made a 3 MB row).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import httpx

from addon.audit.bounds import MARK, bounded_arguments, bounded_text

from .audit_support import recording  # noqa: F401 - a fixture
from .support import MCP_HEADERS, Upstream, running_valet

LIMIT = 65536


def test_every_member_name_survives_and_each_long_value_is_cut_with_its_hash() -> None:
    pad = "x" * 70_000
    text = json.dumps({"pad": pad, "path": "/srv/private/payroll.csv", "n": 3}, separators=(",", ":"))
    cut = json.loads(bounded_arguments(text, LIMIT))
    assert cut["path"] == "/srv/private/payroll.csv" and cut["n"] == 3
    assert cut["pad"].startswith("x" * 1000) and MARK in cut["pad"] and "70000 chars" in cut["pad"]
    assert hashlib.sha256(pad.encode()).hexdigest()[:16] in cut["pad"]


def test_many_long_values_share_the_budget() -> None:
    value = {f"k{i}": "y" * 10_000 for i in range(40)}
    out = bounded_arguments(json.dumps(value), LIMIT)
    assert len(out) <= LIMIT
    assert set(json.loads(out)) == set(value)


def test_too_many_members_are_counted_not_silently_dropped() -> None:
    value = {f"key{i:06d}": i for i in range(20_000)}
    out = bounded_arguments(json.dumps(value), LIMIT)
    assert len(out) <= LIMIT
    cut = json.loads(out)
    assert "key000000" in cut and MARK in cut["…"]


def test_small_arguments_and_texts_are_untouched() -> None:
    text = json.dumps({"a": 1})
    assert bounded_arguments(text, LIMIT) is text
    assert bounded_text("tools/call") == "tools/call" and bounded_text(None) is None
    long = '"' + "i" * 3_000_000 + '"'
    assert len(bounded_text(long) or "") < 400 and MARK in (bounded_text(long) or "")


def test_a_call_cannot_hide_its_path_or_grow_a_row_with_its_id(tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"},
                       extra="limits:\n  max_body_bytes: 8388608\n") as valet:
        key, _ = valet.new_key()
        headers = {**MCP_HEADERS, "authorization": f"Bearer {key}"}
        padded = {"jsonrpc": "2.0", "id": "pad", "method": "tools/call", "params": {
            "name": "read_file", "arguments": {"pad": "x" * 70_000, "path": "/srv/private/payroll.csv"}}}
        assert httpx.post(f"{valet.base}/notes", json=padded, headers=headers, timeout=20).status_code == 200
        big_id = {"jsonrpc": "2.0", "id": "i" * 3_000_000, "method": "m" * 100_000, "params": {}}
        httpx.post(f"{valet.base}/notes", json=big_id, headers=headers, timeout=30)
        row = valet.rows("rpc_id = ?", (json.dumps("pad"),))[0]
        assert json.loads(row["arguments"])["path"] == "/srv/private/payroll.csv"
        valet.rows("rpc_method LIKE 'mmm%'")
        conn = sqlite3.connect(f"file:{valet.data_dir / 'audit.db'}?mode=ro", uri=True)
        longest_id, longest_method = conn.execute("SELECT max(length(rpc_id)), max(length(rpc_method)) "
                                                  "FROM exchanges").fetchone()
        conn.close()
        assert longest_id < 400 and longest_method < 400
    done = valet.cli("audit", "verify", check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_long_target_keeps_every_query_parameter_named_and_says_it_was_cut() -> None:
    """Review 4 (H11): 2,040 characters of padding before ``file=`` used to push it out of the row."""
    from addon.audit.bounds import MARK, bounded_path

    target = "/files/report?pad=" + "x" * 2040 + "&file=payroll-2026.csv"
    row = bounded_path(target, 2048)
    assert "&file=payroll-2026.csv" in row and MARK in row and f"{len(target)} chars" in row
    assert len(row) < 2048 + 80
    assert bounded_path("/short?a=1", 2048) == "/short?a=1"
    long_path = "/" + "p" * 3000
    assert bounded_path(long_path, 2048).startswith("/" + "p" * 2047) and MARK in bounded_path(long_path, 2048)
