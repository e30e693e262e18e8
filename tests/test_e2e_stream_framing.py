"""End to end: a streamed answer that Valet transforms never keeps the upstream's framing.

A hostile upstream answers ``text/event-stream`` with a ``Content-Length`` and echoes the injected secret:
the redaction marker is longer than the secret, so the bytes past the declared end used to reach the agent,
and on a kept-alive connection they were read as the answer to its NEXT request (here a forged answer of
another server). Valet now drops the length and frames the stream itself (chunked for HTTP/1.1).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Valet, free_port, start_valet

pytestmark = pytest.mark.e2e

SECRET = "fake-k-2468"  # 11 characters: shorter than its marker
FORGED = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{"injected":true}'


def _serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                head += chunk
            token = next((line.split(b" ", 2)[-1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"authorization:")), b"none")
            body = b"".join(b"data: " + token + b"\n\n" for _ in range(14))
            # the declared length is the body's, then a forged answer follows on the same connection
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"content-length: %d\r\n\r\n" % len(body) + body + FORGED)


@pytest.fixture(scope="module")
def valet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    threading.Thread(target=_serve, args=(listener,), daemon=True).start()
    up = listener.getsockname()[1]
    tmp: Path = tmp_path_factory.mktemp("framing")
    config = (f"servers:\n  api:\n    url: http://127.0.0.1:{up}\n    kind: http\n"
              '    headers: {Authorization: "${secret:API_KEY}"}\n'
              f"  other:\n    url: http://127.0.0.1:{free_port()}\n    kind: http\n")
    proxy = start_valet(tmp, None, config_text=config)
    proxy.cli("secret", "set", "API_KEY", "--server", "api", stdin=SECRET)
    yield proxy
    proxy.stop()
    listener.close()


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one HTTP/1.1 response framed by chunked encoding or Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lower = head.lower()
    assert b"content-length" not in lower, head
    assert b"transfer-encoding: chunked" in lower, head
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += sock.recv(65536)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            rest += sock.recv(65536)
        body, rest = body + rest[:size], rest[size + 2:]
        if size == 0:
            assert rest == b"", f"bytes after the end of the answer: {rest[:80]!r}"
            return head, body


def test_a_scrubbed_stream_is_reframed_and_nothing_follows_it(valet: Valet) -> None:
    key, _ = valet.new_key()
    with socket.create_connection(("127.0.0.1", valet.port), timeout=15) as sock:
        sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{valet.port}\r\n"
                     f"Authorization: Bearer {key}\r\n\r\n".encode())
        head, body = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert SECRET.encode() not in body and body.count(b"[REDACTED:API_KEY]") == 14, body[:200]
        # the next request on the same connection gets its own answer, not the upstream's forgery
        sock.sendall(f"GET /other/x HTTP/1.1\r\nHost: 127.0.0.1:{valet.port}\r\n"
                     f"Authorization: Bearer {key}\r\n\r\n".encode())
        sock.settimeout(15)
        second = b""
        while b"\r\n\r\n" not in second:
            chunk = sock.recv(65536)
            if not chunk:
                break
            second += chunk
        assert b'"injected":true' not in second and not second.startswith(b"HTTP/1.1 200"), second[:200]
