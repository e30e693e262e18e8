"""``valet audit verify`` catches a deleted row, an edited row, an inserted row and a truncated tail."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from .audit_support import recording, upstream_ids  # noqa: F401 - a fixture
from .support import Upstream, Valet, jsonrpc, post, running_valet


def _verify(valet: Valet, data_dir: Path) -> tuple[int, str]:
    done = valet.cli("audit", "verify", "--data-dir", str(data_dir), check=False)
    return done.returncode, done.stdout + done.stderr


def _tampered_copy(valet: Valet, tmp: Path, name: str, sql: str) -> Path:
    copy = tmp / name
    shutil.copytree(valet.data_dir, copy, ignore=shutil.ignore_patterns("mitmproxy"))
    with sqlite3.connect(copy / "audit.db") as conn:
        conn.executescript(sql)
    return copy


def test_verify_reports_deleted_edited_inserted_rows_and_a_truncated_tail(tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        for i in range(6):
            assert post(f"{valet.base}/notes", jsonrpc("tools/call", {"name": "x", "arguments": {"i": i}}, i),
                        key).is_success
        valet.rows("rpc_method = 'tools/call'", expect=6)
    assert valet.stop() == 0  # a clean stop writes a checkpoint
    code, out = _verify(valet, valet.data_dir)
    assert code == 0 and "ok: the audit log is intact" in out, out
    assert "audit checkpoint" in valet.log.read_text()

    deleted = _tampered_copy(valet, tmp, "deleted", "DELETE FROM exchanges WHERE rpc_id = '2';")
    code, out = _verify(valet, deleted)
    assert code == 1 and "was deleted" in out, out

    edited = _tampered_copy(valet, tmp, "edited", "UPDATE exchanges SET user = 'mallory' WHERE rpc_id = '3';")
    code, out = _verify(valet, edited)
    assert code == 1 and "was edited (its request part" in out, out

    outcome = _tampered_copy(valet, tmp, "outcome", "UPDATE exchanges SET http_status = 403 WHERE rpc_id = '3';")
    code, out = _verify(valet, outcome)
    assert code == 1 and "was edited (its outcome part" in out, out

    inserted = _tampered_copy(valet, tmp, "inserted", "INSERT INTO exchanges (ts, mode, http_method, http_path, "
                              "decision, state) VALUES ('2026-01-01T00:00:00.000Z', 'reverse', 'POST', '/x', "
                              "'allow', 'done');")
    code, out = _verify(valet, inserted)
    assert code == 1 and "not in the chain" in out, out

    # Cut the newest rows and their chain records: every link that is left is intact, the checkpoint is not.
    truncated = _tampered_copy(valet, tmp, "truncated", """
        DELETE FROM chain WHERE exchange_id IN (SELECT id FROM exchanges WHERE rpc_id IN ('4', '5'));
        DELETE FROM exchanges WHERE rpc_id IN ('4', '5');""")
    code, out = _verify(valet, truncated)
    assert code == 1 and "truncated" in out, out

    relinked = _tampered_copy(valet, tmp, "relinked", "DELETE FROM chain WHERE seq = 3;")
    code, out = _verify(valet, relinked)
    assert code == 1 and "missing (deleted)" in out and "broken link" in out, out
