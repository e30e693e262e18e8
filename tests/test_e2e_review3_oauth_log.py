"""Review 3, G4: a token endpoint's error text never reaches Valet's log raw.

The endpoint answers a refresh with ``400 {"error": "bad\\n<the refresh token>\\r\\n<a forged log line>"}``.
Before, Valet logged that ``error`` member as it came, for each attempt: the refresh token in ``valet.log``
(the log guard learnt OAuth values only once an answer of that origin had been relayed) and log lines
the server started. Now only registered OAuth error codes are kept, every grant's tokens are known to the
log guard from the moment the grant is read, and control characters in log arguments are escaped.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .support import PYTHON, ROOT, free_port, jsonrpc, post, start_valet, wait_for_port
from .test_e2e_oauth import AuthServer, login

pytestmark = pytest.mark.e2e


def test_a_token_endpoint_echoing_the_refresh_token_leaves_no_trace_in_the_log(tmp_path: Path) -> None:
    port = free_port()
    auth = AuthServer(port, subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/oauth_server.py"), "--port",
                                              str(port), "--access-ttl", "2"], cwd=ROOT))
    echo_port = free_port()
    echo = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/echo_token_endpoint.py"), str(echo_port), auth.base],
                            cwd=ROOT)
    try:
        wait_for_port(port)
        wait_for_port(echo_port)
        proxy = start_valet(tmp_path, None, config_text=f"""
servers:
  cloud:
    url: {auth.base}/mcp
    auth: oauth
    oauth:
      scopes: [mcp]
      token_endpoint: http://127.0.0.1:{echo_port}/token
""")
        try:
            login(proxy, auth, "alice")
            key, _ = proxy.new_key("alice", "g4")
            time.sleep(3)  # the 2 s access token expires: the first call refreshes, before any answer was relayed
            r = post(f"{proxy.base}/cloud", jsonrpc("tools/list", {}, 1), key)
            assert r.status_code in (403, 503), r.text
            seen = httpx.get(f"http://127.0.0.1:{echo_port}/_seen", timeout=5).json()
            assert seen  # the refresh token was sent, and echoed
        finally:
            proxy.stop()
        log = proxy.log.read_text(errors="replace")
        assert "OAuth refresh for cloud/alice failed (unrecognized_error)" in log
        for token in set(seen):
            assert token not in log and token not in r.text
        assert not any(line.startswith(("valet WARNING audit checkpoint", "fake-rt", "[REDACTED"))
                       for line in log.splitlines())
        assert "forged" not in log
    finally:
        for process in (echo, auth.process):
            process.terminate()
            process.wait(10)
