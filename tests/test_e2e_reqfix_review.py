"""The request-side findings of the security review, end to end: each test sent what the reviewer sent.

Real Valet, the real MCP test server and the echo HTTP API. Every test here failed on the code before the
fix: a key as a Basic user name reached the upstream, underscore header names slipped past the guards,
``PATH``/``Arguments`` slipped past deny rules, ``notes-delete_everything`` past a deny on ``delete_*``,
``1e400`` answered 500, folded headers, utf-7 and absolute-form targets were forwarded,
``notifications/../tools/call`` was housekeeping and batches had no size limit.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from .support import Upstream, Valet, assert_clean_log, jsonrpc, post, start_http_api, start_valet
from .test_e2e_request_smuggling import _session, raw, reason

pytestmark = pytest.mark.e2e

API_KEY = "fake-api-key-reqfix-4412"
TOKEN = "fake-token-reqfix-5521"

POLICY = """
servers:
  notes: {default: allow}
  api: {default: allow}
rules:
  - id: no-delete
    effect: deny
    tools: [delete_*]
  - id: no-private
    effect: deny
    servers: [notes]
    tools: [read_file]
    arguments:
      path: {under: /srv/private}
  - id: files
    effect: allow
    servers: [notes]
    tools: [read_file]
"""


@pytest.fixture(scope="module")
def api() -> Iterator[Upstream]:
    server = start_http_api()
    yield server
    server.stop()


def config(upstream: Upstream, api: Upstream, host: str = "127.0.0.1") -> str:
    return f"""
servers:
  notes:
    url: {upstream.url}
    inject:
      - tools: ["whoami"]
        arguments: {{token: "${{secret:TOKEN}}"}}
  api:
    url: http://{host}:{api.port}
    kind: http
    headers: {{X-Api-Key: "${{secret:API_KEY}}"}}
limits:
  max_batch_messages: 5
"""


@pytest.fixture(scope="module")
def valet(upstream: Upstream, api: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start_valet(tmp_path_factory.mktemp("reqfix"), None, config_text=config(upstream, api), policy=POLICY)
    proxy.cli("secret", "set", "API_KEY", "--server", "api", stdin=API_KEY)
    proxy.cli("secret", "set", "TOKEN", "--server", "notes", stdin=TOKEN)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


@pytest.fixture(scope="module")
def forward(upstream: Upstream, api: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start_valet(tmp_path_factory.mktemp("reqfix-fwd"), None, mode="forward",
                        config_text=config(upstream, api, host="localhost"), policy=POLICY)
    proxy.cli("secret", "set", "API_KEY", "--server", "api", stdin=API_KEY)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def call(valet: Valet, key: str, headers: dict[str, str], params: dict, rpc_id: int = 5) -> httpx.Response:
    return post(valet.base + "/notes", jsonrpc("tools/call", params, rpc_id), key, headers=headers)


# -- 6: the key as a Basic user name --------------------------------------------------------------------------------

@pytest.mark.parametrize("credential", ["{key}:", "{key}:x", "agent:{key}"])
def test_forward_mode_basic_with_the_key_in_either_part_never_goes_upstream(forward: Valet, api: Upstream,
                                                                           credential: str) -> None:
    key, _ = forward.new_key("alice", "basic-user")
    value = "Basic " + base64.b64encode(credential.format(key=key).encode()).decode()
    with httpx.Client(proxy=f"http://agent:{key}@127.0.0.1:{forward.port}", timeout=10) as client:
        r = client.get(f"http://localhost:{api.port}/v1/items", headers={"authorization": value})
    assert r.status_code == 200, r.text
    assert "authorization" not in r.json()["headers"] and key not in r.text


def test_a_basic_credential_with_the_key_in_another_header_is_refused(valet: Valet, api: Upstream) -> None:
    key, _ = valet.new_key("alice", "basic-other")
    before = api.requests_seen()
    value = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    r = httpx.get(valet.base + "/api/items", headers={**auth(key), "x-upstream-auth": value}, timeout=10)
    assert r.status_code == 400 and reason(r) == "key_misplaced", r.text
    assert api.requests_seen() == before


# -- 7: underscore header names, folded headers ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["X_Original_URL", "X_HTTP_Method_Override", "X_Forwarded_For", "Mcp_Session_Id",
                                  "X_Api_Key", "Content_Type", "x_anything"])
def test_underscore_header_names_are_refused(valet: Valet, api: Upstream, name: str) -> None:
    key, _ = valet.new_key("alice", "underscore")
    before = api.requests_seen()
    r = httpx.get(valet.base + "/api/items", headers={**auth(key), name: "/admin"}, timeout=10)
    assert r.status_code == 400 and reason(r) == "underscore_header", r.text
    assert api.requests_seen() == before


def test_an_underscore_session_header_cannot_reach_an_mcp_server(valet: Valet, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "underscore-session")
    headers = _session(valet, key)
    before = upstream.requests_seen()
    r = call(valet, key, {**headers, "Mcp_Session_Id": "someone-elses"}, {"name": "echo", "arguments": {}})
    assert r.status_code == 400 and reason(r) == "underscore_header", r.text
    assert upstream.requests_seen() == before


def test_folded_headers_are_refused(valet: Valet, api: Upstream) -> None:
    key, _ = valet.new_key("alice", "folded")
    before = api.requests_seen()
    request = (f"GET /api/items HTTP/1.1\r\nHost: 127.0.0.1:{valet.port}\r\nAuthorization: Bearer {key}\r\n"
               "X-Note: first\r\n X-Original-URL: /admin\r\nConnection: close\r\n\r\n").encode()
    answer = raw(valet.port, request)
    assert answer.startswith(b"HTTP/1.1 400") and b"folded_header" in answer, answer[:300]
    assert api.requests_seen() == before


# -- 8: argument names in another case, params members in another case, case twins after injection -----------------

@pytest.mark.parametrize("arguments", [{"PATH": "/srv/private/x"}, {"Path": "/srv/private/x"},
                                       {"path": "/srv/public/x", "extra": 1, "pAtH ": "/x"}])
def test_deny_rules_read_argument_names_in_any_case(valet: Valet, upstream: Upstream, arguments: dict) -> None:
    key, _ = valet.new_key("alice", "arg-case")
    headers = _session(valet, key)
    before = upstream.requests_seen()
    r = call(valet, key, headers, {"name": "read_file", "arguments": arguments})
    if "pAtH " in arguments:  # a different name (trailing space): not folded, allowed
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 403 and r.json()["error"]["data"]["rule"] == "no-private", r.text
    assert upstream.requests_seen() == before


@pytest.mark.parametrize("params", [{"name": "read_file", "Arguments": {"path": "/srv/private/x"}},
                                    {"NAME": "read_file", "arguments": {}},
                                    {"name": "read_file", "arguments": {}, "_META": {}}])
def test_params_members_in_another_case_are_refused(valet: Valet, upstream: Upstream, params: dict) -> None:
    key, key_id = valet.new_key("alice", "member-case")
    headers = _session(valet, key)
    before = upstream.requests_seen()
    r = call(valet, key, headers, params)
    assert r.status_code == 400 and reason(r) in ("member_case", "invalid_request"), r.text
    if "NAME" not in params:
        assert reason(r) == "member_case"
    assert upstream.requests_seen() == before


def test_an_agent_case_twin_of_an_injected_argument_is_dropped_and_recorded(valet: Valet) -> None:
    key, key_id = valet.new_key("alice", "inject-twin")
    headers = _session(valet, key)
    r = call(valet, key, headers, {"name": "whoami", "arguments": {"text": "t", "TOKEN": "agent-chosen-value"}})
    assert r.status_code == 200, r.text
    row = valet.rows("key_id = ? AND tool = 'whoami'", (key_id,))[0]
    assert json.loads(row["overridden"]) == ["TOKEN"]
    assert "agent-chosen-value" not in row["arguments"] and "TOKEN" not in json.loads(row["arguments"])


# -- 9: the "-" namespace separator ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tool", ["notes-delete_everything", "a-b.notes-Delete_Everything"])
def test_a_deny_covers_a_dash_namespace(valet: Valet, upstream: Upstream, tool: str) -> None:
    key, _ = valet.new_key("alice", "dash")
    headers = _session(valet, key)
    before = upstream.requests_seen()
    r = call(valet, key, headers, {"name": tool, "arguments": {}})
    assert r.status_code == 403 and r.json()["error"]["data"]["rule"] == "no-delete", r.text
    assert upstream.requests_seen() == before


# -- misc ----------------------------------------------------------------------------------------------------------

def test_an_out_of_range_number_is_a_parse_error(valet: Valet, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "huge")
    headers = _session(valet, key)
    before = upstream.requests_seen()
    body = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"add","arguments":{"a":1e400,"b":1}}}'
    r = post(valet.base + "/notes", body, key, headers=headers)
    assert r.status_code == 400 and reason(r) == "parse_error", r.text
    assert upstream.requests_seen() == before


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-7", "application/json;charset=latin1"])
def test_a_charset_other_than_utf8_is_refused(valet: Valet, upstream: Upstream, content_type: str) -> None:
    key, _ = valet.new_key("alice", "charset")
    headers = _session(valet, key)
    before = upstream.requests_seen()
    r = call(valet, key, {**headers, "content-type": content_type}, {"name": "echo", "arguments": {}})
    assert r.status_code == 415 and reason(r) == "charset_not_utf8", r.text
    assert upstream.requests_seen() == before
    ok = call(valet, key, {**headers, "content-type": 'application/json; charset="UTF-8"'},
              {"name": "echo", "arguments": {"text": "x"}})
    assert ok.status_code == 200, ok.text


def test_an_absolute_form_target_is_refused_in_reverse_mode(valet: Valet, api: Upstream) -> None:
    key, _ = valet.new_key("alice", "absolute")
    before = api.requests_seen()
    request = (f"GET http://evil.example.com/api/items HTTP/1.1\r\nHost: 127.0.0.1:{valet.port}\r\n"
               f"Authorization: Bearer {key}\r\nConnection: close\r\n\r\n").encode()
    answer = raw(valet.port, request)
    assert answer.startswith(b"HTTP/1.1 400") and b"absolute_target" in answer, answer[:300]
    assert api.requests_seen() == before


def test_an_unknown_notification_name_is_not_housekeeping(valet: Valet, upstream: Upstream,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    strict = start_valet(tmp_path_factory.mktemp("reqfix-strict"), None,
                         config_text=f"servers:\n  notes:\n    url: {upstream.url}\n",
                         policy="servers:\n  notes: {default: deny}\n")
    try:
        key, _ = strict.new_key("alice", "notif")
        r = post(strict.base + "/notes", INIT_BODY, key)
        assert r.status_code == 200, r.text
        headers = {"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        ok = post(strict.base + "/notes", jsonrpc("notifications/initialized", rpc_id=None), key, headers=headers)
        assert ok.status_code == 202, ok.text
        before = upstream.requests_seen()
        r = post(strict.base + "/notes", jsonrpc("notifications/../tools/call", rpc_id=None), key, headers=headers)
        assert r.status_code == 403 and reason(r) == "denied", r.text
        assert upstream.requests_seen() == before
    finally:
        assert strict.stop() == 0


INIT_BODY = jsonrpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                   "clientInfo": {"name": "raw", "version": "0"}})


def test_batches_are_capped(valet: Valet, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "batch")
    headers = _session(valet, key)
    before = upstream.requests_seen()
    six = [{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(6)]
    r = post(valet.base + "/notes", six, key, headers=headers)
    assert r.status_code == 413 and reason(r) == "batch_too_large", r.text
    assert upstream.requests_seen() == before
