from __future__ import annotations

import json

import pytest

from addon.protocol.errors import Cause, Refusal
from addon.protocol.jsonrpc import check_headers, parse_body

LIMIT = 1 << 20


def cause_of(data: bytes) -> Cause:
    with pytest.raises(Refusal) as info:
        parse_body(data, LIMIT)
    return info.value.cause


def test_single_call_is_described_and_reserialized_exactly() -> None:
    raw = b'{ "jsonrpc": "2.0", "id": 7, "method": "tools/call",\n "params": {"name": "add", "arguments": {"a": 1}} }'
    body = parse_body(raw, LIMIT)
    (m,) = body.messages
    assert (m.method, m.id, m.tool, m.arguments) == ("tools/call", 7, "add", {"a": 1})
    assert json.loads(body.serialize()) == json.loads(raw)
    assert body.serialize() == b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":1}}}'


def test_unicode_survives_reserialization_unchanged() -> None:
    raw = json.dumps({"jsonrpc": "2.0", "id": "x", "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"text": "héllo \u202e ✓"}}}, ensure_ascii=True).encode()
    body = parse_body(raw, LIMIT)
    assert json.loads(body.serialize()) == json.loads(raw)


def test_batches_mix_requests_notifications_and_responses() -> None:
    raw = json.dumps([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": "s1", "result": {}},
    ]).encode()
    body = parse_body(raw, LIMIT)
    assert body.is_batch and [m.method for m in body.messages] == ["tools/list", "notifications/initialized", None]
    assert [m.has_id for m in body.messages] == [True, False, True]


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"", Cause.PARSE_ERROR),
        (b"{", Cause.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', Cause.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":1,"a":2}}', Cause.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":Infinity}}', Cause.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":-Infinity}}', Cause.PARSE_ERROR),
        (b"\xef\xbb\xbf{}", Cause.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"p\xc3"}', Cause.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"\xed\xa0\x80"}', Cause.PARSE_ERROR),  # UTF-8-encoded surrogate
        (b"[" * 100000 + b"]" * 100000, Cause.PARSE_ERROR),
        (b"[]", Cause.INVALID_REQUEST),
        (b"7", Cause.INVALID_REQUEST),
        (b'{"id":1,"method":"ping"}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":{},"method":"ping"}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":""}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","result":{}}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}', Cause.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1]}}', Cause.INVALID_REQUEST),
    ],
)
def test_strictness(data: bytes, cause: Cause) -> None:
    assert cause_of(data) is cause


def test_size_limit() -> None:
    with pytest.raises(Refusal) as info:
        parse_body(b'{"jsonrpc":"2.0","id":1,"method":"ping"}', 10)
    assert info.value.cause is Cause.BODY_TOO_LARGE


def modern(name: str = "add") -> bytes:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": name, "arguments": {}, "_meta": meta}}).encode()


def test_headers_agree() -> None:
    check_headers(parse_body(modern(), LIMIT), "2026-07-28", "tools/call", "add")
    check_headers(parse_body(modern("ünï"), LIMIT), "2026-07-28", "tools/call", "=?base64?w7xuw68=?=")
    check_headers(parse_body(b'{"jsonrpc":"2.0","id":1,"method":"ping"}', LIMIT), None, None, None)


@pytest.mark.parametrize(
    "headers",
    [
        ("2026-07-28", "tools/call", "echo"),
        ("2026-07-28", "tools/list", "add"),
        ("2025-11-25", "tools/call", "add"),
        (None, "tools/call", "add"),
        ("2026-07-28", None, "add"),
        ("2026-07-28", "tools/call", None),
        ("2026-07-28", "tools/call", "=?base64?!!?="),
        ("2026-07-28", "tools/call", "ADD"),
    ],
)
def test_headers_disagree(headers: tuple[str | None, str | None, str | None]) -> None:
    with pytest.raises(Refusal) as info:
        check_headers(parse_body(modern(), LIMIT), *headers)
    assert info.value.cause is Cause.HEADER_MISMATCH


def test_legacy_body_with_contradicting_header_is_refused() -> None:
    body = parse_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}', LIMIT)
    with pytest.raises(Refusal):
        check_headers(body, None, None, "echo")
    batch = parse_body(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', LIMIT)
    with pytest.raises(Refusal):
        check_headers(batch, None, "ping", None)


@pytest.mark.parametrize("params", [
    {"name": "echo", "Name": "x"},
    {"name": "echo", "arguments": {"path": "/a", "PATH": "/b"}},
    {"name": "echo", "arguments": {"deep": [{"k": 1, "K": 2}]}},
    {"name": "echo", "arguments": {"stra\u00dfe": 1, "STRASSE": 2, "Stra\u00dfe": 3}},
])
def test_members_differing_only_by_case_are_refused(params) -> None:
    from addon.protocol.jsonrpc import parse_body as parse

    body = json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": params}).encode()
    with pytest.raises(Refusal) as info:
        parse(body, 1 << 20)
    assert info.value.cause is Cause.CASE_TWIN and info.value.rpc_id == 4


def test_distinct_members_pass() -> None:
    from addon.protocol.jsonrpc import parse_body as parse

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"a": 1, "b": {"a": 2}, "ab": [{"a": 1}, {"A": 1}]}}}
    assert parse(json.dumps(body).encode(), 1 << 20).messages[0].arguments["b"] == {"a": 2}


# -- after the security review ------------------------------------------------------------------------------------

@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1.5e308999"])
def test_numbers_out_of_float_range_are_a_parse_error(number: bytes) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":' + number + b"}}}"
    assert cause_of(body) is Cause.PARSE_ERROR


def test_large_but_finite_numbers_still_parse_and_reserialize() -> None:
    raw = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1e300,"b":123456789012345678901234567890}}}'
    body = parse_body(raw, LIMIT)
    assert json.loads(body.serialize())["params"]["arguments"]["b"] == 123456789012345678901234567890


@pytest.mark.parametrize(("method", "params"), [
    ("tools/call", {"name": "read_file", "Arguments": {"path": "/x"}}),
    ("tools/call", {"name": "read_file", "arguments": {}, "TASK": {}}),
    ("prompts/get", {"name": "p", "ARGUMENTS": {}}),
    ("resources/read", {"URI": "file:///x", "uri": "file:///y"}),
    ("resources/read", {"uri": "file:///y", "_Meta": {}}),
    ("ping", {"_META": {}}),
])
def test_params_members_that_are_defined_ones_in_another_case_are_refused(method: str, params: dict) -> None:
    cause = cause_of(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())
    assert cause in (Cause.MEMBER_CASE, Cause.CASE_TWIN)


def test_defined_and_unknown_params_members_are_kept() -> None:
    params = {"name": "add", "arguments": {"a": 1}, "_meta": {"progressToken": 1}, "task": {"ttl": 5},
              "inputResponses": {}, "requestState": "s", "vendorExtension": 1}
    body = parse_body(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode(), LIMIT)
    assert body.messages[0].params == params


def test_batches_are_capped() -> None:
    ping = {"jsonrpc": "2.0", "method": "ping"}
    assert len(parse_body(json.dumps([{**ping, "id": i} for i in range(3)]).encode(), LIMIT, 3).messages) == 3
    with pytest.raises(Refusal) as info:
        parse_body(json.dumps([{**ping, "id": i} for i in range(4)]).encode(), LIMIT, 3)
    assert info.value.cause is Cause.BATCH_TOO_LARGE
    with pytest.raises(Refusal) as info:
        parse_body(json.dumps([{**ping, "id": i} for i in range(101)]).encode(), LIMIT)
    assert info.value.cause is Cause.BATCH_TOO_LARGE
