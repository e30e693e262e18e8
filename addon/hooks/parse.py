"""Parse JSON-RPC request bodies once, strictly; the Injector forwards exactly what was parsed."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from mitmproxy import http

from addon.protocol.errors import Cause, Refusal
from addon.audit.exchange import Exchange
from addon.audit.bounds import bounded_arguments, bounded_text
from addon.protocol.jsonrpc import Body, check_headers, parse_body
from addon.protocol.keyleak import body_carries_key
from addon.protocol.method_override import check_body
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, answered, exchange_of, refuse

MAX_AUDIT_ARGUMENTS = 64 * 1024
# Bodies larger than this are parsed in a worker thread: mitmproxy runs every agent on one event loop.
OFFLOAD_BYTES = 256 * 1024
# Read once by Valet (which would join duplicates) and once by the upstream (which may take the first).
_SINGLE_HEADERS = ("content-type", "content-encoding", "content-length", "mcp-session-id", "mcp-method",
                   "mcp-name", "mcp-protocol-version")


class RpcInspector:
    def __init__(self, state: ValetState) -> None:
        self.state = state

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse what cannot be inspected before its body is even read."""
        if answered(flow):
            return
        exchange = exchange_of(flow)
        if exchange is None or exchange.server is None:
            return  # passthrough: not an MCP endpoint of ours
        request = flow.request
        if exchange.snapshot.config.servers[exchange.server].kind == "http":
            return  # a plain HTTP API: its bodies are not JSON-RPC
        # one pass over the fields (mitmproxy's get_all compares bytes.lower() of each name the same way)
        seen = Counter(name.lower() for name, _ in request.headers.fields)
        for name in _SINGLE_HEADERS:
            if seen[name.encode()] > 1:
                refuse(flow, Refusal(Cause.INVALID_REQUEST, f"the {name} header is given more than once"))
                return
        headers = _first_values(request.headers.fields) if seen[b"content-encoding"] or seen[b"content-length"] else {}
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            refuse(flow, Refusal(Cause.UNSUPPORTED_MEDIA, "request bodies must not be content-encoded"))
            return
        length = headers.get("content-length")
        limit = exchange.snapshot.config.limits.max_body_bytes
        if length is not None and (not length.isdigit() or int(length) > limit):
            refuse(flow, Refusal(Cause.BODY_TOO_LARGE, f"body is larger than {limit} bytes"))

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        exchange = exchange_of(flow)
        if exchange is None or exchange.server is None:
            return
        request = flow.request
        raw = request.raw_content or b""
        exchange.bytes_in = len(raw)
        if exchange.snapshot.config.servers[exchange.server].kind == "http":
            # A plain HTTP API's body is read as its framework may read it: a `_method` there runs another
            # method than the policy judged (an MCP body is strict JSON-RPC: no such member passes parsing).
            if raw:
                await _check_overrides(flow, raw, exchange.snapshot.config.limits.max_buffered_bytes)
            return
        if request.method != "POST":
            if raw:
                refuse(flow, Refusal(Cause.INVALID_REQUEST, f"{request.method} requests carry no body"))
            return
        headers = _first_values(request.headers.fields)  # one pass, not one scan of every field per name
        media, _, parameters = headers.get("content-type", "").partition(";")
        if media.strip().lower() != "application/json":
            refuse(flow, Refusal(Cause.UNSUPPORTED_MEDIA, "JSON-RPC requests must be application/json"))
            return
        if not utf8_charset(parameters):
            # Valet parses and forwards UTF-8; an upstream told "utf-7" would read other characters.
            refuse(flow, Refusal(Cause.CHARSET_NOT_UTF8, "JSON-RPC requests must be UTF-8 (charset=utf-8 or none)"))
            return
        limits = exchange.snapshot.config.limits
        try:
            if len(raw) > OFFLOAD_BYTES:  # parsing and checking a large body must not stall every other agent
                body = await asyncio.to_thread(_parse_and_search, raw, limits.max_body_bytes,
                                               limits.max_batch_messages)
            else:
                body = _parse_and_search(raw, limits.max_body_bytes, limits.max_batch_messages)
            describe(exchange, body)
            check_headers(body, headers.get("mcp-protocol-version"), headers.get("mcp-method"), headers.get("mcp-name"),
                          required=not exchange.legacy_transport)
        except Refusal as refusal:
            refuse(flow, refusal)
            return
        exchange.body = body


async def _check_overrides(flow: http.HTTPFlow, raw: bytes, cap: int) -> None:
    """Refuse a method override in the body (docs/security.md); large bodies are read in a worker thread."""
    headers = flow.request.headers
    args = (raw, ", ".join(headers.get_all("content-type")), ", ".join(headers.get_all("content-encoding")), cap)
    try:
        if len(raw) > OFFLOAD_BYTES:
            await asyncio.to_thread(check_body, *args)
        else:
            check_body(*args)
    except Refusal as refusal:
        refuse(flow, refusal)


def _first_values(fields: tuple[tuple[bytes, bytes], ...]) -> dict[str, str]:
    """Lower-cased header name -> its value, exactly what mitmproxy's ``headers.get(name)`` gives (names
    compared as ASCII-lowered bytes, values decoded as UTF-8 with surrogateescape, repeated ones joined
    with ", "), for every name in one pass."""
    out: dict[str, str] = {}
    for name, value in fields:
        key = name.lower().decode("utf-8", "surrogateescape")
        text = value.decode("utf-8", "surrogateescape")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _parse_and_search(raw: bytes, max_bytes: int, max_messages: int) -> Body:
    """Parse the body and refuse one holding a valet key: pure, so it may run in a worker thread."""
    body = parse_body(raw, max_bytes, max_messages)
    if body_carries_key(raw, body.serialize):  # before describe(): a key never lands in the audit row
        raise Refusal(Cause.KEY_MISPLACED, "a valet key was found in the body; it never goes upstream",
                      None if body.is_batch else body.messages[0].id)
    return body


def utf8_charset(parameters: str) -> bool:
    """True when Content-Type parameters name no charset, or exactly utf-8 (any case, quoted or not)."""
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            return False
    return True


def describe(exchange: Exchange, body: Body, scrub: Callable[[bytes], bytes] | None = None,
             audited: Mapping[int, dict[str, Any]] | None = None) -> None:
    """Fill the audit fields from the body: as received (here), and again as forwarded (by the Injector).

    As forwarded, ``audited`` holds, per message index, the arguments with every value Valet injected
    shown as its template with a marker per secret (Valet put them there, so it knows where they are:
    no need to search for them), and ``scrub`` (the egress scrubber) runs ONCE over the serialized
    description for anything secret the agent sent itself.
    """
    audited = audited or {}
    if body.is_batch:
        exchange.rpc_method = "batch"
        summary = [
            {"method": m.method, "id": m.id,
             **({"tool": m.tool, "arguments": audited.get(i, m.arguments)} if m.tool else {})}
            for i, m in enumerate(body.messages)
        ]
        exchange.arguments = _bounded_json(summary, scrub)
        return
    message = body.messages[0]
    exchange.rpc_method = bounded_text(message.method)  # bounded: an agent chooses both (review G11)
    exchange.rpc_id = bounded_text(json.dumps(message.id)) if message.has_id else None
    exchange.tool = message.tool
    arguments = audited.get(0, message.arguments)
    if arguments is not None:
        exchange.arguments = _bounded_json(arguments, scrub)


def _bounded_json(value: object, scrub: Callable[[bytes], bytes] | None = None) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if scrub is not None:
        raw = text.encode("utf-8", "surrogatepass")
        scrubbed = scrub(raw)  # markers replace whole secrets (and whole escapes): the JSON stays valid
        if scrubbed is not raw:
            text = scrubbed.decode("utf-8", "replace")
    return text if len(text) <= MAX_AUDIT_ARGUMENTS else bounded_arguments(text, MAX_AUDIT_ARGUMENTS)
