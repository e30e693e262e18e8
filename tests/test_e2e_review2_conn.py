"""Review 2, F1: agent connections with no request in progress are bounded in time and in number.

A real Valet (run_proxy.py) on loopback; raw sockets play the client that sends nothing, stops after a
head, or goes quiet between requests. Each test failed on the old code (the connections stayed open until
mitmproxy's 600 s ``tcp_timeout``; a refusal on headers waited for a body byte that never came).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

from tests.support import Valet, running_valet, start_http_api


@pytest.fixture
def api() -> Iterator[int]:
    upstream = start_http_api()
    try:
        yield upstream.port
    finally:
        upstream.process.kill()
        upstream.process.wait(10)


def _config(api_port: int, extra: str = "") -> str:
    return f"servers:\n  api:\n    url: http://127.0.0.1:{api_port}\n    kind: http\n{extra}"


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed the socket (anything it sent first is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if data == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _wait_closed(socks: list[socket.socket], timeout: float) -> int:
    """How many of ``socks`` are still open after waiting up to ``timeout`` for all to close."""
    deadline = time.monotonic() + timeout
    while True:
        still = sum(1 for s in socks if not _closed(s))
        if still == 0 or time.monotonic() > deadline:
            return still
        time.sleep(0.2)


def _read_answer(sock: socket.socket, timeout: float) -> bytes:
    sock.setblocking(True)
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


def _connect(valet: Valet) -> socket.socket:
    return socket.create_connection(("127.0.0.1", valet.port), timeout=10)


def test_connections_that_send_nothing_are_closed(tmp: Path, api: int) -> None:
    with running_valet(tmp, None, config_text=_config(api, "timeouts:\n  header_read_seconds: 2\n")) as valet:
        socks = [_connect(valet) for _ in range(200)]
        try:
            still = _wait_closed(socks, timeout=30)  # due after 2 s; generous for a loaded machine
            assert still == 0, f"{still} of 200 idle connections still open"
            assert psutil.Process(valet.process.pid).num_fds() < 100
        finally:
            for s in socks:
                s.close()
        key, _ = valet.new_key()  # serving goes on
        r = httpx.get(f"{valet.base}/api/hello", headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200


def test_kept_alive_connection_is_closed_after_client_idle_seconds(tmp: Path, api: int) -> None:
    extra = "timeouts:\n  header_read_seconds: 30\n  client_idle_seconds: 2\n"
    with running_valet(tmp, None, config_text=_config(api, extra)) as valet:
        key, _ = valet.new_key()
        sock = _connect(valet)
        try:
            sock.sendall(f"GET /api/hello HTTP/1.1\r\nhost: 127.0.0.1:{valet.port}\r\n"
                         f"authorization: Bearer {key}\r\n\r\n".encode())
            sock.settimeout(20)
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first[:100]
            assert b"connection: close" not in first.lower()  # kept alive
            started = time.monotonic()
            assert _wait_closed([sock], timeout=30) == 0, "the idle kept-alive connection stayed open"
            assert time.monotonic() - started > 1.0  # the idle time, not at once
        finally:
            sock.close()


def test_keyless_head_with_a_body_that_never_comes_is_answered_at_once(tmp: Path, api: int) -> None:
    with running_valet(tmp, None, config_text=_config(api)) as valet:
        sock = _connect(valet)
        try:
            sock.sendall(f"POST /api/x HTTP/1.1\r\nhost: 127.0.0.1:{valet.port}\r\ncontent-length: 100\r\n\r\n"
                         .encode())
            answer = _read_answer(sock, timeout=20)  # was: nothing until mitmproxy's 600 s
            assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
            assert b"missing_key" in answer
        finally:
            sock.close()


def test_stalled_request_body_gets_408(tmp: Path, api: int) -> None:
    extra = "timeouts:\n  body_read_seconds: 2\n"
    with running_valet(tmp, None, config_text=_config(api, extra)) as valet:
        key, _ = valet.new_key()
        sock = _connect(valet)
        try:
            sock.sendall(f"POST /api/x HTTP/1.1\r\nhost: 127.0.0.1:{valet.port}\r\n"
                         f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n"
                         f"content-length: 100\r\n\r\n{{\"a\": ".encode())
            answer = _read_answer(sock, timeout=30)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
            assert b"request_timeout" in answer
        finally:
            sock.close()


def test_pending_cap_evicts_the_oldest_and_agents_are_served(tmp: Path, api: int) -> None:
    extra = "limits:\n  max_pending_connections: 20\n"
    with running_valet(tmp, None, config_text=_config(api, extra)) as valet:
        key, _ = valet.new_key()
        socks = [_connect(valet) for _ in range(300)]
        try:
            time.sleep(1)
            deadline = time.monotonic() + 30
            while True:
                open_now = sum(1 for s in socks if not _closed(s))
                if open_now <= 20 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert open_now <= 20, f"{open_now} pending connections held (cap 20)"
            assert all(not _closed(s) for s in socks[-10:])  # the newest are kept, the oldest went
            assert psutil.Process(valet.process.pid).num_fds() < 120
            r = httpx.get(f"{valet.base}/api/hello", headers={"authorization": f"Bearer {key}"}, timeout=30)
            assert r.status_code == 200
        finally:
            for s in socks:
                s.close()
        text = valet.log.read_text(errors="replace")
        assert "evicted at limits.max_pending_connections" in text


def test_fd_limit_held_by_idle_sockets_does_not_lock_agents_out(tmp: Path, api: int) -> None:
    """The review's denial of service, small: the fd limit lowered to 300 and 400 idle sockets opened."""
    with running_valet(tmp, None, config_text=_config(api)) as valet:
        key, _ = valet.new_key()
        psutil.Process(valet.process.pid).rlimit(psutil.RLIMIT_NOFILE, (300, 300))
        socks = []
        try:
            for _ in range(400):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", valet.port), timeout=5))
                except OSError:
                    break
            time.sleep(1)
            r = httpx.get(f"{valet.base}/api/hello", headers={"authorization": f"Bearer {key}"}, timeout=30)
            assert r.status_code == 200
        finally:
            for s in socks:
                s.close()


def test_refusal_before_the_body_survives_a_late_body(tmp: Path, api: int) -> None:
    """The refusal is sent before the body and the socket is closed in stages (the rest is read and
    dropped): a body arriving after the answer must not turn into a reset that destroys the answer."""
    with running_valet(tmp, None, config_text=_config(api)) as valet:
        for _ in range(5):
            sock = _connect(valet)
            try:
                sock.sendall(f"POST /api/x HTTP/1.1\r\nhost: 127.0.0.1:{valet.port}\r\n"
                             f"content-length: 200000\r\n\r\n".encode())
                time.sleep(0.5)  # the 401 is out (or on its way) before the body comes
                try:
                    sock.sendall(b"x" * 200000)
                except OSError:
                    pass
                answer = _read_answer(sock, timeout=20)
                assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
            finally:
                sock.close()
