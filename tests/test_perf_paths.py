"""The per-call fast paths (issue 10 item 2) give exactly what the slow paths gave, and fail closed the same way.

Each fast path here replaced per-call work with a cheaper equivalent: the policy's rules indexed per caller
and target, the chain's converters chosen once, the audited arguments marked where Valet injected them and
scrubbed in one scan, one vault check per exchange, the misplaced-key search skipped after one joined scan,
request headers read in one pass, new audit files in 1 KiB pages. No processes: pure functions and the writer.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http

from addon import filewatch
from addon.audit import chain
from addon.audit.columns import COLUMNS
from addon.audit.exchange import Exchange
from addon.audit.log import PAGE_SIZE, AuditWriter
from addon.config import parse_config
from addon.hooks.authenticate import _nothing_to_find
from addon.hooks.inject import _as_audited
from addon.hooks.parse import _first_values, describe
from addon.hooks.recorder import _settled
from addon.policy import decisions
from addon.policy.decisions import Call, PolicySet
from addon.policy.files import load_policies
from addon.protocol.jsonrpc import parse_body
from addon.protocol.keyleak import misplaced_key
from addon.secrets.scrubber import Scrubber

# ------------------------------------------------------------------ policy: candidates per caller and target

CONFIG = parse_config("""
servers:
  files: {url: "http://h/mcp"}
  other: {url: "http://h/other"}
  api: {url: "http://h/v1", kind: http}
""")

POLICY = """
servers:
  files: {default: deny}
  other: {default: allow}
rules:
  - {id: no-etc, effect: deny, tools: [read*], arguments: {path: {under: /etc}}}
  - {id: no-bob, effect: deny, users: [bob], tools: [write]}
  - {id: no-delete, effect: deny, tools: [delete_*]}
  - {id: robots-read, effect: allow, agents: [robot*], tools: [read]}
  - {id: docs, effect: allow, tools: [read, read_file], arguments: {path: {under: /srv/docs}}}
  - {id: small, effect: allow, tools: [calc], arguments: {n: {max: 10}}}
  - {id: any-write, effect: allow, tools: [write]}
  - {id: prompts, effect: allow, methods: ["prompts/*"]}
  - {id: api-get, effect: allow, servers: [api], http: {methods: [GET], paths: ["/v1/items/*"]}}
  - {id: calc-rate, tools: [calc], rate: 5/minute, per: [user, "argument:n"]}
"""


def _policy(tmp_path: Path) -> PolicySet:
    path = tmp_path / "00.yaml"
    path.write_text(POLICY)
    return PolicySet(load_policies([path], CONFIG))


def _uncached(policy: PolicySet, call: Call) -> decisions.Decision:
    """The decision as the rules say it, every rule visited (what decide() did before the index)."""
    switched = policy._switched_off(call)
    if switched is not None:
        return decisions.Decision(False, "disabled", switched)
    if not call.is_http_api and (call.method is None or call.method in decisions.HOUSEKEEPING):
        return decisions.Decision(True, "housekeeping", None)
    call, rewrites = policy._normalized(call)
    for m in policy.denies:
        if m.identity(call) and m.target(call) and m.arguments(call):
            return decisions.Decision(False, "denied", m.rule.id)
    for m in policy.allows:
        if m.identity(call) and m.target(call) and m.arguments(call):
            return decisions.Decision(True, "allowed", m.rule.id, rewrites)
    default = policy.sources.defaults.get(call.server, "deny")
    return decisions.Decision(default == "allow", "default", f"default:{call.server}")


CALLS = [
    Call(user, agent, "k1", server, "tools/call", tool, args)
    for user, agent, server, (tool, args) in itertools.product(
        ["alice", "bob"], ["agent", "robot-1"], ["files", "other"],
        [("read", {"path": "/srv/docs/a"}), ("read", {"path": "/etc/passwd"}), ("read", {"path": "/srv//docs/./b"}),
         ("read", {"path": "/srv/%2e%2e/x"}), ("read", {"PATH": "/etc/x"}), ("read_file", {"path": "/srv/docs/x"}),
         ("write", {}), ("delete_all", {}), ("DELETE_ALL", None), ("calc", {"n": 3}), ("calc", {"n": 30}),
         ("calc", {"N": 3}), ("ns.delete_x", {}), ("unknown", None)])
] + [
    Call("alice", "agent", "k1", "files", method, None) for method in ["prompts/get", "resources/read", "ping", None]
] + [
    Call("alice", "agent", "k1", "api", http_method=m, http_path=p, is_http_api=True)
    for m, p in [("GET", "/v1/items/1"), ("POST", "/v1/items/1"), ("GET", "/v1/other")]
]


def test_the_rule_index_decides_every_call_as_visiting_every_rule_does(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    for _ in range(2):  # the second round answers from the index
        for call in CALLS:
            assert policy.decide(call) == _uncached(policy, call), call
    assert policy._candidates, "the index was used"


def test_rate_rules_and_visibility_come_from_the_same_index(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    for call in CALLS:
        expected = [r for r in policy.rates
                    if r.matcher.identity(call) and r.matcher.target(call) and r.matcher.arguments(call)]
        assert policy.rate_rules(call) == expected
        visible = any(m.identity(call) and m.target(call) for m in policy.allows) and not any(
            m.identity(call) and m.target(call) and not m.checks for m in policy.denies)
        if not any(m.identity(call) and m.target(call) for m in policy.allows):
            visible = not any(m.identity(call) and m.target(call) and not m.checks for m in policy.denies) and \
                policy.sources.defaults.get(call.server, "deny") == "allow"
        if policy._switched_off(call) is None:
            assert policy.tool_visible(call) is visible, call


def test_the_rule_index_is_bounded_and_skips_long_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy(tmp_path)
    monkeypatch.setattr(decisions, "MAX_CANDIDATE_SETS", 8)
    for i in range(50):
        policy.decide(Call("alice", f"agent-{i}", "k1", "files", "tools/call", "read", {"path": "/srv/docs/a"}))
        assert len(policy._candidates) <= 8
    policy._candidates.clear()
    long_method = "prompts/" + "x" * 5000
    assert policy.decide(Call("alice", "agent", "k1", "files", long_method, None)).rule == "prompts"
    assert not policy._candidates, "a call naming long strings is judged without being remembered"


def test_a_policy_path_rewrite_comes_from_the_normalization_alone(tmp_path: Path) -> None:
    """The argument check no longer collects rewrites (they were never used): decide() still forwards the
    normalized form, and only for an argument some rule reads as a path."""
    policy = _policy(tmp_path)
    decision = policy.decide(Call("alice", "agent", "k1", "files", "tools/call", "read", {"path": "/srv//docs/./a"}))
    assert decision.allowed and decision.rule == "docs" and decision.rewrites == (("path", "/srv/docs/a"),)
    assert policy.decide(Call("alice", "agent", "k1", "files", "tools/call", "calc", {"n": 3})).rewrites == ()
    matcher = next(m for m in policy.allows if m.rule.id == "docs")
    assert matcher.arguments(Call("alice", "agent", "k1", "files", "tools/call", "read",
                                  {"path": "/srv/docs/a"})) is True


# ------------------------------------------------------------------ the chain: converters chosen once

TEXTS: list[Any] = [None, "", "text", "ünïcode \u2028 \"q\"", 7, 7.5, True]
NUMBERS: list[Any] = [None, 7, 7.5, True, 0, "12"]


@pytest.mark.parametrize("seed", range(6))
def test_the_chain_message_is_byte_for_byte_what_verify_recomputes(seed: int) -> None:
    from addon.audit.columns import COLUMN_TYPES

    values = [(NUMBERS if c in COLUMN_TYPES else TEXTS)[(i * 7 + seed) % (6 if c in COLUMN_TYPES else 7)]
              for i, c in enumerate(COLUMNS)]
    row = tuple(values)
    request = [row[i] for i in chain.REQUEST_INDEX]
    uses = [("NAME", "fp", "shared", "srv", "host"), ("B", None, 3, "srv", "h")]
    assert chain._fast_message("p" * 64, 3, 9, "request", chain._REQUEST_CONVERTERS, request, uses) == \
        chain.message("p" * 64, 3, 9, "request", chain.REQUEST_FIELDS, request, uses)
    outcome = [row[i] for i in chain.OUTCOME_INDEX_IN_ROW]
    assert chain._fast_message("q" * 64, 4, 9, "outcome", chain._OUTCOME_CONVERTERS, outcome, None) == \
        chain.message("q" * 64, 4, 9, "outcome", chain.OUTCOME_FIELDS, outcome)


def test_an_exchange_gives_the_writer_the_same_row_as_a_tuple() -> None:
    exchange = Exchange(mode="reverse", http_method="POST", http_path="/mcp")
    exchange.key_id, exchange.tool, exchange.bytes_in = "k", "t", 12
    row = exchange.request_row()
    assert exchange.values("pending") == (*(row[c] for c in COLUMNS if c != "state"), "pending")


# ------------------------------------------------------------------ audited arguments: markers, one scan

SECRET = "sk-live-0123456789abcdef"
NUMERIC_SECRET = "4111111111111111"


def test_injected_arguments_are_marked_where_valet_put_them() -> None:
    arguments = {"text": "hi", "api_key": SECRET, "auth": f"Bearer {SECRET}"}
    audited = _as_audited(arguments, {"api_key": "${secret:API_KEY}", "auth": "Bearer ${secret:API_KEY}"})
    assert audited == {"text": "hi", "api_key": "[REDACTED:API_KEY]", "auth": "Bearer [REDACTED:API_KEY]"}
    assert list(audited) == list(arguments), "same members, same order"
    assert arguments["api_key"] == SECRET, "what is forwarded is untouched"


def _exchange() -> Exchange:
    return Exchange(mode="reverse", http_method="POST", http_path="/mcp")


def test_what_the_agent_sent_itself_is_scrubbed_in_one_scan_numbers_too() -> None:
    scrubber = Scrubber([("API_KEY", SECRET), ("CARD", NUMERIC_SECRET)])
    body = parse_body(('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":'
                       f'{{"note":"mine: {SECRET}","n":{NUMERIC_SECRET},"esc":"\\u0073k-live-0123456789abcdef",'
                       '"api_key":"x"}}}').encode(), 1 << 20)
    exchange = _exchange()
    audited = {0: _as_audited(body.messages[0].arguments, {"api_key": "${secret:API_KEY}"})}
    describe(exchange, body, scrubber.bytes, audited)
    assert exchange.arguments is not None
    assert SECRET not in exchange.arguments and NUMERIC_SECRET not in exchange.arguments
    import json

    row = json.loads(exchange.arguments)  # still JSON: a number that is a secret becomes a marker string
    assert row == {"note": "mine: [REDACTED:API_KEY]", "n": "[REDACTED:CARD]", "esc": "[REDACTED:API_KEY]",
                   "api_key": "[REDACTED:API_KEY]"}


def test_a_batch_description_is_marked_and_scrubbed_too() -> None:
    scrubber = Scrubber([("API_KEY", SECRET)])
    body = parse_body(('[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1}}},'
                       '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"u","arguments":'
                       f'{{"b":"{SECRET}"}}}}}}]').encode(), 1 << 20)
    exchange = _exchange()
    describe(exchange, body, scrubber.bytes, {0: {"a": 1, "k": "[REDACTED:API_KEY]"}})
    assert exchange.rpc_method == "batch"
    assert exchange.arguments == ('[{"method":"tools/call","id":1,"tool":"t","arguments":{"a":1,"k":"[REDACTED:API_KEY]"}},'
                                  '{"method":"tools/call","id":2,"tool":"u","arguments":{"b":"[REDACTED:API_KEY]"}}]')


# ------------------------------------------------------------------ one vault check per exchange

class _Store:
    def __init__(self) -> None:
        self.checks = 0
        self.reloads = 0
        self.changed = False

    def stale(self) -> bool:
        self.checks += 1
        return self.changed

    def reload(self) -> None:
        self.reloads += 1
        self.changed = False


def test_a_store_is_checked_once_per_exchange_and_again_for_the_next() -> None:
    store = _Store()

    async def scenario() -> None:
        first, second = object(), object()
        await filewatch.reload_if_stale(store, first)
        store.changed = True  # written between two stages of the first request: the next one sees it
        await filewatch.reload_if_stale(store, first)
        assert (store.checks, store.reloads) == (1, 0)
        await filewatch.reload_if_stale(store, second)
        assert (store.checks, store.reloads) == (2, 1)
        await filewatch.reload_if_stale(store)  # no exchange: always checked
        assert store.checks == 3

    asyncio.run(scenario())


def test_a_plain_file_changed_in_place_is_still_seen(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"k" * 120)
    first = filewatch.signature(path)
    assert filewatch.signature(path) == first  # from the remembered "not SQLite" state
    with open(path, "r+b") as out:  # same inode, same size
        out.write(b"j" * 120)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000))
    assert filewatch.signature(path) != first


def test_a_file_that_becomes_sqlite_in_place_counts_its_commits(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    path.write_bytes(b"x" * 200)
    filewatch.signature(path)
    path.unlink()
    conn = sqlite3.connect(path)  # a new file at the path (a new inode): noticed within REOPEN_SECONDS
    conn.execute("CREATE TABLE t (a)")
    conn.commit()
    time.sleep(filewatch.REOPEN_SECONDS * 1.5)
    before = filewatch.signature(path)
    assert before[3] > 0, "the SQLite change counter is read"
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    assert filewatch.signature(path)[3] > before[3]


# ------------------------------------------------------------------ misplaced keys: the joined pre-scan

def _fields(headers: list[tuple[str, str]]) -> http.Headers:
    return http.Headers([(n.encode(), v.encode("utf-8", "surrogateescape")) for n, v in headers])


KEY = "vk_0123456789ab_" + "A" * 43


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ([("x-k", KEY)], "/mcp"),
        ([("x-k", KEY.upper())], "/mcp"),
        ([("x-k", "%76k_0123456789ab_" + "A" * 43)], "/mcp"),
        ([("x-k", "v%6B_0123456789ab_AAAAAAAAAAAA")], "/mcp"),
        ([("x-auth", "Basic " + __import__("base64").b64encode(f"{KEY}:".encode()).decode())], "/mcp"),
        ([("x-auth", "basic " + __import__("base64").b64encode(f"u:{KEY}".encode()).decode())], "/mcp"),
        ([("x-k", "v\u212a_0123456789ab_AAAAAAAAAAAA")], "/mcp"),  # KELVIN SIGN folds to k
        ([(KEY, "1")], "/mcp"),
        ([], f"/mcp?token={KEY}"),
        ([], "/mcp?token=vk_0123456789ab+" + "A" * 20),
        ([], f"/{KEY}/mcp"),
    ],
)
def test_the_joined_pre_scan_never_skips_a_key_the_full_search_finds(headers: list[tuple[str, str]], path: str) -> None:
    request = http.Request.make("POST", f"http://h{path}", b"", _fields(headers))
    found = misplaced_key(None, request.headers.items(multi=True), request.query.items(multi=True),
                          request.path.partition("?")[0])
    assert not _nothing_to_find(request.headers.fields, request.data.path) or found is None
    if found is not None:
        assert not _nothing_to_find(request.headers.fields, request.data.path)


def test_the_joined_pre_scan_lets_ordinary_requests_through() -> None:
    request = http.Request.make("POST", "http://h/mcp?x=1", b"", _fields([
        ("content-type", "application/json"), ("accept", "application/json, text/event-stream"),
        ("mcp-session-id", "0123456789abcdef"), ("user-agent", "python-httpx/0.28")]))
    assert _nothing_to_find(request.headers.fields, request.data.path)


# ------------------------------------------------------------------ request headers in one pass

def test_headers_read_in_one_pass_are_what_mitmproxy_gives() -> None:
    request = http.Request.make("POST", "http://h/mcp", b"", _fields([
        ("Content-Type", "application/json; charset=utf-8"), ("MCP-Method", "tools/call"), ("mcp-method", "x"),
        ("X-Bytes", "\u00ff\u00fe")]))
    request.headers.fields = (*request.headers.fields, (b"X-Raw", b"\xff\xfeok"))
    values = _first_values(request.headers.fields)
    for name in ["content-type", "mcp-method", "x-raw", "x-bytes", "mcp-name"]:
        assert values.get(name) == request.headers.get(name), name


# ------------------------------------------------------------------ the writer

def test_a_new_audit_file_gets_small_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    new = AuditWriter(tmp_path / "new" / "audit.db", recover=True)
    new.close()
    assert sqlite3.connect(tmp_path / "new" / "audit.db").execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    old_path = tmp_path / "old" / "audit.db"
    old_path.parent.mkdir()
    conn = sqlite3.connect(old_path)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("CREATE TABLE placeholder (a)")
    conn.commit()
    conn.close()
    old = AuditWriter(old_path, recover=True)
    old.close()
    assert sqlite3.connect(old_path).execute("PRAGMA page_size").fetchone()[0] == 4096


def test_a_commit_not_done_in_time_settles_as_not_committed() -> None:
    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        late: asyncio.Future[bool] = loop.create_future()
        await _settled(late, 0.05)
        loop.call_soon(lambda: None if late.done() else late.set_result(True))  # the writer's guard
        on_time: asyncio.Future[bool] = loop.create_future()
        loop.call_later(0.01, on_time.set_result, True)
        await _settled(on_time, 5.0)
        return late.result(), on_time.result()

    assert asyncio.run(scenario()) == (False, True)
