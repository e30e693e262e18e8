"""Issue 9 item 9: session bindings survive a restart (sessions.db in the data dir), still bound to their key."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import PYTHON, ROOT, Upstream, Valet, jsonrpc, post, start_valet, wait_for_port


def _restart(valet: Valet) -> Valet:
    """Stop Valet and start it again on the same port with the same config and data dir."""
    assert valet.stop() == 0
    log = valet.log.with_name("valet-2.log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PYTHON, str(ROOT / "run_proxy.py"), "--config", str(valet.config), "--data-dir", str(valet.data_dir),
             "--listen", f"127.0.0.1:{valet.port}", "--mode", "reverse"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "listening on" not in log.read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)
    wait_for_port(valet.port)
    return Valet(valet.port, valet.data_dir, valet.config, "reverse", process, log)


def test_a_legacy_sdk_session_keeps_working_after_a_restart(tmp: Path, upstream: Upstream) -> None:
    valet = start_valet(tmp, {"notes": upstream.url})
    try:
        key, key_id = valet.new_key("alice", "holder")
        thief, _ = valet.new_key("mallory", "thief")
        holder: list[Valet] = [valet]

        async def scenario() -> list[str]:
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
            answers = []
            async with Client(streamable_http_client(f"{valet.base}/notes", http_client=http), mode="legacy") as c:
                answers.append((await c.call_tool("add", {"a": 1, "b": 2})).content[0].text)
                holder[0] = await asyncio.to_thread(_restart, valet)
                for i in range(3):
                    answers.append((await c.call_tool("add", {"a": i, "b": 40})).content[0].text)
            return answers

        assert asyncio.run(scenario()) == ["3", "40", "41", "42"]
        valet = holder[0]
        session = valet.rows("key_id = ? AND rpc_method = 'initialize'", (key_id,))[0]["session_id"]
        assert session
        # still bound to the key that opened it: another key presenting it is refused after the restart too
        stolen = post(valet.base + "/notes", jsonrpc("tools/list", rpc_id=9), thief,
                      headers={"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"})
        assert stolen.status_code == 404 and stolen.json()["error"]["data"]["reason"] == "unknown_session"
        db = valet.data_dir / "sessions.db"
        assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
        assert session.encode() not in db.read_bytes()  # only a digest of the id is stored
    finally:
        valet.stop()


def test_bindings_are_shared_through_redis(tmp: Path, upstream: Upstream, redis_url: str) -> None:
    """Valet B (another data dir, no sessions.db) knows a session Valet A bound, through Redis; still per key."""
    extra = f"rate_limits:\n  storage: {redis_url}\n"
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    first = start_valet(tmp / "a", {"notes": upstream.url}, extra=extra)
    try:
        key, _ = first.new_key("alice", "holder")
        thief, _ = first.new_key("mallory", "thief")
        init = jsonrpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "raw", "version": "0"}})
        opened = post(first.base + "/notes", init, key)
        session = opened.headers["mcp-session-id"]
        time.sleep(0.5)  # the Redis write is queued behind the answer
    finally:
        first.stop()
    shutil.copytree(first.data_dir, tmp / "b" / "data")  # the same keys and vault, but...
    for name in ("sessions.db", "sessions.db-wal", "sessions.db-shm"):  # ...no persisted bindings:
        (tmp / "b" / "data" / name).unlink(missing_ok=True)  # only Redis knows the session
    second = start_valet(tmp / "b", {"notes": upstream.url}, extra=extra)
    try:
        headers = {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        assert post(second.base + "/notes", jsonrpc("notifications/initialized", rpc_id=None), key,
                    headers=headers).status_code == 202
        assert post(second.base + "/notes", jsonrpc("tools/list", rpc_id=2), key, headers=headers).status_code == 200
        stolen = post(second.base + "/notes", jsonrpc("tools/list", rpc_id=3), thief, headers=headers)
        assert stolen.status_code == 404 and stolen.json()["error"]["data"]["reason"] == "unknown_session"
    finally:
        second.stop()
