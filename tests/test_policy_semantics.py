"""Policy semantics as documented, each with a test that fails on the engine before them.

Deny rules ignore case in argument checks and match tools behind namespaces; allow rules never treat
an undecidable argument as a match; scoped rules do not reach outside their scope; patterns run on RE2
after the cheap checks; rate keys are hashes with a cap per rule.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from addon.config import ConfigError, parse_config
from addon.policy.arguments import Check, compile_pattern, normalize_fs_path
from addon.policy.decisions import Call, PolicySet, argument_key, visible_tools
from addon.policy.files import load_policies, policy_paths
from addon.policy.ratelimit import KeyTable, RateLimiter

CONFIG = parse_config("""
servers:
  files: {url: "http://h/mcp"}
  other: {url: "http://h/other"}
  api: {url: "http://h/v1", kind: http}
""")


def policy(tmp_path: Path, text: str) -> PolicySet:
    path = tmp_path / "00.yaml"
    path.write_text(text)
    return PolicySet(load_policies([path], CONFIG))


def call(tool: str | None, args: dict | None = None, *, user: str = "alice", agent: str = "agent",
         key: str = "k1", server: str = "files", method: str = "tools/call") -> Call:
    return Call(user, agent, key, server, method, tool, args)


# --- deny rules ignore case in argument checks, and see through namespaces -----------------------------

DENY = """
servers:
  files: {default: allow}
rules:
  - id: no-private
    effect: deny
    tools: ["*"]
    arguments:
      path: {under: /srv/Private}
  - id: no-prod
    effect: deny
    tools: [deploy]
    arguments:
      env: {one_of: [prod, 7]}
  - id: no-drop
    effect: deny
    tools: [sql]
    arguments:
      q: {regex: ".*drop table.*"}
  - id: no-wipe
    effect: deny
    tools: [delete_everything, "purge_*"]
"""


@pytest.mark.parametrize(
    ("tool", "args", "rule"),
    [
        ("read", {"path": "/srv/private/k"}, "no-private"),
        ("read", {"path": "/SRV/PRIVATE"}, "no-private"),
        ("read", {"path": "/srv/Private/x"}, "no-private"),
        ("deploy", {"env": "PROD"}, "no-prod"),
        ("deploy", {"env": "Prod"}, "no-prod"),
        ("deploy", {"env": 7}, "no-prod"),
        ("deploy", {"env": "7"}, "no-prod"),  # pydantic and Number() read "7" as 7 (review 3, G8)
        ("sql", {"q": "please DROP TABLE users"}, "no-drop"),
        ("delete_everything", {}, "no-wipe"),
        ("notes__delete_everything", {}, "no-wipe"),
        ("notes.delete_everything", {}, "no-wipe"),
        ("notes/delete_everything", {}, "no-wipe"),
        ("a__b.c/d__Delete_Everything", {}, "no-wipe"),
        ("x__purge_all", {}, "no-wipe"),
    ],
)
def test_deny_rules_ignore_case_and_namespaces(tmp_path: Path, tool: str, args: dict, rule: str) -> None:
    decision = policy(tmp_path, DENY).decide(call(tool, args))
    assert (decision.allowed, decision.rule) == (False, rule)


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("read", {"path": "/srv/privates"}),
        ("deploy", {"env": "staging"}),
        ("deploy", {"env": "8"}),  # a numeric string is its number (review 3, G8): 8 is not 7
        ("deploy", {"env": True}),
        ("sql", {"q": "select 1"}),
        ("delete_everything_else", {}),  # a namespace is a prefix, not any prefix or suffix
        ("xdelete_everything", {}),
        ("notes_delete_everything", {}),  # one underscore is part of a name, not a namespace separator
    ],
)
def test_deny_rules_do_not_overreach(tmp_path: Path, tool: str, args: dict) -> None:
    decision = policy(tmp_path, DENY).decide(call(tool, args))
    assert (decision.allowed, decision.rule) == (True, "default:files")


def test_namespaced_deny_hides_the_tool_from_tools_list(tmp_path: Path) -> None:
    p = policy(tmp_path, DENY)
    visible = visible_tools(p, call(None))
    assert not visible("notes__delete_everything")
    assert visible("notes__read")


ALLOW = """
servers:
  files: {default: deny}
rules:
  - id: read-docs
    effect: allow
    tools: [read, "Get*"]
    arguments:
      path: {under: /srv/Docs}
  - id: pick
    effect: allow
    tools: [pick]
    arguments:
      color: {one_of: [Red, 1]}
  - id: match
    effect: allow
    tools: [match]
    arguments:
      q: {regex: "[a-z]+"}
"""


@pytest.mark.parametrize(
    ("tool", "args", "allowed"),
    [
        ("read", {"path": "/srv/Docs/a"}, True),
        ("read", {"path": "/srv/docs/a"}, False),  # allow rules keep case exactly
        ("notes__read", {"path": "/srv/Docs/a"}, False),  # and match no namespace
        ("Getter", {"path": "/srv/Docs/a"}, True),
        ("getter", {"path": "/srv/Docs/a"}, False),
        ("pick", {"color": "Red"}, True),
        ("pick", {"color": "red"}, False),
        ("pick", {"color": 1}, True),
        ("pick", {"color": 1.0}, True),
        ("pick", {"color": True}, False),  # True is not 1
        ("pick", {"color": "1"}, False),
        ("match", {"q": "abc"}, True),
        ("match", {"q": "ABC"}, False),
    ],
)
def test_allow_rules_keep_case_and_types(tmp_path: Path, tool: str, args: dict, allowed: bool) -> None:
    assert policy(tmp_path, ALLOW).decide(call(tool, args)).allowed is allowed


def test_one_of_true_is_not_one(tmp_path: Path) -> None:
    p = policy(tmp_path, "servers:\n  files: {default: deny}\nrules:\n  - id: t\n    effect: allow\n"
                         "    tools: [t]\n    arguments:\n      f: {one_of: [true]}\n")
    assert p.decide(call("t", {"f": True})).allowed
    assert not p.decide(call("t", {"f": 1})).allowed
    assert not p.decide(call("t", {"f": 1.0})).allowed


# --- an allow rule never treats "undecidable" as a match ------------------------------------------------

@pytest.mark.parametrize(
    "path",
    ["relative", "/srv/Docs/%2e%2e/x", "/srv/Docs/%252e%252e/x", "/srv/Docs/%c0%ae%c0%ae/x",
     "/srv/Docs/%u2215x", "/srv/Docs／x", "/srv/Docs/x.", "/srv/Docs/x ", "/srv/Docs/..../x", 7, None],
)
def test_an_allow_rule_does_not_allow_what_it_cannot_decide(tmp_path: Path, path: object) -> None:
    """No catch-all deny here: only the allow rule stands between the call and the default deny."""
    decision = policy(tmp_path, ALLOW).decide(call("read", {"path": path}))
    assert (decision.allowed, decision.rule) == (False, "default:files")


def test_undecidable_answers_are_none_and_rules_treat_them_opposite_ways() -> None:
    check = Check(under="/srv")
    assert check.evaluate(True, "/srv/%2e%2e/etc") == (None, None)
    from addon.policy.decisions import _Matcher
    from addon.policy.files import Rule

    rule = Rule.model_validate({"id": "r", "effect": "allow", "tools": ["t"], "arguments": {"p": {"under": "/srv"}}})
    undecidable = call("t", {"p": "/srv/x%2f"})
    assert _Matcher(rule, restrictive=False).arguments(undecidable) is False
    assert _Matcher(rule, restrictive=True).arguments(undecidable) is True


@pytest.mark.parametrize(
    "value",
    ["/a/%2e%2e", "/a/%252e%252e/b", "/a/%c0%ae%c0%ae", "/a/%u002e", "/a/%25", "/a/b./c", "/a/b /c", "/a/...",
     "/ａ", "/a\uff0fb", "/a\u2024\u2024"],
)
def test_paths_any_decoder_could_read_differently_are_undecidable(value: str) -> None:
    assert normalize_fs_path(value) is None


@pytest.mark.parametrize(("value", "normalized"), [("/a/./b/../c", "/a/c"), ("/a/%zz", "/a/%zz"), ("/a/.b", "/a/.b")])
def test_plain_paths_still_normalize(value: str, normalized: str) -> None:
    assert normalize_fs_path(value) == normalized


# --- scopes: a rule applies inside its scope and nowhere else ----------------------------------------------

SCOPED = """
servers:
  files: {default: allow}
  other: {default: allow}
  api: {default: allow}
rules:
  - id: by-server
    effect: deny
    servers: [files]
    tools: [s]
  - id: by-agent
    effect: deny
    agents: [bot-*]
    tools: [a]
  - id: by-key
    effect: deny
    keys: [k9]
    tools: [k]
  - id: by-user
    effect: deny
    users: [bob]
    tools: [u]
  - id: by-method
    effect: deny
    methods: [resources/*]
  - id: http-only
    effect: deny
    http: {paths: ["/**"]}
"""


@pytest.mark.parametrize(
    ("the_call", "rule"),
    [
        (call("s"), "by-server"),
        (call("s", server="other"), "default:other"),
        (call("a", agent="bot-1"), "by-agent"),
        (call("a", agent="human"), "default:files"),
        (call("k", key="k9"), "by-key"),
        (call("k", key="k1"), "default:files"),
        (call("u", user="bob"), "by-user"),
        (call("u", user="alice"), "default:files"),
        (call(None, method="resources/read"), "by-method"),
        (call(None, method="prompts/get"), "default:files"),
        (call("anything"), "default:files"),  # an http rule never judges a JSON-RPC call
        (Call("alice", "a", "k1", "api", http_method="GET", http_path="/x", is_http_api=True), "http-only"),
    ],
)
def test_scoped_rules_stay_in_scope(tmp_path: Path, the_call: Call, rule: str) -> None:
    assert policy(tmp_path, SCOPED).decide(the_call).rule == rule


def test_allow_http_path_globs_keep_case(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - id: r\n    effect: allow\n    servers: [api]\n"
                         "    http: {methods: [GET], paths: [/v1/Items/*]}\n")
    http = lambda path: Call("alice", "a", "k1", "api", http_method="GET", http_path=path, is_http_api=True)  # noqa: E731
    assert p.decide(http("/v1/Items/1")).allowed
    assert not p.decide(http("/v1/items/1")).allowed


# --- numbers: min and max each on their own ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("bounds", "value", "holds"),
    [
        ("{min: 2}", 1, False), ("{min: 2}", 2, True), ("{min: 2}", 1e9, True), ("{min: 2}", "3", False),
        ("{min: 2}", True, False), ("{max: 5}", 6, False), ("{max: 5}", -1e9, True), ("{max: 5}", None, False),
        ("{min: 1, max: 3}", 0.5, False), ("{min: 1, max: 3}", 3, True),
    ],
)
def test_min_and_max_are_enforced_alone_and_together(tmp_path: Path, bounds: str, value: object,
                                                       holds: bool) -> None:
    p = policy(tmp_path, f"rules:\n  - id: n\n    effect: allow\n    tools: [n]\n    arguments:\n      v: {bounds}\n")
    assert p.decide(call("n", {"v": value})).allowed is holds


# --- patterns: RE2, after the cheap checks ------------------------------------------------------------------

@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=x)y", r"(?!x)y", r"(?<=x)y", r"(?<!x)y", "("])
def test_patterns_that_cannot_run_in_linear_time_are_refused_with_file_and_line(tmp_path: Path,
                                                                               pattern: str) -> None:
    text = ("rules:\n  - id: ok\n    effect: allow\n  - id: r\n    effect: allow\n    tools: [t]\n"
            f"    arguments:\n      q: {{regex: '{pattern}'}}\n")
    with pytest.raises(ConfigError) as info:
        policy(tmp_path, text)
    assert "00.yaml:8: rules.1.arguments.q.regex" in str(info.value) and "linear time" in str(info.value)


def test_a_catastrophic_pattern_answers_at_once() -> None:
    check = Check(regex=compile_pattern(r"([a-z0-9]+[-_.]?)+"))
    started = time.perf_counter()
    for n in (28, 40, 10_000):
        assert check.evaluate(True, "a" * n + "!")[0] is False
    assert check.evaluate(True, "abc-def.ghi")[0] is True
    assert time.perf_counter() - started < 0.5  # Python's re takes seconds for n=28 alone


def test_length_and_type_are_checked_before_the_pattern() -> None:
    class Exploding:
        def fullmatch(self, value: str) -> None:
            raise AssertionError("the pattern ran")

    check = Check(regex=Exploding(), max_length=10)
    assert check.evaluate(True, "x" * 11)[0] is False
    assert check.evaluate(True, 11)[0] is False
    assert Check(regex=Exploding(), one_of=("a",)).evaluate(True, "b")[0] is False


def test_a_value_re2_cannot_encode_is_undecidable() -> None:
    assert Check(regex=compile_pattern(".*")).evaluate(True, "a\ud800")[0] is None


# --- literal policy files must exist --------------------------------------------------------------------------

def test_a_literal_policy_file_must_exist_a_glob_may_match_nothing(tmp_path: Path) -> None:
    config = parse_config('servers:\n  files: {url: "http://h/mcp"}\npolicy_files: ["rules/*.yaml", "main.yaml"]\n')
    with pytest.raises(ConfigError, match="main.yaml: this policy file is named in policy_files but does not exist"):
        policy_paths(tmp_path / "valet.yaml", config)
    (tmp_path / "main.yaml").write_text("rules: []\n")
    assert policy_paths(tmp_path / "valet.yaml", config) == [tmp_path / "main.yaml"]
    (tmp_path / "main.yaml").unlink()
    assert policy_paths(tmp_path / "valet.yaml", config, strict=False) == [tmp_path / "main.yaml"]


def test_settle_time_counts_from_the_newest_policy_file(tmp_path: Path) -> None:
    from addon.snapshot import unsettled_for

    config = parse_config('servers:\n  files: {url: "http://h/mcp"}\npolicy_files: ["rules/*.yaml"]\n')
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").write_text("rules: []\n")
    now = time.time()
    assert 0 < unsettled_for(tmp_path / "valet.yaml", config, 1.0, now) <= 1.0
    assert unsettled_for(tmp_path / "valet.yaml", config, 1.0, now + 1.5) == 0


def test_reload_description_names_rules_and_files(tmp_path: Path) -> None:
    from addon.snapshot import describe_change, load_snapshot

    (tmp_path / "rules").mkdir()
    (tmp_path / "valet.yaml").write_text('servers:\n  files: {url: "http://h/mcp"}\npolicy_files: ["rules/*.yaml"]\n')
    (tmp_path / "rules" / "a.yaml").write_text("rules:\n  - id: keep\n    effect: allow\n  - id: gone\n    effect: deny\n")
    old = load_snapshot(tmp_path / "valet.yaml")
    (tmp_path / "rules" / "a.yaml").write_text("rules:\n  - id: keep\n    effect: deny\n")
    (tmp_path / "rules" / "b.yaml").write_text("rules:\n  - id: new\n    effect: allow\n")
    new = load_snapshot(tmp_path / "valet.yaml")
    assert describe_change(old, new) == (
        f"rules added: new; rules removed: gone; rules changed: keep; files added: {tmp_path / 'rules' / 'b.yaml'}; "
        "files removed: -")


# --- rate keys: fixed size, bounded in number -------------------------------------------------------------------

def test_rate_keys_are_hashes_of_canonical_json() -> None:
    assert argument_key({"b": 1, "a": [1, "x"]}) == argument_key({"a": [1, "x"], "b": 1})
    assert argument_key("1") == argument_key(1)  # review 3, G9: one number, one budget, however spelled
    assert argument_key(True) == argument_key(1)
    assert argument_key("1") != argument_key(2)
    assert len(argument_key("x" * 1_000_000)) == 32


def test_key_table_caps_distinct_keys_per_rule() -> None:
    table = KeyTable(cap=2)
    assert table.admit("r", ("a",), 60, now=0) is None
    assert table.admit("r", ("b",), 60, now=1) is None
    assert table.admit("r", ("a",), 60, now=2) is None  # a known key is always admitted
    assert table.admit("r", ("c",), 60, now=3) == pytest.approx(58)  # b's window ends first (a was refreshed)
    assert table.admit("other", ("c",), 60, now=3) is None  # caps are per rule
    assert table.admit("r", ("c",), 60, now=61) is None  # b has expired
    assert table.count("r") == 2


def test_a_rule_with_many_distinct_values_refuses_past_its_cap(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - id: per-q\n    tools: [t]\n    rate: 100/minute\n    per: [argument:q]\n")
    limiter = RateLimiter("memory://", max_keys_per_rule=3)

    async def run() -> list[tuple[bool, bool]]:
        out = []
        for i in range(5):
            c = call("t", {"q": f"{i}" * 100_000})
            verdict = await limiter.hit(p.rate_rules(c), c)
            out.append((verdict.allowed, verdict.too_many_keys))
        again = call("t", {"q": "0" * 100_000})
        out.append(((await limiter.hit(p.rate_rules(again), again)).allowed, False))
        return out

    assert asyncio.run(run()) == [(True, False)] * 3 + [(False, True)] * 2 + [(True, False)]
    assert limiter.keys.count("per-q") == 3


def test_rate_limit_cleanup_is_not_a_thread_hop_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """limits' memory storage sent every key's entries to a worker thread after each hit (~0.15 ms per call);
    the cleanup now runs at most once per EXPIRE_SECONDS and the moving window still holds exactly."""
    import limits.aio.storage.memory as memory

    p = policy(tmp_path, "rules:\n  - id: five\n    tools: [t]\n    rate: 5/minute\n")
    limiter = RateLimiter("memory://")
    hops = []
    real = asyncio.to_thread

    async def counting(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(memory.asyncio, "to_thread", counting)

    async def run() -> list[bool]:
        out = []
        for _ in range(8):
            c = call("t", {})
            out.append((await limiter.hit(p.rate_rules(c), c)).allowed)
            for _ in range(5):  # the loop idles between calls, as in the proxy
                await asyncio.sleep(0)
        return out

    assert asyncio.run(run()) == [True] * 5 + [False] * 3
    assert len(hops) <= 2, f"{len(hops)} cleanup thread hops for 8 calls"
