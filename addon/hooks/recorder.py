"""Opens an Exchange for every flow (first addon) and writes its audit row when the flow ends (last addon)."""

from __future__ import annotations

from mitmproxy import http

from addon.protocol.errors import Cause, Refusal
from addon.audit.exchange import Exchange
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import METADATA_KEY, ValetState, answered, exchange_of, refuse

MAX_PATH_CHARS = 2048


class ExchangeOpener:
    def __init__(self, state: ValetState) -> None:
        self.state = state

    def _open(self, flow: http.HTTPFlow) -> Exchange:
        request = flow.request
        path = request.path if request.method != "CONNECT" else f"{request.host}:{request.port}"
        exchange = Exchange(mode=self.state.mode, http_method=request.method[:16], http_path=path[:MAX_PATH_CHARS],
                            session_id=request.headers.get("mcp-session-id"))
        flow.metadata[METADATA_KEY] = exchange
        return exchange

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        exchange = self._open(flow)
        exchange.snapshot = await self.state.current()

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        exchange = self._open(flow)
        exchange.snapshot = await self.state.current()
        if self.state.audit is None or not self.state.audit.healthy:
            refuse(flow, Refusal(Cause.AUDIT_UNAVAILABLE, "the audit log cannot be written; refusing to forward"), "error")


class ExchangeRecorder:
    """Runs after every other addon's response hook, so the row sees what the agent received."""

    def __init__(self, state: ValetState) -> None:
        self.state = state

    def response(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if exchange is None or exchange.recorded or flow.response is None:
            return
        if flow.response.stream is False or flow.response.stream is None:
            exchange.bytes_out = len(flow.response.raw_content or b"")
        if exchange.session_id is None:
            exchange.session_id = flow.response.headers.get("mcp-session-id")
        if flow.response.status_code >= 500 and exchange.decision == "allow" and exchange.reason is None:
            exchange.reason = "upstream_status"
        self.state.record(exchange, flow.response.status_code)

    def error(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if exchange is None or exchange.recorded:
            return
        if exchange.decision == "deny":  # refused, then the client went away: the refusal is the story
            self.state.record(exchange, flow.response.status_code if flow.response else None)
            return
        message = (flow.error.msg if flow.error else "").lower()
        if "client" in message and "disconnect" in message:
            # The agent went away. With SSE that is routine once it has its answer: the exchange
            # stands as it was (allowed, with the status it got); only the reason says so.
            exchange.reason = "client_disconnected"
            if flow.response is None:
                exchange.decision = "error"
        else:
            exchange.decision = "error"
            exchange.reason = Cause.UPSTREAM_ERROR.reason
        status = flow.response.status_code if flow.response else 502
        self.state.record(exchange, status)
