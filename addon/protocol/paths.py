"""Is this path read the same way by every common decoder? One shared answer, for HTTP paths and path arguments.

Valet judges a path once; the upstream (or a framework, a reverse proxy, a
file API in front of it) may decode it again, leniently. Whatever a lenient
decoder could read differently from Valet is refused, never "fixed":

- percent-escapes that survive one decoding (``%252e`` is ``%2e`` after one
  pass and ``.`` after two), and IIS-style ``%uXXXX`` escapes;
- overlong or otherwise invalid UTF-8 (``%c0%ae`` is ``.`` to a lenient decoder);
- characters whose Unicode compatibility form (NFKC) contains ``.``, ``/`` or
  ``\\`` (full-width ``．``, ``／``, ``＼``, one-dot leader...), and the common
  look-alikes of a slash that NFKC leaves alone (``∕`` U+2215, ``⁄`` U+2044...);
- a segment ending in a dot or a space (Windows and IIS drop them, so ``..`` +
  ``.`` or ``.. `` become ``..``), and control characters.

:func:`segment_problem` judges one already percent-decoded segment (the HTTP
path side, :mod:`addon.protocol.routing`); :func:`path_argument_problem` judges a
path given as a tools/call argument, which is not percent-encoded at all, so
any escape in it is itself ambiguous. Both return a reason, or None when the
value has exactly one reading.
"""

from __future__ import annotations

import re
import unicodedata

# Escapes that a second (or an IIS-style) decoding pass would still turn into a character.
_ESCAPE_LEFT = re.compile(r"%(?:[0-9A-Fa-f]{2}|[uU][0-9A-Fa-f]{4})")
_SEPARATORS = frozenset("./\\")
# Look-alikes of '/', '\\' and '.' that NFKC keeps as they are.
_CONFUSABLES = frozenset("\u2215\u2044\u29f8\u29f5\u2216\u29f9\u2571\u2572\u3002\uff61\u2024\u2025\u2026\u02d9\u00b7"
                         "\u0338\u20eb\ufe52\ufe68")


def character_problem(char: str) -> str | None:
    if ord(char) < 0x20 or ord(char) == 0x7F or 0x80 <= ord(char) < 0xA0:
        return "a control character"
    if char.isascii():
        return None
    if char in _CONFUSABLES or _SEPARATORS & set(unicodedata.normalize("NFKC", char)):
        return f"a look-alike of '.', '/' or '\\\\' (U+{ord(char):04X})"
    if unicodedata.category(char) in ("Cs", "Zl", "Zp"):
        return f"a surrogate or line separator (U+{ord(char):04X})"
    return None


def segment_problem(segment: str) -> str | None:
    """Why one percent-decoded path segment could be read two ways, or None."""
    if _ESCAPE_LEFT.search(segment):
        return "a percent-escape that survives decoding (double encoding or %u)"
    for char in segment:
        problem = character_problem(char)
        if problem:
            return problem
    if segment not in (".", "..") and segment.endswith((".", " ")):
        return "a segment ending in a dot or a space"
    if segment != segment.strip(" "):
        return "a segment starting or ending with a space"
    return None


def path_argument_problem(value: str) -> str | None:
    """Why a path argument (plain text, never percent-decoded by Valet) could be read two ways, or None.

    For :mod:`addon.policy.arguments`: any ``%XX`` or ``%uXXXX`` in a path
    argument is ambiguous (an upstream may decode it once, twice or never);
    ``.``/``..`` segments are left to the caller's resolution.
    """
    if _ESCAPE_LEFT.search(value):
        return "a percent-escape (an upstream may decode it)"
    for segment in value.replace("\\", "/").split("/"):
        problem = segment_problem(segment)
        if problem:
            return problem
    return None


def is_ambiguous_path(value: str) -> bool:
    """True when a path argument has more than one reading (see :func:`path_argument_problem`)."""
    return path_argument_problem(value) is not None
