"""Client setups from README "Client setup" and docs/clients.md, each run as shown against a real Valet.

Also what an OAuth-minded client meets: a 401 whose WWW-Authenticate points nowhere,
and 404s with a JSON explanation on every discovery URL the MCP SDK's own OAuth
client builds, so that client stops at once instead of registering or hanging.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
)
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from .support import MCP_HEADERS, ROOT, Upstream, Valet, jsonrpc, start_valet
from .tls import self_signed_localhost

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------- OAuth-minded clients

def test_401_names_the_valet_key_and_no_resource_metadata(valet: Valet) -> None:
    r = httpx.post(f"{valet.base}/notes", json=jsonrpc("tools/list"), headers=MCP_HEADERS, timeout=15)
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="valet"') and 'error="invalid_token"' in challenge
    assert "Authorization: Bearer vk_" in challenge and "resource_metadata" not in challenge


def test_every_discovery_url_the_sdk_builds_gets_a_fast_json_404(valet: Valet) -> None:
    server_url = f"{valet.base}/notes"
    urls = build_protected_resource_metadata_discovery_urls(None, server_url)
    urls += build_oauth_authorization_server_metadata_discovery_urls(None, server_url)
    urls += build_oauth_authorization_server_metadata_discovery_urls(valet.base, server_url)
    urls += [f"{valet.base}/register", f"{valet.base}/authorize?client_id=x", f"{valet.base}/token"]
    assert len(urls) >= 6
    for url in urls:
        method = "POST" if url.endswith(("/register", "/token")) else "GET"
        r = httpx.request(method, url, timeout=15)
        assert r.status_code == 404, url
        body = r.json()
        assert body["error"]["data"]["reason"] == "oauth_not_supported", url
        assert "Authorization: Bearer vk_" in body["error"]["message"]
    assert valet.rows("reason = 'oauth_not_supported'", expect=len(urls))


def test_the_sdk_oauth_client_stops_quickly_and_never_opens_a_browser(valet: Valet) -> None:
    opened: list[str] = []

    class Memory:
        async def get_tokens(self):  # type: ignore[no-untyped-def]
            return None

        async def set_tokens(self, tokens) -> None:  # type: ignore[no-untyped-def]
            raise AssertionError("no token can come from Valet")

        async def get_client_info(self):  # type: ignore[no-untyped-def]
            return None

        async def set_client_info(self, info) -> None:  # type: ignore[no-untyped-def]
            raise AssertionError("Valet must not register clients")

    async def redirect(url: str) -> None:
        opened.append(url)

    async def callback():  # type: ignore[no-untyped-def]
        raise AssertionError("no authorization to wait for")

    auth = OAuthClientProvider(
        f"{valet.base}/notes",
        OAuthClientMetadata(redirect_uris=["http://127.0.0.1:1/callback"], client_name="probe"),
        Memory(), redirect, callback,
    )

    async def scenario() -> None:
        http = httpx2.AsyncClient(auth=auth, timeout=15)
        async with Client(streamable_http_client(f"{valet.base}/notes", http_client=http)) as c:
            await c.list_tools()

    started = time.monotonic()
    with pytest.raises(BaseException) as raised:  # an ExceptionGroup from the SDK's task groups
        asyncio.run(asyncio.wait_for(scenario(), 60))
    assert not isinstance(raised.value, (TimeoutError, asyncio.TimeoutError)), "the client hung"
    assert time.monotonic() - started < 60 and opened == []


def test_a_key_without_bearer_is_told_how_to_send_it(valet: Valet, key: tuple[str, str]) -> None:
    r = httpx.post(f"{valet.base}/notes", json=jsonrpc("tools/list"),
                   headers={**MCP_HEADERS, "authorization": key[0]}, timeout=15)
    assert r.status_code == 401 and key[0] not in r.text
    assert "Authorization: Bearer vk_" in r.json()["error"]["message"]


def test_the_root_path_says_what_the_url_looks_like(valet: Valet, key: tuple[str, str]) -> None:
    for headers in ({}, {"authorization": f"Bearer {key[0]}"}):
        r = httpx.post(f"{valet.base}/", json=jsonrpc("tools/list"), headers={**MCP_HEADERS, **headers}, timeout=15)
        assert r.status_code == 404
        assert "/<server>" in r.json()["error"]["message"] and "''" not in r.text


# ---------------------------------------------------------------- reverse mode

def test_curl_reverse_mode_as_documented(valet: Valet, key: tuple[str, str]) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        [curl, "-s", "-X", "POST", f"{valet.base}/notes", "-H", f"Authorization: Bearer {key[0]}",
         "-H", "content-type: application/json", "-H", "accept: application/json, text/event-stream",
         "-H", "mcp-protocol-version: 2025-11-25",
         "-d", '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
               '"capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'],
        capture_output=True, text=True, timeout=60,
    )
    assert '"serverInfo"' in out.stdout, out


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_python_sdk_with_the_header(valet: Valet, key: tuple[str, str], mode: str) -> None:
    async def scenario() -> str:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key[0]}"}, timeout=30)
        async with Client(streamable_http_client(f"{valet.base}/notes", http_client=http), mode=mode) as c:
            return (await c.call_tool("add", {"a": 2, "b": 3})).content[0].text

    assert asyncio.run(scenario()) == "5"
