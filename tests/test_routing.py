from __future__ import annotations

import pytest

from addon.config import parse_config
from addon.protocol.errors import Cause, Refusal
from addon.protocol.routing import RouteTable, normalize_path

CONFIG = parse_config("""
servers:
  notes: {url: "http://127.0.0.1:9001/mcp"}
  root: {url: "https://API.example.com"}
passthrough: ["pypi.org", "files.example.com:8443"]
""")


def test_reverse_routes_suffix_and_query() -> None:
    routes = RouteTable(CONFIG)
    r = routes.reverse("/notes")
    assert (r.server, r.scheme, r.host, r.port, r.path) == ("notes", "http", "127.0.0.1", 9001, "/mcp")
    assert routes.reverse("/notes/sub/x?a=1&b=%2F").path == "/mcp/sub/x?a=1&b=%2F"
    assert routes.reverse("/notes?x=1").path == "/mcp?x=1"
    assert routes.reverse("/root/v1/items").path == "/v1/items"
    assert routes.reverse("/root").path == "/"


@pytest.mark.parametrize("path", ["/nope", "/notesX", "/NOTES", "/%6eotes", "/", "/notes%2f"])
def test_reverse_unknown(path: str) -> None:
    with pytest.raises(Refusal) as info:
        RouteTable(CONFIG).reverse(path)
    assert info.value.cause is Cause.UNKNOWN_SERVER


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("/a//b", "/a/b"), ("/a/b/", "/a/b/"), ("/%61%20b", "/a%20b"), ("/caf%c3%a9", "/caf%C3%A9"), ("/", ""),
     ("/a%3Bb;c=d", "/a%3Bb;c=d"), ("/a%40b@c", "/a%40b@c"), ("/a b", "/a%20b"), ("/%7euser", "/~user")],
)
def test_normalize(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


@pytest.mark.parametrize(
    "raw", ["/..", "/a/../b", "/%2e%2e", "/%2E%2e/x", "/.%2e", "/.", "/a%2fb", "/a%5cb", "/a\\b", "/%00", "/%ff",
            "/..;/x", "/%2e%2e;jsessionid=1/x", "/x/..%3B/y", "/.;/x", "/\udcff", "/caf\u00e9", "/%zz", "/%4"]
)
def test_normalize_refuses_escapes(raw: str) -> None:
    with pytest.raises(Refusal) as info:
        normalize_path(raw)
    assert info.value.cause is Cause.BAD_PATH


def test_forward_matches_scheme_host_port_and_path_prefix() -> None:
    routes = RouteTable(CONFIG)
    assert routes.forward("http", "127.0.0.1", 9001, "/mcp").server == "notes"
    assert routes.forward("http", "127.0.0.1", 9001, "/mcp/x").path == "/mcp/x"
    assert routes.forward("https", "api.EXAMPLE.com", 443, "/v1").server == "root"
    assert routes.forward("https", "pypi.org", 443, "/simple") is None
    assert routes.forward("https", "files.example.com", 8443, "/") is None
    for args in [("http", "127.0.0.1", 9001, "/mcpx"), ("https", "127.0.0.1", 9001, "/mcp"),
                 ("http", "127.0.0.1", 9002, "/mcp"), ("https", "files.example.com", 443, "/")]:
        with pytest.raises(Refusal) as info:
            routes.forward(*args)
        assert info.value.cause is Cause.NOT_ALLOWED_DESTINATION
    with pytest.raises(Refusal):
        routes.forward("http", "127.0.0.1", 9001, "/mcp/../admin")


def test_connect_targets() -> None:
    routes = RouteTable(CONFIG)
    assert routes.allows_host("api.example.com", 443)
    assert routes.allows_host("pypi.org", 443)
    assert not routes.allows_host("api.example.com", 8443)
    assert not routes.allows_host("evil.example.com", 443)


@pytest.mark.parametrize(
    "raw", ["/%252e%252e/x", "/a%252fb", "/%25u002e", "/%c0%ae%c0%ae/x", "/%e0%80%ae", "/%u2215", "/%U002E",
            "/%EF%BC%8E%EF%BC%8E/x", "/a%EF%BC%8Fb", "/a%EF%BC%BCb", "/a%E2%88%95b", "/a%E2%81%84b", "/a%E2%80%A4",
            "/a./b", "/a.", "/a%20/b", "/a%20", "/..%20/x", "/.%2e./x", "/a%C2%85b", "/a%E2%80%A8b"]
)
def test_normalize_refuses_what_a_lenient_decoder_reads_differently(raw: str) -> None:
    with pytest.raises(Refusal) as info:
        normalize_path(raw)
    assert info.value.cause is Cause.BAD_PATH


def test_shared_path_argument_check() -> None:
    from addon.protocol.paths import is_ambiguous_path, path_argument_problem

    for fine in ["/srv/data/a.txt", "/srv/data/../b", "/srv/caf\u00e9/x", "/srv/a b/c", "relative/x", "/srv/a\u200b"]:
        assert path_argument_problem(fine) is None, fine
    for ambiguous in ["/srv/%2e%2e/x", "/srv/%252e%252e", "/srv/%u2215etc", "/srv/\uff0e\uff0e/x", "/srv/a\u2215b",
                      "/srv/a\uff0fb", "/srv/data./x", "/srv/data /x", "/srv/a\x00b", "/srv/...."]:
        assert is_ambiguous_path(ambiguous), ambiguous
