"""Review 3's policy findings end to end: a real Valet in front of the suite's MCP SDK server.

G8: the SDK validates tool arguments with pydantic in lax mode, so ``add(a="5000")`` runs ``add(5000, ...)``;
a deny rule on ``a >= 1000`` must refuse every spelling that reaches the tool as 5000. G9: a per-value rate
budget counts every spelling of one value. G10: a deny pattern's ``.`` matches a newline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Upstream, Valet, assert_clean_log, start_valet
from .test_e2e_policy import raw_call

pytestmark = pytest.mark.e2e

POLICY = """
servers:
  notes: {default: allow}
rules:
  - id: no-big-add
    effect: deny
    servers: [notes]
    tools: [add]
    arguments:
      a: {min: 1000}
  - id: no-drop
    effect: deny
    servers: [notes]
    tools: [echo]
    arguments:
      text: {regex: "drop .*"}
"""


@pytest.fixture(scope="module")
def valet(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    tmp = tmp_path_factory.mktemp("review3-policy")
    proxy = start_valet(tmp, None, config_text=f"servers:\n  notes:\n    url: {upstream.url}\n", policy=POLICY)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


@pytest.mark.parametrize("a", [5000, "5000", " 5000 ", "5e3", "5_000", "5000.0", "05000"])
def test_numeric_strings_do_not_slip_past_a_deny(valet: Valet, upstream: Upstream, a: object) -> None:
    key, _ = valet.new_key("alice", "g8")
    before = upstream.requests_seen()
    r = raw_call(valet, key, "add", {"a": a, "b": 1})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["data"]["rule"] == "no-big-add"
    assert upstream.requests_seen() == before  # nothing reached the tool


def test_small_numbers_in_any_spelling_still_run(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "g8-small")
    for a in (2, "2", " 2 "):
        r = raw_call(valet, key, "add", {"a": a, "b": 1})
        assert r.status_code == 200, r.text
        assert '"3"' in r.text or "3" in r.json()["result"]["content"][0]["text"]


# --- G9: a per-value budget counts the value, not its spelling -------------------------------------------------

RATE_POLICY = """
servers:
  notes: {default: allow}
rules:
  - id: add-per-a
    servers: [notes]
    tools: [add]
    rate: 2/hour
    per: [user, "argument:a"]
"""


def test_respelling_a_value_does_not_open_a_new_budget(upstream: Upstream, tmp_path: Path) -> None:
    proxy = start_valet(tmp_path, None, config_text=f"servers:\n  notes:\n    url: {upstream.url}\n",
                        policy=RATE_POLICY)
    try:
        key, _ = proxy.new_key("alice", "g9")
        statuses = [raw_call(proxy, key, "add", {"a": a, "b": 1}, i).status_code
                    for i, a in enumerate([7, 7, 7.0, "7", " 7", "07", "+7", "0007"], 1)]
        assert statuses == [200, 200] + [429] * 6
        assert raw_call(proxy, key, "add", {"a": 8, "b": 1}, 99).status_code == 200  # another value: its own budget
    finally:
        assert proxy.stop() == 0
    assert_clean_log(proxy)


# --- G10: a newline does not carry a value past a deny pattern ------------------------------------------------

@pytest.mark.parametrize("text", ["drop table users\n", "drop table\nusers", "DROP TABLE users"])
def test_a_newline_does_not_pass_a_deny_pattern(valet: Valet, upstream: Upstream, text: str) -> None:
    key, _ = valet.new_key("alice", "g10")
    before = upstream.requests_seen()
    r = raw_call(valet, key, "echo", {"text": text})
    assert r.status_code == 403 and r.json()["error"]["data"]["rule"] == "no-drop", r.text
    assert upstream.requests_seen() == before


# --- method names that read as an MCP method but are not it ---------------------------------------------------

@pytest.mark.parametrize("method", ["TOOLS/CALL", "Tools/Call", "tools/call ", " tools/call", "tools/call\u0000",
                                    "tools/call\u200b", "ｔｏｏｌｓ/call"])
def test_a_method_name_variant_is_refused(valet: Valet, upstream: Upstream, method: str) -> None:
    from .support import jsonrpc, post

    key, _ = valet.new_key("alice", "method-variant")
    before = upstream.requests_seen()
    r = post(valet.base + "/notes", jsonrpc(method, {"name": "add", "arguments": {"a": 5000, "b": 1}}, 7), key)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32071, r.text
    assert upstream.requests_seen() == before
