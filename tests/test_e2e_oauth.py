"""OAuth end to end: a real authorization server (the MCP SDK's handlers) issuing 3-second access tokens
and rotating refresh tokens, an MCP server that accepts only its tokens, and Valet in between."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.inbound import encode_header_value

from .support import (
    PYTHON, ROOT, VALET_CLI, Upstream, Valet, assert_clean_log, free_port, jsonrpc, post, start_valet, wait_for_port,
)

pytestmark = pytest.mark.e2e


class AuthServer(Upstream):
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.base}/_oauth/stats", timeout=5).json()

    def control(self, what: str, **params: Any) -> None:
        httpx.post(f"{self.base}/_oauth/{what}", params=params, timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/oauth_server.py"), "--port", str(port),
                                "--access-ttl", "3"], cwd=ROOT)
    wait_for_port(port)
    server = AuthServer(port, process)
    yield server
    server.stop()


def config(auth: AuthServer, storage: str = "memory://") -> str:
    return f"""
servers:
  cloud:
    url: {auth.base}/mcp
    auth: oauth
    oauth:
      scopes: [mcp]
rate_limits:
  storage: {storage}
"""


@pytest.fixture(scope="module")
def valet(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start_valet(tmp_path_factory.mktemp("oauth"), None, config_text=config(auth_server))
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def login(valet: Valet, auth: AuthServer, user: str) -> subprocess.CompletedProcess[str]:
    """`valet oauth login`, with the browser step driven by an HTTP client."""
    env = {**os.environ, "VALET_DATA_DIR": str(valet.data_dir)}
    process = subprocess.Popen([VALET_CLI, "oauth", "login", "cloud", "--user", user, "--config", str(valet.config),
                                "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith(f"{auth.base}/authorize?"), url
    assert "code_challenge_method=S256" in url and "state=" in url and "resource=" in url
    with httpx.Client(timeout=10) as browser:
        to_login = browser.get(url)
        assert to_login.status_code == 302
        to_callback = browser.get(to_login.headers["location"] + f"&user={user}")
        assert to_callback.status_code == 302
        callback = to_callback.headers["location"]
        assert callback.startswith("http://127.0.0.1:") and "/callback?" in callback
        assert browser.get(callback).status_code == 200
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    return subprocess.CompletedProcess(process.args, 0, url + "\n" + out, err)


def status(valet: Valet) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in valet.cli("oauth", "status", "--json").stdout.splitlines()]
    return {row["user"]: row for row in rows}


def call_me(valet: Valet, key: str, rpc_id: int = 1) -> httpx.Response:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    body = jsonrpc("tools/call", {"name": "me", "arguments": {}, "_meta": meta}, rpc_id)
    return post(valet.base + "/cloud", body, key, headers={
        "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": encode_header_value("me")})


async def call_me_async(http: httpx.AsyncClient, valet: Valet, key: str, rpc_id: int) -> httpx.Response:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    body = jsonrpc("tools/call", {"name": "me", "arguments": {}, "_meta": meta}, rpc_id)
    return await http.post(valet.base + "/cloud", json=body, headers={
        "authorization": f"Bearer {key}", "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "me"})


async def burst(pairs: list[tuple[Valet, str]]) -> list[httpx.Response]:
    """All at once: one connection each, no thread pool in the way."""
    limits = httpx.Limits(max_connections=len(pairs), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        return await asyncio.gather(*[call_me_async(http, v, k, i) for i, (v, k) in enumerate(pairs)])


def subject(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["result"]["content"][0]["text"]


def wait_until_expiring(valet: Valet, user: str) -> None:
    expires = datetime.fromisoformat(status(valet)[user]["expires"]).timestamp()
    time.sleep(max(0.0, expires - time.time() + 0.05))


def test_login_discovers_registers_and_stores_the_grant(valet: Valet, auth_server: AuthServer) -> None:
    before = auth_server.stats()
    done = login(valet, auth_server, "alice")
    assert "logged in: alice on cloud, scopes mcp" in done.stderr
    after = auth_server.stats()
    assert after["register"] == before["register"] + 1 and after["authorization_code"] == before["authorization_code"] + 1
    row = status(valet)["alice"]
    assert row["scopes"] == "mcp" and row["needs_login"] == "no" and row["expires"]
    assert "fake-at-" not in json.dumps(row) and "fake-rt-" not in done.stdout + done.stderr
    assert b"fake-at-" not in (valet.data_dir / "vault.db").read_bytes(), "grants are stored encrypted"
    login(valet, auth_server, "bob")  # a second user reuses the registration
    assert auth_server.stats()["register"] == after["register"]


def test_the_login_callback_ignores_answers_with_a_wrong_or_malformed_state(valet: Valet,
                                                                            auth_server: AuthServer) -> None:
    """A page on the same machine can hit the loopback callback first: it must neither end nor decide the login."""
    import socket
    from urllib.parse import parse_qs, urlsplit

    env = {**os.environ, "VALET_DATA_DIR": str(valet.data_dir)}
    process = subprocess.Popen([VALET_CLI, "oauth", "login", "cloud", "--user", "hank", "--config", str(valet.config),
                                "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    query = parse_qs(urlsplit(url).query)
    callback = query["redirect_uri"][0]
    port = urlsplit(callback).port
    assert port is not None
    for attack in ["?code=forged&state=wrong", "?code=forged", "?code=forged&state=%C3%A9%00",
                   f"?code=forged&state={query['state'][0]}&state=wrong", "?error=access_denied&state=wrong"]:
        assert httpx.get(callback + attack, timeout=10).status_code == 400, attack
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # non-ASCII bytes as they come
        raw.sendall(b"GET /callback?code=forged&state=\xc3\xa9\xff HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ")
    assert process.poll() is None, "still waiting for the real answer"
    with httpx.Client(timeout=10) as browser:  # the real login still completes
        to_login = browser.get(url)
        to_callback = browser.get(to_login.headers["location"] + "&user=hank")
        assert browser.get(to_callback.headers["location"]).status_code == 200
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "logged in: hank on cloud" in err


def test_calls_carry_the_users_own_token_across_expiries(valet: Valet, auth_server: AuthServer) -> None:
    alice, _ = valet.new_key("alice", "a")
    bob, _ = valet.new_key("bob", "b")
    refreshes = auth_server.stats()["refresh_token"]
    for _ in range(3):
        assert subject(call_me(valet, alice)) == "subject=alice"
        assert subject(call_me(valet, bob)) == "subject=bob"
        time.sleep(3.2)  # past every access token's lifetime
    assert subject(call_me(valet, alice)) == "subject=alice"
    assert auth_server.stats()["refresh_token"] >= refreshes + 4
    assert status(valet)["alice"]["last_refresh"]
    rows = valet.rows("rpc_method = 'oauth/refresh' AND decision = 'allow'", expect=4)
    assert {r["user"] for r in rows} >= {"alice", "bob"}


def test_fifty_concurrent_calls_at_expiry_cause_one_refresh(valet: Valet, auth_server: AuthServer) -> None:
    alice, _ = valet.new_key("alice", "burst")
    subject(call_me(valet, alice))
    wait_until_expiring(valet, "alice")
    before = auth_server.stats()["refresh_token"]

    responses = asyncio.run(burst([(valet, alice)] * 50))
    assert all(subject(r) == "subject=alice" for r in responses)
    assert auth_server.stats()["refresh_token"] == before + 1


def test_an_upstream_401_is_refreshed_and_replayed(valet: Valet, auth_server: AuthServer) -> None:
    alice, key_id = valet.new_key("alice", "replay")
    subject(call_me(valet, alice))
    before = auth_server.stats()["refresh_token"]
    auth_server.control("expire", user="alice")  # the server drops the token Valet believes valid
    assert subject(call_me(valet, alice)) == "subject=alice"
    assert auth_server.stats()["refresh_token"] == before + 1
    row = valet.rows("key_id = ? AND tool = 'me'", (key_id,), expect=2)[-1]
    assert row["decision"] == "allow" and row["http_status"] == 200


def test_an_authorization_server_down_for_a_while_is_survived(valet: Valet, auth_server: AuthServer) -> None:
    bob, _ = valet.new_key("bob", "outage")
    subject(call_me(valet, bob))
    wait_until_expiring(valet, "bob")
    time.sleep(0.6)  # expired, not just expiring: Valet must refresh before it can call
    auth_server.control("down", seconds=1.5)
    started = time.monotonic()
    assert subject(call_me(valet, bob)) == "subject=bob", "retried with backoff until the server came back"
    assert time.monotonic() - started >= 1.0
    assert status(valet)["bob"]["needs_login"] == "no", "a transient failure keeps the grant"


def test_a_revoked_grant_asks_for_a_new_login(valet: Valet, auth_server: AuthServer) -> None:
    login(valet, auth_server, "carol")
    carol, _ = valet.new_key("carol", "c")
    subject(call_me(valet, carol))
    auth_server.control("revoke", user="carol")
    auth_server.control("expire", user="carol")
    r = call_me(valet, carol)
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == -32040 and error["data"]["reason"] == "reauth_required"
    assert error["data"]["command"] == "valet oauth login cloud --user carol"
    assert "fake-" not in r.text
    assert status(valet)["carol"]["needs_login"] == "yes"
    assert valet.rows("user = 'carol' AND rpc_method = 'oauth/refresh' AND decision = 'error'")
    login(valet, auth_server, "carol")  # a new login repairs it
    assert subject(call_me(valet, carol)) == "subject=carol"


def test_logout_revokes_at_the_server(valet: Valet, auth_server: AuthServer) -> None:
    login(valet, auth_server, "dave")
    dave, _ = valet.new_key("dave", "d")
    subject(call_me(valet, dave))
    revoked = auth_server.stats()["revoke"]
    valet.cli("oauth", "logout", "cloud", "--user", "dave")
    assert auth_server.stats()["revoke"] >= revoked + 1
    assert "dave" not in status(valet)
    assert call_me(valet, dave).json()["error"]["data"]["reason"] == "reauth_required"


def test_import_a_token_response_from_another_front_end(valet: Valet, auth_server: AuthServer) -> None:
    """Another front end (here: the test) ran the login for Valet's registered client and hands over the tokens;
    Valet uses them and keeps them fresh."""
    from addon.oauth import client as protocol
    from addon.oauth.grants import read_registration
    from addon.secrets.vault import SecretCache

    cache = SecretCache(valet.data_dir)
    cache.reload()
    registration = read_registration(cache, "cloud")
    assert registration is not None and registration.client.redirect_uri
    client, endpoints, redirect = registration.client, registration.endpoints, registration.client.redirect_uri

    async def other_front_end() -> dict[str, Any]:
        import httpx2

        async with httpx2.AsyncClient(timeout=10) as http:
            verifier, challenge = protocol.pkce_pair()
            url = protocol.authorization_url(endpoints, client, redirect, "s", challenge, "mcp")
            to_login = await http.get(url)
            to_callback = await http.get(to_login.headers["location"] + "&user=gina")
            code = dict(p.split("=", 1) for p in to_callback.headers["location"].split("?", 1)[1].split("&"))["code"]
            response = await http.post(endpoints.token_endpoint, data={
                "grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                "code_verifier": verifier, "client_id": client.client_id, "client_secret": client.client_secret or "",
                "resource": endpoints.resource})
            return response.json()

    token_response = asyncio.run(other_front_end())
    imported = valet.cli("oauth", "import", "cloud", "--user", "gina", "--config", str(valet.config),
                         stdin=json.dumps(token_response))
    assert "fake-" not in imported.stdout + imported.stderr
    gina, _ = valet.new_key("gina", "g")
    assert subject(call_me(valet, gina)) == "subject=gina"
    time.sleep(3.2)  # past its lifetime: Valet refreshes the imported grant itself
    assert subject(call_me(valet, gina)) == "subject=gina"
    assert status(valet)["gina"]["scopes"] == "mcp" and status(valet)["gina"]["last_refresh"]


def test_two_valets_sharing_redis_refresh_once(auth_server: AuthServer, tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "one").mkdir()
    first = start_valet(tmp_path / "one", None, config_text=config(auth_server, redis_url))
    second_dir = tmp_path / "two"
    second_dir.mkdir()
    second = None
    try:
        login(first, auth_server, "erin")
        key, _ = first.new_key("erin", "e")
        # one data dir, two processes: the second Valet is started on the first one's data dir
        (second_dir / "policy.yaml").write_text((tmp_path / "one" / "policy.yaml").read_text())
        second_config = second_dir / "valet.yaml"
        second_config.write_text(first.config.read_text())
        port = free_port()
        log = second_dir / "valet.log"
        with log.open("wb") as out:
            process = subprocess.Popen([PYTHON, str(ROOT / "run_proxy.py"), "--config", str(second_config),
                                        "--data-dir", str(first.data_dir), "--listen", f"127.0.0.1:{port}"],
                                       cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(port)
        second = Valet(port, first.data_dir, second_config, "reverse", process, log)
        subject(call_me(first, key))
        wait_until_expiring(first, "erin")
        before = auth_server.stats()["refresh_token"]

        assert all(subject(r) == "subject=erin" for r in asyncio.run(burst([(first, key), (second, key)] * 20)))
        assert auth_server.stats()["refresh_token"] == before + 1
    finally:
        assert first.stop() == 0
        if second is not None:
            assert second.stop() == 0


def test_no_token_in_the_audit_log_or_the_proxy_log(valet: Valet) -> None:
    """Runs last: every token the test server issues starts with fake-at- or fake-rt-."""
    valet.rows("1=1")
    for path in [valet.data_dir / "audit.db", valet.data_dir / "audit.db-wal", valet.log]:
        if path.exists():
            data = path.read_bytes()
            assert b"fake-at-" not in data and b"fake-rt-" not in data, f"a token leaked into {path.name}"
