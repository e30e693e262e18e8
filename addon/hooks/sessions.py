"""Enforce the session-to-key binding of :mod:`addon.protocol.sessions` on live flows."""

from __future__ import annotations

from mitmproxy import http

from addon.protocol.errors import Refusal
from addon.protocol.sessions import SessionOwners
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, answered, exchange_of, refuse


class SessionGuard:
    def __init__(self, state: ValetState) -> None:
        self.state = state
        self.owners = SessionOwners()

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        exchange = exchange_of(flow)
        session_id = flow.request.headers.get("mcp-session-id")
        if exchange is None or exchange.server is None or session_id is None:
            return
        try:
            self.owners.check(exchange.server, session_id, exchange.key_id)
        except Refusal as refusal:
            refuse(flow, refusal)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Bind before the agent can see the new id: the headers go out after this hook."""
        exchange = exchange_of(flow)
        if (exchange is None or exchange.server is None or exchange.key_id is None or flow.response is None
                or exchange.decision != "allow"):
            return  # only what the upstream said changes bindings, never Valet's own refusals
        issued = flow.response.headers.get("mcp-session-id")
        presented = flow.request.headers.get("mcp-session-id")
        if issued and issued != presented:
            self.owners.bind(exchange.server, issued, exchange.key_id)
        if presented and (flow.response.status_code == 404 or
                          (flow.request.method == "DELETE" and flow.response.status_code < 300)):
            self.owners.end(exchange.server, presented)
