"""Second adversarial review, request side: framing (F7), trailers (F8) and request targets (F9).

Forward mode, inside agents' TLS tunnels, over HTTP/2 (``http2: true``) and HTTP/1.1, against a TLS
upstream that parses requests the way a plain HTTP/1.1 origin does and records every head it parsed
(``tests/upstream/tls_echo.py``): a request smuggled in another one's body shows up there as a head.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from .support import PYTHON, ROOT, Valet, assert_clean_log, free_port, start_valet, wait_for_port
from .tls import self_signed_localhost

pytestmark = pytest.mark.e2e

SMUGGLED = b"DELETE /admin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
UPLOAD_ONLY = ("rules:\n  - id: upload-only\n    effect: allow\n    servers: [api]\n"
               "    http:\n      methods: [POST]\n      paths: [/upload]\n")


@dataclass
class Echo:
    port: int
    seen: Path
    process: subprocess.Popen[bytes]

    def heads(self) -> str:
        return self.seen.read_text(errors="replace") if self.seen.exists() else ""


def _start_echo(directory: Path, cert: Path, keyfile: Path, name: str) -> Echo:
    port, seen = free_port(), directory / f"{name}-requests.log"
    process = subprocess.Popen([PYTHON, str(ROOT / "tests" / "upstream" / "tls_echo.py"), str(port), str(cert),
                                str(keyfile), str(seen)], cwd=ROOT)
    wait_for_port(port)
    return Echo(port, seen, process)


@pytest.fixture(scope="module")
def echoes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Echo, Echo, Path]]:
    """(the upstream of server ``api``, a passthrough origin, the CA file both are signed with)."""
    directory = tmp_path_factory.mktemp("echo")
    cert, keyfile = self_signed_localhost(directory)
    api, passthrough = _start_echo(directory, cert, keyfile, "api"), _start_echo(directory, cert, keyfile, "pass")
    yield api, passthrough, cert
    for echo in (api, passthrough):
        echo.process.terminate()
        echo.process.wait(10)


def _config(api: Echo, passthrough: Echo, cert: Path, extra: str = "") -> str:
    return (f"servers:\n  api:\n    url: https://localhost:{api.port}\n    kind: http\n"
            f"    headers: {{X-Api-Key: \"${{secret:K}}\"}}\n"
            f"passthrough: [\"localhost:{passthrough.port}\"]\nupstream_ca_file: {cert}\n{extra}")


@pytest.fixture(scope="module")
def h2valet(echoes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    api, passthrough, cert = echoes
    proxy = start_valet(tmp_path_factory.mktemp("h2"), None, mode="forward",
                        config_text=_config(api, passthrough, cert, "http2: true\n"),
                        policy=UPLOAD_ONLY)
    proxy.cli("secret", "set", "K", "--server", "api", stdin="fake-api-key-h2-0001")
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


@pytest.fixture(scope="module")
def h1valet(echoes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    """The default configuration: no ``http2`` key."""
    api, passthrough, cert = echoes
    proxy = start_valet(tmp_path_factory.mktemp("h1"), None, mode="forward",
                        config_text=_config(api, passthrough, cert), policy=UPLOAD_ONLY)
    proxy.cli("secret", "set", "K", "--server", "api", stdin="fake-api-key-h1-0001")
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def tunnel(proxy: Valet, key: str, port: int, alpn: list[str]) -> ssl.SSLSocket:
    """CONNECT localhost:PORT with the key, then TLS to Valet (its CA) offering ``alpn``."""
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    auth = base64.b64encode(f"agent:{key}".encode()).decode()
    raw.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n"
                f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=proxy.cli("ca").stdout.strip())
    context.set_alpn_protocols(alpn)
    return context.wrap_socket(raw, server_hostname="localhost")


@dataclass
class H2Answer:
    status: str | None
    body: bytes


def h2_request(proxy: Valet, key: str, port: int, headers: list[tuple[str, str]], body: bytes = b"",
               trailers: list[tuple[str, str]] | None = None) -> H2Answer:
    sock = tunnel(proxy, key, port, ["h2"])
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    base = [(":scheme", "https"), (":authority", f"localhost:{port}")]
    conn.send_headers(1, [*headers[:2], *base, *headers[2:]], end_stream=not body and not trailers)
    if body:
        conn.send_data(1, body, end_stream=not trailers)
    if trailers:
        conn.send_headers(1, trailers, end_stream=True)
    sock.sendall(conn.data_to_send())
    sock.settimeout(15)
    status, data = None, b""
    try:
        while chunk := sock.recv(65536):
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers).get(":status")
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return H2Answer(status, data)
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return H2Answer(status, data)


def h1_exchange(proxy: Valet, key: str, port: int, request: bytes, timeout: float = 15) -> bytes:
    sock = tunnel(proxy, key, port, ["http/1.1"])
    try:
        sock.sendall(request)
        sock.settimeout(timeout)
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer
    finally:
        sock.close()


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def _settled_heads(echo: Echo) -> str:
    time.sleep(0.5)  # the upstream appends a head as it parses it: let a smuggled one arrive if it would
    return echo.heads()


# F7: the framing of every forwarded request is Valet's -------------------------------------------------------


def test_http2_is_off_by_default_an_h2_client_gets_http1(h1valet: Valet, echoes) -> None:
    _, passthrough, _ = echoes
    key, _ = h1valet.new_key("alice", "alpn")
    sock = tunnel(h1valet, key, passthrough.port, ["h2", "http/1.1"])
    assert sock.selected_alpn_protocol() == "http/1.1"
    sock.close()
    sock = tunnel(h1valet, key, passthrough.port, ["h2"])  # a client that speaks only h2 is not served h2 either
    assert sock.selected_alpn_protocol() is None
    sock.close()


def test_an_h2_body_without_a_length_cannot_smuggle_a_request_to_a_kind_http_server(h2valet: Valet, echoes) -> None:
    api, _, _ = echoes
    key, key_id = h2valet.new_key("alice", "smuggle-api")
    direct = h2_request(h2valet, key, api.port, [(":method", "DELETE"), (":path", "/admin")])
    assert direct.status == "403"
    allowed = h2_request(h2valet, key, api.port, [(":method", "POST"), (":path", "/upload")], SMUGGLED)
    assert allowed.status == "200"
    echoed = json.loads(allowed.body)
    assert echoed["body"] == SMUGGLED.decode()  # the body reached the upstream as a body
    assert f"content-length: {len(SMUGGLED)}" in echoed["head"].lower()
    heads = _settled_heads(api)
    assert "DELETE /admin" not in heads, heads
    assert "POST /upload" in heads


def test_an_h2_body_without_a_length_cannot_smuggle_a_request_to_a_passthrough_origin(h2valet: Valet,
                                                                                      echoes) -> None:
    _, passthrough, _ = echoes
    key, _ = h2valet.new_key("alice", "smuggle-pass")
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: evil.example\r\nX-Original-URL: /admin\r\n\r\n"
    answer = h2_request(h2valet, key, passthrough.port,
                        [(":method", "POST"), (":path", "/upload"), ("content-type", "text/plain")], smuggled)
    assert answer.status == "200"
    assert json.loads(answer.body)["body"] == smuggled.decode()
    heads = _settled_heads(passthrough)
    assert "GET /smuggled" not in heads and "evil.example" not in heads, heads


def test_a_chunked_http1_body_is_forwarded_with_the_length_valet_judged(h1valet: Valet, echoes) -> None:
    api, _, _ = echoes
    key, _ = h1valet.new_key("alice", "chunked")
    body = b"hello, upstream"
    request = (f"POST /upload HTTP/1.1\r\nHost: localhost:{api.port}\r\nTransfer-Encoding: chunked\r\n\r\n"
               f"{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    answer = h1_exchange(h1valet, key, api.port, request)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
    head = echoed["head"].lower()
    assert "transfer-encoding" not in head and f"content-length: {len(body)}" in head, head
    assert echoed["body"] == body.decode()


# F8: requests with trailers are refused ----------------------------------------------------------------------


def test_h2_request_trailers_are_refused_audited_and_never_logged(h2valet: Valet, echoes) -> None:
    _, passthrough, _ = echoes
    key, key_id = h2valet.new_key("alice", "trailers")
    before = passthrough.heads().count("/with-trailers")
    answer = h2_request(h2valet, key, passthrough.port,
                        [(":method", "POST"), (":path", "/with-trailers"), ("content-type", "text/plain")],
                        b"some body", trailers=[("x-note", f"trailer with the key {key}")])
    assert answer.status == "400"
    assert json.loads(answer.body)["error"]["data"]["reason"] == "trailers_refused"
    row = h2valet.rows("key_id = ? AND reason = 'trailers_refused'", (key_id,))[-1]
    assert row["decision"] == "deny" and row["http_status"] == 400
    assert _settled_heads(passthrough).count("/with-trailers") == before  # nothing reached the upstream
    log = h2valet.log.read_text(errors="replace")
    assert key not in log and "has crashed" not in log


# F9: the request target names the CONNECT target, and goes upstream in origin-form ---------------------------


def test_an_absolute_form_target_inside_a_tunnel_is_refused_over_http1(h1valet: Valet, echoes) -> None:
    _, passthrough, _ = echoes
    key, key_id = h1valet.new_key("alice", "absolute-h1")
    answer = h1_exchange(h1valet, key, passthrough.port,
                         f"GET http://internal-admin.example/export HTTP/1.1\r\n"
                         f"Host: localhost:{passthrough.port}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert h1valet.rows("key_id = ? AND reason = 'absolute_target'", (key_id,))
    assert "internal-admin.example" not in _settled_heads(passthrough)


def test_an_absolute_form_target_naming_the_tunnel_goes_upstream_in_origin_form(h1valet: Valet, echoes) -> None:
    _, passthrough, _ = echoes
    key, _ = h1valet.new_key("alice", "absolute-same")
    answer = h1_exchange(h1valet, key, passthrough.port,
                         f"GET https://localhost:{passthrough.port}/same-origin HTTP/1.1\r\n"
                         f"Host: localhost:{passthrough.port}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    head = json.loads(answer.partition(b"\r\n\r\n")[2])["head"]
    assert head.startswith("GET /same-origin HTTP/1.1\r\n"), head


@pytest.mark.parametrize("method, path", [("GET", "http://internal-admin.example/export"),
                                          ("GET", "internal-admin.example/export"), ("OPTIONS", "*")])
def test_an_h2_path_that_is_not_a_path_is_refused(h2valet: Valet, echoes, method: str, path: str) -> None:
    _, passthrough, _ = echoes
    key, key_id = h2valet.new_key("alice", "h2-path")
    answer = h2_request(h2valet, key, passthrough.port, [(":method", method), (":path", path)])
    assert answer.status == "400"
    assert json.loads(answer.body)["error"]["data"]["reason"] == "absolute_target"
    heads = _settled_heads(passthrough)
    assert "internal-admin.example" not in heads and "OPTIONS *" not in heads


def test_an_h2_request_reaches_a_passthrough_origin_in_origin_form_with_its_host(h2valet: Valet, echoes) -> None:
    _, passthrough, _ = echoes
    key, _ = h2valet.new_key("alice", "h2-origin")
    answer = h2_request(h2valet, key, passthrough.port, [(":method", "GET"), (":path", "/export?x=1")])
    assert answer.status == "200"
    head = json.loads(answer.body)["head"]
    assert head.startswith("GET /export?x=1 HTTP/1.1\r\n"), head
    assert f"host: localhost:{passthrough.port}" in head.lower()


def test_http1_chunked_trailers_are_not_forwarded_and_never_logged(h1valet: Valet, echoes) -> None:
    """mitmproxy reads HTTP/1.1 chunked trailers as an error of its own: the connection ends, nothing goes on."""
    _, passthrough, _ = echoes
    key, _ = h1valet.new_key("alice", "h1-trailers")
    request = (f"POST /h1-trailers HTTP/1.1\r\nHost: localhost:{passthrough.port}\r\nTransfer-Encoding: chunked\r\n"
               f"Trailer: X-Note\r\n\r\n4\r\nbody\r\n0\r\nX-Note: trailer with the key {key}\r\n\r\n").encode()
    try:
        answer = h1_exchange(h1valet, key, passthrough.port, request, timeout=5)
    except TimeoutError:
        answer = b""  # mitmproxy's HTTP/1 layer stopped at the trailers: no answer at all, and nothing forwarded
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:300]
    assert "/h1-trailers" not in _settled_heads(passthrough)
    assert key not in h1valet.log.read_text(errors="replace")

