"""The one egress scrubber: every byte from an upstream towards an agent passes through one of these.

A :class:`Scrubber` is built once per server (and per vault generation) from
every value that could have reached that server, and then applied to bytes:
status reasons, header names and values, trailers, bodies, SSE events. It never
parses and re-serializes: it finds matches and replaces exactly those bytes with
``[REDACTED:NAME]``, so numbers, duplicate keys, key order and whitespace
outside a redacted string survive byte for byte.

How a secret is found, whatever form it takes. The bytes are looked at in two
views, each searched for the same literals (one Hyperscan literal database,
linear time, in slices of at most 1 MiB so that no call holds the interpreter
for long):

- the bytes as they are;
- the bytes with every *encoded character* decoded: ``%XX`` (either case),
  JSON escapes (``\\uXXXX`` any case, surrogate pairs, ``\\/``, ``\\"``,
  ``\\\\``, ``\\n``...), HTML character references, numeric (``&#114;``,
  ``&#x72;``, any case, leading zeros, ``;`` optional) and named (``&amp;``).
  Decoding is per character, so any subset of encoded characters, and mixed
  encodings inside one occurrence, decode to the raw secret. The characters
  decoded are those of the secrets, of the base64 and hex alphabets (a
  secret's base64 holds ``/`` and ``+`` even when the secret does not) and of
  the escapes themselves (``&amp;#102;``: one level of nesting). A match found
  there is mapped back to the original bytes it came from.

The literals per secret: its UTF-8 bytes (and, if it has spaces, the same with
``+`` for each space: form encoding); its hex (any case); its base64, standard
and URL-safe, at each of the three alignments inside a larger blob (the
characters that depend only on the secret; padding differs). Valet keys are
matched by shape (``vk_<12 alnum>_<32+ url-safe>``) in both views: the proxy
stores only hashes of keys, so it cannot list them.

Overlapping matches are merged (a secret that is a prefix of another cannot
leave the other's tail). A match that starts or ends inside a JSON escape is
widened to the whole escape, so the replacement never breaks a JSON string; a
match that is a bare JSON number is replaced by a quoted marker.

What cannot be caught: a transformation the scrubber does not know (encryption,
reversal, splitting a secret across fields or strings, double encoding such as
``%2541``, compression inside a body, base64 or hex of an already-encoded form).
See docs/security.md.
"""

from __future__ import annotations

import base64
import bisect
import html.entities
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import hyperscan

MARKER = "[REDACTED:{}]"
SLICE_BYTES = 1 << 20  # scanned per call: the GIL is released between slices at the latest
KEY_NAME = "VALET_KEY"
MIN_BASE64_CORE = 8
MIN_VALUE_CHARS = 6  # shorter values would redact unrelated text (the vault refuses secrets under 8)
MAX_LEVELS = 3  # encodings undone one inside the other (e.g. \\u0026 inside a JSON string in JSON)
MAX_UNIT_BYTES = 48  # the longest encoded character _UNIT matches

_NUMBER = re.compile(rb"-?[0-9][0-9.eE+-]*")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_KEY_SHAPE = re.compile(rb"vk_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{32,}")
_KEY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_UNIT_START = re.compile(rb"[\\%&]")
_ENCODED_FORM_CHARS = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_"  # base64, hex
                       "\\%&#;")  # the escapes' own characters
_JSON_SHORT = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b", ord("f"): b"\f",
               ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}
_ENTITIES = {name[:-1].lower(): char for name, char in html.entities.html5.items()
             if name.endswith(";") and len(char) == 1 and name[:-1].isalnum()}
_OCCURRENCE_BYTES = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                     b"+/=-_%&#;\\")  # with the values' own bytes: all an occurrence in any form is made of
_SHORT_OF = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}


def _ci_hex(digits: str) -> str:
    return "".join(f"[{d}{d.upper()}]" if d in "abcdef" else d for d in digits.lower())


def _ci_word(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def unit_patterns(chars: Iterable[str]) -> list[str]:
    """Encoded characters that decode to one of ``chars`` (and nothing else).

    Only these can be part of an encoded secret; the others (``%20``, ``\\n``,
    ``&amp;`` when no secret has a space, newline or ampersand) are left as they
    are, so a body full of escapes that cannot matter costs almost nothing.
    """
    chars = sorted(set(chars))
    byte_values = sorted({b for c in chars for b in c.encode("utf-8", "surrogatepass")})
    alternatives: list[str] = []
    pairs, bmp = [], []
    for c in chars:
        code = ord(c)
        if code >= 0x10000:
            high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            pairs.append(r"\\[uU]" + _ci_hex(f"{high:04x}") + r"\\[uU]" + _ci_hex(f"{low:04x}"))
        else:
            bmp.append(_ci_hex(f"{code:04x}"))
    alternatives += pairs
    if bmp:
        alternatives.append(r"\\[uU](?:" + "|".join(bmp) + ")")
    shorts = [re.escape(_SHORT_OF[c]) for c in chars if c in _SHORT_OF]
    if shorts:
        alternatives.append(r"\\(?:" + "|".join(shorts) + ")")
    alternatives.append("%(?:" + "|".join(_ci_hex(f"{b:02x}") for b in byte_values) + ")")
    codes = [ord(c) for c in chars]
    # any number of leading zeros (a bound would be a way around); Units.find widens its window over them
    alternatives.append("&#0*(?:" + "|".join(str(code) for code in codes) + ");?")
    alternatives.append("&#[xX]0*(?:" + "|".join(_ci_hex(f"{code:x}") for code in codes) + ");?")
    names = [name for name, char in _ENTITIES.items() if char in chars]
    if names:
        alternatives.append("&(?:" + "|".join(_ci_word(n) for n in sorted(names, key=len, reverse=True)) + ");")
    return alternatives


class Units:
    """Finds the encoded characters of interest (Hyperscan, start of match on: these patterns are small)."""

    def __init__(self, chars: Iterable[str]) -> None:
        expressions = [p.encode("ascii") for p in unit_patterns(chars)]
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._db.compile(expressions=expressions, ids=list(range(len(expressions))), elements=len(expressions),
                         flags=[hyperscan.HS_FLAG_SOM_LEFTMOST] * len(expressions))
        self._local = threading.local()

    def _scratch(self) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        return scratch

    def find(self, data: bytes) -> Iterator[tuple[int, int]]:
        """``(start, end)`` of each encoded character, in order, longest at each start, never overlapping."""
        size, view, pos = len(data), memoryview(data), 0
        while pos < size:
            stop = min(size, pos + SLICE_BYTES)
            found: dict[int, int] = {}

            def on_match(_id: int, start: int, end: int, _flags: int, _ctx: Any, base: int = pos) -> None:
                if base + start < stop and found.get(base + start, -1) < base + end:
                    found[base + start] = base + end

            end = _window_end(data, stop)
            self._db.scan(data if pos == 0 and end == size and type(data) is bytes else bytes(view[pos:end]),
                          match_event_handler=on_match, scratch=self._scratch())
            last = pos
            for start in sorted(found):
                if start >= last:
                    yield start, found[start]
                    last = found[start]
            pos = max(stop, last)


_NOT_ZERO = re.compile(rb"[^0]")


def _window_end(data: bytes, stop: int) -> int:
    """Where the scan of a slice ending at ``stop`` must end so that an encoded character starting before
    ``stop`` is seen whole: MAX_UNIT_BYTES further, and past any run of zeros there (``&#000…0102;``)."""
    end = min(len(data), stop + MAX_UNIT_BYTES)
    while end < len(data) and data[end - 1] == 0x30:
        beyond = _NOT_ZERO.search(data, end)
        end = min(len(data), (beyond.start() if beyond else len(data)) + MAX_UNIT_BYTES)
    return end


def _char_bytes(code: int) -> bytes:
    try:
        return chr(code).encode("utf-8", "surrogatepass")
    except (ValueError, OverflowError):
        return b""


def decode_unit(unit: bytes) -> bytes:
    """The UTF-8 bytes one encoded character stands for (``b""`` for nonsense such as ``&#99999999;``)."""
    first = unit[:1]
    if first == b"%":
        return bytes([int(unit[1:3], 16)])
    if first == b"\\":
        if unit[1] in (0x75, 0x55):
            if len(unit) == 12:
                high, low = int(unit[2:6], 16), int(unit[8:12], 16)
                return _char_bytes(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
            return _char_bytes(int(unit[2:6], 16))
        return _JSON_SHORT[unit[1]]
    body = unit[2:].rstrip(b";") if unit[1:2] == b"#" else b""
    if unit[1:2] == b"#":
        hexadecimal = body[:1] in (b"x", b"X")
        digits = (body[1:] if hexadecimal else body).lstrip(b"0") or b"0"  # int() refuses > 4300 digits
        if len(digits) > 8:
            return b""
        code = int(digits, 16 if hexadecimal else 10)
        return _char_bytes(code) if code <= 0x10FFFF else b""
    char = _ENTITIES.get(unit[1:-1].decode("ascii").lower())
    return char.encode("utf-8") if char is not None else b""


def decoded_view(data: bytes, units: Units) -> bytes | None:
    """``data`` with every encoded character of interest decoded; None when there is none.

    Built in one bytearray (memory in proportion to the body, even for a body of nothing but escapes).
    """
    out: bytearray | None = None
    last = 0
    cache: dict[bytes, bytes] = {}
    for start, end in units.find(data):
        if out is None:
            out = bytearray()
        unit = data[start:end]
        decoded = cache.get(unit)
        if decoded is None:
            decoded = decode_unit(unit)
            if len(cache) < 4096:
                cache[unit] = decoded
        out += memoryview(data)[last:start]
        out += decoded
        last = end
    if out is None:
        return None
    out += memoryview(data)[last:]
    return bytes(out)


def map_back(data: bytes, units: Units, spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Spans of the decoded view, as spans of ``data``: a second walk, only when the view had hits.

    An end inside a decoded character maps to the end of its encoding, a start to its beginning.
    """
    points = sorted({(s, False) for s, _, _ in spans} | {(e, True) for _, e, _ in spans})
    resolved: dict[tuple[int, bool], int] = {}
    i, npos, delta = 0, 0, 0  # delta: original position minus view position, outside decoded characters
    for ustart, uend in units.find(data):
        nstart = ustart - delta
        nend = nstart + len(decode_unit(data[ustart:uend]))
        while i < len(points):
            point, is_end = points[i]
            probe = point - 1 if is_end else point
            if probe >= nend:
                break
            if probe < nstart:
                resolved[points[i]] = point + delta
            else:
                resolved[points[i]] = uend if is_end else ustart
            i += 1
        delta = uend - nend
    for point in points[i:]:
        resolved[point] = point[0] + delta
    return [(resolved[(s, False)], resolved[(e, True)], n) for s, e, n in spans]


def base64_cores_any_length(raw: bytes) -> set[bytes]:
    """The base64 characters that depend only on ``raw``, at each offset within a larger blob
    (standard and URL-safe alphabets)."""
    cores: set[bytes] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        start = -(-8 * offset // 6)  # ceil
        end = 8 * (offset + len(raw)) // 6
        core = encoded[start:end]
        cores.add(core)
        cores.add(core.translate(bytes.maketrans(b"+/", b"-_")))
    return cores


def _base64_cores(raw: bytes) -> set[bytes]:
    """The cores long enough to match without hitting unrelated base64 text."""
    return {c for c in base64_cores_any_length(raw) if len(c) >= MIN_BASE64_CORE}


def _with_trimmed(values: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each value, and also without its surrounding whitespace when it has some: an HTTP parser strips a
    header value's whitespace (RFC 9110 §5.5), so that is the form an upstream sees, accepts and may echo
    (review 4, H9; the vault now refuses such values, older vaults may hold some)."""
    out: list[tuple[str, str]] = []
    for name, value in values:
        out.append((name, value))
        trimmed = value.strip()
        if trimmed != value and trimmed:
            out.append((name, trimmed))
    return out


def literals_of(value: str) -> list[tuple[bytes, bool]]:
    """``(literal, caseless)`` for every form of ``value`` searched in both views."""
    raw = value.encode("utf-8")
    out = [(raw, False), (raw.hex().encode("ascii"), True)]
    if b" " in raw:
        out.append((raw.replace(b" ", b"+"), False))
    out += [(core, False) for core in sorted(_base64_cores(raw))]
    return out


def _literal_pattern(literal: bytes) -> bytes:
    """A Hyperscan pattern matching exactly ``literal``: every byte but letters and digits as ``\\xHH``
    (patterns are C strings: a NUL or any other byte must not be taken literally)."""
    return b"".join(bytes([b]) if 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A
                    else b"\\x%02x" % b for b in literal)


def _escape_start(data: bytes, pos: int) -> int | None:
    """If ``pos`` lies strictly inside a JSON escape (``\\x`` or ``\\uXXXX``), where that escape starts."""
    for back in range(1, 6):
        i = pos - back
        if i < 0:
            return None
        if data[i] != 0x5C:  # backslash
            continue
        run = 0
        while i - run >= 0 and data[i - run] == 0x5C:
            run += 1
        if run % 2 == 0:  # an escaped backslash, not the start of an escape
            if back == 1:
                return None
            continue
        length = 6 if i + 1 < len(data) and data[i + 1] in (0x75, 0x55) else 2
        return i if i + length > pos else None
    return None


def _escape_end(data: bytes, end: int) -> int:
    """If ``end`` cuts a JSON escape, the end of that escape."""
    start = _escape_start(data, end)
    if start is None:
        return end
    length = 6 if start + 1 < len(data) and data[start + 1] in (0x75, 0x55) else 2
    return max(end, start + length)


def _inside_string(strings: list[tuple[int, int]], starts: list[int], start: int, end: int) -> bool:
    """Whether ``start:end`` lies inside one of the JSON strings' spans. The spans come sorted and disjoint
    from one left-to-right scan, so only the last one starting before ``start`` can hold it: a bisection,
    not a walk over every string for every match (which a hostile upstream made quadratic, on the loop)."""
    i = bisect.bisect_left(starts, start) - 1
    return i >= 0 and end <= strings[i][1]


class Scrubber:
    """Built once per server and set of values; thread-safe to apply (Hyperscan scratch per thread)."""

    def __init__(self, values: Iterable[tuple[str, str]], key_shape: bool = True) -> None:
        self.names: list[str] = []
        self.lengths: list[int] = []
        self.key_shape = key_shape
        expressions: list[bytes] = []
        flags: list[int] = []
        seen: set[str] = set()
        longest = 0
        numeric = False
        for name, value in sorted(_with_trimmed(values), key=lambda nv: (-len(nv[1]), nv[0])):
            if len(value) < MIN_VALUE_CHARS or value in seen:
                continue
            seen.add(value)
            for literal, caseless in literals_of(value):
                expressions.append(_literal_pattern(literal))
                self.lengths.append(len(literal))
                flags.append(hyperscan.HS_FLAG_CASELESS if caseless else 0)
                self.names.append(name)
                longest = max(longest, len(literal))
                numeric = numeric or _NUMBER.fullmatch(literal) is not None
        # Besides the secrets' own characters: every character of the base64 (standard and URL-safe) and
        # hex alphabets, since the encoded forms of a secret consist of them whatever the secret's
        # characters are (``\\/`` inside base64); and the escape characters themselves, so that a second
        # level decodes (``\\u0026#102;``, ``&amp;#102;``, ``%2541``)
        self._units = Units("".join(seen) + (_KEY_CHARS if key_shape else "") + _ENCODED_FORM_CHARS)
        self.overlap = max(longest, 256)
        self.size = len(seen)
        # Streaming (addon/secrets/bodystream.py) needs two facts about every occurrence this scrubber can
        # find, whatever its form: it is a run of these bytes only (the values' own bytes, letters and
        # digits for hex, base64, valet keys, named references and \\u escapes, and the escapes'
        # punctuation), so a cut just after any other byte never splits one; and whether one can be a bare
        # JSON number (whose marker is quoted unless it stands inside a string: only the whole body tells).
        alphabet = set(b"".join(v.encode("utf-8") for v in seen)) | set(_OCCURRENCE_BYTES)
        self.alphabet = bytes(sorted(alphabet))
        self.numeric = numeric
        self._db: hyperscan.Database | None = None
        if expressions:
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            db.compile(expressions=expressions, ids=list(range(len(expressions))), elements=len(expressions),
                       flags=[f | hyperscan.HS_FLAG_DOTALL for f in flags])
            self._db = db
        self._local = threading.local()

    def __bool__(self) -> bool:
        return True  # the valet-key shape is always scrubbed

    def _scratch(self) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            assert self._db is not None
            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        return scratch

    def _find(self, data: bytes) -> list[tuple[int, int, str]]:
        """Every literal and key-shape match in ``data``, scanned in slices."""
        hits: list[tuple[int, int, str]] = []
        size = len(data)
        view = memoryview(data)
        for begin in range(0, max(size, 1), SLICE_BYTES):
            stop = min(size, begin + SLICE_BYTES + self.overlap)
            if self._db is not None:
                def on_match(pattern: int, _start: int, end: int, _flags: int, _ctx: Any, base: int = begin) -> None:
                    start = base + end - self.lengths[pattern]
                    if start < base + SLICE_BYTES:  # the next slice reports the others
                        hits.append((start, base + end, self.names[pattern]))

                self._db.scan(data if begin == 0 and stop == size and type(data) is bytes else bytes(view[begin:stop]),
                              match_event_handler=on_match, scratch=self._scratch())
            if self.key_shape:
                for match in _KEY_SHAPE.finditer(data, begin, stop):
                    if match.start() < begin + SLICE_BYTES:
                        hits.append((match.start(), match.end(), KEY_NAME))
        return hits

    def spans(self, data: bytes) -> list[tuple[int, int, str]]:
        """Merged, widened ``(start, end, name)`` spans to redact, in order."""
        if not data:
            return []
        hits = self._find(data)
        # decoded views, a few levels deep (JSON inside a JSON string, %2541...): each level's hits are
        # mapped back through every level above it
        levels = [data]
        while len(levels) <= MAX_LEVELS and _UNIT_START.search(levels[-1]) is not None:
            view = decoded_view(levels[-1], self._units)
            if view is None:
                break
            levels.append(view)
            found = self._find(view)
            for upper in reversed(levels[:-1]):
                if not found:
                    break
                found = map_back(upper, self._units, found)
            hits += found
        if not hits:
            return []
        hits.sort(key=lambda h: (h[0], -h[1]))
        merged: list[list[Any]] = []
        for start, end, name in hits:
            inside = _escape_start(data, start)
            start = inside if inside is not None else start
            end = _escape_end(data, end)
            if merged and start <= merged[-1][1]:
                last = merged[-1]
                if end - start > last[3]:
                    last[2], last[3] = name, end - start
                last[1] = max(last[1], end)
            else:
                merged.append([start, end, name, end - start])
        return [(s, e, n) for s, e, n, _ in merged]

    def bytes(self, data: bytes, marker: str = MARKER, spans: list[tuple[int, int, str]] | None = None) -> bytes:
        """``data`` with every match replaced; the very same object when nothing matched. ``spans``: the
        spans of ``data`` when the caller computed them already (a stream scans more than it sends)."""
        if spans is None:
            spans = self.spans(data)
        if not spans:
            return data
        out: list[bytes] = []
        pos = 0
        strings: list[tuple[int, int]] | None = None
        string_starts: list[int] = []
        for start, end, name in spans:
            out.append(data[pos:start])
            replacement = marker.format(name).encode()
            if _NUMBER.fullmatch(data, start, end) and marker == MARKER:
                # a bare JSON number stays valid JSON as a string; inside a string it needs no quotes
                if strings is None:
                    strings = [m.span() for m in _JSON_STRING.finditer(data)]
                    string_starts = [s for s, _ in strings]
                if not _inside_string(strings, string_starts, start, end):
                    replacement = b'"' + replacement + b'"'
            out.append(replacement)
            pos = end
        out.append(data[pos:])
        return b"".join(out)

    def text(self, value: str) -> str:
        """A header value, reason or audit string."""
        raw = value.encode("utf-8", "surrogateescape")
        scrubbed = self.bytes(raw)
        return value if scrubbed is raw else scrubbed.decode("utf-8", "surrogateescape")

    def token(self, value: str) -> str:
        """A header name: the marker must itself be a valid token (no ``[``, ``:``)."""
        raw = value.encode("utf-8", "surrogateescape")
        scrubbed = self.bytes(raw, "REDACTED-{}")
        return value if scrubbed is raw else scrubbed.decode("utf-8", "surrogateescape")

    def value(self, obj: Any) -> Any:
        """Every string (keys too) of a parsed JSON value: for audit descriptions, not for egress.

        One scan of all its strings joined first: each is a contiguous part of the joined bytes, so
        nothing found there means nothing to redact in any (``obj`` itself is returned); otherwise each
        string is scrubbed on its own.
        """
        parts: list[str] = []
        _strings(obj, parts)
        if not parts or not self.spans("\n".join(parts).encode("utf-8", "surrogateescape")):
            return obj
        return self._value(obj)

    def _value(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.text(k): self._value(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._value(v) for v in obj]
        return obj


def _strings(obj: Any, out: list[str]) -> None:
    """Every string of a parsed JSON value, keys too (what :meth:`Scrubber.value` scrubs)."""
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.append(k)
            _strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, out)
