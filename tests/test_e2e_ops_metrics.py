"""The admin listener end to end: /metrics after a known mix of traffic, /healthz, /readyz."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .ops_support import sample, scrape, start_ops_valet, stateless
from .support import Upstream, Valet, assert_clean_log, free_port

pytestmark = pytest.mark.e2e

POLICY = """
servers:
  notes: {default: deny}
rules:
  - id: notes-allowed
    effect: allow
    servers: [notes]
    tools: [add, echo]
  - id: add-rate
    servers: [notes]
    tools: [add]
    rate: 3/minute
    per: [user]
"""


@pytest.fixture(scope="module")
def admin_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def valet(upstream: Upstream, admin_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    tmp = tmp_path_factory.mktemp("ops")
    proxy = start_ops_valet(tmp, f"servers:\n  notes:\n    url: {upstream.url}\n", POLICY,
                            "--admin-listen", f"127.0.0.1:{admin_port}")
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def test_metrics_count_a_known_mix_of_traffic(valet: Valet, admin_port: int) -> None:
    key, _ = valet.new_key("metrics-alice", "m")
    before = scrape(admin_port)
    assert stateless(valet, key, "tools/list", {}).status_code == 200  # tool names become labels
    for i in range(2):
        assert stateless(valet, key, "tools/call", {"name": "echo", "arguments": {"text": f"hi{i}"}}, i).status_code == 200
    denied = stateless(valet, key, "tools/call", {"name": "read_file", "arguments": {"path": "/etc/passwd"}})
    assert denied.status_code == 403
    statuses = [stateless(valet, key, "tools/call", {"name": "add", "arguments": {"a": i, "b": 1}}, i).status_code
                for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert stateless(valet, "vk_bogus", "tools/list", {}).status_code == 401
    # an agent-chosen tool name never becomes a label value
    assert stateless(valet, key, "tools/call", {"name": "made_up_tool_x1", "arguments": {}}).status_code == 403
    expect = {
        ("valet_exchanges_total", (("server", "notes"), ("decision", "allow"))): 6,
        ("valet_exchanges_total", (("server", "notes"), ("decision", "deny"), ("reason", "denied"))): 2,
        ("valet_exchanges_total", (("server", "notes"), ("reason", "rate_limited"))): 1,
        ("valet_exchanges_total", (("decision", "deny"), ("reason", "unknown_key"))): 1,
        ("valet_tool_calls_total", (("tool", "echo"), ("decision", "allow"))): 2,
        ("valet_tool_calls_total", (("tool", "add"), ("decision", "allow"))): 3,
        ("valet_tool_calls_total", (("tool", "add"), ("decision", "deny"))): 1,
        # read_file is hidden from this caller's tools/list, so it was never seen: "other", like the made-up name
        ("valet_tool_calls_total", (("tool", "other"), ("decision", "deny"))): 2,
        ("valet_rate_limit_refusals_total", (("rule", "add-rate"),)): 1,
        ("valet_upstream_latency_seconds_count", (("server", "notes"),)): 6,
        ("valet_proxy_latency_seconds_count", (("server", "notes"),)): 9,
    }
    deadline = time.monotonic() + 15
    while True:  # the last exchange's row completes just after its answer
        after = scrape(admin_port)
        got = {k: sample(after, k[0], **dict(k[1])) - sample(before, k[0], **dict(k[1])) for k in expect}
        if got == expect or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == expect
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    assert "made_up_tool_x1" not in text and "metrics-alice" not in text  # no agent input, no users by default
    assert sample(after, "valet_audit_commit_latency_seconds_count") >= 9
    assert "valet_audit_queue_depth" in after and "valet_open_sessions" in after
    assert "valet_open_streams" in after and "valet_config_reloads_total" in text


def test_config_reloads_are_counted(valet: Valet, admin_port: int) -> None:
    policy = valet.config.parent / "policy.yaml"
    before = sample(scrape(admin_port), "valet_config_reloads_total", outcome="ok")
    policy.write_text(POLICY + "\n# touched\n")
    key, _ = valet.new_key("reload-user", "r")
    deadline = time.monotonic() + 20
    while sample(scrape(admin_port), "valet_config_reloads_total", outcome="ok") == before:
        assert time.monotonic() < deadline, "reload not counted"
        stateless(valet, key, "tools/list", {})  # a request notices the change once it settled
        time.sleep(0.3)


def test_healthz_and_readyz(valet: Valet, admin_port: int) -> None:
    r = httpx.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert {name for name, c in body["checks"].items() if c["ok"]} >= {"config", "audit", "vault"}
    assert httpx.get(f"http://127.0.0.1:{admin_port}/nope", timeout=10).status_code == 404
    assert httpx.post(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).status_code == 405


def test_the_admin_listener_is_off_by_default_and_not_on_the_proxy_port(valet: Valet) -> None:
    r = httpx.get(f"{valet.base}/metrics", timeout=10)
    assert r.status_code in (401, 404) and "valet_exchanges_total" not in r.text


def test_readyz_fails_when_the_audit_log_is_unwritable(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    proxy = start_ops_valet(tmp_path, f"servers:\n  notes:\n    url: {upstream.url}\n", POLICY,
                            "--admin-listen", f"127.0.0.1:{port}")
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        audit = proxy.data_dir / "audit.db"
        audit.rename(proxy.data_dir / "audit.db.moved")  # the log the writer holds is no longer the one on disk
        deadline = time.monotonic() + 20
        while True:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "not ready" and body["checks"]["audit"]["ok"] is False
        assert body["checks"]["config"]["ok"] is True
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200  # it still serves
    finally:
        proxy.stop()
