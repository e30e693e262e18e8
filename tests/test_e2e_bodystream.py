"""End to end: large text answers stream through Valet scrubbed piece by piece, exactly as if scrubbed whole.

The upstream (tests/upstream/bodies.py) quotes the injected token in every form, thousands of times, and
writes in pieces of odd sizes, so forms are split across network reads at ever different offsets. The
agent must receive byte for byte what the whole-body scrub of the same body gives (so nothing in two
halves escaped), without a Content-Length (redaction changes the length), and the audit row must count
the bytes the agent got. A body the stream cannot read as it must (compressed, or not UTF-8 although
announced as text) ends with the agent's connection closed: a cut body, no unread byte.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from addon.secrets.scrubber import Scrubber

from .support import PYTHON, ROOT, Upstream, Valet, assert_clean_log, free_port, start_valet, wait_for_port
from .upstream.bodies import body
from .upstream.hostile import forms

pytestmark = pytest.mark.e2e

TOKEN = "fake/stream-token+0123_abc"


@pytest.fixture(scope="module")
def bodies() -> Iterator[Upstream]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/bodies.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    yield Upstream(port, process)
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def valet(bodies: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    tmp = tmp_path_factory.mktemp("bodystream")
    config = (f"servers:\n  big:\n    url: http://127.0.0.1:{bodies.port}/api\n    kind: http\n"
              '    headers:\n      Authorization: "Bearer ${secret:TOKEN}"\n')
    valet = start_valet(tmp, None, config_text=config)
    valet.cli("secret", "set", "TOKEN", "--server", "big", stdin=TOKEN)
    yield valet
    assert valet.stop() == 0
    assert_clean_log(valet)


@pytest.fixture(scope="module")
def key(valet: Valet) -> str:
    return valet.new_key("alice", "bodystream")[0]


def fetch(valet: Valet, key: str, path: str) -> tuple[httpx.Headers, bytes, Exception | None]:
    received = bytearray()
    with httpx.Client(timeout=60) as client, client.stream(
            "GET", f"{valet.base}/big/{path}", headers={"authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        try:
            for piece in r.iter_raw():
                received += piece
        except httpx.HTTPError as exc:
            return r.headers, bytes(received), exc
        return r.headers, bytes(received), None


def row_of(valet: Valet, shape: str) -> dict[str, object]:
    return valet.rows("http_path LIKE ? OR http_path LIKE ?", (f"%/{shape}", f"%/{shape}?%"))[0]


def assert_no_form(data: bytes) -> None:
    for form in forms(TOKEN):
        assert form.encode() not in data, form
    assert TOKEN.encode() not in data


@pytest.mark.parametrize("shape", ["chunked", "sized", "b64"])
def test_a_large_answer_streams_scrubbed_exactly_as_the_whole_body(valet: Valet, key: str, shape: str) -> None:
    headers, received, error = fetch(valet, key, f"{shape}?kib=3072")
    assert error is None
    assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
    expected = Scrubber([("TOKEN", TOKEN)]).bytes(body(shape, TOKEN, 3072))
    assert received == expected  # byte for byte: every form caught wherever the reads split it
    assert_no_form(received)
    assert received.count(b"[REDACTED:TOKEN]") > 300
    json.loads(received)
    row = row_of(valet, shape)
    assert row["decision"] == "allow" and row["http_status"] == 200
    assert row["bytes_out"] == len(received)


def test_a_small_answer_is_still_buffered_with_its_length(valet: Valet, key: str) -> None:
    headers, received, error = fetch(valet, key, "small")
    assert error is None and headers["content-length"] == str(len(received))
    assert json.loads(received) == {"token": "[REDACTED:TOKEN]"}


def test_a_large_latin1_page_is_scrubbed_whole_not_cut(valet: Valet, key: str) -> None:
    """Only UTF-8 text streams: a page in another charset is buffered and scrubbed whole, as before."""
    headers, received, error = fetch(valet, key, "latin1page?kib=2048")
    assert error is None and headers["content-length"] == str(len(received))
    assert received == Scrubber([("TOKEN", TOKEN)]).bytes(body("latin1page", TOKEN, 2048))
    assert_no_form(received)


@pytest.mark.parametrize("shape", ["gzip", "latin1"])
def test_an_answer_the_stream_cannot_read_is_cut_not_passed(valet: Valet, key: str, shape: str) -> None:
    """Compressed without a label, or not UTF-8 though announced as text: the agent's connection is closed
    before the body ends (no final chunk), and nothing it got holds the token in any form."""
    _, received, error = fetch(valet, key, f"{shape}?kib=3072")
    assert error is not None  # an incomplete chunked body: the agent's client sees a cut, not an answer
    assert_no_form(received)
    assert b"\x1f\x8b" not in received[:2]
    row = row_of(valet, shape)
    assert row["decision"] == "error" and row["reason"] == "upstream_error"
    assert row["bytes_out"] == len(received)


def test_an_sse_event_ended_by_a_lone_cr_arrives_before_the_next_byte(valet: Valet, key: str) -> None:
    """The CR may be the first half of a CRLF; the upstream then stays silent for a minute. The event it
    ended reaches the agent now (scrubbed), not when the next byte or the end of the stream arrives."""
    with httpx.Client(timeout=20) as client, client.stream(
            "GET", f"{valet.base}/big/sse-cr-pause", headers={"authorization": f"Bearer {key}"}) as r:
        first = next(r.iter_raw())
    assert first.startswith(b"event: message\r\ndata: ") and b"[REDACTED:TOKEN]" in first
    assert first.endswith((b"\r\n\r", b"\r\n\r\n"))  # as sent, or re-joined around the marker
    assert_no_form(first)


def test_a_stream_ending_in_a_lone_cr_delivers_its_last_event(valet: Valet, key: str) -> None:
    headers, received, error = fetch(valet, key, "sse-cr-end")
    assert error is None
    assert received.startswith(b"event: message\r\ndata: ") and b"[REDACTED:TOKEN]" in received
    assert_no_form(received)


def test_a_streamed_answer_cut_by_a_timeout_never_looks_complete(bodies: Upstream,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """The watchdog ends an exchange whose upstream went silent: an event stream gets Valet's error event and its
    end, but a streamed JSON answer must stay cut (no SSE text appended, no final chunk), or the agent would take
    half an answer for a whole one."""
    tmp = tmp_path_factory.mktemp("bodystream-stall")
    config = (f"servers:\n  big:\n    url: http://127.0.0.1:{bodies.port}/api\n    kind: http\n"
              '    headers:\n      Authorization: "Bearer ${secret:TOKEN}"\n'
              "timeouts:\n  idle_seconds: 1\n")
    valet = start_valet(tmp, None, config_text=config)
    try:
        valet.cli("secret", "set", "TOKEN", "--server", "big", stdin=TOKEN)
        key = valet.new_key("alice", "stall")[0]
        headers, received, error = fetch(valet, key, "stall?kib=1100")
        assert error is not None, "the cut answer was taken for a complete one"
        assert "content-length" not in headers and len(received) > 0
        assert b"event: error" not in received and b"upstream_timeout" not in received
        with pytest.raises(json.JSONDecodeError):
            json.loads(received)
        assert_no_form(received)
        row = row_of(valet, "stall")
        assert row["reason"] == "upstream_timeout", row
    finally:
        valet.stop()
