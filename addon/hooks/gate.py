"""Enforce the policy: kill switches, allow/deny rules, argument constraints, rate limits.

Runs on the parsed request (after :mod:`.parse`, before :mod:`.inject`), so it
decides on exactly what will be forwarded: a JSON-RPC batch is judged message
by message and refused whole if any message is refused; an argument a rule
constrains as a path goes upstream in the normalized form the rule judged.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from mitmproxy import http

from addon.protocol.errors import Cause, Refusal
from addon.policy.decisions import Call, Decision, PolicySet, visible_tools
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, refuse, routed

# MCP's tool name rule (2025-11-25): anything else could be a look-alike or carry invisible characters.
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}\Z")


class PolicyGate:
    def __init__(self, state: ValetState) -> None:
        self.state = state

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        exchange = routed(flow)
        if exchange is None:
            return  # answered already, or passthrough
        snapshot = exchange.snapshot
        policy = snapshot.policy
        base = Call(exchange.user, exchange.agent or "", exchange.key_id or "", exchange.server)
        body = exchange.body
        server = snapshot.config.servers[exchange.server]
        request = flow.request
        path = request.path.partition("?")[0]
        calls: list[Call] = []
        messages: list = []
        if server.kind == "http" or not _mcp_request(request.method, path, server.url, body is not None,
                                                     "?" in request.path):
            # A plain HTTP API, or anything on an MCP server other than JSON-RPC POSTs and the session's
            # GET stream and DELETE on its endpoint: judged as an HTTP request, by `http` rules (default deny).
            calls.append(Call(*_ids(base), http_method=request.method.upper(), http_path=matching_path(path),
                              is_http_api=True))
            messages.append(None)
            try:
                named = resource_headers(request.headers, request.method.upper())
            except ValueError as exc:
                refuse(flow, Refusal(Cause.INVALID_REQUEST, str(exc)))
                return
            for method, other in named:  # the other resources the upstream will act on: judged like the path
                calls.append(Call(*_ids(base), http_method=method, http_path=matching_path(other), is_http_api=True))
                messages.append(None)
        if server.kind != "http" and body is not None:
            # JSON-RPC is judged as JSON-RPC wherever it is sent (a legacy /messages endpoint, any sub-path),
            # on top of the HTTP judgement above: a server default never lets a denied tool through.
            for message in body.messages:
                if message.tool is not None and not TOOL_NAME.match(message.tool):
                    refuse(flow, Refusal(Cause.INVALID_TOOL_NAME,
                                         "tool names are 1 to 128 of A-Z a-z 0-9 _ - .", message.id))
                    return
                calls.append(Call(*_ids(base), method=message.method, tool=message.tool,
                                  arguments=message.arguments))
                messages.append(message)
        elif not calls:  # the session's GET stream or DELETE
            calls, messages = [base], [None]
        flow.metadata[JUDGED] = (calls, messages, body is not None and body.is_batch)  # for redecide()
        decisions = [policy.decide(call) for call in calls]
        for message, decision in zip(messages, decisions, strict=True):
            if not decision.allowed:
                refuse(flow, _refusal(decision, message, body is not None and body.is_batch))
                return
        judged = [d for m, d in zip(messages, decisions, strict=True) if m is not None]
        # the rule named in the row: the one message's, else the request line's (an HTTP request)
        exchange.rule = judged[0].rule if len(judged) == 1 else decisions[0].rule if not judged else None
        for message, decision in zip(messages, decisions, strict=True):
            for argument, normalized in decision.rewrites:
                message.raw["params"]["arguments"][argument] = normalized
                exchange.rewritten = True
        limiter = self.state.limiter
        if limiter is not None:
            for call, message in zip(calls, messages, strict=True):
                rules = policy.rate_rules(call)
                if not rules:
                    continue
                verdict = await limiter.hit(rules, call)
                if not verdict.allowed:
                    what = "holds too many distinct budgets" if verdict.too_many_keys else "reached"
                    refuse(flow, Refusal(
                        Cause.RATE_LIMITED, f"rate limit {verdict.rule!r} {what}; retry in {verdict.retry_after}s",
                        message.id if message is not None else None,
                        data={"rule": verdict.rule, "retry_after": verdict.retry_after},
                        headers={"retry-after": str(verdict.retry_after)},
                    ))
                    return
        exchange.visible = visible_tools(policy, base)


JUDGED = "valet.judged"  # flow.metadata: the calls the gate judged, their messages, whether a batch


def redecide(flow: http.HTTPFlow, policy: PolicySet) -> Refusal | None:
    """The calls this gate judged, judged again by ``policy`` (the one in force now): the refusal of the first
    one it no longer allows (a kill switch: ``disabled``, a rule: ``denied``), or None.

    For a request Valet forwards a second time, later (an OAuth replay after a refresh, review 4 H5): the
    decision taken when it arrived may be stale. Rate limits are not charged again: it is the same call.
    """
    judged = flow.metadata.get(JUDGED)
    if judged is None:
        return None
    calls, messages, in_batch = judged
    for call, message in zip(calls, messages, strict=True):
        decision = policy.decide(call)
        if not decision.allowed:
            return _refusal(decision, message, in_batch)
    return None


# Headers that name a second resource of the same upstream, which it reads or writes as well as the one in
# the request line (review 4, H8): the object stores' server-side copies read the source; WebDAV COPY/MOVE
# write the destination with the request's method. Each is judged by the HTTP rules like the path.
_RESOURCE_HEADERS = {"x-amz-copy-source": "GET", "x-goog-copy-source": "GET", "x-ms-copy-source": "GET",
                     "x-oss-copy-source": "GET", "destination": None}


def resource_headers(headers: http.Headers, method: str) -> list[tuple[str, str]]:
    """(method, path) of every other resource the request names in a header; ValueError if one cannot be read
    one way (repeated, or not a path or URL)."""
    found: list[tuple[str, str]] = []
    for name, reads_as in _RESOURCE_HEADERS.items():
        values = headers.get_all(name)
        if not values:
            continue
        if len(values) > 1:
            raise ValueError(f"{name} appears more than once")
        value = values[0].strip()
        if value.startswith("//"):  # a network-path reference: another host, whatever the upstream makes of it
            raise ValueError(f"{name} names another host")
        parts = urlsplit(value)
        target = parts.path if parts.scheme or parts.netloc else value.partition("?")[0]
        decoded = unquote(target)
        if (not target or any(c in decoded for c in "\\\x00") or decoded.startswith("//")
                or any(segment in (".", "..") for segment in decoded.split("/"))):
            raise ValueError(f"{name} does not name a path Valet can judge (dot segments, backslashes, NUL)")
        found.append((reads_as or method, target if target.startswith("/") else "/" + target))
    return found


def _mcp_request(method: str, path: str, server_url: str, has_body: bool, has_query: bool = False) -> bool:
    """What MCP's streamable HTTP transport sends, on the endpoint itself: JSON-RPC POSTs, and the
    session's bodyless GET (its SSE stream) and DELETE, without a query (no MCP client sends one there; an
    upstream may serve something else on a GET with parameters: review 4). A sub-path is not the MCP
    endpoint. Anything else is judged by ``http`` rules (default deny)."""
    endpoint = urlsplit(server_url).path.rstrip("/") or "/"
    if (path.rstrip("/") or "/") != endpoint:
        return False
    if method == "POST":
        return has_body
    return method in ("GET", "DELETE") and not has_body and not has_query


def matching_path(path: str) -> str:
    """The form HTTP rules match: percent-decoded, ``;parameters`` dropped from every segment (servers
    such as Tomcat ignore them), no trailing slash (``/admin/`` is ``/admin``)."""
    segments = [unquote(segment).partition(";")[0] for segment in path.split("/")]
    joined = "/".join(segments)
    return joined.rstrip("/") or "/"


def _ids(call: Call) -> tuple[str, str, str, str]:
    return call.user, call.agent, call.key_id, call.server


def _refusal(decision: Decision, message, in_batch: bool) -> Refusal:  # type: ignore[no-untyped-def]
    rpc_id = message.id if message is not None and not in_batch else None
    what = f"{message.method} {message.tool or ''}".strip() if message is not None else "this request"
    if decision.reason == "disabled":
        return Refusal(Cause.DISABLED, f"{what}: switched off by {decision.rule}", rpc_id,
                       data={"rule": decision.rule})
    why = f"rule {decision.label}"
    if str(decision.rule).startswith("default:"):  # nothing matched: say so, and where to change it
        why += ": no policy rule allows it, and the server denies by default; see docs/policies.md"
    return Refusal(Cause.DENIED, f"{what} is not allowed ({why})", rpc_id,
                   data={"rule": decision.label, **({"id": message.id} if in_batch and message else {})})
