"""Review 2, F13: a session id issued in an answer Valet replayed after an upstream 401 is bound too.

The upstream drops the token Valet believes valid; the agent's ``initialize`` gets a 401, Valet
refreshes, replays it and relays the replayed answer with its new ``Mcp-Session-Id``. SessionGuard
bound ids only in ``responseheaders``, which had run on the 401: the agent's next call on its new
session was refused ``unknown_session``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from .support import PYTHON, ROOT, Valet, assert_clean_log, free_port, start_valet, wait_for_port
from .test_e2e_oauth import AuthServer, config, login

pytestmark = pytest.mark.e2e

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "c", "version": "1"}}}


@pytest.fixture(scope="module")
def oauth_valet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Valet, AuthServer]]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/oauth_server.py"), "--port", str(port),
                                "--access-ttl", "300"], cwd=ROOT)
    wait_for_port(port)
    auth = AuthServer(port, process)
    proxy = start_valet(tmp_path_factory.mktemp("oauth-replay"), None, config_text=config(auth))
    try:
        yield proxy, auth
        assert proxy.stop() == 0
        assert_clean_log(proxy)
    finally:
        proxy.stop()
        auth.stop()


def session_then_call(proxy: Valet, key: str) -> tuple[httpx.Response, httpx.Response]:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
               "accept": "application/json, text/event-stream"}
    initialized = httpx.post(f"{proxy.base}/cloud", headers=headers, content=json.dumps(INITIALIZE), timeout=30)
    session = {**headers, "mcp-session-id": initialized.headers.get("mcp-session-id", ""),
               "mcp-protocol-version": "2025-11-25"}
    httpx.post(f"{proxy.base}/cloud", headers=session, timeout=30,
               content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    call = httpx.post(f"{proxy.base}/cloud", headers=session, timeout=30, content=json.dumps(
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "me", "arguments": {}}}))
    return initialized, call


def test_a_session_issued_by_a_replayed_initialize_is_bound_to_the_caller(oauth_valet) -> None:
    proxy, auth = oauth_valet
    login(proxy, auth, "alice")
    key, key_id = proxy.new_key("alice", "replay")
    initialized, call = session_then_call(proxy, key)  # the baseline: no 401
    assert initialized.headers.get("mcp-session-id") and call.status_code == 200, call.text[:300]
    auth.control("expire", user="alice")  # the server drops the token Valet believes valid: a 401 comes next
    initialized, call = session_then_call(proxy, key)
    assert initialized.status_code == 200 and initialized.headers.get("mcp-session-id")
    assert call.status_code == 200, call.text[:300]
    # and it is bound to alice's key only
    other, _ = proxy.new_key("bob", "not-the-owner")
    stolen = httpx.post(f"{proxy.base}/cloud", timeout=30, content=json.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "me", "arguments": {}}}),
        headers={"authorization": f"Bearer {other}", "content-type": "application/json",
                 "accept": "application/json, text/event-stream",
                 "mcp-session-id": initialized.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"})
    assert stolen.status_code == 404 and stolen.json()["error"]["data"]["reason"] == "unknown_session"
