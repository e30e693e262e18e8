"""Review 4, H4: an upstream's interim 1xx heads (``103 Early Hints``, an unsolicited ``100 Continue``) are
skipped, and its final answer is the one relayed and audited.

A real Valet in front of tests/upstream/interim.py (raw HTTP/1.1). Before, mitmproxy's HTTP/1 client took the
first head as the response: the agent got the 103 (which its client treats as interim: it waited for a final
answer that never came), the 200 was dropped, and the row said ``103, allow, done``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.support import PYTHON, ROOT, Valet, assert_clean_log, free_port, start_valet, wait_for_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def valet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    port = free_port()
    upstream = subprocess.Popen([PYTHON, str(ROOT / "tests" / "upstream" / "interim.py"), "--port", str(port)],
                                cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        proxy = start_valet(tmp_path_factory.mktemp("interim"), None,
                            config_text=f"servers:\n  mcp:\n    url: http://127.0.0.1:{port}\n")
        try:
            yield proxy
            assert proxy.stop() == 0
            assert_clean_log(proxy)
        finally:
            proxy.stop()
    finally:
        upstream.kill()
        upstream.wait(10)


def _call(http: httpx.Client, proxy: Valet, key: str, shape: str, rpc_id: int) -> httpx.Response:
    body = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
                       "params": {"name": "x", "arguments": {}}})
    return http.post(f"{proxy.base}/mcp/{shape}", content=body, headers={
        "authorization": f"Bearer {key}", "content-type": "application/json",
        "accept": "application/json, text/event-stream"})


@pytest.mark.parametrize("shape", ["early", "cont", "split"])
def test_interim_heads_are_skipped_and_the_final_answer_relayed(valet: Valet, shape: str) -> None:
    key, key_id = valet.new_key("alice", f"interim-{shape}")
    with httpx.Client(timeout=30) as http:  # one agent connection: it stays usable after the interim heads
        for rpc_id in (1, 2):
            answer = _call(http, valet, key, shape, rpc_id)
            assert answer.status_code == 200, answer.text[:300]
            assert answer.json() == {"jsonrpc": "2.0", "id": rpc_id, "result": {"shape": shape}}
            assert "link" not in answer.headers  # the hints' fields are not relayed
    rows = valet.rows("key_id = ?", (key_id,), expect=2)
    assert [(r["http_status"], r["decision"], r["reason"], r["state"]) for r in rows] == [(200, "allow", None, "done")] * 2
    assert all(r["bytes_out"] > 0 for r in rows)


@pytest.mark.parametrize("shape", ["many", "huge"])
def test_too_many_or_too_large_interim_heads_are_an_upstream_error(valet: Valet, shape: str) -> None:
    key, key_id = valet.new_key("alice", f"interim-{shape}")
    with httpx.Client(timeout=30) as http:
        answer = _call(http, valet, key, shape, 1)
    assert answer.status_code == 502, answer.text[:300]
    assert answer.json()["error"]["data"]["reason"] == "upstream_error"
    assert "link" not in answer.headers and "preload" not in answer.text
    row = valet.rows("key_id = ?", (key_id,))[0]
    assert (row["http_status"], row["reason"]) == (502, "upstream_error")
    assert row["decision"] == "error"
