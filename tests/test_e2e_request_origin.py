"""Origin and Host are checked as the MCP transport asks of a server (item 9): DNS rebinding stops at Valet."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .support import Upstream, Valet, assert_clean_log, jsonrpc, post, start_valet

pytestmark = pytest.mark.e2e

INIT = jsonrpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                              "clientInfo": {"name": "raw", "version": "0"}})


@pytest.fixture(scope="module")
def custom(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    extra = ('allowed_origins: ["https://app.example.com"]\n'
             'allowed_hosts: ["valet.internal", "127.0.0.1:*"]\n')
    proxy = start_valet(tmp_path_factory.mktemp("origin"), {"notes": upstream.url}, extra=extra)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def reason(response: httpx.Response) -> str:
    return response.json()["error"]["data"]["reason"]


def test_defaults_keep_local_clients_working(valet: Valet, key) -> None:
    for headers in ({}, {"origin": f"http://localhost:{valet.port}"}, {"origin": "http://127.0.0.1:3000"},
                    {"host": f"localhost:{valet.port}"}):
        r = post(valet.base + "/notes", INIT, key[0], headers=headers)
        assert r.status_code == 200, (headers, r.text)


def test_dns_rebinding_is_refused_and_audited(valet: Valet, upstream: Upstream, key) -> None:
    before = upstream.requests_seen()
    attempts = [
        ({"host": "evil.example.com", "origin": "http://evil.example.com"}, "origin_not_allowed"),
        ({"host": f"evil.example.com:{valet.port}"}, "host_not_allowed"),
        ({"origin": "http://evil.example.com"}, "origin_not_allowed"),
        ({"origin": "null"}, "origin_not_allowed"),
        ({"origin": "http://localhost.evil.example.com"}, "origin_not_allowed"),
        ({"host": f"127.0.0.1:{valet.port + 1 if valet.port < 65535 else 1}"}, "host_not_allowed"),
    ]
    for headers, expected in attempts:
        r = post(valet.base + "/notes", INIT, key[0], headers=headers)
        assert r.status_code == 403 and reason(r) == expected, (headers, r.text)
        assert key[0] not in r.text
    assert upstream.requests_seen() == before
    rows = valet.rows("reason IN ('origin_not_allowed', 'host_not_allowed')", expect=len(attempts))
    assert all(row["decision"] == "deny" and row["http_status"] == 403 for row in rows)


def test_configured_names_and_origins(custom: Valet, upstream: Upstream) -> None:
    key, _ = custom.new_key("alice", "browser")
    r = post(custom.base + "/notes", INIT, key, headers={"origin": "https://app.example.com"})
    assert r.status_code == 200, r.text
    assert post(custom.base + "/notes", INIT, key, headers={"host": "valet.internal:8443"}).status_code == 200
    assert post(custom.base + "/notes", INIT, key, headers={"host": "valet.internal"}).status_code == 200
    before = upstream.requests_seen()
    for headers, expected in [({"origin": f"http://localhost:{custom.port}"}, "origin_not_allowed"),
                              ({"host": f"localhost:{custom.port}"}, "host_not_allowed")]:
        r = post(custom.base + "/notes", INIT, key, headers=headers)
        assert r.status_code == 403 and reason(r) == expected, (headers, r.text)
    assert upstream.requests_seen() == before
