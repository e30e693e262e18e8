"""Constraints on tools/call arguments: paths under a root, patterns, choices, lengths, ranges.

Each check answers True (holds), False (does not) or None (cannot be decided:
a path that does not normalize). An allow rule needs True; a deny rule fires on
True *or* None, so whatever Valet cannot read safely is never allowed by
accident and always caught by a denial.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)


def normalize_fs_path(value: Any) -> str | None:
    """The one reading of a filesystem path an upstream could make, or None if there is more than one.

    Refused: non-strings, relative paths, backslashes, control characters,
    percent-encoded dots and separators, and anything Unicode compatibility
    normalization (NFKC) would change (full-width or look-alike slashes and
    dots). ``.``/``..`` and ``//`` are resolved on the string. Symbolic links
    are the upstream's to resolve: Valet cannot see its file system.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        return None
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    if _ENCODED_SEPARATOR.search(value) or unicodedata.normalize("NFKC", value) != value:
        return None
    normalized = posixpath.normpath(value)
    return "/" + normalized.lstrip("/")


@dataclass(frozen=True)
class Check:
    """One compiled argument constraint (the config model validates its parts)."""

    under: str | None = None
    regex: re.Pattern[str] | None = None
    one_of: tuple[Any, ...] | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False

    def evaluate(self, present: bool, value: Any) -> tuple[bool | None, str | None]:
        """(verdict, normalized path to forward if this is a path check)."""
        if not present:
            return self.optional, None
        normalized = None
        if self.under is not None:
            normalized = normalize_fs_path(value)
            if normalized is None:
                return None, None
            root = self.under.rstrip("/")
            if not (normalized == (root or "/") or normalized.startswith(root + "/")):
                return False, normalized
        if self.regex is not None and not (isinstance(value, str) and self.regex.fullmatch(value)):
            return False, normalized
        if self.one_of is not None and not any(_same(value, choice) for choice in self.one_of):
            return False, normalized
        if self.max_length is not None and not (isinstance(value, str) and len(value) <= self.max_length):
            return False, normalized
        if self.minimum is not None or self.maximum is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False, normalized
            if self.minimum is not None and value < self.minimum:
                return False, normalized
            if self.maximum is not None and value > self.maximum:
                return False, normalized
        return True, normalized


def _same(value: Any, choice: Any) -> bool:
    """Equal and of the same JSON type (True is not 1, "1" is not 1)."""
    return type(value) is type(choice) and value == choice or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and isinstance(choice, (int, float)) and not isinstance(choice, bool) and value == choice
    )
