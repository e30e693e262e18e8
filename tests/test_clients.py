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

from .support import MCP_HEADERS, PYTHON, ROOT, Valet, jsonrpc, start_upstream, start_valet
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


def _node_client_ready() -> str | None:
    """The node binary when the TypeScript SDK is installed in tests/clients (CI runs npm ci there)."""
    node = shutil.which("node")
    if node and (ROOT / "tests/clients/node_modules/@modelcontextprotocol/sdk").is_dir():
        return node
    if os.environ.get("CI"):
        pytest.fail("CI must have node and `npm ci` in tests/clients (.ci/run does both)")
    pytest.skip("node or tests/clients/node_modules is missing (cd tests/clients && npm ci)")


def test_typescript_sdk_as_documented(valet: Valet, key: tuple[str, str]) -> None:
    node = _node_client_ready()
    run = subprocess.run([node, "reverse.mjs", f"{valet.base}/notes"], cwd=ROOT / "tests/clients",
                         env={**os.environ, "VALET_KEY": key[0]}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "add: 5" in run.stdout, run
    refused = subprocess.run([node, "reverse.mjs", f"{valet.base}/notes"], cwd=ROOT / "tests/clients",
                             env={**os.environ, "VALET_KEY": "vk_not_a_key"}, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1 and "unknown valet key" in refused.stdout, refused


# ---------------------------------------------------------------- forward mode

@pytest.fixture(scope="module")
def forward(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    certfile, keyfile = self_signed_localhost(tmp_path_factory.mktemp("tls"))
    upstream = start_upstream(certfile, keyfile)
    proxy = start_valet(tmp_path_factory.mktemp("fwd"), {"secure": upstream.url}, mode="forward",
                        extra=f"upstream_ca_file: {certfile}\n")
    yield proxy, upstream
    proxy.stop()
    upstream.stop()


def _readme_forward_exports() -> str:
    """The forward-mode `export` lines exactly as README.md shows them."""
    block = README_TEXT.split("**Forward** (`--mode forward`)", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("export ")]
    assert len(lines) == 2, block
    return "\n".join(lines)


README_TEXT = (ROOT / "README.md").read_text()
INITIALIZE = ('{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
              '"capabilities":{},"clientInfo":{"name":"fwd","version":"1"}}}')


def _as_the_readme_says(proxy: Valet, key: str, then: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run the README's two export lines in bash (with the proxy's port), then a command."""
    exports = _readme_forward_exports().replace("127.0.0.1:8787", f"127.0.0.1:{proxy.port}")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    env.update(KEY=key, VALET_DATA_DIR=str(proxy.data_dir), **extra)
    return subprocess.run(["bash", "-c", f"set -eu\n{exports}\n{then}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_readme_forward_exports_set_both_variables(forward) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = forward
    key, _ = proxy.new_key("alice", "fwd-env")
    shown = _as_the_readme_says(proxy, key, 'printf "%s\\n%s\\n%s\\n" "$HTTPS_PROXY" "$HTTP_PROXY" "$SSL_CERT_FILE"')
    https_proxy, http_proxy, cert = shown.stdout.splitlines()
    assert https_proxy == http_proxy == f"http://agent:{key}@127.0.0.1:{proxy.port}"
    assert Path(cert).is_file() and Path(cert).parent == proxy.data_dir / "mitmproxy"


def test_python_httpx_reads_the_exports(forward) -> None:  # type: ignore[no-untyped-def]
    proxy, upstream = forward
    key, key_id = proxy.new_key("alice", "fwd-httpx")
    script = ("import httpx; r = httpx.post('%s', content=%r, headers={'content-type': 'application/json', "
              "'accept': 'application/json, text/event-stream'}, timeout=30); print(r.status_code, r.text[:300])") % (
        upstream.url, INITIALIZE)
    done = _as_the_readme_says(proxy, key, f'"{PYTHON}" -c "$SCRIPT"', SCRIPT=script)
    assert done.stdout.startswith("200 "), done
    assert proxy.rows("key_id = ? AND rpc_method = 'initialize'", (key_id,))


def test_curl_through_the_forward_proxy(forward) -> None:  # type: ignore[no-untyped-def]
    proxy, upstream = forward
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    key, key_id = proxy.new_key("alice", "fwd-curl")
    done = subprocess.run(
        [curl, "-s", "-x", f"http://agent:{key}@127.0.0.1:{proxy.port}", "--cacert", proxy.cli("ca").stdout.strip(),
         "-X", "POST", upstream.url, "-H", "content-type: application/json",
         "-H", "accept: application/json, text/event-stream", "-d", INITIALIZE],
        capture_output=True, text=True, timeout=60)
    assert '"serverInfo"' in done.stdout, done
    assert proxy.rows("key_id = ? AND rpc_method = 'initialize'", (key_id,))


def test_mcp_remote_with_header_and_with_a_bad_key(valet: Valet, key: tuple[str, str], tmp_path: Path) -> None:
    """Claude Desktop's bridge, as docs/clients.md configures it; a bad key ends in a fast failure, not a hang."""
    node = _node_client_ready()
    from mcp.client.stdio import StdioServerParameters, stdio_client

    proxy_js = ROOT / "tests/clients/node_modules/mcp-remote/dist/proxy.js"

    async def call(valet_key: str) -> str:
        params = StdioServerParameters(
            command=node, args=[str(proxy_js), f"{valet.base}/notes", "--header", "Authorization:Bearer ${VALET_KEY}",
                                "--transport", "http-only"],
            env={**os.environ, "VALET_KEY": valet_key, "MCP_REMOTE_CONFIG_DIR": str(tmp_path / "mcp-remote")},
        )
        async with Client(stdio_client(params)) as c:
            return (await c.call_tool("add", {"a": 2, "b": 3})).content[0].text

    assert asyncio.run(asyncio.wait_for(call(key[0]), 120)) == "5"
    started = time.monotonic()
    with pytest.raises(BaseException) as raised:
        asyncio.run(asyncio.wait_for(call("vk_not_a_key"), 120))
    assert not isinstance(raised.value, (TimeoutError, asyncio.TimeoutError)), "mcp-remote hung"
    assert time.monotonic() - started < 120
    assert valet.rows("reason = 'oauth_not_supported' AND http_path = '/register'")
