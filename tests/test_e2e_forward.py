"""Forward mode: agents set HTTPS_PROXY to Valet; HTTPS is intercepted with Valet's own CA."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .support import assert_clean_log, Upstream, Valet, start_upstream, start_valet
from .tls import self_signed_localhost

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Path]]:
    certfile, keyfile = self_signed_localhost(tmp_path_factory.mktemp("tls"))
    server = start_upstream(certfile, keyfile)
    yield server, certfile
    server.stop()


@pytest.fixture(scope="module")
def forward(tls_upstream, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    secure, certfile = tls_upstream
    proxy = start_valet(
        tmp_path_factory.mktemp("fwd"),
        {"secure": secure.url, "plain": upstream.url},
        mode="forward",
        extra=f"upstream_ca_file: {certfile}\n",
    )
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def valet_ca(proxy: Valet) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=proxy.cli("ca").stdout.strip())


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_sdk_client_over_https_through_the_forward_proxy(forward: Valet, tls_upstream, mode: str) -> None:
    secure, _ = tls_upstream
    key, key_id = forward.new_key("carol", f"fwd-{mode}")

    async def scenario() -> str:
        http = httpx2.AsyncClient(proxy=f"http://agent:{key}@127.0.0.1:{forward.port}",
                                  verify=valet_ca(forward), timeout=30)
        async with Client(streamable_http_client(secure.url, http_client=http), mode=mode) as c:
            assert "add" in [t.name for t in (await c.list_tools()).tools]
            return (await c.call_tool("add", {"a": 2, "b": 3})).content[0].text

    assert asyncio.run(scenario()) == "5"
    row = forward.rows("key_id = ? AND tool = 'add'", (key_id,))[0]
    assert row["mode"] == "forward" and row["server"] == "secure" and row["user"] == "carol"
    assert row["decision"] == "allow" and row["http_status"] == 200


def test_plain_http_forward_strips_proxy_credentials(forward: Valet, upstream: Upstream) -> None:
    key, key_id = forward.new_key("carol", "plain")
    with httpx.Client(proxy=f"http://agent:{key}@127.0.0.1:{forward.port}", timeout=10) as http:
        r = http.get(f"{upstream.url}/_echo_headers")
    assert r.status_code == 200
    names = {k.lower() for k, _ in r.json()["headers"]}
    assert "proxy-authorization" not in names and key not in r.text
    assert forward.rows("key_id = ? AND server = 'plain'", (key_id,))


def test_destinations_outside_the_config_are_refused(forward: Valet) -> None:
    key, key_id = forward.new_key("carol", "wanderer")
    with httpx.Client(proxy=f"http://agent:{key}@127.0.0.1:{forward.port}", verify=valet_ca(forward),
                      timeout=10) as http:
        with pytest.raises(httpx.ProxyError, match="403"):
            http.get("https://127.0.0.2:9/anything")
        r = http.get("http://127.0.0.3:9/anything")
        assert r.status_code == 403 and r.json()["error"]["data"]["reason"] == "destination_not_allowed"
    rows = forward.rows("key_id = ? AND reason = 'destination_not_allowed'", (key_id,), expect=2)
    assert {r["http_method"] for r in rows} == {"CONNECT", "GET"}


def test_forward_proxy_requires_a_key(forward: Valet, tls_upstream) -> None:
    secure, _ = tls_upstream
    with httpx.Client(proxy=f"http://127.0.0.1:{forward.port}", verify=valet_ca(forward), timeout=10) as http:
        with pytest.raises(httpx.ProxyError, match="407"):
            http.get(f"{secure.url}/_echo_headers")
    with httpx.Client(proxy=f"http://agent:vk_bogus@127.0.0.1:{forward.port}", timeout=10) as http:
        r = http.get("http://127.0.0.1:1/x")
        assert r.status_code == 407 and r.headers["proxy-authenticate"].startswith("Basic")
    assert forward.rows("reason = 'proxy_auth_required' AND http_method = 'CONNECT'")


def test_revocation_cuts_a_live_tunnel(forward: Valet, tls_upstream) -> None:
    secure, _ = tls_upstream
    key, key_id = forward.new_key("dave", "tunnel")
    with httpx.Client(proxy=f"http://agent:{key}@127.0.0.1:{forward.port}", verify=valet_ca(forward),
                      timeout=10) as http:
        assert http.get(f"{secure.url}/_echo_headers").status_code == 200
        forward.cli("key", "revoke", key_id)
        r = http.get(f"{secure.url}/_echo_headers")  # same keep-alive tunnel
        assert r.status_code == 401 and r.json()["error"]["data"]["reason"] == "revoked_key"


def test_a_tunnel_serves_only_its_connect_target(forward: Valet, tls_upstream) -> None:
    secure, _ = tls_upstream
    key, key_id = forward.new_key("erin", "fronting")
    with httpx.Client(proxy=f"http://agent:{key}@127.0.0.1:{forward.port}", verify=valet_ca(forward),
                      timeout=10) as http:
        r = http.get(f"{secure.url}/_echo_headers", headers={"host": "evil.example.com"})
    assert r.status_code == 403 and r.json()["error"]["data"]["reason"] == "destination_not_allowed"
    assert forward.rows("key_id = ? AND reason = 'destination_not_allowed'", (key_id,))


def test_undecodable_proxy_credentials_are_refused(forward: Valet) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", forward.port), timeout=10) as sock:
        sock.sendall(b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\nProxy-Authorization: Basic \xe9\xff\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 407")
