"""Review 4 (H12): an upstream's status line outside 100-599 is refused 502, recorded as such, and cannot
turn the audit log off for anyone else (mitmproxy reads the code with a bare int())."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from .support import PYTHON, ROOT, assert_clean_log, free_port, jsonrpc, post, start_upstream, start_valet, wait_for_port


@pytest.mark.parametrize("status", ["99999999999999999999 OK", "0 Zero", "-200 OK", "600 Beyond"])
def test_a_status_outside_http_is_refused_and_everyone_else_is_served(tmp_path: Path, status: str) -> None:
    port = free_port()
    odd = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/last_request.py"), "--port", str(port),
                            "--status", status], cwd=ROOT)
    good = start_upstream()
    try:
        wait_for_port(port)
        config = f"servers:\n  odd:\n    url: http://127.0.0.1:{port}/mcp\n  good:\n    url: {good.url}\n"
        valet = start_valet(tmp_path, None, config_text=config)
        try:
            key, _ = valet.new_key()
            other, _ = valet.new_key("bob", "b")
            statuses: list[int] = []

            def bob() -> None:
                for i in range(15):
                    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}}
                    statuses.append(post(f"{valet.base}/good", jsonrpc("initialize", hello, i), other).status_code)

            thread = threading.Thread(target=bob)
            thread.start()
            for i in range(10):
                answer = post(f"{valet.base}/odd", jsonrpc("tools/call", {"name": "x", "arguments": {}}, i), key)
                assert answer.status_code == 502, answer.text
                assert answer.json()["error"]["data"]["reason"] == "upstream_error"
            thread.join(60)
            assert statuses and set(statuses) == {200}, statuses
            rows = valet.rows("server = 'odd' AND rpc_method = 'tools/call'", expect=10)
            assert {(r["http_status"], r["reason"], r["state"]) for r in rows} == {(502, "upstream_error", "done")}
        finally:
            valet.stop()
        assert_clean_log(valet)
    finally:
        odd.kill()
        odd.wait(10)
        good.stop()


@pytest.mark.parametrize("announce", [100 * 2**20, 2 * 2**20])
def test_an_upstream_dying_after_a_large_heads_row_says_what_the_agent_got(tmp_path: Path, announce: int) -> None:
    """Review 4 (H13): with 100 MiB announced the upstream died before Valet sent the head: the agent got a 502
    page and the row said 200. The row now says what was written to the agent, whichever it was."""
    import httpx

    port = free_port()
    dying = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/last_request.py"), "--port", str(port),
                              "--announce", str(announce)], cwd=ROOT)
    try:
        wait_for_port(port)
        config = f"servers:\n  api:\n    url: http://127.0.0.1:{port}\n    kind: http\n"
        policy = "rules:\n  - id: api\n    effect: allow\n    servers: [api]\n    http: {methods: [POST], paths: ['/**']}\n"
        valet = start_valet(tmp_path, None, config_text=config, policy=policy)
        try:
            key, _ = valet.new_key()
            try:
                r = httpx.post(f"{valet.base}/api/x", json={"a": 1}, headers={"authorization": f"Bearer {key}"},
                               timeout=30)
                got = r.status_code
            except httpx.RemoteProtocolError:  # the head came, then the body was cut: the agent has the status
                got = 200
            rows = valet.rows("http_path = '/api/x'")
            assert rows[-1]["http_status"] == got, (got, rows[-1])
        finally:
            valet.stop()
    finally:
        dying.kill()
        dying.wait(10)
