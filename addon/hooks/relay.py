"""Stream SSE responses back event by event, counting what reaches the agent.

Without ``flow.response.stream`` mitmproxy buffers the whole body, so progress
notifications would arrive all at once at the end and GET streams would hang.
The relay returns a list of complete events per chunk; a partial event is held
back with ``[]`` (never ``b""``, which on HTTP/1.1 chunked encoding would be the
terminating chunk and silently end the agent's stream).
"""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http

from ..exchange import Exchange
from ..sse import EventTooLarge, SSEFramer
from .state import ValetState, exchange_of


class StreamRelay:
    def __init__(self, state: ValetState) -> None:
        self.state = state

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if exchange is None or exchange.server is None or flow.response is None:
            return
        media = flow.response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media == "text/event-stream":
            flow.response.stream = _event_relay(exchange)


def _event_relay(exchange: Exchange) -> Callable[[bytes], list[bytes]]:
    framer: SSEFramer | None = SSEFramer()

    def relay(chunk: bytes) -> list[bytes]:
        nonlocal framer
        if framer is None:  # an event outgrew the framer: pass bytes through unframed
            exchange.bytes_out += len(chunk)
            return [chunk] if chunk else []
        if not chunk:  # end of stream
            rest = framer.flush()
            exchange.bytes_out += len(rest)
            return [rest] if rest else []
        try:
            events = framer.feed(chunk)
        except EventTooLarge:
            events, framer = [framer.flush()], None
            exchange.reason = "sse_event_too_large"
        exchange.bytes_out += sum(map(len, events))
        return events

    return relay
