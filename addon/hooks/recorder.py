"""Opens an Exchange for every flow (first stage), writes its row ahead before the flow leaves Valet
(:class:`WriteAhead`, run by the dispatcher after every request-side stage) and completes the row with
what the agent actually got when the flow ends (:class:`ExchangeRecorder`, last stage)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

from mitmproxy import ctx
from mitmproxy import flow as mitmflow
from mitmproxy import http

from addon.audit import bounds, ledger, preauth
from addon.audit.exchange import Exchange
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import METADATA_KEY, ValetState, answered, exchange_of, refuse
from addon.protocol import mitm_limits
from addon.protocol.mitm_conn import stream_of
from addon.protocol.errors import Cause, Refusal
from addon.protocol.mitm_errors import error_page

MAX_PATH_CHARS = 2048
UNAVAILABLE = Refusal(Cause.AUDIT_UNAVAILABLE, "the audit log cannot be written; refusing to forward")


class ExchangeOpener:
    def __init__(self, state: ValetState) -> None:
        self.state = state
        # Refusals answered below the flow layer (no flow, no hook) are audited through it (review G5).
        preauth.LAYER_STATE = state
        mitm_limits.RECORD = preauth.layer_refusal
        mitm_limits.RECORD_FLOW = self._cut

    def _open(self, flow: http.HTTPFlow) -> Exchange:
        request = flow.request
        path = request.path if request.method != "CONNECT" else f"{request.host}:{request.port}"
        exchange = Exchange(mode=self.state.mode, http_method=request.method[:16],
                            http_path=bounds.bounded_path(path, MAX_PATH_CHARS),
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
            if flow.error is not None and flow.response is None and exchange_of(flow) is None:
                await self._invalid(flow)
            return
        exchange = self._open(flow)
        exchange.snapshot = await self.state.current()
        if self.state.audit is None or not self.state.audit.healthy or preauth.disk_low(self.state):
            refuse(flow, UNAVAILABLE, "error")

    async def _invalid(self, flow: http.HTTPFlow) -> None:
        """mitmproxy refused the head before any stage (its request validation: ``Content-Length`` with
        ``Transfer-Encoding``, a bad scheme) and answers 400 after the hooks: the row is committed first
        (review G5). The key that sent it is named, if known; a keyless one is aggregated per peer."""
        if self.state.audit is None:
            return
        exchange = self._open(flow)
        headers = flow.request.headers
        credentials = preauth.credentials_of([*headers.get_all("authorization"),
                                              *headers.get_all("proxy-authorization")])
        exchange.bytes_in = len(flow.request.raw_content or b"")
        held = preauth.refused_without_flow(self.state, flow.client_conn.peername, exchange, credentials,
                                            Cause.INVALID_REQUEST, 400, "http1:framing")
        if held is None:
            return
        await _settled(held.committed, held.bound)
        if not held.committed.result():  # not committed in time: the agent gets 503 audit_unavailable (G5)
            ending = mitm_limits.unavailable()
            mitm_limits.ENDINGS[flow.client_conn.id] = ending
            held.answered(Cause.AUDIT_UNAVAILABLE, Cause.AUDIT_UNAVAILABLE.status, len(ending.body()))
        else:
            held.answered(None, 400, exchange.bytes_out)

    def _cut(self, flow: http.HTTPFlow, cause: Cause, status: int, answer_bytes: int) -> preauth.Held | None:
        """Valet's connection layer ends an exchange below the hooks (a stalled request body, 408): its row is
        completed here, and the answer waits for the commit (:mod:`addon.protocol.mitm_conn`)."""
        exchange = exchange_of(flow)
        if exchange is None or exchange.recorded or self.state.audit is None:
            return None
        if exchange.decision != "deny":
            exchange.decision, exchange.reason, exchange.error_code = "deny", cause.reason, cause.code
        exchange.bytes_out = answer_bytes
        bound = self.state.audit.commit_timeout if self.state.audit.healthy else 0.0
        if exchange.committed is None:  # not written ahead yet: now, with the 408 as its outcome, completed
            exchange.http_status = status  # with what the agent got (a 503 if the row is not committed in time)
            self.state.write_ahead(exchange)
            return preauth.Held(exchange.committed, bound, exchange, self.state)
        self.state.record(exchange, status)
        future = exchange.committed
        return None if future is None or future.done() else preauth.Held(future, bound)


SHUTTING_DOWN = Refusal(Cause.SHUTTING_DOWN, "Valet is shutting down", headers={"connection": "close"})


class WriteAhead:
    """Nothing leaves Valet, forwarded or refused, before its exchange's row is committed.

    The dispatcher calls :meth:`commit` after the request-side stages of each hook, so the row holds
    the final decision and the arguments as forwarded (after injection, secrets redacted). If the
    commit does not complete within the configured bound, the agent gets 503 ``audit_unavailable``
    instead of what it would have got, and nothing is forwarded.
    """

    def __init__(self, state: ValetState) -> None:
        self.state = state

    async def commit(self, flow: http.HTTPFlow, forwarding: bool) -> None:
        exchange = exchange_of(flow)
        audit = self.state.audit
        if exchange is None or audit is None or not self.state.write_ahead_enabled:
            return
        if exchange.committed is None:
            if exchange.recorded or (flow.response is None and not forwarding) or flow.error is not None:
                return
            if preauth.absorbed(self.state, flow, exchange):  # a keyless refusal past its peer's rate
                return
            if flow.response is None and self.state.draining:  # refused here, so the row names the call
                refuse(flow, SHUTTING_DOWN, "error")
            if exchange.reason == Cause.AUDIT_UNAVAILABLE.reason:
                return  # the refusal that says the log cannot be written cannot wait for the log
            if not audit.healthy:
                refuse(flow, UNAVAILABLE, "error")
                return
            uses = None
            if exchange.injected and flow.response is None and exchange.server is not None:
                uses = ledger.uses(self.state.secrets, exchange.server, exchange.user or "",
                                   json.loads(exchange.injected), flow.request.host)
            self.state.write_ahead(exchange, uses)
        future = exchange.committed
        if future is None:
            return
        if not future.done():
            await _settled(future, audit.commit_timeout)
        ok = future.done() and not future.cancelled() and future.result()
        if not ok:
            refuse(flow, UNAVAILABLE, "error")


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)  # not committed in time: this exchange is refused (the row may still land)


async def _settled(future: asyncio.Future[bool], timeout: float) -> None:
    """Wait until ``future`` is done, or settle it as "not committed" once ``timeout`` passed.

    The future is this exchange's own (the writer resolves it only if it is not done yet), so it is
    awaited directly: one timer, no waiter future, no extra callback hop on every request's path.
    """
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        await future
    finally:
        timer.cancel()


class ExchangeRecorder:
    """Runs after every other stage's response hook, so the row sees what the agent received."""

    def __init__(self, state: ValetState) -> None:
        self.state = state

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The session id is known here; the agent may leave before the body ends (right after initialize)."""
        exchange = exchange_of(flow)
        if exchange is not None and exchange.session_id is None and flow.response is not None:
            exchange.session_id = flow.response.headers.get("mcp-session-id")

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

    def error(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        exchange = exchange_of(flow)
        if exchange is None or exchange.recorded:
            return None
        response = flow.response
        if exchange.session_id is None and response is not None:
            exchange.session_id = response.headers.get("mcp-session-id")
        if (response is not None and response not in mitm_limits.HEADS_SENT and flow.error is not None
                and "request body exceeds" in flow.error.msg.lower()):
            # answered by Valet as its head arrived (a refusal, or the 503 of a row not committed in time), but the
            # body's length is over mitmproxy's limit too, and mitmproxy sends its own 413 after this hook: the
            # agent gets Valet's answer instead, the one the row was written ahead with (review 5, F2)
            self._send_instead(flow, mitm_limits.Ending(Cause.BODY_TOO_LARGE, "", answer=response))
            exchange.bytes_out = len(response.raw_content or b"")
            self.state.record(exchange, response.status_code)
            return None
        if exchange.decision == "deny":  # refused, then the client went away: the refusal is the story
            self.state.record(exchange, response.status_code if response else None)
            return None
        message = (flow.error.msg if flow.error else "").lower()
        # the agent has the status only if its head was written (HTTP/1: to the socket; HTTP/2: its HEADERS frame
        # queued), and the body bytes h2 still holds for a full window never reach it (mitm_limits, mitm_conn)
        headers_sent = response is not None and response in mitm_limits.HEADS_SENT
        if headers_sent and response is not None:
            exchange.bytes_out = max(0, exchange.bytes_out - mitm_limits.unsent(response))
        if "client" in message and "disconnect" in message:
            # The agent went away. With SSE that is routine once it has its answer: the exchange
            # stands as it was (allowed, with the status it got); only the reason says so, unless
            # Valet itself had already cut the stream (revoked key, oversized event): that stays the reason.
            exchange.reason = exchange.reason or "client_disconnected"
            if not headers_sent:
                exchange.decision = "error"
            self.state.record(exchange, response.status_code if headers_sent and response else None)
            return
        exchange.decision = "error"
        if flow.error is not None and flow.error.msg == mitmflow.Error.KILLED_MESSAGE:
            exchange.reason = exchange.reason or Cause.INTERNAL_ERROR.reason  # Valet cut it (fail closed)
            self.state.record(exchange, response.status_code if headers_sent and response else None)
            return
        if headers_sent and response is not None:
            # The agent got the upstream's status and part of the stream (counted by the relay), then a cut.
            exchange.reason = exchange.reason or Cause.UPSTREAM_ERROR.reason
            self.state.record(exchange, response.status_code)
            return
        # The agent got mitmproxy's own error page (addon.protocol.mitm_errors), whatever the upstream sent.
        status = 413 if "request body exceeds" in message else 400 if message.startswith("trailers_refused:") else 502
        cause, body = error_page(status, message)
        if cause is Cause.TRAILERS_REFUSED:  # the agent's request was refused, not an upstream failure
            exchange.decision = "deny"
        exchange.reason = cause.reason
        exchange.error_code = cause.code
        exchange.bytes_out = len(body)
        if response is None and cause in _READER_REFUSALS and exchange.row is None and self.state.audit is not None:
            return self._refuse_when_committed(flow, exchange, cause)
        self.state.record(exchange, status)
        return None

    async def _refuse_when_committed(self, flow: http.HTTPFlow, exchange: Exchange, cause: Cause) -> None:
        """A refusal made inside mitmproxy's body readers (a body over ``limits.max_buffered_bytes``: 413; an
        HTTP/1 chunked body with trailers: 400) is answered once its row is committed, as every refusal is; if
        the row cannot be committed within the writer's bound, the answer is ``503 audit_unavailable`` (review 5,
        F2: both were answered with their row only queued, and as themselves while the log was down). The ending
        set here is what goes out, through the agent's own layers (TLS included): mitmproxy sends it for the 413
        after this hook returns (Valet's JSON-RPC error, over HTTP/2 too, where mitmproxy's HTML page went
        before); mitm_conn writes it for the trailers' 400 once it is here."""
        audit = self.state.audit
        assert audit is not None
        exchange.http_status = cause.status
        exchange.recorded = True  # completed below, with what the agent got (no other stage completes it)
        self.state.write_ahead(exchange)
        committed = exchange.committed
        assert committed is not None
        await _settled(committed, audit.commit_timeout if audit.healthy else 0.0)
        ok = committed.result() is True
        ending = mitm_limits.Ending(cause, _READER_REFUSALS[cause]) if ok else mitm_limits.unavailable()
        self._send_instead(flow, ending)
        exchange.recorded = False
        exchange.reason, exchange.error_code = ending.cause.reason, ending.cause.code
        exchange.bytes_out = len(ending.body())
        self.state.record(exchange, ending.cause.status)

    @staticmethod
    def _send_instead(flow: http.HTTPFlow, ending: mitm_limits.Ending) -> None:
        """What mitmproxy sends next for this flow's error (its own page) is ``ending`` instead (HTTP/1: the
        connection's; HTTP/2: the flow's stream's)."""
        client = flow.client_conn.id
        server = ctx.master.addons.get("proxyserver")
        handler = server.connections.get(client) if server is not None else None
        mitm_limits.set_ending(client, ending, stream_of(handler, flow) if handler is not None else None)


# Refusals made inside mitmproxy's body readers, with the message the agent gets (addon.protocol.mitm_errors'
# texts): mitmproxy answers the 413 after the error hook; mitm_conn answers the trailers' 400 once it finds the
# ending left here.
_READER_REFUSALS = {Cause.BODY_TOO_LARGE: "the body is too large",
                    Cause.TRAILERS_REFUSED: "requests with trailers are not accepted"}
