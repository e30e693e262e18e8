"""Small patches of mitmproxy's HTTP/1 server side and request buffering: bounded memory, Valet's own ends.

1. **Request heads are capped.** mitmproxy's HTTP/1 reader keeps every byte of a request head until
   it sees the blank line, with no limit and no option for one: a client without a key that sends
   header lines without end made one connection hold 64 MiB. ``Http1Server.read_headers`` is wrapped:
   a head longer than ``limits.max_header_bytes`` (still incomplete, or complete) or with more than
   ``limits.max_header_count`` lines is answered ``431 headers_too_large`` and the connection closed,
   before anything else (authentication included) reads it.
2. **An exchange Valet ends gets Valet's answer.** When Valet cuts an upstream (a timeout, a revoked
   key, a kill switch: :mod:`addon.hooks.watchdog`) it marks the agent's connection here and closes the
   upstream connection; mitmproxy then reports a protocol error to the agent's side, and
   ``Http1Server.send`` is wrapped to answer it with Valet's JSON-RPC error (``504 upstream_timeout``)
   when no response head was sent yet, or with one SSE ``error`` event as the last chunk of a chunked
   stream that was open, then the connection is closed. The texts are Valet's own: no upstream byte.
3. **A refusal decided on headers does not read the body.** ``HttpStream.state_consume_request_body``
   is wrapped: a flow already answered when its first body byte arrives is answered at once, the rest
   of the body is dropped as it arrives (never buffered) and the connection is closed.
5. **Slow request heads are cut**: a head not complete ``timeouts.header_read_seconds`` after its first
   byte gets ``408 request_timeout`` and the connection is closed (a slowloris client holds nothing).
4. **One budget for every body Valet buffers**, across all connections
   (``limits.max_buffered_total_bytes``): request bodies while they arrive, response bodies while they
   arrive and until they are sent on, the decoded bytes of a compressed answer, and an OAuth replay's
   answer (:func:`decode_within` / :func:`hold`). A request body that would take more is answered
   ``503 busy`` at once (the rest dropped, the connection closed); a response body that would take more
   is cut: the upstream request is cancelled (its connection closed, or its h2 stream reset), the rest
   of its body dropped as it arrives, and the agent gets ``503 busy`` through the ordinary response
   path (scrubbed, audited). Every share is released when its body is sent on, when its stream errors
   (a disconnect, a kill switch, a timeout), and in any case when the stream or flow object goes away.
6. **HTTP/2 agents get the same head caps** (TLS with ALPN ``h2``: Valet's reverse listener accepts TLS,
   and forward mode intercepts CONNECT tunnels; mitmproxy speaks no cleartext h2c). The ``h2`` library
   refuses a decoded header list past its limit with ``GOAWAY`` (``ENHANCE_YOUR_CALM``); that limit is
   set to twice ``limits.max_header_bytes`` (plus HPACK's 32 bytes per field), and a decoded head within
   it but over Valet's caps (measured as HTTP/1 would: ``name: value`` CRLF per field, the pseudo-headers
   making the request line) is answered ``431 headers_too_large`` on its stream, which is then reset,
   before any hook sees it. h2 holds an encoded header block until its last CONTINUATION (up to 64 frames
   of mitmproxy's 128 KiB frame size: 8 MiB per connection); past twice the head cap the connection gets
   ``GOAWAY`` and is closed. A header block (HEADERS and its CONTINUATIONs), or a frame header, still
   incomplete ``timeouts.header_read_seconds`` after it began ends the connection the same way, as a slow
   HTTP/1 head gets 408 (on mitmproxy's timer, a wakeup of the layer, so that the GOAWAY is written through
   the agent's TLS).
8. **Refusals at this layer are audited before they are answered** (review 3, G5), HTTP/1 and HTTP/2: the
   400 mitmproxy gives a head it cannot frame (``Content-Length`` with ``Transfer-Encoding``, a bad version
   line), the 431s, the 408 and the GOAWAYs above have no flow, so no hook writes their row.
   :data:`RECORD` (bound to :func:`addon.audit.preauth.layer_refusal` by ``hooks/recorder.py``) writes it
   ahead from the head bytes read (an h2 head written out as HTTP/1 lines; a GOAWAY's row is one per
   connection); the answer is held until the row is committed (at most the writer's commit bound), then
   written (HTTP/1: and the socket closed; HTTP/2: on its stream, in a step of the connection's layer that a
   wakeup brings every :data:`H2_POLL_SECONDS`), and the row is completed with what the agent got. A row
   not committed by then (the log is locked, or known to be failing: then nothing waits) makes the answer
   ``503 audit_unavailable`` instead (issue 10 item 4; a GOAWAY stays a GOAWAY). Nothing of the refused
   request reaches a hook.
7. **A TLS ClientHello is capped too** (an agent connecting with TLS, or a forward-mode tunnel Valet
   intercepts): mitmproxy buffers the ClientHello until it parses, and its 3-byte length lets it claim
   16 MiB. One past :data:`MAX_CLIENT_HELLO` bytes ends the handshake (the connection is closed), and a
   TLS handshake not complete ``timeouts.header_read_seconds`` after its first byte is cut the same way.

mitmproxy is pinned below 13 (as for :mod:`addon.protocol.mitm_errors`), and the end-to-end tests
(``tests/test_e2e_holdup_*.py``) fail loudly if these internals change.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
import h2.errors
import h2.events
import h2.exceptions
import h2.stream
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.tls import ClientTLSLayer
from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.proxy.layers.http._events import (
    ErrorCode, RequestData, RequestEndOfMessage, RequestProtocolError, ResponseData, ResponseEndOfMessage,
    ResponseHeaders, ResponseProtocolError,
)
from mitmproxy.proxy.layers.http import SendHttp
from mitmproxy.proxy.utils import ReceiveBuffer

from addon.protocol.errors import Cause, Refusal
from addon.protocol.sse import is_event_stream
from addon.secrets.compressed import TooLarge, Unreadable

# Set from the configuration (limits.max_header_bytes / max_header_count / max_buffered_total_bytes)
# by hooks/state.py.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_COUNT = 100
MAX_BUFFERED_TOTAL = 256 * 1024 * 1024
HEADER_READ_SECONDS = 30.0  # timeouts.header_read_seconds
# How a flow is refused (hooks/state.refuse, set there: the audit row then says why).
REFUSE: Callable[[http.HTTPFlow, Refusal, str], None] | None = None
# How a refusal without a flow is audited: (peer, head bytes, cause, status, rule, answer size) -> what the
# answer waits for (an addon.audit.preauth.Held), or None (preauth.layer_refusal, set by hooks/recorder.py)
RECORD: Callable[..., Any] | None = None
# How an exchange ended below the hooks is audited: (flow, cause, status, answer size) -> as RECORD (recorder.py)
RECORD_FLOW: Callable[..., Any] | None = None
_ANSWERING: set[asyncio.Task[None]] = set()  # answers waiting for their row (a reference keeps each task alive)


class _Budget:
    """Body bytes held across all connections: ``(owner, kind) -> bytes``, one total.

    Owners are mitmproxy's ``HttpStream`` (request and response bodies as they arrive) and the flow
    (decoded and replayed answers). A share is released explicitly when its body is handed on, and in any
    case when its owner object goes away (an agent that disconnects mid-body, a stream that errors), so no
    path can leak budget. Only touched on the event loop.
    """

    def __init__(self) -> None:
        self.total = 0
        self._held: dict[int, dict[str, int]] = {}
        self._collected = 0.0

    def add(self, owner: object, size: int, kind: str = "request") -> None:
        key = id(owner)
        shares = self._held.get(key)
        if shares is None:
            shares = self._held[key] = {}
            weakref.finalize(owner, self._gone, key)
        shares[kind] = shares.get(kind, 0) + size
        self.total += size

    def release(self, key: int, kind: str | None = None) -> None:
        """Give back ``kind``'s share of the owner with id ``key`` (every share when ``kind`` is None)."""
        shares = self._held.get(key)
        if shares is None:
            return
        if kind is None:
            self.total -= sum(shares.values())
            shares.clear()
        else:
            self.total -= shares.pop(kind, 0)

    def _gone(self, key: int) -> None:
        shares = self._held.pop(key, None)
        if shares:
            self.total -= sum(shares.values())

    def room(self, want: int) -> int:
        """How much of ``want`` fits in what is left (after collecting dead owners if it would not all fit)."""
        if self.spent(want):
            return max(0, MAX_BUFFERED_TOTAL - self.total)
        return want

    def collect(self) -> None:
        """Collect streams and flows of closed connections (mitmproxy's layers hold reference cycles), at most
        once a second, so that their finalizers give their shares back."""
        now = time.monotonic()
        if now - self._collected > 1.0:
            self._collected = now
            gc.collect()

    def spent(self, size: int) -> bool:
        """Whether ``size`` more bytes would pass the budget; dead owners are collected first."""
        if self.total + size <= MAX_BUFFERED_TOTAL:
            return False
        self.collect()
        return self.total + size > MAX_BUFFERED_TOTAL

    def held(self) -> int:
        """The bytes held now, for the ``valet_buffered_bytes`` gauge (no collection: a scrape never stalls)."""
        return self.total


BUDGET = _Budget()


class Busy(Exception):
    """The global body budget is spent: the exchange is answered ``503 busy`` (retry later)."""

    @property
    def refusal(self) -> Refusal:
        return busy()


def busy() -> Refusal:
    return Refusal(Cause.BUSY, "Valet holds as many bodies as it may; retry later", headers={"retry-after": "1"})


def hold(flow: object, size: int, kind: str) -> None:
    """Count ``size`` more bytes held for ``flow`` (an OAuth replay's answer as it arrives), or raise
    :class:`Busy`. Given back when the flow's response is sent on, or when the flow goes away."""
    if BUDGET.spent(size):
        raise Busy()
    BUDGET.add(flow, size, kind)


async def decode_within(flow: object, decode: Callable[[int], bytes], cap: int) -> bytes:
    """``decode(limit)`` in a worker thread, its output counted in the budget.

    The decoder may produce up to ``limit`` bytes before it gives up, so ``limit`` is reserved up front:
    ``cap`` (``max_buffered_bytes``) or what is left of the budget if that is less. A body that decodes
    past a limit the budget set (not past ``cap``) is :class:`Busy`, not too large. Once decoded, only
    its real size stays held, until the flow's response is sent on.
    """
    limit = BUDGET.room(cap)
    if limit <= 0:
        raise Busy()
    BUDGET.add(flow, limit, "decoding")
    try:
        decoded = await asyncio.to_thread(decode, limit)
    except TooLarge as exc:
        if limit < cap and not isinstance(exc, Unreadable):
            raise Busy() from None
        raise
    finally:
        BUDGET.release(id(flow), "decoding")
    BUDGET.add(flow, len(decoded), "decoded")
    return decoded


@dataclass(eq=False)
class Ending:
    """How Valet ends an exchange it cut: the HTTP answer before a response head, the event after one.

    ``settled`` once the agent's side handled it, ``written`` then holds the status and the bytes the agent
    actually got (None: nothing; the connection was closed or the cut body left as it was): the audit row
    records that, not what Valet meant to send (review 3, G13).
    """

    cause: Cause
    message: str
    settled: bool = False
    written: tuple[int | None, int] | None = None  # (status, bytes): status None for an event after a head
    stream_id: int | None = None  # HTTP/2: the stream it ends (None: the connection's exchange in progress)
    # an answer Valet already made (a refusal), sent as it is instead of ``cause``'s error: mitmproxy's own 413 for a
    # body over its limit would otherwise replace it (review 5, F2)
    answer: http.Response | None = None

    def wrote(self, status: int | None, body: bytes) -> bytes:
        """Note that ``body`` (the bytes of a response body) went to the agent, with ``status``; returns it."""
        self.settled, self.written = True, (status, len(body))
        return body

    @property
    def status(self) -> int:
        return self.answer.status_code if self.answer is not None else self.cause.status

    def body(self) -> bytes:
        if self.answer is not None:
            return self.answer.raw_content or b""
        return Refusal(self.cause, self.message).body()

    def response(self) -> bytes:
        if self.answer is not None:
            answer = self.answer.copy()
            answer.headers["connection"] = "close"
            return http1.assemble_response(answer)
        body = self.body()
        headers = http.Headers(content_type="application/json", connection="close")
        return http1.assemble_response(http.Response.make(self.cause.status, body, headers))

    def event(self) -> bytes:
        error = {"code": self.cause.code, "message": self.message, "data": {"reason": self.cause.reason}}
        data = json.dumps({"jsonrpc": "2.0", "id": None, "error": error})
        return f"event: error\ndata: {data}\n\n".encode()


# agent connection id -> how Valet ends the exchange it cut on it (set just before the upstream is closed). An
# HTTP/1 connection carries one exchange at a time; an HTTP/2 one many: their endings are per stream (review 5,
# F1: two streams cut at once on one connection got each other's answer, and their rows were swapped).
ENDINGS: dict[str, Ending] = {}
STREAM_ENDINGS: dict[str, dict[int, Ending]] = {}


def set_ending(client_id: str, ending: Ending, stream_id: int | None = None) -> None:
    """How the exchange Valet cuts on this agent connection ends: on its HTTP/2 stream ``stream_id``, or (None)
    the connection's one exchange."""
    if stream_id is None:
        ENDINGS[client_id] = ending
    else:
        ending.stream_id = stream_id
        STREAM_ENDINGS.setdefault(client_id, {})[stream_id] = ending


def take_stream_ending(client_id: str, stream_id: int) -> Ending | None:
    """The ending meant for this HTTP/2 stream (taken: it is used once), else the connection's if it names no
    stream or this one."""
    endings = STREAM_ENDINGS.get(client_id)
    if endings is not None:
        ending = endings.pop(stream_id, None)
        if not endings:
            del STREAM_ENDINGS[client_id]
        if ending is not None:
            return ending
    ending = ENDINGS.get(client_id)
    if ending is not None and ending.stream_id in (None, stream_id):
        del ENDINGS[client_id]
        return ending
    return None


def _too_large() -> bytes:
    return Ending(Cause.HEADERS_TOO_LARGE, HEAD_TOO_LARGE_MESSAGE).response()


def head_over(buf: _http1.ReceiveBuffer, max_bytes: int, max_lines: int) -> bool:
    """Whether the buffered HTTP/1 head (complete or not) is longer than ``max_bytes`` or has more than
    ``max_lines`` lines after its start line; checked before mitmproxy extracts it."""
    data = bytes(buf)[: max_bytes + 4]
    end = data.find(b"\r\n\r\n")
    if end == -1:
        end = data.find(b"\n\n")
    head = data if end == -1 else data[:end]
    return len(head) > max_bytes or head.count(b"\n") > max_lines


def _head_too_large(buf: _http1.ReceiveBuffer) -> bool:
    """Whether the buffered request head exceeds the limits."""
    return head_over(buf, MAX_HEADER_BYTES, MAX_HEADER_COUNT)


# agent connections answered before their request body was read: closed once the answer is out
_CLOSE_AFTER_ANSWER: set[str] = set()

_original_read_headers = _http1.Http1Server.read_headers
_original_consume = HttpStream.state_consume_request_body
_original_send = _http1.Http1Server.send
_original_consume_response = HttpStream.state_consume_response_body
_original_send_response = HttpStream.send_response
_original_protocol_error = HttpStream.handle_protocol_error


def _discard(self: _http1.Http1Server, event: events.Event):  # type: ignore[no-untyped-def]
    """The state of a refused connection until it is closed: what still arrives is dropped, not kept."""
    self.buf = _http1.ReceiveBuffer()
    yield from ()


def _close_client(client_id: str, answer: bytes = b"", conn_id: str | None = None) -> None:
    """Close the agent's socket ourselves once the 431 is queued (or, with ``conn_id``, the socket of that
    upstream connection of the agent's).

    mitmproxy's ``CloseConnection`` cancels the reading task, but a reader that always finds data
    buffered (a flood, a large upstream answer) never reaches a suspension point where the cancellation
    lands, so the socket would stay open while the flood goes on. Closing the transport flushes the
    answer, then closes.
    """
    master = getattr(ctx, "master", None)
    server = master.addons.get("proxyserver") if master is not None else None
    handler = server.connections.get(client_id) if server is not None else None
    if handler is None:
        return
    for conn, io in list(handler.transports.items()):
        if conn.id == (conn_id or client_id) and io.writer is not None and not io.writer.is_closing():
            if answer:
                io.writer.write(answer)
            io.writer.close()


UNAVAILABLE_MESSAGE = "the audit log cannot be written; refusing to answer unrecorded"


def unavailable() -> Ending:
    """The answer of a refusal whose row could not be committed in time: ``503 audit_unavailable``."""
    return Ending(Cause.AUDIT_UNAVAILABLE, UNAVAILABLE_MESSAGE)


def _answer_after_row(server: _http1.Http1Server, head: bytes, cause: Cause, rule: str, answer: bytes) -> None:
    """Record the refusal (:data:`RECORD`), then write ``answer`` and close the socket once its row is
    committed; if it was not committed within the writer's bound, the answer is ``503 audit_unavailable``
    instead (nothing was forwarded either way; the row lands when the log recovers and says what the agent
    got). The connection reads nothing more meanwhile (:func:`_discard`)."""
    server.state = types.MethodType(_discard, server)
    server.buf = _http1.ReceiveBuffer()
    server._valet_head_timer = None  # type: ignore[attr-defined]  # answered: no 408 (and no second row) later
    client_id = server.conn.id
    held = None
    if RECORD is not None:
        try:
            held = RECORD(server.conn.peername, head, cause, cause.status, rule, len(answer))
        except Exception:  # noqa: BLE001 - a failing record must not keep the socket open: answer anyway
            logging.getLogger("valet").exception("audit of an HTTP/1 refusal failed")

    def send(ok: bool) -> None:
        if ok:
            _close_client(client_id, answer)
            if held is not None:
                held.answered(None, cause.status, len(answer))
            return
        answer_503 = unavailable().response()
        _close_client(client_id, answer_503)
        if held is not None:
            held.answered(Cause.AUDIT_UNAVAILABLE, Cause.AUDIT_UNAVAILABLE.status, len(answer_503))

    answer_when_recorded(held, send)


def answer_when_recorded(held: object, send: Callable[[bool], None]) -> None:
    """``send(ok)`` once the row's commit (``held.committed``, a :class:`addon.audit.preauth.Held`) is done or
    its bound passed: ``ok`` says whether the row is committed. At once, with ``ok``, without one (no log)."""
    future = getattr(held, "committed", None)
    if future is None:
        send(True)  # no log, or counted into its peer's summary while the log is healthy
        return
    if future.done():
        send(not future.cancelled() and bool(future.result()))
        return
    bound = getattr(held, "bound", 0.0)

    async def later() -> None:
        ok = False
        try:
            ok = bool(await asyncio.wait_for(asyncio.shield(future), bound))
        except (TimeoutError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - the writer failed it: not committed
            ok = False
        send(ok)

    task = asyncio.get_running_loop().create_task(later())
    _ANSWERING.add(task)
    task.add_done_callback(_ANSWERING.discard)


def _head_timeout(ref: weakref.ref[_http1.Http1Server], timer: object) -> None:
    """A request head still incomplete ``HEADER_READ_SECONDS`` after its first byte: 408, then closed."""
    server = ref()
    if server is None or getattr(server, "_valet_head_timer", None) is not timer:
        return
    server._valet_head_timer = None  # type: ignore[attr-defined]
    head = bytes(server.buf)[:MAX_HEADER_BYTES]
    answer = Ending(Cause.REQUEST_TIMEOUT, "the request head did not arrive in time").response()
    _answer_after_row(server, head, Cause.REQUEST_TIMEOUT, "http1:head_timeout", answer)


def _read_headers(self: _http1.Http1Server, event: events.ConnectionEvent):  # type: ignore[no-untyped-def]
    if isinstance(event, events.DataReceived) and getattr(self, "_valet_head_timer", None) is None:
        timer = object()
        self._valet_head_timer = timer
        asyncio.get_running_loop().call_later(HEADER_READ_SECONDS, _head_timeout, weakref.ref(self), timer)
    if isinstance(event, events.DataReceived) and _head_too_large(self.buf):
        head = bytes(self.buf)[:MAX_HEADER_BYTES]  # what the row is written from; the rest is dropped
        # nothing more is read on this connection; the 431 goes once its row is committed
        _answer_after_row(self, head, Cause.HEADERS_TOO_LARGE, "http1:head_too_large", _too_large())
        return
    if not isinstance(event, events.DataReceived):
        return (yield from _original_read_headers(self, event))
    head = bytes(self.buf._data[: MAX_HEADER_BYTES + 4])  # the head (within the cap checked above), for a row
    refused = None
    # mitmproxy's reader answers a head it cannot frame with a 400 and closes, in this same step, before any
    # flow exists: its commands are taken here, the answer held until the refusal's row is committed.
    reader = _original_read_headers(self, event)
    try:
        command = next(reader)
        while True:
            if refused is None and isinstance(command, commands.SendData) and command.connection is self.conn \
                    and getattr(self.state, "__func__", None) is _read_headers:
                refused = command.data
            if refused is None:
                sent = yield command
            else:  # the rest (its close, the flow it would show in mitmproxy's UI) is dropped: no hook sees it
                sent = None
            command = reader.send(sent)
    except StopIteration as stop:
        result = stop.value
    if refused is not None:
        end = head.find(b"\r\n\r\n")
        _answer_after_row(self, head[: end if end != -1 else MAX_HEADER_BYTES], Cause.INVALID_REQUEST,
                          "http1:framing", refused)
        self._valet_head_timer = None
        return result
    if getattr(self.state, "__func__", None) is not _read_headers:  # the head is complete (or refused)
        self._valet_head_timer = None
    return result


def _swallow(self: HttpStream, event: events.Event):  # type: ignore[no-untyped-def]
    """The agent's side of a stream answered before its body: what still arrives is dropped."""
    yield from ()


def _consume(self: HttpStream, event: events.Event):  # type: ignore[no-untyped-def]
    """A request refused on its headers (no key, unknown server, ...) is answered at its first body
    byte, without reading the body, and its connection closed. mitmproxy would otherwise buffer the
    whole body (up to ``body_size_limit``) only to throw it away: ten such bodies took 700 MB."""
    if isinstance(event, RequestData) and self.flow.response is None:
        if REFUSE is not None and BUDGET.spent(len(event.data)):
            BUDGET.release(id(self), "request")
            REFUSE(self.flow, Refusal(Cause.BUSY, "Valet holds as many request bodies as it may; retry later",
                                      headers={"retry-after": "1"}), "error")
        else:
            BUDGET.add(self, len(event.data))
    elif isinstance(event, RequestEndOfMessage):
        BUDGET.release(id(self), "request")
    if self.flow.response is not None and isinstance(event, RequestData):
        if self.flow.request.http_version.upper().startswith("HTTP/1"):  # h2/h3 forbid a Connection header;
            self.flow.response.headers["connection"] = "close"  # there the stream ends, the body is dropped
            _CLOSE_AFTER_ANSWER.add(self.context.client.id)
        yield from _original_consume(self, RequestEndOfMessage(self.stream_id))
        self.client_state = types.MethodType(_swallow, self)
        return
    return (yield from _original_consume(self, event))


def _consume_response(self: HttpStream, event: events.Event):  # type: ignore[no-untyped-def]
    """A response body is counted while mitmproxy buffers it; one that would pass the budget is cut."""
    if isinstance(event, ResponseData) and REFUSE is not None:
        if BUDGET.spent(len(event.data)):
            yield from _cut_response(self)
            return
        BUDGET.add(self, len(event.data), "response")
    return (yield from _original_consume_response(self, event))


def _cut_response(self: HttpStream):  # type: ignore[no-untyped-def]
    """Cancel the upstream request (HTTP/1: its connection is closed; h2: its stream reset), drop what was
    received, answer ``503 busy`` through the ordinary response path (the response hooks scrub and audit
    it), then drop whatever of this stream is still on its way (the rest of the body, the upstream's close)."""
    assert REFUSE is not None
    BUDGET.release(id(self), "response")
    self.response_body_buf = ReceiveBuffer()
    self.server_state = types.MethodType(_swallow, self)
    yield SendHttp(RequestProtocolError(self.stream_id, "Valet's body budget is spent", ErrorCode.CANCEL),
                   self.context.server)
    if not self.context.server.connected:  # HTTP/1: closed, and its socket too (see _close_client)
        asyncio.get_running_loop().call_soon(_close_client, self.context.client.id, b"", self.context.server.id)
    REFUSE(self.flow, busy(), "error")
    yield from self.send_response()
    self.server_state = types.MethodType(_swallow, self)
    self.client_state = self.state_errored  # the upstream's close, still queued, is not an error to report


def _send_response(self: HttpStream, already_streamed: bool = False):  # type: ignore[no-untyped-def]
    """The response is handed on (or the agent went away during the response hooks): its body's share,
    and what the hooks held for the flow (a decoded or replayed answer), go back to the budget."""
    try:
        return (yield from _original_send_response(self, already_streamed))
    finally:
        BUDGET.release(id(self), "response")
        BUDGET.release(id(self.flow))


def _protocol_error(self: HttpStream, event: events.Event):  # type: ignore[no-untyped-def]
    """A stream that errors (disconnect, kill, timeout) gives back every share it and its flow held."""
    try:
        return (yield from _original_protocol_error(self, event))
    finally:
        BUDGET.release(id(self))
        flow = getattr(self, "flow", None)
        if flow is not None:
            BUDGET.release(id(flow))


# The responses whose head was handed to an HTTP/1 agent's connection: the recorder must not take "streamed"
# for "the agent has the status" (review 4, H13: an upstream dying before Valet sent a 100 MiB answer's head
# left the agent with a 502 page and a row saying 200). Weak: a response leaves it with its flow.
HEADS_SENT: weakref.WeakSet[http.Response] = weakref.WeakSet()


# HTTP/2: the agent connection and stream each response in HEADS_SENT went out on (mitm_conn), so that the bytes
# h2 still holds for it when the exchange fails can be told from those sent.
H2_STREAMS: weakref.WeakKeyDictionary[http.Response, tuple[weakref.ref[Any], int]] = weakref.WeakKeyDictionary()


def unsent(response: http.Response) -> int:
    """Body bytes of ``response`` handed to an HTTP/2 agent's connection and still held there (its flow-control
    window was full): a reset of the stream drops them, so they never reached the agent. 0 for HTTP/1."""
    where = H2_STREAMS.get(response)
    server = where[0]() if where is not None else None
    if server is None:
        return 0
    buffered = server.h2_conn.stream_buffers.get(where[1])
    return sum(len(item.data) for item in buffered) if buffered else 0


def _send(self: _http1.Http1Server, event):  # type: ignore[no-untyped-def]
    if isinstance(event, ResponseHeaders):
        HEADS_SENT.add(event.response)
    if isinstance(event, ResponseEndOfMessage) and self.conn.id in _CLOSE_AFTER_ANSWER:
        _CLOSE_AFTER_ANSWER.discard(self.conn.id)
        yield from _original_send(self, event)
        self.state = types.MethodType(_discard, self)  # the rest of the body is dropped as it arrives
        asyncio.get_running_loop().call_soon(_close_client, self.conn.id)
        return
    if isinstance(event, ResponseProtocolError):
        ending = ENDINGS.pop(self.conn.id, None)
        if ending is not None:
            ending.settled = True
            if self.conn.state & ConnectionState.CAN_WRITE:
                if not self.response:
                    ending.wrote(ending.status, ending.body())
                    yield commands.SendData(self.conn, ending.response())
                elif ("chunked" in self.response.headers.get("transfer-encoding", "").lower()
                      and is_event_stream(self.response.headers)):
                    # an open event stream gets one error event and its end; any other body (a streamed
                    # JSON answer) stays cut, without the final chunk, so that it never looks complete
                    notice = ending.event()
                    ending.wrote(None, notice)
                    yield commands.SendData(self.conn, b"%x\r\n%s\r\n0\r\n\r\n" % (len(notice), notice))
                yield commands.CloseConnection(self.conn)
            return
    return (yield from _original_send(self, event))


HPACK_FIELD_OVERHEAD = 32  # RFC 7541 4.1: what HPACK (and h2's decoder limit) adds per field


def _h2_list_limit() -> int:
    """The decoded header list size h2 may build before it gives up on the connection: every head within
    twice Valet's caps decodes (and gets the exact check below, a 431 on its stream), anything larger never
    does (GOAWAY)."""
    return 2 * MAX_HEADER_BYTES + HPACK_FIELD_OVERHEAD * (MAX_HEADER_COUNT + 8)


def _h2_head_too_large(headers: list[tuple[bytes, bytes]]) -> bool:
    """The HTTP/1 caps on a decoded h2 head: its fields as HTTP/1 lines (pseudo-headers make the request line)."""
    size = sum(len(name) + len(value) + 4 for name, value in headers)
    count = 1 + sum(1 for name, _ in headers if not name.startswith(b":"))
    return size > MAX_HEADER_BYTES or count > MAX_HEADER_COUNT


_original_h2_init = _http2.Http2Server.__init__
_original_h2_event = _http2.Http2Server.handle_h2_event
_original_h2_handle = _http2.Http2Server._handle_event


def _h2_init(self: _http2.Http2Server, context) -> None:  # type: ignore[no-untyped-def]
    _original_h2_init(self, context)
    self.h2_conn.decoder.max_header_list_size = _h2_list_limit()


def _h2_head_bytes(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A decoded h2 head written out as an HTTP/1 head (what the audit row is written from, and what the caps
    measure): the pseudo-headers make the request line, every other field a line."""
    pseudo = {name: value for name, value in headers if name.startswith(b":")}
    lines = [b"%s %s HTTP/2" % (pseudo.get(b":method", b"-"), pseudo.get(b":path", b"-"))]
    lines += [name + b": " + value for name, value in headers if not name.startswith(b":")]
    return b"\r\n".join(lines)[:MAX_HEADER_BYTES]


def _h2_answer(server: _http2.Http2Server, stream_id: int, cause: Cause, message: str) -> tuple[bytes, int]:
    """``cause``'s JSON-RPC error on the stream, which is then reset if the agent may still send on it (RFC
    9113 8.1: the answer is complete, the client stops sending its body); the frames to write and the body's
    size (0: nothing could be written, the stream or the connection is gone)."""
    conn = server.h2_conn
    if "_handle_event" in server.__dict__ or not server.is_open_for_us(stream_id):
        return b"", 0
    body = Refusal(cause, message).body()
    try:
        conn.send_headers(stream_id, [(b":status", b"%d" % cause.status), (b"content-type", b"application/json"),
                                      (b"content-length", b"%d" % len(body))])
        conn.send_data(stream_id, body, end_stream=True)
        stream = conn.streams.get(stream_id)
        if stream is not None and stream.state_machine.state is not h2.stream.StreamState.CLOSED:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
    except h2.exceptions.H2Error:
        return conn.data_to_send(), 0
    return conn.data_to_send(), len(body)


H2_POLL_SECONDS = 0.005  # how often an HTTP/2 answer held for its row looks at the commit (a mitmproxy wakeup)
H2_SETTLE_SECONDS = 5.0  # past its bound: a held answer whose connection went away is recorded as not sent


@dataclass(eq=False)
class _HeldAnswer:
    """An HTTP/2 answer waiting for its row: a 431 on ``stream_id``, or the connection's ``goaway``."""

    held: Any  # addon.audit.preauth.Held
    deadline: float
    stream_id: int | None
    goaway: bytes = b""


def _h2_wakeup(server: _http2.Http2Server, delay: float = H2_POLL_SECONDS) -> commands.RequestWakeup:
    """A wakeup for this connection (its held answers, its header-read deadline). Answers are written in a step
    of the layer (never straight to the socket: the agent's TLS is a layer above), so the commit is looked at
    on mitmproxy's own timer."""
    command = commands.RequestWakeup(delay)
    server.__dict__.setdefault("_valet_wakeups", set()).add(command)
    return command


def _h2_wakeup_done(server: _http2.Http2Server, command: object) -> None:
    """One of Valet's wakeups fired: it is no longer in flight (the poll and the head timer are re-armed only
    when none is: one of each per connection at most, review 5, F3 and F4)."""
    server._valet_wakeups.discard(command)
    if command is getattr(server, "_valet_poll", None):
        server._valet_poll = None  # type: ignore[attr-defined]
    if command is getattr(server, "_valet_head_timer", None):
        server._valet_head_timer = None  # type: ignore[attr-defined]


def _h2_hold(server: _http2.Http2Server, held: Any, stream_id: int | None,  # type: ignore[no-untyped-def]
             goaway: bytes = b""):
    """Hold an answer until ``held``'s row is committed (or its bound passed), then write it."""
    server.__dict__.setdefault("_valet_held", []).append(
        _HeldAnswer(held, time.monotonic() + held.bound, stream_id, goaway))
    asyncio.get_running_loop().call_later(held.bound + H2_SETTLE_SECONDS, held.answered, None, None, 0)
    yield from _h2_answer_held(server)


def _h2_answer_held(server: _http2.Http2Server):  # type: ignore[no-untyped-def]
    """Write the held answers whose row is committed or whose bound passed: the refusal if the row is committed,
    ``503 audit_unavailable`` if not (a GOAWAY is sent either way); the rest wait for the next wakeup."""
    now, waiting = time.monotonic(), []
    for item in server.__dict__.get("_valet_held", ()):
        future = item.held.committed
        if not future.done() and now < item.deadline:
            waiting.append(item)
            continue
        try:
            ok = future.done() and not future.cancelled() and future.result() is True
        except Exception:  # noqa: BLE001 - the writer failed it: not committed
            ok = False
        if item.stream_id is None:  # the whole connection is refused: GOAWAY, then closed
            server._valet_held = []  # type: ignore[attr-defined]
            yield commands.SendData(server.conn, item.goaway)
            item.held.answered(None, None, 0)  # the GOAWAY either way: no status, nothing to say otherwise
            _h2_settle(server, waiting)
            yield from _http2.Http2Connection.close_connection(server, "HTTP/2 request head larger than Valet accepts")
            asyncio.get_running_loop().call_soon(_close_client, server.conn.id)
            return
        cause = Cause.HEADERS_TOO_LARGE if ok else Cause.AUDIT_UNAVAILABLE
        data, size = _h2_answer(server, item.stream_id, cause, HEAD_TOO_LARGE_MESSAGE if ok else UNAVAILABLE_MESSAGE)
        if data:
            yield commands.SendData(server.conn, data)
        item.held.answered(None if ok else cause, cause.status if size else None, size)
    server._valet_held = waiting  # type: ignore[attr-defined]
    if waiting and getattr(server, "_valet_poll", None) is None:
        # one poll in flight per connection, whatever the number of answers held (review 5, F4: one per held
        # answer made N loops each looking at all N answers)
        server._valet_poll = _h2_wakeup(server)  # type: ignore[attr-defined]
        yield server._valet_poll


def _h2_settle(server: _http2.Http2Server, items: list[_HeldAnswer]) -> None:
    """The connection ends with these answers unsent: their rows say the agent got nothing."""
    server._valet_held = []  # type: ignore[attr-defined]
    for item in items:
        item.held.answered(None, None, 0)


HEAD_TOO_LARGE_MESSAGE = "the request head is larger than Valet accepts"


def _h2_record(server: _http2.Http2Server, head: bytes, cause: Cause, status: int | None, rule: str,
               bytes_in: int | None = None) -> Any:
    if RECORD is None:
        return None
    try:
        return RECORD(server.conn.peername, head, cause, status, rule, 0, bytes_in=bytes_in)
    except Exception:  # noqa: BLE001 - a failing record must not leave the agent unanswered
        logging.getLogger("valet").exception("audit of an HTTP/2 refusal failed")
        return None


def _h2_event(self: _http2.Http2Server, event: h2.events.Event):  # type: ignore[no-untyped-def]
    """A decoded request head over the caps: ``431`` on its stream (then reset), never handed to mitmproxy;
    the answer waits for its audit row, as an HTTP/1 431 does (meanwhile the stream is not mitmproxy's: what
    the agent still sends on it is dropped as for an unknown stream). A header list past h2's own limit (an
    HPACK bomb; h2 has queued its ``GOAWAY``): the connection's row, then the GOAWAY."""
    if isinstance(event, h2.events.RequestReceived) and _h2_head_too_large(list(event.headers or [])):
        headers = list(event.headers or [])
        held = _h2_record(self, _h2_head_bytes(headers), Cause.HEADERS_TOO_LARGE, Cause.HEADERS_TOO_LARGE.status,
                          "http2:head_too_large", sum(len(name) + len(value) + 4 for name, value in headers))
        if held is None:  # nothing to wait for (no log, or counted into the peer's summary): answered now
            data, _ = _h2_answer(self, event.stream_id, Cause.HEADERS_TOO_LARGE, HEAD_TOO_LARGE_MESSAGE)
            if data:
                yield commands.SendData(self.conn, data)
            return False
        yield from _h2_hold(self, held, event.stream_id)
        return False
    if isinstance(event, h2.exceptions.DenialOfServiceError):  # only raised for an oversized header list
        yield from _h2_refuse_connection(self, self.h2_conn.data_to_send(), 0)
        return True
    return (yield from _original_h2_event(self, event))


def _h2_closing(self: _http2.Http2Server, event: events.Event):  # type: ignore[no-untyped-def]
    """The state of an h2 connection refused as a whole until its ``GOAWAY`` is written (its row committed
    first): what arrives is dropped; an agent that closes first ends the connection's streams as usual."""
    if isinstance(event, events.Wakeup) and event.command in self.__dict__.get("_valet_wakeups", ()):
        _h2_wakeup_done(self, event.command)
        yield from _h2_answer_held(self)
    elif isinstance(event, events.ConnectionClosed):
        _h2_settle(self, self.__dict__.get("_valet_held", []))
        yield from _http2.Http2Connection.close_connection(self, "peer closed connection")


def _h2_refuse_connection(server: _http2.Http2Server, goaway: bytes, bytes_in: int,  # type: ignore[no-untyped-def]
                          cause: Cause = Cause.HEADERS_TOO_LARGE, rule: str = "http2:header_block_too_large"):
    """A header block past twice the head cap (a CONTINUATION flood, an HPACK bomb), or one not complete in
    time: one audit row for the connection (keyless ones through the per-peer budget), then ``goaway`` and the
    socket closed once the row is committed (at most the writer's bound; the GOAWAY has no status to change).
    Nothing more is read meanwhile."""
    server._valet_head_started = None  # type: ignore[attr-defined]  # refused: no head deadline any more
    server._handle_event = types.MethodType(_h2_closing, server)  # type: ignore[method-assign]
    _h2_settle(server, server.__dict__.get("_valet_held", []))  # 431s held on it: never sent now
    held = _h2_record(server, b"- - HTTP/2", cause, None, rule, bytes_in)
    if held is None:
        yield commands.SendData(server.conn, goaway)
        yield from _http2.Http2Connection.close_connection(server, "HTTP/2 request head larger than Valet accepts")
        asyncio.get_running_loop().call_soon(_close_client, server.conn.id)
        return
    yield from _h2_hold(server, held, None, goaway)


def _h2_block_limit() -> int:
    """The most HPACK-encoded bytes of one header block Valet holds: twice the decoded cap (a legitimate
    encoder never needs more: a literal field costs a few bytes over its text) plus one frame's worth.
    Without it, h2 holds up to 64 CONTINUATION frames of mitmproxy's 128 KiB frame size: 8 MiB per connection."""
    return 2 * MAX_HEADER_BYTES + 16 * 1024


def _h2_block_held(conn: _http2.BufferedH2Connection) -> int:
    """Bytes of a header block h2 holds now: its complete frames awaiting CONTINUATIONs, and a HEADERS or
    CONTINUATION frame still arriving (a DATA frame arriving is a body, bounded by the frame size)."""
    buffer = conn.incoming_buffer
    data = buffer._data
    arriving = len(data) if buffer._headers_buffer or (len(data) >= 4 and data[3] in (0x1, 0x9)) else 0
    return sum(len(frame.data) for frame in buffer._headers_buffer) + arriving


def _h2_pending_head(conn: _http2.BufferedH2Connection) -> bool:
    """Whether h2 holds part of a request head: a header block awaiting CONTINUATIONs, or a frame whose
    9-byte header is incomplete, or a HEADERS/CONTINUATION frame whose payload is (frame type: byte 3)."""
    buffer = conn.incoming_buffer
    data = buffer._data
    return bool(buffer._headers_buffer) or 0 < len(data) < 9 or (len(data) >= 9 and data[3] in (0x1, 0x9))


def _h2_goaway(server: _http2.Http2Server, why: bytes) -> bytes:
    """GOAWAY (``ENHANCE_YOUR_CALM``) for this connection; h2's partial header block is dropped."""
    server._valet_head_timer = None  # type: ignore[attr-defined]
    server.h2_conn.incoming_buffer._headers_buffer = []
    server.h2_conn.incoming_buffer._data = bytearray()
    try:
        server.h2_conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, why)
        return server.h2_conn.data_to_send()
    except Exception:  # noqa: BLE001 - h2 may consider the connection closed already: just close the socket
        return b""


def _h2_handle(self: _http2.Http2Server, event: events.Event):  # type: ignore[no-untyped-def]
    if isinstance(event, events.Wakeup) and event.command in self.__dict__.get("_valet_wakeups", ()):
        head_timer = event.command is getattr(self, "_valet_head_timer", None)
        _h2_wakeup_done(self, event.command)  # Valet's wakeup, not mitmproxy's
        started = getattr(self, "_valet_head_started", None)
        if head_timer and started is not None and _h2_pending_head(self.h2_conn):
            remaining = started + HEADER_READ_SECONDS - time.monotonic()
            if remaining <= 0:
                # a header block (or a frame header) still incomplete HEADER_READ_SECONDS after it began:
                # GOAWAY once the connection's row is committed, as a slow HTTP/1 head gets its 408
                held_bytes = _h2_block_held(self.h2_conn)
                return (yield from _h2_refuse_connection(self, _h2_goaway(self, b"request head not complete in time"),
                                                         held_bytes, Cause.REQUEST_TIMEOUT, "http2:head_timeout"))
            # armed for an earlier head that completed: this one's deadline is later
            self._valet_head_timer = _h2_wakeup(self, remaining)
            yield self._valet_head_timer
        return (yield from _h2_answer_held(self))
    if isinstance(event, events.ConnectionClosed) and self.__dict__.get("_valet_held"):
        _h2_settle(self, self._valet_held)
    result = yield from _original_h2_handle(self, event)
    if not isinstance(event, events.DataReceived) or "_handle_event" in self.__dict__:
        # mitmproxy closed the connection already: it set the instance's handler to `done` (other wrappers of
        # the class's handler, mitm_conn's, may sit around this one: compare the state, not the function)
        return result
    held_bytes = _h2_block_held(self.h2_conn)
    if held_bytes > _h2_block_limit():
        # as mitmproxy ends a connection on an h2 protocol error (its streams get errors), once the row is
        # committed, and the socket closed ourselves: a flood that keeps the reader busy would never see the
        # cancellation
        yield from _h2_refuse_connection(self, _h2_goaway(self, b"request head larger than Valet accepts"),
                                         held_bytes)
    elif not _h2_pending_head(self.h2_conn):
        self._valet_head_started = None  # the timer in flight, if any, stays: it finds nothing pending, or a
        # later head it re-arms for (one wakeup per connection at most, review 5 F3: a new 30 s wakeup for every
        # read ending inside a frame header held ~1.8 KB each)
    elif getattr(self, "_valet_head_started", None) is None:
        self._valet_head_started = time.monotonic()
        if getattr(self, "_valet_head_timer", None) is None:
            # on mitmproxy's timer (a wakeup in this layer), so that the GOAWAY goes through the agent's TLS
            self._valet_head_timer = _h2_wakeup(self, HEADER_READ_SECONDS)
            yield self._valet_head_timer
    return result


MAX_CLIENT_HELLO = 64 * 1024  # browsers send 0.5-2 KiB; with post-quantum key shares and tickets, a few KiB

_original_tls_hello = ClientTLSLayer.receive_handshake_data


def _tls_timeout(ref: weakref.ref[ClientTLSLayer]) -> None:
    """A TLS handshake still not complete ``HEADER_READ_SECONDS`` after its first byte: the socket is closed."""
    layer = ref()
    if layer is not None and not layer.conn.tls_established:
        _close_client(layer.context.client.id)


def _tls_hello(self: ClientTLSLayer, data: bytes):  # type: ignore[no-untyped-def]
    if not self.client_hello_parsed:
        if data and not getattr(self, "_valet_tls_timer", False):
            self._valet_tls_timer = True
            asyncio.get_running_loop().call_later(HEADER_READ_SECONDS, _tls_timeout, weakref.ref(self))
        if len(self.recv_buffer) + len(data) > MAX_CLIENT_HELLO:
            self.recv_buffer.clear()  # nothing of it is kept; the handshake fails and the connection closes
            asyncio.get_running_loop().call_soon(_close_client, self.context.client.id)
            return False, "the TLS ClientHello is larger than Valet accepts"
    return (yield from _original_tls_hello(self, data))


def forget(client_id: str) -> None:
    """The agent's connection is gone: nothing to end on it any more."""
    ENDINGS.pop(client_id, None)
    STREAM_ENDINGS.pop(client_id, None)
    _CLOSE_AFTER_ANSWER.discard(client_id)


def install() -> None:
    _http1.Http1Server.read_headers = _read_headers  # type: ignore[method-assign]
    _http1.Http1Server.send = _send  # type: ignore[method-assign]
    HttpStream.state_consume_request_body = _consume  # type: ignore[method-assign]
    HttpStream.state_consume_response_body = _consume_response  # type: ignore[method-assign]
    HttpStream.send_response = _send_response  # type: ignore[method-assign]
    HttpStream.handle_protocol_error = _protocol_error  # type: ignore[method-assign]
    _http2.Http2Server.__init__ = _h2_init  # type: ignore[method-assign]
    _http2.Http2Server.handle_h2_event = _h2_event  # type: ignore[method-assign]
    _http2.Http2Server._handle_event = _h2_handle  # type: ignore[method-assign]
    ClientTLSLayer.receive_handshake_data = _tls_hello  # type: ignore[method-assign]
