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
    assert out == EVENTS


def test_crlf_split_across_chunks_is_not_an_early_end() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: x\r\n\r") == []  # the last CR may be half of a CRLF
    assert framer.feed(b"\ndata: y") == [b"data: x\r\n\r\n"]
    assert framer.flush() == b"data: y"


def test_event_is_released_as_soon_as_it_ends() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: partial") == []
    assert framer.feed(b"\n\n") == [b"data: partial\n\n"]


def test_unbounded_event_is_refused() -> None:
    framer = SSEFramer(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            framer.feed(b"data: xxxxxxxxxx")
