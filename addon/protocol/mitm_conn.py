"""Connection-level bounds mitmproxy does not have: idle agent connections, stalled bodies, upstream heads.

mitmproxy's only timer on a connection is its 600 s inactivity timeout (``tcp_timeout``), and its HTTP/1
readers keep every byte of a head until the blank line. :mod:`addon.protocol.mitm_limits` bounds request
heads once their first byte arrives; this module bounds what happens around them (review 2, F1 and F10):

1. **A connection with no request in progress is on a timer.** A new agent connection must start its
   request head within ``timeouts.header_read_seconds`` of opening (like nginx's ``client_header_timeout``,
   which also runs from the accept); a kept-alive connection may wait ``timeouts.client_idle_seconds``
   after a response for its next request (nginx's ``keepalive_timeout``); the same holds after a CONNECT
   tunnel opens (its TLS handshake and first inner request). On expiry the connection is closed without an
   answer: nothing was asked. Once a head's first byte arrives, ``mitm_limits``'s head timer takes over.
2. **A cap on such connections** (``limits.max_pending_connections``, never more than half the process's
   fd limit): when one more opens, the OLDEST pending one is closed. A legitimate agent sends its head
   within milliseconds of connecting, so only a connection that sits idle (an attacker's, or a client's
   spare keep-alive connection, which it reopens at need) is the oldest; refusing the NEW connection
   instead would let whoever holds the cap lock every agent out. Exchanges in progress are never counted
   nor closed, so fds stay free for the agents being served.
3. **A request body must keep arriving**: after a complete head, ``timeouts.body_read_seconds`` without a
   body byte gets ``408 request_timeout`` and the connection is closed (nginx's ``client_body_timeout``);
   so does a body not complete ``timeouts.body_total_seconds`` after its head (a trickle of one byte a
   minute cannot park a request for hours, to complete it after its key was revoked).
4. **A request refused on its headers is answered at once**, not at its first body byte (which may never
   come): the refusal is sent, the body dropped as it arrives, the connection closed (``mitm_limits``
   item 3 does the sending; this only triggers it when the headers are handled). The close is staged
   (write side shut, the rest read and dropped for up to ``LINGER_SECONDS``, counted as pending) so that
   a body still in flight does not make the kernel reset the connection over the answer.
5. **Upstream response heads are capped** like request heads: past ``limits.max_response_header_bytes``
   or ``limits.max_response_header_count`` lines, the upstream connection is closed and the agent gets
   ``502 upstream_error`` (through :data:`addon.protocol.mitm_limits.ENDINGS`): an upstream answering
   with an endless head took 1.4 GB before. Interim ``1xx`` heads before the answer (``103 Early Hints``,
   an unsolicited ``100 Continue``; not ``101``) are read and dropped, each under the same caps, at most
   :data:`MAX_INTERIM_RESPONSES` per answer (more: ``502 upstream_error`` the same way): mitmproxy took the
   first of them as the answer, and the agent waited for the real one (review 4, H4).

6. **Over HTTP/2 too, an exchange Valet cut ends with Valet's answer**: the JSON-RPC error before a
   response head, or the SSE ``error`` event as the stream's last DATA frame (HTTP/2 towards agents: TLS with
   ALPN ``h2``, only when it is turned on). That holds when the upstream is still connecting or in its TLS
   handshake at its deadline too (:func:`end_connecting`): the connection being opened is closed, the
   agent's stream gets ``504 upstream_timeout``, its other streams go on.

8. **Over HTTP/2 the row knows what reached the agent**: a response's head counts as sent once its HEADERS
   frame is queued to the agent (:data:`addon.protocol.mitm_limits.HEADS_SENT`, as for HTTP/1), and body
   bytes h2 still holds for the stream (the agent's flow-control window full) when the exchange fails are not
   counted as sent (:func:`addon.protocol.mitm_limits.unsent`): a reset drops them.

7. **HTTP/1 trailers end the exchange as a protocol error**, not as a crash: mitmproxy's HTTP/1 body reader
   raises ``NotImplementedError`` on a chunked body with trailers, which left the agent with no answer and
   the exchange with no audit row (its traceback also quoted the trailer values). Trailers are fields no
   check reads (``trailers_refused`` refuses them over HTTP/2): the request is answered ``400``, audited as a
   refusal, and its connection closed; an upstream's answer with trailers becomes ``502``.

Closings are logged once per interval with counts and counted in ``/metrics``
(``valet_connections_closed{reason}``). mitmproxy is pinned below 13 and ``tests/test_e2e_review2_conn*.py``
fail loudly if these internals change.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
import types
import weakref
from collections import OrderedDict
from typing import Any

import h2.errors
import h2.exceptions
from mitmproxy import http
from mitmproxy.proxy import commands, events, server
from mitmproxy.proxy.layers.http import HttpLayer, HttpStream, _http1, _http2
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import ErrorCode, RequestData, RequestHeaders, ResponseEndOfMessage, \
    ResponseHeaders, ResponseProtocolError

from addon.ops import metrics
from addon.protocol import mitm_limits
from addon.protocol.errors import Cause

log = logging.getLogger("valet")

# Set from the configuration by hooks/state.py (the defaults are the configuration's).
HEADER_READ_SECONDS = 30.0  # timeouts.header_read_seconds: a fresh connection's head must start by then
CLIENT_IDLE_SECONDS = 60.0  # timeouts.client_idle_seconds: between requests on a kept-alive connection
BODY_READ_SECONDS = 60.0  # timeouts.body_read_seconds: between two body reads of a request
BODY_TOTAL_SECONDS = 120.0  # timeouts.body_total_seconds: a whole request body, from its head (review 3, G6)
MAX_PENDING = 1024  # limits.max_pending_connections
MAX_RESPONSE_HEADER_BYTES = 64 * 1024  # limits.max_response_header_bytes
MAX_RESPONSE_HEADER_COUNT = 256  # limits.max_response_header_count
LOG_INTERVAL_SECONDS = 10.0


class _Tracker:
    """Agent connections with no request in progress, oldest first, each with its idle deadline."""

    def __init__(self) -> None:
        self.handlers: dict[str, server.ConnectionHandler] = {}
        self.pending: OrderedDict[str, asyncio.TimerHandle] = OrderedDict()
        self.closed: dict[str, int] = {}
        self._logged = 0.0

    def cap(self) -> int:
        """The configured cap, never above half the fd limit (read each time: an operator may change it)."""
        try:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (OSError, ValueError):  # pragma: no cover - no such limit on this platform
            soft = resource.RLIM_INFINITY
        if soft == resource.RLIM_INFINITY or soft <= 0:
            return MAX_PENDING
        return max(1, min(MAX_PENDING, soft // 2))

    def opened(self, client_id: str, handler: server.ConnectionHandler) -> None:
        self.handlers[client_id] = handler
        self.wait(client_id, HEADER_READ_SECONDS)

    def wait(self, client_id: str, seconds: float, reason: str = "idle") -> None:
        """The connection waits for a request head (or lingers after a refusal): on a timer, and counted
        against the cap."""
        if client_id not in self.handlers:
            return
        self.busy(client_id)
        self.pending[client_id] = asyncio.get_running_loop().call_later(seconds, self._expired, client_id, reason)
        cap = self.cap()
        while len(self.pending) > cap:
            oldest = next(iter(self.pending))
            self._close(oldest, "evicted")

    def busy(self, client_id: str) -> None:
        """A request head started (or the connection is gone): no idle timer, not counted."""
        timer = self.pending.pop(client_id, None)
        if timer is not None:
            timer.cancel()

    def gone(self, client_id: str) -> None:
        self.busy(client_id)
        self.handlers.pop(client_id, None)

    def _expired(self, client_id: str, reason: str = "idle") -> None:
        if self.pending.pop(client_id, None) is None:
            return
        handler = self.handlers.get(client_id)
        if handler is not None and handler.client.alpn == b"h2":
            return  # HTTP/2 inside a tunnel: streams are not tracked here (mitmproxy's tcp_timeout applies)
        self._close(client_id, reason)

    def _close(self, client_id: str, reason: str) -> None:
        self.busy(client_id)
        handler = self.handlers.get(client_id)
        if handler is not None:
            close_transport(handler, handler.client)
        self.count(reason)

    def count(self, reason: str) -> None:
        metrics.connection_closed(reason)
        self.closed[reason] = self.closed.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged >= LOG_INTERVAL_SECONDS:
            self._logged = now
            what = ", ".join(f"{n} {_WHY[r]}" for r, n in sorted(self.closed.items()))
            log.warning("closed agent connections: %s (pending cap %d; counts since the last such line)",
                        what, self.cap())
            self.closed.clear()


_WHY = {
    "idle": "idle with no request (timeouts.header_read_seconds / client_idle_seconds)",
    "evicted": "oldest pending, evicted at limits.max_pending_connections",
    "body_timeout": "stalled request body (timeouts.body_read_seconds, 408)",
    "refused": "closed after a refusal sent before the request body",
}
LINGER_SECONDS = 2.0  # after a refusal sent before the body: how long the rest is read and dropped

TRACKER = _Tracker()


def pending_count() -> int:
    return len(TRACKER.pending)


def close_transport(handler: server.ConnectionHandler, conn: Any, answer: bytes = b"") -> None:
    """Close a socket ourselves (after queueing ``answer``): the reader then sees the end and mitmproxy
    cleans up as for any closed connection. A reader that always finds data buffered (a flood) never
    reaches the point where mitmproxy's own CloseConnection would cancel it."""
    io = handler.transports.get(conn)
    if io is None or io.writer is None or io.writer.is_closing():
        return
    if answer:
        io.writer.write(answer)
    io.writer.close()


# --- 1 and 2: the connection's life ----------------------------------------------------------------

_original_handle_client = server.ConnectionHandler.handle_client


async def _handle_client(self: server.ConnectionHandler) -> None:
    client_id = self.client.id
    TRACKER.opened(client_id, self)
    try:
        await _original_handle_client(self)
    finally:
        TRACKER.gone(client_id)


# --- 1 and 3: what the agent's HTTP/1 connection does ---------------------------------------------

_original_handle_event = _http1.Http1Connection._handle_event


def _handle_event(self: _http1.Http1Server, event: events.Event):  # type: ignore[no-untyped-def]
    """Every event of an agent's HTTP/1 connection: a head starts (the idle timer stops), a head completes
    with a body to come (the body timer starts), body bytes arrive, a response ends (the idle timer again).

    One wrapper around the dispatcher rather than around the states, so that ``mitm_limits``' own state
    wrappers (which recognise themselves in ``self.state``) are left exactly as they are."""
    if isinstance(event, events.Wakeup) and event.command is getattr(self, "_valet_refusal_wait", None):
        return (yield from _answer_refusal(self))
    state = getattr(self.state, "__func__", None)
    data = isinstance(event, events.DataReceived) and bool(event.data)
    if data and state is _http1.Http1Server.read_headers:
        TRACKER.busy(self.conn.id)  # a head started: mitm_limits' head timer runs from its first byte
    elif data and state is _http1.Http1Connection.read_body:
        self._valet_body_last = time.monotonic()  # type: ignore[attr-defined]
    connect = isinstance(event, ResponseEndOfMessage) and self.request is not None and \
        self.request.method.upper() == "CONNECT"
    linger = (isinstance(event, ResponseEndOfMessage) and self.conn.id in mitm_limits._CLOSE_AFTER_ANSWER
              and not self.request_done)
    if linger:  # answered before its body: a staged close below, not mitm_limits' immediate one
        mitm_limits._CLOSE_AFTER_ANSWER.discard(self.conn.id)
    result = yield from _original_handle_event(self, event)
    if linger:
        _linger(self)
        return result
    after = getattr(self.state, "__func__", None)
    if after is _http1.Http1Connection.read_body and state is not after:
        _arm_body_timer(self)
    if isinstance(event, ResponseEndOfMessage):
        if after is _http1.Http1Server.read_headers and not self.buf:
            TRACKER.wait(self.conn.id, CLIENT_IDLE_SECONDS)  # kept alive: the next request is due
        elif connect and after is _http1.Http1Connection.passthrough:
            TRACKER.wait(self.conn.id, CLIENT_IDLE_SECONDS)  # a tunnel: its handshake and first request are due
    return result


def _linger(server_: _http1.Http1Server) -> None:
    """The answer is out but the agent may still be sending the body: closing now would make the kernel
    reset the connection, and a reset can destroy the answer before the agent reads it (RFC 9112 §9.6).
    So: what arrives is dropped (never kept), our side is shut for writing once the answer is flushed,
    and the socket is closed when the agent closes or after ``LINGER_SECONDS`` (nginx's lingering close).
    The connection counts against the pending cap meanwhile, so lingering cannot hoard fds."""
    server_.state = types.MethodType(mitm_limits._discard, server_)
    server_.buf = _http1.ReceiveBuffer()
    handler = TRACKER.handlers.get(server_.conn.id)
    if handler is None:
        return
    io = handler.transports.get(server_.conn)
    if io is not None and io.writer is not None and not io.writer.is_closing() and io.writer.can_write_eof():
        asyncio.get_running_loop().call_soon(_half_close, io.writer)
    TRACKER.wait(server_.conn.id, LINGER_SECONDS, "refused")


def _half_close(writer: Any) -> None:
    try:
        if not writer.is_closing():
            writer.write_eof()
    except OSError:
        writer.close()


def _arm_body_timer(server_: _http1.Http1Server) -> None:
    server_._valet_body_last = server_._valet_body_started = time.monotonic()  # type: ignore[attr-defined]
    timer = object()
    server_._valet_body_timer = timer  # type: ignore[attr-defined]
    asyncio.get_running_loop().call_later(min(BODY_READ_SECONDS, BODY_TOTAL_SECONDS), _body_check,
                                          weakref.ref(server_), timer)


def _body_check(ref: weakref.ref[_http1.Http1Server], timer: object) -> None:
    """A request body with no byte for ``BODY_READ_SECONDS``, or not complete ``BODY_TOTAL_SECONDS`` after
    its head (a trickle that never stalls): 408, then closed (checked lazily: one timer per body,
    re-scheduled from the last read, nothing per chunk)."""
    server_ = ref()
    if server_ is None or getattr(server_, "_valet_body_timer", None) is not timer:
        return
    if getattr(server_.state, "__func__", None) is not _http1.Http1Connection.read_body:
        server_._valet_body_timer = None  # type: ignore[attr-defined]
        return
    due = min(server_._valet_body_last + BODY_READ_SECONDS,  # type: ignore[attr-defined]
              server_._valet_body_started + BODY_TOTAL_SECONDS)  # type: ignore[attr-defined]
    now = time.monotonic()
    if now < due:
        asyncio.get_running_loop().call_later(due - now, _body_check, ref, timer)
        return
    server_._valet_body_timer = None  # type: ignore[attr-defined]
    server_.state = types.MethodType(mitm_limits._discard, server_)
    server_.buf = _http1.ReceiveBuffer()
    answer = mitm_limits.Ending(Cause.REQUEST_TIMEOUT, "the request body did not arrive in time").response()
    handler = TRACKER.handlers.get(server_.conn.id)
    flow = _READING.get(server_.conn.id)
    held = None
    if flow is not None and mitm_limits.RECORD_FLOW is not None and not server_.response:
        # the exchange ends here, below the hooks: its row is completed (and committed) before the 408 (G5)
        try:
            held = mitm_limits.RECORD_FLOW(flow, Cause.REQUEST_TIMEOUT, 408, len(answer))
        except Exception:  # noqa: BLE001 - a failing record must not keep the socket open
            log.exception("audit of a stalled request body failed")
    if handler is not None:
        conn = server_.conn
        answer = answer if not server_.response else b""

        def send(ok: bool) -> None:
            # a row not committed in time: the agent gets 503 audit_unavailable instead (issue 10 item 4)
            sent = answer if ok or not answer else mitm_limits.unavailable().response()
            close_transport(handler, conn, sent)
            if held is not None:
                cause = None if ok or not answer else Cause.AUDIT_UNAVAILABLE
                held.answered(cause, (cause or Cause.REQUEST_TIMEOUT).status if sent else None, len(sent))

        mitm_limits.answer_when_recorded(held, send)
    TRACKER.count("body_timeout")


# agent connection id -> the flow whose request body is being read on it (for the 408 of a stalled body)
_READING: weakref.WeakValueDictionary[str, http.HTTPFlow] = weakref.WeakValueDictionary()


# --- 4: refused on headers, answered at once -------------------------------------------------------

_original_wait_for_headers = HttpStream.state_wait_for_request_headers


def _wait_for_request_headers(self: HttpStream, event: RequestHeaders):  # type: ignore[no-untyped-def]
    result = yield from _original_wait_for_headers(self, event)
    if not event.end_stream and self.flow is not None:
        _READING[self.context.client.id] = self.flow
    if (not event.end_stream and self.flow is not None and self.flow.response is not None
            and getattr(self.client_state, "__func__", None) is HttpStream.state_consume_request_body):
        # mitm_limits answers a refused flow "at its first body byte": that byte is this empty one.
        yield from self.client_state(RequestData(self.stream_id, b""))
    return result


# --- 5: upstream response heads --------------------------------------------------------------------

_original_client_read_headers = _http1.Http1Client.read_headers


def _response_head_too_large(buf: _http1.ReceiveBuffer) -> bool:
    return mitm_limits.head_over(buf, MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADER_COUNT)


# An interim 1xx head (``103 Early Hints``, an unsolicited ``100 Continue``) before the final answer: at most
# this many per response, each within the response head caps, are read and dropped (review 4, H4).
MAX_INTERIM_RESPONSES = 8
_INTERIM = re.compile(rb"HTTP/1\.[01] 1[0-9][0-9][ \r\n]")
_SWITCHING = b"101"


def _skip_interim(self: _http1.Http1Client) -> bool:
    """Drop the complete interim 1xx heads (other than ``101``) at the start of the buffer; False when the
    response has sent more of them than :data:`MAX_INTERIM_RESPONSES` (the caller ends it as an error).

    mitmproxy's HTTP/1 client takes the first head it reads as the response, whatever its status: a 1xx was
    relayed as the final answer, the real answer left in the connection's buffer, the agent waiting for it
    (RFC 9110 15.2: a client MUST accept 1xx heads it did not ask for). Their fields (``Link`` hints) are
    not relayed: an agent gains nothing from them and Valet would have to scrub them.
    """
    while True:
        start = bytes(self.buf._data[:16])
        if _INTERIM.match(start) is None or start[9:12] == _SWITCHING:
            return True
        if _response_head_too_large(self.buf):
            return True  # the caller's size check ends it
        if self.buf.maybe_extract_lines() is None:
            return True  # incomplete: more is to come (the head caps and the first-byte timeout bound it)
        seen = getattr(self, "_valet_interim", (None, 0))
        count = seen[1] + 1 if seen[0] == self.stream_id else 1
        self._valet_interim = (self.stream_id, count)  # type: ignore[attr-defined]
        if count > MAX_INTERIM_RESPONSES:
            return False


def _client_read_headers(self: _http1.Http1Client, event: events.ConnectionEvent):  # type: ignore[no-untyped-def]
    if isinstance(event, events.DataReceived) and self.stream_id is not None and self.request is not None:
        if not _skip_interim(self):
            yield from _end_upstream(self, "the upstream sent more interim (1xx) answers than Valet accepts",
                                     "too many interim responses")
            return
        if not self.buf:
            return  # only interim heads so far: the final one is still to come
    if isinstance(event, events.DataReceived) and self.stream_id is not None and _response_head_too_large(self.buf):
        log.warning("upstream %s sent a response head over limits.max_response_header_bytes/count; closed",
                    self.conn.address[0] if self.conn.address else "?")
        yield from _end_upstream(self, "the upstream's response head is larger than Valet accepts",
                                 "response head too large")
        return
    return (yield from _original_client_read_headers(self, event))


def _end_upstream(self: _http1.Http1Client, message: str, error: str):  # type: ignore[no-untyped-def]
    """End the exchange as the upstream's fault: nothing more of its answer is kept or read, its connection is
    closed, and the agent gets ``502 upstream_error`` with ``message`` (through ``mitm_limits.ENDINGS``)."""
    self.buf = _http1.ReceiveBuffer()  # nothing of the head is kept
    self.state = types.MethodType(mitm_limits._discard, self)
    agent = self.context.client.id
    mitm_limits.set_ending(agent, mitm_limits.Ending(Cause.UPSTREAM_ERROR, message),
                           self.stream_id if self.context.client.alpn == b"h2" else None)
    yield commands.CloseConnection(self.conn)
    handler = TRACKER.handlers.get(agent)
    if handler is not None:
        asyncio.get_running_loop().call_soon(close_transport, handler, self.conn)
    yield ReceiveHttp(ResponseProtocolError(self.stream_id, error, ErrorCode.GENERIC_SERVER_ERROR))


# --- 6: Valet's ending on an HTTP/2 stream --------------------------------------------------------

# What handled h2 events before this wrapper: taken at install() (mitm_limits' head caps, installed first),
# never at import, or the caps would be bypassed.
_original_h2_handle_event = _http2.Http2Server._handle_event


def _h2_handle_event(self: _http2.Http2Server, event: events.Event):  # type: ignore[no-untyped-def]
    """When Valet cut an exchange (``ENDINGS``: timeout, revoked key, kill switch) on an HTTP/2 agent
    connection, end the stream with Valet's answer instead of mitmproxy's bare RST_STREAM: the JSON-RPC
    error (before a response head), or one SSE ``error`` event as the last DATA frame of an open stream.
    Other streams of the connection go on (HTTP/1 closes the connection; h2 need not)."""
    if isinstance(event, ResponseHeaders):
        if "text/event-stream" in event.response.headers.get("content-type", "").lower():
            sse = self.__dict__.setdefault("_valet_sse", set())
            sse.add(event.stream_id)
        result = yield from _original_h2_handle_event(self, event)
        stream = self.h2_conn.streams.get(event.stream_id)
        if stream is not None and stream.state_machine.headers_sent:  # HEADERS queued to the agent (item 8)
            mitm_limits.HEADS_SENT.add(event.response)
            mitm_limits.H2_STREAMS[event.response] = (weakref.ref(self), event.stream_id)
        return result
    elif isinstance(event, ResponseProtocolError) and self.is_open_for_us(event.stream_id):
        ending = mitm_limits.take_stream_ending(self.conn.id, event.stream_id)  # the one meant for this stream
        if ending is not None:
            ending.settled = True
            stream_id = event.stream_id
            stream = self.h2_conn.streams[stream_id]
            try:
                if not stream.state_machine.headers_sent:
                    body = ending.body()
                    self.h2_conn.send_headers(stream_id, [
                        (b":status", b"%d" % ending.status), (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body))])
                    self.h2_conn.send_data(stream_id, ending.wrote(ending.status, body), end_stream=True)
                elif stream_id in self.__dict__.get("_valet_sse", ()):
                    self.h2_conn.send_data(stream_id, ending.wrote(None, ending.event()), end_stream=True)
                else:  # a body that is not a stream of events: no way to say more than the reset
                    self.h2_conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            except h2.exceptions.H2Error:  # the agent's window is full: the reset says it ended
                self.h2_conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.__dict__.get("_valet_sse", set()).discard(stream_id)
            data = self.h2_conn.data_to_send()
            if data:
                yield commands.SendData(self.conn, data)
            return
    if isinstance(event, (ResponseEndOfMessage, ResponseProtocolError)):
        self.__dict__.get("_valet_sse", set()).discard(event.stream_id)
    return (yield from _original_h2_handle_event(self, event))


def _http_layers(root: Any) -> list[HttpLayer]:
    """The HTTP layers of an agent's connection (a TLS listener's and a CONNECT tunnel's nest inside others)."""
    found, todo, seen = [], [root], set()
    while todo:
        layer = todo.pop()
        if layer is None or id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, HttpLayer):
            found.append(layer)
            todo += [getattr(stream, "child_layer", None) for stream in layer.streams.values()]
        todo += [getattr(layer, "child_layer", None), getattr(layer, "layer", None)]
    return found


def end_connecting(handler: server.ConnectionHandler, flow: http.HTTPFlow, ending: mitm_limits.Ending) -> bool:
    """An HTTP/2 agent's exchange whose upstream is still connecting (or in its TLS handshake) is cut: the
    connection being opened for it is closed, so mitmproxy fails the stream ("connect failed") and item 6
    above answers it with ``ending`` (``504 upstream_timeout``) on that stream, the agent's connection and
    its other streams going on. HTTP/1 agents get their ending written by the watchdog itself (their
    connection ends with the exchange). False when no such connection is found (the caller then ends the
    agent's connection as before)."""
    for layer in _http_layers(handler.layer):
        for conn, waiting in list(layer.waiting_for_establishment.items()):
            for command in waiting:
                stream = layer.command_sources.get(command)
                if getattr(stream, "flow", None) is flow and conn in handler.transports:
                    mitm_limits.set_ending(flow.client_conn.id, ending, stream.stream_id)  # type: ignore[union-attr]
                    handler.close_connection(conn)
                    return True
    return False


def stream_of(handler: server.ConnectionHandler, flow: http.HTTPFlow) -> int | None:
    """The HTTP/2 stream id of ``flow`` on its agent's connection (None: not found, or not HTTP/2)."""
    if handler.client.alpn != b"h2":
        return None
    for layer in _http_layers(handler.layer):
        for stream_id, stream in layer.streams.items():
            if getattr(stream, "flow", None) is flow:
                return stream_id
    return None


_original_read_body = _http1.Http1Connection.read_body
TRAILERS_MESSAGE = "trailers_refused: HTTP/1 messages with trailers are not accepted"


def _read_body(self: _http1.Http1Connection, event: events.Event):  # type: ignore[no-untyped-def]
    """mitmproxy's body reader, with trailers turned into the protocol error they are to Valet (item 7)."""
    try:
        return (yield from _original_read_body(self, event))
    except NotImplementedError:
        # the stream records it (its error hook: the audit row says trailers_refused); mitmproxy answers a
        # request's protocol error with nothing, so the agent gets Valet's JSON page here (for an upstream's
        # answer the stream sends the agent its 502 itself), then the connection is closed
        self.buf = _http1.ReceiveBuffer()
        self.state = types.MethodType(mitm_limits._discard, self)
        agent_side = isinstance(self, _http1.Http1Server)
        message = TRAILERS_MESSAGE if agent_side else "the upstream's answer had trailers, which Valet does not relay"
        yield ReceiveHttp(self.ReceiveProtocolError(self.stream_id, message, code=ErrorCode.GENERIC_CLIENT_ERROR))
        if agent_side:
            # answered once the recorder has committed its row (the 400), or found it could not in time (503
            # audit_unavailable): it leaves the answer in ENDINGS, looked for on this layer's own timer so that it
            # goes out through the agent's layers (TLS included) (review 5, F2)
            self._valet_refusal_deadline = time.monotonic() + REFUSAL_WAIT_SECONDS  # type: ignore[attr-defined]
            self._valet_refusal_wait = commands.RequestWakeup(REFUSAL_POLL_SECONDS)  # type: ignore[attr-defined]
            yield self._valet_refusal_wait
            return
        yield commands.CloseConnection(self.conn)


REFUSAL_POLL_SECONDS = 0.005
# past the longest commit bound (audit.commit_timeout_seconds <= 60): the recorder never answered (it found no
# exchange to record), so the refusal is sent as it is
REFUSAL_WAIT_SECONDS = 65.0


def _answer_refusal(self: _http1.Http1Server):  # type: ignore[no-untyped-def]
    """The answer the recorder left for this connection's refused request, once it is there: written, then the
    connection closed; until then, looked for again shortly."""
    ending = mitm_limits.ENDINGS.pop(self.conn.id, None)
    if ending is None and time.monotonic() < self._valet_refusal_deadline:  # type: ignore[attr-defined]
        self._valet_refusal_wait = commands.RequestWakeup(REFUSAL_POLL_SECONDS)  # type: ignore[attr-defined]
        yield self._valet_refusal_wait
        return
    self._valet_refusal_wait = None  # type: ignore[attr-defined]
    if ending is None:
        ending = mitm_limits.Ending(Cause.TRAILERS_REFUSED, "requests with trailers are not accepted")
    ending.wrote(ending.status, ending.body())
    yield commands.SendData(self.conn, ending.response())
    yield commands.CloseConnection(self.conn)


def install() -> None:
    """Call after :func:`addon.protocol.mitm_limits.install` (whose wrappers this leaves in place)."""
    global _original_h2_handle_event
    if getattr(server.ConnectionHandler.handle_client, "__name__", "") == "_handle_client":
        return
    server.ConnectionHandler.handle_client = _handle_client  # type: ignore[method-assign]
    _http1.Http1Server._handle_event = _handle_event  # type: ignore[method-assign]
    HttpStream.state_wait_for_request_headers = _wait_for_request_headers  # type: ignore[method-assign]
    _http1.Http1Client.read_headers = _client_read_headers  # type: ignore[method-assign]
    _http1.Http1Connection.read_body = _read_body  # type: ignore[method-assign]
    _original_h2_handle_event = _http2.Http2Server._handle_event  # mitm_limits' wrapper: chained, not replaced
    _http2.Http2Server._handle_event = _h2_handle_event  # type: ignore[method-assign]


def configure(limits: Any, timeouts: dict[str, float]) -> None:
    """Take the configuration's values (hooks/state.py, at start and on every reload)."""
    global HEADER_READ_SECONDS, CLIENT_IDLE_SECONDS, BODY_READ_SECONDS, BODY_TOTAL_SECONDS, MAX_PENDING
    global MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADER_COUNT
    HEADER_READ_SECONDS = timeouts["header_read_seconds"]
    CLIENT_IDLE_SECONDS = timeouts["client_idle_seconds"]
    BODY_READ_SECONDS = timeouts["body_read_seconds"]
    BODY_TOTAL_SECONDS = timeouts["body_total_seconds"]
    MAX_PENDING = limits.max_pending_connections
    MAX_RESPONSE_HEADER_BYTES = limits.max_response_header_bytes
    MAX_RESPONSE_HEADER_COUNT = limits.max_response_header_count
