"""End to end: an HTTP/1.1 request whose chunked body ends with trailers is refused like any other request Valet
cannot judge: a JSON-RPC error (400 trailers_refused), an audit row, the connection closed, nothing forwarded,
and no crash traceback (mitmproxy's reader raised NotImplementedError on them: no answer, no row, and the
trailer values in the log)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Upstream, Valet, start_upstream, start_valet

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = start_upstream()
    yield up
    up.process.terminate()
    up.process.wait(10)


@pytest.fixture(scope="module")
def valet(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    tmp: Path = tmp_path_factory.mktemp("trailers")
    proxy = start_valet(tmp, {"notes": upstream.url})
    yield proxy
    proxy.stop()


def test_a_chunked_request_with_trailers_is_refused_audited_and_closed(valet: Valet) -> None:
    key, key_id = valet.new_key()
    body = b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}'
    request = (f"POST /notes HTTP/1.1\r\nHost: 127.0.0.1:{valet.port}\r\nAuthorization: Bearer {key}\r\n"
               "content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
               "transfer-encoding: chunked\r\ntrailer: x-note\r\n\r\n").encode()
    request += b"%x\r\n%s\r\n0\r\nx-note: %s\r\n\r\n" % (len(body), body, key.encode())
    received = b""
    with socket.create_connection(("127.0.0.1", valet.port), timeout=15) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):  # the connection is closed after the answer
            received += chunk
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), received[:200]
    error = json.loads(answer)["error"]
    assert (error["code"], error["data"]["reason"]) == (-32066, "trailers_refused")
    row = valet.rows("key_id = ?", (key_id,))[0]
    assert (row["decision"], row["reason"], row["http_status"]) == ("deny", "trailers_refused", 400)
    log = valet.log.read_text(errors="replace")
    assert "NotImplementedError" not in log and "has crashed" not in log
    assert key not in log


def test_a_chunked_request_without_trailers_still_goes_through(valet: Valet) -> None:
    key, key_id = valet.new_key()
    body = (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
            b'"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}')
    request = (f"POST /notes HTTP/1.1\r\nHost: 127.0.0.1:{valet.port}\r\nAuthorization: Bearer {key}\r\n"
               "content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
               "transfer-encoding: chunked\r\nconnection: close\r\n\r\n").encode()
    request += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    received = b""
    with socket.create_connection(("127.0.0.1", valet.port), timeout=15) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    assert valet.rows("key_id = ?", (key_id,))[0]["decision"] == "allow"


def test_an_upstream_answer_with_trailers_is_a_502_not_a_crash(tmp_path: Path) -> None:
    """The same reader on the upstream side: a chunked answer with trailers becomes 502 upstream_error."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
                         b"trailer: x-t\r\n\r\n2\r\n{}\r\n0\r\nx-t: v\r\n\r\n")
            conn.recv(65536)

    import threading
    threading.Thread(target=serve, daemon=True).start()
    config = f"servers:\n  api:\n    url: http://127.0.0.1:{listener.getsockname()[1]}\n    kind: http\n"
    proxy = start_valet(tmp_path, None, config_text=config)
    try:
        key, key_id = proxy.new_key()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
            sock.sendall(f"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\nAuthorization: Bearer {key}\r\n"
                         "connection: close\r\n\r\n".encode())
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 502") or b"0\r\n\r\n" not in received, received[:300]
        row = proxy.rows("key_id = ?", (key_id,))[0]
        assert row["decision"] == "error" and row["reason"] == "upstream_error", row
        assert "NotImplementedError" not in proxy.log.read_text(errors="replace")
    finally:
        proxy.stop()
        listener.close()
