from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from addon.config import parse_config
from addon.protocol.errors import Cause, Refusal
from addon.secrets.inject import Resolution, hide_injected, inject_arguments, upstream_headers, upstream_query
from addon.secrets.outbound import Outbound
from .forms import Redactor
from addon.protocol.sse import SSEFramer

SECRET = 'fake-s3cret/"value\\+é'
R = Redactor({"TOKEN": SECRET, "OTHER": "fake-other-value-123"})


@pytest.mark.parametrize(
    "form",
    [
        SECRET,
        json.dumps(SECRET)[1:-1],
        json.dumps(SECRET, ensure_ascii=True)[1:-1],
        quote(SECRET, safe=""),
        quote(SECRET, safe="").lower(),
        base64.b64encode(SECRET.encode()).decode(),
        base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="),
        SECRET.encode().hex(),
    ],
)
def test_each_form_is_redacted_in_text(form: str) -> None:
    out = R.text(f"before {form} after")
    assert "[REDACTED:TOKEN]" in out and form not in out


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4])
def test_base64_inside_a_larger_blob_at_any_alignment(offset: int) -> None:
    blob = base64.b64encode(b"p" * offset + SECRET.encode() + b"suffix").decode()
    assert "[REDACTED:TOKEN]" in R.text(blob)


def test_json_escapes_cannot_hide_a_secret() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in "fake-other-value-123")
    doc = f'{{"result": {{"text": "{escaped}", "{escaped}": 1}}}}'.encode()
    out = R.json_or_raw(doc)
    parsed = json.loads(out)
    assert parsed == {"result": {"text": "[REDACTED:OTHER]", "[REDACTED:OTHER]": 1}}


def test_redaction_keeps_json_valid_even_when_a_secret_spans_tokens() -> None:
    r = Redactor({"Q": 'fake","x":"y'})
    doc = json.dumps({"a": 'fake","x":"y', "b": "fake"}).encode()
    assert json.loads(r.json_or_raw(doc)) == {"a": "[REDACTED:Q]", "b": "fake"}


def test_unchanged_bodies_are_returned_as_is() -> None:
    data = b'{"jsonrpc":"2.0","id":1,"result":{"x":"nothing \\n here"}}'
    assert R.json_or_raw(data) is data or R.json_or_raw(data) == data


def test_sse_events_are_rebuilt_only_when_needed_and_stay_framed() -> None:
    outbound = Outbound(R)
    untouched = b"event: message\r\ndata: {\"a\":1}\r\n\r\n"
    assert outbound.event(untouched) is untouched
    leaky = b"event: message\r\nid: " + SECRET.encode() + b"\r\ndata: {\"t\":" + json.dumps(SECRET).encode() + b"}\r\n\r\n"
    out = outbound.event(leaky)
    assert SECRET.encode() not in out and out.endswith(b"\r\n\r\n")
    (event,) = SSEFramer().feed(out)
    assert json.loads(event.split(b"data: ", 1)[1]) == {"t": "[REDACTED:TOKEN]"}


def test_tools_list_result_loses_injected_arguments() -> None:
    cfg = parse_config("""
servers:
  s:
    url: http://h/mcp
    inject:
      - tools: ["gh_*"]
        arguments: {token: "${secret:T}"}
""").servers["s"]
    remembered: list[str] = []
    outbound = Outbound(Redactor({}), frozenset({3}), hide=lambda t: hide_injected(cfg, t),
                        remember=lambda t: remembered.append(t["name"]))
    result = {"jsonrpc": "2.0", "id": 3, "result": {"tools": [
        {"name": "gh_issue", "inputSchema": {"type": "object", "properties": {"token": {}, "q": {}},
                                             "required": ["token", "q"]}},
        {"name": "other", "inputSchema": {"type": "object", "properties": {"token": {}}, "required": ["token"]}},
    ]}}
    out = json.loads(outbound.body(json.dumps(result).encode()))
    gh, other = out["result"]["tools"]
    assert gh["inputSchema"] == {"type": "object", "properties": {"q": {}}, "required": ["q"]}
    assert other["inputSchema"]["required"] == ["token"]
    assert remembered == ["gh_issue", "other"]
    # an exchange without tools/list is left alone; with one, a renumbered id is filtered all the same
    assert Outbound(Redactor({}), frozenset(), hide=lambda t: hide_injected(cfg, t)).body(
        json.dumps(result).encode()) == json.dumps(result).encode()
    renumbered = Outbound(Redactor({}), frozenset({9007199254740993}), hide=lambda t: hide_injected(cfg, t))
    assert b'"token"' not in renumbered.body(json.dumps(result).encode()).split(b"gh_issue")[1].split(b"other")[0]


@pytest.mark.parametrize(
    "echo",
    [
        json.dumps({"text": json.dumps({"k": "fake&key<x>-0123456789abcdefXYZ"}).replace("&", "\\u0026")
                    .replace("<", "\\u003c").replace(">", "\\u003e")}),
        "&lt;p&gt;fake&amp;key&lt;x&gt;-0123456789abcdefXYZ&lt;/p&gt;",
        '{"a": 1}\n{"k": "fake\\u0026key\\u003cx\\u003e-0123456789abcdefXYZ"}\n',
    ],
)
def test_encoder_defaults_and_ndjson_are_caught(echo: str) -> None:
    r = Redactor({"K": "fake&key<x>-0123456789abcdefXYZ"})
    out = r.json_or_raw(echo.encode()).decode()
    assert "0123456789abcdef" not in out and "[REDACTED:K]" in out


def test_numbers_in_tools_list_answers_are_caught() -> None:
    outbound = Outbound(Redactor({"ACCOUNT": "4111111111111111"}), frozenset({1}))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [], "n": 4111111111111111}}).encode()
    out = outbound.body(body)
    assert b"4111111111111111" not in out
    assert json.loads(out)["result"]["n"] == "[REDACTED:ACCOUNT]", "still valid JSON"
    plain = Outbound(Redactor({"ACCOUNT": "4111111111111111"})).body(b'{"n": 4111111111111111, "m": [1]}')
    assert json.loads(plain) == {"n": "[REDACTED:ACCOUNT]", "m": [1]}


CFG = parse_config("""
servers:
  s:
    url: http://h/mcp
    headers: {Authorization: "Bearer ${secret:A}", X-Id: "id-${secret:B}"}
    query: {key: "${secret:C}"}
    inject:
      - tools: ["*"]
        arguments: {token: "${secret:A}"}
      - tools: ["special"]
        arguments: {token: "${secret:B}", extra: "${secret:C}"}
  b:
    url: http://h/mcp
    basic_auth: {username: svc, password: "${secret:P}"}
""").servers


def test_headers_query_and_arguments_are_rendered() -> None:
    values = {"A": "fake-aaaaaaaa", "B": "fake-bbbbbbbb", "C": "fake-cccccccc", "P": "fake-pppppppp"}
    res = Resolution(values.get)
    assert upstream_headers(CFG["s"], res) == {"Authorization": "Bearer fake-aaaaaaaa", "X-Id": "id-fake-bbbbbbbb"}
    assert upstream_query(CFG["s"], res) == {"key": "fake-cccccccc"}
    args, overridden = inject_arguments(CFG["s"], "plain", {"token": "mine", "q": 1}, res)
    assert args == {"token": "fake-aaaaaaaa", "q": 1} and overridden == ["token"]
    args, _ = inject_arguments(CFG["s"], "special", None, res)
    assert args == {"token": "fake-bbbbbbbb", "extra": "fake-cccccccc"}, "later rules win"
    basic = upstream_headers(CFG["b"], res)["Authorization"]
    assert base64.b64decode(basic.split()[1]) == b"svc:fake-pppppppp"
    res.check()


def test_missing_secrets_are_all_named() -> None:
    res = Resolution({"A": "fake-aaaaaaaa"}.get)
    upstream_headers(CFG["s"], res)
    upstream_query(CFG["s"], res)
    with pytest.raises(Refusal) as info:
        res.check(rpc_id=5)
    assert info.value.cause is Cause.MISSING_SECRET and info.value.rpc_id == 5
    assert "B, C" in info.value.message and "fake" not in info.value.message


@pytest.mark.parametrize(
    ("snippet", "problem"),
    [
        ('headers: {Host: "x"}', "cannot be injected"),
        ('headers: {Mcp-Session-Id: "x"}', "cannot be injected"),
        ('headers: {"Bad Name": "x"}', "not a valid header name"),
        ('headers: {X: "${env:HOME}"}', "only ${secret:NAME}"),
        ('headers: {X: "${secret:}"}', "only ${secret:NAME}"),
        ('headers: {X: "a\\nb"}', "CR, LF"),
        ('headers: {Authorization: "x"}\n    basic_auth: {username: a, password: b}', "cannot both"),
        ("inject: [{tools: [x], arguments: {}}]", "arguments"),
    ],
)
def test_injection_config_errors(snippet: str, problem: str) -> None:
    from addon.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(f"servers:\n  s:\n    url: http://h/\n    {snippet}\n")
    assert problem in str(info.value)
