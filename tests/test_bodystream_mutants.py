"""The streamed scrub's rules, each at its exact boundary (addon/secrets/bodystream.py; mutation survivors).

tests/test_bodystream.py proves the streamed output equals the whole-body scrub for every cut it tries; these
tests pin *where* the stream cuts and *when* it refuses, because a stream that cuts elsewhere than its rules
say either leaks (a form split in two halves that are each harmless) or holds more than it must (a stream
that never streams). Each test builds its scrubber and its stream inside the test (mutmut forks its workers
after collection). The bodies are long enough to pass the head check (``HEAD_BYTES``) so that the cut rules
run at all; the runs without separators are random base64 (no escape starts, practically never eight zeros in
a row). All values are obviously fake.
"""

from __future__ import annotations

import base64
import random

import pytest

from addon.secrets import bodystream
from addon.secrets.bodystream import HEAD_BYTES, BodyStream, Unscrubbable, last_outside, streamable
from addon.secrets.outbound import INLINE_EVENT_BYTES, MAX_INLINE_ESCAPES
from addon.secrets.scrubber import Scrubber

PLAIN = "fake-stream-secret-0123456789"
W = bodystream.MIN_WINDOW  # the window of a scrubber whose longest literal is under 1 KiB
HEAD = b'{"b64": "'  # its last byte, a quote, is the only separator before the run


def plain() -> Scrubber:
    """A scrubber whose alphabet holds no space, quote or comma: those bytes separate."""
    return Scrubber([("PLAIN", PLAIN)])


def run(size: int, seed: int = 1) -> bytes:
    """``size`` bytes of base64: every byte in the alphabet, no escape start, no long run of zeros."""
    return base64.b64encode(random.Random(seed).randbytes(size))[:size]


def whole_and_streamed(scrubber: Scrubber, pieces: list[bytes], **kwargs: int) -> tuple[bytes, list[bytes]]:
    body = BodyStream(lambda: scrubber, **kwargs)
    outs = [body.feed(p) for p in pieces]
    outs.append(body.end())
    return scrubber.bytes(b"".join(pieces)), outs


def first_cut(buf: bytes, scrubber: Scrubber | None = None) -> bytes:
    """What one piece ``buf`` lets out at once (min_segment 1)."""
    s = scrubber or plain()
    return BodyStream(lambda: s, min_segment=1).feed(buf)


# --- where a piece is cut ---------------------------------------------------------------------------------


def test_last_outside_is_the_last_byte_not_in_the_alphabet() -> None:
    alphabet = plain().alphabet
    assert last_outside(b'ab, cd"ef', alphabet, 0) == 6
    assert last_outside(b'ab, cd"ef', alphabet, 6) == 6
    assert last_outside(b'ab, cd"ef', alphabet, 7) == -1
    assert last_outside(b'a"b"c', alphabet, 2) == 3
    assert last_outside(b"abc-def", alphabet, 0) == -1
    assert last_outside(b"", alphabet, 0) == -1


def test_a_piece_is_cut_right_after_its_last_separator() -> None:
    text = b"lorem ipsum, dolor " * 300
    body = BodyStream(lambda: plain(), min_segment=1)
    assert body.feed(text + b"sit, amet") == text + b"sit, "
    assert body.end() == b"amet"  # the tail of a complete body goes out, though no separator follows it
    assert body.end() == b""  # and nothing after the end


def test_a_separator_at_the_first_byte_is_a_cut() -> None:
    assert first_cut(b'"' + b"A" * 5000) == b'"'  # found by the second search, over the whole piece


def test_a_short_run_without_a_separator_is_held_whole() -> None:
    assert first_cut(b"A" * 5000) == b""  # under two windows: no quiet point is looked for


def test_the_quiet_point_is_one_window_before_the_end() -> None:
    buf = HEAD + run(30000)
    assert first_cut(buf) == buf[: len(buf) - W]


def test_quiet_points_are_looked_for_only_past_two_windows() -> None:
    at_two = b'"' + run(2 * W)
    assert first_cut(at_two) == b'"'
    past_two = b'"' + run(2 * W + 1)
    assert first_cut(past_two) == past_two[: len(past_two) - W]
    # a separator 1.5 windows before the end: the cut is after it, not at a quiet point past it
    near = HEAD + run(20000) + b" " + run(W + W // 2, seed=2)
    assert first_cut(near) == HEAD + run(20000) + b" "


def test_an_escape_in_the_window_moves_the_quiet_point_one_window_back() -> None:
    body = HEAD + run(20000)
    buf = body[:-100] + b"%41" + body[-97:]  # an escape start in the last window
    assert len(buf) == len(body)
    assert first_cut(buf) == buf[: len(buf) - 2 * W]


def test_an_escape_before_the_window_does_not_stop_a_quiet_point() -> None:
    buf = HEAD + b"%41" + run(20000)
    assert first_cut(buf) == buf[: len(buf) - W]


def test_a_window_that_starts_at_the_previous_cut_needs_no_nonzero_byte() -> None:
    """Zeros at the start of what is held cannot continue a reference (``&#000…``) begun before: that part
    was cut at a separator or a quiet point. The tries at 2W+100 and W+100 see the escape; the one at 100,
    whose window starts at 0, is quiet although only zeros precede it."""
    size = 3 * W + 100
    buf = bytearray(b"0" * 200 + run(size - 200))
    buf[2 * W + 50 : 2 * W + 53] = b"%41"
    assert first_cut(bytes(buf)) == b"0" * 100


@pytest.mark.parametrize(("k", "cut_back"), [(8, W), (9, 0)])
def test_only_zeros_up_to_eight_bytes_before_a_point_keep_it_from_being_quiet(k: int, cut_back: int) -> None:
    """A reference's zeros may run through a window (``&#`` + zeros began before it); its significant part,
    at most 7 digits and a ``;``, ends within 8 bytes of the first byte that is not a zero. So a point is
    quiet only when a byte other than ``0`` lies in its window more than 8 bytes before it."""
    prefix = b'{"x": "' + run(2 * W) + b"0" * (W + 100)
    nonzero = len(prefix)
    buf = prefix + b"7" + run(k + W - 1, seed=3)
    point = len(buf) - W
    assert point == nonzero + k
    assert first_cut(buf) == buf[: point - cut_back]


def test_a_long_value_widens_the_window() -> None:
    value = "fake-long-" + "".join(random.Random(5).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1090))
    scrubber = Scrubber([("LONG", value)])
    window = 4 * scrubber.overlap
    assert window == 4 * 2 * len(value) > W  # its hex is the longest literal
    buf = HEAD + run(40000)
    assert first_cut(buf, scrubber) == buf[: len(buf) - window]


def test_a_form_across_a_quiet_point_goes_out_whole_and_redacted() -> None:
    before = HEAD + run(20000)
    buf = before + PLAIN.encode() + run(W + 10 - len(PLAIN), seed=2)
    assert len(before) < len(buf) - W < len(before) + len(PLAIN)  # the quiet point lies inside the value
    body = BodyStream(lambda: plain(), min_segment=1)
    assert body.feed(buf) == before + b"[REDACTED:PLAIN]"
    tail = b' and more"}'
    assert body.feed(tail) + body.end() == buf[len(before) + len(PLAIN) :] + tail


def test_a_match_widened_to_a_separator_at_the_end_of_a_piece_goes_out() -> None:
    """A value that ends in a backslash, before a quote in JSON (``\\"``): its match ends inside that escape and
    is widened over the quote, a byte no value holds, which ends the piece. The match is complete: the piece
    goes out whole, redacted."""
    value = "fake-secret-bs\\"
    scrubber = Scrubber([("BS", value)])
    text = b"lorem ipsum, dolor " * 300
    piece = text + b'"' + value.encode() + b'"'
    assert first_cut(piece, scrubber) == text + b'"[REDACTED:BS]'


def test_a_value_that_may_go_on_in_the_next_piece_is_held_from_its_start() -> None:
    """A value that is the prefix of another, at the end of what arrived: cutting after it would send the
    longer one's tail in the clear."""
    short = "fake-prefix-secret-001"
    scrubber = Scrubber([("SHORT", short), ("LONG", short + "-continued")])
    text = b"lorem ipsum, dolor " * 300
    pieces = [text + b" " + short.encode() + b"-cont", b"inued and more text.\n"]
    whole, outs = whole_and_streamed(scrubber, pieces, min_segment=1)
    assert outs[0] == text + b" "
    assert b"".join(outs) == whole == text + b" [REDACTED:LONG] and more text.\n"


def test_a_valet_key_longer_than_the_window_is_held_from_its_start() -> None:
    key = b"vk_abcdefghijkl_" + b"Q" * 6000
    head = b'{"k": "' + run(3 * W)
    first = head + key[: W + 500]  # the quiet point lies inside the key, which reaches the end of the piece
    pieces = [first, key[W + 500 :] + b'", "x": 1}']
    whole, outs = whole_and_streamed(plain(), pieces, min_segment=1)
    assert outs[0] == head
    assert b"".join(outs) == whole == head + b'[REDACTED:VALET_KEY]", "x": 1}'


# --- when a piece goes out at all -------------------------------------------------------------------------


def test_nothing_in_nothing_out() -> None:
    body = BodyStream(lambda: plain(), min_segment=1)
    assert body.feed(b"") == b""
    assert body.end() == b""
    assert body.end() == b""  # the end is final: a second call (the relay called again) sends nothing


def test_the_head_is_held_until_head_bytes_arrived() -> None:
    text = b"lorem ipsum " * 341 + b"abc "
    assert len(text) == HEAD_BYTES
    assert first_cut(text[:-1]) == b""
    assert first_cut(text) == text


def test_min_segment_is_the_least_that_is_scanned() -> None:
    text = b"lorem ipsum " * 416 + b"lorem i "
    assert len(text) == 5000
    assert BodyStream(lambda: plain(), min_segment=5001).feed(text) == b""
    assert BodyStream(lambda: plain(), min_segment=5000).feed(text) == text
    body = BodyStream(lambda: plain(), min_segment=5000)
    assert body.feed(text) == text
    assert body.feed(b"short piece ") == b""  # gathered, not lost
    assert body.feed(b"and more ") == b""
    assert body.end() == b"short piece and more "


def test_only_the_first_piece_is_a_head() -> None:
    """Past the head, a short piece goes out at once, and one that happens to start like a compressed format
    (``BZh91AY&SY`` is ASCII) is text like any other."""
    body = BodyStream(lambda: plain(), min_segment=1)
    text = b"lorem ipsum " * 500
    assert body.feed(text) == text
    assert body.feed(b"more text ") == b"more text "
    assert body.feed(b"BZh91AY&SY more text ") == b"BZh91AY&SY more text "
    assert body.end() == b""


def test_only_values_that_can_be_bare_numbers_stop_streaming() -> None:
    """Built here, not at import: a Scrubber built before mutmut forks shows no mutant of its constructor."""
    assert plain().numeric is False and streamable(plain())
    assert streamable(Scrubber([]))  # only the key shape, never a number
    assert streamable(Scrubber([("ODD", 'fake"quoted secret/ü+1'), ("HEXLETTERS", "fake-abcdef")]))
    assert not streamable(Scrubber([("ACCOUNT", "4111111111111111")]))
    assert Scrubber([("PLAIN", PLAIN), ("ACCOUNT", "4111111111111111")]).numeric is True


# --- what is refused ----------------------------------------------------------------------------------------


def test_a_short_compressed_body_is_refused_at_its_end() -> None:
    body = BodyStream(lambda: plain())
    assert body.feed(b"BZh91AY&SY" + b"\0" * 30) == b""
    with pytest.raises(Unscrubbable, match="^a bzip2 body announced as text$"):
        body.end()


TEXT = b" lorem ipsum" * 500


@pytest.mark.parametrize("body", [
    b"x^K\x04",  # a zlib header (0x785e) and a fixed-Huffman block that starts with "a": all ASCII, unfinished
    b"x^K\x04\x00\x00b\x00b",  # the same stream complete, with its Adler-32
    b"x^K\x04\x00\x00b\x00b" + TEXT,  # and followed by text
    b"x^\x03\x00\x00\x00\x00\x01" + TEXT,  # an empty zlib stream, complete, followed by text
])
def test_zlib_that_is_also_valid_utf8_is_refused(body: bytes) -> None:
    """The UTF-8 check cannot catch a zlib stream made only of ASCII bytes; the agent's client may inflate it.
    (One that turns corrupt before its end is text, as in the buffered path: compressed.scrub.)"""
    stream = BodyStream(lambda: plain())
    with pytest.raises(Unscrubbable, match="^a zlib body announced as text$"):
        stream.feed(body)
        stream.end()
    text = b"x^K\x04" + TEXT + b"."  # the unfinished stream, then bytes it cannot decode
    assert BodyStream(lambda: plain(), min_segment=1).feed(text) == text


def test_an_ascii_piece_after_a_cut_character_is_checked_at_once() -> None:
    """A character split over two pieces is checked when its end arrives, even in a piece that is all
    ASCII: no byte after an invalid sequence goes out."""
    body = BodyStream(lambda: plain(), min_segment=1)
    body.feed(b"lorem ipsum " * 500 + "ü".encode()[:1])
    with pytest.raises(Unscrubbable, match="^a body announced as text that is not UTF-8$"):
        body.feed(b"abc def ")


def test_a_body_that_ends_inside_a_character_is_refused_at_its_end() -> None:
    body = BodyStream(lambda: plain(), min_segment=1)
    text = b"lorem ipsum " * 500
    assert body.feed(text + "ü".encode()[:1]) == text + b"\xc3"  # a byte no secret holds here: a separator
    with pytest.raises(Unscrubbable, match="^a body announced as text that is not UTF-8$"):
        body.end()


def test_the_event_loop_bound_is_escapes_in_a_large_piece() -> None:
    def feed(piece: bytes) -> bytes:
        return BodyStream(lambda: plain(), min_segment=1).feed(piece)

    text = b"lorem ipsum " * 30000  # 360 KB without escapes
    assert feed(text) == text
    assert feed(b"%61" * 87381 + b" ") == b"%61" * 87381 + b" "  # INLINE_EVENT_BYTES exactly: not large
    assert len(b"%61" * 87381 + b" ") == INLINE_EVENT_BYTES
    filler = b"lorem ipsum " * 6000
    assert feed(b"%61" * MAX_INLINE_ESCAPES + filler) == b"%61" * MAX_INLINE_ESCAPES + filler
    with pytest.raises(Unscrubbable, match="^a piece too dense in escapes to scrub without stalling every"):
        feed(b"%61" * (MAX_INLINE_ESCAPES + 1) + filler)


def test_max_pending_bytes_are_held_one_more_is_refused() -> None:
    body = BodyStream(lambda: plain(), min_segment=1, max_pending=30000)
    assert body.feed(b"%41" * 10000) == b""  # escapes everywhere: no quiet point, all 30000 bytes held
    with pytest.raises(Unscrubbable, match="^no place to cut a long run of encoded text$"):
        body.feed(b"%")


def test_max_pending_counts_only_what_is_held() -> None:
    text = b"lorem ipsum " * 5000
    body = BodyStream(lambda: plain(), min_segment=1, max_pending=30000)
    assert body.feed(text) == text
