"""valet policy replay over an audit log recorded by a real Valet: figures of what would change."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .ops_support import start_ops_valet, stateless
from .support import ROOT, VALET_CLI, Upstream, Valet

pytestmark = pytest.mark.e2e

RECORDED = """
servers:
  notes: {default: deny}
rules:
  - id: notes-tools
    effect: allow
    servers: [notes]
    tools: [add, echo]
"""

BLOCK_ECHO = """
rules:
  - id: no-echo
    effect: deny
    servers: [notes]
    tools: [echo]
"""

ALLOW_MORE = """
servers:
  notes: {default: deny}
rules:
  - id: notes-tools
    effect: allow
    servers: [notes]
    tools: [add, echo, read_file]
  - id: add-once
    servers: [notes]
    tools: [add]
    rate: 1/hour
    per: [user]
"""


@pytest.fixture(scope="module")
def recorded(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    tmp = tmp_path_factory.mktemp("replay")
    proxy = start_ops_valet(tmp, f"servers:\n  notes:\n    url: {upstream.url}\n", RECORDED)
    try:
        keys = {user: proxy.new_key(user, "replay-agent")[0] for user in ("alice", "bob", "carol")}

        def call(user: str, tool: str, args: dict, status: int) -> None:
            r = stateless(proxy, keys[user], "tools/call", {"name": tool, "arguments": args})
            assert r.status_code == status, r.text

        call("alice", "echo", {"text": "a1"}, 200)
        call("alice", "echo", {"text": "a2"}, 200)
        call("bob", "echo", {"text": "b1"}, 200)
        call("carol", "add", {"a": 1, "b": 2}, 200)
        call("carol", "add", {"a": 3, "b": 4}, 200)
        call("alice", "read_file", {"path": "/srv/a"}, 403)
        call("bob", "read_file", {"path": "/srv/b"}, 403)
        assert stateless(proxy, "vk_bogus", "tools/list", {}).status_code == 401  # never judged by the policy
        proxy.rows("rpc_method = 'tools/call'", expect=7)
    finally:
        assert proxy.stop() == 0
    yield proxy


def replay(valet: Valet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VALET_CLI, "policy", "replay", "--data-dir", str(valet.data_dir), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_same_policy_changes_nothing(recorded: Valet) -> None:
    r = replay(recorded, "--config", str(recorded.config), "--json", "--fail-on-change")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["allow_to_deny"]["count"] == 0 and report["deny_to_allow"]["count"] == 0
    assert report["replayed"] == 7 and report["unchanged"] == 7
    assert report["not_judged_by_policy"] == {"unknown_key": 1}


def test_a_policy_that_blocks_a_tool(recorded: Valet) -> None:
    extra = recorded.config.parent / "block-echo.yaml"
    extra.write_text(BLOCK_ECHO)
    r = replay(recorded, "--config", str(recorded.config), str(extra), "--json")
    assert r.returncode == 0, r.stderr
    blocked = json.loads(r.stdout)["allow_to_deny"]
    assert blocked["count"] == 3 and blocked["users"] == 2
    assert blocked["by_rule"] == {"no-echo": 3} and blocked["by_user"] == {"alice": 2, "bob": 1}
    assert blocked["by_server"] == {"notes": 3} and blocked["by_tool"] == {"echo": 3}
    assert {s["user"] for s in blocked["samples"]} == {"alice", "bob"}
    assert all(s["before"] == "allow" and s["after"] == "deny" for s in blocked["samples"])
    text = replay(recorded, "--config", str(recorded.config), str(extra))
    assert "would have blocked 3 calls by 2 users" in text.stdout
    gate = replay(recorded, "--config", str(recorded.config), str(extra), "--fail-on-change")
    assert gate.returncode == 3


def test_a_policy_that_allows_more_and_counts_rates(recorded: Valet) -> None:
    folder = recorded.config.parent / "candidate"
    folder.mkdir(exist_ok=True)
    (folder / "policy.yaml").write_text(ALLOW_MORE)
    config = folder / "valet.yaml"
    config.write_text(recorded.config.read_text())
    r = replay(recorded, "--config", str(config), "--json", "--since", "1h")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    allowed = report["deny_to_allow"]
    assert allowed["count"] == 2 and allowed["users"] == 2 and allowed["by_tool"] == {"read_file": 2}
    assert allowed["by_rule"] == {"notes-tools": 2}
    assert report["allow_to_deny"]["count"] == 0
    assert report["rate_rules"] == {"add-once": {"counted": 2, "budgets": 1, "would_refuse": 1,
                                                 "recorded_refusals": 0}}
    text = replay(recorded, "--config", str(config)).stdout
    assert "would have allowed 2 calls by 2 users" in text and "rate rule add-once" in text
    assert replay(recorded, "--config", str(config), "--fail-on-change").returncode == 3


def test_since_excludes_older_rows(recorded: Valet) -> None:
    r = replay(recorded, "--config", str(recorded.config), "--json", "--since", "2099-01-01")
    assert r.returncode == 0 and json.loads(r.stdout)["replayed"] == 0
