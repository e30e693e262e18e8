"""Send responses back scrubbed: headers, bodies and SSE streams, event by event.

Without ``flow.response.stream`` mitmproxy buffers the whole body, so progress
notifications would arrive all at once at the end and GET streams would hang.
The stream callable returns a list of complete, transformed events per chunk;
a partial event is held back with ``[]`` (never ``b""``, which on HTTP/1.1
chunked encoding would be the terminating chunk and silently end the agent's
stream). A secret split across network chunks is therefore always seen whole.
Large text and JSON answers are streamed too, scrubbed piece by piece (:func:`_body_relay`,
addon/secrets/bodystream.py); other bodies are buffered (bounded by mitmproxy) and transformed at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mitmproxy import ctx, http

from addon.protocol import mitm_limits
from addon.protocol.errors import Cause, Refusal
from addon.audit.exchange import Exchange
from addon.secrets import bodystream, compressed
from addon.secrets.outbound import Outbound
from addon.protocol.sse import EventTooLarge, SSEFramer, is_event_stream, media_type
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, exchange_of, refuse

OFFLOAD_BYTES = 256 * 1024
REFUSED_STREAM = b'event: error\ndata: {"valet":"stream refused: an event exceeded the size limit"}\n\n'
REFUSED_UNREADABLE = b'event: error\ndata: {"valet":"stream refused: the upstream sent bytes Valet cannot read"}\n\n'


class ResponseFilter:
    """The one way out: every allowed exchange with a server has an Outbound, and every part of its
    response (reason, header names and values, trailers, body, each SSE event, a replay) goes through
    it here. The Outbound looks the server's scrubber up each time, so nothing is scrubbed with stale
    values."""

    def __init__(self, state: ValetState) -> None:
        self.state = state

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        response = flow.response
        # every response of a flow, whatever was decided and passthrough too (with the scrubber of its
        # origin): Valet's own refusals carry no secret, and a decision changed on the way (a stream
        # refused) must not open a way around
        if exchange is None or response is None:
            return
        outbound = _outbound_of(self.state, exchange, flow)
        exchange.outbound = outbound
        _scrub_headers(response, outbound)
        media = media_type(response.headers)
        if _partial(response, media) or not _final_status(response):
            return  # buffered (within the cap), then refused in `response`
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        codec = None if encoding in ("identity", "") else compressed.CONTENT_CODINGS.get(encoding, "unknown")
        if media == "text/event-stream" and codec != "unknown":
            # a compressed stream is decoded as it arrives (in bounded pieces) and sent decoded;
            # (one in an encoding Valet cannot decode is buffered, and refused in `response`)
            decoder = None
            if codec is not None:
                decoder = compressed.StreamDecoder(codec, outbound.cap)
                del response.headers["content-encoding"]
            _frame_as_transformed(flow)
            keyring = self.state.keyring
            key_id = exchange.key_id

            def key_valid() -> bool:
                return keyring is None or key_id is None or not keyring.revoked(key_id)

            response.stream = _event_relay(exchange, outbound, key_valid, decoder)
        elif codec is None and _streams_body(flow, exchange, outbound):
            response.stream = _body_relay(flow, exchange, outbound)

    @fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        response = flow.response
        if exchange is None or response is None:
            return
        outbound = _outbound_of(self.state, exchange, flow)
        if response.trailers:  # sent after this hook, streamed body or not
            _scrub_fields(response.trailers, outbound)
        if _partial(response, media_type(response.headers)):
            refuse(flow, Refusal(Cause.UPSTREAM_ERROR, "the upstream answered with a part of a resource "
                                 "(206 or multipart/byteranges): Valet passes whole answers only"), "error")
            return
        if not _final_status(response):
            refuse(flow, Refusal(Cause.UPSTREAM_ERROR, "the upstream answered with a status outside 100-599"),
                   "error")
            return
        if response.stream:
            return
        if exchange.replayed:  # a new response: its headers were not seen yet
            _scrub_headers(response, outbound)
        if not response.raw_content:
            return
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", ""):
            # We asked for identity; a body we cannot decode is not passed through unread. Decoded in
            # bounded steps up to max_buffered_bytes (mitmproxy's own decode has no cap: a 510 KB gzip
            # answer inflated to 512 MiB), off the event loop.
            codec, raw = compressed.CONTENT_CODINGS.get(encoding), response.raw_content
            try:
                if codec is None:
                    raise ValueError(encoding)
                decoded = await mitm_limits.decode_within(  # the decoded bytes count in the global budget
                    flow, lambda limit: compressed.decode(codec, raw, limit), outbound.cap)
            except mitm_limits.Busy as busy:
                refuse(flow, busy.refusal, "error")
                return
            except Exception as exc:  # noqa: BLE001 - any decoding failure: not passed through unread
                _refuse_unread(flow, exc)
                return
            del response.headers["content-encoding"]
            response.content = decoded
        content = response.content or b""
        try:
            if len(content) > OFFLOAD_BYTES:  # scrubbing a large body must not stall every other agent
                scrubbed = await asyncio.to_thread(_transform, response, outbound, content)
            else:
                scrubbed = _transform(response, outbound, content)
        except compressed.TooLarge as exc:  # unlabelled compression Valet cannot (fully) decode, or too large
            _refuse_unread(flow, exc)
            return
        if scrubbed is not content:
            response.content = scrubbed


def _final_status(response: http.Response) -> bool:
    """A status HTTP defines (RFC 9110 §15: three digits, 1xx-5xx). mitmproxy reads the status line with a
    bare ``int()``: ``-200``, ``0`` or ``99999999999999999999`` would be relayed to the agent and recorded
    (the last one made the audit writer drop a whole batch: review 4, H12)."""
    return 100 <= response.status_code <= 599


def _partial(response: http.Response, media: str | None) -> bool:
    """A part of a resource (a byte range): the scrubber matches whole values within one answer, and an
    agent asking for overlapping ranges would rebuild a secret from slices too short to match (review 4, H6).
    Valet strips ``Range`` from what it forwards (:mod:`addon.hooks.router`), so only an upstream that
    ranges on its own sends one."""
    return response.status_code == 206 or media == "multipart/byteranges"


def _frame_as_transformed(flow: http.HTTPFlow) -> None:
    """A stream Valet transforms (scrubbed, decoded, endpoints rewritten) has a length nobody knows in advance,
    so the upstream's ``Content-Length`` must not reach the agent: with a marker longer than the secret, the
    bytes past the declared end would be read as the answer to the agent's NEXT request on the connection (an
    upstream forging another server's answer); with a shorter one the agent would wait for bytes that never
    come. HTTP/1.1 agents get chunked framing (the connection stays usable); HTTP/1.0 ones a body that ends
    with the connection; over HTTP/2 the frames carry the length."""
    headers = flow.response.headers
    if "content-length" in headers:
        del headers["content-length"]
    if flow.request.http_version == "HTTP/1.1" and "chunked" not in headers.get("transfer-encoding", "").lower():
        headers["transfer-encoding"] = "chunked"


def _refuse_unread(flow: http.HTTPFlow, exc: Exception) -> None:
    """A body Valet could not read whole is never passed on: too large once decoded, or undecodable."""
    too_large = isinstance(exc, compressed.TooLarge) and not isinstance(exc, compressed.Unreadable)
    what = "a compressed body larger than Valet may decode" if too_large else "a body Valet cannot read"
    refuse(flow, Refusal(Cause.UPSTREAM_ERROR, f"the upstream answered with {what}"), "error")


def _outbound_of(state: ValetState, exchange: Exchange, flow: http.HTTPFlow) -> Outbound:
    """The exchange's Outbound; one that only scrubs when no stage made one (so none can be forgotten): with
    the egress scrubber (the same for a server's answer and for passthrough: every value of the vault)."""
    outbound: Outbound | None = exchange.outbound
    if outbound is None:
        server_name = exchange.server
        outbound = Outbound(lambda: state.scrubber(server_name), cap=exchange.snapshot.config.limits.max_buffered_bytes)
    return outbound


def _transform(response: http.Response, outbound: Outbound, content: bytes) -> bytes:
    if is_event_stream(response.headers):
        framer = SSEFramer()  # a stream read whole (a replay, or compressed): scrub it event by event
        events = framer.feed(content)
        rest = framer.flush()
        out = [outbound.event(e) for e in events + ([rest] if rest else [])]
        return b"".join(out)
    return outbound.body(content)


def _scrub_fields(fields: http.Headers, outbound: Outbound, checked: bool = False) -> None:
    """Header names too: an upstream can echo a secret as a name.

    One scan of all names and values joined first (``checked``: the caller did it): each field is a
    contiguous part of the joined bytes, so nothing found there means nothing to find in any field, and
    a typical response's dozen fields cost one scan instead of two dozen (perf, docs/benchmarks.md).
    """
    if not checked and not outbound.scrubber.spans(b"\n".join(_field_parts(fields))):
        return
    before = list(fields.items(multi=True))
    items = [(outbound.header_name(k), outbound.header(v)) for k, v in before]
    if items != before:
        fields.clear()
        for k, v in items:
            fields.add(k, v)


def _field_parts(fields: http.Headers) -> list[bytes]:
    """The raw names and values: the bytes ``Scrubber.text`` would scan (mitmproxy decodes them with
    surrogateescape, which round-trips exactly)."""
    parts: list[bytes] = []
    for name, value in fields.fields:
        parts.append(name)
        parts.append(value)
    return parts


def _scrub_headers(response: http.Response, outbound: Outbound) -> None:
    reason = response.reason
    parts = _field_parts(response.headers)
    parts.append(reason.encode("utf-8", "surrogateescape"))
    if not outbound.scrubber.spans(b"\n".join(parts)):
        return  # nothing in any name, value or the reason (see _scrub_fields)
    _scrub_fields(response.headers, outbound, checked=True)
    response.reason = outbound.header(reason)


def _event_relay(
    exchange: Exchange, outbound: Outbound, key_valid: Callable[[], bool],
    decoder: compressed.StreamDecoder | None = None,
) -> Callable[[bytes], list[bytes]]:
    """Frame, decode and scrub a stream event by event. An unlabelled compressed stream is recognized by
    the magic bytes of its first chunk; an event that is not UTF-8 text (what SSE is) ends the stream, so
    bytes Valet could not read (an unlabelled brotli stream, say) never pass."""
    framer: SSEFramer | None = SSEFramer()
    first = True

    def refused(reason: str, notice: bytes = REFUSED_STREAM) -> list[bytes]:
        nonlocal framer
        framer = None  # never pass an event we could not inspect
        exchange.decision, exchange.reason = "error", reason
        exchange.bytes_out += len(notice)
        return [notice]

    def relay(chunk: bytes) -> list[bytes]:
        nonlocal framer, first, decoder
        if framer is not None and not key_valid():  # revoked while the stream was open
            framer = None
            exchange.reason = "revoked_key"
        if framer is None:
            return []  # the stream was refused: swallow the rest
        if first and chunk:
            first = False
            sniffed = compressed.sniff(chunk)
            if decoder is None and sniffed in ("gzip", "zstd", "deflate"):
                decoder = compressed.StreamDecoder(sniffed, outbound.cap)
        try:
            if decoder is not None:
                if chunk:
                    chunk = decoder.feed(chunk)
                    if not chunk:
                        return []
                else:
                    decoder.end()
            if not chunk:  # end of stream: an unterminated last event still goes through the filter
                rest = framer.flush()
                events = [rest] if rest else []
            else:
                events = framer.feed(chunk)
            for event in events:
                event.decode("utf-8")
            events = [outbound.event(e) for e in events]
        except (EventTooLarge, compressed.TooLarge):
            return refused("sse_event_too_large")
        except ValueError:  # not UTF-8, or a compressed stream that does not decode
            return refused("upstream_error", REFUSED_UNREADABLE)
        exchange.bytes_out += sum(map(len, events))
        return events

    return relay


STREAM_MIN_BYTES = 1024 * 1024
"""A text or JSON answer at least this large (or of unknown length) is streamed, scrubbed piece by piece
(addon/secrets/bodystream.py); smaller ones are buffered and scrubbed whole. Streaming spares the event loop
the whole-body copies of a buffered answer and Valet the memory (docs/benchmarks.md, "Scrubbing")."""


def _utf8_text(content_type: str) -> bool:
    """JSON (UTF-8 by RFC 8259) unless its charset says otherwise, or text/* that says it is UTF-8: a body
    the stream can hold to UTF-8 (a Latin-1 page without a charset would be cut half-way, so it is not
    streamed: it is scrubbed whole, as before)."""
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    charset = ""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    utf8 = charset in ("utf-8", "utf8", "us-ascii", "ascii")
    if _json(media):
        return utf8 or not charset
    return media.startswith("text/") and media != "text/event-stream" and utf8


def _json(media: str) -> bool:
    """Whether a media type (lower-cased, without parameters: ``sse.media_type``) is JSON or a JSON sequence."""
    return media == "application/json" or media.endswith("+json") or media in (
        "application/x-ndjson", "application/jsonl", "application/json-seq")


def _streams_body(flow: http.HTTPFlow, exchange: Exchange, outbound: Outbound) -> bool:
    """Whether this (identity-encoded, non-SSE) answer is streamed rather than buffered.

    Only what the streamed scrub handles exactly as the whole-body one: a successful answer whose type says
    UTF-8 text (a binary body is scrubbed whole, with the brotli guess that needs all of it), not a tools/list
    answer (rewritten whole), not a replay or a 401 (OAuthReplay answers those anew in ``response``), not a
    HEAD, and a scrubber without values that can be bare JSON numbers (bodystream.streamable). The agent's
    side must be able to receive a body of unannounced length: HTTP/1.1 (chunked) or HTTP/2.

    Not a JSON answer of an MCP server either: any of its answers may carry a tools list (a stray answer to
    a pending tools/list, whatever its id), which is filtered on the whole parsed body (Outbound.body); a
    streamed body is scrubbed but never parsed. Those are buffered, within the response budget, and
    scrubbed whole in a worker thread as every smaller answer is.
    """
    response = flow.response
    assert response is not None
    content_type = response.headers.get("content-type", "")
    if (not 200 <= response.status_code < 300 or response.status_code in (204, 205)
            or flow.request.method.upper() == "HEAD" or flow.request.http_version == "HTTP/1.0"
            or exchange.replayed or outbound.tools_list_ids or not _utf8_text(content_type)
            or (outbound.mcp and _json(media_type(response.headers)))):
        return False
    length = response.headers.get("content-length")
    if length is not None and (not length.strip().isdigit() or int(length) < STREAM_MIN_BYTES):
        return False
    return bodystream.streamable(outbound.scrubber)


def _body_relay(flow: http.HTTPFlow, exchange: Exchange, outbound: Outbound) -> Callable[[bytes], list[bytes]]:
    """Stream a body scrubbed piece by piece. Redaction changes its length, so it goes out chunked (HTTP/1.1;
    HTTP/2 frames it anyway) without Content-Length; ``bytes_out`` counts what is sent. A body the stream
    cannot read as it must (compressed, not UTF-8, no place to cut) ends with the agent's connection closed
    (HTTP/2: the stream reset): a cut body (no final chunk), never an unread byte and never a truncated body
    that looks complete."""
    assert flow.response is not None
    _frame_as_transformed(flow)
    body = bodystream.BodyStream(lambda: outbound.scrubber)
    refused = False

    def relay(chunk: bytes) -> list[bytes]:
        nonlocal refused
        if refused:
            return []
        try:
            out = body.feed(chunk) if chunk else body.end()
        except bodystream.Unscrubbable:
            refused = True
            exchange.decision, exchange.reason = "error", Cause.UPSTREAM_ERROR.reason
            if flow.killable:  # at the end of the upstream's body: a reset instead of the final chunk (HTTP/2:
                flow.kill()  # this stream only)
            if flow.request.http_version.startswith("HTTP/1"):
                _close_agent(flow)  # and at once on HTTP/1 (the connection carries only this answer)
            return []
        exchange.bytes_out += len(out)
        return [out] if out else []  # never b"": on a chunked answer that is the final chunk

    return relay


def _close_agent(flow: http.HTTPFlow) -> None:
    """Close the agent's connection now: what was sent stays cut (the writer closes before mitmproxy could
    write the final chunk of this answer), and the exchange ends as an error."""
    server = ctx.master.addons.get("proxyserver")
    handler = server.connections.get(flow.client_conn.id) if server is not None else None
    if handler is None or flow.client_conn not in handler.transports:
        return
    writer = handler.transports[flow.client_conn].writer
    if writer is not None and not writer.is_closing():
        writer.close()
    handler.close_connection(flow.client_conn)


