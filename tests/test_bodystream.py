"""Streamed scrubbing (addon/secrets/bodystream.py): cut anywhere, the agent gets what the whole-body scrub gives.

Every form the whole-body scrubber catches, placed in text and inside a long run of base64 (where the stream
must find a quiet point instead of a plain separator), split at every offset around where the stream could
cut, and in random chunkings: the streamed output equals the whole body scrubbed at once, so no secret in
any form passes in two halves. No processes; all values are obviously fake.
"""

from __future__ import annotations

import base64
import gzip
import random

import pytest

from addon.secrets import bodystream
from addon.secrets.bodystream import BodyStream, Unscrubbable, streamable
from addon.secrets.scrubber import Scrubber

from .forms import forms_of

VALUES = {
    "PLAIN": "fake-stream-secret-0123456789",
    "ODD": 'fake"quoted secret/ü+1',  # a quote, a space, a slash, non-ASCII: bytes that separate other text
}
KEY = "vk_abcdefghijkl_" + "Q" * 20 + "-_" + "z" * 21
RNG_BLOB = random.Random(7).randbytes(9000)


def extra_forms(value: str) -> set[str]:
    """Forms with no length bound or several levels, which forms_of does not list."""
    raw = value.encode()
    return {
        "".join(f"&#{'0' * 40}{ord(c)};" for c in value),  # zero-padded decimal references
        "".join(f"&#x{'0' * 9}{ord(c):X}" for c in value),  # hex, no semicolons
        "".join(f"&amp;#x{ord(c):x};" for c in value),  # a reference inside a reference
        "".join(f"\\u0026#{ord(c)};" for c in value),  # a reference inside a JSON escape
        "".join(f"%{b:02X}" if i % 2 or b >= 0x80 else chr(b) for i, b in enumerate(raw)),  # some bytes encoded
        raw.hex().upper(),
    }


def stream(scrubber: Scrubber, pieces: list[bytes]) -> bytes:
    body = BodyStream(lambda: scrubber, min_segment=1)
    return b"".join(body.feed(p) for p in pieces) + body.end()


def cases() -> list[tuple[str, str, bytes, int, int]]:
    """(name, form, body, where the form starts, its length)."""
    out = []
    for name, value in VALUES.items():
        for form in sorted(forms_of(value) | extra_forms(value)):
            encoded = form.encode("utf-8")
            text = b'{"text": "lorem ipsum, dolor: ' * 40
            out.append((name, form, text + encoded + b" sit amet" + text + b'"}', len(text), len(encoded)))
            blob = base64.b64encode(RNG_BLOB)  # no separator for 12 KiB around the form
            out.append((name, form, b'{"b64": "' + blob + encoded + blob + b'"}', 9 + len(blob), len(encoded)))
    blob = base64.urlsafe_b64encode(RNG_BLOB)
    keyed = b'{"k": "' + blob + KEY.encode() + b'", "x": "' + blob + b'"}'
    out.append(("VALET_KEY", KEY, keyed, 7 + len(blob), len(KEY)))
    return out


CASES = cases()
SCRUBBER = Scrubber(VALUES.items())


@pytest.mark.parametrize("case", range(len(CASES)))
def test_a_form_split_at_every_offset_is_scrubbed_as_in_the_whole_body(case: int) -> None:
    name, form, body, where, length = CASES[case]
    whole = SCRUBBER.bytes(body)
    assert form.encode("utf-8") not in whole and b"[REDACTED:" + name.encode() in whole
    window = max(bodystream.MIN_WINDOW, 4 * SCRUBBER.overlap)
    # the stream cuts after the last separator or at a quiet point one window before the end of what arrived:
    # split so that each of those lands before, inside and after the form
    splits = set(range(max(1, where - 3), min(len(body), where + length + 4)))
    splits |= set(range(max(1, where + window - 3), min(len(body), where + length + window + 4)))
    for split in sorted(splits):
        out = stream(SCRUBBER, [body[:split], body[split:]])
        assert out == whole, (name, form, split)
    for seed in range(3):
        rng = random.Random(seed)
        pieces, pos = [], 0
        while pos < len(body):
            step = rng.choice([1, 3, 97, 1500, 5000])
            pieces.append(body[pos : pos + step])
            pos += step
        assert stream(SCRUBBER, pieces) == whole, (name, form, seed)


def test_what_goes_out_early_is_most_of_the_body() -> None:
    """Streaming means sending: a plain text body is not held until its end."""
    body = b'{"text": "' + b"lorem ipsum dolor sit amet " * 20000 + b'"}'
    stream_ = BodyStream(lambda: SCRUBBER)
    sent = sum(len(stream_.feed(body[i : i + 65536])) for i in range(0, len(body), 65536))
    assert sent > len(body) - 70000
    assert sent + len(stream_.end()) == len(body)


def test_a_long_zero_run_inside_a_reference_is_never_cut() -> None:
    value = VALUES["PLAIN"]
    form = "".join(f"&#{'0' * 30000}{ord(c)};" if i == 3 else c for i, c in enumerate(value))
    body = b'{"x": "' + form.encode() + b'"}'
    whole = SCRUBBER.bytes(body)
    assert value.encode() not in whole and b"[REDACTED:PLAIN]" in whole
    for size in (4096, 5000, 65536):
        assert stream(SCRUBBER, [body[i : i + size] for i in range(0, len(body), size)]) == whole


def test_a_run_with_no_place_to_cut_is_held_then_refused() -> None:
    body = BodyStream(lambda: SCRUBBER, min_segment=1, max_pending=100_000)
    piece = b"%41&#x42;" * 2000  # escapes everywhere, no separator: no quiet point
    with pytest.raises(Unscrubbable):
        for _ in range(20):
            assert body.feed(piece) == b""


@pytest.mark.parametrize("head", [gzip.compress(b'{"a": 1}' * 10), b"\x28\xb5\x2f\xfd" + b"\0" * 20,
                                  b"BZh91AY&SY" + b"\0" * 20, b"\x78\x9c" + gzip.compress(b"x")[10:]],
                         ids=["gzip", "zstd", "bzip2", "zlib"])  # gzip's header holds the time: xdist workers must agree on ids
def test_a_compressed_body_announced_as_text_is_refused(head: bytes) -> None:
    with pytest.raises(Unscrubbable):
        BodyStream(lambda: SCRUBBER).feed(head + b"x" * 20000)


def test_text_that_is_not_utf8_is_refused_and_a_split_character_is_not() -> None:
    text = "lorem ü ipsum ".encode() * 3000
    split = text.index("ü".encode()) + 1  # between the two bytes of one character
    assert stream(SCRUBBER, [text[:split], text[split:]]) == text
    with pytest.raises(Unscrubbable):
        stream(SCRUBBER, [text, b"\xff\xfe" + text])
    with pytest.raises(Unscrubbable):
        stream(SCRUBBER, [text + "ü".encode()[:1]])  # ends inside a character


def test_a_dense_piece_is_refused_on_the_event_loop_bound() -> None:
    body = BodyStream(lambda: SCRUBBER)
    with pytest.raises(Unscrubbable):
        body.feed(b"%61" * 200_000)


def test_values_that_can_be_bare_numbers_are_not_streamed() -> None:
    assert streamable(SCRUBBER)
    assert not streamable(Scrubber([("ACCOUNT", "4111111111111111")]))
    assert not streamable(Scrubber([("HEXDIGITS", "12121212")]))  # and its hex, 3132...: digits too


def test_the_scrubber_is_looked_up_at_every_piece() -> None:
    """A value added while a body streams (an OAuth refresh) is scrubbed from the next piece on."""
    current = [Scrubber([])]
    body = BodyStream(lambda: current[0])
    text = b"lorem fake-refreshed-token-0001 ipsum " * 2000
    first = body.feed(text)
    current[0] = Scrubber([("NEW", "fake-refreshed-token-0001")])
    rest = body.feed(text) + body.end()
    assert b"fake-refreshed-token-0001" in first and b"fake-refreshed-token-0001" not in rest


@pytest.mark.parametrize(("content_type", "streams"), [
    ("application/json", True), ("application/json; charset=UTF-8", True), ("application/problem+json", True),
    ("application/x-ndjson", True), ("text/plain; charset=utf-8", True), ('text/html; charset="UTF-8"', True),
    ("application/json; charset=utf-16", False), ("text/plain", False), ("text/html; charset=iso-8859-1", False),
    ("text/event-stream", False), ("application/octet-stream", False), ("image/png", False), ("", False),
])
def test_only_utf8_text_is_streamed(content_type: str, streams: bool) -> None:
    from addon.hooks.relay import _utf8_text

    assert _utf8_text(content_type) is streams


@pytest.mark.parametrize("text", [b"80", b"H,", b"80 apples and more text " * 300, b"HK" + b" is a city" * 500])
def test_text_that_starts_like_a_zlib_header_is_text(text: bytes) -> None:
    assert stream(SCRUBBER, [text[:1], text[1:]]) == text
