"""Review 4, H5: the OAuth replay is judged again when it is sent, not by the world before the refresh.

The upstream answers 401 on the token Valet holds; Valet refreshes (here against a token endpoint that takes
seconds) and then sends the request once more. A key revoked, a kill switch set or a deny rule loaded while the
refresh runs must stop that second forwarding: the agent gets Valet's refusal, the audit row says so, and the
tool does not run upstream (before the fix: 200 with the tool's answer, after the revocation).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import ALLOW_ALL, PYTHON, ROOT, Valet, assert_clean_log, free_port, start_valet, wait_for_port
from .test_e2e_oauth import AuthServer, call_me, config, login, subject

pytestmark = pytest.mark.e2e

SLOW_SECONDS = 4.0  # the token endpoint's delay: the window in which the world changes


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Valet, AuthServer, Path]]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/oauth_server.py"), "--port", str(port),
                                "--access-ttl", "3600"], cwd=ROOT)
    wait_for_port(port)
    auth = AuthServer(port, process)
    tmp = tmp_path_factory.mktemp("replay-rejudged")
    proxy = start_valet(tmp, None, config_text=config(auth))
    try:
        login(proxy, auth, "alice")
        yield proxy, auth, tmp / "policy.yaml"
        assert proxy.stop() == 0
        assert_clean_log(proxy)
    finally:
        proxy.stop()
        auth.stop()


def _during_a_slow_refresh(proxy: Valet, auth: AuthServer, key: str, change) -> httpx.Response:  # type: ignore[no-untyped-def]
    """Call `me` with a token the upstream refuses and a slow token endpoint; ``change()`` the world once
    the refresh is under way; return what the agent got."""
    _until_allowed(proxy, key)  # the baseline: no 401, no refresh (and an earlier test's policy undone)
    auth.control("expire", user="alice")
    auth.control("slow", seconds=str(SLOW_SECONDS))
    before = auth.stats()["token_requests"]
    result: dict[str, httpx.Response] = {}
    caller = threading.Thread(target=lambda: result.setdefault("r", call_me(proxy, key, 2)))
    caller.start()
    try:
        deadline = time.monotonic() + 30
        while auth.stats()["token_requests"] == before:  # the 401 came back, the refresh has started
            assert time.monotonic() < deadline, "no refresh started"
            time.sleep(0.05)
        change()
        caller.join(60)
    finally:
        auth.control("slow", seconds="0")
    assert "r" in result, "the call got no answer"
    return result["r"]


def _until_allowed(proxy: Valet, key: str) -> None:
    """Call `me` until it answers (a policy file just rewritten is loaded once it has settled)."""
    deadline = time.monotonic() + 30
    while (answer := call_me(proxy, key, 1)).status_code != 200:
        assert time.monotonic() < deadline, answer.text[:300]
        time.sleep(0.3)
    assert subject(answer) == "subject=alice"


def _restore(policy: Path) -> None:
    policy.write_text(ALLOW_ALL)


def test_a_key_revoked_during_the_refresh_is_not_replayed(setup) -> None:  # type: ignore[no-untyped-def]
    proxy, auth, _ = setup
    key, key_id = proxy.new_key("alice", "h5-revoke")
    answer = _during_a_slow_refresh(proxy, auth, key, lambda: proxy.cli("key", "revoke", key_id))
    assert answer.status_code == 401, answer.text[:300]
    assert answer.json()["error"]["data"]["reason"] == "revoked_key"
    assert "subject=" not in answer.text  # the tool did not run
    row = proxy.rows("key_id = ? AND rpc_id = '2'", (key_id,))[0]
    assert (row["decision"], row["reason"], row["http_status"]) == ("deny", "revoked_key", 401)


@pytest.mark.parametrize("how", ["kill_switch", "deny_rule"])
def test_a_policy_loaded_during_the_refresh_applies_to_the_replay(setup, how: str) -> None:  # type: ignore[no-untyped-def]
    proxy, auth, policy = setup
    key, key_id = proxy.new_key("alice", f"h5-{how}")
    text = {"kill_switch": ALLOW_ALL + "users:\n  alice:\n    enabled: false\n",
            "deny_rule": ALLOW_ALL + "  - id: no-me\n    effect: deny\n    tools: [me]\n"}[how]
    try:
        answer = _during_a_slow_refresh(proxy, auth, key, lambda: policy.write_text(text))
    finally:
        _restore(policy)
    reason, status = {"kill_switch": ("disabled", 403), "deny_rule": ("denied", 403)}[how]
    assert answer.status_code == status, answer.text[:300]
    assert answer.json()["error"]["data"]["reason"] == reason
    assert "subject=" not in answer.text
    row = proxy.rows("key_id = ? AND rpc_id = '2'", (key_id,))[0]
    assert (row["decision"], row["reason"], row["http_status"]) == ("deny", reason, status)
    _until_allowed(proxy, key)  # once the policy allows again, the same key works: the refusal was the policy's
