"""Scrub a large body as it streams instead of holding all of it: every form of every secret still seen whole.

Why: a buffered 30 MiB answer is copied whole several times on mitmproxy's one
event loop (joined when it ends, handed to the socket in one write), which
stalls every other agent; and each such answer holds its size in memory
(docs/benchmarks.md, "Scrubbing"). Streamed, the body passes in pieces of the
size mitmproxy reads (64 KiB), each scrubbed where it arrives.

The one hard part is a secret split across pieces. The scrubber's forms have no
useful length bound (``&#000…0114;`` takes any number of zeros, nested escapes
multiply), so the stream does not hold back "the longest form". It cuts only
where no occurrence can straddle the cut, and holds back the rest:

1. **After a byte no occurrence contains.** Every occurrence the scrubber finds,
   in any form, is a run of the values' own bytes, letters, digits and
   ``+/=-_%&#;\\`` (:attr:`Scrubber.alphabet`; any other byte: a space, a
   quote, a comma, a newline, a brace). A cut right after such a byte splits
   no occurrence, no escape and no encoded character at any nesting level, so
   the piece before it is scrubbed exactly as the whole body would be there.
   Text and JSON have such bytes every few characters.
2. **Inside a long run of such bytes** (a base64 blob), at a point C whose
   window ``[C - W, C + W)`` holds no ``% & \\ #`` and (when the window does
   not start at the previous cut) not only zeros. No escape, hence no encoded
   character of any level, starts in the window, and one that started before
   it could reach C only through a run of zeros (``&#0000…``). So an occurrence
   that straddles C is plain bytes around C and no longer than the longest
   literal, which W is four times: it lies whole in what was scanned, and the
   cut moves to its end.
3. **Otherwise** everything is held. Past :data:`MAX_PENDING` held bytes, or past
   the cost bound for one piece on the event loop (as for SSE events:
   :class:`~addon.secrets.outbound.TooCostly`), the stream is refused
   (:class:`Unscrubbable`): the relay then closes the agent's connection, so the
   agent sees a cut body, never an unread byte.

What the whole-body scrubber does that needs the whole body is not streamed:
tools/list answers (parsed and rewritten), and scrubbers with a value that can
be a bare JSON number (its marker is quoted unless it stands inside a JSON
string, which only the whole body tells). The relay buffers those
(:func:`streamable`). The stream also refuses, rather than passes, a body that
turns out compressed (by magic bytes) or not UTF-8 although its type said text
(the buffered path would have decoded or guessed it; here the head is gone).
"""

from __future__ import annotations

import codecs
import re
import zlib
from collections.abc import Callable

from addon.secrets import compressed
from addon.secrets.outbound import INLINE_EVENT_BYTES, MAX_INLINE_ESCAPES, escapes_in
from addon.secrets.scrubber import Scrubber

MIN_SEGMENT = 16 * 1024  # scanned at once at least (mitmproxy reads 64 KiB; tiny chunks are gathered)
MAX_PENDING = 4 * 1024 * 1024  # held without a safe cut: past it the stream is refused
MIN_WINDOW = 4096
FALLBACK_TRIES = 16
HEAD_BYTES = 4096  # looked at for magic bytes (and tried as zlib) before the first byte goes out
_NOT_ZERO = re.compile(rb"[^0]")
_ESCAPE_STARTS = (b"%", b"&", b"\\", b"#")


class Unscrubbable(ValueError):
    """The stream cannot go on without passing bytes Valet has not read as it must: refuse it."""


def streamable(scrubber: Scrubber) -> bool:
    """Whether bodies scrubbed with ``scrubber`` can be streamed (see the module docstring)."""
    return not scrubber.numeric


class BodyStream:
    """One streamed body: ``feed`` each piece as it arrives, ``end`` once; each returns the bytes to send.

    The scrubber is looked up at every piece (``scrubber()``), as :class:`~addon.secrets.outbound.Outbound`
    does, so a piece that arrives after an OAuth refresh is scrubbed with the values of that moment.
    """

    def __init__(self, scrubber: Callable[[], Scrubber], max_pending: int = MAX_PENDING,
                 min_segment: int = MIN_SEGMENT) -> None:
        self._scrubber = scrubber
        self._pending = b""
        self._max_pending = max_pending
        self._min_segment = min_segment
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._head = True

    def feed(self, chunk: bytes) -> bytes:
        """The scrubbed bytes that may go out now (often all but a short tail; ``b""`` when all is held)."""
        if not chunk:
            return b""
        self._check_text(chunk, final=False)
        buf = self._pending + chunk if self._pending else chunk
        if self._head:
            if len(buf) < HEAD_BYTES:
                self._pending = buf
                return b""
            self._check_head(buf)
            self._head = False
        if len(buf) < self._min_segment:
            self._pending = buf
            return b""
        return self._emit(buf, final=False)

    def end(self) -> bytes:
        """Everything still held, scrubbed (the body is complete: nothing can straddle anything any more)."""
        self._check_text(b"", final=True)
        buf, self._pending = self._pending, b""
        if not buf:
            return b""
        if self._head:
            self._check_head(buf)
            self._head = False
        return self._emit(buf, final=True)

    def _check_text(self, chunk: bytes, final: bool) -> None:
        """UTF-8 throughout (C speed; ASCII pieces are not decoded at all): text, not a compressed body."""
        try:
            if final or not chunk.isascii() or self._utf8.getstate()[0]:
                self._utf8.decode(chunk, final)
        except UnicodeDecodeError:
            raise Unscrubbable("a body announced as text that is not UTF-8") from None

    @staticmethod
    def _check_head(buf: bytes) -> None:
        """A compressed body is not streamed unread (nor decoded here: it is refused)."""
        refused = compressed.refused_format(buf)
        codec = compressed.sniff(buf[:64])
        if refused is not None or codec in ("gzip", "zstd"):
            raise Unscrubbable(f"a {refused or codec} body announced as text")
        if codec == "deflate":  # a two-byte header that text can start with ("80", "H,"): only zlib data that
            decoder = zlib.decompressobj()  # decodes to something counts (text fails, or gives nothing)
            try:
                out = decoder.decompress(buf[:HEAD_BYTES])
            except zlib.error:
                return
            if out or decoder.eof:
                raise Unscrubbable("a zlib body announced as text")

    def _emit(self, buf: bytes, final: bool) -> bytes:
        if len(buf) > INLINE_EVENT_BYTES and escapes_in(buf) > MAX_INLINE_ESCAPES:
            raise Unscrubbable("a piece too dense in escapes to scrub without stalling every other agent")
        scrubber = self._scrubber()
        spans = scrubber.spans(buf)
        cut = len(buf) if final else _cut(buf, scrubber, spans)
        if len(buf) - cut > self._max_pending:
            raise Unscrubbable("no place to cut a long run of encoded text")
        if cut == 0:
            self._pending = buf
            return b""
        self._pending = buf[cut:]
        out = buf[:cut] if cut < len(buf) else buf
        kept = [s for s in spans if s[0] < cut]
        if not kept:
            return out
        return scrubber.bytes(out, spans=kept)


def _cut(buf: bytes, scrubber: Scrubber, spans: list[tuple[int, int, str]]) -> int:
    """Where ``buf`` may be cut (0: nowhere yet); every span that starts before the cut ends before it."""
    size = len(buf)
    best = 0
    last = last_outside(buf, scrubber.alphabet, max(0, size - MIN_WINDOW))
    if last < 0:
        last = last_outside(buf, scrubber.alphabet, 0)
    best = last + 1
    window = max(MIN_WINDOW, 4 * scrubber.overlap)
    if size - best > 2 * window:  # a long run without such a byte: look for a quiet point inside it
        point = size - window
        for _ in range(FALLBACK_TRIES):
            if point <= best:
                break
            if _quiet(buf, point, window):
                best = point
                break
            point -= window
    # a span straddling a quiet point is plain bytes no longer than the longest literal: cut after it
    # (one that reaches the end of what arrived, a valet key's open-ended shape, is held from its start)
    for start, end, _ in spans:
        if start < best < end:
            best = end if end < size else start
    return best


def last_outside(buf: bytes, alphabet: bytes, low: int) -> int:
    """The position of the last byte at or after ``low`` that is not in ``alphabet`` (-1: none), at C speed:
    the bytes left once the alphabet is deleted are the others in order, so the last of them, found again
    from the right, is the last such byte."""
    rest = buf[low:].translate(None, alphabet)
    return buf.rfind(rest[-1:], low) if rest else -1


def _quiet(buf: bytes, point: int, window: int) -> bool:
    low = max(0, point - window)
    high = point + window
    if any(buf.find(b, low, high) != -1 for b in _ESCAPE_STARTS):
        return False
    return low == 0 or _NOT_ZERO.search(buf, low, point - 8) is not None
