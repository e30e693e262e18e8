"""On a 2024-11-05 HTTP+SSE session a 2026-07-28 body need not carry the per-request headers (that transport
has none, and the SDKs send a server/discover probe on it), but a header that is present must agree."""

from __future__ import annotations

import json

import pytest

from addon.protocol.errors import Refusal
from addon.protocol.jsonrpc import PROTOCOL_VERSION_META_KEY, check_headers, parse_body


def body(method: str = "server/discover", version: str = "2026-07-28") -> object:
    message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"_meta": {PROTOCOL_VERSION_META_KEY: version}}}
    return parse_body(json.dumps(message).encode(), 1 << 20, 10)


def test_streamable_http_still_requires_the_headers() -> None:
    with pytest.raises(Refusal):
        check_headers(body(), None, None, None)


def test_a_legacy_session_does_not_require_absent_headers() -> None:
    check_headers(body(), None, None, None, required=False)
    check_headers(body(), "2026-07-28", "server/discover", None, required=False)


@pytest.mark.parametrize("version,method", [("2025-06-18", None), (None, "tools/list"), ("2026-07-28", "tools/call")])
def test_a_legacy_session_still_refuses_headers_that_disagree(version: str | None, method: str | None) -> None:
    with pytest.raises(Refusal):
        check_headers(body(), version, method, None, required=False)
