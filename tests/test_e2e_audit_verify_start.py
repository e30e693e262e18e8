"""Review G2 and G3: ``valet audit verify`` authenticates the chain's start, requires a checkpoint, and
reports (never crashes on) values that do not fit their column.

G2: ``audit_meta.chain_from_id`` lived unauthenticated in the database it vouches for, and a missing
checkpoint file was silently accepted: moving the start past the last row, dropping the chain and deleting
``audit.checkpoints`` made a rewritten log verify "ok". Every checkpoint line now signs the start (and the
writer signs one as soon as it opens the log); no checkpoint for a log with rows is a problem.
G3: text in a numeric column made verify die with a traceback, hiding every other finding.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from .audit_support import recording  # noqa: F401 - a fixture
from .support import Upstream, Valet, jsonrpc, post, running_valet


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Valet:
    """A proxy that wrote six calls and stopped cleanly (module scope: one proxy for every case)."""
    import subprocess

    from .support import PYTHON, ROOT, free_port, wait_for_port

    tmp = tmp_path_factory.mktemp("verify-start")
    port = free_port()
    upstream = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/recording_api.py"), "--port", str(port)],
                                cwd=ROOT)
    try:
        wait_for_port(port)
        with running_valet(tmp, {"notes": f"http://127.0.0.1:{port}/mcp"}) as valet:
            key, _ = valet.new_key()
            for i in range(6):
                call = jsonrpc("tools/call", {"name": "x", "arguments": {"i": i}}, i)
                assert post(f"{valet.base}/notes", call, key).is_success
            valet.rows("rpc_method = 'tools/call'", expect=6)
        assert valet.stop() == 0
    finally:
        upstream.kill()
        upstream.wait(10)
    return valet


def _verify(valet: Valet, data_dir: Path, *extra: str) -> tuple[int, str]:
    done = valet.cli("audit", "verify", "--data-dir", str(data_dir), *extra, check=False)
    return done.returncode, done.stdout + done.stderr


def _copy(valet: Valet, tmp: Path, name: str, sql: str = "", drop_checkpoints: bool = False) -> Path:
    copy = tmp / name
    shutil.copytree(valet.data_dir, copy, ignore=shutil.ignore_patterns("mitmproxy"))
    if sql:
        with sqlite3.connect(copy / "audit.db") as conn:
            conn.executescript(sql)
    if drop_checkpoints:
        (copy / "audit.checkpoints").unlink()
    return copy


REWRITE = """
    UPDATE exchanges SET user = 'mallory', tool = 'harmless', http_status = 403, decision = 'deny';
    DELETE FROM chain;
    UPDATE audit_meta SET value = (SELECT max(id) FROM exchanges) WHERE name = 'chain_from_id';"""


def test_the_intact_log_verifies_and_every_checkpoint_line_signs_the_start(stopped: Valet) -> None:
    code, out = _verify(stopped, stopped.data_dir)
    assert code == 0 and "ok: the audit log is intact" in out, out
    lines = (stopped.data_dir / "audit.checkpoints").read_text().splitlines()
    assert len(lines) >= 2, "one line when the writer opened the log, one at the clean stop"
    assert all(json.loads(line)["from"] == 0 for line in lines)


def test_a_rewritten_log_without_its_checkpoint_file_is_not_intact(stopped: Valet, tmp_path: Path) -> None:
    code, out = _verify(stopped, _copy(stopped, tmp_path, "rewrite", REWRITE, drop_checkpoints=True))
    assert code == 1 and "TAMPERED: no checkpoint" in out, out
    assert "ok: the audit log is intact" not in out


def test_an_emptied_checkpoint_file_is_no_checkpoint(stopped: Valet, tmp_path: Path) -> None:
    copy = _copy(stopped, tmp_path, "empty", REWRITE)
    (copy / "audit.checkpoints").write_text("")
    code, out = _verify(stopped, copy)
    assert code == 1 and "TAMPERED: no checkpoint" in out, out


def test_moving_the_chains_start_is_caught_by_the_signed_start(stopped: Valet, tmp_path: Path) -> None:
    """Only the start moved (the chain is left alone): the records over rows now 'before the chain' are
    reported, and the signed start disagrees with the database."""
    copy = _copy(stopped, tmp_path, "moved", "UPDATE audit_meta SET value = '3' WHERE name = 'chain_from_id';")
    code, out = _verify(stopped, copy)
    assert code == 1 and "the chain's start was moved: audit_meta.chain_from_id is 3" in out, out


def test_a_shipped_checkpoint_line_catches_what_the_deleted_file_would_have(stopped: Valet, tmp_path: Path) -> None:
    shipped = (stopped.data_dir / "audit.checkpoints").read_text().splitlines()[-1]
    copy = _copy(stopped, tmp_path, "shipped", REWRITE, drop_checkpoints=True)
    code, out = _verify(stopped, copy, "--checkpoint", f"2026-11-28 valet.audit INFO audit checkpoint: {shipped}")
    assert code == 1 and "truncated" in out and "chain's start was moved" in out, out
    assert "no checkpoint" not in out
    code, out = _verify(stopped, stopped.data_dir, "--checkpoint", shipped)
    assert code == 0, out
    forged = json.dumps({**json.loads(shipped), "seq": 1})
    code, out = _verify(stopped, stopped.data_dir, "--checkpoint", forged)
    assert code == 1 and "--checkpoint 1 has a bad signature (forged)" in out, out


@pytest.mark.parametrize("sql", [
    "UPDATE exchanges SET http_status = 'two hundred' WHERE rpc_id = '2';",
    "UPDATE exchanges SET ts_unix = 'yesterday' WHERE rpc_id = '2';",
    "UPDATE exchanges SET bytes_in = x'00ff' WHERE rpc_id = '2';",
])
def test_a_value_that_does_not_fit_its_column_is_reported_not_raised(stopped: Valet, tmp_path: Path,
                                                                      sql: str) -> None:
    copy = _copy(stopped, tmp_path, "typed", sql + " UPDATE exchanges SET user = 'mallory' WHERE rpc_id = '4';")
    code, out = _verify(stopped, copy)
    assert "Traceback" not in out and code == 1, out
    assert "TAMPERED: row 3 was edited" in out, out
    assert "TAMPERED: row 5 was edited" in out, "the other edit is still reported"


def test_a_non_numeric_chain_start_or_chain_column_is_reported(stopped: Valet, tmp_path: Path) -> None:
    copy = _copy(stopped, tmp_path, "meta", "UPDATE audit_meta SET value = 'x' WHERE name = 'chain_from_id';"
                 "UPDATE chain SET exchange_id = 'y' WHERE seq = 2;")
    code, out = _verify(stopped, copy)
    assert "Traceback" not in out and code == 1, out
    assert "chain_from_id is not a number" in out and "chain record 2 holds a value that is not a number" in out, out
