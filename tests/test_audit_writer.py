"""The audit writer alone: write-ahead, group commit, fail closed fast, a file deleted under it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from addon.audit.log import AuditWriter

from .audit_support import HOLD_LOCK

ROW = {"mode": "reverse", "http_method": "POST", "http_path": "/notes", "decision": "allow"}


def test_rows_arriving_together_share_a_commit_and_complete_in_place(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit.db", recover=True)

    async def burst() -> list:
        handles = [writer.begin({**ROW, "rpc_id": str(i)}) for i in range(200)]
        assert all(await asyncio.gather(*(f for _, f in handles)))
        for i, (pending, _) in enumerate(handles):
            writer.complete(pending, {"http_status": 200, "decision": "allow", "bytes_out": i, "duration_ms": 1.0})
        return handles

    asyncio.run(burst())
    writer.close()
    assert writer.commits < 50, f"{writer.commits} commits for 200 rows: not grouped"
    conn = sqlite3.connect(tmp_path / "audit.db")
    rows = conn.execute("SELECT rpc_id, state, http_status, bytes_out, ts, ts_unix FROM exchanges").fetchall()
    assert len(rows) == 200
    assert {(r[1], r[2]) for r in rows} == {("done", 200)}
    assert all(int(r[0]) == r[3] for r in rows)
    assert all(r[4].endswith("Z") and r[5] > 1.7e9 for r in rows)


def test_pending_rows_of_a_previous_run_are_marked_interrupted(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit.db", recover=True)

    async def begin_only() -> None:
        _, future = writer.begin({**ROW, "rpc_id": "1"})
        assert await future

    asyncio.run(begin_only())
    writer._thread.join(0.5)  # not closed: as if the process had died here
    conn = sqlite3.connect(tmp_path / "audit.db")
    assert conn.execute("SELECT state FROM exchanges").fetchone() == ("pending",)
    AuditWriter(tmp_path / "audit.db").close()  # a CLI writer must not touch the proxy's pending rows
    assert conn.execute("SELECT state FROM exchanges").fetchone() == ("pending",)
    AuditWriter(tmp_path / "audit.db", recover=True).close()
    assert conn.execute("SELECT state, reason FROM exchanges").fetchone() == ("interrupted", "interrupted")


def test_a_lock_held_by_another_process_makes_it_unhealthy_within_the_bound_then_it_recovers(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    writer = AuditWriter(path, commit_timeout=0.5, recover=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), "3"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"

    async def during_lock() -> tuple[bool, float]:
        started = time.monotonic()
        _, future = writer.begin({**ROW, "rpc_id": "locked"})
        while writer.healthy:
            await asyncio.sleep(0.02)
            assert time.monotonic() - started < 2.5, "still healthy with the log locked"
        return future.done(), time.monotonic() - started

    done, after = asyncio.run(during_lock())
    assert not done and after < 2.5
    holder.wait(10)
    deadline = time.monotonic() + 5
    while not writer.healthy:
        assert time.monotonic() < deadline, "did not recover after the lock was released"
        time.sleep(0.05)
    writer.close()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM exchanges").fetchone() == (1,)


def test_a_deleted_file_is_noticed_its_contents_saved_and_the_writer_stays_closed(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    writer = AuditWriter(path, recover=True)

    async def one() -> bool:
        _, future = writer.begin({**ROW, "rpc_id": "before"})
        return await future

    assert asyncio.run(one())
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        if (tmp_path / name).exists():
            os.remove(tmp_path / name)
    deadline = time.monotonic() + 1.5
    while writer.healthy:
        assert time.monotonic() < deadline, "deletion not noticed"
        time.sleep(0.02)
    assert "deleted" in (writer.lost or "")
    assert not asyncio.run(one()), "nothing is committed into a deleted file"
    saved = list(tmp_path.glob("audit-recovered-*.db"))
    assert len(saved) == 1
    assert sqlite3.connect(saved[0]).execute("SELECT rpc_id FROM exchanges").fetchall() == [("before",)]
    time.sleep(0.5)
    assert not writer.healthy, "stays closed until an operator restarts Valet"
    writer.close()


def test_a_replaced_file_is_noticed_too(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    writer = AuditWriter(path, recover=True)
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    os.replace(other, path)
    deadline = time.monotonic() + 1.5
    while writer.healthy:
        assert time.monotonic() < deadline, "replacement not noticed"
        time.sleep(0.02)
    assert "replaced" in (writer.lost or "")
    writer.close()


def test_an_outcome_does_not_wake_the_writer_and_waits_for_its_row(tmp_path: Path) -> None:
    """Outcomes ride along with the next commit (or go within LINGER_SECONDS): one wake-up of the writer per
    call, not two. An outcome that arrives while its row is still queued (a request refused because the
    row took too long) waits for the row instead of being lost, and the chain still verifies."""
    from addon.audit import chain as audit_chain
    from addon.audit.log import LINGER_SECONDS

    writer = AuditWriter(tmp_path / "audit.db", recover=True)
    done = {"http_status": 200, "decision": "allow", "bytes_out": 1, "duration_ms": 1.0}

    async def calls() -> None:
        pending, future = writer.begin({**ROW, "rpc_id": "0"})
        writer.complete(pending, done)  # before its row is committed
        assert await future
        for i in range(1, 20):
            pending, future = writer.begin({**ROW, "rpc_id": str(i)})
            assert await future
            writer.complete(pending, done)
            assert writer._queue.qsize() == 0  # nothing was queued: the writer sleeps on
        await asyncio.sleep(LINGER_SECONDS * 6)  # no more traffic: the last outcome goes on its own

    asyncio.run(calls())
    conn = sqlite3.connect(tmp_path / "audit.db")
    assert conn.execute("SELECT count(*), min(state), max(state) FROM exchanges").fetchone() == (20, "done", "done")
    assert writer.commits <= 22, f"{writer.commits} commits for 20 sequential calls"
    writer.close()
    report = audit_chain.verify(sqlite3.connect(tmp_path / "audit.db"), writer._chain.keys, None)
    assert report.ok, report.problems


def test_an_outcome_after_a_restart_marked_the_row_interrupted_leaves_it_and_the_chain_as_they_are(
        tmp_path: Path) -> None:
    """A new start (another process, taking this one for dead) marked the row interrupted; this writer's
    late outcome must not turn it into ``done``, nor chain a second outcome for it (verify stays clean)."""
    from addon.audit.chain import ChainKeys, verify
    from addon.secrets.vault import load_master_keys

    path = tmp_path / "audit.db"
    writer = AuditWriter(path, recover=True)

    async def begin() -> object:
        pending, future = writer.begin({**ROW, "rpc_id": "1"})
        assert await future
        return pending

    pending = asyncio.run(begin())
    AuditWriter(path, recover=True).close()  # the "next start": marks the open row interrupted
    writer.complete(pending, {"http_status": 200, "decision": "allow", "bytes_out": 5, "duration_ms": 1.0})
    writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT state, http_status FROM exchanges").fetchone() == ("interrupted", None)
    assert conn.execute("SELECT count(*) FROM chain WHERE kind = 'outcome'").fetchone() == (1,)
    report = verify(conn, ChainKeys(load_master_keys(tmp_path)), None)
    assert not report.problems, report.problems


def test_a_value_sqlite_cannot_store_does_not_sink_the_batch(tmp_path: Path) -> None:
    """Review 4 (H12): an out-of-range integer (an upstream's status line read by a bare int()) raised
    OverflowError and the writer dropped the whole batch, other exchanges' rows with it. Now every value is
    made storable; the batch commits, the writer stays healthy, and the chain still verifies."""
    from addon.audit.chain import ChainKeys, verify
    from addon.secrets.vault import load_master_keys

    path = tmp_path / "audit.db"
    writer = AuditWriter(path, recover=True)

    async def together() -> list[bool]:
        odd = writer.submit({**ROW, "rpc_id": "odd", "http_status": 10**20}, wait=True)
        normal = writer.submit({**ROW, "rpc_id": "normal", "http_status": 200}, wait=True)
        assert odd is not None and normal is not None
        return list(await asyncio.gather(odd, normal))

    assert asyncio.run(together()) == [True, True]
    assert writer.healthy
    writer.close()
    conn = sqlite3.connect(path)
    rows = dict(conn.execute("SELECT rpc_id, http_status FROM exchanges").fetchall())
    assert rows == {"odd": f"out of range: {10**20}", "normal": 200}
    assert not verify(conn, ChainKeys(load_master_keys(tmp_path)), None).problems
