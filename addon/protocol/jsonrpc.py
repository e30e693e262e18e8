"""Strict, single parse of JSON-RPC request bodies.

Valet decides on what it parsed and forwards what it re-serialized from that
parse, so this parser must be at least as strict as any upstream's: it refuses
invalid UTF-8, a byte-order mark, duplicate object keys, NaN/Infinity, members
JSON-RPC does not define, members of ``params`` (``arguments`` included, at any
depth) that differ only by letter case (``name`` and ``Name``: a case-insensitive
upstream, .NET's or Jackson's with the option on, reads the one the policy did
not), a ``params`` member that is a defined one in another case (``Arguments``),
numbers out of float range (``1e400``), batches over the message limit, and
bodies over the size limit. Anything an upstream
might read differently from us is refused here rather than forwarded.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp.shared.inbound import PROTOCOL_VERSION_META_KEY, decode_header_value

from addon.protocol.errors import Cause, Refusal

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id"})
_RESPONSE_KEYS = frozenset({"jsonrpc", "result", "error", "id"})
_NAMED_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# The params members the MCP 2025-11-25 and 2026-07-28 schemas define for the methods a policy reads
# (mcp_types CallToolRequestParams, GetPromptRequestParams, ReadResourceRequestParams). The SDKs ignore other
# members, so unknown ones are forwarded; but one that equals a defined name ignoring case (``Arguments``,
# ``NAME``) is refused: a case-insensitive upstream reads it as the member the policy never saw.
_META_MEMBERS = frozenset({"_meta", "task", "inputResponses", "requestState"})
_DEFINED_PARAMS = {
    "tools/call": frozenset({"name", "arguments"}) | _META_MEMBERS,
    "prompts/get": frozenset({"name", "arguments"}) | _META_MEMBERS,
    "resources/read": frozenset({"uri"}) | _META_MEMBERS,
}
DEFAULT_MAX_BATCH_MESSAGES = 100
# Every method name the MCP specifications (2024-11-05 to 2026-07-28) define, either way. A method that is
# not one of them but reads as one once case, whitespace, control and invisible characters and Unicode
# compatibility forms are set aside (``TOOLS/CALL``, ``tools/call ``, ``tools/call\x00``, ``tools/call\u200b``)
# is refused: Valet judges ``tools/call`` by its tool and arguments only under its exact name, and an upstream
# that folds or trims method names would run the tool the policy never judged (review 3, observations).
MCP_METHODS = frozenset({
    "initialize", "ping", "server/discover", "logging/setLevel", "completion/complete",
    "tools/list", "tools/call", "resources/list", "resources/templates/list", "resources/read",
    "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "tasks/get", "tasks/list", "tasks/cancel", "tasks/result",
    "sampling/createMessage", "elicitation/create", "roots/list",
    "notifications/initialized", "notifications/cancelled", "notifications/progress",
    "notifications/roots/list_changed", "notifications/tasks/status", "notifications/message",
    "notifications/resources/updated", "notifications/resources/list_changed",
    "notifications/tools/list_changed", "notifications/prompts/list_changed",
    "notifications/elicitation/complete",
})
_INVISIBLE = re.compile("[\\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
                        "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]")


def _method_key(method: str) -> str:
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", method)).casefold()


_METHOD_KEYS = {_method_key(m): m for m in MCP_METHODS}


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message as parsed; `raw` is the object that will be re-serialized."""

    raw: dict[str, Any]
    method: str | None  # None for a response to a server-initiated request
    has_id: bool

    @property
    def id(self) -> Any:
        return self.raw.get("id")

    @property
    def params(self) -> dict[str, Any]:
        params = self.raw.get("params")
        return params if isinstance(params, dict) else {}

    @property
    def name(self) -> str | None:
        """The tool/prompt name or resource URI the message targets, as Mcp-Name carries it."""
        key = _NAMED_PARAM.get(self.method or "")
        value = self.params.get(key) if key else None
        return value if isinstance(value, str) else None

    @property
    def tool(self) -> str | None:
        return self.name if self.method == "tools/call" else None

    @property
    def arguments(self) -> dict[str, Any] | None:
        if self.method != "tools/call":
            return None
        args = self.params.get("arguments")
        return args if isinstance(args, dict) else None


@dataclass(frozen=True, slots=True)
class Body:
    messages: tuple[Message, ...]
    is_batch: bool

    def serialize(self) -> bytes:
        """The bytes to forward: exactly what was parsed, in canonical compact form."""
        obj: Any = [m.raw for m in self.messages] if self.is_batch else self.messages[0].raw
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise Refusal(Cause.PARSE_ERROR, f"duplicate key {key[:64]!r} in JSON object")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise Refusal(Cause.PARSE_ERROR, f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; ``1e400`` parses to infinity, which cannot be forwarded."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise Refusal(Cause.PARSE_ERROR, "a number is out of range")
    return value


def parse_body(data: bytes, max_bytes: int, max_messages: int = DEFAULT_MAX_BATCH_MESSAGES) -> Body:
    """Parse a request body into JSON-RPC messages, or raise a Refusal saying why not."""
    if len(data) > max_bytes:
        raise Refusal(Cause.BODY_TOO_LARGE, f"body is larger than {max_bytes} bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        raise Refusal(Cause.PARSE_ERROR, "body starts with a byte-order mark")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise Refusal(Cause.PARSE_ERROR, "body is not valid UTF-8") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants,
                         parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise Refusal(Cause.PARSE_ERROR, "body is not valid JSON") from None
    if _SURROGATE_ESCAPE.search(text):
        try:  # a lone surrogate escape parses, but can be neither forwarded nor stored
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise Refusal(Cause.PARSE_ERROR, "body has a lone UTF-16 surrogate escape") from None
    if isinstance(doc, list):
        if not doc:
            raise Refusal(Cause.INVALID_REQUEST, "empty batch")
        if len(doc) > max_messages:  # each message costs a policy decision and an audit row: bound the work
            raise Refusal(Cause.BATCH_TOO_LARGE, f"a batch holds at most {max_messages} messages")
        return Body(tuple(_message(item) for item in doc), is_batch=True)
    return Body((_message(doc),), is_batch=False)


def _message(obj: Any) -> Message:
    if not isinstance(obj, dict):
        raise Refusal(Cause.INVALID_REQUEST, "a JSON-RPC message must be an object")
    rpc_id = obj.get("id")
    if obj.get("jsonrpc") != "2.0":
        raise Refusal(Cause.INVALID_REQUEST, 'missing or wrong "jsonrpc" member', _safe_id(rpc_id))
    if "id" in obj and (isinstance(rpc_id, bool) or not isinstance(rpc_id, (str, int))):
        raise Refusal(Cause.INVALID_REQUEST, '"id" must be a string or an integer')
    if "method" in obj:
        extra = obj.keys() - _REQUEST_KEYS
        method = obj["method"]
        if not isinstance(method, str) or not method:
            raise Refusal(Cause.INVALID_REQUEST, '"method" must be a non-empty string', rpc_id)
        if method not in MCP_METHODS:
            meant = _METHOD_KEYS.get(_method_key(method))
            if meant is not None:
                raise Refusal(Cause.METHOD_VARIANT, f"method {method[:64]!r} is not {meant!r}: method names are "
                              "exact (case, spaces and invisible characters included)", rpc_id)
        if "params" in obj and not isinstance(obj["params"], (dict, list)):
            raise Refusal(Cause.INVALID_REQUEST, '"params" must be an object or an array', rpc_id)
        if method == "tools/call":
            _check_tool_call(obj.get("params"), rpc_id)
        if "params" in obj:
            _no_case_twins(obj["params"], rpc_id)
            _no_case_variants(method, obj["params"], rpc_id)
    else:
        extra = obj.keys() - _RESPONSE_KEYS
        method = None
        if ("result" in obj) == ("error" in obj) or "id" not in obj:
            raise Refusal(Cause.INVALID_REQUEST, "a message needs a method, or an id and one of result/error")
    if extra:
        raise Refusal(Cause.INVALID_REQUEST, f"unknown member {sorted(extra)[0][:64]!r}", rpc_id)
    return Message(obj, method, "id" in obj)


def _check_tool_call(params: Any, rpc_id: Any) -> None:
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        raise Refusal(Cause.INVALID_REQUEST, 'tools/call needs params.name as a string', rpc_id)
    if "arguments" in params and not isinstance(params["arguments"], dict):
        raise Refusal(Cause.INVALID_REQUEST, 'tools/call params.arguments must be an object', rpc_id)


def _no_case_variants(method: str, params: Any, rpc_id: Any) -> None:
    """Refuse a params member that is not one the method defines but equals one ignoring case."""
    if not isinstance(params, dict):
        return
    defined = _DEFINED_PARAMS.get(method, frozenset({"_meta"}))
    folded = {name.casefold(): name for name in defined}
    for key in params:
        if key not in defined and key.casefold() in folded:
            raise Refusal(Cause.MEMBER_CASE, f"params member {key[:64]!r} is not {folded[key.casefold()]!r}: "
                          "member names are case-sensitive", rpc_id)


MAX_DEPTH = 64


def _no_case_twins(value: Any, rpc_id: Any, depth: int = 0) -> None:
    """Refuse objects whose member names collide when case is ignored, at any depth of ``params``."""
    if depth > MAX_DEPTH:
        raise Refusal(Cause.INVALID_REQUEST, f"params nest deeper than {MAX_DEPTH} levels", rpc_id)
    if isinstance(value, dict):
        for fold in (str.lower, str.upper):
            folded = {fold(key) for key in value}
            if len(folded) != len(value):
                twin = _first_twin(value, fold)
                raise Refusal(Cause.CASE_TWIN, f"members differ only by letter case: {twin[:64]!r}", rpc_id)
        for item in value.values():
            if isinstance(item, (dict, list)):
                _no_case_twins(item, rpc_id, depth + 1)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)):
                _no_case_twins(item, rpc_id, depth + 1)


def _first_twin(members: dict[str, Any], fold: Callable[[str], str]) -> str:
    """The smallest member name that shares its folded form with another, in one pass.

    Only called once a collision is known, which is exactly the case a caller controls: comparing every
    name with every name here made a 200 KB body hold the (single) event loop for 20 seconds.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for key in members:
        groups[fold(key)].append(key)
    return min(key for group in groups.values() if len(group) > 1 for key in group)


def _safe_id(value: Any) -> Any:
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def check_headers(body: Body, version: str | None, method: str | None, name: str | None,
                  required: bool = True) -> None:
    """Refuse a request whose 2026-07-28 routing headers disagree with its body.

    The upstream routes on the headers and Valet decides on the body; if they
    could differ, the policy and the upstream would see different calls. A body
    that carries the modern per-request envelope must carry all the headers the
    SDK's servers check; headers on a legacy body must still agree with it.

    ``required=False`` is for a POST on a 2024-11-05 HTTP+SSE session: that
    transport has no per-request headers (the SDKs send a 2026-07-28 probe on it
    without them), so an absent header is not required, but one that is present
    must still agree with the body.
    """
    first = body.messages[0]
    meta = first.params.get("_meta")
    envelope = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    if not required:
        envelope_version, envelope = envelope, None  # judge only the headers that are present
        if version is not None and envelope_version is not None and version != envelope_version:
            raise Refusal(Cause.HEADER_MISMATCH, "MCP-Protocol-Version header does not match the body", first.id)
    if envelope is None and version is None and method is None and name is None:
        return
    if body.is_batch:
        raise Refusal(Cause.HEADER_MISMATCH, "2026-07-28 requests cannot be batched")
    if envelope is not None and version != envelope:
        raise Refusal(Cause.HEADER_MISMATCH, "MCP-Protocol-Version header does not match the body", first.id)
    if (method is not None or envelope is not None) and method != first.method:
        raise Refusal(Cause.HEADER_MISMATCH, "Mcp-Method header does not match the body's method", first.id)
    expected = first.name
    if (name is not None or (envelope is not None and expected is not None)) and decode_header_value(name) != expected:
        raise Refusal(Cause.HEADER_MISMATCH, "Mcp-Name header does not match the body", first.id)
