"""Policy and key-search fixes from the security review, as pure functions (the e2e side is in
tests/test_e2e_reqfix_review.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from addon.policy.decisions import HOUSEKEEPING
from addon.policy.globs import name_pattern
from addon.protocol.errors import Cause, Refusal
from addon.protocol.keyleak import bearer_or_basic_key, misplaced_key
from addon.protocol.request_checks import check_header_names

from .test_policy_semantics import call, policy

KEY = "vk_0123456789ab_" + "A" * 43

POLICY = """
servers:
  files: {default: allow}
rules:
  - id: no-private
    effect: deny
    tools: [read_file]
    arguments:
      path: {under: /srv/private}
  - id: only-public
    effect: allow
    tools: [read_public]
    arguments:
      path: {under: /srv/public}
  - id: no-delete
    effect: deny
    tools: [delete_*]
"""


@pytest.mark.parametrize("args", [{"PATH": "/srv/private/x"}, {"Path": "/srv/private/x"},
                                  {"path": "/srv/public", "PATH": "/srv/private/x"}])
def test_deny_rules_check_every_argument_whose_name_folds_to_the_rules(tmp_path: Path, args: dict) -> None:
    decision = policy(tmp_path, POLICY).decide(call("read_file", args))
    assert not decision.allowed and decision.rule == "no-private"


def test_allow_rules_keep_exact_argument_names(tmp_path: Path) -> None:
    rules = policy(tmp_path, POLICY.replace("{default: allow}", "{default: deny}"))
    assert rules.decide(call("read_public", {"path": "/srv/public/a"})).allowed
    assert not rules.decide(call("read_public", {"PATH": "/srv/public/a"})).allowed


@pytest.mark.parametrize("tool", ["notes-delete_everything", "a-b-delete_x", "x.y-Delete_Everything"])
def test_deny_globs_see_behind_a_dash_namespace(tmp_path: Path, tool: str) -> None:
    decision = policy(tmp_path, POLICY).decide(call(tool, {}))
    assert not decision.allowed and decision.rule == "no-delete"


def test_allow_globs_do_not_see_behind_any_namespace() -> None:
    assert name_pattern(["delete_x"], ignore_case=False).match("notes-delete_x") is None
    assert name_pattern(["delete_x"], ignore_case=True, namespaced=True).match("notes-delete_x") is not None
    assert name_pattern(["delete_x"], ignore_case=True, namespaced=True).match("xdelete_x") is None


@pytest.mark.parametrize("method", ["notifications/../tools/call", "notifications/anything", "notifications/",
                                    "tools/listx", "initialize/x"])
def test_housekeeping_is_the_exact_spec_names(tmp_path: Path, method: str) -> None:
    assert method not in HOUSEKEEPING
    rules = policy(tmp_path, POLICY.replace("{default: allow}", "{default: deny}"))
    assert not rules.decide(call(None, None, method=method)).allowed
    assert rules.decide(call(None, None, method="notifications/initialized")).allowed


@pytest.mark.parametrize("credential", [f"{KEY}:", f"{KEY}:pw", f"agent:{KEY}", KEY])
def test_a_key_in_either_part_of_a_basic_credential_is_found(credential: str) -> None:
    value = "Basic " + base64.b64encode(credential.encode()).decode()
    token = bearer_or_basic_key(value)
    assert token is not None and KEY in token
    assert misplaced_key(None, [("x-auth", value)], [], "/") == "the x-auth header"


@pytest.mark.parametrize(("name", "value", "cause"), [
    ("X_Original_URL", "/admin", Cause.UNDERSCORE_HEADER),
    ("mcp_session_id", "s", Cause.UNDERSCORE_HEADER),
    ("X-Note", "a\r\n b", Cause.FOLDED_HEADER),
])
def test_underscore_names_and_folded_values_are_refused(name: str, value: str, cause: Cause) -> None:
    with pytest.raises(Refusal) as info:
        check_header_names([("host", "h"), (name, value)])
    assert info.value.cause is cause
    check_header_names([("x-original-ok", "a b"), ("mcp-session-id", "s")])


def test_a_per_argument_budget_reads_the_name_in_any_case(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules:\n  - id: per-q\n    tools: [t]\n    rate: 100/minute\n    per: [argument:q]\n")
    lower, upper = call("t", {"q": "same"}), call("t", {"Q": "same"})
    assert p.rate_rules(lower)[0].identifiers(lower) == p.rate_rules(upper)[0].identifiers(upper)
