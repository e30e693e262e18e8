"""Method overrides under every reading a common framework makes of a parameter name (review 4, H3).

Rails (``Rack::MethodOverride``), Laravel and Symfony (``_method``), Spring
(``HiddenHttpMethodFilter``) and Express (``method-override``) run a POST as the
method named by a parameter: the policy would judge a POST that runs as a
DELETE. Refusing ``?_method=`` is not enough; each framework reads names its
own way, so a name is an override when ANY of these readings makes it one:

- percent-decoding (``+`` as a space), repeated: a name still changing after a
  few rounds and still mentioning "method" is taken as an override;
- PHP's ``php_register_variable_ex``: the name ends at a NUL, leading spaces are
  dropped, ``' '``, ``'.'`` and ``'['`` become ``_`` (``.method`` is
  ``$_GET['_method']``), ``_method[]`` / ``_method[x]`` are arrays named
  ``_method``;
- case folding, surrounding whitespace, and ``-`` read as ``_``.

And in every place a framework looks: the query (split on ``&`` and ``;``), and
for a body, WHATEVER its Content-Type says (Rack reads a POST without one as a
form):

- a form reading of the body (``a=1&_method=DELETE``);
- a JSON reading: the top-level member names of a JSON object (Laravel's
  request bag is the JSON body); a body that is not strict JSON is scanned for
  every ``"name":`` at any depth instead, since lenient parsers (comments,
  trailing commas) still read it;
- a multipart/form-data reading (when the Content-Type says multipart or the
  body starts like one): every ``name=`` parameter, quoted, token, RFC 2231
  (``name*=utf-8''%5Fmethod``, continuations joined) or RFC 2047
  (``=?utf-8?b?...?=``), anywhere in the body. A conservative scan: a doubtful
  match is refused (fail closed), never passed.

Cost. The readings are regular expressions and ``json.loads`` over the buffered
body (linear, C speed), and they only run when the body holds something that
could spell an override: the letters ``method`` in any case, an escape
(``%``, a backslash, NUL bytes of UTF-16/32, ``=?``) or an RFC 2231 ``name*``. A body with none of them
cannot name ``_method`` under any reading above and costs one scan.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from collections.abc import Iterable

from addon.protocol.errors import Cause, Refusal
from addon.secrets import compressed

# The override parameter names frameworks read, with '-' read as '_' (compared after the normalizations).
METHOD_OVERRIDE_PARAMS = frozenset({"_method", "_httpmethod", "x-http-method-override", "x-http-method",
                                    "x-method-override"})
_OVERRIDE_KEYS = frozenset(name.replace("-", "_") for name in METHOD_OVERRIDE_PARAMS)
# PHP turns ' ', '.' and '[' into '_'; '-' read as '_' too (conservative: x_http_method == x-http-method).
_MANGLE = str.maketrans({" ": "_", ".": "_", "[": "_", "-": "_"})
_DECODE_ROUNDS = 4
# Anything that could spell an override under some reading: the letters themselves (any case), or an escape.
# Searched with bytes.find in the lower-cased body: several times faster than one regex alternation.
_MAYBE = (b"method", b"%", b"\\", b"\x00", b"=?", b"name*")
# Form reading: the names (up to '=' or the next separator) that could read as an override: any holding a
# '%', and the others when, past leading whitespace (what str.strip() drops) or '+', they start as an override name does with any
# separator PHP or '+' turns into '_' (``_method``, `` .method``, ``x-http-method``, ``[httpmethod``...).
# A superset of what is_override_name accepts, so that ordinary names (``payment_method``) cost nothing.
_SEP = r"[._ \[+-]"
_FORM_NAME = re.compile(
    rf"(?i)(?:^|(?<=[&;]))(?:[^&;=%]*+%[^&;=]*|[\s+\x1c-\x1f\x85\xa0]*(?:{_SEP}|x{_SEP}(?:http{_SEP})?|{_SEP}http)method[^&;=]*)"
    .encode())
# JSON reading of a body Python cannot parse: skip (possessively) whatever is not a member name, then take
# the next one. Strings are matched whole from their opening quote, so the scan never starts inside one.
_JSON_STRING = r'"(?>(?:[^"\\]++|\\[\s\S])*+)'
_NEXT_JSON_KEY = re.compile(
    rf'(?:[^"]++|{_JSON_STRING}"(?![ \t\n\r]*+:)|{_JSON_STRING}\Z)*+"((?>(?:[^"\\]++|\\[\s\S])*+))"[ \t\n\r]*+:')
# Multipart reading: every name= parameter (not filename=), quoted (escapes allowed), or a token.
_PART_NAME = re.compile(
    rb'(?i)(?:^|(?<=[;\s]))name(\*[0-9]*\*?)?[ \t]*=[ \t]*(?:"((?:[^"\\\r\n]|\\[^\r\n])*)"?|([^;\r\n]*))')
_MULTIPART_START = re.compile(rb"\s*--")
_ENCODED_WORD = re.compile(r"=\?[^?]*\?([bBqQ])\?([^?]*)\?=")


def is_override_name(name: str) -> bool:
    """True when some framework reads ``name`` as a method-override parameter (see the module docstring)."""
    low = name.casefold()
    if "method" not in low and "%" not in low:
        return False
    for _ in range(_DECODE_ROUNDS):
        if _read_as_override(name):
            return True
        decoded = urllib.parse.unquote(name.replace("+", " "), encoding="latin-1")
        if decoded == name:
            return False
        name = decoded
    return _read_as_override(name) or "method" in name.casefold()  # still decoding: doubtful, refused


def _read_as_override(name: str) -> bool:
    """One reading of an already decoded name: NUL-terminated, trimmed, case-folded, PHP-mangled, array base."""
    name = name.split("\x00", 1)[0].strip().casefold()
    whole = name.translate(_MANGLE)
    return (whole in _OVERRIDE_KEYS or whole.rstrip("_") in _OVERRIDE_KEYS
            or name.split("[", 1)[0].strip().translate(_MANGLE) in _OVERRIDE_KEYS)


def names_override(names: Iterable[str]) -> bool:
    """True when any of the (already split) parameter names is an override under some reading."""
    return any(is_override_name(name) for name in names)


def form_overrides(data: bytes) -> bool:
    """The form reading (``application/x-www-form-urlencoded``, or a query string): ``&`` and ``;`` split."""
    return any(is_override_name(m.group().decode("latin-1")) for m in _FORM_NAME.finditer(data))


def json_overrides(data: bytes) -> bool:
    """The JSON reading: top-level member names of a JSON object; every ``"name":`` if Python cannot parse it.

    Read as leniently as the lenient parsers: invalid UTF-8 replaced (Node's body-parser does), control
    characters in strings accepted, integers never converted (PHP and JavaScript take 5000 digits). A
    document Python still cannot parse (nested deeper than its recursion limit, which JavaScript parses;
    comments or trailing commas for a lenient parser) is scanned for every member name at any depth.
    """
    text = _json_text(data)
    try:
        document = json.loads(text, parse_int=_no_int, strict=False)
    except (ValueError, RecursionError):
        return _json_keys_override(text)
    return isinstance(document, dict) and names_override(document)


def _no_int(digits: str) -> int:
    return 0


def _json_text(data: bytes) -> str:
    try:
        return data.decode(json.detect_encoding(data), "replace")
    except LookupError:  # pragma: no cover - detect_encoding names only codecs Python has
        return data.decode("latin-1")


def _json_keys_override(text: str) -> bool:
    """Every string followed by ``:`` (a member name at any depth), tokenized in step from the start: one
    match per name, each character read once (possessive, no backtracking)."""
    pos = 0
    while (match := _NEXT_JSON_KEY.match(text, pos)) is not None:
        pos = match.end()
        key = match.group(1)
        if "\\" in key:
            try:
                key = json.loads(f'"{key}"', strict=False)
            except ValueError:
                key = key.replace("\\", "")  # a lenient parser drops the stray backslash: read it so
        if is_override_name(key):
            return True
    return False


def multipart_overrides(data: bytes) -> bool:
    """The multipart reading: every part ``name`` (quoted, token, RFC 2231 with continuations, RFC 2047)."""
    continued: list[str] = []
    for match in _PART_NAME.finditer(data):
        star, quoted, token = match.group(1), match.group(2), match.group(3)
        value = (quoted if quoted is not None else token or b"").decode("latin-1")
        if quoted is not None:
            candidates = [value, re.sub(r"\\(.)", r"\1", value)]
        else:
            candidates = [value.strip()]
        if star:
            if star.endswith(b"*"):  # RFC 2231: charset'language'percent-encoded (is_override_name decodes)
                candidates = [c.split("'", 2)[-1] for c in candidates] + candidates
            if star != b"*":
                continued.append(candidates[0])
        candidates += [_encoded_words(c) for c in candidates if "=?" in c]
        if any(is_override_name(c) for c in candidates):
            return True
    return bool(continued) and is_override_name("".join(continued))


def _encoded_words(value: str) -> str:
    """RFC 2047 encoded words decoded (``=?utf-8?b?X21ldGhvZA==?=``); undecodable ones kept as they are."""
    def word(match: re.Match[str]) -> str:
        kind, text = match.group(1).lower(), match.group(2)
        try:
            if kind == "b":
                return base64.b64decode(text + "=" * (-len(text) % 4)).decode("latin-1")
            return urllib.parse.unquote(text.replace("_", " ").replace("=", "%"), encoding="latin-1")
        except (binascii.Error, ValueError):
            return match.group()
    return _ENCODED_WORD.sub(word, value)


def body_overrides(data: bytes, content_type: str) -> bool:
    """True when a request body names a method override under any reading, whatever its Content-Type says.

    ``data`` is the body as the upstream's framework reads it (content codings already removed).
    """
    if not data:
        return False
    lowered = data.lower()
    if not any(token in lowered for token in _MAYBE):
        return False
    if form_overrides(data) or json_overrides(data):
        return True
    if "multipart" in content_type.lower() or _MULTIPART_START.match(data):
        return multipart_overrides(data)
    return False


def check_body(data: bytes, content_type: str, content_encoding: str, cap: int) -> None:
    """Refuse (``method_override``) a body that names a method override under any reading.

    A content-coded body is read decoded, as the upstream's body parser reads it (Express's body-parser
    inflates gzip, deflate and br by default): codings Valet cannot decode, or a body that does not decode,
    are refused ``unsupported_media_type``; one that decodes past ``cap`` ``body_too_large``. Never passed
    unread.
    """
    if body_overrides(decoded_body(data, content_encoding, cap), content_type):
        raise Refusal(Cause.METHOD_OVERRIDE, "method-override parameters in the body are not accepted")


def decoded_body(data: bytes, content_encoding: str, cap: int) -> bytes:
    """``data`` with every content coding of ``content_encoding`` undone (the last applied first); a coding
    Valet does not decode, or a body that does not decode, is a Refusal (``unsupported_media_type``), one
    that decodes past ``cap`` ``body_too_large``."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        codec = compressed.CONTENT_CODINGS.get(coding)
        if codec is None:
            raise Refusal(Cause.UNSUPPORTED_MEDIA, f"request bodies in {coding[:32]!r} are not accepted")
        try:
            data = _decode(codec, data, cap)
        except compressed.Unreadable:
            raise Refusal(Cause.UNSUPPORTED_MEDIA, f"the {coding} request body does not decode") from None
        except compressed.TooLarge:
            raise Refusal(Cause.BODY_TOO_LARGE, f"the request body decodes to more than {cap} bytes") from None
        except Exception:  # noqa: BLE001 - any decoder failure: unread, so refused
            raise Refusal(Cause.UNSUPPORTED_MEDIA, f"the {coding} request body does not decode") from None
    return data




def _decode(codec: str, data: bytes, cap: int) -> bytes:
    if codec != "deflate":
        return compressed.decode(codec, data, cap)
    try:  # "deflate" is zlib-wrapped by the RFC, raw in some clients: whichever decodes
        return compressed.decode("deflate", data, cap)
    except compressed.TooLarge:
        raise
    except Exception:  # noqa: BLE001
        return compressed.decode("raw-deflate", data, cap)
