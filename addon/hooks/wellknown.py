"""First contact: answer, in Valet's words, the requests that are not MCP calls at all.

Runs right after the exchange is opened and before authentication, in reverse mode:

- **OAuth discovery.** A client that gets a 401 may try MCP authorization
  (``/.well-known/oauth-protected-resource``, ``/.well-known/oauth-authorization-server``,
  ``/.well-known/openid-configuration``, each also under ``/<server>/`` or with a
  path suffix, then ``/register``, ``/authorize``, ``/token``). Valet is not an
  authorization server and must not send such a request upstream (the agent is
  never to do OAuth with an upstream Valet holds the credentials of). Each gets a
  fast 404 whose JSON body says what to send instead. A 404 on discovery makes the
  MCP SDKs, the Inspector and mcp-remote stop, where a 401 or a redirect would
  send them into a registration loop or a browser login that never completes.
- **No server in the path** (``/``): a 404 saying what the URL should look like,
  instead of "no server named ''". Names of configured servers are not listed here
  (no key has been checked yet).
- **A key without ``Bearer``** (``Authorization: vk_...``): a 401 saying to send
  ``Authorization: Bearer <key>``, instead of "a valet key is required".

Every answer is an ordinary refusal: audited, nothing forwarded.
"""

from __future__ import annotations

from mitmproxy import http

from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, answered, exchange_of, refuse
from addon.protocol.errors import Cause, Refusal

HOW_TO_AUTHENTICATE = "send a valet key as 'Authorization: Bearer vk_...' (an operator makes one: valet key create)"
_DISCOVERY = ("oauth-protected-resource", "oauth-authorization-server", "openid-configuration")
_OAUTH_ENDPOINTS = ("register", "authorize", "token", "revoke", "introspect")


def is_oauth_discovery(path: str, servers: object) -> bool:
    """True for the well-known and OAuth endpoint paths an MCP client probes (query and case ignored)."""
    segments = [s for s in path.partition("?")[0].lower().split("/") if s]
    if ".well-known" in segments:
        after = segments[segments.index(".well-known") + 1 :]
        return bool(after) and after[0] in _DISCOVERY
    # /register etc. only at the root and only when no configured server has that name
    return len(segments) == 1 and segments[0] in _OAUTH_ENDPOINTS and segments[0] not in servers  # type: ignore[operator]


class FirstContact:
    def __init__(self, state: ValetState) -> None:
        self.state = state

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if answered(flow) or self.state.mode != "reverse":
            return
        exchange = exchange_of(flow)
        servers = exchange.snapshot.config.servers if exchange is not None and exchange.snapshot else {}
        path = flow.request.path
        if is_oauth_discovery(path, servers):
            refuse(flow, Refusal(
                Cause.OAUTH_NOT_SUPPORTED,
                f"Valet does not do OAuth with its clients: {HOW_TO_AUTHENTICATE}",
                data={"how": "Authorization: Bearer <valet key>"},
            ))
            return
        if path.partition("?")[0].strip("/") == "":
            refuse(flow, Refusal(
                Cause.UNKNOWN_SERVER,
                "no server in the path: MCP clients call http://<valet address>/<server>, where <server> is "
                f"a name from Valet's configuration; {HOW_TO_AUTHENTICATE}",
            ))
            return
        authorization = flow.request.headers.get("authorization")
        if authorization is not None and authorization.strip().partition(" ")[0].lower() != "bearer":
            refuse(flow, Refusal(
                Cause.MISSING_KEY,
                "the Authorization header must be 'Bearer <valet key>': send it as 'Authorization: Bearer vk_...'",
            ))
