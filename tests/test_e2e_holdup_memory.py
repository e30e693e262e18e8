"""Issue 9 item 1: memory bounded before authentication (RSS through psutil, generous bounds).

The measurement is bench/stress_memory.py's: 10 concurrent chunked 30 MiB POSTs without a key, and three
64 MiB header floods. Before this work the first took Valet from ~110 MiB to 700 MiB and the floods
left +200 MiB behind.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.support import MCP_HEADERS, ROOT, jsonrpc, running_valet
from tests.test_e2e_holdup_timeouts import stalling  # noqa: F401  (the fixture)

sys.path.insert(0, str(ROOT / "bench"))

import stress_memory  # noqa: E402


def test_floods_without_a_key_keep_memory_bounded(tmp: Path) -> None:
    for figures in stress_memory.run(tmp):
        assert figures.peak - figures.idle < 100, figures.line()
        assert figures.after - figures.idle < 20, figures.line()


def test_a_refusal_on_headers_is_answered_before_the_body(tmp: Path) -> None:
    """(Under body_size_limit: a larger Content-Length is refused 413 by mitmproxy itself.) The 401 arrives while the agent is still sending its body, and the connection is then closed."""
    with running_valet(tmp, {"up": "http://127.0.0.1:9/mcp"}) as valet:
        with socket.create_connection(("127.0.0.1", valet.port), timeout=30) as sock:
            sock.sendall(f"POST /up HTTP/1.1\r\nhost: 127.0.0.1:{valet.port}\r\ncontent-type: application/json\r\n"
                         f"content-length: {20 * 1024 * 1024}\r\n\r\n".encode() + b"x" * 65536)
            answer = b""
            started = time.monotonic()
            while b"\r\n\r\n" not in answer or b"missing_key" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
            assert b"connection: close" in answer.lower()
            closed = False
            try:  # Valet closed the connection without waiting for the rest of the 20 MiB
                closed = sock.recv(65536) == b""
            except OSError:
                closed = True
            assert closed
            assert time.monotonic() - started < 30
        row = valet.rows("reason = 'missing_key'")[0]
        assert row["http_status"] == 401


def test_a_compression_bomb_is_refused_within_the_cap(tmp: Path, stalling: tuple[int, Path]) -> None:
    """A ~64 KB gzip answer that inflates to 64 MiB: decoded in bounded steps, refused past max_buffered_bytes."""
    port, _ = stalling
    with running_valet(tmp, {"bomb": f"http://127.0.0.1:{port}/bomb"}) as valet:
        key, _ = valet.new_key()
        process = psutil.Process(valet.process.pid)
        idle = process.memory_info().rss
        response = httpx.post(f"{valet.base}/bomb", json=jsonrpc("tools/list"),
                              headers={**MCP_HEADERS, "authorization": f"Bearer {key}"}, timeout=60)
        assert response.status_code == 502 and response.json()["error"]["data"]["reason"] == "upstream_error"
        assert len(response.content) < 4096
        assert process.memory_info().rss - idle < 100 * 1024 * 1024


def _start_upload(port: int, key: str, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST /up HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
                 f"authorization: Bearer {key}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
    piece = b"x" * 65536
    for _ in range(size // len(piece)):
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    return sock


def test_one_budget_for_bodies_across_connections(tmp: Path) -> None:
    """Two uploads in progress hold most of the global budget: a third gets 503 busy at once, the others go on."""
    extra = ("limits:\n  max_body_bytes: 65536\n  max_buffered_bytes: 1048576\n"
             "  max_buffered_total_bytes: 2097152\n")
    with running_valet(tmp, {"up": "http://127.0.0.1:9/mcp"}, extra=extra) as valet:
        key, key_id = valet.new_key()
        first = _start_upload(valet.port, key, 917504)
        second = _start_upload(valet.port, key, 917504)
        time.sleep(1.0)  # both bodies are being buffered
        third = _start_upload(valet.port, key, 393216)
        answer = b""
        while b"busy" not in answer:
            chunk = third.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        for sock in (first, second, third):
            sock.close()
        row = valet.rows("reason = 'busy'")[0]
        assert row["http_status"] == 503 and row["key_id"] == key_id
        # the budget comes back once those connections are gone
        deadline = time.monotonic() + 20
        while True:
            late = _start_upload(valet.port, key, 393216)
            late.sendall(b"0\r\n\r\n")
            late.settimeout(30)
            head = late.recv(100)
            late.close()
            if not head.startswith(b"HTTP/1.1 503") or time.monotonic() > deadline:
                break
            time.sleep(1.1)
        assert head.startswith(b"HTTP/1.1 413"), head  # over max_body_bytes: judged, not refused for the budget
