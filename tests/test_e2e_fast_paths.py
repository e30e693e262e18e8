"""The per-call fast paths (docs/benchmarks.md) decide exactly as the slow ones did.

- duplicated single-valued request headers are still refused, whatever their case, now that they are
  counted in one pass over the header fields (mitmproxy refuses a duplicated Content-Length itself, and
  a duplicated Mcp-Session-Id is refused by the session check before this one);
- the scrubber's joined scans are covered by tests/test_e2e_leaks.py (headers, reason, bodies, events).
"""

from __future__ import annotations

import httpx
import pytest

from .support import MCP_HEADERS, Valet, jsonrpc

BODY = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


@pytest.mark.parametrize("name", ["Content-Type", "MCP-Protocol-Version", "Mcp-Method", "content-encoding"])
def test_a_single_valued_header_given_twice_is_refused(valet: Valet, key: tuple[str, str], name: str) -> None:
    value = {"content-type": "application/json", "content-length": str(len(BODY))}.get(name.lower(), "x")
    headers = [("accept", MCP_HEADERS["accept"]), ("authorization", f"Bearer {key[0]}"),
               ("content-type", "application/json"), (name.lower(), value), (name.upper(), value)]
    if name.lower() == "content-type":
        headers = [h for h in headers if h != ("content-type", "application/json")] + [(name, value)]
    response = httpx.post(f"{valet.base}/notes", content=BODY, headers=headers, timeout=15)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["data"]["reason"] == "invalid_request"
    assert "more than once" in response.json()["error"]["message"]


def test_single_valued_headers_given_once_pass(valet: Valet, key: tuple[str, str]) -> None:
    headers = {**MCP_HEADERS, "authorization": f"Bearer {key[0]}"}
    response = httpx.post(f"{valet.base}/notes", json=jsonrpc("initialize", {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        headers=headers, timeout=15)
    assert response.status_code == 200, response.text
