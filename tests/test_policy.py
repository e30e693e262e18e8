from __future__ import annotations

from pathlib import Path

import pytest

from addon.policy.arguments import normalize_fs_path
from addon.config import ConfigError, parse_config
from addon.policy.decisions import Call, PolicySet
from addon.policy.files import load_policies

CONFIG = parse_config("""
servers:
  files: {url: "http://h/mcp"}
  api: {url: "http://h/v1", kind: http}
  open: {url: "http://h/open"}
""")


def policy(tmp_path: Path, *texts: str) -> PolicySet:
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"{i:02d}.yaml"
        path.write_text(text)
        paths.append(path)
    return PolicySet(load_policies(paths, CONFIG))


RULES = """
servers:
  open: {default: allow}
rules:
  - id: read-files
    effect: allow
    servers: [files]
    tools: ["read_*", list_dir]
    arguments:
      path: {under: /srv/data}
  - id: search
    effect: allow
    tools: [search]
    arguments:
      query: {regex: "[a-z ]{1,40}"}
      mode: {one_of: [fast, full], optional: true}
      limit: {min: 1, max: 100, optional: true}
      note: {max_length: 10, optional: true}
  - id: no-secrets-dir
    effect: deny
    tools: ["*"]
    arguments:
      path: {under: /srv/data/secrets}
  - id: no-delete
    effect: deny
    tools: ["delete_*"]
  - id: bob-nothing
    effect: deny
    users: [bob]
    servers: [files]
  - id: api-read
    effect: allow
    servers: [api]
    http: {methods: [GET], paths: ["/v1/customers/*", "/v1/reports/**"]}
  - id: api-no-charges
    effect: deny
    servers: [api]
    http: {paths: ["/v1/charges/**", "/v1/charges"]}
"""


def call(tool: str | None, args: dict | None = None, user: str = "alice", server: str = "files",
         method: str = "tools/call") -> Call:
    return Call(user, "agent", "k1", server, method, tool, args)


def http(method: str, path: str, user: str = "alice") -> Call:
    return Call(user, "agent", "k1", "api", http_method=method, http_path=path, is_http_api=True)


@pytest.mark.parametrize(
    ("the_call", "allowed", "rule"),
    [
        (call("read_file", {"path": "/srv/data/a.txt"}), True, "read-files"),
        (call("read_file", {"path": "/srv/data/../etc/passwd"}), False, "default:files"),
        (call("read_file", {"path": "/srv/data/x/../../data/b"}), True, "read-files"),
        (call("read_file", {"path": "/srv/data/secrets/k"}), False, "no-secrets-dir"),
        (call("read_file", {"path": "/srv/data/x/../secrets/k"}), False, "no-secrets-dir"),
        (call("read_file", {"path": "/srv//data/secrets/k"}), False, "no-secrets-dir"),
        (call("read_file", {"path": "/srv/data/%2e%2e/secrets"}), False, "no-secrets-dir"),  # undecidable: deny
        (call("read_file", {"path": "/srv/data／secrets"}), False, "no-secrets-dir"),  # full-width slash
        (call("read_file", {"path": "/srv/data/a\u200b"}), True, "read-files"),  # NFKC-stable: a plain name
        (call("read_file", {"path": "relative/x"}), False, "no-secrets-dir"),
        (call("read_file", {}), False, "default:files"),
        (call("READ_FILE", {"path": "/srv/data/a"}), False, "default:files"),  # allow is case-exact
        (call("Delete_Repo", {}), False, "no-delete"),  # deny ignores case
        (call("list_dir", {"path": "/srv/data"}), True, "read-files"),
        (call("read_file", {"path": "/srv/data/a"}, user="bob"), False, "bob-nothing"),
        (call("search", {"query": "hello world"}), True, "search"),
        (call("search", {"query": "DROP TABLE"}), False, "default:files"),
        (call("search", {"query": "ok", "mode": "fast", "limit": 5, "note": "short"}), True, "search"),
        (call("search", {"query": "ok", "mode": "slow"}), False, "default:files"),
        (call("search", {"query": "ok", "limit": 101}), False, "default:files"),
        (call("search", {"query": "ok", "limit": True}), False, "default:files"),
        (call("search", {"query": "ok", "limit": "5"}), False, "default:files"),
        (call("search", {"query": "ok", "note": "much too long"}), False, "default:files"),
        (call("anything", {}, server="open"), True, "default:open"),
        (call(None, None, method="initialize"), True, None),
        (call(None, None, method="tools/list", user="bob"), True, None),  # housekeeping; the list is filtered
        (call(None, None, method="resources/read"), False, "default:files"),
        (http("GET", "/v1/customers/42"), True, "api-read"),
        (http("GET", "/v1/customers/42/invoices"), False, "default:api"),
        (http("GET", "/v1/reports/2026/q3"), True, "api-read"),
        (http("POST", "/v1/customers/42"), False, "default:api"),
        (http("GET", "/v1/charges"), False, "api-no-charges"),
        (http("GET", "/V1/Charges/ch_1"), False, "api-no-charges"),
    ],
)
def test_decisions(tmp_path: Path, the_call: Call, allowed: bool, rule: str | None) -> None:
    decision = policy(tmp_path, RULES).decide(the_call)
    assert (decision.allowed, decision.rule) == (allowed, rule)


def test_housekeeping_is_allowed_but_not_past_a_kill_switch(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules: []\n", "servers:\n  files: {enabled: false}\nusers:\n  eve: {enabled: false}\n"
                                       "keys:\n  k9: {enabled: false}\n")
    assert p.decide(call(None, method="initialize", server="open")).allowed
    d = p.decide(call(None, method="initialize"))
    assert not d.allowed and d.rule == "servers.files.enabled"
    assert p.decide(call(None, method="ping", user="eve", server="open")).rule == "users.eve.enabled"
    assert p.decide(Call("a", "b", "k9", "open", "ping")).rule == "keys.k9.enabled"


def test_allowed_paths_are_forwarded_normalized(tmp_path: Path) -> None:
    d = policy(tmp_path, RULES).decide(call("read_file", {"path": "/srv/data/x/..//y/./z"}))
    assert d.allowed and d.rewrites == (("path", "/srv/data/y/z"),)


def test_tools_list_visibility(tmp_path: Path) -> None:
    p = policy(tmp_path, RULES)
    visible = {t: p.tool_visible(call(t)) for t in ["read_file", "search", "delete_x", "other"]}
    assert visible == {"read_file": True, "search": True, "delete_x": False, "other": False}
    assert p.tool_visible(call("whatever", server="open"))
    assert not p.tool_visible(call("read_file", user="bob"))


def test_rate_rules_match_and_scope(tmp_path: Path) -> None:
    p = policy(tmp_path, RULES + """
  - id: per-user
    tools: ["*"]
    rate: 10/minute
    burst: 2
  - id: per-path
    tools: [read_file]
    rate: 5/hour
    per: [user, argument:path]
""")
    rules = p.rate_rules(call("read_file", {"path": "/a"}))
    assert [r.id for r in rules] == ["per-user", "per-path"]
    assert [str(i) for i in rules[0].limits] == ["10 per 1 minute", "2 per 1 second"]
    from addon.policy.decisions import argument_key

    assert rules[1].identifiers(call("read_file", {"path": "/a"})) == ("user=alice", f"argument:path={argument_key('/a')}")
    assert [r.id for r in p.rate_rules(call(None, method="initialize"))] == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules:\n  - id: x\n    effect: maybe\n", "rules.0.effect"),
        ("rules:\n  - id: x\n", "either an effect"),
        ("rules:\n  - id: x\n    effect: allow\n    rate: 5/minute\n", "either an effect"),
        ("rules:\n  - id: x\n    rate: lots\n", "not a rate"),
        ("rules:\n  - id: x\n    effect: allow\n    tools: [a]\n    arguments: {p: {}}\n", "at least one of"),
        ("rules:\n  - id: x\n    effect: allow\n    tools: [a]\n    arguments: {p: {regex: '('}}\n", "linear time"),
        ("rules:\n  - id: x\n    effect: allow\n    tools: [a]\n    arguments: {p: {under: /a/../b}}\n", "normalized"),
        ("rules:\n  - id: x\n    effect: allow\n    arguments: {p: {max_length: 3}}\n", "need tools"),
        ("rules:\n  - id: x\n    effect: allow\n    servers: [nope]\n", "no server named 'nope'"),
        ("rules:\n  - id: x\n    effect: allow\n    tools: [a]\n    http: {methods: [GET]}\n", "http rules"),
        ("rules:\n  - id: 'bad id'\n    effect: allow\n", "rule ids"),
        ("rules:\n  - id: x\n    rate: 5/minute\n    per: [planet]\n", "scopes"),
        ("servers:\n  nope: {default: allow}\n", "no server of that name"),
        ("rules:\n  - id: x\n    effect: allow\n    colour: red\n", "rules.0.colour: unknown key"),
    ],
)
def test_policy_errors_name_file_line_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        policy(tmp_path, text)
    assert problem in str(info.value) and "00.yaml" in str(info.value)


def test_merging_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already used in"):
        policy(tmp_path, "rules:\n  - id: a\n    effect: allow\n", "rules:\n  - id: a\n    effect: deny\n")
    with pytest.raises(ConfigError, match="also set in"):
        policy(tmp_path, "servers:\n  files: {default: allow}\n", "servers:\n  files: {default: deny}\n")


def test_line_numbers_in_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        policy(tmp_path, "rules:\n  - id: a\n    effect: allow\n  - id: b\n    effect: allow\n    tools: 7\n")
    assert "00.yaml:6: rules.1.tools" in str(info.value)


@pytest.mark.parametrize(
    ("value", "normalized"),
    [("/a/b", "/a/b"), ("/a//b/", "/a/b"), ("/a/./b/../c", "/a/c"), ("/../../x", "/x"), ("//x", "/x"),
     ("a/b", None), ("/a\\b", None), ("/a/%2E%2E/b", None), ("/a\x00", None), ("/ａ", None), (7, None)],
)
def test_normalize_fs_path(value: object, normalized: str | None) -> None:
    assert normalize_fs_path(value) == normalized


def test_every_shipped_policy_example_is_valid() -> None:
    examples = sorted((Path(__file__).resolve().parent.parent / "policies" / "examples").glob("*.yaml"))
    assert len(examples) >= 6
    config = parse_config("""
servers:
  github: {url: "https://api.example.com/mcp"}
  files: {url: "http://h/files"}
  db: {url: "http://h/db"}
  docs: {url: "http://h/docs"}
  search: {url: "http://h/search"}
  stripe: {url: "https://api.example.com", kind: http}
""")
    for example in examples:
        load_policies([example], config)  # raises ConfigError naming file and line if not


def test_shipped_default_policy_loads() -> None:
    from addon.snapshot import load_snapshot

    snapshot = load_snapshot(Path(__file__).resolve().parent.parent / "policies" / "valet.yaml")
    assert snapshot.policy.rule_count >= 3
    assert snapshot.policy.decide(Call("u", "a", "k", "demo", "tools/call", "whoami", {})).allowed
    assert not snapshot.policy.decide(Call("u", "a", "k", "demo", "tools/call", "die_midstream", {})).allowed


def test_every_rule_judges_the_normalized_path_that_is_forwarded(tmp_path: Path) -> None:
    p = policy(tmp_path, """
rules:
  - id: srv
    effect: allow
    tools: [read_file]
    arguments:
      path: {under: /srv}
  - id: no-dotenv
    effect: deny
    tools: ["*"]
    arguments:
      path: {regex: ".*\\\\.env"}
  - id: public-only
    effect: allow
    tools: [publish]
    arguments:
      path: {regex: "/srv/public/.*", under: /srv}
""")
    assert p.decide(call("read_file", {"path": "/srv/x/.env/."})).rule == "no-dotenv"
    assert not p.decide(call("publish", {"path": "/srv/public/../private/key"})).allowed
    ok = p.decide(call("publish", {"path": "/srv/public/a/./b"}))
    assert ok.allowed and ok.rewrites == (("path", "/srv/public/a/b"),)


def test_an_empty_policy_file_is_an_error_not_an_empty_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        policy(tmp_path, "")


def test_matching_paths_drop_parameters_and_trailing_slashes() -> None:
    from addon.hooks.gate import matching_path

    assert matching_path("/v1/charges;jsessionid=1") == "/v1/charges"
    assert matching_path("/v1/charges%3Bx/") == "/v1/charges"
    assert matching_path("/v1/a%2Fb") == "/v1/a/b"
    assert matching_path("/") == "/"


def test_mitmproxy_error_pages_never_quote_the_upstream() -> None:
    from addon.protocol.mitm_errors import _json_error_response

    page = _json_error_response(502, "Cannot parse HTTP response: invalid content-length header: 'fake-secret'")
    assert b"fake-secret" not in page and b"-32011" in page
