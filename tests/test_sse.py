from __future__ import annotations

import pytest

from addon.protocol.sse import EventTooLarge, SSEFramer

STREAM = (
    b"event: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\n"
    b"data: two\n\n"
    b": comment\rdata: three\r\r"
    b"data: four\r\ndata: more\r\n\r\n"
)
EVENTS = [
    b"event: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\n",
    b"data: two\n\n",
    b": comment\rdata: three\r\r",
    b"data: four\r\ndata: more\r\n\r\n",
]


def test_whole_stream_at_once() -> None:
    framer = SSEFramer()
    assert framer.feed(STREAM) == EVENTS
    assert framer.flush() == b""


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    framer = SSEFramer()
    out: list[bytes] = []
    for i in range(0, len(STREAM), size):
        out += framer.feed(STREAM[i : i + size])
    out += [rest] if (rest := framer.flush()) else []
    # an event ended by a CR that closed a chunk goes out at once, without the LF that followed
    assert [e.removesuffix(b"\n") for e in out] == [e.removesuffix(b"\n") for e in EVENTS]
    assert all(e.endswith((b"\n\n", b"\r\r", b"\r\n\r\n", b"\r\n\r")) for e in out)


def test_crlf_split_across_chunks_is_not_an_early_end() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: x\r") == []
    assert framer.feed(b"\ndata: y\r\n\r\n") == [b"data: x\r\ndata: y\r\n\r\n"]  # one event, two lines
    assert framer.flush() == b""


def test_an_event_ended_by_a_lone_cr_goes_out_before_the_next_byte() -> None:
    """A live stream may pause for minutes after a CR: the event it ends is not held until then."""
    framer = SSEFramer()
    assert framer.feed(b"data: x\r\n\r") == [b"data: x\r\n\r"]
    assert framer.feed(b"\n") == []  # the second half of that CRLF: no extra empty line
    assert framer.feed(b"data: y\r\r") == [b"data: y\r\r"]
    assert framer.feed(b"data: z\n\n") == [b"data: z\n\n"]  # an LF not after a CR is a line end again
    assert framer.flush() == b""


def test_a_stream_ending_in_a_lone_cr_delivers_its_last_event() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: x\r") == []
    assert framer.flush() == b"data: x\r"  # the relay sends the unterminated rest through the filter
    framer = SSEFramer()
    assert framer.feed(b"data: x\n\r") == [b"data: x\n\r"]
    assert framer.flush() == b""


def test_event_is_released_as_soon_as_it_ends() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: partial") == []
    assert framer.feed(b"\n\n") == [b"data: partial\n\n"]


def test_unbounded_event_is_refused() -> None:
    framer = SSEFramer(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            framer.feed(b"data: xxxxxxxxxx")
