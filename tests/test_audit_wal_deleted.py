"""Review G1: audit.db-wal (or -shm) deleted while Valet runs is noticed like audit.db itself.

SQLite does not report it: the open connection commits on into the unlinked WAL, the only durable copy of
recent rows, so a crash afterwards lost the whole young log. Now the writer fails closed (503
audit_unavailable) within a second and saves what the open connection still reads to audit-recovered-*.db.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from addon.audit.log import AuditWriter

from .audit_support import recording, upstream_ids  # noqa: F401 - a fixture
from .support import Upstream, jsonrpc, post, running_valet

ROW = {"mode": "reverse", "http_method": "POST", "http_path": "/notes", "decision": "allow"}


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_deleted_wal_or_shm_file_closes_the_writer_and_saves_every_row(tmp_path: Path, suffix: str) -> None:
    writer = AuditWriter(tmp_path / "audit.db", recover=True)

    async def one(rpc_id: str) -> bool:
        _, future = writer.begin({**ROW, "rpc_id": rpc_id})
        return await future

    assert asyncio.run(one("before"))
    os.remove(tmp_path / f"audit.db{suffix}")
    deadline = time.monotonic() + 1.5
    while writer.healthy:
        assert time.monotonic() < deadline, "deletion not noticed"
        time.sleep(0.02)
    assert f"audit.db{suffix} was deleted" in (writer.lost or "")
    assert not asyncio.run(one("after")), "nothing is committed into a deleted WAL"
    saved = list(tmp_path.glob("audit-recovered-*.db"))
    assert len(saved) == 1
    assert sqlite3.connect(saved[0]).execute("SELECT rpc_id FROM exchanges").fetchall() == [("before",)]
    writer.close()


def test_a_replaced_wal_is_noticed(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit.db", recover=True)
    wal = tmp_path / "audit.db-wal"
    other = tmp_path / "other"
    other.write_bytes(wal.read_bytes())
    os.replace(other, wal)
    deadline = time.monotonic() + 1.5
    while writer.healthy:
        assert time.monotonic() < deadline, "replacement not noticed"
        time.sleep(0.02)
    assert "audit.db-wal was replaced" in (writer.lost or "")
    writer.close()


def test_a_writer_left_alone_stays_healthy(tmp_path: Path) -> None:
    """The watch must not mistake SQLite's own handling of its files (checkpoints, readers) for a deletion."""
    writer = AuditWriter(tmp_path / "audit.db", recover=True)

    async def some() -> bool:
        results = []
        for i in range(300):  # enough pages for SQLite's automatic checkpoint to run
            _, future = writer.begin({**ROW, "rpc_id": str(i), "arguments": "x" * 2000})
            results.append(await future)
        return all(results)

    assert asyncio.run(some())
    reader = sqlite3.connect(f"file:{tmp_path / 'audit.db'}?mode=ro", uri=True)
    assert reader.execute("SELECT count(*) FROM exchanges").fetchone() == (300,)
    reader.close()
    time.sleep(0.6)
    assert writer.healthy and writer.lost is None
    writer.close()


CALL = jsonrpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})


def test_deleting_the_wal_under_a_running_proxy_fails_closed_and_a_crash_loses_nothing(
        tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        url = f"{valet.base}/notes"
        for i in range(3):
            assert post(url, jsonrpc("tools/call", {"name": "x", "arguments": {}}, i), key).status_code == 200
        valet.rows("rpc_method = 'tools/call'", expect=3)
        (valet.data_dir / "audit.db-wal").unlink()
        deleted_at = time.monotonic()
        answered = []
        i = 100
        while True:
            r = post(url, jsonrpc("tools/call", {"name": "x", "arguments": {}}, i), key)
            if r.status_code == 503:
                assert r.json()["error"]["data"]["reason"] == "audit_unavailable"
                break
            answered.append(i)
            i += 1
            assert time.monotonic() - deleted_at < 3.0, "the WAL's deletion was not noticed within a second"
            time.sleep(0.05)
        time.sleep(0.3)
        seen = upstream_ids(recording)
        assert post(url, CALL, key).status_code == 503, "stays closed until an operator restarts Valet"
        assert upstream_ids(recording) == seen, "nothing forwarded after the deletion was noticed"
        assert "audit.db-wal was deleted while Valet was writing it" in valet.log.read_text()
        valet.process.send_signal(signal.SIGKILL)  # a crash: the recovered copy is all that is left
        valet.process.wait(10)
    saved = list(valet.data_dir.glob("audit-recovered-*.db"))
    assert len(saved) == 1
    ids = {r[0] for r in sqlite3.connect(saved[0]).execute(
        "SELECT rpc_id FROM exchanges WHERE rpc_method = 'tools/call'")}
    missing = [i for i in [0, 1, 2, *answered] if json.dumps(i) not in ids]
    assert not missing, f"answered without a row in the recovered copy: {missing}"
    in_place = {r[0] for r in sqlite3.connect(valet.data_dir / "audit.db").execute(
        "SELECT rpc_id FROM exchanges WHERE rpc_method = 'tools/call'")}
    assert ids <= in_place, "audit.db itself holds what the deleted WAL held (checkpointed when noticed)"
    assert {json.loads(x) for x in seen} <= {0, 1, 2, *answered}, "forwarded without a row"
