"""Review 3 (G8, G9, G10): deny and rate rules judge a value as a lax upstream reads it.

pydantic (the MCP Python SDK), ``Number()``/``Boolean()`` (TypeScript servers with zod's coerce) and most
REST frameworks turn ``"5000"`` into 5000 and ``"yes"`` into true: a deny rule that judged only the JSON type
let those spellings past, and a per-value rate budget opened a fresh budget for each. Each test here fails
on the engine before :mod:`addon.policy.readings`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from addon.config import parse_config
from addon.policy.arguments import Check, compile_pattern
from addon.policy.decisions import Call, PolicySet, argument_key
from addon.policy.files import load_policies
from addon.policy.readings import UNDECIDABLE, canonical, numbers, texts, truths

CONFIG = parse_config('servers:\n  calc: {url: "http://h/mcp"}\n')

DENY = """
servers:
  calc: {default: allow}
rules:
  - id: no-big-add
    effect: deny
    tools: [add]
    arguments:
      a: {min: 1000}
  - id: no-negative
    effect: deny
    tools: [pay]
    arguments:
      amount: {max: 0}
  - id: no-zero
    effect: deny
    tools: [divide]
    arguments:
      b: {one_of: [0]}
  - id: no-force
    effect: deny
    tools: [push]
    arguments:
      force: {one_of: [true]}
  - id: no-prod
    effect: deny
    tools: [deploy]
    arguments:
      env: {one_of: [prod, "42"]}
  - id: no-666
    effect: deny
    tools: [send]
    arguments:
      account: {regex: "666.*"}
"""


def policy(tmp_path: Path, text: str) -> PolicySet:
    path = tmp_path / "00.yaml"
    path.write_text(text)
    return PolicySet(load_policies([path], CONFIG))


def decide(p: PolicySet, tool: str, args: dict) -> tuple[bool, str | None]:
    decision = p.decide(Call("alice", "agent", "k1", "calc", "tools/call", tool, args))
    return decision.allowed, decision.rule


@pytest.mark.parametrize("a", [5000, 5000.0, "5000", " 5000 ", "\t5000\n", " 5e3 ", "5_000", "+5000", "05000",
                               "5000.0", "0x1388", "５０００", "\u00a05000", "\ufeff5000", "1e999", "inf", "NaN",
                               "5000abc", "5,000", [5000], {"v": 5000}])
def test_a_numeric_deny_fires_on_every_spelling_of_a_number(tmp_path: Path, a: object) -> None:
    assert decide(policy(tmp_path, DENY), "add", {"a": a, "b": 1}) == (False, "no-big-add")


@pytest.mark.parametrize("a", [1, 999, "999", " 7 ", "hello", "", None, True, "0x10"])
def test_a_numeric_deny_does_not_overreach(tmp_path: Path, a: object) -> None:
    assert decide(policy(tmp_path, DENY), "add", {"a": a, "b": 1}) == (True, "default:calc")


@pytest.mark.parametrize(("tool", "args", "rule"), [
    ("pay", {"amount": "-5"}, "no-negative"),
    ("pay", {"amount": False}, "no-negative"),  # false is 0 to pydantic and Number()
    ("pay", {"amount": None}, "no-negative"),  # Number(null) is 0
    ("pay", {"amount": ""}, "no-negative"),  # Number("") is 0
    ("divide", {"b": "0"}, "no-zero"),
    ("divide", {"b": False}, "no-zero"),
    ("divide", {"b": "0.0"}, "no-zero"),
    ("divide", {"b": "-0"}, "no-zero"),
    ("push", {"force": "true"}, "no-force"),
    ("push", {"force": "yes"}, "no-force"),
    ("push", {"force": 1}, "no-force"),
    ("push", {"force": "false"}, "no-force"),  # Boolean("false") is true in JavaScript
    ("deploy", {"env": " PROD "}, "no-prod"),
    ("deploy", {"env": "ｐｒｏｄ"}, "no-prod"),  # full width: NFKC reads it as prod
    ("deploy", {"env": 42}, "no-prod"),  # a lax string field reads 42 as "42"
    ("deploy", {"env": "042"}, "no-prod"),  # and a numeric field "042" as 42
    ("send", {"account": 6661234}, "no-666"),  # str(6661234) matches
    ("send", {"account": " 6661234"}, "no-666"),
])
def test_deny_one_of_and_regex_read_values_broadly(tmp_path: Path, tool: str, args: dict, rule: str) -> None:
    assert decide(policy(tmp_path, DENY), tool, args) == (False, rule)


@pytest.mark.parametrize(("tool", "args"), [
    ("pay", {"amount": "5"}), ("pay", {"amount": 0.5}), ("divide", {"b": "2"}), ("divide", {"b": True}),
    ("push", {"force": False}), ("push", {"force": 0}), ("push", {"force": ""}),
    ("deploy", {"env": "staging"}), ("deploy", {"env": 41}), ("send", {"account": 1666}),
])
def test_broad_readings_do_not_overreach(tmp_path: Path, tool: str, args: dict) -> None:
    assert decide(policy(tmp_path, DENY), tool, args) == (True, "default:calc")


ALLOW = """
servers:
  calc: {default: deny}
rules:
  - id: small-add
    effect: allow
    tools: [add]
    arguments:
      a: {min: 0, max: 100}
  - id: dry-runs
    effect: allow
    tools: [push]
    arguments:
      force: {one_of: [false]}
"""


@pytest.mark.parametrize(("tool", "args"), [
    ("add", {"a": "5"}), ("add", {"a": " 5"}), ("add", {"a": True}), ("add", {"a": [5]}), ("add", {"a": None}),
    ("push", {"force": 0}), ("push", {"force": "false"}), ("push", {"force": ""}),
])
def test_allow_rules_stay_strict(tmp_path: Path, tool: str, args: dict) -> None:
    """An allow rule holds only for the value as JSON typed it: a spelling never widens an allowance."""
    assert decide(policy(tmp_path, ALLOW), tool, args) == (False, "default:calc")


def test_allow_rules_still_allow_what_they_name(tmp_path: Path) -> None:
    assert decide(policy(tmp_path, ALLOW), "add", {"a": 5}) == (True, "small-add")
    assert decide(policy(tmp_path, ALLOW), "add", {"a": 5.0}) == (True, "small-add")
    assert decide(policy(tmp_path, ALLOW), "push", {"force": False}) == (True, "dry-runs")


def test_check_verdicts() -> None:
    deny = Check(minimum=1000, ignore_case=True)
    assert deny.evaluate(True, "5000")[0] is True
    assert deny.evaluate(True, " 5e3 ")[0] is True
    assert deny.evaluate(True, True)[0] is False  # 1 < 1000
    assert deny.evaluate(True, "inf")[0] is None  # cannot tell: fires
    assert deny.evaluate(True, "999")[0] is False
    allow = Check(minimum=1000)
    assert allow.evaluate(True, "5000")[0] is False
    assert allow.evaluate(True, 5000)[0] is True
    # the conjunction: a condition that does not hold wins over one that cannot be told
    both = Check(minimum=1000, one_of=("x",), ignore_case=True)
    assert both.evaluate(True, [1])[0] is None
    assert Check(minimum=1000, max_length=2, ignore_case=True).evaluate(True, "5000")[0] is False


def test_readings() -> None:
    assert numbers("5000") == (5000,) and numbers(" 5e3 ") == (5000,) and numbers("5.5") == (5.5,)
    assert numbers("0x1388") == (5000,) and numbers("0b11") == (3,) and numbers("٥") == (5,)
    assert numbers(True) == (1,) and numbers(None) == (0,) and numbers("") == (0,)
    assert numbers("hello") == () and numbers("yes") == ()
    for undecidable in ("inf", "-Infinity", "nan", "1e999", "5000abc", "5,000", "1_", [1], {}):
        assert numbers(undecidable) is UNDECIDABLE, undecidable
    assert numbers(2**60) == (2**60, float(2**60))  # JavaScript reads a double
    assert truths("no") == {True, False}  # pydantic: False; Boolean("no"): true
    assert truths("") == {False} and truths(0) == {False} and truths(2) == {True}
    assert texts(5000.0) == ("5000.0", "5000") and texts(True) == ("true", "True")
    assert texts(" a ") == (" a ", "a") and texts([1]) is UNDECIDABLE
    assert numbers("1" * 100_000) is UNDECIDABLE  # a double overflows: cannot tell (and linear time)


def test_a_long_value_is_read_in_linear_time() -> None:
    import time
    started = time.perf_counter()
    for value in ("1" * 1_000_000, "1_" * 500_000, " " * 1_000_000 + "x", "5" * 999_999 + "x"):
        numbers(value), texts(value), canonical(value)
    assert time.perf_counter() - started < 10  # generous: about 0.1 s on an idle machine


def test_allow_pattern_is_case_sensitive_and_deny_is_not() -> None:
    assert compile_pattern("abc").fullmatch("ABC") is None
    assert compile_pattern("abc", ignore_case=True).fullmatch("ABC") is not None


# --- G9: a per-value rate budget is keyed by the value's canonical reading ------------------------------------

@pytest.mark.parametrize("spelling", [7, 7.0, "7", " 7", "7 ", "07", "+7", "0007", "7.0", "7e0", "0x7", "７"])
def test_every_spelling_of_a_number_shares_one_budget(spelling: object) -> None:
    assert argument_key(spelling) == argument_key(7)


def test_distinct_values_keep_distinct_budgets() -> None:
    keys = {argument_key(v) for v in (7, 8, 7.5, "seven", "acct_7", [7], {"a": 7}, None, "5000abc")}
    assert len(keys) == 9
    assert argument_key(True) == argument_key(1) and argument_key(False) == argument_key(0)
    assert argument_key(None) == argument_key(0)  # Number(null) is 0


def test_texts_share_a_budget_whatever_their_case_width_or_padding() -> None:
    assert argument_key("Bob@x.com") == argument_key(" bob@X.COM ") == argument_key("ｂｏｂ@x.com")
    assert argument_key({"b": 1, "a": [1, "x"]}) == argument_key({"a": ["1", " X"], "b": "01"})


def test_rate_identifiers_use_the_canonical_key(tmp_path: Path) -> None:
    p = policy(tmp_path, """
servers:
  calc: {default: allow}
rules:
  - {id: per-a, tools: [add], rate: 2/hour, per: [user, "argument:a"]}
""")
    calls = [Call("alice", "agent", "k1", "calc", "tools/call", "add", {"a": a}) for a in (7, "07", " +7", 7.0)]
    ids = {tuple(r.identifiers(c)) for c in calls for r in p.rate_rules(c)}
    assert len(ids) == 1


# --- G10: a deny pattern's "." matches a newline; an allow pattern's does not ---------------------------------

NO_DROP = """
servers:
  calc: {default: allow}
rules:
  - id: no-drop
    effect: deny
    tools: [echo]
    arguments:
      text: {regex: "drop .*"}
  - id: safe-only
    effect: allow
    tools: [safe]
    arguments:
      text: {regex: "safe .*"}
"""


@pytest.mark.parametrize("text", ["drop table users", "DROP table", "drop table users\n", "drop table\nusers",
                                  "\ndrop table", " drop table ", "drop x\r\n"])
def test_a_deny_pattern_matches_across_lines(tmp_path: Path, text: str) -> None:
    assert decide(policy(tmp_path, NO_DROP), "echo", {"text": text}) == (False, "no-drop")


def test_an_allow_pattern_stops_at_a_newline(tmp_path: Path) -> None:
    p = policy(tmp_path, NO_DROP.replace("default: allow", "default: deny"))
    assert decide(p, "safe", {"text": "safe words"}) == (True, "safe-only")
    assert decide(p, "safe", {"text": "safe words\nrm -rf /"}) == (False, "default:calc")
    assert compile_pattern("a.b").fullmatch("a\nb") is None
    assert compile_pattern("a.b", ignore_case=True).fullmatch("A\nB") is not None
