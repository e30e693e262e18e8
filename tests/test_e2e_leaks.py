"""End to end: a hostile upstream echoes every injected value in every form and place; the agent sees none.

The upstream (tests/upstream/hostile.py) also quotes the PREVIOUS caller's
token, so the two-user test proves alice never receives bob's secret, and
every answer carries the shared secret of the server, which must never reach
any agent either.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from addon.secrets import compressed

from .support import PYTHON, ROOT, Upstream, Valet, assert_clean_log, free_port, start_valet, wait_for_port
from .upstream.hostile import forms

pytestmark = pytest.mark.e2e

ALICE = "fake-alice-token-0001-abcdef"
BOB = "fake-bob-token-0002-ghijkl"
SHARED = "fake-shared-value-0003-mnop"
VALUES = (ALICE, BOB, SHARED)


@pytest.fixture(scope="module")
def hostile() -> Iterator[Upstream]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/hostile.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    yield Upstream(port, process)
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def valet(hostile: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    headers = ('    headers:\n      Authorization: "Bearer ${secret:API_TOKEN}"\n'
               '      X-Shared: "${secret:SHARED}"\n')
    config = (f"servers:\n  hostile:\n    url: http://127.0.0.1:{hostile.port}/api\n    kind: http\n{headers}"
              f"  hmcp:\n    url: http://127.0.0.1:{hostile.port}/mcp\n{headers}")
    proxy = start_valet(tmp_path_factory.mktemp("leaks"), None, config_text=config)
    for server in ("hostile", "hmcp"):
        proxy.cli("secret", "set", "API_TOKEN", "--server", server, "--user", "alice", stdin=ALICE)
        proxy.cli("secret", "set", "API_TOKEN", "--server", server, "--user", "bob", stdin=BOB)
        proxy.cli("secret", "set", "SHARED", "--server", server, stdin=SHARED)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def raw_exchange(valet: Valet, method: str, path: str, key: str, body: bytes = b"",
                 extra: str = "") -> bytes:
    """Everything the agent receives on the wire (status line, headers, chunked body, trailers)."""
    request = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{valet.port}\r\nAuthorization: Bearer {key}\r\n"
               f"Connection: close\r\nTE: trailers\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", valet.port), timeout=60) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def body_of(raw: bytes) -> tuple[bytes, bytes]:
    """(head, decoded body): de-chunked, and decompressed whether labelled or not."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
    else:
        body = rest
    codec = compressed.sniff(body)
    if codec is not None:
        try:
            body = compressed.decode(codec, body, 1 << 26)
        except Exception:  # noqa: BLE001 - not compressed after all
            pass
    return head, body


def assert_none_leaks(raw: bytes, where: str) -> None:
    head, body = body_of(raw)
    for seen in (raw, head, body):
        for value in VALUES:
            for form in forms(value):
                assert form.encode() not in seen, f"{where}: a form of a secret reached the agent: {form[:40]}"
            for part in ("alice-token", "bob-token", "shared-value"):
                assert part.encode() not in seen, f"{where}: {part} reached the agent"


# (no "trailers": mitmproxy 12 cannot read HTTP/1 trailers from an upstream at all, NotImplementedError;
# trailers over HTTP/2 go through the same scrubber in relay.response)
SHAPES = ["json", "html", "sse", "gzip", "br", "zstd", "deflate", "gzip-unlabelled",
          "br-unlabelled", "zstd-unlabelled", "deflate-unlabelled", "sse-gzip", "sse-br", "sse-zstd",
          "sse-deflate", "sse-gzip-unlabelled", "sse-zstd-unlabelled"]


@pytest.mark.parametrize("shape", SHAPES)
def test_nothing_injected_comes_back_in_any_form(valet: Valet, shape: str) -> None:
    key, _ = valet.new_key("alice", f"leak-{shape}")
    raw = raw_exchange(valet, "GET", f"/hostile/{shape}", key, extra="Accept-Encoding: gzip, br, zstd\r\n")
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]
    assert b"[REDACTED:" in raw or b"REDACTED" in body_of(raw)[1]
    assert_none_leaks(raw, shape)


def test_json_answer_keeps_its_bytes_outside_redactions(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "bytes")
    head, body = body_of(raw_exchange(valet, "GET", "/hostile/json", key))
    doc = json.loads(body)
    assert doc["result"]["n"] == 1e300 and b'"n": 1e+300' in body
    assert all(f.startswith("[REDACTED:") or "[REDACTED:" in f for f in doc["result"]["forms"])


def test_sse_on_a_post_answer_of_an_mcp_server(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "mcp-sse")
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}).encode()
    raw = raw_exchange(valet, "POST", "/hmcp", key, init,
                       "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n")
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]
    assert b"event: message" in raw
    assert_none_leaks(raw, "mcp sse")


def test_alice_never_receives_bobs_or_the_shared_secret(valet: Valet) -> None:
    """The upstream quotes the previous caller: bob calls, then alice; she must not see bob's token."""
    bob, _ = valet.new_key("bob", "first")
    alice, _ = valet.new_key("alice", "second")
    assert_none_leaks(raw_exchange(valet, "GET", "/hostile/json", bob), "bob")
    raw = raw_exchange(valet, "GET", "/hostile/json", alice)
    _, body = body_of(raw)
    assert b"[REDACTED:API_TOKEN]" in body and b"[REDACTED:SHARED]" in body
    assert_none_leaks(raw, "alice after bob")


def test_a_compressed_stream_is_decoded_live_and_scrubbed(valet: Valet) -> None:
    """The first event arrives while the upstream keeps the stream open: decoded as it comes, not buffered."""
    key, _ = valet.new_key("alice", "live")
    with socket.create_connection(("127.0.0.1", valet.port), timeout=30) as sock:
        sock.sendall(f"GET /hostile/sse-live-gzip HTTP/1.1\r\nHost: 127.0.0.1:{valet.port}\r\n"
                     f"Authorization: Bearer {key}\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        received = b""
        while b"}\r\n\r\n" not in received:
            data = sock.recv(65536)  # times out (fails) if the event is held back until the stream ends
            assert data, received
            received += data
    head, _, _ = received.partition(b"\r\n\r\n")
    assert b"content-encoding" not in head.lower()
    assert b"[REDACTED:API_TOKEN]" in received
    assert_none_leaks(received, "live gzip stream")


def test_an_unlabelled_brotli_stream_is_refused_not_passed(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "br-stream")
    raw = raw_exchange(valet, "GET", "/hostile/sse-br-unlabelled", key)
    assert b"stream refused" in raw
    assert_none_leaks(raw, "unlabelled brotli stream")


@pytest.mark.parametrize("shape", ["json", "html", "sse", "gzip-unlabelled", "sse-zstd", "sse-gzip-unlabelled"])
def test_forward_mode_scrubs_the_same(hostile: Upstream, tmp_path: Path, shape: str) -> None:
    headers = ('    headers:\n      Authorization: "Bearer ${secret:API_TOKEN}"\n'
               '      X-Shared: "${secret:SHARED}"\n')
    config = f"servers:\n  hostile:\n    url: http://127.0.0.1:{hostile.port}/api\n    kind: http\n{headers}"
    proxy = start_valet(tmp_path, None, mode="forward", config_text=config)
    try:
        proxy.cli("secret", "set", "API_TOKEN", "--server", "hostile", "--user", "alice", stdin=ALICE)
        proxy.cli("secret", "set", "SHARED", "--server", "hostile", stdin=SHARED)
        key, _ = proxy.new_key("alice", "forward")
        with httpx.Client(proxy=f"http://agent:{key}@127.0.0.1:{proxy.port}", timeout=30) as client:
            r = client.get(f"http://127.0.0.1:{hostile.port}/api/{shape}")
        assert r.status_code == 200, r.text
        seen = (r.reason_phrase + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items()
                                                    if k.lower() != "transfer-encoding")).encode()
        assert_none_leaks(seen + b"\r\n\r\n" + r.content, f"forward {shape}")
        assert b"REDACTED" in seen + r.content
    finally:
        assert proxy.stop() == 0
    assert_clean_log(proxy)
