"""Unit tests that kill mutants of the egress scrubber and the redaction helpers; no processes.

Each test pins one behaviour a mutation of addon/secrets/scrubber.py or redact.py changed without any other
unit test noticing (see docs/mutation-survivors.md for the mutants left alive and why they do not matter).
All values are obviously fake.
"""

from __future__ import annotations

import base64
import json

import pytest

from addon.secrets import scrubber as sc
from .forms import Redactor, forms_of
from .forms import _base64_cores as redact_cores
from addon.secrets.scrubber import (KEY_NAME, MIN_VALUE_CHARS, Scrubber, Units, _escape_end, _escape_start,
                                    _literal_pattern, decode_unit, decoded_view, literals_of, map_back,
                                    unit_patterns)

FAKE = "fake-Value/1"


# --- which values, which names -----------------------------------------------------------------------------

def test_values_under_six_characters_are_ignored_and_six_are_scrubbed() -> None:
    assert MIN_VALUE_CHARS == 6
    s = Scrubber([("SHORT", "abcde"), ("SIX", "fghijk")], key_shape=False)
    assert s.bytes(b"abcde fghijk") == b"abcde [REDACTED:SIX]"
    assert s.size == 1 and set(s.names) == {"SIX"}


def test_longest_value_first_and_names_in_order_for_one_value() -> None:
    s = Scrubber([("B", "fake-same-value"), ("A", "fake-same-value"), ("SHORT", "fake-same")], key_shape=False)
    assert s.size == 2
    assert s.names[0] == "A"  # one value under two names: the first by name wins, deterministically
    assert s.bytes(b"[fake-same-value] fake-same") == b"[[REDACTED:A]] [REDACTED:SHORT]"


def test_the_longest_match_names_a_merged_span() -> None:
    s = Scrubber([("INNER", "fake-inner"), ("OUTER", "xx-fake-inner-xx")], key_shape=False)
    assert s.bytes(b"<xx-fake-inner-xx>") == b"<[REDACTED:OUTER]>"
    t = Scrubber([("LEFT", "fake-left-part"), ("RIGHT", "part-and-right-longer")], key_shape=False)
    assert t.bytes(b"<fake-left-part-and-right-longer>") == b"<[REDACTED:RIGHT]>"
    u = Scrubber([("LEFT", "fake-left-part-longer"), ("RIGHT", "longer-right")], key_shape=False)
    assert u.bytes(b"<fake-left-part-longer-right>") == b"<[REDACTED:LEFT]>"


def test_adjacent_matches_merge_and_separate_ones_do_not() -> None:
    s = Scrubber([("A", "fake-aaaa"), ("B", "fake-bbbb")], key_shape=False)
    assert s.bytes(b"fake-aaaafake-bbbb") == b"[REDACTED:A]"  # touching: one span (either name would do)
    assert s.bytes(b"fake-aaaa fake-bbbb") == b"[REDACTED:A] [REDACTED:B]"


def test_key_shape_can_be_switched_off() -> None:
    key = "vk_0123456789ab_" + "Q" * 32
    assert Scrubber([], key_shape=True).bytes(key.encode()) == f"[REDACTED:{KEY_NAME}]".encode()
    assert Scrubber([], key_shape=False).bytes(key.encode()) == key.encode()
    assert Scrubber([]).bytes(("vk_0123456789ab_" + "Q" * 31).encode()) == ("vk_0123456789ab_" + "Q" * 31).encode()
    assert bool(Scrubber([]))
    assert Scrubber([]).bytes(b"") == b""
    assert Scrubber([]).spans(b"") == []


# --- forms -----------------------------------------------------------------------------------------------

def test_literals_of() -> None:
    lits = dict(literals_of("fake value!"))
    assert lits[b"fake value!"] is False
    assert lits[b"fake value!".hex().encode()] is True  # hex in any case
    assert lits[b"fake+value!"] is False
    assert b"fake+value!" not in dict(literals_of("fake-value!"))
    assert base64.b64encode(b"fake value!")[:14] in lits


@pytest.mark.parametrize("offset", [0, 1, 2])
@pytest.mark.parametrize("urlsafe", [False, True])
def test_base64_cores_at_each_offset(offset: int, urlsafe: bool) -> None:
    raw = b"\xfb\xff fake?>value\xfe"
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    blob = encode(b"Q" * offset + raw + b"Z")
    for cores in (sc._base64_cores(raw), redact_cores(raw)):
        assert any(core in blob for core in cores), (offset, urlsafe)
    s = Scrubber([("B", raw.decode("latin-1"))], key_shape=False)  # scrubbed as its UTF-8 form's base64
    b = base64.b64encode(b"Q" * offset + raw.decode("latin-1").encode() + b"Z")
    assert b"[REDACTED:B]" in s.bytes(b"x " + b + b" y")


def test_scrubber_base64_cores_are_exact_and_at_least_eight() -> None:
    raw = b"fakevalue123"
    cores = sc._base64_cores(raw)
    assert base64.b64encode(raw)[:16] in cores  # offset 0: every character depends only on raw
    assert base64.b64encode(b"\0" + raw)[2:17] in cores  # offset 1: ceil(8/6)=2 .. 8*13//6=17
    assert base64.b64encode(b"\0\0" + raw)[3:18] in cores  # offset 2: ceil(16/6)=3 .. 8*14//6=18
    assert all(len(c) >= 8 for c in cores)
    assert all(len(c) >= 8 for c in sc._base64_cores(b"abcdef"))  # 6 bytes: some cores are too short
    assert sc._base64_cores(b"abc") == set()


def test_redact_base64_cores_include_padded_whole_forms() -> None:
    raw = b"fake?value>x"
    cores = redact_cores(raw)
    assert base64.b64encode(raw) in cores and base64.urlsafe_b64encode(raw) in cores
    assert base64.b64encode(b"\0" + raw)[2:17] in cores
    assert base64.b64encode(b"\0\0" + raw)[3:18] in cores
    assert base64.b64encode(b"\0\0" + raw)[3:18].translate(bytes.maketrans(b"+/", b"-_")) in cores


def test_forms_of() -> None:
    value = "fake/v&l ü<"
    forms = forms_of(value)
    raw = value.encode()
    expected = {
        value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], raw.hex(), raw.hex().upper(),
        "fake\\/v&l ü<", "".join(f"\\u{ord(c):04x}" for c in value), "".join(f"\\u{ord(c):04X}" for c in value),
        "fake\\u002fv\\u0026l\\u0020ü\\u003c", "fake/v\\u0026l \\u00fc\\u003c", "fake/v&amp;l ü&lt;",
        "fake%2Fv%26l%20%C3%BC%3C", "fake%2fv%26l%20%c3%bc%3c", "fake%2Fv%26l+%C3%BC%3C", "fake/v%26l%20%C3%BC%3C",
        "fake/v%26l%20%c3%bc%3c",
    }
    assert expected <= forms
    assert all(len(f) >= 6 for f in forms)
    short = forms_of("abcde")
    assert "abcde" not in short and "6162636465" in short and "YWJjZGU=" in short
    assert "abcdef" in forms_of("abcdef")


def test_redactor_is_a_scrubber() -> None:
    r = Redactor({"T": FAKE})
    assert r.raw(FAKE.encode()) == b"[REDACTED:T]" and r.json_or_raw(b'"' + FAKE.encode() + b'"') == b'"[REDACTED:T]"'
    key = "vk_0123456789ab_" + "Q" * 32
    assert Redactor({}, key_shape=False).raw(key.encode()) == key.encode()
    assert Redactor({}).raw(key.encode()) == b"[REDACTED:VALET_KEY]"


# --- encoded characters ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("unit", "decoded"),
    [
        (b"%41", b"A"), (b"%e9", b"\xe9"), (b"\\u0041", b"A"), (b"\\U00e9", "é".encode()),
        (b"\\ud83d\\ude00", "😀".encode()), (b"\\n", b"\n"), (b"\\/", b"/"), (b"\\\\", b"\\"), (b'\\"', b'"'),
        (b"\\b", b"\b"), (b"\\f", b"\f"), (b"\\r", b"\r"), (b"\\t", b"\t"),
        (b"&#65;", b"A"), (b"&#065", b"A"), (b"&#x41;", b"A"), (b"&#X41", b"A"), (b"&#x10FFFF;", chr(0x10FFFF).encode()),
        (b"&#x110000;", b""), (b"&#99999999;", b""), (b"&amp;", b"&"), (b"&AMP;", b"&"), (b"&sol;", b"/"),
        (b"&nosuch;", b""),
        # a lone surrogate keeps its own (surrogatepass) bytes: it must not vanish and join its neighbours
        (b"\\ud800", b"\xed\xa0\x80"), (b"&#xDC00;", b"\xed\xb0\x80"),
        (b"&#0;", b"\x00"), (b"&#x0000;", b"\x00"),  # all zeros: code 0, not an empty number
        (b"&#999999999;", b""), (b"&#x123456789;", b""),  # more than 8 digits: nothing, never a guess
    ],
)
def test_decode_unit(unit: bytes, decoded: bytes) -> None:
    assert decode_unit(unit) == decoded


def test_unit_patterns_cover_only_the_characters_of_interest() -> None:
    units = Units("A/é😀")
    data = b"%41 %42 \\u0041 \\u0042 \\/ \\n &#65; &#66; &#x2F &sol; &amp; %c3%a9 \\ud83d\\ude00 &#128512;"
    found = [data[s:e] for s, e in units.find(data)]
    assert found == [b"%41", b"\\u0041", b"\\/", b"&#65;", b"&#x2F", b"&sol;", b"%c3", b"%a9",
                     b"\\ud83d\\ude00", b"&#128512;"]
    assert any("[uU]" in p for p in unit_patterns("A"))
    assert not any(p.startswith("&(?:") for p in unit_patterns("A"))  # no named entity stands for "A"


def test_units_take_the_longest_at_each_start() -> None:
    units = Units("A;")
    assert list(Units("A").find(b"&#65;&#65")) == [(0, 5), (5, 9)]
    assert list(units.find(b"%41%3b")) == [(0, 3), (3, 6)]
    assert list(Units("A").find(b"")) == []


def test_decoded_view_and_map_back() -> None:
    units = Units("fake")
    data = b"x%66ak\\u0065 y"
    view = decoded_view(data, units)
    assert view == b"xfake y"
    assert decoded_view(b"nothing here", units) is None
    assert map_back(data, units, [(1, 5, "N")]) == [(1, 12, "N")]
    assert map_back(data, units, [(2, 4, "N")]) == [(4, 6, "N")]
    assert map_back(data, units, [(5, 7, "N")]) == [(12, 14, "N")]
    assert map_back(b"%66%66%66", Units("f"), [(0, 1, "a"), (1, 3, "b")]) == [(0, 3, "a"), (3, 9, "b")]


def test_literal_pattern_escapes_everything_but_letters_and_digits() -> None:
    assert _literal_pattern(b"aZ09") == b"aZ09"
    assert _literal_pattern(b"a.\x00/@[`{") == b"a\\x2e\\x00\\x2f\\x40\\x5b\\x60\\x7b"


@pytest.mark.parametrize(
    ("data", "pos", "start"),
    [
        (b'a\\nb', 2, 1), (b'a\\nb', 3, None), (b'a\\nb', 1, None), (b'\\u0041x', 3, 0), (b'\\u0041x', 5, 0),
        (b'\\u0041x', 6, None), (b'\\\\nb', 2, None), (b'\\\\\\nb', 3, 2), (b'\\U0041', 4, 0), (b'ab', 1, None),
        (b'x\\\\', 3, None), (b'\\', 0, None),
        (b'ab\\', 3, 2), (b'a\\u', 3, 1),  # an escape cut by the end of the data
        (b'\\nab\\', 1, 0),  # the run of backslashes stops at the start (never wraps around to the end)
    ],
)
def test_escape_start(data: bytes, pos: int, start: int | None) -> None:
    assert _escape_start(data, pos) == start


def test_escape_end() -> None:
    assert _escape_end(b'\\u0041x', 3) == 6
    assert _escape_end(b'a\\nb', 2) == 3
    assert _escape_end(b'abc', 2) == 2


# --- replacement ---------------------------------------------------------------------------------------------

def test_numbers_are_quoted_only_outside_strings_and_only_with_the_default_marker() -> None:
    s = Scrubber([("PIN", "1234567")], key_shape=False)
    assert s.bytes(b"[1234567]") == b'["[REDACTED:PIN]"]'
    assert s.bytes(b'["1234567"]') == b'["[REDACTED:PIN]"]'
    assert s.bytes(b'["a 1234567 b"]') == b'["a [REDACTED:PIN] b"]'
    assert s.bytes(b"[1234567]", "R-{}") == b"[R-PIN]"
    assert s.token("X-1234567") == "X-REDACTED-PIN"
    t = Scrubber([("W", "fake-word")], key_shape=False)
    assert t.bytes(b"[fake-word]") == b"[[REDACTED:W]]"  # not a number: no quotes


def test_text_token_and_value() -> None:
    s = Scrubber([("T", FAKE)], key_shape=False)
    plain = "nothing \udcff here"
    assert s.text(plain) is plain and s.token(plain) is plain
    assert s.text(f"a {FAKE} \udcff") == "a [REDACTED:T] \udcff"
    assert s.value({FAKE: [FAKE, 1, None, {"k": FAKE}], "n": 2.5}) == {
        "[REDACTED:T]": ["[REDACTED:T]", 1, None, {"k": "[REDACTED:T]"}], "n": 2.5}


def test_a_secret_inside_two_levels_of_encoding() -> None:
    s = Scrubber([("T", FAKE)], key_shape=False)
    inner = json.dumps("".join(f"\\u{ord(c):04x}" for c in FAKE))[1:-1].encode()  # \\u0066...
    assert s.bytes(b"<" + inner + b">") == b"<[REDACTED:T]>"
    double = "".join(f"%25{b:02X}" for b in FAKE.encode()).encode()
    assert s.bytes(b"<" + double + b">") == b"<[REDACTED:T]>"


def test_slices_are_scanned_with_overlap() -> None:
    s = Scrubber([("T", FAKE)], key_shape=True)
    assert s.overlap == 256
    for cut in (sc.SLICE_BYTES - 3, sc.SLICE_BYTES, sc.SLICE_BYTES - len(FAKE)):
        data = b"x" * cut + FAKE.encode() + b"y" * 10
        assert s.bytes(data) == b"x" * cut + b"[REDACTED:T]" + b"y" * 10
        key = b"vk_0123456789ab_" + b"Q" * 40
        assert s.bytes(b"x" * cut + key + b" ") == b"x" * cut + b"[REDACTED:VALET_KEY] "
    long = "fake" + "L" * 300
    assert Scrubber([("L", long)]).overlap == len(long) * 2  # its hex is the longest literal


def test_equal_length_overlaps_keep_the_first_name() -> None:
    s = Scrubber([("B", "aaaa-bbbb"), ("A", "fake-aaaa")], key_shape=False)
    assert s.bytes(b"<fake-aaaa-bbbb>") == b"<[REDACTED:A]>"
    t = Scrubber([("A", "fake-aaaa"), ("B", "aaaa-bbbb")], key_shape=False)
    assert t.bytes(b"<aaaa-bbbb fake-aaaa>") == b"<[REDACTED:B] [REDACTED:A]>"


def test_three_levels_of_encoding_are_undone_and_a_fourth_is_not() -> None:
    s = Scrubber([("T", "fakevalue")], key_shape=False)

    def pct(data: bytes) -> bytes:
        return b"".join(b"%%%02X" % b for b in data)

    three = pct(b"fakevalue").replace(b"%", b"%25").replace(b"%", b"%25")  # %252566...: three decodings
    assert s.bytes(b"<" + three + b">") == b"<[REDACTED:T]>"
    four = three.replace(b"%", b"%25")
    assert s.bytes(b"<" + four + b">") == b"<" + four + b">"


def test_headers_with_undecodable_bytes_keep_them() -> None:
    s = Scrubber([("T", FAKE)], key_shape=False)
    assert s.token(f"X-{FAKE}-\udcff") == "X-REDACTED-T-\udcff"
    assert s.text(f"{FAKE}\udcfe") == "[REDACTED:T]\udcfe"
    assert s.value("\udcff") == "\udcff"


def test_hex_forms_in_either_case_but_raw_values_exactly() -> None:
    s = Scrubber([("T", "fakeValue")], key_shape=False)
    hexed = b"fakeValue".hex().encode()
    assert s.bytes(hexed.upper()) == b"[REDACTED:T]"
    assert s.bytes(hexed) == b"[REDACTED:T]"
    assert s.bytes(b"FAKEVALUE") == b"FAKEVALUE"  # the raw value is matched case-sensitively
    assert s.bytes(b"fake+Value") == b"fake+Value"
    spaced = Scrubber([("S", "fake Value")], key_shape=False)
    assert spaced.bytes(b"q=fake+Value&") == b"q=[REDACTED:S]&"
    assert spaced.bytes(b"q=FAKE+VALUE&") == b"q=FAKE+VALUE&"
    b64 = base64.b64encode(b"fakeValue!!")
    assert Scrubber([("B", "fakeValue!!")], key_shape=False).bytes(b64.lower()) == b64.lower()


def test_map_back_end_at_a_boundary() -> None:
    units = Units("ab")
    data = b"%61%62xy"  # view "abxy"
    assert map_back(data, units, [(0, 1, "N")]) == [(0, 3, "N")]
    assert map_back(data, units, [(0, 2, "N")]) == [(0, 6, "N")]
    assert map_back(data, units, [(1, 3, "N")]) == [(3, 7, "N")]
    assert map_back(data, units, [(2, 4, "N")]) == [(6, 8, "N")]
    assert map_back(b"xy%61", units, [(0, 2, "N"), (2, 3, "M")]) == [(0, 2, "N"), (2, 5, "M")]


def test_numbers_inside_a_string_that_starts_at_the_match() -> None:
    s = Scrubber([("PIN", "1234567")], key_shape=False)
    assert s.bytes(b'{"a":"x","b":1234567}') == b'{"a":"x","b":"[REDACTED:PIN]"}'
    assert s.bytes(b'"1234567"') == b'"[REDACTED:PIN]"'
    assert s.bytes(b"1234567") == b'"[REDACTED:PIN]"'
    assert s.bytes(b'"a" 1234567 "b"') == b'"a" "[REDACTED:PIN]" "b"'


def test_forms_of_quotes_and_non_ascii() -> None:
    forms = forms_of('fake"ü<')
    assert 'fake\\"ü<' in forms  # JSON without \u escapes (ensure_ascii=False)
    assert 'fake\\"\\u00fc<' in forms
    assert "fake&quot;ü&lt;" in forms and 'fake"ü&lt;' in forms  # html.escape with and without quotes


def test_six_character_values_in_base64_and_encoded_keys() -> None:
    s = Scrubber([("S", "abcdef")], key_shape=False)
    assert s.bytes(b"<" + base64.b64encode(b"abcdef") + b">") == b"<[REDACTED:S]>"
    assert decode_unit(b"\\u20ac") == "€".encode() and decode_unit(b"\\ud834\\udd1e") == "𝄞".encode()
    key = "vk_0123456789ab_" + "Q" * 32
    encoded = "".join(f"%{b:02X}" for b in key.encode()).encode()
    assert Scrubber([]).bytes(b"<" + encoded + b">") == b"<[REDACTED:VALET_KEY]>"


# --- the survivors of the complete run of 2026-11-28 ------------------------------------------------------

def test_a_match_ending_inside_an_escape_is_widened_even_at_the_end() -> None:
    s = Scrubber([("B", "fake-value\\")], key_shape=False)
    assert s.bytes(b"x fake-value\\") == b"x [REDACTED:B]"
    u = Scrubber([("U", "abc-\\U00")], key_shape=False)
    assert u.bytes(b'"abc-\\U0041"') == b'"[REDACTED:U]"'  # \U (upper case) is an escape too


def test_the_window_ends_past_a_run_of_zeros_exactly() -> None:
    """A scan window is MAX_UNIT_BYTES longer than its slice, and longer still over a run of zeros."""
    assert sc.MAX_UNIT_BYTES == 48
    data = b"x" * 100 + b"0" + b"y" * 200
    assert sc._window_end(data, 53) == 101 + 48  # byte 100 is a zero: past it, then 48 more
    assert sc._window_end(data, 52) == 100  # byte 99 is not
    assert sc._window_end(data, 300) == len(data)
    assert sc._window_end(b"x" * 100 + b"0" * 300, 53) == 400  # zeros up to the end
    assert sc._window_end(b"x" * 100 + b"00y" + b"z" * 100, 53) == 102 + 48


def test_a_body_ending_in_a_zero_is_scanned_once() -> None:
    s = Scrubber([("T", FAKE)], key_shape=False)
    assert s.bytes(b"%41 100") == b"%41 100"
    assert s.bytes(b"&#x66;ake-Value/1 &#0") == b"[REDACTED:T] &#0"


def test_supplementary_characters_from_u_10000_in_surrogate_pairs() -> None:
    value = "fake-\U00010000-\U0001f600-value"
    s = Scrubber([("S", value)], key_shape=False)
    for form in ("fake-\\ud800\\udc00-\\ud83d\\ude00-value", "fake-\\Ud800\\udc00-\\Ud83d\\ude00-value",
                 "fake-\\ud800\\Udc00-\\ud83d\\Ude00-value", "fake-&#x10000;-&#X1F600;-value"):
        assert s.bytes(b"<" + form.encode() + b">") == b"<[REDACTED:S]>", form


def test_html_hex_references_with_an_upper_case_x_and_named_ones_with_digits() -> None:
    s = Scrubber([("H", "fake\u00bdvalue")], key_shape=False)  # &frac12; has digits in its name
    assert s.bytes(b"<fake&frac12;value>") == b"<[REDACTED:H]>"
    assert s.bytes(b"<&#X66;ake&#XBD;value>") == b"<[REDACTED:H]>"


def test_nested_strings_are_scrubbed_in_audit_values() -> None:
    s = Scrubber([("T", FAKE)], key_shape=False)
    assert s.value({"a": [FAKE]}) == {"a": ["[REDACTED:T]"]}
    assert s.value([{"k": FAKE}]) == [{"k": "[REDACTED:T]"}]
    clean = {"a": ["nothing", {"b": "here"}]}
    assert s.value(clean) is clean  # nothing to redact: the very same object


def test_the_longest_match_names_a_merged_span_wherever_it_starts() -> None:
    prefix = b"0123456789" * 3
    first, longer = "fake-aaaa-bbbb", "aaaa-bbbb-cccc-dd"  # 14 and 17 characters, the second starts at +5
    s = Scrubber([("FIRST", first), ("LONGER", longer)], key_shape=False)
    assert s.bytes(prefix + b"fake-aaaa-bbbb-cccc-dd") == prefix + b"[REDACTED:LONGER]"
    third = "bbbb-cccc-dd-eeeeee"  # 19: longer than the second, shorter than its end + start
    t = Scrubber([("FIRST", first), ("LONGER", longer), ("THIRD", third)], key_shape=False)
    assert t.bytes(prefix + b"fake-aaaa-bbbb-cccc-dd-eeeeee") == prefix + b"[REDACTED:THIRD]"
