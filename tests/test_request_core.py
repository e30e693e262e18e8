"""The pure request-side core: Origin/Host rules, valet keys in requests, legacy endpoints, request-line checks."""

from __future__ import annotations

import pytest

from addon.protocol.errors import Cause, Refusal
from addon.protocol.keyleak import carries_key, misplaced_key
from addon.protocol.legacy_sse import EndpointRefused, Mount, rewrite_endpoint, rewrite_event
from addon.protocol.origin import DEFAULT_ORIGINS, default_hosts, host_allowed, origin_allowed
from addon.protocol.request_checks import check_request_line, check_upgrade
from addon.protocol.routing import Upstream

KEY = "vk_0123456789ab_" + "A" * 43


def test_default_origins() -> None:
    for ok in ["http://localhost:8787", "http://127.0.0.1:3000", "http://[::1]:1", "http://localhost",
               "HTTP://LOCALHOST:1"]:
        assert origin_allowed(ok, DEFAULT_ORIGINS), ok
    for bad in ["null", "", "http://evil.example.com", "http://localhost.evil.com", "http://127.0.0.1.nip.io:80",
                "http://localhost:80@evil.com", "file://", "http://localhost:80\r\nx"]:
        assert not origin_allowed(bad, DEFAULT_ORIGINS), bad


def test_hosts() -> None:
    defaults = default_hosts("127.0.0.1", 8787)
    assert host_allowed("127.0.0.1:8787", defaults) and host_allowed("LOCALHOST:8787", defaults)
    assert host_allowed("[::1]:8787", defaults)
    for bad in ["127.0.0.1:8788", "localhost", "evil.example.com:8787", "", "127.0.0.1:8787@evil", "[::1",
                "127.0.0.1:99999", "127.0.0.1:"]:
        assert not host_allowed(bad, defaults), bad
    assert default_hosts("0.0.0.0", 80) == ("localhost:80", "127.0.0.1:80", "[::1]:80")
    assert "[fe80::1]:80" in default_hosts("fe80::1", 80)
    assert host_allowed("valet.internal:9", ["valet.internal"]) and host_allowed("valet.internal", ["valet.internal"])
    assert host_allowed("a.example.com:443", ["*.example.com:443"], 443)
    assert not host_allowed("a.example.com:80", ["*.example.com:443"])


def test_keys_are_found_in_any_form() -> None:
    assert carries_key(KEY, None) and carries_key("x=" + KEY.replace("_", "%5F"), None)
    assert carries_key("Bearer " + KEY.upper(), None)
    assert not carries_key("vk_notakey", None)
    assert carries_key("abc-secret-value", "abc-secret-value")
    assert misplaced_key(KEY, [("x-a", "1")], [("q", KEY)], "/p") == "the query"
    assert misplaced_key(KEY, [("cookie", f"s={KEY}")], [], "/p") == "the cookie header"
    assert misplaced_key(KEY, [], [], f"/p/{KEY}") == "the path"
    assert misplaced_key(KEY, [("x-a", "1")], [("q", "2")], "/p") is None


def test_keys_in_json_bodies() -> None:
    from addon.protocol.keyleak import body_carries_key

    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY).encode()
    assert body_carries_key(b'{"a":"' + KEY.encode() + b'"}', lambda: b"")
    assert body_carries_key(b'{"a":"' + escaped + b'"}', lambda: ('{"a":"' + KEY + '"}').encode())
    assert not body_carries_key(b'{"a":"vk_ but not a key"}', lambda: b"")


def mount(mode: str, path: str = "") -> Mount:
    return Mount(mode, "legacy", Upstream("legacy", "http", "127.0.0.1", 9000, path), "http://127.0.0.1:9000/sse")


def test_endpoints_are_rewritten_to_valets_mount() -> None:
    assert rewrite_endpoint("/messages/?session_id=ab", mount("reverse")) == (
        "/legacy/messages/?session_id=ab", [("session_id", "ab")])
    assert rewrite_endpoint("messages?x=1", mount("reverse"))[0] == "/legacy/messages?x=1"
    assert rewrite_endpoint("http://127.0.0.1:9000/m?s=1", mount("forward"))[0] == "/m?s=1"
    assert rewrite_endpoint("/api/m?s=1", mount("reverse", "/api"))[0] == "/legacy/m?s=1"
    event = b"event: endpoint\r\ndata: /messages/?session_id=ab\r\n\r\n"
    assert rewrite_event(event, mount("reverse")) == (
        b"event: endpoint\r\ndata: /legacy/messages/?session_id=ab\r\n\r\n", [("session_id", "ab")])
    message = b"event: message\r\ndata: {\"endpoint\": 1}\r\n\r\n"
    assert rewrite_event(message, mount("reverse")) == (message, [])


@pytest.mark.parametrize("data", [
    "http://evil.example:9000/messages/", "//evil.example/m", "https://127.0.0.1:9000/m", "http://127.0.0.1:9001/m",
    "http://user:pw@127.0.0.1:9000/m", "/m#frag", "/%2e%2e/admin", "/other/m", "", "/m\nx", "/caf\u00e9",
])
def test_endpoints_elsewhere_are_refused(data: str) -> None:
    with pytest.raises(EndpointRefused):
        rewrite_endpoint(data, mount("reverse", "/api" if data == "/other/m" else ""))


def test_request_line_checks() -> None:
    with pytest.raises(Refusal) as info:
        check_upgrade([("Connection", "keep-alive, Upgrade")])
    assert info.value.cause is Cause.UPGRADE_REFUSED
    check_upgrade([("connection", "keep-alive")])
    for headers, query, cause in [([("X-Original-URL", "/a")], [], Cause.REWRITE_HEADER),
                                  ([("Forwarded", "host=x")], [], Cause.REWRITE_HEADER),
                                  ([("X-HTTP-Method", "PUT")], [], Cause.METHOD_OVERRIDE),
                                  ([], [(" _Method", "DELETE")], Cause.METHOD_OVERRIDE)]:
        with pytest.raises(Refusal) as info:
            check_request_line(headers, query)
        assert info.value.cause is cause
    check_request_line([("accept", "x")], [("method", "flickr.photos.search")])
