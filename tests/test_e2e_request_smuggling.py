"""Nothing reaches an upstream read differently from what Valet judged, and nothing leaves HTTP (issue 8, 5 and 7).

Real Valet, real upstreams: the MCP test server, the echo HTTP API (it returns
what it received) and a hostile upstream that answers ``101`` and then talks
raw bytes, quoting the credential Valet injected.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import (PYTHON, ROOT, Upstream, Valet, assert_clean_log, free_port, jsonrpc, post, start_http_api,
                      start_valet, wait_for_port)

pytestmark = pytest.mark.e2e

API_KEY = "fake-api-key-request-7781"
INIT = jsonrpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                              "clientInfo": {"name": "raw", "version": "0"}})


def start_switcher() -> Upstream:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/switcher.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    return Upstream(port, process)


@pytest.fixture(scope="module")
def api() -> Iterator[Upstream]:
    server = start_http_api()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def switcher() -> Iterator[Upstream]:
    server = start_switcher()
    yield server
    server.stop()


def config(upstream: Upstream, api: Upstream, switcher: Upstream) -> str:
    return f"""
servers:
  notes:
    url: {upstream.url}
  api:
    url: http://127.0.0.1:{api.port}
    kind: http
    headers: {{X-Api-Key: "${{secret:API_KEY}}"}}
  switch:
    url: http://127.0.0.1:{switcher.port}
    kind: http
    headers: {{X-Api-Key: "${{secret:API_KEY}}"}}
  switchmcp:
    url: http://127.0.0.1:{switcher.port}/mcp
    headers: {{X-Api-Key: "${{secret:API_KEY}}"}}
"""


@pytest.fixture(scope="module")
def valet(upstream: Upstream, api: Upstream, switcher: Upstream,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start_valet(tmp_path_factory.mktemp("smuggle"), None, config_text=config(upstream, api, switcher))
    for server in ("api", "switch", "switchmcp"):
        proxy.cli("secret", "set", "API_KEY", "--server", server, stdin=API_KEY)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


@pytest.fixture(scope="module")
def forward(upstream: Upstream, api: Upstream, switcher: Upstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    text = config(upstream, api, switcher).replace(f"http://127.0.0.1:{api.port}", f"http://localhost:{api.port}")
    text += f'passthrough: ["127.0.0.1:{api.port}"]\n'
    proxy = start_valet(tmp_path_factory.mktemp("smuggle-fwd"), None, mode="forward", config_text=text)
    proxy.cli("secret", "set", "API_KEY", "--server", "api", stdin=API_KEY)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def raw(port: int, request: bytes, then: bytes = b"", wait: float = 3.0) -> bytes:
    """Send raw bytes, optionally more after the first answer; return everything that came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(request)
        received = b""
        deadline = time.monotonic() + wait
        sent_more = False
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not data:
                break
            received += data
            if then and not sent_more and b"\r\n\r\n" in received:
                sent_more = True
                try:
                    sock.sendall(then)
                except OSError:
                    break
            sock.settimeout(1.0)
        return received


def reason(response: httpx.Response) -> str:
    return response.json()["error"]["data"]["reason"]


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# -- item 5: nothing leaves HTTP ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("server", "request_line", "body"), [
    ("switch", b"GET /switch/anything HTTP/1.1", b""),
    ("switchmcp", b"POST /switchmcp HTTP/1.1", b'{"jsonrpc":"2.0","id":1,"method":"ping"}'),
])
def test_a_101_from_the_upstream_is_never_followed(valet: Valet, switcher: Upstream, server, request_line,
                                                   body) -> None:
    key, key_id = valet.new_key("alice", f"switch-{server}")
    head = (request_line + b"\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n" % (valet.port, key.encode()) +
            b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n" +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)
    answer = raw(valet.port, head, then=b"PING after the upgrade\r\n")
    assert answer.startswith(b"HTTP/1.1 502"), answer[:300]
    assert b"upstream_error" in answer
    assert b"GREETING" not in answer and b"ECHO" not in answer and API_KEY.encode() not in answer
    row = valet.rows("key_id = ?", (key_id,))[-1]
    assert row["decision"] == "error" and row["http_status"] == 502


def test_upgrade_requests_are_refused_for_every_server_kind(valet: Valet, api: Upstream, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "upgrader")
    before = (api.requests_seen(), upstream.requests_seen())
    for path in ("/api/chat", "/notes"):
        for headers in ({"connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
                         "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}, {"connection": "Upgrade, HTTP2-Settings",
                                                                           "upgrade": "h2c", "http2-settings": "AAMAAABkAAQAAP__"}):
            r = httpx.get(valet.base + path, headers={**auth(key), **headers}, timeout=10)
            assert r.status_code == 400 and reason(r) == "upgrade_not_allowed", (path, r.text)
    assert (api.requests_seen(), upstream.requests_seen()) == before


def test_upgrades_to_passthrough_hosts_are_refused_too(forward: Valet, api: Upstream) -> None:
    key, _ = forward.new_key("alice", "passthrough-upgrade")
    proxy = f"http://agent:{key}@127.0.0.1:{forward.port}"
    before = api.requests_seen()
    with httpx.Client(proxy=proxy, timeout=10) as client:
        ok = client.get(f"http://127.0.0.1:{api.port}/plain")
        assert ok.status_code == 200
        r = client.get(f"http://127.0.0.1:{api.port}/ws", headers={"connection": "Upgrade", "upgrade": "websocket"})
    assert r.status_code == 400 and reason(r) == "upgrade_not_allowed"
    assert api.requests_seen() == before + 1


def test_an_http_apis_own_session_parameter_is_not_a_legacy_session(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "api-session")
    r = httpx.get(valet.base + "/api/items?session_id=abc", headers=auth(key), timeout=10)
    assert r.status_code == 200 and r.json()["query"] == "session_id=abc"


def test_forward_mode_host_must_name_the_url(forward: Valet, api: Upstream) -> None:
    key, _ = forward.new_key("alice", "fronting")
    before = api.requests_seen()
    with httpx.Client(proxy=f"http://agent:{key}@127.0.0.1:{forward.port}", timeout=10) as client:
        for url in (f"http://127.0.0.1:{api.port}/plain", f"http://localhost:{api.port}/v1/items"):
            r = client.get(url, headers={"host": "evil.example.com"})
            assert r.status_code == 403 and reason(r) == "destination_not_allowed", r.text
    assert api.requests_seen() == before


# -- item 5: the valet key never goes upstream ----------------------------------------------------------------------

def test_a_valet_key_anywhere_else_in_the_request_is_refused(valet: Valet, api: Upstream) -> None:
    key, key_id = valet.new_key("alice", "leaky")
    other, _ = valet.new_key("bob", "other")
    before = api.requests_seen()
    encoded = "".join(f"%{b:02X}" for b in key.encode())
    attempts = [
        (f"/api/items?token={key}", {}),
        (f"/api/items?token={encoded}", {}),
        (f"/api/items?k={other}", {}),
        ("/api/items", {"x-upstream-token": key}),
        ("/api/items", {"x-forward-to": f"Bearer {other}"}),
        ("/api/items", {"cookie": f"session={key}"}),
        (f"/api/{key}/items", {}),
    ]
    for path, headers in attempts:
        r = httpx.get(valet.base + path, headers={**auth(key), **headers}, timeout=10)
        assert r.status_code == 400 and reason(r) == "key_misplaced", (path, headers, r.text)
        assert key not in r.text and other not in r.text
    assert api.requests_seen() == before
    assert valet.rows("key_id = ? AND reason = 'key_misplaced'", (key_id,), expect=len(attempts))


def test_a_valet_key_in_a_json_rpc_body_is_refused_and_never_audited(valet: Valet, upstream: Upstream) -> None:
    key, key_id = valet.new_key("alice", "body-leak")
    headers = _session(valet, key)
    before = upstream.requests_seen()
    escaped = "".join(f"\\u{ord(c):04x}" for c in key)
    for text in (f"my key is {key}", None):
        if text is None:
            body = ('{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","arguments":'
                    '{"text":"' + escaped + '"}}}').encode()
        else:
            body = jsonrpc("tools/call", {"name": "echo", "arguments": {"text": text}}, 11)
        r = post(valet.base + "/notes", body, key, headers=headers)
        assert r.status_code == 400 and reason(r) == "key_misplaced" and r.json()["id"] == 11, r.text
    assert upstream.requests_seen() == before
    rows = valet.rows("key_id = ? AND reason = 'key_misplaced'", (key_id,), expect=2)
    assert all(key not in json.dumps(row) for row in rows)


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_forward_mode_authorization_with_the_key_is_removed(forward: Valet, api: Upstream, scheme: str) -> None:
    key, _ = forward.new_key("alice", f"fwd-auth-{scheme}")
    proxy = f"http://agent:{key}@127.0.0.1:{forward.port}"
    value = f"Bearer {key}" if scheme == "bearer" else "Basic " + base64.b64encode(f"agent:{key}".encode()).decode()
    with httpx.Client(proxy=proxy, timeout=10) as client:
        r = client.get(f"http://localhost:{api.port}/v1/items", headers={"authorization": value})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert "authorization" not in seen["headers"] and "proxy-authorization" not in seen["headers"]
    assert key not in r.text
    assert seen["headers"]["x-api-key"] == "[REDACTED:API_KEY]"


# -- item 7: the request line is the only request -------------------------------------------------------------------

@pytest.mark.parametrize(("path", "headers", "expected"), [
    ("/api/customers/1?_method=DELETE", {}, "method_override"),
    ("/api/customers/1?_METHOD=delete", {}, "method_override"),
    ("/api/customers/1", {"x-http-method-override": "DELETE"}, "method_override"),
    ("/api/public", {"x-original-url": "/admin"}, "rewrite_header"),
    ("/api/public", {"x-rewrite-url": "/admin"}, "rewrite_header"),
    ("/api/public", {"x-forwarded-prefix": "/admin"}, "rewrite_header"),
    ("/api/public", {"x-forwarded-host": "evil.example.com"}, "rewrite_header"),
])
def test_method_overrides_and_rewrite_headers_are_refused(valet: Valet, api: Upstream, path, headers,
                                                          expected) -> None:
    key, _ = valet.new_key("alice", "override")
    before = api.requests_seen()
    r = httpx.get(valet.base + path, headers={**auth(key), **headers}, timeout=10)
    assert r.status_code == 400 and reason(r) == expected, r.text
    assert api.requests_seen() == before


def test_rewrite_headers_are_refused_on_mcp_servers_too(valet: Valet, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "override-mcp")
    before = upstream.requests_seen()
    r = post(valet.base + "/notes", INIT, key, headers={"x-original-url": "/admin"})
    assert r.status_code == 400 and reason(r) == "rewrite_header"
    assert upstream.requests_seen() == before


@pytest.mark.parametrize("path", [
    "/api/%252e%252e/admin",        # double percent-encoding: '..' after two decodings
    "/api/files/%252fetc%252fpasswd",
    "/api/%c0%ae%c0%ae/admin",      # overlong UTF-8 for '.'
    "/api/%u002e%u002e/admin",      # IIS %u escapes
    "/api/%EF%BC%8E%EF%BC%8E/admin",  # full-width dots (NFKC: '..')
    "/api/a%EF%BC%8Fb",             # full-width solidus
    "/api/a%E2%88%95b",             # division slash look-alike
    "/api/admin./x",                # trailing dot (Windows/IIS drop it)
    "/api/..%20/x",                 # trailing space
    "/api/admin%20/x",
])
def test_http_paths_a_lenient_decoder_reads_differently_are_refused(valet: Valet, api: Upstream, path) -> None:
    key, _ = valet.new_key("alice", "paths")
    before = api.requests_seen()
    answer = raw(valet.port, b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                 b"Connection: close\r\n\r\n" % (path.encode(), valet.port, key.encode()))
    assert answer.startswith(b"HTTP/1.1 400"), (path, answer[:300])
    assert b"bad_path" in answer
    assert api.requests_seen() == before


def _session(valet: Valet, key: str) -> dict[str, str]:
    r = post(valet.base + "/notes", INIT, key)
    assert r.status_code == 200, r.text
    headers = {"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    assert post(valet.base + "/notes", jsonrpc("notifications/initialized", rpc_id=None), key,
                headers=headers).status_code == 202
    return headers


@pytest.mark.parametrize("params", [
    {"name": "echo", "arguments": {"text": "a", "Text": "b"}},
    {"name": "echo", "Name": "delete_everything", "arguments": {}},
    {"name": "echo", "arguments": {"extra": {"path": "/ok", "PATH": "/etc"}}},
])
def test_members_that_differ_only_by_case_are_refused(valet: Valet, upstream: Upstream, params) -> None:
    key, _ = valet.new_key("alice", "twins")
    headers = _session(valet, key)
    before = upstream.requests_seen()
    r = post(valet.base + "/notes", jsonrpc("tools/call", params, 5), key, headers=headers)
    assert r.status_code == 400 and reason(r) == "case_twin_members", r.text
    assert r.json()["id"] == 5
    assert upstream.requests_seen() == before


def test_agent_mcp_param_headers_never_go_upstream_unverified(valet: Valet, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "params")
    headers = _session(valet, key)
    call = jsonrpc("tools/call", {"name": "signed", "arguments": {"api_key": "from-the-body", "text": "x"}}, 7)
    before = upstream.requests_seen()
    forged = {**headers, "mcp-param-api-key": "forged-header-value"}
    r = post(valet.base + "/notes", call, key, headers=forged)
    assert r.status_code == 400 and reason(r) == "param_headers_unverified", r.text
    assert "tools/list" in r.json()["error"]["message"]
    assert upstream.requests_seen() == before
    # once Valet has relayed the schema, the header is rebuilt from the body it forwards
    assert post(valet.base + "/notes", jsonrpc("tools/list", rpc_id=8), key, headers=headers).status_code == 200
    r = post(valet.base + "/notes", call, key, headers=forged)
    assert r.status_code == 200, r.text
    assert "forged-header-value" not in r.text
    assert '\\"mcp-param-api-key\\": \\"from-the-body\\"' in r.text


# -- item 7: path ARGUMENTS (normalized by addon/policy/arguments.py, with the shared check of protocol/paths.py) --

FILES_POLICY = """
servers:
  notes: {default: deny}
rules:
  - id: files
    effect: allow
    servers: [notes]
    tools: [read_file]
    arguments:
      path: {under: /srv/data}
"""


@pytest.fixture(scope="module")
def files(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start_valet(tmp_path_factory.mktemp("files"), {"notes": upstream.url}, policy=FILES_POLICY)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


@pytest.mark.parametrize("path", [
    "/srv/data/%2e%2e/secret", "/srv/data/\uff0e\uff0e/secret", "/srv/data/a\uff0fb",
    "/srv/data/%252e%252e/secret", "/srv/data/%c0%ae%c0%ae/secret", "/srv/data/%u2215etc", "/srv/data/a\u2215b",
    "/srv/data/secret./x", "/srv/data/secret /x",
])
def test_path_arguments_a_lenient_decoder_reads_differently_are_refused(files: Valet, upstream: Upstream,
                                                                        path: str) -> None:
    key, _ = files.new_key("alice", "files")
    headers = _session(files, key)
    before = upstream.requests_seen()
    r = post(files.base + "/notes", jsonrpc("tools/call", {"name": "read_file", "arguments": {"path": path}}, 9),
             key, headers=headers)
    assert r.status_code == 403 and reason(r) == "denied", r.text
    assert upstream.requests_seen() == before
