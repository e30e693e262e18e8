"""Unit tests that kill mutants of the policy core (decisions, arguments, globs); no processes.

Each test pins one behaviour a mutation of addon/policy/ changed without any other unit test noticing
(see docs/mutation-survivors.md for the mutants left alive and why they do not matter).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from addon.config import parse_config
from addon.policy.arguments import Check, PatternError, _same, _under, compile_pattern, normalize_fs_path
from addon.policy.decisions import HOUSEKEEPING, Call, Decision, PolicySet, argument_key, visible_tools
from addon.policy.files import load_policies
from addon.policy.globs import name_pattern, path_pattern

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


def call(tool: str | None = None, args: dict | None = None, *, user: str = "alice", agent: str = "agent",
         key: str = "k1", server: str = "files", method: str | None = "tools/call") -> Call:
    return Call(user, agent, key, server, method, tool, args)


def http(method: str, path: str | None, *, user: str = "alice", server: str = "api") -> Call:
    return Call(user, "agent", "k1", server, http_method=method, http_path=path, is_http_api=True)


def verdict(p: PolicySet, c: Call) -> tuple[bool, str, str | None]:
    d = p.decide(c)
    return d.allowed, d.reason, d.rule


# --- scoped rules do not reach outside their scope ---------------------------------------------------

SCOPED = """
servers:
  files: {default: allow}
  other: {default: allow}
rules:
  - {id: deny-bob, effect: deny, users: [bob]}
  - {id: deny-robot, effect: deny, agents: [robot]}
  - {id: deny-k9, effect: deny, keys: [k9]}
  - {id: deny-other, effect: deny, servers: [other]}
"""


@pytest.mark.parametrize(
    ("the_call", "rule"),
    [
        (call("t", user="bob"), "deny-bob"),
        (call("t", agent="robot"), "deny-robot"),
        (call("t", key="k9"), "deny-k9"),
        (call("t", server="other"), "deny-other"),
        (call("t", user="BOB"), "deny-bob"),  # deny names ignore case
        (call("t"), "default:files"),
        (call("t", user="bobby", agent="robots", key="k99"), "default:files"),  # globs are anchored
    ],
)
def test_each_identity_scope_is_checked_on_its_own_field(tmp_path: Path, the_call: Call, rule: str) -> None:
    assert policy(tmp_path, SCOPED).decide(the_call).rule == rule


def test_an_allow_rule_scoped_to_a_user_does_not_allow_others(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - {id: a, effect: allow, users: [alice], agents: [agent], keys: [k1], servers: [files]}\n")
    assert verdict(p, call("t")) == (True, "allowed", "a")
    for other in (call("t", user="Alice"), call("t", agent="x"), call("t", key="k2"), call("t", server="other")):
        assert verdict(p, other) == (False, "default", f"default:{other.server}")


# --- http rules against JSON-RPC calls, and the other way round ----------------------------------------

HTTP = """
servers:
  files: {default: deny}
  api: {default: deny}
rules:
  - {id: api-get, effect: allow, http: {methods: [GET]}}
  - {id: api-docs, effect: allow, http: {paths: ["/v1/Docs/*"]}}
  - {id: api-no-admin, effect: deny, http: {paths: ["/v1/admin/**"]}}
  - {id: tools-read, effect: allow, tools: [read]}
  - {id: method-res, effect: allow, methods: ["resources/*"]}
"""


@pytest.mark.parametrize(
    ("the_call", "expected"),
    [
        (http("GET", "/v1/x"), (True, "allowed", "api-get")),  # methods only: any path
        (http("GET", None), (True, "allowed", "api-get")),
        (http("PUT", "/v1/Docs/a"), (True, "allowed", "api-docs")),  # paths only: any method
        (http("PUT", "/v1/docs/a"), (False, "default", "default:api")),  # allow path globs keep case
        (http("PUT", "/v1/Docs/a/b"), (False, "default", "default:api")),  # * stays in one segment
        (http("GET", "/V1/ADMIN/users"), (False, "denied", "api-no-admin")),  # deny ignores case
        (http("PUT", None), (False, "default", "default:api")),
        (call("x", method="tools/call"), (False, "default", "default:files")),  # http rules never match JSON-RPC
        (call("read"), (True, "allowed", "tools-read")),
        (call(None, method="resources/read"), (True, "allowed", "method-res")),
        (call("read", method="prompts/get"), (False, "default", "default:files")),  # tools imply tools/call
    ],
)
def test_http_rules_and_mcp_rules_stay_apart(tmp_path: Path, the_call: Call, expected: tuple) -> None:
    assert verdict(policy(tmp_path, HTTP), the_call) == expected


def test_identity_only_rules_match_http_calls_and_tool_rules_do_not(tmp_path: Path) -> None:
    p = policy(tmp_path, "servers:\n  api: {default: allow}\nrules:\n  - {id: no-t, effect: deny, tools: ['*']}\n"
                         "  - {id: no-m, effect: deny, methods: ['*']}\n  - {id: no-eve, effect: deny, users: [eve]}\n")
    assert verdict(p, http("GET", "/v1/a")) == (True, "default", "default:api")
    assert verdict(p, http("GET", "/v1/a", user="eve")) == (False, "denied", "no-eve")


def test_a_tools_rule_needs_a_tool_name(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - {id: any-tool, effect: allow, tools: ['*']}\n")
    assert verdict(p, call(None, method="tools/call")) == (False, "default", "default:files")
    assert verdict(p, call("x")) == (True, "allowed", "any-tool")


def test_a_methods_rule_does_not_match_a_missing_method_or_another_method(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - {id: m, effect: allow, methods: [prompts/get]}\n")
    assert p.decide(call(None, method="prompts/get")).allowed
    assert not p.decide(call(None, method="prompts/list")).allowed


# --- housekeeping, defaults, kill switches ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("method", "housekeeping"),
    [("initialize", True), ("ping", True), ("server/discover", True), ("logging/setLevel", True),
     ("tools/list", True), ("notifications/initialized", True), ("notifications/", False),
     ("tools/listx", False), ("xping", False), ("resources/list", False)],
)
def test_housekeeping_methods_exactly(method: str, housekeeping: bool) -> None:
    assert (method in HOUSEKEEPING) is housekeeping


def test_housekeeping_decisions_and_plain_http(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules: []\n")
    assert p.decide(call(None, method=None)) == Decision(True, "housekeeping", None)  # a response
    assert p.decide(call(None, method="ping")) == Decision(True, "housekeeping", None)
    assert verdict(p, http("GET", "/")) == (False, "default", "default:api")  # never housekeeping


def test_server_default_allow_and_labels(tmp_path: Path) -> None:
    p = policy(tmp_path, "servers:\n  other: {default: allow}\nrules: []\n")
    d = p.decide(call("t", server="other"))
    assert (d.allowed, d.reason, d.rule, d.label) == (True, "default", "default:other", "default:other")
    assert Decision(True, "housekeeping", None).label == "housekeeping"
    assert verdict(p, call("t")) == (False, "default", "default:files")


def test_kill_switches_in_order(tmp_path: Path) -> None:
    p = policy(tmp_path, "servers:\n  other: {enabled: false, default: allow}\nusers:\n  eve: {enabled: false}\n"
                         "keys:\n  k9: {enabled: false}\nrules:\n  - {id: all, effect: allow}\n")
    assert verdict(p, call("t", server="other", user="eve", key="k9")) == (False, "disabled", "servers.other.enabled")
    assert verdict(p, call("t", user="eve", key="k9")) == (False, "disabled", "users.eve.enabled")
    assert verdict(p, call("t", key="k9")) == (False, "disabled", "keys.k9.enabled")
    assert verdict(p, call("t")) == (True, "allowed", "all")
    assert p.rule_count == 1


# --- argument checks: undecidable, min/max-only, one_of types, lengths ---------------------------------

ARGS = """
servers:
  files: {default: deny}
rules:
  - {id: low, effect: allow, tools: [low], arguments: {n: {min: 1}}}
  - {id: high, effect: allow, tools: [high], arguments: {n: {max: 10}}}
  - {id: flag, effect: allow, tools: [flag], arguments: {v: {one_of: [1, "a"]}}}
  - {id: short, effect: allow, tools: [short], arguments: {s: {max_length: 3}}}
  - {id: opt, effect: allow, tools: [opt], arguments: {s: {max_length: 3, optional: true}}}
  - {id: two, effect: allow, tools: [two], arguments: {a: {one_of: [x]}, b: {one_of: [y]}}}
  - {id: docs, effect: allow, tools: [read], arguments: {path: {under: /srv/docs}}}
"""


@pytest.mark.parametrize(
    ("tool", "args", "allowed"),
    [
        ("low", {"n": 1}, True), ("low", {"n": 0.5}, False), ("low", {"n": 10**9}, True),
        ("low", {"n": True}, False), ("low", {"n": "5"}, False), ("low", {}, False),
        ("high", {"n": 10}, True), ("high", {"n": 10.01}, False), ("high", {"n": -5}, True),
        ("high", {"n": False}, False), ("high", {"n": None}, False),
        ("flag", {"v": 1}, True), ("flag", {"v": True}, False), ("flag", {"v": 1.0}, True),
        ("flag", {"v": "1"}, False), ("flag", {"v": "a"}, True), ("flag", {"v": "A"}, False),
        ("short", {"s": "abc"}, True), ("short", {"s": "abcd"}, False), ("short", {"s": 12}, False),
        ("short", {}, False), ("opt", {}, True), ("opt", {"s": "abcd"}, False),
        ("two", {"a": "x", "b": "y"}, True), ("two", {"a": "x", "b": "z"}, False),
        ("two", {"a": "z", "b": "y"}, False),
        ("read", {"path": "/srv/docs"}, True), ("read", {"path": "/srv/docs/a"}, True),
        ("read", {"path": "/srv/docsx"}, False), ("read", {"path": "/srv/docs/%2e%2e/x"}, False),
        ("read", {"path": "/srv/Docs/a"}, False),
    ],
)
def test_allow_argument_checks(tmp_path: Path, tool: str, args: dict, allowed: bool) -> None:
    assert policy(tmp_path, ARGS).decide(call(tool, args)).allowed is allowed


DENY_ARGS = """
servers:
  files: {default: allow}
rules:
  - {id: no-big, effect: deny, tools: [calc], arguments: {n: {min: 100}}}
  - {id: no-neg, effect: deny, tools: [calc], arguments: {n: {max: -1}}}
  - {id: no-etc, effect: deny, tools: [read], arguments: {path: {under: /etc}}}
  - {id: no-ab, effect: deny, tools: [pair], arguments: {a: {one_of: [x]}, b: {one_of: [y]}}}
  - {id: no-opt, effect: deny, tools: [opt], arguments: {a: {one_of: [x], optional: true}}}
"""


@pytest.mark.parametrize(
    ("tool", "args", "rule"),
    [
        ("calc", {"n": 100}, "no-big"), ("calc", {"n": 99}, "default:files"), ("calc", {"n": -1}, "no-neg"),
        ("calc", {"n": 0}, "default:files"), ("calc", {}, "default:files"),
        ("read", {"path": "/ETC/passwd"}, "no-etc"), ("read", {"path": "etc"}, "no-etc"),  # undecidable: deny
        ("read", {"path": "/etcx"}, "default:files"), ("read", {"path": 5}, "no-etc"),
        ("pair", {"a": "x", "b": "y"}, "no-ab"), ("pair", {"a": "x", "b": "z"}, "default:files"),
        ("pair", {"a": "z", "b": "y"}, "default:files"),
        ("opt", {}, "no-opt"), ("opt", {"a": "X"}, "no-opt"), ("opt", {"a": "z"}, "default:files"),
    ],
)
def test_deny_argument_checks(tmp_path: Path, tool: str, args: dict, rule: str) -> None:
    assert policy(tmp_path, DENY_ARGS).decide(call(tool, args)).rule == rule


def test_rewrites_only_for_paths_that_change(tmp_path: Path) -> None:
    p = policy(tmp_path, ARGS)
    assert p.decide(call("read", {"path": "/srv/docs/a"})).rewrites == ()
    d = p.decide(call("read", {"path": "/srv//docs/./a", "other": 1}))
    assert d.allowed and d.rewrites == (("path", "/srv/docs/a"),)
    assert p.decide(call("read", None)).rewrites == ()
    assert policy(tmp_path, "rules: []\n").decide(call("read", {"path": "/a//b"})).rewrites == ()
    assert p.path_arguments == frozenset({"path"})


def test_a_deny_rule_judges_the_normalized_path(tmp_path: Path) -> None:
    p = policy(tmp_path, DENY_ARGS)
    assert p.decide(call("read", {"path": "/tmp/../etc/passwd"})).rule == "no-etc"
    assert p.decide(call("read", {"path": "/tmp/./x"})).rule == "default:files"


def test_check_evaluate_directly() -> None:
    assert Check(optional=True).evaluate(False, None) == (True, None)
    assert Check().evaluate(False, None) == (False, None)
    assert Check(under="/a").evaluate(True, "/a/./b") == (True, "/a/b")
    assert Check(under="/a").evaluate(True, "/b/./c") == (False, "/b/c")
    assert Check(under="/a").evaluate(True, "a") == (None, None)
    assert Check(under="/a", max_length=3).evaluate(True, "/a/bcd") == (False, "/a/bcd")
    assert Check(under="/a", one_of=("/a/x",)).evaluate(True, "/a/y") == (False, "/a/y")
    assert Check(under="/a", minimum=1).evaluate(True, "/a/y") == (False, "/a/y")
    assert Check(under="/a", regex=compile_pattern("/a/x")).evaluate(True, "/a/y") == (False, "/a/y")
    assert Check(under="/a", regex=compile_pattern("/a/.")).evaluate(True, "/a/y") == (True, "/a/y")
    assert Check(regex=compile_pattern("a+")).evaluate(True, 5) == (False, None)
    assert Check(regex=compile_pattern("a+")).evaluate(True, "aab") == (False, None)  # fullmatch, not search
    assert Check(regex=compile_pattern("a+")).evaluate(True, "baa") == (False, None)
    assert Check(regex=compile_pattern(".*")).evaluate(True, "\ud800") == (None, None)
    assert Check(minimum=1, maximum=2).evaluate(True, 1.5) == (True, None)
    assert Check(minimum=1, maximum=2).evaluate(True, 2.5) == (False, None)
    assert Check(minimum=1, maximum=2).evaluate(True, 0.5) == (False, None)
    assert Check(max_length=2).evaluate(True, "ab") == (True, None)
    assert Check(one_of=("x",), ignore_case=True).evaluate(True, "X") == (True, None)
    assert Check(one_of=("x",)).evaluate(True, "X") == (False, None)


def test_regex_case_follows_the_rule_kind() -> None:
    assert compile_pattern("abc").fullmatch("ABC") is None
    assert compile_pattern("abc", ignore_case=True).fullmatch("ABC") is not None
    with pytest.raises(PatternError, match="linear time"):
        compile_pattern(r"(a)\1")


@pytest.mark.parametrize(
    ("value", "choice", "ignore_case", "same"),
    [
        (True, 1, False, False), (1, True, False, False), (True, True, False, True), (False, 0, False, False),
        (1, 1.0, False, True), ("1", 1, False, False), (1, "1", False, False), ("a", "A", True, True),
        ("a", "A", False, False), ("ß", "SS", True, True), (None, None, False, False), ([1], [1], False, False),
    ],
)
def test_same_json_type(value: object, choice: object, ignore_case: bool, same: bool) -> None:
    assert _same(value, choice, ignore_case) is same


@pytest.mark.parametrize(
    ("path", "root", "ignore_case", "under"),
    [
        ("/a/b", "/a", False, True), ("/a", "/a", False, True), ("/a", "/a/", False, True), ("/ab", "/a", False, False),
        ("/x", "/", False, True), ("/", "/", False, True), ("/A/b", "/a", False, False), ("/A/b", "/a", True, True),
        ("/a/b", "/A/", True, True), ("/A", "/a", True, True),
    ],
)
def test_under(path: str, root: str, ignore_case: bool, under: bool) -> None:
    assert _under(path, root, ignore_case) is under


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        ("/a/b/../c", "/a/c"), ("//a", "/a"), ("/", "/"), ("/a/", "/a"), (3, None), ("a/b", None),
        ("/a\\b", None), ("/a\x00", None), ("/a\x7f", None), ("/a\x1f", None), ("/a%41", None), ("/a%u0041", None),
        ("/ﬁle", None), ("/a./b", None), ("/a /b", None), ("/./a", "/a"), ("/../a", "/a"), ("/a/..", "/"),
        ("/a\u2215b", None),
    ],
)
def test_normalize_fs_path_more(value: object, normalized: str | None) -> None:
    assert normalize_fs_path(value) == normalized


# --- tools/list visibility ---------------------------------------------------------------------------------

VISIBLE = """
servers:
  files: {default: deny}
  other: {default: allow, enabled: true}
rules:
  - {id: no-rm, effect: deny, tools: [rm]}
  - {id: no-cat-etc, effect: deny, tools: [cat], arguments: {path: {under: /etc}}}
  - {id: cat, effect: allow, tools: [cat, ls]}
  - {id: bob-ls, effect: deny, users: [bob], tools: [ls]}
"""


def test_visible_tools(tmp_path: Path) -> None:
    p = policy(tmp_path, VISIBLE)
    visible = visible_tools(p, call(None, method="tools/list"))
    assert [visible(t) for t in ("rm", "cat", "ls", "other")] == [False, True, True, False]
    assert not visible_tools(p, call(None, user="bob"))("ls")
    others = visible_tools(p, call(None, server="other"))
    assert others("anything") and not others("rm")
    off = policy(tmp_path, "servers:\n  other: {enabled: false, default: allow}\nrules: []\n")
    assert not visible_tools(off, call(None, server="other"))("anything")
    assert visible_tools(off, call(None, server="files", user="x", agent="y", key="z"))("t") is False


def test_visible_tools_keeps_the_callers_identity(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - {id: a, effect: allow, users: [alice], agents: [ag], keys: [k7], servers: [other]}\n")
    assert visible_tools(p, call(None, agent="ag", key="k7", server="other"))("t")
    for base in (call(None, user="x", agent="ag", key="k7", server="other"), call(None, agent="x", key="k7", server="other"),
                 call(None, agent="ag", key="x", server="other"), call(None, agent="ag", key="k7", server="files")):
        assert not visible_tools(p, base)("t")


# --- rate rules ----------------------------------------------------------------------------------------------

def test_rate_identifiers_per_scope(tmp_path: Path) -> None:
    p = policy(tmp_path, """
rules:
  - id: r
    tools: ["*"]
    rate: 5/minute
    per: [user, agent, key, server, tool, method, "argument:q"]
  - {id: no-burst, tools: [x], rate: 1/hour}
""")
    (rule, second) = p.rate_rules(call("x", {"q": "é"}))
    assert rule.identifiers(call("x", {"q": "é"}, user="u", agent="a", key="k", server="s")) == (
        "user=u", "agent=a", "key=k", "server=s", "tool=x", "method=tools/call", f"argument:q={argument_key('é')}")
    assert rule.identifiers(call(None, None, method=None))[-3:] == ("tool=", "method=", "argument:q=-")
    assert [str(i) for i in second.limits] == ["1 per 1 hour"]
    assert [r.id for r in p.rate_rules(call("y"))] == ["r"]


def test_rate_rules_use_deny_matching(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - {id: r, tools: [get], rate: 5/minute, arguments: {p: {under: /a}}}\n"
                         "  - {id: s, users: [bob], rate: 5/minute}\n")
    assert [r.id for r in p.rate_rules(call("NS__GET", {"p": "/A/b"}))] == ["r"]
    assert [r.id for r in p.rate_rules(call("get", {"p": "rel"}))] == ["r"]  # undecidable: counted
    assert p.rate_rules(call("get", {"p": "/b"})) == []
    assert p.rate_rules(call("other")) == []
    assert [r.id for r in p.rate_rules(call("other", user="BOB"))] == ["s"]


def test_argument_key_is_canonical_utf8_json() -> None:
    # the JSON of the value's canonical reading (addon.policy.readings.canonical), members in sorted order
    canonical = json.dumps(["o", [["a", ["s", "é"]], ["b", ["a", [["n", "1"], ["n", "2"]]]]]],
                           separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
    assert argument_key({"b": [1, 2], "a": "é"}) == expected
    assert len(argument_key("x" * 10000)) == 32
    assert argument_key("\ud800") != argument_key("\ud801")


# --- globs ----------------------------------------------------------------------------------------------------

def test_name_patterns() -> None:
    assert name_pattern([], False).match("") is None
    assert name_pattern(["a*"], False).match("a\nb") is not None  # DOTALL: a newline is one more character
    assert name_pattern(["a*"], True).match("A\nb") is not None
    assert name_pattern(["ab"], False).match("AB") is None
    assert name_pattern(["ab"], True).match("AB") is not None
    assert name_pattern(["ab"], False, namespaced=True).match("x__ab") is not None
    assert name_pattern(["ab"], False, namespaced=False).match("x__ab") is None
    assert name_pattern(["ab", "cd"], False).match("cd") is not None


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("/a/*", "/a/b", True), ("/a/*", "/a/b/c", False), ("/a/**", "/a/b/c", True), ("/a/?", "/a/b", True),
        ("/a/?", "/a/bc", False), ("/a/?", "/a//", False), ("/a.b", "/aXb", False), ("/a/*x", "/a/yx", True),
        ("/a", "/a/", False), ("/a/**/c", "/a/b/b/c", True), ("/a*", "/a/b", False), ("", "", True),
    ],
)
def test_path_patterns(glob: str, path: str, matches: bool) -> None:
    assert (path_pattern([glob], False).match(path) is not None) is matches


def test_path_pattern_case_and_empty() -> None:
    assert path_pattern(["/A"], False).match("/a") is None
    assert path_pattern(["/A"], True).match("/a") is not None
    assert path_pattern([], False).match("") is None
    assert path_pattern(["/x", "/y"], False).match("/y") is not None


def test_pattern_errors_carry_re2s_reason_exactly() -> None:
    with pytest.raises(PatternError) as info:
        compile_pattern("(")
    assert str(info.value) == ("not a pattern Valet can run in linear time (RE2 syntax; no backreferences or "
                               "lookaround): missing ): (")
    with pytest.raises(PatternError) as info:
        compile_pattern("(?=a)")
    assert str(info.value).endswith(": invalid perl operator: (?=")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_fs_paths_keep_spaces_and_non_ascii_inside_names() -> None:
    assert normalize_fs_path("/a b/c") == "/a b/c"
    assert normalize_fs_path("/\u00e9t\u00e9") == "/\u00e9t\u00e9"
    assert normalize_fs_path("/a\x80") is None


def test_under_strips_only_slashes_from_the_root() -> None:
    assert not _under("/a/b", "/a/X", False)
    assert _under("/a/X/b", "/a/X//", False)


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [("/a/**x", "/a/b/cx", True), ("/a/**x", "/a/b/cz", False), ("/a/*.json", "/a/xjson", False),
     ("/a/*.json", "/a/x.json", True), ("/a/?b", "/a/cd", False), ("/a/?b", "/a/cb", True)],
)
def test_path_globs_keep_the_character_after_a_wildcard(glob: str, path: str, matches: bool) -> None:
    assert (path_pattern([glob], False).match(path) is not None) is matches


# --- the owed survivors of the first measured run ----------------------------------------------------------

@pytest.mark.parametrize(
    "other",
    [call("t", user="x.alice"), call("t", agent="team__agent"), call("t", key="x-k1"),
     call("x", server="files", method="ns/tools/call")],
)
def test_only_tool_names_are_read_behind_a_namespace(tmp_path: Path, other: Call) -> None:
    """A namespace prefix is read only in front of tool names of deny and rate rules: an allow rule's
    users, agents, keys and methods match the name as written (a prefix would widen what is allowed)."""
    p = policy(tmp_path, "rules:\n  - {id: a, effect: allow, users: [alice], agents: [agent], keys: [k1],"
                         " methods: [tools/call]}\n")
    assert verdict(p, call("t")) == (True, "allowed", "a")
    assert verdict(p, other) == (False, "default", "default:files")


def test_only_tool_names_of_deny_rules_are_read_behind_a_namespace(tmp_path: Path) -> None:
    p = policy(tmp_path, "servers:\n  files: {default: allow}\nrules:\n"
                         "  - {id: d, effect: deny, users: [bob], tools: [rm]}\n")
    assert verdict(p, call("ns__rm", user="bob")) == (False, "denied", "d")
    assert verdict(p, call("ns__rm", user="team.bob")) == (True, "default", "default:files")


class _FakeRe2Error:
    """re2.compile raising what google-re2 has never raised so far: the fallbacks must still give a
    PatternError with the reason (never an IndexError, AttributeError or LookupError from the handler)."""

    def __init__(self, *args: object) -> None:
        self.args = args

    def __call__(self, *_a: object, **_k: object) -> None:
        import re2
        raise re2.error(*self.args)


@pytest.mark.parametrize(
    ("args", "detail"),
    [((b"bad \xff byte",), "bad \ufffd byte"), (("a str reason",), "a str reason"), ((), "")],
)
def test_pattern_errors_of_any_shape_stay_pattern_errors(monkeypatch: pytest.MonkeyPatch, args: tuple,
                                                         detail: str) -> None:
    import re2
    monkeypatch.setattr(re2, "compile", _FakeRe2Error(*args))
    with pytest.raises(PatternError) as info:
        compile_pattern("x")
    assert str(info.value) == ("not a pattern Valet can run in linear time (RE2 syntax; no backreferences or "
                               f"lookaround): {detail}")


def test_a_rate_budget_reads_argument_names_in_any_case(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - {id: r, tools: ['*'], rate: 5/minute, per: ['argument:path']}\n")
    (rule,) = p.rate_rules(call("x"))
    assert rule.identifiers(call("x", {"path": "/a"})) == (f"argument:path={argument_key('/a')}",)
    assert rule.identifiers(call("x", {"PATH": "/a"})) == (f"argument:path={argument_key('/a')}",)
    assert rule.identifiers(call("x", {"other": "/a"})) == ("argument:path=-",)
