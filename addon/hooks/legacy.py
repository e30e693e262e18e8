"""Legacy HTTP+SSE streams: ``endpoint`` events rewritten to Valet's mount and bound to the caller's key.

Runs after :class:`~addon.hooks.relay.ResponseFilter` and wraps the event relay
it installed, so it sees complete, already scrubbed events; a stream that was
buffered instead (compressed and scrubbed whole) is rewritten in ``response``.
A rewritten event is new bytes made of upstream bytes AFTER the scrubber ran, so
it goes through the exchange's scrubber once more (and the rewrite itself never
resolves or collapses anything: such endpoints are refused).
The rules are :mod:`addon.protocol.legacy_sse`'s; the bindings are
:class:`~addon.hooks.sessions.SessionGuard`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import http

from addon.audit.exchange import Exchange
from addon.protocol.legacy_sse import EndpointRefused, Mount, rewrite_event
from addon.protocol.sse import SSEFramer, is_event_stream
from addon.secrets.outbound import Outbound
from addon.hooks.failsafe import fail_closed
from addon.hooks.sessions import SessionGuard
from addon.hooks.state import ValetState, exchange_of

REFUSED_ENDPOINT = b'event: error\ndata: {"valet":"stream refused: the endpoint event names a URL Valet does not route"}\n\n'


class LegacyEndpoints:
    def __init__(self, state: ValetState, sessions: SessionGuard) -> None:
        self.state = state
        self.sessions = sessions

    def _mount(self, flow: http.HTTPFlow) -> tuple[Exchange, Mount] | None:
        exchange = exchange_of(flow)
        response = flow.response
        if exchange is None or exchange.server is None or response is None or exchange.decision != "allow":
            return None
        if exchange.snapshot.config.servers[exchange.server].kind != "mcp":
            return None
        if not is_event_stream(response.headers):
            return None
        upstream = exchange.snapshot.routes.upstreams[exchange.server]
        return exchange, Mount(self.state.mode, exchange.server, upstream, flow.request.url)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        found = self._mount(flow)
        if found is None or not callable(flow.response.stream):
            return
        exchange, mount = found
        flow.response.stream = self._wrap(flow.response.stream, exchange, mount)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        found = self._mount(flow)
        response = flow.response
        if found is None or response.stream or not response.raw_content:
            return
        exchange, mount = found
        framer = SSEFramer()
        events = framer.feed(response.content or b"")
        rest = framer.flush()
        whole = events + ([rest] if rest else [])
        rewrite = self._wrap(lambda _chunk: whole, exchange, mount)  # the whole body is one "chunk"
        response.content = b"".join(rewrite(b""))

    def _outbound(self, exchange: Exchange) -> Outbound:
        """The exchange's own scrubbing (the relay made it); the origin's scrubber if none was made."""
        outbound: Outbound | None = exchange.outbound
        if outbound is None:
            server_name = exchange.server or ""
            outbound = Outbound(lambda: self.state.scrubber(server_name),
                                cap=exchange.snapshot.config.limits.max_buffered_bytes)
        return outbound

    def _wrap(self, relay: Callable[[bytes], Any], exchange: Exchange, mount: Mount) -> Callable[[bytes], list[bytes]]:
        refused = False
        key_id = exchange.key_id

        def rewritten(chunk: bytes) -> list[bytes]:
            nonlocal refused
            events = relay(chunk)
            if isinstance(events, bytes):
                events = [events] if events else []
            if refused:
                return []
            out: list[bytes] = []
            for event in events:
                try:
                    event, params = rewrite_event(event, mount)
                except EndpointRefused:
                    refused = True
                    # "deny": the refusal is the story, also when the agent then goes away (see recorder)
                    exchange.decision, exchange.reason = "deny", "legacy_endpoint_refused"
                    out.append(REFUSED_ENDPOINT)
                    break
                if params and key_id is not None:
                    self.sessions.bind_legacy(mount.server, params, key_id)
                out.append(self._outbound(exchange).event(event) if params or b"endpoint" in event else event)
            return out

        return rewritten
