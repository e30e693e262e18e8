"""Issue 9 item 1/2 for HTTP/2 agents: the request-head caps and the header-read timeout hold on h2 too.

An agent reaches Valet's h2 stack over TLS with ALPN ``h2`` (Valet's reverse listener accepts TLS with its
own CA; forward mode intercepts CONNECT tunnels the same way). The client here is the ``h2`` library over a
real TLS socket, so that it can send what a hostile client sends: too many header fields, a header block
that never ends (CONTINUATION frames of the largest size Valet allows), a header block that never finishes.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import psutil
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from tests.support import Upstream, Valet, jsonrpc, running_valet

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024
# HTTP/2 towards agents is opt-in (`http2: true`); these caps are what applies when it is on
LIMITS = ("http2: true\nlimits:\n  max_header_bytes: 16384\n  max_header_count: 40\ntimeouts:\n  header_read_seconds: 2\n")


@pytest.fixture
def valet(tmp: Path) -> Iterator[Valet]:
    with running_valet(tmp, {"notes": "http://127.0.0.1:9/mcp"}, extra=LIMITS) as proxy:
        yield proxy


class H2Agent:
    """An h2 client on a TLS socket to Valet (ALPN h2, Valet's CA trusted)."""

    def __init__(self, valet: Valet) -> None:
        context = ssl.create_default_context(cafile=str(valet.data_dir / "mitmproxy" / "mitmproxy-ca-cert.pem"))
        context.set_alpn_protocols(["h2"])
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", valet.port), timeout=30),
                                        server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.port = valet.port
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.events: list[h2.events.Event] = []
        self.closed = False
        self.read_until(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in self.events))

    def headers(self, extra: list[tuple[str, str]], method: str = "GET") -> list[tuple[str, str]]:
        return [(":method", method), (":path", "/notes"), (":scheme", "https"),
                (":authority", f"127.0.0.1:{self.port}"), *extra]

    def request(self, extra: list[tuple[str, str]], stream_id: int = 1) -> tuple[int, bytes]:
        self.conn.send_headers(stream_id, self.headers(extra), end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        return self.answer(stream_id)

    def answer(self, stream_id: int) -> tuple[int, bytes]:
        self.read_until(lambda: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id
                                    for e in self.events))
        status = next(dict(e.headers)[":status"] for e in self.events
                      if isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream_id)
        body = b"".join(e.data for e in self.events if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id)
        return int(status), body

    def read_until(self, done, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, self.events
            if not self.receive():
                return

    def receive(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (ConnectionError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            self.events += self.conn.receive_data(data)
            pending = self.conn.data_to_send()
            if pending:
                self.sock.sendall(pending)
        except (h2.exceptions.ProtocolError, OSError):
            pass
        return True

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)), None)

    def close(self) -> None:
        self.sock.close()


def test_h2_requests_within_the_caps_are_served_and_too_many_fields_get_431(valet: Valet) -> None:
    agent = H2Agent(valet)
    try:
        status, body = agent.request([("x-ok", "1")], stream_id=1)
        assert status == 401 and b"missing_key" in body  # an ordinary h2 request reaches Valet's hooks
        status, body = agent.request([(f"x-field-{i}", "v") for i in range(60)], stream_id=3)
        assert status == 431 and b"headers_too_large" in body and b"-32014" in body
        status, body = agent.request([("x-big", "b" * 20000)], stream_id=5)
        assert status == 431 and b"headers_too_large" in body
        status, _ = agent.request([], stream_id=7)  # the connection is still usable after a 431
        assert status == 401
    finally:
        agent.close()
    # refused before any hook, recorded all the same (tests/test_h2_audit.py)
    rows = valet.rows("reason = 'headers_too_large'", expect=2)
    assert [(r["http_status"], r["rule"]) for r in rows] == [(431, "http2:head_too_large")] * 2


def test_an_mcp_call_over_h2_is_served(tmp: Path, upstream: Upstream) -> None:
    """An h2 agent is an ordinary agent: authenticated, judged and answered (the upstream speaks HTTP/1.1)."""
    with running_valet(tmp, {"notes": upstream.url}, extra=LIMITS) as proxy:
        key, key_id = proxy.new_key()
        agent = H2Agent(proxy)
        try:
            meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {}}
            body = json.dumps(jsonrpc("tools/list", {"_meta": meta})).encode()
            agent.conn.send_headers(1, agent.headers([
                ("authorization", f"Bearer {key}"), ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"), ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"), ("content-length", str(len(body)))], method="POST"))
            agent.conn.send_data(1, body, end_stream=True)
            agent.sock.sendall(agent.conn.data_to_send())
            status, answer = agent.answer(1)
            assert status == 200 and b'"tools"' in answer, answer[:300]
        finally:
            agent.close()
        row = proxy.rows("key_id = ? AND rpc_method = 'tools/list'", (key_id,))[0]
        assert row["decision"] == "allow" and row["http_status"] == 200


def test_a_decoded_header_list_past_the_h2_limit_ends_the_connection(valet: Valet) -> None:
    """Larger than even h2's decoder limit (set from the caps): GOAWAY ENHANCE_YOUR_CALM, not decoded whole."""
    agent = H2Agent(valet)
    try:
        agent.conn.send_headers(1, agent.headers([(f"x-h{i}", "v" * 1000) for i in range(60)]), end_stream=True)
        agent.sock.sendall(agent.conn.data_to_send())
        agent.read_until(lambda: agent.goaway() is not None or agent.closed)
        terminated = agent.goaway()
        assert terminated is not None and terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        agent.close()


def _continuation_flood(valet: Valet, frames: int, results: list[int]) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames of 128 KiB (Valet's advertised frame size) that
    never end the block; counts what could be sent before Valet closed the connection."""
    agent = H2Agent(valet)
    size = agent.conn.max_outbound_frame_size
    sent = 0
    try:
        agent.sock.sendall(HeadersFrame(1, data=b"\x00" * 16, flags=["END_STREAM"]).serialize())
        for _ in range(frames):
            agent.sock.sendall(ContinuationFrame(1, data=b"\x00" * size).serialize())
            sent += size
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        results.append(sent)
        agent.close()


def test_a_continuation_flood_is_cut_early_and_memory_stays_bounded(valet: Valet) -> None:
    """Before: h2 held up to 64 CONTINUATIONs of 128 KiB (8 MiB) per connection. Now a header block past twice
    the head cap ends the connection: 20 concurrent floods of 48 MiB each leave memory flat."""
    process = psutil.Process(valet.process.pid)
    idle = process.memory_info().rss
    results: list[int] = []
    threads = [threading.Thread(target=_continuation_flood, args=(valet, 384, results)) for _ in range(20)]
    peak = idle
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.02)
    assert len(results) == 20
    assert max(results) < 16 * MIB, results  # cut long before the 48 MiB each tried to send
    assert peak - idle < 60 * MIB, ((peak - idle) / MIB, [r / MIB for r in results])


def test_a_header_block_that_never_finishes_is_cut(valet: Valet) -> None:
    """Slow headers on h2: HEADERS without END_HEADERS and nothing more. header_read_seconds (2 s here) later
    Valet sends GOAWAY and closes, as a slow HTTP/1 head gets 408."""
    agent = H2Agent(valet)
    try:
        started = time.monotonic()
        agent.sock.sendall(HeadersFrame(1, data=b"\x82", flags=["END_STREAM"]).serialize())
        agent.read_until(lambda: agent.closed or agent.goaway() is not None, seconds=30)
        elapsed = time.monotonic() - started
        assert agent.closed or agent.goaway() is not None
        assert 1.5 < elapsed < 20, elapsed
        terminated = agent.goaway()
        assert terminated is None or terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        agent.close()


def _record(payload: bytes) -> bytes:
    return b"\x16\x03\x01" + len(payload).to_bytes(2, "big") + payload


def _hello_flood(port: int, size: int, results: list[int]) -> None:
    """A ClientHello that claims 16 MiB, sent in 16 KiB handshake records; counts what went out before Valet
    closed the connection."""
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_record(b"\x01\xff\xff\xf0\x03\x03" + b"\x00" * 16378))
            sent = 16384
            while sent < size:
                sock.sendall(_record(b"\x00" * 16384))
                sent += 16384
    except OSError:
        pass
    results.append(sent)


def test_a_huge_tls_client_hello_is_cut_and_memory_stays_bounded(valet: Valet) -> None:
    """mitmproxy buffers a ClientHello until it parses (up to the 16 MiB its length field can claim, re-parsing
    the whole buffer at every record); Valet ends the handshake past 64 KiB."""
    process = psutil.Process(valet.process.pid)
    idle = process.memory_info().rss
    results: list[int] = []
    threads = [threading.Thread(target=_hello_flood, args=(valet.port, 12 * MIB, results)) for _ in range(10)]
    peak = idle
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.02)
    assert len(results) == 10 and max(results) < 8 * MIB, [r / MIB for r in results]
    assert peak - idle < 60 * MIB, (peak - idle) / MIB
    agent = H2Agent(valet)  # and TLS agents are still served
    try:
        assert agent.request([])[0] == 401
    finally:
        agent.close()


def test_a_tls_handshake_that_never_finishes_is_cut(valet: Valet) -> None:
    with socket.create_connection(("127.0.0.1", valet.port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, and nothing more
        try:
            closed = sock.recv(65536) == b""
        except OSError:
            closed = True
        elapsed = time.monotonic() - started
    assert closed and 1.5 < elapsed < 20, elapsed
