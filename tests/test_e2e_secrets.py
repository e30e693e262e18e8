"""Secrets end to end: stored encrypted, injected into what goes upstream, never seen by the agent.

The upstream here is the worst case: its tools echo their arguments and every
request header back, raw and encoded, streamed and in the result. Every value
below is an obviously fake credential. The last test searches everything Valet
wrote (audit log, its own log) and everything the agent received for any form
of any of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .forms import forms_of
from .support import assert_clean_log, PYTHON, ROOT, Upstream, Valet, jsonrpc, post, start_upstream, start_valet

pytestmark = pytest.mark.e2e

SECRETS = {
    ("notes", "alice", "API_TOKEN"): 'fake-alice-token"\\/+=&?0001',
    ("notes", "", "API_TOKEN"): "fake-shared-token-0002",
    ("notes", "", "TEAM_ID"): "fake-team-7788",
    ("notes", "", "QUERY_KEY"): "fake-query-key-3344",
    ("notes", "", "SIGNING_KEY"): "fake-signing-key-5566",
    ("jnotes", "", "API_TOKEN"): "fake-json-upstream-token-1122",
    ("raw", "", "API_TOKEN"): "fake-raw-stream-token-7777",
    ("basic", "", "BASIC_PW"): "fake-basic-password-9900",
}
SEEN_BY_AGENT: list[str] = []  # everything the agent received, searched by the last test


INIT = jsonrpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                              "clientInfo": {"name": "raw", "version": "0"}})


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def config(sse: Upstream, json_up: Upstream) -> str:
    injections = """
    headers:
      Authorization: "Bearer ${secret:API_TOKEN}"
      X-Team: "team-${secret:TEAM_ID}"
    query:
      api_key: "${secret:QUERY_KEY}"
    inject:
      - tools: ["whoami"]
        arguments: {token: "${secret:API_TOKEN}"}
      - tools: ["sign*"]
        arguments: {api_key: "${secret:SIGNING_KEY}"}
"""
    return f"""
servers:
  notes:
    url: {sse.url}{injections}
  jnotes:
    url: {json_up.url}
    headers:
      Authorization: "Bearer ${{secret:API_TOKEN}}"
    inject:
      - tools: ["whoami"]
        arguments: {{token: "${{secret:API_TOKEN}}"}}
  raw:
    url: {sse.url}/_raw_sse
    headers:
      Authorization: "Bearer ${{secret:API_TOKEN}}"
  basic:
    url: {sse.url}
    basic_auth: {{username: svc, password: "${{secret:BASIC_PW}}"}}
  needy:
    url: {sse.url}
    headers:
      X-Key: "${{secret:NOT_SET}}"
"""


@pytest.fixture(scope="module")
def json_upstream() -> Iterator[Upstream]:
    server = start_upstream(json_response=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def valet(upstream: Upstream, json_upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start_valet(tmp_path_factory.mktemp("secrets"), None, config_text=config(upstream, json_upstream))
    for (server, user, name), value in SECRETS.items():
        args = ["secret", "set", name, "--server", server] + (["--user", user] if user else [])
        out = proxy.cli(*args, stdin=value)
        assert value not in out.stdout + out.stderr
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def client(valet: Valet, key: str, mode: str, server: str = "notes") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return Client(streamable_http_client(f"{valet.base}/{server}", http_client=http), mode=mode)


async def call(valet: Valet, key: str, mode: str, tool: str, args: dict[str, Any], server: str = "notes",
               list_first: bool = False) -> tuple[dict[str, Any], list[str]]:
    progress: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with client(valet, key, mode, server) as c:
        if list_first:
            SEEN_BY_AGENT.append(json.dumps([t.model_dump(mode="json") for t in (await c.list_tools()).tools]))
        result = await c.call_tool(tool, args, progress_callback=on_progress)
    text = result.content[0].text
    SEEN_BY_AGENT.extend([text, *progress])
    assert not result.is_error, text
    return json.loads(text), progress


def assert_no_secret(text: str) -> None:
    for value in SECRETS.values():
        for form in forms_of(value):
            assert form not in text, f"a form of a secret reached the agent: {text[:200]}"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("server", ["notes", "jnotes"])
def test_tools_list_hides_injected_arguments(valet: Valet, mode: str, server: str) -> None:
    key, _ = valet.new_key("alice")

    async def tools() -> dict[str, Any]:
        async with client(valet, key, mode, server) as c:
            return {t.name: t.input_schema for t in (await c.list_tools()).tools}

    schemas = asyncio.run(tools())
    assert "token" not in schemas["whoami"]["properties"] and "text" in schemas["whoami"]["properties"]
    if server == "notes":
        assert "api_key" not in schemas["signed"]["properties"]
        assert "api_key" not in schemas["signed"].get("required", [])
    assert "a" in schemas["add"]["properties"], "tools without injection are untouched"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_call_is_injected_and_every_echo_is_scrubbed(valet: Valet, mode: str) -> None:
    key, key_id = valet.new_key("alice", f"echo-{mode}")
    seen, progress = asyncio.run(call(valet, key, mode, "whoami", {"text": "hello"}))
    alice = SECRETS[("notes", "alice", "API_TOKEN")]
    # the upstream received the real values (proved by digests), the agent sees only markers
    assert seen["digests"]["token"] == digest(alice)
    assert seen["digests"]["authorization"] == digest(f"Bearer {alice}")
    assert seen["digests"]["x-team"] == digest("team-" + SECRETS[("notes", "", "TEAM_ID")])
    assert seen["arguments"]["token"] == "[REDACTED:API_TOKEN]"
    assert seen["headers"]["authorization"] == "Bearer [REDACTED:API_TOKEN]"
    assert seen["headers"]["x-team"] == "team-[REDACTED:TEAM_ID]"
    assert "api_key=%5BREDACTED%3AQUERY_KEY%5D" in seen["query"] or "[REDACTED:QUERY_KEY]" in seen["query"]
    assert any("[REDACTED:API_TOKEN]" in p for p in progress)
    assert len(progress) >= 7, "every encoded form was streamed back, and each was scrubbed"
    for text in [json.dumps(seen), *progress]:
        assert_no_secret(text)
    row = valet.rows("key_id = ? AND tool = 'whoami'", (key_id,))[0]
    assert json.loads(row["arguments"]) == {"text": "hello", "token": "[REDACTED:API_TOKEN]"}
    assert set(json.loads(row["injected"])) == {"API_TOKEN", "TEAM_ID", "QUERY_KEY"}
    assert row["overridden"] is None


def test_json_responses_are_scrubbed_too(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "json")
    seen, _ = asyncio.run(call(valet, key, "legacy", "whoami", {"text": "x"}, server="jnotes"))
    assert seen["digests"]["token"] == digest(SECRETS[("jnotes", "", "API_TOKEN")])
    assert seen["arguments"]["token"] == "[REDACTED:API_TOKEN]"
    assert_no_secret(json.dumps(seen))


def test_users_get_their_own_secret_or_the_shared_one_at_once(valet: Valet) -> None:
    alice, _ = valet.new_key("alice", "a")
    bob, _ = valet.new_key("bob", "b")

    async def both() -> list[tuple[dict[str, Any], list[str]]]:
        return await asyncio.gather(*[
            call(valet, k, "auto", "whoami", {"text": str(i)}) for i in range(4) for k in (alice, bob)
        ])

    results = asyncio.run(both())
    digests = [seen["digests"]["token"] for seen, _ in results]
    assert digests == [digest(SECRETS[("notes", "alice", "API_TOKEN")]),
                       digest(SECRETS[("notes", "", "API_TOKEN")])] * 4


def test_an_agent_cannot_set_an_injected_argument(valet: Valet) -> None:
    key, key_id = valet.new_key("alice", "sneaky")
    seen, _ = asyncio.run(call(valet, key, "legacy", "whoami", {"text": "t", "token": "agent-chosen-value"}))
    assert seen["digests"]["token"] == digest(SECRETS[("notes", "alice", "API_TOKEN")])
    row = valet.rows("key_id = ? AND tool = 'whoami'", (key_id,))[0]
    assert json.loads(row["overridden"]) == ["token"]
    assert "agent-chosen-value" not in row["arguments"]


def test_a_missing_secret_refuses_the_request_by_name(valet: Valet, upstream: Upstream) -> None:
    key, key_id = valet.new_key("alice", "needy")
    before = upstream.requests_seen()
    r = post(valet.base + "/needy", jsonrpc("tools/list"), key)
    assert upstream.requests_seen() == before
    assert r.status_code == 424
    error = r.json()["error"]
    assert error["code"] == -32008 and "NOT_SET" in error["message"] and error["data"]["reason"] == "missing_secret"
    row = valet.rows("key_id = ? AND reason = 'missing_secret'", (key_id,))[0]
    assert row["decision"] == "deny" and row["server"] == "needy" and row["rpc_method"] == "tools/list"


def test_a_secret_split_across_network_chunks_is_still_caught(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "raw")
    call_body = jsonrpc("tools/call", {"name": "anything", "arguments": {}}, 9)
    with httpx.stream("POST", valet.base + "/raw", json=call_body, timeout=15,
                      headers={"authorization": f"Bearer {key}", "accept": "application/json, text/event-stream"}) as r:
        chunks = list(r.iter_raw())
        headers = dict(r.headers)
    body = b"".join(chunks).decode()
    SEEN_BY_AGENT.extend([body, json.dumps(headers)])
    assert r.status_code == 200 and headers["x-echo-auth"] == "Bearer [REDACTED:API_TOKEN]"
    assert body.startswith("event: message\r\ndata: ") and body.endswith("\r\n\r\n"), "SSE framing intact"
    message = json.loads(body.split("data: ", 1)[1])
    text = message["result"]["content"][0]["text"]
    assert message["id"] == 9 and text.count("[REDACTED:API_TOKEN]") >= 6
    assert_no_secret(body)


def test_mcp_param_headers_follow_injected_arguments(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "signer")
    # the agent lists tools first (as agents do): Valet learns which arguments are mirrored in headers
    seen, _ = asyncio.run(call(valet, key, "auto", "signed", {"text": "x"}, list_first=True))
    assert seen["digests"]["api_key"] == digest(SECRETS[("notes", "", "SIGNING_KEY")])
    assert seen["digests"]["mcp-param-api-key"] == digest(SECRETS[("notes", "", "SIGNING_KEY")])
    assert seen["headers"]["mcp-param-api-key"] == "[REDACTED:SIGNING_KEY]"


def test_basic_auth_injection(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "basic")
    seen, _ = asyncio.run(call(valet, key, "legacy", "whoami", {"text": "x"}, server="basic"))
    import base64

    expected = "Basic " + base64.b64encode(f"svc:{SECRETS[('basic', '', 'BASIC_PW')]}".encode()).decode()
    assert seen["digests"]["authorization"] == digest(expected)
    assert "[REDACTED:BASIC_PW]" in seen["headers"]["authorization"]
    assert_no_secret(json.dumps(seen))


def test_rotation_while_the_proxy_runs(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "rotation")
    out = valet.cli("vault", "rotate")
    assert "re-encrypted" in out.stdout
    seen, _ = asyncio.run(call(valet, key, "legacy", "whoami", {"text": "after rotation"}))
    assert seen["digests"]["token"] == digest(SECRETS[("notes", "alice", "API_TOKEN")])
    status = valet.cli("vault", "status").stdout
    assert "versions in use [2]" in status


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(valet: Valet) -> None:
    valet.cli("secret", "set", "API_TOKEN", "--server", "notes", "--user", "carol", stdin="fake-carol-token-4455")
    conn = sqlite3.connect(valet.data_dir / "vault.db")
    with conn:
        nonce, ct = conn.execute(
            "SELECT nonce, ciphertext FROM secrets WHERE server='notes' AND user='alice' AND name='API_TOKEN'"
        ).fetchone()
        conn.execute("UPDATE secrets SET nonce = ?, ciphertext = ? "
                     "WHERE server='notes' AND user='carol' AND name='API_TOKEN'", (nonce, ct))
    conn.close()
    key, key_id = valet.new_key("carol", "swapped")
    r = post(valet.base + "/notes", INIT, key)
    assert r.status_code == 500 and r.json()["error"]["data"]["reason"] == "vault_error"
    SEEN_BY_AGENT.append(r.text)
    assert valet.rows("key_id = ? AND reason = 'vault_error'", (key_id,))
    # alice is unaffected
    alice, _ = valet.new_key("alice", "after-swap")
    assert post(valet.base + "/notes", INIT, alice).status_code == 200
    valet.cli("secret", "delete", "API_TOKEN", "--server", "notes", "--user", "carol")


def test_secret_commands_never_print_values(valet: Valet) -> None:
    listing = valet.cli("secret", "list").stdout + valet.cli("secret", "list", "--json").stdout
    assert "API_TOKEN" in listing and "shared" in listing
    assert_no_secret(listing)
    commands = valet.cli("secret", "--help").stdout
    assert "get" not in commands.split("Commands:")[1] and "show" not in commands.split("Commands:")[1]


def test_vault_start_errors_are_clear(tmp_path: Path, upstream: Upstream) -> None:
    proxy = start_valet(tmp_path, {"notes": upstream.url})
    proxy.cli("secret", "set", "X", "--server", "notes", stdin="fake-value-12345678")
    assert proxy.stop() == 0
    run = [PYTHON, str(ROOT / "run_proxy.py"), "--config", str(proxy.config), "--data-dir", str(proxy.data_dir),
           "--listen", "127.0.0.1:9"]
    wrong = subprocess.run(run, capture_output=True, text=True, timeout=60,
                           env={"VALET_MASTER_KEY": "1:" + "A" * 43 + "=", "PATH": "/usr/bin:/bin"})
    assert wrong.returncode == 2 and "wrong key" in wrong.stderr
    assert "A" * 43 not in wrong.stderr
    (proxy.data_dir / "master.key").chmod(0o644)
    exposed = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert exposed.returncode == 2 and "chmod 600" in exposed.stderr


def test_no_secret_in_the_audit_log_the_proxy_log_or_anything_the_agent_saw(valet: Valet) -> None:
    """Runs last in this module: every exchange above has been written by now."""
    valet.rows("1=1", expect=1)
    audit = (valet.data_dir / "audit.db").read_bytes()
    for suffix in ("-wal",):
        wal = valet.data_dir / f"audit.db{suffix}"
        if wal.exists():
            audit += wal.read_bytes()
    log = valet.log.read_bytes()
    keys_db = (valet.data_dir / "keys.db").read_bytes()
    vault_db = (valet.data_dir / "vault.db").read_bytes()
    for value in [*SECRETS.values(), "fake-carol-token-4455"]:
        for form in forms_of(value):
            encoded = form.encode()
            assert encoded not in audit, "a secret form is in the audit log"
            assert encoded not in log, "a secret form is in the proxy's log"
            assert encoded not in keys_db and encoded not in vault_db, "a secret is stored in clear"
    assert SEEN_BY_AGENT
    for text in SEEN_BY_AGENT:
        assert_no_secret(text)


def test_a_reload_that_injects_another_secret_still_scrubs_it(tmp_path: Path) -> None:
    from .support import start_http_api

    api = start_http_api()
    config = (f"servers:\n  api:\n    url: http://127.0.0.1:{api.port}/v1\n    kind: http\n"
              "    headers:\n      X-Api-Key: \"${secret:KEY_A}\"\n")
    proxy = start_valet(tmp_path, None, config_text=config)
    try:
        proxy.cli("secret", "set", "KEY_A", "--server", "api", stdin="fake-key-a-0000000001")
        proxy.cli("secret", "set", "KEY_B", "--server", "api", stdin="fake-key-b-0000000002")
        key, _ = proxy.new_key()
        first = httpx.get(proxy.base + "/api/x", headers={"authorization": f"Bearer {key}"}, timeout=10)
        assert first.json()["headers"]["x-api-key"] == "[REDACTED:KEY_A]"
        proxy.config.write_text(proxy.config.read_text().replace("KEY_A", "KEY_B"))
        second = httpx.get(proxy.base + "/api/x", headers={"authorization": f"Bearer {key}"}, timeout=10)
        assert second.json()["headers"]["x-api-key"] == "[REDACTED:KEY_B]"
        assert "fake-key-b" not in second.text
    finally:
        proxy.stop()
        api.stop()
