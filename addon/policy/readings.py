"""How a lax upstream may read one JSON argument value: the one canonicalisation every restrictive rule shares.

Valet parses arguments strictly, but the servers behind it do not: the MCP Python SDK validates tool
arguments with pydantic in lax mode (``"5000"``, ``" 5000 "``, ``"5_000"``, ``"1.0"`` and ``true`` are all
an ``int``), TypeScript servers coerce with ``Number()`` (``"0x1388"``, ``""`` and ``null`` are numbers
there) and ``Boolean()`` (every non-empty string is true), and many REST frameworks do the same. A deny or
rate rule that judged only the JSON type would let ``"5000"`` past ``min: 1000`` and open a fresh budget for
``"07"``. So for deny and rate rules a value is judged by its *readings*: everything a lax reader could make
of it. A deny condition holds if it holds for any reading; a value whose reading Valet cannot tell
(``"inf"``, ``"5000abc"``, an array where a number is expected) is *undecidable*, which fires a deny rule and
never satisfies an allow rule. Allow rules keep the strict JSON reading (see :mod:`addon.policy.arguments`):
a value that is exactly what the operator wrote means the same to every reader.

The readings, per kind (docs/policies.md documents them for operators):

- numbers (``min``, ``max``, numeric ``one_of``, rate keys): a JSON number; ``true``/``false`` as 1/0;
  ``null`` as 0 (``Number(null)``); a string that, stripped of whitespace (Unicode's and U+FEFF), is a
  decimal numeral (sign, digits in any script, ``_`` between digits, fraction, exponent), a ``0x``/``0o``/
  ``0b`` literal, or empty (``Number("")`` is 0). Undecidable: an array or object, a non-finite value
  (``"inf"``, ``"NaN"``, ``"1e999"``), and a string that starts like a number but is not one (``"5000abc"``,
  ``"5,000"``: ``parseInt`` and ``parseFloat`` read a prefix). Any other string has no numeric reading.
- truth values (boolean ``one_of``): JSON booleans; 0/1; pydantic's words (``"yes"``, ``"off"``, ``"t"``...);
  JavaScript truthiness (``""``, ``0`` and ``null`` are false, any other string or number is true).
- texts (``regex``, ``max_length``, string ``one_of``): a string as sent, stripped, and NFKC-normalized
  (full-width letters); a number or boolean as ``str()``/``String()`` would write it; compared case-folded.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

# Every character str.strip() removes, plus U+FEFF, which JavaScript's trim() removes and Python's does not.
_SPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace()) + "\ufeff"
# A whole decimal numeral, ASCII digits (other scripts' digits are mapped first), Python's underscores.
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:_\d+)*(?:\.(?:\d+(?:_\d+)*)?)?|\.\d+(?:_\d+)*)(?:[eE][+-]?\d+(?:_\d+)*)?",
                      re.ASCII)
_RADIX = re.compile(r"[+-]?0(?:[xX][0-9a-fA-F_]+|[oO][0-7_]+|[bB][01_]+)", re.ASCII)
# Starts like a number (a prefix parser would read one), or names a non-finite one.
_NUMBER_LIKE = re.compile(r"[+-]?(?:\.?\d|inf|nan)", re.ASCII | re.IGNORECASE)
_MAX_EXACT_DIGITS = 4000  # int() refuses longer strings (sys.int_info); such a number is read as a float

# pydantic's lax bool words (strings are stripped and lower-cased first)
_TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE_WORDS = frozenset({"false", "f", "no", "n", "off", "0"})


class Undecidable:
    """The marker for a value whose reading Valet cannot tell (a deny fires, an allow does not hold)."""

    _instance: Undecidable | None = None

    def __new__(cls) -> Undecidable:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDECIDABLE"


UNDECIDABLE = Undecidable()


def stripped(text: str) -> str:
    return text.strip(_SPACE)


def numbers(value: Any) -> tuple[int | float, ...] | Undecidable:
    """Every number a lax reader could read ``value`` as: () when none could, UNDECIDABLE when Valet cannot
    tell. An integer past a float's precision has two readings (Python's exact one, JavaScript's double)."""
    if isinstance(value, bool):
        return (int(value),)
    if isinstance(value, int):
        return _both(value)
    if isinstance(value, float):
        return (value,) if math.isfinite(value) else UNDECIDABLE
    if value is None:
        return (0,)
    if isinstance(value, str):
        return _string_numbers(value)
    return UNDECIDABLE  # an array or object where a number may be expected: JavaScript reads [5000] as 5000


def _both(number: int) -> tuple[int | float, ...]:
    if -(2**53) <= number <= 2**53:
        return (number,)
    try:
        approx = float(number)
    except OverflowError:
        return (number, math.inf if number > 0 else -math.inf)
    return (number, approx)


def _string_numbers(value: str) -> tuple[int | float, ...] | Undecidable:
    text = stripped(value)
    if not text:
        return (0,)
    if not text.isascii():
        # digits of any script (int("٥") is 5), full-width signs and letters (NFKC): then ASCII or not a numeral
        text = unicodedata.normalize("NFKC", "".join(
            str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text))
        if not text.isascii():
            return UNDECIDABLE if _NUMBER_LIKE.match(text) else ()
    if _DECIMAL.fullmatch(text):
        plain = text.replace("_", "")
        if not any(c in plain for c in ".eE") and len(plain) <= _MAX_EXACT_DIGITS:
            return _both(int(plain))
        number = float(plain)
        if not math.isfinite(number):
            return UNDECIDABLE
        return (int(number),) if number.is_integer() and abs(number) <= 2**53 else (number,)
    if _RADIX.fullmatch(text):
        try:
            return _both(int(text, 0))
        except ValueError:  # misplaced underscores: a reader that drops them reads a number, int() does not
            return UNDECIDABLE
    return UNDECIDABLE if _NUMBER_LIKE.match(text) else ()


def truths(value: Any) -> frozenset[bool] | Undecidable:
    """Every truth value a lax reader could read ``value`` as (pydantic's words, JavaScript's truthiness)."""
    if isinstance(value, bool):
        return frozenset((value,))
    if isinstance(value, (int, float)):
        return frozenset((value != 0,))
    if value is None:
        return frozenset((False,))
    if isinstance(value, str):
        word = stripped(value).lower()
        out = {bool(value)}  # JavaScript: any non-empty string is true
        if word in _TRUE_WORDS:
            out.add(True)
        elif word in _FALSE_WORDS:
            out.add(False)
        return frozenset(out)
    return UNDECIDABLE


def fold(text: str) -> str:
    """The restrictive comparison form of a text: case-folded (``casefold`` maps ß to ss, like deny globs)."""
    return text.casefold()


def texts(value: Any) -> tuple[str, ...] | Undecidable:
    """Every text a lax reader could read ``value`` as, unfolded: the string, stripped, NFKC-normalized; a
    number or boolean as Python's ``str()`` and JavaScript's ``String()`` write it. UNDECIDABLE for a
    structure. Deduplicated, the value itself first."""
    if isinstance(value, str):
        out = [value]
        trimmed = stripped(value)
        if trimmed != value:
            out.append(trimmed)
        if not trimmed.isascii():
            normal = unicodedata.normalize("NFKC", trimmed)
            if normal not in out:
                out.append(normal)
        return tuple(out)
    if isinstance(value, bool):
        return ("true", "True") if value else ("false", "False")
    if isinstance(value, int):
        return (str(value),)
    if isinstance(value, float):
        if not math.isfinite(value):
            return UNDECIDABLE
        written = repr(value)  # Python: 5000.0, 1e+21
        if value.is_integer() and abs(value) < 1e21:
            return (written, str(int(value)))  # JavaScript: 5000
        return (written,)
    if value is None:
        return ("null", "None")
    return UNDECIDABLE


def canonical(value: Any) -> Any:
    """The one form a value takes in a rate budget's key: values a lax upstream could read as the same
    number share it (``7``, ``7.0``, ``"07"``, ``" +7"``, ``"0x7"``), texts are compared stripped, NFKC and
    case-folded; arrays and objects member by member. A value with no single reading keeps its own text
    (``"5000abc"``) or structure: it cannot be merged with anything."""
    if isinstance(value, (bool, int, float)) or value is None:
        found = numbers(value)
        if isinstance(found, tuple):
            return ["n", _number_key(found[0])]
        return ["u", repr(value)]
    if isinstance(value, str):
        found = numbers(value)
        if isinstance(found, tuple) and found:
            return ["n", _number_key(found[0])]
        return ["s", fold(unicodedata.normalize("NFKC", stripped(value)))]
    if isinstance(value, list):
        return ["a", [canonical(v) for v in value]]
    if isinstance(value, dict):
        return ["o", sorted([k, canonical(v)] for k, v in value.items())]
    return ["u", repr(value)]


def _number_key(number: int | float) -> str:
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    return str(number) if isinstance(number, int) else repr(number)


__all__ = ["UNDECIDABLE", "Undecidable", "canonical", "fold", "numbers", "stripped", "texts", "truths"]
