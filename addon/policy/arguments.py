"""Constraints on tools/call arguments: paths under a root, patterns, choices, lengths, ranges.

Each check answers True (holds), False (does not) or None (cannot be decided:
a path that does not normalize, a string RE2 cannot read). An allow rule needs
True; a deny rule fires on True *or* None, so whatever Valet cannot read safely
is never allowed by accident and always caught by a denial.

Deny checks are read broadly, allow checks narrowly. A deny (or rate) check
judges every reading a lax upstream could make of the value
(:mod:`addon.policy.readings`): ``"5000"`` and ``true`` are numbers to pydantic
and to JavaScript's ``Number()``, so they meet ``min: 1000`` and ``one_of: [1]``;
strings are compared case-folded, stripped and NFKC-normalized, like deny globs
on names; a pattern's ``.`` matches a newline. A value with no reading Valet can
tell (``"inf"``, ``"5000abc"``, an array where a number is expected) is
undecidable. Allow checks take the value as JSON typed it and match case
exactly, so neither a spelling nor a case trick ever widens an allowance.

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

from addon.policy.readings import UNDECIDABLE, fold, numbers, texts, truths
from addon.protocol.paths import is_ambiguous_path

# Percent-escapes of any byte (a lenient decoder would decode them, once or twice: %252e, %c0%ae),
# and IIS's %uXXXX. A filesystem path argument is not a URL: Valet refuses to guess which reading wins.
_PERCENT_ESCAPE = re.compile(r"%([0-9a-f]{2}|u[0-9a-f]{4})", re.IGNORECASE)


class PatternError(ValueError):
    """A pattern RE2 cannot compile (backreferences, lookaround, invalid syntax)."""


def compile_pattern(pattern: str, ignore_case: bool = False) -> re2._Regexp:
    """Compile for RE2, which guarantees time linear in the input; refuse what it cannot run.

    ``ignore_case`` is the restrictive (deny, rate) reading: case-insensitive, and ``.`` matches a newline
    too (RE2's ``dot_nl``, Perl's ``(?s)``), so ``drop .*`` denies ``"drop table users\n"`` and
    ``"drop table\nusers"``. Allow patterns keep RE2's default: ``.`` stops at a newline, so a value with
    a newline the operator did not foresee fails ``safe .*`` instead of widening the allowance.
    """
    options = re2.Options()
    options.log_errors = False  # the error comes back in the exception, not on stderr
    options.case_sensitive = not ignore_case
    options.dot_nl = ignore_case
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
        if self.ignore_case:
            return self._broad(value)
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

    def _broad(self, value: Any) -> tuple[bool | None, str | None]:
        """The restrictive reading (deny and rate rules): each condition holds if it holds for any reading
        of the value (:mod:`addon.policy.readings`); undecidable (None) if it holds for none but some reading
        cannot be told. The check is their conjunction: False if any is False, else None if any is None."""
        normalized = None
        undecided = False
        if self.under is not None:
            normalized = normalize_fs_path(value)
            if normalized is None:
                return None, None
            if not _under(normalized, self.under, True):
                return False, normalized
        if self.minimum is not None or self.maximum is not None:
            found = numbers(value)
            if found is UNDECIDABLE:
                undecided = True
            elif not any((self.minimum is None or n >= self.minimum) and (self.maximum is None or n <= self.maximum)
                         for n in found):  # type: ignore[union-attr]
                return False, normalized
        if self.one_of is not None:
            verdict = _any_choice(value, self.one_of)
            if verdict is False:
                return False, normalized
            undecided = undecided or verdict is None
        if self.regex is not None or self.max_length is not None:
            written = texts(value)
            if written is UNDECIDABLE:
                return None, normalized
            limit = self.max_length
            candidates = [t for t in written if limit is None or len(t) <= limit]  # type: ignore[union-attr]
            if not candidates:
                return False, normalized
            if self.regex is not None:
                try:
                    matched = any(self.regex.fullmatch(t) is not None for t in candidates)
                except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): no one reading of it
                    return None, normalized
                if not matched:
                    return False, normalized
        return (None if undecided else True), normalized


def _any_choice(value: Any, choices: tuple[Any, ...]) -> bool | None:
    """Whether some reading of ``value`` is one of ``choices`` (a deny's ``one_of``): True, False, or None
    when no choice matched but the value's reading of some choice's kind cannot be told."""
    undecided = False
    folded: set[str] | None = None
    for choice in choices:
        if isinstance(choice, bool):
            found = truths(value)
        elif isinstance(choice, (int, float)):
            found = numbers(value)
        else:
            if folded is None:
                written = texts(value)
                if written is UNDECIDABLE:
                    undecided = True
                    continue
                folded = {fold(t) for t in written}  # type: ignore[union-attr]
            if fold(choice) in folded:
                return True
            mine = numbers(choice)  # "5000" in the policy is also the number 5000 to a lax upstream
            if not (isinstance(mine, tuple) and mine):
                continue
            found = numbers(value)
            if found is UNDECIDABLE:
                undecided = True
            elif any(n in mine for n in found):  # type: ignore[union-attr]
                return True
            continue
        if found is UNDECIDABLE:
            undecided = True
        elif choice in found:  # type: ignore[operator]
            return True
    return None if undecided else False


def _under(path: str, root: str, ignore_case: bool) -> bool:
    root = root.rstrip("/")
    if ignore_case:
        path, root = path.casefold(), root.casefold()
    return path == (root or "/") or path.startswith(root + "/")


def _same(value: Any, choice: Any, ignore_case: bool = False) -> bool:
    """Equal and of the same JSON type (True is not 1, "1" is not 1): the strict reading of allow rules
    (deny rules use :func:`_any_choice`); strings regardless of case if asked."""
    if isinstance(value, str) and isinstance(choice, str):
        return value.casefold() == choice.casefold() if ignore_case else value == choice
    if isinstance(value, bool) or isinstance(choice, bool):
        return type(value) is type(choice) and value == choice
    return isinstance(value, (int, float)) and isinstance(choice, (int, float)) and value == choice
