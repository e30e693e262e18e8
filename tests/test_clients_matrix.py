"""The third-party client matrix (issue 11 item 2): each client as docs/clients.md shows it, through a real Valet.

For every client and every transport it offers, against the suite's own MCP server
(``tests/upstream/mcp_server.py``, and the same tools over the 2024-11-05 HTTP+SSE
transport from ``mcp_server_sse.py``):

- ``tools/list`` through Valet hides the argument Valet injects (``whoami``'s ``token``);
- a ``tools/call`` of ``whoami`` reaches the upstream with the secret in ``token`` (the
  upstream answers a digest of what it received, never the value; its echo of the value
  comes back scrubbed);
- the audit log has the call's row, allowed, with the secret's name in ``injected``;
- a bad key ends fast, with Valet's own message where the client shows it.

The clients are installed apart from Valet's venv by ``make clients`` (part of ``make
test``): Python ones in ``tests/clients/<name>/.venv`` from frozen requirement files,
Node ones in ``tests/clients/node_modules`` from package-lock.json. Locally a missing
install skips; in CI (``CI`` set) it fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from .support import PYTHON, ROOT, Upstream, Valet, assert_clean_log, free_port, start_upstream, start_valet, wait_for_port

pytestmark = pytest.mark.e2e

CLIENTS = ROOT / "tests/clients"
DOCS = (ROOT / "docs/clients.md").read_text()
SECRET = "fake-client-matrix-token-0001"  # an obviously fake upstream credential
INSPECTOR = CLIENTS / "node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"
MCP_REMOTE = CLIENTS / "node_modules/mcp-remote/dist/proxy.js"
INJECT = '    inject:\n      - tools: [whoami]\n        arguments: {token: "${secret:API_TOKEN}"}\n'


def digest(value: str) -> str:
    """What ``whoami`` answers for a value it received (tests/upstream/mcp_server.py)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def missing(what: str, how: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must have {what} ({how}; .ci/run runs make test, which runs make clients)")
    pytest.skip(f"{what} is not installed ({how})")


def client_python(name: str) -> Path:
    python = CLIENTS / name / ".venv/bin/python"
    if not (CLIENTS / name / ".venv/.installed").is_file():
        missing(f"tests/clients/{name}/.venv", "make clients")
    return python


def node() -> str:
    binary = shutil.which("node")
    if binary is None or not (CLIENTS / "node_modules/.installed").is_file():
        missing("node and tests/clients/node_modules", "install nodejs and npm, then make clients")
    return binary  # type: ignore[return-value]


# ---------------------------------------------------------------- one Valet, two upstream transports

@pytest.fixture(scope="module")
def sse_upstream() -> Iterator[Upstream]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/mcp_server_sse.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    server = Upstream(port, process)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def valet(upstream: Upstream, sse_upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    """``notes`` (streamable HTTP) and ``legacy`` (HTTP+SSE), both injecting API_TOKEN into whoami's token."""
    config = (f"servers:\n  notes:\n    url: {upstream.url}\n{INJECT}"
              f"  legacy:\n    url: http://127.0.0.1:{sse_upstream.port}\n{INJECT}")
    proxy = start_valet(tmp_path_factory.mktemp("clients"), None, config_text=config)
    for server in ("notes", "legacy"):
        proxy.cli("secret", "set", "API_TOKEN", "--server", server, stdin=SECRET)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)
    assert SECRET not in proxy.log.read_text(errors="replace")


URLS = {"http": "/notes", "sse": "/legacy/sse"}


def check_the_exchange(valet: Valet, key_id: str, tools: dict[str, list[str]], result: str, output: str) -> None:
    """Injected argument hidden, secret delivered (by digest), echo scrubbed, audit row written."""
    assert "whoami" in tools and "token" not in tools["whoami"] and "text" in tools["whoami"], tools
    seen = json.loads(result)
    assert seen["digests"]["token"] == digest(SECRET), "the upstream did not receive the injected secret"
    assert seen["arguments"]["token"] == "[REDACTED:API_TOKEN]"
    assert SECRET not in output
    row = valet.rows("key_id = ? AND rpc_method = 'tools/call' AND tool = 'whoami'", (key_id,))[-1]
    assert row["decision"] == "allow" and row["http_status"] in (200, 202), row  # 202: SSE answers on the stream
    assert json.loads(row["injected"]) == ["API_TOKEN"] and SECRET not in json.dumps(row)
    assert valet.rows("key_id = ? AND rpc_method = 'tools/list' AND decision = 'allow'", (key_id,))


def run(argv: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- Python clients (their own venvs)

PY_CASES = [
    pytest.param("py-sdk1", "http", id="py-sdk1-http"),
    pytest.param("py-sdk1", "sse", id="py-sdk1-sse"),
    pytest.param("fastmcp", "http", id="fastmcp-http"),
    pytest.param("fastmcp", "sse", id="fastmcp-sse"),
    pytest.param("openai-agents", "http", id="openai-agents-http"),
    pytest.param("openai-agents", "sse", id="openai-agents-sse"),
    pytest.param("openai-agents-mcp1", "http", id="openai-agents-with-mcp1-http"),  # the documented workaround
    pytest.param("openai-agents-mcp1", "sse", id="openai-agents-with-mcp1-sse"),
]
SCRIPT = {"openai-agents-mcp1": "openai-agents"}  # the same client.py, in a venv with mcp 1.x


@pytest.mark.parametrize("name,transport", PY_CASES)
def test_python_client_lists_calls_and_is_audited(valet: Valet, name: str, transport: str) -> None:
    python = client_python(name)
    key, key_id = valet.new_key("alice", f"{name}-{transport}")
    script = CLIENTS / SCRIPT.get(name, name) / "client.py"
    done = run([str(python), str(script), valet.base + URLS[transport]], {"VALET_KEY": key})
    assert done.returncode == 0, done
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["is_error"] is False
    check_the_exchange(valet, key_id, out["tools"], out["result"], done.stdout + done.stderr)


def test_python_sdk2_sse_client_in_its_default_mode(valet: Valet) -> None:
    """Python SDK 2.x's Client over sse_client without mode="legacy" (docs/clients.md says to pass it)."""
    from mcp.client.sse import sse_client

    key, _ = valet.new_key("alice", "py-sdk2-sse-auto")

    async def scenario() -> str:
        async with Client(sse_client(f"{valet.base}/legacy/sse", headers={"Authorization": f"Bearer {key}"})) as c:
            return (await c.call_tool("add", {"a": 2, "b": 3})).content[0].text

    assert asyncio.run(asyncio.wait_for(scenario(), 90)) == "5"


# Valet's message itself (from the 401's JSON body) where the client surfaces it; else the status.
BAD_KEY_SAYS = {("py-sdk1", "http"): "401 Unauthorized", ("py-sdk1", "sse"): "401 Unauthorized",
                ("fastmcp", "http"): "unknown valet key", ("fastmcp", "sse"): "401 Unauthorized",
                ("openai-agents", "http"): "unknown valet key", ("openai-agents", "sse"): "401"}


@pytest.mark.parametrize("name,transport", sorted(BAD_KEY_SAYS))
def test_python_client_with_a_bad_key_fails_fast_and_says_why(valet: Valet, name: str, transport: str) -> None:
    python = client_python(name)
    started = time.monotonic()
    done = run([str(python), str(CLIENTS / name / "client.py"), valet.base + URLS[transport]],
               {"VALET_KEY": "vk_not_a_key"})
    assert done.returncode == 1 and done.stdout.startswith("refused: "), done
    assert BAD_KEY_SAYS[name, transport] in done.stdout, done.stdout
    assert time.monotonic() - started < 120, "the client retried or hung on a 401"


# ---------------------------------------------------------------- TypeScript SDK on both transports

@pytest.mark.parametrize("transport", ["http", "sse"])
def test_typescript_sdk_lists_calls_and_is_audited(valet: Valet, transport: str) -> None:
    key, key_id = valet.new_key("alice", f"typescript-{transport}")
    done = run([node(), "matrix.mjs", valet.base + URLS[transport]], {"VALET_KEY": key}, cwd=CLIENTS)
    assert done.returncode == 0, done
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["is_error"] is False
    check_the_exchange(valet, key_id, out["tools"], out["result"], done.stdout + done.stderr)


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_typescript_sdk_with_a_bad_key(valet: Valet, transport: str) -> None:
    done = run([node(), "matrix.mjs", valet.base + URLS[transport]], {"VALET_KEY": "vk_not_a_key"}, cwd=CLIENTS)
    assert done.returncode == 1 and done.stdout.startswith("refused:"), done
    assert ("unknown valet key" if transport == "http" else "401") in done.stdout, done.stdout


# ---------------------------------------------------------------- MCP Inspector (CLI mode)

def documented_commands(marker: str) -> list[list[str]]:
    """The shell commands under ``<!-- tested: marker -->`` in docs/clients.md, each split as bash would."""
    block = DOCS.split(f"<!-- tested: {marker} -->", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def inspector_argvs(valet: Valet, key: str, transport: str) -> list[list[str]]:
    """The documented Inspector commands, run by node instead of npx, with this Valet's URL and the key.

    For a legacy SSE server the docs say: the server's URL plus /sse, and --transport sse.
    """
    url = valet.base + ("/notes" if transport == "http" else "/legacy/sse")
    argvs = []
    for argv in documented_commands("inspector"):
        assert argv[:2] == ["npx", "@modelcontextprotocol/inspector@2.12.0"], argv
        argv = [url if a == "http://127.0.0.1:8787/demo" else a.replace("$VALET_KEY", key) for a in argv[2:]]
        argv[argv.index("--transport") + 1] = transport
        argvs.append([node(), str(INSPECTOR), *argv])
    return argvs


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_inspector_cli_lists_calls_and_is_audited(valet: Valet, transport: str, tmp_path: Path) -> None:
    key, key_id = valet.new_key("alice", f"inspector-{transport}")
    env = {"HOME": str(tmp_path)}  # the Inspector keeps a catalog and token storage under ~/.mcp-inspector
    list_argv, call_argv = inspector_argvs(valet, key, transport)
    listed = run(list_argv, env)
    assert listed.returncode == 0, listed
    tools = {t["name"]: sorted(t["inputSchema"].get("properties", {})) for t in json.loads(listed.stdout)["tools"]}
    called = run(call_argv, env)
    assert called.returncode == 0, called
    result = json.loads(called.stdout)
    assert result.get("isError") is not True
    check_the_exchange(valet, key_id, tools, result["content"][0]["text"], listed.stdout + called.stdout)


def test_inspector_cli_with_a_bad_key_stops_with_valets_message(valet: Valet, tmp_path: Path) -> None:
    """On a 401 the Inspector wants interactive OAuth; without a TTY, or with --stored-auth-only, it stops at once."""
    env = {"HOME": str(tmp_path)}
    argv = inspector_argvs(valet, "vk_not_a_key", "http")[0]
    started = time.monotonic()
    plain = run(argv, env)
    assert plain.returncode == 3 and "auth_required" in plain.stdout + plain.stderr, plain
    stored_only = run([*argv, "--stored-auth-only"], env)
    assert stored_only.returncode == 3 and "unknown valet key" in stored_only.stdout + stored_only.stderr, stored_only
    assert time.monotonic() - started < 240
    assert not list(tmp_path.rglob("*token*")), "no OAuth token may come out of Valet"


def test_json_config_with_url_and_headers_as_documented(valet: Valet, tmp_path: Path) -> None:
    """The Cursor / VS Code style entry from docs/clients.md, read by a real client (the Inspector's --config).

    The Inspector does not expand variables in its config, so the test writes the key itself where the
    documented file has ``${env:VALET_KEY}`` (Cursor and VS Code expand that).
    """
    key, key_id = valet.new_key("alice", "json-config")
    block = DOCS.split("<!-- tested: json-config -->", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    entry = json.loads(block)
    assert entry["mcpServers"]["demo"]["headers"] == {"Authorization": "Bearer ${env:VALET_KEY}"}
    text = block.replace("http://127.0.0.1:8787/demo", f"{valet.base}/notes").replace("${env:VALET_KEY}", key)
    (tmp_path / "mcp.json").write_text(text)
    (tmp_path / "mcp.json").chmod(0o600)
    base = [node(), str(INSPECTOR), "--cli", "--config", str(tmp_path / "mcp.json"), "--server", "demo"]
    env = {"HOME": str(tmp_path)}
    listed = run([*base, "--method", "tools/list"], env)
    assert listed.returncode == 0, listed
    tools = {t["name"]: sorted(t["inputSchema"].get("properties", {})) for t in json.loads(listed.stdout)["tools"]}
    called = run([*base, "--method", "tools/call", "--tool-name", "whoami", "--tool-arg", "text=from a json config"], env)
    assert called.returncode == 0, called
    check_the_exchange(valet, key_id, tools, json.loads(called.stdout)["content"][0]["text"], called.stdout)


# ---------------------------------------------------------------- mcp-remote (Claude Desktop) with --header-file

def mcp_remote_call(valet: Valet, args: list[str], env: dict[str, str]) -> tuple[dict[str, list[str]], str]:
    """Drive mcp-remote over stdio as Claude Desktop does (with Valet's own Python SDK as the stdio host)."""
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=node(), args=[str(MCP_REMOTE), *args], env={**os.environ, **env})

    async def scenario() -> tuple[dict[str, list[str]], str]:
        async with Client(stdio_client(params)) as c:
            tools = {t.name: sorted(t.input_schema.get("properties", {})) for t in (await c.list_tools()).tools}
            result = await c.call_tool("whoami", {"text": "from mcp-remote"})
            return tools, result.content[0].text

    return asyncio.run(asyncio.wait_for(scenario(), 150))


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_mcp_remote_with_a_header_file(valet: Valet, transport: str, tmp_path: Path) -> None:
    """The key in a private file, not in the process arguments: docs/clients.md's --header-file config."""
    node()
    key, key_id = valet.new_key("alice", f"mcp-remote-file-{transport}")
    block = DOCS.split("<!-- tested: mcp-remote-header-file -->", 1)[1]
    headers_text = block.split("```text\n", 1)[1].split("```", 1)[0]
    config = json.loads(block.split("```json\n", 1)[1].split("```", 1)[0])["mcpServers"]["demo"]
    assert config["command"] == "npx" and config["args"][0] == "mcp-remote", config
    headers = tmp_path / "valet-headers.txt"
    headers.write_text(headers_text.replace("vk_...", key))
    headers.chmod(0o600)
    args = [a.replace("http://127.0.0.1:8787/demo", valet.base + ("/notes" if transport == "http" else "/legacy/sse"))
            .replace("/home/me/.config/valet-headers.txt", str(headers)) for a in config["args"][1:]]
    if transport == "sse":
        args[args.index("http-only")] = "sse-only"
    assert key not in " ".join(args)
    tools, result = mcp_remote_call(valet, args, {"MCP_REMOTE_CONFIG_DIR": str(tmp_path / "mcp-remote")})
    check_the_exchange(valet, key_id, tools, result, result)


# ---------------------------------------------------------------- the docs show what the tests run

SNIPPET = re.compile(r"<!-- tested: (tests/clients/\S+) -->\n```(?:python|js)\n(.*?)```", re.S)


def excerpt(path: Path) -> str:
    """The lines between ``# snippet`` and ``# end snippet`` (``//`` in JavaScript) in a client script, dedented."""
    comment = "//" if path.suffix == ".mjs" else "#"
    text = path.read_text().split(f"{comment} snippet:", 1)[1].split("\n", 1)[1]
    lines = text.split(f"{comment} end snippet", 1)[0].splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines).strip() + "\n"


def test_python_snippets_in_docs_are_the_tested_code() -> None:
    found = SNIPPET.findall(DOCS)
    assert {path for path, _ in found} >= {"tests/clients/py-sdk1/client.py", "tests/clients/fastmcp/client.py",
                                           "tests/clients/openai-agents/client.py", "tests/clients/matrix.mjs"}, found
    for path, shown in found:
        assert excerpt(ROOT / path) in shown, f"docs/clients.md shows a different snippet than {path} runs"


def test_documented_versions_are_the_installed_ones() -> None:
    """docs/clients.md names the versions; the requirement files and the lock file pin them."""
    pins = {"mcp": "py-sdk1", "fastmcp": "fastmcp", "openai-agents": "openai-agents"}
    for package, folder in pins.items():
        version = re.search(rf"^{package}==(\S+)$", (CLIENTS / folder / "requirements.txt").read_text(), re.M)
        assert version and f"{package} {version[1]}" in DOCS, (package, version)
    lock = json.loads((CLIENTS / "package-lock.json").read_text())["packages"]
    for package in ("@modelcontextprotocol/inspector", "mcp-remote", "@modelcontextprotocol/sdk"):
        assert f"{package} {lock['node_modules/' + package]['version']}" in DOCS, package
