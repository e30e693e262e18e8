"""Refuse requests from foreign browser origins and, in reverse mode, for names that are not Valet's own.

Runs before authentication: a DNS-rebinding page learns nothing, not even
whether a key is valid. An allowed ``Origin`` is then removed: Valet is the
server its agents' browsers talk to, and upstream it is a non-browser client
(an upstream with its own Origin allow-list would otherwise refuse what Valet's
configuration allowed). The rules are :mod:`addon.protocol.origin`'s; the
refusal is audited like any other.
"""

from __future__ import annotations

from mitmproxy import ctx, http

from addon.protocol.errors import Cause, Refusal
from addon.protocol.origin import DEFAULT_ORIGINS, default_hosts, host_allowed, origin_allowed
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, answered, exchange_of, refuse


class OriginGuard:
    def __init__(self, state: ValetState) -> None:
        self.state = state

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        exchange = exchange_of(flow)
        if exchange is None or exchange.snapshot is None:
            return
        config = exchange.snapshot.config
        headers = flow.request.headers
        origins = headers.get_all("origin")
        if origins:
            allowed = config.allowed_origins if config.allowed_origins is not None else DEFAULT_ORIGINS
            if len(origins) > 1 or not origin_allowed(origins[0], allowed):
                refuse(flow, Refusal(Cause.ORIGIN_NOT_ALLOWED, "requests from this Origin are not allowed"))
                return
            # Valet answered for the origin; upstream, Valet is the (non-browser) client.
            headers.pop("origin", None)
        if self.state.mode != "reverse":
            return  # forward mode: Host names the destination, which routing checks
        # (keep_host_header is on: this is the Host the agent sent, not mitmproxy's reverse placeholder)
        authority = flow.request.host_header or "" if len(headers.get_all("host")) <= 1 else ""
        allowed_hosts = config.allowed_hosts
        if allowed_hosts is None:
            allowed_hosts = default_hosts(ctx.options.listen_host, ctx.options.listen_port)
        default_port = 443 if flow.request.scheme == "https" else 80
        if not authority or not host_allowed(authority, allowed_hosts, default_port):
            refuse(flow, Refusal(Cause.HOST_NOT_ALLOWED, "this Host does not name this Valet"))
