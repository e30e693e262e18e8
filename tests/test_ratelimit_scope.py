"""The cap on distinct rate budgets is scoped by the caller's identity (review finding F15).

Before: one table per rule, filled by every caller, so one agent spraying distinct argument values until the
rule held ``max_keys_per_rule`` budgets got every other user's new values refused ``rate_limited`` for the
rule's whole window. Now each (rule, identity) has its own table, where the identity is the user/key/agent
parts of the rule's ``per``; the number of identities per rule has a bound of its own (identities are issued
by the operator, never made up by an agent); a rule with no identity in ``per`` keeps one table, and
``valet policy check`` warns when any caller can fill it with argument values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from addon.policy.decisions import Call, PolicySet
from addon.policy.files import load_policies
from addon.policy.ratelimit import Full, KeyTable, RateLimiter, identity_of, shared_cap_warnings

from .support import ROOT, VALET_CLI, Upstream, Valet, assert_clean_log, start_valet
from .test_e2e_policy import raw_call
from .test_policy_semantics import CONFIG

ALICE, BOB, CAROL = ("user=alice",), ("user=bob",), ("user=carol",)


def policy(tmp_path: Path, text: str) -> PolicySet:
    path = tmp_path / "00.yaml"
    path.write_text(text)
    return PolicySet(load_policies([path], CONFIG))


def call(user: str, q: str, *, agent: str = "agent", key: str = "k1") -> Call:
    return Call(user, agent, key, "files", "tools/call", "t", {"q": q})


# --- the table ----------------------------------------------------------------------------------------------

def test_each_identity_has_its_own_cap() -> None:
    table = KeyTable(cap=2)
    assert table.claim("r", ("r", "a"), 60, now=0, identity=ALICE) is None
    assert table.claim("r", ("r", "b"), 60, now=1, identity=ALICE) is None
    assert table.claim("r", ("r", "c"), 60, now=2, identity=ALICE) == Full(pytest.approx(58))  # her own cap
    assert table.claim("r", ("r", "c"), 60, now=3, identity=BOB) is None, "alice's full table is hers alone"
    assert table.claim("r", ("r", "a"), 60, now=4, identity=BOB) is None, "the same values, bob's own budgets"
    assert table.claim("r", ("r", "d"), 60, now=5, identity=BOB) == Full(pytest.approx(58))
    assert table.claim("r", ("r", "a"), 60, now=7, identity=ALICE) is None, "a budget she holds stays usable"
    assert table.claim("r", ("r", "c"), 60, now=61, identity=ALICE) is None, "b's window has passed"
    assert (table.count("r", ALICE), table.count("r", BOB), table.count("r")) == (2, 2, 4)


def test_the_identity_bound_counts_callers_not_values() -> None:
    table = KeyTable(cap=1000, max_identities=2)
    for i in range(500):  # many values from one caller never touch the identity bound
        assert table.claim("r", ("r", str(i)), 60, now=0, identity=ALICE) is None
    assert table.claim("r", ("r", "x"), 60, now=10, identity=BOB) is None
    refused = table.claim("r", ("r", "x"), 60, now=20, identity=CAROL)
    assert refused == Full(pytest.approx(40), identities=True), "until alice's newest budget has expired"
    assert table.claim("r", ("r", "y"), 60, now=20, identity=BOB) is None, "known callers go on"
    assert table.claim("other", ("other", "x"), 60, now=20, identity=CAROL) is None, "bounds are per rule"
    assert table.claim("r", ("r", "x"), 60, now=60, identity=CAROL) is None, "alice's table expired whole"
    assert table.identities("r") == 2 and table.count("r", ALICE) == 0


def test_a_refused_caller_does_not_keep_an_expired_table_alive() -> None:
    """Identities are ordered by their newest budget: a refusal (no budget opened) must not move a table
    behind one that expires later, or the identity bound would count a caller whose budgets are all gone."""
    table = KeyTable(cap=1, max_identities=2)
    assert table.claim("r", ("r", "a"), 60, now=0, identity=ALICE) is None
    assert table.claim("r", ("r", "a"), 60, now=10, identity=BOB) is None
    assert table.claim("r", ("r", "b"), 60, now=20, identity=ALICE) is not None  # alice is at her cap
    assert table.claim("r", ("r", "a"), 60, now=61, identity=CAROL) is None, "alice's budgets have all expired"


def test_without_an_identity_the_rule_shares_one_table() -> None:
    table = KeyTable(cap=2, max_identities=1)
    assert table.claim("r", ("r", "a"), 60, now=0) is None
    assert table.claim("r", ("r", "b"), 60, now=0) is None
    assert table.claim("r", ("r", "c"), 60, now=0) == Full(60)
    assert table.admit("r", ("r", "c"), 60, now=30) == pytest.approx(30)


def test_memory_stays_within_identities_times_cap() -> None:
    table = KeyTable(cap=50, max_identities=20)
    for caller in range(40):
        for value in range(200):
            table.claim("r", ("r", str(value)), 3600, now=caller, identity=(f"user=u{caller}",))
    assert table.identities("r") == 20 and table.count("r") == 20 * 50


def test_the_identity_is_the_user_key_and_agent_parts_of_per(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - id: r\n    tools: [t]\n    rate: 5/minute\n"
                         "    per: [argument:q, agent, server, user]\n")
    (rule,) = p.rate_rules(call("alice", "x"))
    parts = rule.identifiers(call("alice", "x", agent="bot"))
    assert identity_of(rule, parts) == ("agent=bot", "user=alice")


# --- the limiter, with memory and Redis storage ---------------------------------------------------------------

@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    return "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")


def test_one_users_spray_leaves_other_users_served(tmp_path: Path, storage: str) -> None:
    rule = f"per-user-q-{uuid.uuid4().hex[:8]}"  # Redis outlives a test: a rule of its own
    p = policy(tmp_path, f"rules:\n  - id: {rule}\n    tools: [t]\n    rate: 100/hour\n    per: [user, argument:q]\n")
    limiter = RateLimiter(storage, max_keys_per_rule=3)

    async def run() -> tuple[list[tuple[bool, bool]], list[bool]]:
        alice = []
        for i in range(5):
            c = call("alice", f"spray-{i}")
            verdict = await limiter.hit(p.rate_rules(c), c)
            alice.append((verdict.allowed, verdict.too_many_keys))
        bob = []
        for i in range(3):
            c = call("bob", f"note-{i}", key="k2")
            bob.append((await limiter.hit(p.rate_rules(c), c)).allowed)
        return alice, bob

    alice, bob = asyncio.run(run())
    assert alice == [(True, False)] * 3 + [(False, True)] * 2
    assert bob == [True] * 3


def test_a_rule_past_its_identity_bound_refuses_new_callers_and_says_so(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    p = policy(tmp_path, "rules:\n  - id: per-user\n    tools: [t]\n    rate: 100/hour\n")
    limiter = RateLimiter("memory://", max_identities_per_rule=2)

    async def run() -> list[tuple[bool, bool]]:
        out = []
        for user in ("alice", "bob", "carol", "dave", "alice"):
            c = call(user, "x")
            verdict = await limiter.hit(p.rate_rules(c), c)
            out.append((verdict.allowed, verdict.too_many_identities))
        return out

    with caplog.at_level(logging.WARNING, logger="addon.policy.ratelimit"):
        assert asyncio.run(run()) == [(True, False), (True, False), (False, True), (False, True), (True, False)]
    warnings = [r.getMessage() for r in caplog.records if "max_identities_per_rule" in r.getMessage()]
    assert len(warnings) == 1 and "'per-user'" in warnings[0], "once per rule, naming it"
    assert "carol" not in warnings[0] and "dave" not in warnings[0]


# --- valet policy check warns about a cap any caller can fill -------------------------------------------------

def test_shared_cap_warnings_name_argument_rules_without_an_identity(tmp_path: Path) -> None:
    p = policy(tmp_path, """
rules:
  - id: shared-q
    tools: [t]
    rate: 10/minute
    per: [argument:q]
  - id: mine-q
    tools: [t]
    rate: 10/minute
    per: [key, argument:q]
  - id: per-server
    rate: 10/minute
    per: [server]
  - id: allow-q
    effect: allow
    tools: [t]
""")
    warnings = shared_cap_warnings(p.sources)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{tmp_path / '00.yaml'}:3: ") and "'shared-q'" in warnings[0], "file:line"
    assert "argument:q" in warnings[0] and "add user (or key) to per" in warnings[0]


# --- end to end ----------------------------------------------------------------------------------------------

RULES = """
servers:
  notes: {default: allow}
rules:
  - id: RULE
    servers: [notes]
    tools: [echo]
    rate: 100/hour
    per: [user, "argument:text"]
"""


@pytest.fixture
def capped(upstream: Upstream, tmp_path: Path, storage: str) -> Iterator[tuple[Valet, str]]:
    config = (f"servers:\n  notes:\n    url: {upstream.url}\n"
              f"rate_limits:\n  storage: {storage}\n  max_keys_per_rule: 3\n")
    rule = f"echo-budget-{uuid.uuid4().hex[:8]}"  # Redis outlives a test: a rule of its own
    proxy = start_valet(tmp_path, None, config_text=config, policy=RULES.replace("RULE", rule))
    yield proxy, rule
    assert proxy.stop() == 0
    assert_clean_log(proxy)


@pytest.mark.e2e
def test_alice_fills_her_table_and_bob_is_still_served(capped: tuple[Valet, str], upstream: Upstream) -> None:
    valet, rule = capped
    alice, alice_id = valet.new_key("alice", "sprayer")
    bob, _ = valet.new_key("bob", "victim")
    assert [raw_call(valet, alice, "echo", {"text": f"spray-{i}"}, i).status_code for i in range(3)] == [200] * 3

    before = upstream.requests_seen()
    over = raw_call(valet, alice, "echo", {"text": "spray-3"}, 3)
    assert over.status_code == 429 and upstream.requests_seen() == before, "refused before the upstream"
    error = over.json()["error"]
    assert error["code"] == -32029 and error["data"]["reason"] == "rate_limited" and error["data"]["rule"] == rule
    assert "holds too many distinct budgets" in error["message"]
    assert 3000 < int(over.headers["retry-after"]) <= 3601, "until her oldest budget's hour has passed"
    row = valet.rows("key_id = ? AND reason = 'rate_limited'", (alice_id,))[0]
    assert row["http_status"] == 429 and row["rule"] == rule

    served = [raw_call(valet, bob, "echo", {"text": f"note from bob {i}"}, 10 + i) for i in range(3)]
    assert [r.status_code for r in served] == [200] * 3, [r.text[:200] for r in served]
    assert raw_call(valet, alice, "echo", {"text": "spray-0"}, 20).status_code == 200, "her own budgets go on"


def test_policy_check_warns_about_a_cap_any_caller_can_fill(tmp_path: Path) -> None:
    config = tmp_path / "valet.yaml"
    config.write_text("servers:\n  notes:\n    url: http://127.0.0.1:9/mcp\npolicy_files: [main.yaml]\n")
    (tmp_path / "main.yaml").write_text(RULES.replace("RULE", "mine"))
    shared = tmp_path / "shared.yaml"
    shared.write_text("rules:\n  - id: per-text\n    servers: [notes]\n    tools: [echo]\n    rate: 10/minute\n"
                      "    per: [argument:text]\n")

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VALET_CONFIG", "VALET_DATA_DIR")}
        return subprocess.run([VALET_CLI, "policy", "check", "--config", str(config), *extra], cwd=ROOT,
                              env={**env, "VALET_DATA_DIR": str(tmp_path / "data")}, capture_output=True,
                              text=True, timeout=60)

    quiet = check()
    assert quiet.returncode == 0 and quiet.stdout.startswith("ok:") and quiet.stderr == "", quiet.stderr
    warned = check(str(shared))
    assert warned.returncode == 0 and warned.stdout.startswith("ok:"), warned.stderr
    assert warned.stderr.startswith(f"WARNING: {shared}:2: ") and "'per-text'" in warned.stderr, warned.stderr
