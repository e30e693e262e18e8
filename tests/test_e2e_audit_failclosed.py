"""Fail closed, fast: a locked, deleted or read-only audit log stops traffic; a lock's release restores it."""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .audit_support import HOLD_LOCK, recording, upstream_ids  # noqa: F401 - a fixture
from .support import Upstream, jsonrpc, post, running_valet

CALL = jsonrpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})


def _status(url: str, key: str) -> tuple[int, str | None]:
    r = post(url, CALL, key)
    reason = r.json().get("error", {}).get("data", {}).get("reason") if r.status_code >= 400 else None
    return r.status_code, reason


def test_a_lock_held_by_another_process_refuses_within_two_seconds_and_recovers(tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        url = f"{valet.base}/notes"
        assert _status(url, key)[0] == 200
        seen_before = len(upstream_ids(recording))
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(valet.data_dir / "audit.db"), "4"],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        first = _status(url, key)
        assert first == (503, "audit_unavailable")
        assert time.monotonic() - locked_at < 3.0, "the first refusal must come within the commit bound"
        started = time.monotonic()
        assert _status(url, key) == (503, "audit_unavailable")
        assert time.monotonic() - started < 1.0, "while unhealthy, refusals are immediate"
        assert len(upstream_ids(recording)) == seen_before, "nothing forwarded while the log cannot be written"
        holder.wait(15)
        deadline = time.monotonic() + 10
        while _status(url, key)[0] != 200:
            assert time.monotonic() < deadline, "no automatic recovery after the lock was released"
            time.sleep(0.1)
        assert "audit write failed" in valet.log.read_text()


def test_a_deleted_audit_db_is_noticed_within_a_second_and_traffic_stays_refused(tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        url = f"{valet.base}/notes"
        assert _status(url, key)[0] == 200
        valet.rows("rpc_method = 'tools/call'")
        for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
            if (valet.data_dir / name).exists():
                os.remove(valet.data_dir / name)
        deleted_at = time.monotonic()
        while _status(url, key) != (503, "audit_unavailable"):
            assert time.monotonic() - deleted_at < 2.0, "the deletion was not noticed within a second"
            time.sleep(0.05)
        seen = len(upstream_ids(recording))
        time.sleep(0.5)
        assert _status(url, key) == (503, "audit_unavailable"), "stays closed until an operator acts"
        assert len(upstream_ids(recording)) == seen
        log = valet.log.read_text()
        assert "ERROR" in log and "was deleted while Valet was writing it" in log
        saved = list(valet.data_dir.glob("audit-recovered-*.db"))
        assert len(saved) == 1
        rows = sqlite3.connect(saved[0]).execute("SELECT rpc_method FROM exchanges").fetchall()
        assert ("tools/call",) in rows, "what the deleted file held is saved"


@pytest.mark.parametrize("how", ["truncate-wal", "truncate-db", "overwrite-db-head"])
def test_a_file_cut_or_overwritten_in_place_is_noticed_within_a_second(tmp: Path, recording: Upstream,
                                                                      how: str) -> None:
    """Review 4 (H7): the same inode, other contents (``truncate -s 0``, ``: >``, copytruncate, ``cp`` over
    it). Before, traffic flowed on and a crash then lost the whole log, schema included."""
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        url = f"{valet.base}/notes"
        for _ in range(3):
            assert _status(url, key)[0] == 200
        name = "audit.db-wal" if how == "truncate-wal" else "audit.db"
        target = valet.data_dir / name
        assert target.stat().st_size > 0
        if how == "overwrite-db-head":
            with open(target, "r+b") as f:  # another process's descriptor: its close drops no lock of Valet's
                f.write(b"not a database!!")
        else:
            os.truncate(target, 0)
        changed_at = time.monotonic()
        while _status(url, key) != (503, "audit_unavailable"):
            assert time.monotonic() - changed_at < 2.0, "the change in place was not noticed within a second"
            time.sleep(0.05)
        seen = len(upstream_ids(recording))
        assert _status(url, key) == (503, "audit_unavailable")
        assert len(upstream_ids(recording)) == seen, "nothing forwarded once the log is known broken"
        log = valet.log.read_text()
        # a cut WAL may be written again before the check (SQLite appends at its own offsets, past a hole of
        # zeros): then it is no longer shorter, but its header is gone. Either way it is caught.
        expected = ["overwritten in place"] if how == "overwrite-db-head" else ["truncated in place", "overwritten in place"]
        assert any(f"{name} was {e} while Valet was writing it" in log for e in expected), log[-2000:]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files: chmod cannot make SQLite fail")
def test_a_read_only_audit_db_refuses_traffic(tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
    (valet.data_dir / "audit.db").chmod(0o444)
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        assert _status(f"{valet.base}/notes", key) == (503, "audit_unavailable")


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="prlimit is Linux-only")
def test_a_disk_that_refuses_writes_refuses_traffic_until_it_accepts_them_again(
        tmp: Path, recording: Upstream) -> None:
    """A full disk without privileges: RLIMIT_FSIZE on the running proxy makes every write past 4 KiB fail
    (EFBIG; Python ignores SIGXFSZ), as a full disk would; lifting it is freeing space."""
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        url = f"{valet.base}/notes"
        assert _status(url, key)[0] == 200
        _soft, hard = resource.prlimit(valet.process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(valet.process.pid, resource.RLIMIT_FSIZE, (4096, hard))  # the soft limit only
        try:
            started = time.monotonic()
            while _status(url, key) != (503, "audit_unavailable"):
                assert time.monotonic() - started < 10, "writes fail but traffic still flows"
            seen = len(upstream_ids(recording))
            assert _status(url, key) == (503, "audit_unavailable")
            assert len(upstream_ids(recording)) == seen, "nothing forwarded while the log cannot be written"
        finally:
            resource.prlimit(valet.process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        deadline = time.monotonic() + 10
        while _status(url, key)[0] != 200:
            assert time.monotonic() < deadline, "no automatic recovery once writes succeed again"
            time.sleep(0.1)
