"""Unit tests that kill mutants of the protocol core (jsonrpc, sse, routing, paths) and of identity; no processes.

Each test pins one behaviour a mutation changed without any other unit test noticing (see
docs/mutation-survivors.md for the mutants left alive and why they do not matter).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from addon.config import parse_config
from addon.identity import KEY_PREFIX, KeyRecord, KeyRing, KeyStore, hash_key, key_id_of
from addon.protocol.errors import Cause, Refusal
from addon.protocol.jsonrpc import MAX_DEPTH, Body, Message, check_headers, parse_body
from addon.protocol.paths import character_problem, is_ambiguous_path, path_argument_problem, segment_problem
from addon.protocol.routing import RouteTable, Upstream, _printable, normalize_path
from addon.protocol.sse import DEFAULT_MAX_EVENT_BYTES, EventTooLarge, SSEFramer, join_event, split_event

LIMIT = 1 << 20


def refusal(data: bytes, limit: int = LIMIT) -> Refusal:
    with pytest.raises(Refusal) as info:
        parse_body(data, limit)
    return info.value


# --- jsonrpc ---------------------------------------------------------------------------------------------

def test_message_accessors() -> None:
    raw = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"a": 1}}}
    (m,) = parse_body(json.dumps(raw).encode(), LIMIT).messages
    assert (m.id, m.method, m.has_id, m.name, m.tool, m.arguments) == (7, "tools/call", True, "echo", "echo", {"a": 1})
    prompt = Message({"method": "prompts/get", "params": {"name": "p"}}, "prompts/get", False)
    assert (prompt.name, prompt.tool, prompt.arguments, prompt.id) == ("p", None, None, None)
    resource = Message({"params": {"uri": "file:///x", "name": "n"}}, "resources/read", False)
    assert resource.name == "file:///x"
    assert Message({"params": [1]}, "tools/call", False).params == {}
    assert Message({"params": {"name": 5}}, "tools/call", False).name is None
    assert Message({"params": {"name": "x", "arguments": [1]}}, "tools/call", False).arguments is None
    assert Message({"params": {"name": "x"}}, None, False).name is None
    assert Message({"params": {"name": "x"}}, "ping", False).name is None


def test_serialize_is_compact_utf8_and_keeps_the_batch_shape() -> None:
    single = parse_body(b'{ "jsonrpc" : "2.0", "id" : 1, "method" : "x", "params" : {"t": "\\u00e9"} }', LIMIT)
    assert single.serialize() == '{"jsonrpc":"2.0","id":1,"method":"x","params":{"t":"é"}}'.encode()
    batch = parse_body(b'[{"jsonrpc":"2.0","id":1,"method":"x"}]', LIMIT)
    assert batch.is_batch and not single.is_batch
    assert batch.serialize() == b'[{"jsonrpc":"2.0","id":1,"method":"x"}]'


def test_size_limit_is_inclusive() -> None:
    data = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    assert parse_body(data, len(data)).messages[0].method == "ping"
    assert refusal(data, len(data) - 1).cause is Cause.BODY_TOO_LARGE


@pytest.mark.parametrize(
    ("data", "cause", "rpc_id"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\\ud800"}}', Cause.PARSE_ERROR, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"x":NaN}}', Cause.PARSE_ERROR, None),
        (b'{"jsonrpc":"1.0","id":5,"method":"x"}', Cause.INVALID_REQUEST, 5),
        (b'{"jsonrpc":"1.0","id":true,"method":"x"}', Cause.INVALID_REQUEST, None),
        (b'{"jsonrpc":"1.0","id":[1],"method":"x"}', Cause.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":null,"method":"x"}', Cause.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":3,"method":5}', Cause.INVALID_REQUEST, 3),
        (b'{"jsonrpc":"2.0","id":3,"method":"x","params":5}', Cause.INVALID_REQUEST, 3),
        (b'{"jsonrpc":"2.0","id":3,"method":"x","bogus":1}', Cause.INVALID_REQUEST, 3),
        (b'{"jsonrpc":"2.0","id":3,"method":"tools/call"}', Cause.INVALID_REQUEST, 3),
        (b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":1}}', Cause.INVALID_REQUEST, 3),
        (b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"a","arguments":"x"}}',
         Cause.INVALID_REQUEST, 3),
        (b'{"jsonrpc":"2.0","id":3,"method":"x","params":{"a":1,"A":2}}', Cause.CASE_TWIN, 3),
        (b'{"jsonrpc":"2.0","id":3,"method":"x","params":[{"a":1,"A":2}]}', Cause.CASE_TWIN, 3),
        (b'{"jsonrpc":"2.0","id":3,"method":"x","params":[[{"a":1,"A":2}]]}', Cause.CASE_TWIN, 3),
        (b'{"jsonrpc":"2.0","id":3,"result":1,"bogus":2}', Cause.INVALID_REQUEST, 3),
        (b'{"jsonrpc":"2.0","id":3}', Cause.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","error":{}}', Cause.INVALID_REQUEST, None),
        (b'[{"jsonrpc":"2.0","id":1,"method":"x"},5]', Cause.INVALID_REQUEST, None),
    ],
)
def test_refusals_and_their_ids(data: bytes, cause: Cause, rpc_id: object) -> None:
    r = refusal(data)
    assert (r.cause, r.rpc_id) == (cause, rpc_id)


def test_accepted_shapes() -> None:
    ok = [b'{"jsonrpc":"2.0","method":"notifications/x"}', b'{"jsonrpc":"2.0","id":"a","method":"x","params":[1]}',
          b'{"jsonrpc":"2.0","id":0,"error":{"code":1}}', b'{"jsonrpc":"2.0","id":1,"method":"x","params":{}}',
          b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}',
          b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\\ud83d\\ude00"}}',
          b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":{"b":1},"B":{"b":2}}}']
    for data in ok:
        assert len(parse_body(data, LIMIT).messages) == 1
    (m,) = parse_body(ok[0], LIMIT).messages
    assert (m.method, m.has_id) == ("notifications/x", False)


def test_case_twins_depth_limit() -> None:
    def nested(depth: int) -> dict:
        value: dict = {}
        for _ in range(depth):
            value = {"a": value}
        return value

    ok = {"jsonrpc": "2.0", "id": 1, "method": "x", "params": nested(MAX_DEPTH)}
    assert parse_body(json.dumps(ok).encode(), LIMIT)
    deep = {"jsonrpc": "2.0", "id": 1, "method": "x", "params": nested(MAX_DEPTH + 2)}
    assert refusal(json.dumps(deep).encode()).cause is Cause.INVALID_REQUEST
    deep_list = {"jsonrpc": "2.0", "id": 1, "method": "x", "params": json.loads("[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2))}
    assert refusal(json.dumps(deep_list).encode()).cause is Cause.INVALID_REQUEST


def test_case_twin_message_names_the_twin() -> None:
    r = refusal(b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"zz":1,"b":1,"B":2}}')
    assert "'B'" in r.message


def modern(name: str | None = "add", method: str = "tools/call") -> Body:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    params: dict = {"_meta": meta}
    if name is not None:
        params["name"] = name
    return parse_body(json.dumps({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}).encode(), LIMIT)


def test_check_headers_cases() -> None:
    check_headers(modern(None, "ping"), "2026-07-28", "ping", None)  # no name expected, none given
    with pytest.raises(Refusal) as info:
        check_headers(modern(None, "ping"), "2026-07-28", "ping", "x")
    assert info.value.rpc_id == 9 and info.value.cause is Cause.HEADER_MISMATCH
    legacy = parse_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}', LIMIT)
    check_headers(legacy, None, "tools/call", "add")
    check_headers(legacy, "2025-11-25", None, None)  # a version header alone on a legacy body
    with pytest.raises(Refusal):
        check_headers(legacy, None, "ping", None)
    meta_not_dict = parse_body(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":5}}', LIMIT)
    check_headers(meta_not_dict, None, None, None)
    batch = parse_body(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', LIMIT)
    check_headers(batch, None, None, None)
    with pytest.raises(Refusal) as info:
        check_headers(batch, "2026-07-28", None, None)
    assert info.value.cause is Cause.HEADER_MISMATCH


# --- sse ----------------------------------------------------------------------------------------------------

def test_split_and_join_event() -> None:
    assert split_event(b"event: m\r\nid: 1\r\ndata: a\r\ndata:b\r\ndata:  c\r\n\r\n") == (
        [b"event: m", b"id: 1"], b"a\nb\n c", b"\r\n")
    assert split_event(b"data: x\n\n") == ([], b"x", b"\n")
    assert split_event(b"data: x\r\r") == ([], b"x", b"\r")
    assert split_event(b": only a comment") == ([b": only a comment"], None, b"\n")
    assert split_event(b"data:\n\n") == ([], b"", b"\n")
    assert split_event(b"x data: y\n\n") == ([b"x data: y"], None, b"\n")
    assert join_event([b"event: m"], b"a\nb", b"\r\n") == b"event: m\r\ndata: a\r\ndata: b\r\n\r\n"
    assert join_event([b": c"], None, b"\n") == b": c\n\n"
    assert join_event([], b"", b"\n") == b"data: \n\n"
    others, data, eol = split_event(b"id: 2\ndata: p\ndata: q\n\n")
    assert join_event(others, data, eol) == b"id: 2\ndata: p\ndata: q\n\n"


def test_framer_state_after_a_partial_release() -> None:
    f = SSEFramer()
    assert f.feed(b"") == []
    assert f.feed(b"data: a\n\ndata: b\n") == [b"data: a\n\n"]  # "data: b\n" held, its line end remembered
    assert f.feed(b"\n") == [b"data: b\n\n"]
    assert f.feed(b"data: c\r\n\r\ndata: d\r") == [b"data: c\r\n\r\n"]
    assert f.feed(b"\n") == []  # CR LF: one line end, not an empty line
    assert f.feed(b"\r\n") == [b"data: d\r\n\r\n"]
    assert f.flush() == b""


def test_framer_after_flush_starts_clean() -> None:
    f = SSEFramer()
    assert f.feed(b"data: a\n") == []
    assert f.flush() == b"data: a\n"
    assert f.feed(b"\n") == []  # a fresh stream: the held line end is forgotten, this is a first line end
    assert f.feed(b"data: b\n\n") == [b"\ndata: b\n\n"]
    assert f.feed(b"data: c\n") == []
    assert f.flush() == b"data: c\n"
    assert f.feed(b"x") == [] and f.flush() == b"x"


def test_framer_lone_cr_then_other_byte() -> None:
    f = SSEFramer()
    assert f.feed(b"data: a\r") == []
    assert f.feed(b"\r") == [b"data: a\r\r"]  # a CR ending a chunk is a line end at once: the event is out
    assert f.feed(b"data: b\n\n") == [b"data: b\n\n"]


def test_framer_two_events_in_one_chunk_after_held_bytes() -> None:
    f = SSEFramer()
    assert f.feed(b"da") == []
    assert f.feed(b"ta: 1\n\ndata: 2\n\ndata: 3") == [b"data: 1\n\n", b"data: 2\n\n"]
    assert f.flush() == b"data: 3"


def test_framer_limit_is_inclusive_and_counts_only_the_pending_event() -> None:
    f = SSEFramer(max_event_bytes=10)
    assert f.feed(b"0123456789") == []
    with pytest.raises(EventTooLarge, match="10 bytes"):
        f.feed(b"x")
    g = SSEFramer(max_event_bytes=10)
    assert g.feed(b"data: 1234\n\n" + b"data: 567") == [b"data: 1234\n\n"]  # released bytes do not count
    assert DEFAULT_MAX_EVENT_BYTES == 8 * 1024 * 1024
    assert SSEFramer()._max == DEFAULT_MAX_EVENT_BYTES


# --- routing -------------------------------------------------------------------------------------------------

CONFIG = parse_config("""
servers:
  notes: {url: "http://127.0.0.1:9001/mcp/"}
  tls: {url: "https://Secure.Example.com/api"}
  plain: {url: "http://plain.example.com"}
  alt: {url: "https://alt.example.com:8443/x"}
passthrough: [" PyPI.org ", "files.example.com:8443"]
""")


def test_upstreams_are_parsed_once() -> None:
    t = RouteTable(CONFIG)
    assert t.upstreams["notes"] == Upstream("notes", "http", "127.0.0.1", 9001, "/mcp")
    assert t.upstreams["tls"] == Upstream("tls", "https", "secure.example.com", 443, "/api")
    assert t.upstreams["plain"] == Upstream("plain", "http", "plain.example.com", 80, "")
    assert t.upstreams["alt"].port == 8443
    assert t.passthrough == {"pypi.org", "files.example.com:8443"}


def test_reverse_more() -> None:
    t = RouteTable(CONFIG)
    assert t.reverse("/plain").path == "/"
    assert t.reverse("/plain/").path == "/"
    assert t.reverse("/plain?q=1").path == "/?q=1"
    assert t.reverse("/notes/a/").path == "/mcp/a/"
    assert t.reverse("/notes/a?b?c").path == "/mcp/a?b?c"
    r = t.reverse("/tls/x")
    assert (r.server, r.scheme, r.host, r.port, r.path) == ("tls", "https", "secure.example.com", 443, "/api/x")
    with pytest.raises(Refusal) as info:
        t.reverse("notes/x")
    assert info.value.cause is Cause.BAD_PATH
    with pytest.raises(Refusal) as info:
        t.reverse("/nope\x00" + "y" * 100)
    assert info.value.cause is Cause.UNKNOWN_SERVER and "?" in info.value.message and "..." in info.value.message
    with pytest.raises(Refusal) as info:
        t.reverse("/notes/%2e%2e/x")
    assert info.value.cause is Cause.BAD_PATH


def test_forward_more() -> None:
    t = RouteTable(CONFIG)
    r = t.forward("https", "SECURE.example.com", 443, "/api/v1?x=1")
    assert (r.server, r.path) == ("tls", "/api/v1?x=1")
    assert t.forward("https", "secure.example.com", 443, "/api").path == "/api"
    assert t.forward("http", "plain.example.com", 80, "").path == "/"
    assert t.forward("http", "plain.example.com", 80, "/a//b").path == "/a/b"
    assert t.forward("https", "pypi.org", 443, "/simple") is None
    assert t.forward("https", "PYPI.ORG", 1, "/") is None
    assert t.forward("https", "files.example.com", 8443, "/") is None
    for args in (("https", "secure.example.com", 443, "/apix"), ("http", "secure.example.com", 443, "/api"),
                 ("https", "secure.example.com", 444, "/api"), ("https", "files.example.com", 443, "/"),
                 ("https", "other.example.com", 443, "/api")):
        with pytest.raises(Refusal) as info:
            t.forward(*args)
        assert info.value.cause is Cause.NOT_ALLOWED_DESTINATION
    assert t.allows_host("SECURE.EXAMPLE.COM", 443) and t.allows_host("pypi.org", 5)
    assert not t.allows_host("secure.example.com", 80) and not t.allows_host("files.example.com", 443)
    assert t.allows_host("files.example.com", 8443)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/", ""), ("", ""), ("/a", "/a"), ("/a/", "/a/"), ("//a//b//", "/a/b/"), ("/%7e%41", "/~A"),
        ("/%3b", "/%3B"), ("/a;b", "/a;b"), ("/a b", "/a%20b"), ("/a\"<", "/a%22%3C"), ("/%2d%2E%5f", "/-._"),
        ("/a:@!$&'()*+,=", "/a:@!$&'()*+,="), ("/%e2%82%ac", "/%E2%82%AC"),
    ],
)
def test_normalize_path_forms(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


@pytest.mark.parametrize(
    "raw",
    ["/é", "/a%", "/a%4", "/a%zz", "/%ff", "/.", "/..", "/..;x", "/.;x", "/%2e", "/a%2fb", "/a%5cb", "/a%00",
     "/a%7f", "/a%1f", "/a%2525", "/a%20", "/%20a", "/a.", "/%ef%bc%8e", "/a;%2e%2e"],
)
def test_normalize_path_refusals(raw: str) -> None:
    with pytest.raises(Refusal) as info:
        normalize_path(raw)
    assert info.value.cause is Cause.BAD_PATH


def test_printable() -> None:
    assert _printable("abc") == "abc"
    assert _printable("a\nb") == "a?b"
    assert _printable("x" * 64) == "x" * 64
    assert _printable("x" * 65) == "x" * 64 + "..."
    assert _printable("abcdef", limit=3) == "abc..."


# --- paths ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("char", "problem"),
    [
        ("a", None), ("\x1f", "control"), ("\x00", "control"), ("\x7f", "control"), ("\x80", "control"),
        ("\x9f", "control"), ("\xa0", None), (" ", None), ("é", None), ("\u2215", "look-alike"), ("．", "look-alike"),
        ("\ufe68", "look-alike"), ("\u2028", "surrogate"), ("\u2029", "surrogate"), ("\ud800", "surrogate"),
        ("\x7e", None),
    ],
)
def test_character_problem(char: str, problem: str | None) -> None:
    found = character_problem(char)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_character_problem_names_the_code_point() -> None:
    assert "U+2215" in character_problem("\u2215")
    assert "U+2028" in character_problem("\u2028")


@pytest.mark.parametrize(
    ("segment", "problem"),
    [
        ("a", None), ("", None), (".", None), ("..", None), ("a.", "dot or a space"), ("a ", "dot or a space"),
        (" a", "starting or ending"), ("%41", "percent-escape"), ("%u0041", "percent-escape"), ("%U0041", "percent-escape"),
        ("%4", None), ("a\u2215", "look-alike"), ("%zz", None),
    ],
)
def test_segment_problem(segment: str, problem: str | None) -> None:
    found = segment_problem(segment)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("value", "ambiguous"),
    [
        ("/a/b", False), ("/a/../b", False), ("a\\b.\\c", True), ("/a%2e", True), ("/a%u002e", True), ("/a. /b", True),
        ("/a./b", True), ("/a\\b", False), ("/a/\u2044", True), ("/a/ b", True),
    ],
)
def test_path_argument_problem(value: str, ambiguous: bool) -> None:
    assert is_ambiguous_path(value) is ambiguous
    assert (path_argument_problem(value) is not None) is ambiguous


def test_path_argument_reason_for_escapes() -> None:
    assert "upstream may decode" in path_argument_problem("/a%41")


# --- identity -----------------------------------------------------------------------------------------------

def test_key_id_of_shapes() -> None:
    secret = "s" * 32
    assert key_id_of(f"vk_abcdef012345_{secret}") == "abcdef012345"
    assert key_id_of(f"vk_abcdef012345_{'s' * 31}") is None
    assert key_id_of(f"vk_abcdef01234_{secret}") is None
    assert key_id_of(f"vk_abcdef0123456_{secret}") is None
    assert key_id_of(f"vk_abcdef01234-_{secret}") is None
    assert key_id_of(f"vk_abcdef01234é_{secret}") is None
    assert key_id_of(f"vk_abcdef012345{secret}") is None
    assert key_id_of(f"VK_abcdef012345_{secret}") is None
    assert key_id_of(f"xvk_abcdef012345_{secret}") is None
    assert KEY_PREFIX == "vk_"


def test_keyring_revoked_and_verify(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "sub" / "keys.db")
    assert store.all() == []
    ring = KeyRing(store)
    assert ring.revoked("nope")
    key, record = store.create("alice", "agent")
    other_key, other = store.create("bob", "agent2")
    assert key.startswith("vk_" + record.id + "_") and key_id_of(key) == record.id
    assert record.key_hash == hash_key(key) and not record.revoked
    assert ring.stale()
    ring.reload()
    assert not ring.stale()
    assert not ring.revoked(record.id) and not ring.revoked(other.id)
    assert ring.verify(key) == record and ring.verify(other_key) == other
    assert ring.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert ring.verify(other_key[: len("vk_") + 12] + key[len("vk_") + 12:]) is None  # bob's id, alice's secret
    assert ring.verify(key + "\n") is None
    assert ring.verify("vk_" + "é" * 40) is None
    assert ring.verify(key + "x" * 300) is None
    assert ring.verify("garbage") is None
    assert store.revoke(record.id) and not store.revoke(record.id) and not store.revoke("unknown")
    assert ring.stale()
    ring.reload()
    assert ring.revoked(record.id) and not ring.revoked(other.id)
    assert ring.verify(key) == ring._records[record.id]  # revocation is the caller's to check
    assert [r.user for r in store.all()] == ["alice", "bob"] or [r.user for r in store.all()] == ["bob", "alice"]
    rec = KeyRecord("i", b"h", "u", "a", "t", "r")
    assert rec.revoked and not KeyRecord("i", b"h", "u", "a", "t", None).revoked


def test_key_store_listing_is_ordered(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    made = [store.create("u", f"a{i}")[1] for i in range(3)]
    listed = store.all()
    assert [r.id for r in listed] == [r.id for r in sorted(made, key=lambda r: (r.created_at, r.id))]
    assert all(r.revoked_at is None for r in listed)


# --- the exact refusal an agent reads (cause, message, id), for every refusal of the parser ----------------

@pytest.mark.parametrize(
    ("data", "cause", "message", "rpc_id"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', Cause.BODY_TOO_LARGE, "body is larger than 10 bytes", None),
        (b"\xef\xbb\xbf{}", Cause.PARSE_ERROR, "body starts with a byte-order mark", None),
        (b'{"a":"\xff"}', Cause.PARSE_ERROR, "body is not valid UTF-8", None),
        (b'{"a":', Cause.PARSE_ERROR, "body is not valid JSON", None),
        (b'{"a":1,"a":2}', Cause.PARSE_ERROR, "duplicate key 'a' in JSON object", None),
        (b'{"' + b"k" * 70 + b'":1,"' + b"k" * 70 + b'":2}', Cause.PARSE_ERROR,
         f"duplicate key {'k' * 64!r} in JSON object", None),
        (b'{"a":NaN}', Cause.PARSE_ERROR, "NaN is not valid JSON", None),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\\udc00"}}', Cause.PARSE_ERROR,
         "body has a lone UTF-16 surrogate escape", None),
        (b"[]", Cause.INVALID_REQUEST, "empty batch", None),
        (b"[1]", Cause.INVALID_REQUEST, "a JSON-RPC message must be an object", None),
        (b'{"id":"q","method":"x"}', Cause.INVALID_REQUEST, 'missing or wrong "jsonrpc" member', "q"),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"x"}', Cause.INVALID_REQUEST, '"id" must be a string or an integer', None),
        (b'{"jsonrpc":"2.0","id":2,"method":""}', Cause.INVALID_REQUEST, '"method" must be a non-empty string', 2),
        (b'{"jsonrpc":"2.0","id":2,"method":"x","params":1}', Cause.INVALID_REQUEST,
         '"params" must be an object or an array', 2),
        (b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":[]}', Cause.INVALID_REQUEST,
         "tools/call needs params.name as a string", 2),
        (b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a","arguments":1}}', Cause.INVALID_REQUEST,
         "tools/call params.arguments must be an object", 2),
        (b'{"jsonrpc":"2.0","id":2,"result":1,"error":1}', Cause.INVALID_REQUEST,
         "a message needs a method, or an id and one of result/error", None),
        (b'{"jsonrpc":"2.0","id":2,"method":"x","zz":1,"' + b"y" * 70 + b'":1}', Cause.INVALID_REQUEST,
         f"unknown member {'y' * 64!r}", 2),
        (b'{"jsonrpc":"2.0","id":2,"result":1,"extra":1}', Cause.INVALID_REQUEST, "unknown member 'extra'", 2),
        (b'{"jsonrpc":"2.0","id":2,"method":"x","params":{"b":1,"a":1,"A":1}}', Cause.CASE_TWIN,
         "members differ only by letter case: 'A'", 2),
        (b'{"jsonrpc":"2.0","id":2,"method":"x","params":{"' + b"N" * 70 + b'":1,"' + b"n" * 70 + b'":1}}',
         Cause.CASE_TWIN, f"members differ only by letter case: {'N' * 64!r}", 2),
    ],
)
def test_parser_refusals_exactly(data: bytes, cause: Cause, message: str, rpc_id: object) -> None:
    r = refusal(data, 10 if cause is Cause.BODY_TOO_LARGE else LIMIT)
    assert (r.cause, r.message, r.rpc_id) == (cause, message, rpc_id)


def test_depth_refusal_exactly() -> None:
    value: object = {}
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    r = refusal(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "x", "params": value}).encode())
    assert (r.cause, r.message, r.rpc_id) == (Cause.INVALID_REQUEST, f"params nest deeper than {MAX_DEPTH} levels", 3)
    ok: object = {}
    for _ in range(MAX_DEPTH):
        ok = [ok]
    assert parse_body(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "x", "params": ok}).encode(), LIMIT)
    mixed: object = {"a": 1, "A": 2}
    for _ in range(MAX_DEPTH - 1):
        mixed = {"k": [mixed]} if False else [mixed]
    r = refusal(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "x", "params": {"p": mixed}}).encode())
    assert r.cause is Cause.CASE_TWIN


def test_serialize_never_writes_nan_and_keeps_non_ascii() -> None:
    body = parse_body('{"jsonrpc":"2.0","id":1,"method":"x","params":{"t":"ü"}}'.encode(), LIMIT)
    assert "ü".encode() in body.serialize()
    body.messages[0].raw["params"]["n"] = float("nan")
    with pytest.raises(ValueError):
        body.serialize()
    two = parse_body(b'[{"jsonrpc":"2.0","id":1,"method":"x"},{"jsonrpc":"2.0","id":2,"method":"y"}]', LIMIT)
    assert json.loads(two.serialize()) == [{"jsonrpc": "2.0", "id": 1, "method": "x"}, {"jsonrpc": "2.0", "id": 2, "method": "y"}]
    one_batch = parse_body(b'[{"jsonrpc":"2.0","id":1,"method":"x"}]', LIMIT)
    assert one_batch.serialize().startswith(b"[")


def test_a_valid_surrogate_pair_escape_is_accepted_and_kept() -> None:
    body = parse_body(b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\\ud83d\\ude00 \\u00e9"}}', LIMIT)
    assert body.messages[0].params["s"] == "😀 é"


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        ("batch", (None, "ping", None), "2026-07-28 requests cannot be batched"),
        ("modern", ("2025-11-25", "tools/call", "add"), "MCP-Protocol-Version header does not match the body"),
        ("modern", ("2026-07-28", "ping", "add"), "Mcp-Method header does not match the body's method"),
        ("modern", ("2026-07-28", "tools/call", "sub"), "Mcp-Name header does not match the body"),
        ("modern", ("2026-07-28", "tools/call", None), "Mcp-Name header does not match the body"),
        ("legacy", (None, None, "sub"), "Mcp-Name header does not match the body"),
        ("legacy", (None, "ping", None), "Mcp-Method header does not match the body's method"),
        ("modern-noname", ("2026-07-28", None, None), "Mcp-Method header does not match the body's method"),
    ],
)
def test_header_refusals_exactly(body: str, headers: tuple, message: str) -> None:
    parsed = {
        "batch": parse_body(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', LIMIT),
        "modern": modern("add"),
        "modern-noname": modern(None, "ping"),
        "legacy": parse_body(b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"add"}}', LIMIT),
    }[body]
    with pytest.raises(Refusal) as info:
        check_headers(parsed, *headers)
    r = info.value
    assert (r.cause, r.message, r.rpc_id) == (Cause.HEADER_MISMATCH, message, None if body == "batch" else parsed.messages[0].id)


def test_headers_that_agree_pass() -> None:
    check_headers(modern("add"), "2026-07-28", "tools/call", "add")
    check_headers(modern(None, "ping"), "2026-07-28", "ping", None)
    legacy = parse_body(b'{"jsonrpc":"2.0","id":4,"method":"ping"}', LIMIT)
    check_headers(legacy, "2026-07-28", None, None)  # a version alone, no envelope: nothing to compare
    check_headers(legacy, None, "ping", None)


# --- routing and path refusals, exactly --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("/é", "path must be ASCII (percent-encode anything else)"),
        ("/a%4", "path has a malformed percent-escape"),
        ("/%c0%ae", "path is not valid UTF-8 once percent-decoded"),
        ("/a/./b", "path may not contain '.' or '..' segments"),
        ("/a/../b", "path may not contain '.' or '..' segments"),
        ("/a/..;x/b", "path may not contain '.' or '..' segments"),
        ("/a/.;x/b", "path may not contain '.' or '..' segments"),
        ("/a%2fb", "path may not contain encoded separators or control characters"),
        ("/a%5cb", "path may not contain encoded separators or control characters"),
        ("/a%01", "path may not contain encoded separators or control characters"),
        ("/a%7F", "path may not contain encoded separators or control characters"),
        ("/a%2541", "path is ambiguous: a percent-escape that survives decoding (double encoding or %u)"),
        ("/a.;x", "path is ambiguous: a segment ending in a dot or a space"),
        ("/a;x.", "path is ambiguous: a segment ending in a dot or a space"),
        ("/a%20;x", "path is ambiguous: a segment ending in a dot or a space"),
        ("/%20a", "path is ambiguous: a segment starting or ending with a space"),
        ("/a%c2%85", "path is ambiguous: a control character"),
        ("/a%e2%80%a8", "path is ambiguous: a surrogate or line separator (U+2028)"),
        ("/a%e2%88%95", "path is ambiguous: a look-alike of '.', '/' or '\\\\' (U+2215)"),
    ],
)
def test_normalize_path_refusals_exactly(raw: str, message: str) -> None:
    with pytest.raises(Refusal) as info:
        normalize_path(raw)
    assert (info.value.cause, info.value.message) == (Cause.BAD_PATH, message)


def test_normalize_path_keeps_what_is_not_a_dot_segment() -> None:
    with pytest.raises(Refusal):
        normalize_path("/a/...")  # not a dot segment, but a trailing dot
    assert normalize_path("/a/x;..;y") == "/a/x;..;y"
    assert normalize_path("/a/b;c") == "/a/b;c"
    assert normalize_path("/a%20b") == "/a%20b"
    assert normalize_path("/a\"b") == "/a%22b"
    assert normalize_path("/a\x7eb") == "/a~b"
    assert normalize_path("/a\x20b") == "/a%20b"


def test_route_refusals_exactly() -> None:
    t = RouteTable(CONFIG)
    with pytest.raises(Refusal) as info:
        t.reverse("x")
    assert (info.value.cause, info.value.message) == (Cause.BAD_PATH, "request path must start with '/'")
    with pytest.raises(Refusal) as info:
        t.reverse("/nope/x")
    assert (info.value.cause, info.value.message) == (Cause.UNKNOWN_SERVER, "no server named 'nope' is configured")
    with pytest.raises(Refusal) as info:
        t.forward("https", "Evil.example", 8443, "/x?y")
    assert info.value.message == "https://evil.example:8443 is neither a configured server nor allowed passthrough"
    with pytest.raises(Refusal) as info:
        t.forward("https", "evil\x01" + "e" * 70, 1, "/")
    assert info.value.message.startswith("https://evil?" + "e" * 59 + "...:1 ")


def test_forward_query_and_empty_path() -> None:
    t = RouteTable(CONFIG)
    assert t.forward("http", "plain.example.com", 80, "?q=1").path == "/?q=1"
    assert t.forward("http", "127.0.0.1", 9001, "/mcp/a?b?c").path == "/mcp/a?b?c"
    assert t.forward("http", "127.0.0.1", 9001, "/mcp").path == "/mcp"
    with pytest.raises(Refusal):
        t.forward("http", "127.0.0.1", 9001, "/mcpx")


def test_upstream_default_ports_and_missing_host() -> None:
    config = parse_config('servers:\n  a: {url: "http://h.example"}\n  b: {url: "https://h.example/p//"}\n')
    t = RouteTable(config)
    assert (t.upstreams["a"].port, t.upstreams["b"].port) == (80, 443)
    assert t.upstreams["b"].path == "/p"
    assert t.allows_host("h.example", 80) and t.allows_host("h.example", 443) and not t.allows_host("h.example", 81)
    passthrough = parse_config('servers:\n  a: {url: "http://h.example"}\npassthrough: ["p.example:81"]\n')
    assert RouteTable(passthrough).allows_host("p.example", 81) and not RouteTable(passthrough).allows_host("p.example", 80)


def test_printable_exact() -> None:
    assert _printable("a\u200bb") == "a?b"
    assert _printable("é✓") == "é✓"
    assert _printable("") == ""
    assert _printable("x" * 63) == "x" * 63


@pytest.mark.parametrize(
    ("char", "message"),
    [
        ("\x00", "a control character"), ("\x7f", "a control character"), ("\x80", "a control character"),
        ("\x81", "a control character"), ("\x9f", "a control character"),
        ("\u2029", "a surrogate or line separator (U+2029)"), ("\ud800", "a surrogate or line separator (U+D800)"),
        ("\u2215", "a look-alike of '.', '/' or '\\\\' (U+2215)"),
    ],
)
def test_character_problem_exactly(char: str, message: str) -> None:
    assert character_problem(char) == message


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        ("%2e", "a percent-escape that survives decoding (double encoding or %u)"),
        ("ab.", "a segment ending in a dot or a space"),
        ("ab ", "a segment ending in a dot or a space"),
        (" ab", "a segment starting or ending with a space"),
        ("\tab", "a control character"),
    ],
)
def test_segment_problem_exactly(segment: str, message: str) -> None:
    assert segment_problem(segment) == message


def test_segment_problem_only_spaces_are_stripped() -> None:
    assert segment_problem("ab\u00a0") is None or "space" not in segment_problem("ab\u00a0")
    assert segment_problem("Xab") is None and segment_problem("abX") is None


def test_path_argument_problem_exactly() -> None:
    assert path_argument_problem("/a%2e") == "a percent-escape (an upstream may decode it)"
    assert path_argument_problem("/a/b.\\c") == "a segment ending in a dot or a space"
    assert path_argument_problem("/a\\ b") == "a segment starting or ending with a space"
    assert path_argument_problem("/ab") is None


def test_framer_a_stream_may_start_with_a_blank_line() -> None:
    assert SSEFramer().feed(b"\n\n") == [b"\n\n"]
    f = SSEFramer()
    assert f.feed(b"data: a\n") == [] and f.flush() == b"data: a\n"
    assert f.feed(b"\n\n") == [b"\n\n"]  # after a flush, from the first byte again


def test_framer_forgets_the_last_line_end_after_a_release() -> None:
    f = SSEFramer()
    assert f.feed(b"data: a\n\nx") == [b"data: a\n\n"]
    assert f.feed(b"\ny\n\n") == [b"x\ny\n\n"]  # "x\n" is a line, not an event
    g = SSEFramer()
    assert g.feed(b"x\ny\n\n") == [b"x\ny\n\n"]
    g.feed(b"partial")
    g.flush()
    assert g.feed(b"x\ny\n\n") == [b"x\ny\n\n"]


def test_case_twin_message_names_a_twin_not_the_first_key() -> None:
    r = refusal(b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"A":0,"b":1,"B":2}}')
    assert r.message == "members differ only by letter case: 'B'"


def test_params_after_a_dot_dot_segment_are_refused() -> None:
    with pytest.raises(Refusal):
        normalize_path("/a/..;x;y")


def test_upstream_paths_lose_only_trailing_slashes() -> None:
    t = RouteTable(parse_config('servers:\n  a: {url: "http://h.example/mcpX"}\n'))
    assert t.upstreams["a"].path == "/mcpX"


def test_keys_are_stamped_in_utc(tmp_path: Path) -> None:
    _, record = KeyStore(tmp_path / "keys.db").create("u", "a")
    assert record.created_at.endswith("Z")
    store = KeyStore(tmp_path / "keys.db")
    assert store.revoke(record.id)
    assert store.all()[0].revoked_at.endswith("Z")


# --- the survivors of the complete run of 2026-11-28 ------------------------------------------------------

def test_refusals_name_their_cause_exactly() -> None:
    """The whole refusal (cause, message, JSON-RPC id), not just "refused": the agent reads the message."""
    r = refusal(b'{"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "x", "Arguments": {}}}')
    assert (r.cause, r.message, r.rpc_id) == (
        Cause.MEMBER_CASE, "params member 'Arguments' is not 'arguments': member names are case-sensitive", 9)
    r = refusal(b'{"jsonrpc": "2.0", "id": "a", "method": "prompts/get", "params": {"ARGUMENTS": {}}}')
    assert (r.cause, r.message, r.rpc_id) == (
        Cause.MEMBER_CASE, "params member 'ARGUMENTS' is not 'arguments': member names are case-sensitive", "a")
    r = refusal(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"a": 1e999}}')
    assert (r.cause, r.message) == (Cause.PARSE_ERROR, "a number is out of range")
    r = refusal(b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": -1e999}}')
    assert (r.cause, r.message) == (Cause.PARSE_ERROR, "a number is out of range")
    one = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
    with pytest.raises(Refusal) as info:
        parse_body(b"[" + b",".join([one] * 3) + b"]", LIMIT, max_messages=2)
    assert (info.value.cause, info.value.message) == (Cause.BATCH_TOO_LARGE, "a batch holds at most 2 messages")


def test_key_id_from_argument_takes_an_id_or_a_whole_key() -> None:
    from addon.identity import key_id_from_argument

    key_id = "0123456789ab"
    key = f"{KEY_PREFIX}{key_id}_" + "Q" * 43
    assert key_id_of(key) == key_id
    assert key_id_from_argument(f"  {key}\n") == key_id
    assert key_id_from_argument(f" {key_id} ") == key_id
    assert key_id_from_argument("not-a-key") == "not-a-key"


def test_last_used_reads_the_audit_log_without_creating_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from addon.audit.log import AuditWriter
    from addon.identity import last_used

    monkeypatch.chdir(tmp_path)  # a mutant opening "file:...?mode=ro" as a plain name would create it here
    db = tmp_path / "data" / "audit.db"
    db.parent.mkdir()
    assert last_used(db) == {}
    assert not db.exists()
    writer = AuditWriter(db)
    for ts, key_id, reason in [("2026-01-01T00:00:01", "k1", None), ("2026-01-01T00:00:03", "k1", "denied"),
                               ("2026-01-01T00:00:02", "k2", None), ("2026-01-01T00:00:09", "k2", "revoked_key"),
                               ("2026-01-01T00:00:09", "k3", "unknown_key"), ("2026-01-01T00:00:09", None, None)]:
        writer.submit({"ts": ts, "mode": "reverse", "http_method": "POST", "http_path": "/mcp", "decision": "allow",
                       "key_id": key_id, "reason": reason})
    writer.close()
    assert last_used(db) == {"k1": "2026-01-01T00:00:03", "k2": "2026-01-01T00:00:02"}
    assert not [p for p in tmp_path.rglob("*") if "file:" in p.name or "mode=ro" in p.name]
