"""Incremental framing of text/event-stream bodies.

mitmproxy hands a streaming response to us in whatever network chunks arrived.
To inspect or rewrite events (redaction, tools/list filtering) we need whole
events, so the framer holds back a partial event and releases each complete one
as soon as its terminating blank line arrives: nothing is delayed longer than
the event itself takes to arrive. Line ends may be CRLF, LF or CR (the SDK
uses CRLF) and may be split across chunks. A lone CR at the end of a chunk is
taken as a line end at once (an event it ends goes out now, not when the next
byte arrives, which on a live stream may be minutes later); an LF that then
starts the next chunk is the second half of that CRLF: it extends the line end
of an event still pending, or, when the CR ended an event already released, is
dropped (the event already ended; a stray LF would be an extra empty line).
"""

from __future__ import annotations

import re
from collections.abc import Mapping


def media_type(headers: Mapping[str, str]) -> str:
    """The Content-Type's media type, lower-cased, without parameters ("" when there is none)."""
    return headers.get("content-type", "").partition(";")[0].strip().lower()


def is_event_stream(headers: Mapping[str, str]) -> bool:
    return media_type(headers) == "text/event-stream"

_EOL = re.compile(rb"\r\n|\r|\n")
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024


class EventTooLarge(Exception):
    """An event grew past the limit without ending: the stream is refused, not buffered forever."""


class SSEFramer:
    """Scans each byte once: the position and the previous line end are kept between chunks."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._pending = bytearray()
        self._max = max_event_bytes
        self._scan = 0  # where the next search for a line end starts
        self._prev_end = -1  # end of the last line end seen in the current event, -1 if none
        self._after_cr = False  # the last chunk ended in a CR: an LF starting the next one completes it

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return the complete events (each with its blank-line terminator)."""
        if not chunk:
            return []
        pending = self._pending
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                if pending:  # the CR ended a line of the pending event: the LF belongs to that line end
                    pending += b"\n"
                    self._scan = self._prev_end = len(pending)
                chunk = chunk[1:]  # else the CR ended an event already released: its LF is dropped
                if not chunk:
                    return []
        pending += chunk
        events: list[bytes] = []
        start = 0
        prev_end = self._prev_end
        scan = len(pending)
        for match in _EOL.finditer(pending, self._scan):
            if match.end() == len(pending) and match.group() == b"\r":
                self._after_cr = True  # a line end now; an LF first in the next chunk completes it
            if match.start() == prev_end:  # an empty line: the event ends here
                events.append(bytes(pending[start : match.end()]))
                start = match.end()
                prev_end = -1
            else:
                prev_end = match.end()
        if start:
            del pending[:start]
            scan -= start
            prev_end = prev_end - start if prev_end >= 0 else -1
        self._scan, self._prev_end = scan, prev_end
        if len(pending) > self._max:
            raise EventTooLarge(f"an SSE event exceeded {self._max} bytes")
        return events

    def flush(self) -> bytes:
        """At the end of the stream: whatever was left (an unterminated event), as is."""
        rest = bytes(self._pending)
        self._pending.clear()
        self._scan, self._prev_end, self._after_cr = 0, -1, False
        return rest


def split_event(event: bytes) -> tuple[list[bytes], bytes | None, bytes]:
    """(non-data lines, the data payload or None, the line terminator) of one complete event."""
    match = _EOL.search(event)
    eol = match.group() if match else b"\n"
    others: list[bytes] = []
    data: list[bytes] = []
    for line in _EOL.split(event):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line:
            others.append(line)
    return others, (b"\n".join(data) if data else None), eol


def join_event(others: list[bytes], data: bytes | None, eol: bytes) -> bytes:
    """An event from its parts; the data goes out as one line per line of payload."""
    lines = list(others)
    if data is not None:
        lines += [b"data: " + part for part in data.split(b"\n")]
    return eol.join(lines) + eol + eol
