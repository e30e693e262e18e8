"""The Content-Type helpers of addon/protocol/sse.py (mutation survivors: no unit test called them).

Every response path decides by them whether an answer is an event stream (framed and scrubbed event by
event) or a body; a wrong answer sends an SSE stream down the body path or the reverse. Pure functions over
any mapping of header names: a plain dict here, and mitmproxy's Headers as the hooks pass them.
"""

from __future__ import annotations

import pytest
from mitmproxy.http import Headers

from addon.protocol.sse import is_event_stream, media_type


@pytest.mark.parametrize(("value", "media"), [
    ("text/event-stream", "text/event-stream"),
    ("Text/Event-Stream; charset=utf-8", "text/event-stream"),
    (" application/json ;charset=UTF-8", "application/json"),
    ("text/plain; a=b; c=d", "text/plain"),  # the first parameter ends the media type, not the last
    ("TEXT/HTML", "text/html"),
    ("", ""),
])
def test_media_type_is_the_lower_cased_type_without_parameters(value: str, media: str) -> None:
    assert media_type({"content-type": value}) == media
    assert media_type(Headers(content_type=value)) == media


def test_no_content_type_is_no_media_type() -> None:
    assert media_type({}) == ""
    assert media_type({"content-length": "3"}) == ""
    assert media_type(Headers()) == ""


@pytest.mark.parametrize(("value", "stream"), [
    ("text/event-stream", True), ("TEXT/Event-Stream; charset=utf-8", True), (" text/event-stream ", True),
    ("application/json", False), ("text/event-streams", False), ("text/plain; x=text/event-stream", False),
])
def test_is_event_stream(value: str, stream: bool) -> None:
    assert is_event_stream({"content-type": value}) is stream
    assert is_event_stream(Headers(content_type=value)) is stream
    assert is_event_stream({}) is False
