"""Policies end to end: real MCP and plain-HTTP upstreams, a real Valet, policy files edited live."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from addon.snapshot import SETTLE_SECONDS

from .support import Upstream, Valet, assert_clean_log, jsonrpc, post, start_http_api, start_valet

pytestmark = pytest.mark.e2e

POLICY = """
servers:
  notes: {default: deny}
rules:
  - id: notes-basics
    effect: allow
    servers: [notes]
    tools: [add, echo, progress]
  - id: notes-files
    effect: allow
    servers: [notes]
    tools: [read_file]
    arguments:
      path: {under: /srv/data}
  - id: notes-no-secrets
    effect: deny
    tools: ["*"]
    arguments:
      path: {under: /srv/data/private}
  - id: echo-short
    effect: deny
    tools: [echo]
    arguments:
      text: {regex: ".*(?i:drop table).*"}
  - id: api-read
    effect: allow
    servers: [api]
    http: {methods: [GET], paths: ["/v1/customers/*"]}
  - id: api-no-charges
    effect: deny
    servers: [api]
    http: {paths: ["/v1/charges", "/v1/charges/**"]}
  - id: add-rate
    servers: [notes]
    tools: [add]
    rate: 5/minute
    per: [user]
"""


@pytest.fixture(scope="module")
def api() -> Iterator[Upstream]:
    server = start_http_api()
    yield server
    server.stop()


def config_for(upstream: Upstream, api: Upstream, storage: str = "memory://") -> str:
    return f"""
servers:
  notes:
    url: {upstream.url}
  api:
    url: http://127.0.0.1:{api.port}/v1
    kind: http
    headers:
      X-Api-Version: "2026-01"
      X-Api-Key: "${{secret:API_KEY}}"
policy_files: ["rules/*.yaml"]
rate_limits:
  storage: {storage}
"""


def start(tmp: Path, upstream: Upstream, api: Upstream, storage: str = "memory://",
          policy: str = POLICY) -> Valet:
    (tmp / "rules").mkdir(parents=True, exist_ok=True)
    (tmp / "rules" / "10-main.yaml").write_text(policy)
    return start_valet(tmp, None, config_text=config_for(upstream, api, storage), policy=None)


@pytest.fixture(scope="module")
def valet(upstream: Upstream, api: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start(tmp_path_factory.mktemp("policy"), upstream, api)
    proxy.cli("secret", "set", "API_KEY", "--server", "api", stdin="fake-api-key-policy-0001")
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def sdk(valet: Valet, key: str, mode: str = "auto") -> Client:
    http_client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return Client(streamable_http_client(f"{valet.base}/notes", http_client=http_client), mode=mode)


def call_tool(valet: Valet, key: str, tool: str, args: dict[str, Any], mode: str = "auto") -> Any:
    async def run() -> Any:
        async with sdk(valet, key, mode) as c:
            return await c.call_tool(tool, args)

    return asyncio.run(run())


def raw_call(valet: Valet, key: str, tool: str, args: dict[str, Any], rpc_id: int = 1) -> httpx.Response:
    """A stateless (2026-07-28) tools/call, with the headers the SDK would send."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    body = jsonrpc("tools/call", {"name": tool, "arguments": args, "_meta": meta}, rpc_id)
    from mcp.shared.inbound import encode_header_value

    headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": encode_header_value(tool)}
    return post(valet.base + "/notes", body, key, headers=headers)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_tools_list_shows_only_what_the_caller_may_call(valet: Valet, mode: str) -> None:
    key, _ = valet.new_key("alice", f"lister-{mode}")

    async def names() -> set[str]:
        async with sdk(valet, key, mode) as c:
            return {t.name for t in (await c.list_tools()).tools}

    assert asyncio.run(names()) == {"add", "echo", "progress", "read_file"}


def test_allowed_and_denied_tools(valet: Valet, upstream: Upstream) -> None:
    key, key_id = valet.new_key("alice", "caller")
    assert call_tool(valet, key, "add", {"a": 1, "b": 2}).content[0].text == "3"
    before = upstream.requests_seen()
    r = raw_call(valet, key, "whoami", {"text": "x"})
    assert upstream.requests_seen() == before
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == -32030 and error["data"] == {"reason": "denied", "rule": "default:notes"}
    row = valet.rows("key_id = ? AND tool = 'whoami'", (key_id,))[0]
    assert (row["decision"], row["rule"], row["reason"]) == ("deny", "default:notes", "denied")
    allowed = valet.rows("key_id = ? AND tool = 'add'", (key_id,))[0]
    assert allowed["rule"] == "notes-basics"


@pytest.mark.parametrize(
    ("path", "status", "rule", "forwarded"),
    [
        ("/srv/data/report.txt", 200, "notes-files", "/srv/data/report.txt"),
        ("/srv/data/x/../y//z", 200, "notes-files", "/srv/data/y/z"),
        ("/srv/data/../etc/passwd", 403, "default:notes", None),
        ("/srv/data/%2e%2e/etc", 403, "notes-no-secrets", None),
        ("/srv/data/private/key", 403, "notes-no-secrets", None),
        ("/srv/data/x/../private/key", 403, "notes-no-secrets", None),
        ("/srv/data／private", 403, "notes-no-secrets", None),
        ("/SRV/DATA/a", 403, "default:notes", None),
        ("srv/data/a", 403, "notes-no-secrets", None),
    ],
)
def test_path_arguments(valet: Valet, path: str, status: int, rule: str, forwarded: str | None) -> None:
    key, key_id = valet.new_key("alice", "files")
    r = raw_call(valet, key, "read_file", {"path": path})
    assert r.status_code == status, r.text
    if status == 200:
        text = r.json()["result"]["content"][0]["text"]
        assert json.loads(text) == {"path": forwarded}, "the upstream reads the normalized path the policy judged"
        row = valet.rows("key_id = ? AND tool = 'read_file'", (key_id,))[0]
        assert json.loads(row["arguments"]) == {"path": forwarded}, "and so does the audit row"
    else:
        assert r.json()["error"]["data"]["rule"] == rule


@pytest.mark.parametrize("tool", ["Read_File", "READ_FILE"])
def test_case_variants_are_not_allowed(valet: Valet, tool: str) -> None:
    key, _ = valet.new_key("alice", "case")
    r = raw_call(valet, key, tool, {"path": "/srv/data/a"})
    assert r.status_code == 403


@pytest.mark.parametrize("tool", ["reаd_file", "read_file\u200b", "read file", "read_file\n", "", "a" * 129])
def test_look_alike_and_invisible_tool_names_are_refused(valet: Valet, upstream: Upstream, tool: str) -> None:
    key, _ = valet.new_key("alice", "lookalike")
    before = upstream.requests_seen()
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    r = post(valet.base + "/notes", jsonrpc("tools/call", {"name": tool, "arguments": {}, "_meta": meta}), key,
             headers={"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                      "mcp-name": __import__("mcp.shared.inbound", fromlist=["x"]).encode_header_value(tool)})
    assert upstream.requests_seen() == before
    assert r.status_code == 400 and r.json()["error"]["data"]["reason"] == "invalid_tool_name"


def test_argument_patterns_deny(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "patterns")
    assert raw_call(valet, key, "echo", {"text": "hello"}).status_code == 200
    r = raw_call(valet, key, "echo", {"text": "please Drop Table users"})
    assert r.status_code == 403 and r.json()["error"]["data"]["rule"] == "echo-short"


def test_a_batch_with_one_denied_call_is_refused_whole(valet: Valet, upstream: Upstream) -> None:
    key, key_id = valet.new_key("alice", "batcher")
    batch = [jsonrpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}}, 1),
             jsonrpc("tools/call", {"name": "whoami", "arguments": {}}, 2)]
    before = upstream.requests_seen()
    r = post(valet.base + "/notes", batch, key)
    assert upstream.requests_seen() == before
    assert r.status_code == 403
    assert r.json()["error"]["data"] == {"reason": "denied", "rule": "default:notes", "id": 2}
    row = valet.rows("key_id = ? AND rpc_method = 'batch'", (key_id,))[0]
    assert row["decision"] == "deny" and row["rule"] == "default:notes"


def test_headers_cannot_name_an_allowed_tool_for_a_denied_body(valet: Valet, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "liar")
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = jsonrpc("tools/call", {"name": "whoami", "arguments": {}, "_meta": meta})
    before = upstream.requests_seen()
    r = post(valet.base + "/notes", body, key,
             headers={"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "add"})
    assert upstream.requests_seen() == before
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020


def test_rate_limits_per_user_with_two_users_at_once(valet: Valet) -> None:
    alice, _ = valet.new_key("rate-alice", "a")
    bob, bob_id = valet.new_key("rate-bob", "b")

    def burst(key: str) -> list[httpx.Response]:
        return [raw_call(valet, key, "add", {"a": i, "b": 0}, i) for i in range(6)]

    async def both() -> list[list[httpx.Response]]:
        return await asyncio.gather(asyncio.to_thread(burst, alice), asyncio.to_thread(burst, bob))

    for responses in asyncio.run(both()):
        assert [r.status_code for r in responses] == [200] * 5 + [429]
        limited = responses[-1]
        assert 1 <= int(limited.headers["retry-after"]) <= 61
        error = limited.json()["error"]
        assert error["code"] == -32029 and error["data"]["rule"] == "add-rate"
        assert error["data"]["retry_after"] == int(limited.headers["retry-after"])
    row = valet.rows("key_id = ? AND reason = 'rate_limited'", (bob_id,))[0]
    assert row["http_status"] == 429 and row["rule"] == "add-rate"


def test_plain_http_api_paths_and_methods(valet: Valet, api: Upstream) -> None:
    key, key_id = valet.new_key("alice", "rest")
    auth = {"authorization": f"Bearer {key}"}
    r = httpx.get(valet.base + "/api/customers/42?expand=1", headers=auth, timeout=10)
    assert r.status_code == 200
    seen = r.json()
    assert seen["raw_path"] == "/v1/customers/42" and seen["query"] == "expand=1"
    assert seen["headers"]["x-api-version"] == "2026-01" and "authorization" not in seen["headers"]
    assert valet.rows("key_id = ? AND server = 'api'", (key_id,))[0]["rule"] == "api-read"

    def send(method: str, path: str) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", valet.port, timeout=10)
        conn.request(method, path, headers=auth)
        response = conn.getresponse()
        result = response.status, json.loads(response.read() or b"{}")
        conn.close()
        return result

    before = api.requests_seen()
    for method, path, status, reason in [
        ("POST", "/api/customers/42", 403, "denied"),
        ("GET", "/api/charges", 403, "denied"),
        ("GET", "/api/%63harges/ch_1", 403, "denied"),
        ("GET", "/api/CHARGES", 403, "denied"),
        ("GET", "/api/customers/../charges", 400, "bad_path"),
        ("GET", "/api/customers/%2e%2e/charges", 400, "bad_path"),
        ("GET", "/api/customers/42/invoices", 403, "denied"),
    ]:
        status_got, body = send(method, path)
        assert (status_got, body["error"]["data"]["reason"]) == (status, reason), (method, path, body)
    assert api.requests_seen() == before


def test_policy_reload_valid_then_broken_then_fixed_while_calls_are_in_flight(
    upstream: Upstream, api: Upstream, tmp_path: Path
) -> None:
    proxy = start(tmp_path, upstream, api)
    try:
        key, _ = proxy.new_key("alice", "reloader")
        policy_file = tmp_path / "rules" / "10-main.yaml"

        async def long_call() -> str:
            async with sdk(proxy, key) as c:
                return (await c.call_tool("progress", {"steps": 40, "interval": 0.2})).content[0].text

        async def settled(path: Path, text: str | None) -> None:
            """A change as ops make it (atomic rename, or a delete), and the settle time for it to apply."""
            if text is None:
                path.unlink()
            else:
                temporary = path.with_name(f".{path.name}.tmp")
                temporary.write_text(text)
                temporary.replace(path)
            await asyncio.sleep(SETTLE_SECONDS + 0.5)

        async def scenario() -> None:
            in_flight = asyncio.create_task(long_call())
            await asyncio.sleep(0.3)
            # 1. a valid edit: whoami becomes allowed, on the first request after the file settled
            assert (await asyncio.to_thread(raw_call, proxy, key, "whoami", {"text": "x"})).status_code == 403
            await settled(policy_file,
                          POLICY.replace("tools: [add, echo, progress]", "tools: [add, echo, progress, whoami]"))
            assert (await asyncio.to_thread(raw_call, proxy, key, "whoami", {"text": "x"})).status_code == 200
            # 2. a broken edit is rejected: the last good policy stays in force (whoami still allowed, add too)
            await settled(policy_file, "rules:\n  - id: oops\n    effect: alow\n")
            assert (await asyncio.to_thread(raw_call, proxy, key, "whoami", {"text": "y"})).status_code == 200
            assert (await asyncio.to_thread(raw_call, proxy, key, "add", {"a": 1, "b": 1})).status_code == 200
            # reloads (valid or broken) never drop a call in flight; a kill switch does end one (issue 9 item 3)
            assert await in_flight == "done", "a reload never drops a call in flight"
            # 3. a new file with a kill switch takes effect once settled, and removing it restores service
            (tmp_path / "rules" / "00-kill.yaml").write_text("servers:\n  notes: {enabled: false}\n")
            await settled(policy_file, POLICY)
            r = await asyncio.to_thread(raw_call, proxy, key, "add", {"a": 1, "b": 1})
            assert r.status_code == 403 and r.json()["error"]["data"] == {
                "reason": "disabled", "rule": "servers.notes.enabled"}
            await settled(tmp_path / "rules" / "00-kill.yaml", None)
            assert (await asyncio.to_thread(raw_call, proxy, key, "add", {"a": 1, "b": 1})).status_code == 200
            assert (await asyncio.to_thread(raw_call, proxy, key, "whoami", {"text": "x"})).status_code == 403

        asyncio.run(scenario())
        log = proxy.log.read_text()
        assert "configuration change rejected" in log
        assert f"{policy_file}:3: rules.0.effect" in log
    finally:
        assert proxy.stop() == 0


def test_kill_switches_for_users_and_keys(upstream: Upstream, api: Upstream, tmp_path: Path) -> None:
    proxy = start(tmp_path, upstream, api)
    try:
        alice, alice_id = proxy.new_key("alice", "a1")
        other, _ = proxy.new_key("alice", "a2")
        bob, _ = proxy.new_key("bob", "b")
        kill = tmp_path / "rules" / "00-kill.yaml"
        kill.write_text(f"users:\n  bob: {{enabled: false}}\nkeys:\n  '{alice_id}': {{enabled: false}}\n")
        time.sleep(SETTLE_SECONDS + 0.5)  # a policy file applies once it has settled
        refused = raw_call(proxy, bob, "add", {"a": 1, "b": 1})
        assert refused.json().get("error", {}).get("data", {}).get("rule") == "users.bob.enabled", refused.text
        assert raw_call(proxy, alice, "add", {"a": 1, "b": 1}).json()["error"]["data"]["rule"] == \
            f"keys.{alice_id}.enabled"
        assert raw_call(proxy, other, "add", {"a": 1, "b": 1}).status_code == 200
    finally:
        assert proxy.stop() == 0


@pytest.mark.parametrize("storage", ["redis", "memory"])
def test_two_valets_share_limits_through_redis_only(upstream: Upstream, api: Upstream, tmp_path: Path,
                                                    redis_url: str, storage: str) -> None:
    url = redis_url if storage == "redis" else "memory://"
    first = start(tmp_path / "one", upstream, api, url)
    # the second Valet shares the first one's data dir (keys) but not its process
    second_dir = tmp_path / "two"
    (second_dir / "rules").mkdir(parents=True)
    (second_dir / "rules" / "10-main.yaml").write_text(POLICY)
    (second_dir / "valet.yaml").write_text(config_for(upstream, api, url))
    shutil.copytree(first.data_dir, second_dir / "data", dirs_exist_ok=True)
    second = start_valet(second_dir, None, config_text=config_for(upstream, api, url), policy=None)
    try:
        key, _ = first.new_key(f"shared-{storage}", "k")
        # keys are read from each data dir: copy the new key across
        shutil.copy(first.data_dir / "keys.db", second.data_dir / "keys.db")
        codes = [raw_call(proxy, key, "add", {"a": i, "b": 0}, i).status_code
                 for i, proxy in enumerate([first, second] * 4)]
        if storage == "redis":
            assert codes == [200] * 5 + [429] * 3, "five calls a minute in all, wherever they land"
        else:
            assert codes == [200] * 8, "each process counts alone with memory storage"
    finally:
        assert first.stop() == 0 and second.stop() == 0


def test_policy_cli(valet: Valet, tmp_path: Path) -> None:
    ok = valet.cli("policy", "check", "--config", str(valet.config))
    assert "ok: 2 servers, 7 rules from 1 policy files" in ok.stdout
    bad = tmp_path / "new.yaml"
    bad.write_text("rules:\n  - id: n\n    effect: allow\n    tools: [x]\n    arguments: {p: {under: rel}}\n")
    failed = valet.cli("policy", "check", "--config", str(valet.config), str(bad), check=False)
    assert failed.returncode != 0 and f"{bad}:5: rules.0.arguments.p.under" in failed.stderr
    explain = valet.cli("policy", "explain", "--config", str(valet.config), "--user", "alice", "--server", "notes",
                        "--tool", "read_file", "--args", '{"path": "/srv/data/a/../b"}')
    assert explain.stdout.splitlines()[0] == "allow (allowed) by notes-files"
    assert "forwards path as '/srv/data/b'" in explain.stdout
    denied = valet.cli("policy", "explain", "--config", str(valet.config), "--user", "alice", "--server", "api",
                       "--http-method", "GET", "--path", "/charges", check=False)
    assert denied.returncode == 1 and denied.stdout.strip() == "deny (denied) by api-no-charges"
    limited = valet.cli("policy", "explain", "--config", str(valet.config), "--user", "alice", "--server", "notes",
                        "--tool", "add")
    assert "counted by rate rule add-rate: 5 per 1 minute, per user=alice" in limited.stdout


def test_mcp_servers_take_no_other_http_requests_than_the_session_ones(valet: Valet, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "sidedoor")
    auth = {"authorization": f"Bearer {key}"}
    before = upstream.requests_seen()
    for method, path in [("DELETE", "/notes/admin/users/42?force=1"), ("PUT", "/notes"), ("PATCH", "/notes"),
                         ("OPTIONS", "/notes"), ("GET", "/notes/_echo_headers")]:
        r = httpx.request(method, valet.base + path, headers=auth, timeout=10)
        assert r.status_code == 403 and r.json()["error"]["data"]["reason"] == "denied", (method, path, r.text)
    # a JSON-RPC body does not make a sub-path the MCP endpoint
    r = post(valet.base + "/notes/admin", jsonrpc("ping"), key)
    assert r.status_code == 403 and r.json()["error"]["data"]["rule"] == "default:notes"
    assert upstream.requests_seen() == before


def test_plain_http_path_parameters_and_method_overrides(valet: Valet, api: Upstream) -> None:
    key, _ = valet.new_key("alice", "java")
    auth = {"authorization": f"Bearer {key}"}
    before = api.requests_seen()
    for path in ["/api/charges;jsessionid=1", "/api/charges%3Bx", "/api/charges/", "/api/customers/42;x/../../charges"]:
        r = httpx.get(valet.base + path, headers=auth, timeout=10)
        assert r.status_code in (400, 403), (path, r.text)
    r = httpx.get(valet.base + "/api/customers/42", headers={**auth, "x-http-method-override": "DELETE"}, timeout=10)
    assert r.status_code == 400
    assert api.requests_seen() == before


def test_an_upstream_encoding_valet_cannot_read_is_refused(valet: Valet, api: Upstream) -> None:
    key, _ = valet.new_key("alice", "gz")
    auth = {"authorization": f"Bearer {key}"}
    ok = httpx.get(valet.base + "/api/customers/1?encoding=gzip", headers=auth, timeout=10)
    assert ok.status_code == 200 and ok.json()["headers"]["x-api-key"] == "[REDACTED:API_KEY]"
    r = httpx.get(valet.base + "/api/customers/1?encoding=compress", headers=auth, timeout=10)
    assert r.status_code == 502 and r.json()["error"]["data"]["reason"] == "upstream_error"
