"""Write-ahead under load: kill Valet (SIGKILL, SIGTERM) while 16 agents call, then account for every request.

Every request an agent got an answer to, and every request that reached the upstream, must have
an audit row (matched by JSON-RPC id). The upstream (tests/upstream/recording_api.py) records the
ids it received.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from .audit_support import recording, upstream_ids  # noqa: F401 - a fixture
from .support import MCP_HEADERS, Upstream, Valet, start_valet

CLIENTS = 16


class Load:
    """16 agents calling as fast as they can, each on its own kept-alive connection."""

    def __init__(self, valet: Valet, key: str) -> None:
        self.url = f"{valet.base}/notes"
        self.headers = {**MCP_HEADERS, "authorization": f"Bearer {key}"}
        self.answered: dict[str, int] = {}  # JSON-encoded rpc id -> HTTP status the agent got
        self.lock = threading.Lock()
        self.next_id = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._agent, daemon=True) for _ in range(CLIENTS)]

    def _agent(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                with self.lock:
                    self.next_id += 1
                    rpc_id = self.next_id
                body = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
                        "params": {"name": "add", "arguments": {"a": 1, "b": rpc_id}}}
                try:
                    response = client.post(self.url, json=body, headers=self.headers)
                    response.read()
                except httpx.HTTPError:
                    if self.stop.is_set():
                        return
                    time.sleep(0.05)  # the proxy is gone or refusing connections
                    continue
                with self.lock:
                    self.answered[json.dumps(rpc_id)] = response.status_code

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def wait_answered(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answered) < n:
            assert time.monotonic() < deadline, f"only {len(self.answered)} calls answered"
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def audit_rows(data_dir: Path) -> dict[str, dict]:
    conn = sqlite3.connect(data_dir / "audit.db")
    conn.row_factory = sqlite3.Row
    rows = {r["rpc_id"]: dict(r) for r in conn.execute("SELECT * FROM exchanges WHERE rpc_method = 'tools/call'")}
    conn.close()
    return rows


def test_sigkill_under_load_leaves_no_answered_or_forwarded_request_without_a_row(
        tmp: Path, recording: Upstream) -> None:
    valet = start_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"})
    key, _ = valet.new_key()
    load = Load(valet, key)
    load.start()
    try:
        load.wait_answered(300)
        valet.process.send_signal(signal.SIGKILL)
        valet.process.wait(10)
    finally:
        load.finish()
    answered = dict(load.answered)
    received = upstream_ids(recording)
    rows = audit_rows(valet.data_dir)
    assert len(answered) >= 300 and len(received) >= 300
    assert not set(answered) - set(rows), "answered calls without an audit row"
    assert not received - set(rows), "calls that reached the upstream without an audit row"
    assert {r["state"] for r in rows.values()} <= {"pending", "done"}

    # The next start marks what the killed process left open as interrupted.
    valet2 = start_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"})
    try:
        after = audit_rows(valet.data_dir)
        assert not [r for r in after.values() if r["state"] == "pending"]
        pending_before = [i for i, r in rows.items() if r["state"] == "pending"]
        assert all(after[i]["state"] == "interrupted" for i in pending_before)
        assert "marked interrupted" in valet2.log.read_text() or not pending_before
    finally:
        assert valet2.stop() == 0
    verified = valet2.cli("audit", "verify", check=False)
    assert verified.returncode == 0, verified.stdout


def test_sigterm_drains_in_flight_calls_records_the_rest_interrupted_and_exits_0(
        tmp: Path, recording: Upstream) -> None:
    valet = start_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"},
                        extra="audit:\n  shutdown_grace_seconds: 2\n")
    key, _ = valet.new_key()
    # One call the upstream holds far longer than the grace period.
    slow: dict[str, object] = {}

    def slow_call() -> None:
        body = {"jsonrpc": "2.0", "id": "slow", "method": "tools/call",
                "params": {"name": "add", "arguments": {"sleep": 30}}}
        try:
            slow["status"] = httpx.post(f"{valet.base}/notes", json=body, timeout=60,
                                        headers={**MCP_HEADERS, "authorization": f"Bearer {key}"}).status_code
        except httpx.HTTPError as exc:
            slow["error"] = type(exc).__name__

    slow_thread = threading.Thread(target=slow_call, daemon=True)
    slow_thread.start()
    load = Load(valet, key)
    load.start()
    try:
        load.wait_answered(200)
        deadline = time.monotonic() + 10
        while '"slow"' not in upstream_ids(recording):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        valet.process.send_signal(signal.SIGTERM)
        assert valet.process.wait(30) == 0
        took = time.monotonic() - started
    finally:
        load.finish()
        slow_thread.join(30)
    assert took < 20
    answered = dict(load.answered)
    received = upstream_ids(recording)
    rows = audit_rows(valet.data_dir)
    missing = {i: answered[i] for i in set(answered) - set(rows)}
    assert not missing, f"answered calls without an audit row: {missing} {valet.log.read_text()[-2000:]}"
    assert not received - set(rows), "calls that reached the upstream without an audit row"
    assert not [r for r in rows.values() if r["state"] == "pending"], "nothing is left pending by a clean stop"
    for rpc_id, status in answered.items():
        assert rows[rpc_id]["state"] == "done" and rows[rpc_id]["http_status"] == status
    assert rows['"slow"']["state"] == "interrupted" and rows['"slow"']["reason"] == "interrupted"
    refused = [r for r in rows.values() if r["reason"] == "shutting_down"]
    assert all(r["http_status"] == 503 for r in refused)
    verified = valet.cli("audit", "verify", check=False)
    assert verified.returncode == 0, verified.stdout
