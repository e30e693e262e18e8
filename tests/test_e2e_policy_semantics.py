"""Policy semantics and policy reloads end to end: a real Valet, a real MCP upstream, files edited live.

Each test here fails on the engine before these semantics: a namespaced or differently-cased call slipped
past a deny rule, a nested-quantifier regex stalled the proxy for seconds, a deleted or half-written policy
file loosened the policy in force, and per-argument rate budgets were keyed on the whole value.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from addon.snapshot import SETTLE_SECONDS

from .support import PYTHON, ROOT, Upstream, Valet, assert_clean_log, start_valet
from .test_e2e_policy import raw_call

pytestmark = pytest.mark.e2e

POLICY = """
servers:
  notes: {default: allow}
  strict: {default: deny}
rules:
  - id: no-wipe
    effect: deny
    tools: [delete_everything]
  - id: no-private
    effect: deny
    servers: [notes]
    tools: [read_file]
    arguments:
      path: {under: /srv/Private}
  - id: no-prod
    effect: deny
    servers: [notes]
    tools: [echo]
    arguments:
      text: {one_of: [prod]}
  - id: slugs
    effect: allow
    servers: [strict]
    tools: [echo]
    arguments:
      text: {regex: "([a-z0-9]+[-_.]?)+", max_length: 64}
"""


def config_text(upstream: Upstream, extra: str = "") -> str:
    return (f"servers:\n  notes:\n    url: {upstream.url}\n  strict:\n    url: {upstream.url}\n"
            f"policy_files: [main.yaml, \"rules/*.yaml\"]\n{extra}")


def start(tmp: Path, upstream: Upstream, policy: str = POLICY, extra: str = "") -> Valet:
    (tmp / "rules").mkdir(parents=True, exist_ok=True)
    (tmp / "main.yaml").write_text(policy)
    return start_valet(tmp, None, config_text=config_text(upstream, extra), policy=None)


@pytest.fixture(scope="module")
def valet(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start(tmp_path_factory.mktemp("semantics"), upstream)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def call(valet: Valet, key: str, tool: str, args: dict, server: str = "notes") -> tuple[int, str | None]:
    r = raw_call(valet, key, tool, args) if server == "notes" else _raw(valet, key, tool, args, server)
    return r.status_code, (r.json().get("error") or {}).get("data", {}).get("rule") if r.status_code != 200 else None


def _raw(valet: Valet, key: str, tool: str, args: dict, server: str):  # type: ignore[no-untyped-def]
    from mcp.shared.inbound import encode_header_value

    from .support import jsonrpc, post

    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    return post(f"{valet.base}/{server}", jsonrpc("tools/call", {"name": tool, "arguments": args, "_meta": meta}),
                key, headers={"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                              "mcp-name": encode_header_value(tool)})


@pytest.mark.parametrize("tool", ["delete_everything", "notes__delete_everything", "a.b__Delete_Everything",
                                  "x.delete_everything"])
def test_a_deny_on_a_tool_also_denies_it_behind_a_namespace(valet: Valet, upstream: Upstream, tool: str) -> None:
    key, _ = valet.new_key("alice", "namespaced")
    before = upstream.requests_seen()
    assert call(valet, key, tool, {}) == (403, "no-wipe")
    assert upstream.requests_seen() == before


@pytest.mark.parametrize(
    ("tool", "args", "rule"),
    [("read_file", {"path": "/srv/private/key"}, "no-private"), ("read_file", {"path": "/SRV/PRIVATE"}, "no-private"),
     ("echo", {"text": "PROD"}, "no-prod"), ("echo", {"text": "Prod"}, "no-prod")],
)
def test_deny_argument_checks_ignore_case(valet: Valet, upstream: Upstream, tool: str, args: dict,
                                          rule: str) -> None:
    key, _ = valet.new_key("alice", "cased")
    before = upstream.requests_seen()
    assert call(valet, key, tool, args) == (403, rule)
    assert upstream.requests_seen() == before
    assert call(valet, key, "echo", {"text": "staging"}) == (200, None)


def test_a_catastrophic_pattern_is_answered_at_once(valet: Valet) -> None:
    """Python's re backtracks exponentially here (each extra character doubles the time): the engine before
    RE2 took 3.2 s for values of 23, 24 and 25 characters on the dev machine, so about 6 s for these three."""
    key, _ = valet.new_key("alice", "regex")
    assert call(valet, key, "echo", {"text": "abc-def"}, server="strict") == (200, None)
    started = time.monotonic()
    for n in (24, 25, 26):
        assert call(valet, key, "echo", {"text": "a" * n + "!"}, server="strict") == (403, "default:strict")
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"three calls took {elapsed:.1f}s"
    assert call(valet, key, "echo", {"text": "a" * 65}, server="strict") == (403, "default:strict")


def test_policy_check_rejects_a_pattern_that_cannot_run_in_linear_time(valet: Valet, tmp_path: Path) -> None:
    bad = tmp_path / "lookaround.yaml"
    bad.write_text("rules:\n  - id: x\n    effect: allow\n    tools: [echo]\n"
                   "    arguments:\n      text: {regex: '(?!admin).*'}\n")
    done = valet.cli("policy", "check", "--config", str(valet.config), str(bad), check=False)
    assert done.returncode != 0
    assert f"{bad}:6: rules.0.arguments.text.regex" in done.stderr and "linear time" in done.stderr


def write_atomically(path: Path, text: str) -> None:
    """The documented recipe: a temporary file in the same folder, then a rename over the target."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def settle() -> None:
    time.sleep(SETTLE_SECONDS + 0.5)


def test_a_deleted_literal_policy_file_keeps_the_last_good_policy(upstream: Upstream, tmp_path: Path) -> None:
    proxy = start(tmp_path, upstream)
    try:
        key, _ = proxy.new_key("alice", "deleter")
        assert call(proxy, key, "delete_everything", {}) == (403, "no-wipe")
        (tmp_path / "main.yaml").unlink()
        settle()
        # the default of a server with no policy is deny anyway: what must stay is the *allow* default and rules
        assert call(proxy, key, "delete_everything", {}) == (403, "no-wipe")
        assert call(proxy, key, "echo", {"text": "hi"}) == (200, None)
        log = proxy.log.read_text()
        assert "configuration change rejected" in log
        assert f"{tmp_path / 'main.yaml'}: this policy file is named in policy_files but does not exist" in log
    finally:
        assert proxy.stop() == 0


def test_valet_refuses_to_start_without_a_literal_policy_file(upstream: Upstream, tmp_path: Path) -> None:
    config = tmp_path / "valet.yaml"
    config.write_text(config_text(upstream))
    (tmp_path / "rules").mkdir()  # the glob may match nothing; main.yaml must exist
    done = subprocess.run(
        [PYTHON, str(ROOT / "run_proxy.py"), "--config", str(config), "--data-dir", str(tmp_path / "d"),
         "--listen", "127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{tmp_path / 'main.yaml'}: this policy file is named in policy_files but does not exist" in done.stderr


def test_a_half_written_policy_file_is_not_loaded_before_it_settles(upstream: Upstream, tmp_path: Path) -> None:
    proxy = start(tmp_path, upstream)
    try:
        key, _ = proxy.new_key("alice", "writer")
        rule_file = tmp_path / "rules" / "20-more.yaml"
        write_atomically(rule_file, "rules:\n  - id: no-add\n    effect: deny\n    tools: [add]\n")
        settle()
        assert call(proxy, key, "add", {"a": 1, "b": 2}) == (403, "no-add")
        # a writer caught after its first line: valid YAML with no rules, a looser policy
        rule_file.write_text("rules: []\n")
        for _ in range(3):
            assert call(proxy, key, "add", {"a": 1, "b": 2}) == (403, "no-add"), "loaded before it settled"
        rule_file.write_text("rules:\n  - id: no-add\n    effect: deny\n    tools: [add]\n"
                             "  - id: no-echo\n    effect: deny\n    tools: [echo]\n")
        settle()
        assert call(proxy, key, "echo", {"text": "x"}) == (403, "no-echo")
        assert call(proxy, key, "add", {"a": 1, "b": 2}) == (403, "no-add")
    finally:
        assert proxy.stop() == 0


def test_every_reload_logs_rules_and_files_added_and_removed_at_warning(upstream: Upstream, tmp_path: Path) -> None:
    proxy = start(tmp_path, upstream)
    try:
        key, _ = proxy.new_key("alice", "auditor")
        extra = tmp_path / "rules" / "30-extra.yaml"
        write_atomically(extra, "rules:\n  - id: extra-deny\n    effect: deny\n    tools: [add]\n")
        write_atomically(tmp_path / "main.yaml", POLICY.replace("  - id: no-prod", "  - id: no-prod-renamed"))
        settle()
        assert call(proxy, key, "add", {"a": 1, "b": 1}) == (403, "extra-deny")
        extra.unlink()
        settle()
        assert call(proxy, key, "add", {"a": 1, "b": 1}) == (200, None)
        lines = [line for line in proxy.log.read_text().splitlines() if "configuration reloaded" in line]
        assert len(lines) == 2, lines
        assert all("WARNING" in line for line in lines), lines
        assert (f"rules added: extra-deny, no-prod-renamed; rules removed: no-prod; rules changed: -; "
                f"files added: {extra}; files removed: -") in lines[0]
        assert f"rules added: -; rules removed: extra-deny; rules changed: -; files added: -; files removed: {extra}" \
            in lines[1]
    finally:
        assert proxy.stop() == 0


def test_rate_budgets_keyed_by_large_argument_values_stay_small_and_few(upstream: Upstream, tmp_path: Path,
                                                                       redis_url: str) -> None:
    """Counted in Redis, where every budget is a key: 5 at most for the rule, each of a bounded size."""
    rule = f"per-text-{uuid.uuid4().hex[:8]}"
    policy = POLICY + f"  - id: {rule}\n    servers: [notes]\n    tools: [echo]\n    rate: 100/minute\n" \
                      "    per: [argument:text]\n"
    proxy = start(tmp_path, upstream, policy, extra=f"rate_limits:\n  storage: {redis_url}\n  max_keys_per_rule: 5\n")
    try:
        key, _ = proxy.new_key("alice", "sprayer")
        codes = []
        for i in range(8):
            r = raw_call(proxy, key, "echo", {"text": f"{i:02d}" + "x" * 300_000}, i)
            codes.append((r.status_code, r.json()["error"]["data"]["reason"] if r.status_code != 200 else None))
        assert codes == [(200, None)] * 5 + [(429, "rate_limited")] * 3
        again = raw_call(proxy, key, "echo", {"text": "00" + "x" * 300_000}, 9)
        assert again.status_code == 200, "a value that already has a budget keeps it"
        keys, sizes = asyncio.run(_budget_keys(redis_url, rule))
        assert 1 <= len(keys) <= 5, keys
        assert max(len(k) for k in keys) < 300, "a key holds a hash of the value, never the value"
        assert sum(sizes) < 64_000, sizes
    finally:
        assert proxy.stop() == 0


async def _budget_keys(redis_url: str, rule: str) -> tuple[list[bytes], list[int]]:
    import coredis

    client = coredis.Redis.from_url(redis_url, decode_responses=False)
    keys = [k async for k in client.scan_iter(match=f"*{rule}*", count=1000)]
    sizes = [await client.memory_usage(k) or 0 for k in keys]
    return keys, sizes
