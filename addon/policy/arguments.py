"""Constraints on tools/call arguments: paths under a root, patterns, choices, lengths, ranges.

Each check answers True (holds), False (does not) or None (cannot be decided:
a path that does not normalize, a string RE2 cannot read). An allow rule needs
True; a deny rule fires on True *or* None, so whatever Valet cannot read safely
is never allowed by accident and always caught by a denial.

Deny checks ignore case (``under``, ``one_of`` on strings, ``regex``), like
deny globs on names: an upstream that ignores case must not run what a deny
rule names in another case. Allow checks match case exactly, so a case trick
never widens an allowance.

Patterns run on RE2 (linear in the value's length, no backtracking), and only
after the cheap checks (type, ``max_length``, ``one_of``, range) have passed:
a long value never reaches the regex engine when its length already refuses it.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import re2

from addon.protocol.paths import is_ambiguous_path

# Percent-escapes of any byte (a lenient decoder would decode them, once or twice: %252e, %c0%ae),
# and IIS's %uXXXX. A filesystem path argument is not a URL: Valet refuses to guess which reading wins.
_PERCENT_ESCAPE = re.compile(r"%([0-9a-f]{2}|u[0-9a-f]{4})", re.IGNORECASE)


class PatternError(ValueError):
    """A pattern RE2 cannot compile (backreferences, lookaround, invalid syntax)."""


def compile_pattern(pattern: str, ignore_case: bool = False) -> re2._Regexp:
    """Compile for RE2, which guarantees time linear in the input; refuse what it cannot run."""
    options = re2.Options()
    options.log_errors = False  # the error comes back in the exception, not on stderr
    options.case_sensitive = not ignore_case
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(
            f"not a pattern Valet can run in linear time (RE2 syntax; no backreferences or lookaround): {detail}"
        ) from None


def normalize_fs_path(value: Any) -> str | None:
    """The one reading of a filesystem path an upstream could make, or None if there is more than one.

    Refused: non-strings, relative paths, backslashes, control characters,
    percent-escapes of any byte (``%2e``, double encoding ``%252e``, overlong
    UTF-8 ``%c0%ae``) and ``%uXXXX``, anything Unicode compatibility
    normalization (NFKC) would change (full-width or look-alike slashes and
    dots), and segments ending in a dot or a space (Windows drops them:
    ``private.`` is ``private`` there). ``.``/``..`` and ``//`` are resolved on
    the string. Symbolic links are the upstream's to resolve: Valet cannot see
    its file system.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        return None
    if is_ambiguous_path(value):  # the same check as HTTP paths: look-alikes NFKC keeps (U+2215 ...)
        return None
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    if _PERCENT_ESCAPE.search(value) or unicodedata.normalize("NFKC", value) != value:
        return None
    if any(segment not in (".", "..") and segment.endswith((".", " ")) for segment in value.split("/")):
        return None
    normalized = posixpath.normpath(value)
    return "/" + normalized.lstrip("/")


@dataclass(frozen=True)
class Check:
    """One compiled argument constraint (the config model validates its parts).

    ``ignore_case`` is set for deny (and rate) rules: see the module docstring.
    """

    under: str | None = None
    regex: Any = None  # a compiled RE2 pattern (see compile_pattern)
    one_of: tuple[Any, ...] | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False
    ignore_case: bool = False

    def evaluate(self, present: bool, value: Any) -> tuple[bool | None, str | None]:
        """(verdict, normalized path to forward if this is a path check). Cheap checks first, the regex last."""
        if not present:
            return self.optional, None
        normalized = None
        if self.under is not None:
            normalized = normalize_fs_path(value)
            if normalized is None:
                return None, None
            if not _under(normalized, self.under, self.ignore_case):
                return False, normalized
        if (self.regex is not None or self.max_length is not None) and not isinstance(value, str):
            return False, normalized
        if self.max_length is not None and len(value) > self.max_length:
            return False, normalized
        if self.one_of is not None and not any(_same(value, c, self.ignore_case) for c in self.one_of):
            return False, normalized
        if self.minimum is not None or self.maximum is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False, normalized
            if self.minimum is not None and value < self.minimum:
                return False, normalized
            if self.maximum is not None and value > self.maximum:
                return False, normalized
        if self.regex is not None:
            try:
                matched = self.regex.fullmatch(value) is not None
            except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): no one reading of it
                return None, normalized
            if not matched:
                return False, normalized
        return True, normalized


def _under(path: str, root: str, ignore_case: bool) -> bool:
    root = root.rstrip("/")
    if ignore_case:
        path, root = path.casefold(), root.casefold()
    return path == (root or "/") or path.startswith(root + "/")


def _same(value: Any, choice: Any, ignore_case: bool = False) -> bool:
    """Equal and of the same JSON type (True is not 1, "1" is not 1); strings regardless of case if asked."""
    if isinstance(value, str) and isinstance(choice, str):
        return value.casefold() == choice.casefold() if ignore_case else value == choice
    if isinstance(value, bool) or isinstance(choice, bool):
        return type(value) is type(choice) and value == choice
    return isinstance(value, (int, float)) and isinstance(choice, (int, float)) and value == choice
