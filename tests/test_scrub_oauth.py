"""OAuth and the egress scrubber: the token a refresh produced is scrubbed from the replayed answer.

Before the one scrubber, the replay after a 401 was scrubbed with the redactor
built for the OLD token, and the new access token reached the agent in clear.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from mcp.shared.inbound import encode_header_value

from .support import Valet, assert_clean_log, jsonrpc, post, start_valet
from .test_e2e_oauth import AuthServer, auth_server, config, login  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def valet(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:  # noqa: F811
    proxy = start_valet(tmp_path_factory.mktemp("scrub-oauth"), None, config_text=config(auth_server))
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def echo_token(valet: Valet, key: str) -> httpx.Response:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    body = jsonrpc("tools/call", {"name": "echo_token", "arguments": {}, "_meta": meta}, 7)
    return post(valet.base + "/cloud", body, key, headers={
        "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
        "mcp-name": encode_header_value("echo_token")})


def text_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["result"]["content"][0]["text"]


def test_the_refreshed_token_is_scrubbed_from_the_replayed_answer(valet: Valet,
                                                                  auth_server: AuthServer) -> None:  # noqa: F811
    login(valet, auth_server, "alice")
    alice, _ = valet.new_key("alice", "echo")
    expected = "token=[REDACTED:OAUTH_ACCESS_TOKEN] pct=[REDACTED:OAUTH_ACCESS_TOKEN]"
    assert text_of(echo_token(valet, alice)) == expected
    before = auth_server.stats()["refresh_token"]
    auth_server.control("expire", user="alice")  # the upstream answers 401: refresh, then replay
    assert text_of(echo_token(valet, alice)) == expected
    assert auth_server.stats()["refresh_token"] == before + 1
    assert text_of(echo_token(valet, alice)) == expected
