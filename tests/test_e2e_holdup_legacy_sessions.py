"""Issue 9 item 9 for the legacy HTTP+SSE transport: ``?session_id`` bindings are shared through Redis and
survive a restart, still bound to the key that opened the stream.

The legacy transport's session lives as long as its GET stream, which one Valet relays; the agent's POSTs to
the message endpoint may reach another Valet behind the same load balancer, or the same one after it
restarted. Before this, only ``Mcp-Session-Id`` bindings were looked up in Redis: a POST through the
other Valet got ``unknown_session``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import PYTHON, ROOT, Upstream, Valet, free_port, jsonrpc, start_valet, wait_for_port

pytestmark = pytest.mark.e2e

INIT = jsonrpc("initialize", {"protocolVersion": "2024-11-05", "capabilities": {},
                              "clientInfo": {"name": "raw", "version": "0"}})
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
POLICY = "servers:\n  legacy: {default: allow}\nrules: []\n"


@pytest.fixture
def legacy() -> Iterator[Upstream]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/legacy_sse.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    server = Upstream(port, process)
    yield server
    server.stop()


def _post(valet: Valet, endpoint: str, key: str, body: dict) -> httpx.Response:
    return httpx.post(valet.base + endpoint, content=json.dumps(body),
                      headers={**HEADERS, "authorization": f"Bearer {key}"}, timeout=15)


def _accepted_within(valet: Valet, endpoint: str, key: str, body: dict, seconds: float = 10.0) -> httpx.Response:
    """The Redis write of a binding is queued behind the relayed event: poll (a refusal never reaches upstream)."""
    deadline = time.monotonic() + seconds
    while True:
        answer = _post(valet, endpoint, key, body)
        if answer.status_code != 404 or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    name, data = "", []
    for line in lines:
        if line == "":
            if data or name:
                yield name, "\n".join(data)
            name, data = "", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def test_legacy_session_bindings_are_shared_through_redis_and_survive_restarts(
        tmp: Path, legacy: Upstream, redis_url: str) -> None:
    extra = f"rate_limits:\n  storage: {redis_url}\n"
    servers = {"legacy": f"http://127.0.0.1:{legacy.port}"}
    for name in ("a", "b", "c"):
        (tmp / name).mkdir()
    first = start_valet(tmp / "a", servers, extra=extra, policy=POLICY)
    key, _ = first.new_key("alice", "holder")
    thief, _ = first.new_key("mallory", "thief")
    assert first.stop() == 0
    # B: the same keys and vault, but no persisted bindings: only Redis can tell it whose a session is
    shutil.copytree(first.data_dir, tmp / "b" / "data")
    for name in ("sessions.db", "sessions.db-wal", "sessions.db-shm"):
        (tmp / "b" / "data" / name).unlink(missing_ok=True)
    first = start_valet(tmp / "a", servers, extra=extra, policy=POLICY)
    second = start_valet(tmp / "b", servers, extra=extra, policy=POLICY)
    running = [first, second]
    try:
        with httpx.Client(timeout=30) as streaming, streaming.stream(
                "GET", first.base + "/legacy/sse", headers={"accept": "text/event-stream",
                                                            "authorization": f"Bearer {key}"}) as stream:
            assert stream.status_code == 200
            events = _events(stream.iter_lines())
            name, endpoint = next(events)
            assert name == "endpoint" and endpoint.startswith("/legacy/messages/?session_id="), (name, endpoint)

            # the stream is on A, the message goes through B: B learns the owner from Redis
            accepted = _accepted_within(second, endpoint, key, INIT)
            assert accepted.status_code == 202, accepted.text
            name, data = next(events)  # the answer arrives on the stream A relays
            assert name == "message" and json.loads(data)["result"]["serverInfo"]
            stolen = _post(second, endpoint, thief, INIT)
            assert stolen.status_code == 404 and stolen.json()["error"]["data"]["reason"] == "unknown_session"

            # B restarts with no sessions.db at all: Redis still knows, still for alice only
            assert second.stop() == 0
            running.remove(second)
            for name in ("sessions.db", "sessions.db-wal", "sessions.db-shm"):
                (second.data_dir / name).unlink(missing_ok=True)
            second = start_valet(tmp / "b", servers, extra=extra, policy=POLICY)
            running.append(second)
            stolen = _post(second, endpoint, thief, INIT)
            assert stolen.status_code == 404 and stolen.json()["error"]["data"]["reason"] == "unknown_session"
            notified = _post(second, endpoint, key, jsonrpc("notifications/initialized", rpc_id=None))
            assert notified.status_code == 202, notified.text
            listed = _post(second, endpoint, key, jsonrpc("tools/list", rpc_id=2))
            assert listed.status_code == 202, listed.text
            name, data = next(events)
            assert name == "message" and "echo" in data

            # C: B's data dir without Redis: the binding B learnt was persisted in its sessions.db
            assert second.stop() == 0
            running.remove(second)
            shutil.copytree(second.data_dir, tmp / "c" / "data")
            third = start_valet(tmp / "c", servers, policy=POLICY)
            running.append(third)
            stolen = _post(third, endpoint, thief, INIT)
            assert stolen.status_code == 404 and stolen.json()["error"]["data"]["reason"] == "unknown_session"
            called = _post(third, endpoint, key, jsonrpc("tools/call", {"name": "echo",
                                                                         "arguments": {"text": "still mine"}}, 3))
            assert called.status_code == 202, called.text
            name, data = next(events)
            assert name == "message" and "still mine" in data
    finally:
        for valet in running:
            valet.stop()
