"""Node in forward mode (issue 11 item 2): docs/clients.md "### Node" run as shown, on the Node this machine has (20).

The TypeScript MCP SDK talks to the upstream by its real URL; undici's ``EnvHttpProxyAgent``, made the global
dispatcher (``tests/clients/forward.mjs``), sends it through Valet with the valet key as the proxy password, and
``NODE_EXTRA_CA_CERTS`` makes Node trust Valet's CA for HTTPS. For an HTTP and an HTTPS upstream:

- ``tools/list`` hides the argument Valet injects (``whoami``'s ``token``);
- ``whoami`` reaches the upstream with the injected secret (the upstream answers a digest, never the value; its
  echo comes back scrubbed), and the audit log has the call's row with the secret's name in ``injected``.

And the documented warning, shown true: the same client WITHOUT the dispatcher, with the same variables set, goes
straight to the upstream on Node 20 (the upstream sees the call with no secret, ``token`` is not hidden) and Valet
has no row at all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ROOT, Upstream, Valet, assert_clean_log, start_upstream, start_valet
from .test_clients_matrix import CLIENTS, DOCS, INJECT, SECRET, digest, excerpt, node
from .tls import self_signed_localhost

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def https_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Path]]:
    certfile, keyfile = self_signed_localhost(tmp_path_factory.mktemp("tls"))
    server = start_upstream(certfile, keyfile)
    yield server, certfile
    server.stop()


@pytest.fixture(scope="module")
def forward(upstream: Upstream, https_upstream: tuple[Upstream, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    """A forward-mode Valet for ``plain`` (the shared HTTP upstream) and ``secure`` (HTTPS), both injecting API_TOKEN."""
    secure, certfile = https_upstream
    config = (f"servers:\n  plain:\n    url: {upstream.url}\n{INJECT}"
              f"  secure:\n    url: {secure.url}\n{INJECT}"
              f"upstream_ca_file: {certfile}\n")
    proxy = start_valet(tmp_path_factory.mktemp("fwd-node"), None, mode="forward", config_text=config)
    for server in ("plain", "secure"):
        proxy.cli("secret", "set", "API_TOKEN", "--server", server, stdin=SECRET)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)
    assert SECRET not in proxy.log.read_text(errors="replace")


def documented_lines() -> str:
    """The shell lines under ``<!-- tested: node-forward -->`` in docs/clients.md."""
    return DOCS.split("<!-- tested: node-forward -->", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]


def as_documented(proxy: Valet, key: str, script: str, url: str) -> subprocess.CompletedProcess[str]:
    """The documented lines in bash, with the proxy's port and ``node <script> <url>`` for ``node agent.mjs``."""
    node_binary = node()
    lines = documented_lines().replace("127.0.0.1:8787", f"127.0.0.1:{proxy.port}")
    assert " node agent.mjs" in lines, lines
    lines = lines.replace(" node agent.mjs", f' "$NODE" tests/clients/{script} "$URL"')
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "node_extra_ca_certs",
                                "node_use_env_proxy", "node_options")}
    env.update(KEY=key, VALET_DATA_DIR=str(proxy.data_dir), VALET_CONFIG=str(proxy.config), NODE=node_binary, URL=url)
    return subprocess.run(["bash", "-c", f"set -eu\n{lines}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


def parsed(run: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    assert run.returncode == 0 and run.stdout.startswith("{"), run
    return json.loads(run.stdout)


@pytest.mark.parametrize("server", ["plain", "secure"])
def test_node20_with_env_http_proxy_agent_goes_through_valet(
        forward: Valet, upstream: Upstream, https_upstream: tuple[Upstream, Path], server: str) -> None:
    url = upstream.url if server == "plain" else https_upstream[0].url
    key, key_id = forward.new_key("alice", f"node-fwd-{server}")
    run = as_documented(forward, key, "forward.mjs", url)
    out = parsed(run)
    tools, seen = out["tools"], json.loads(out["result"])
    assert "whoami" in tools and "token" not in tools["whoami"] and "text" in tools["whoami"], tools
    assert seen["digests"]["token"] == digest(SECRET), "the upstream did not receive the injected secret"
    assert seen["arguments"]["token"] == "[REDACTED:API_TOKEN]"
    assert SECRET not in run.stdout + run.stderr and key not in run.stdout + run.stderr
    row = forward.rows("key_id = ? AND rpc_method = 'tools/call' AND tool = 'whoami'", (key_id,))[-1]
    assert row["decision"] == "allow" and row["http_status"] == 200 and row["server"] == server, row
    assert json.loads(row["injected"]) == ["API_TOKEN"] and SECRET not in json.dumps(row)
    assert forward.rows("key_id = ? AND rpc_method = 'tools/list' AND decision = 'allow'", (key_id,))


def test_node20_without_the_dispatcher_bypasses_valet(forward: Valet, upstream: Upstream) -> None:
    """The warning in docs/clients.md, shown true: same variables, no dispatcher, no Valet."""
    key, key_id = forward.new_key("alice", "node-fwd-bypass")
    before = upstream.requests_seen()
    rows_before = len(forward.rows(expect=0, settled=False))
    run = as_documented(forward, key, "direct.mjs", upstream.url)
    out = parsed(run)
    seen = json.loads(out["result"])
    assert "token" in out["tools"]["whoami"], "tools/list came through Valet after all"
    assert seen["arguments"]["token"] == "" and seen["digests"]["token"] == digest(""), seen
    assert upstream.requests_seen() > before, "the upstream was not reached directly"
    assert not forward.rows("key_id = ?", (key_id,), expect=0, settled=False), "Valet saw the bypassing client"
    assert len(forward.rows(expect=0, settled=False)) == rows_before, "Valet saw the bypassing client"


def test_docs_show_the_tested_code_and_versions() -> None:
    """The js block is forward.mjs's snippet; the versions named are node's and the lock's."""
    shown = re.search(r"<!-- tested: tests/clients/forward.mjs -->\n```js\n(.*?)```", DOCS, re.S)
    assert shown and excerpt(CLIENTS / "forward.mjs") in shown[1]
    section = DOCS.split("### Node\n", 1)[1].split("\n### ", 1)[0]
    lock = json.loads((CLIENTS / "package-lock.json").read_text())["packages"]
    assert json.loads((CLIENTS / "package.json").read_text())["dependencies"]["undici"] == lock["node_modules/undici"]["version"]
    assert f"undici {lock['node_modules/undici']['version']}" in section
    assert f"@modelcontextprotocol/sdk {lock['node_modules/@modelcontextprotocol/sdk']['version']}" in section
    # the major only: the runner's Node may be a newer 20.x than the one named (20.20.2 here and in CI's image)
    major = subprocess.run([node(), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    assert f"node {major.lstrip('v').split('.')[0]}." in section, major
