"""``${secret:NAME}`` placeholders in configured headers, query parameters and arguments."""

from __future__ import annotations

import re
from collections.abc import Callable

PLACEHOLDER = re.compile(r"\$\{secret:([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def check(template: str) -> None:
    """Raise ValueError for any ``${`` that is not a well-formed secret placeholder."""
    rest = PLACEHOLDER.sub("", template)
    if "${" in rest:
        raise ValueError("only ${secret:NAME} placeholders are supported (NAME: letters, digits, _)")


def names(template: str) -> list[str]:
    return PLACEHOLDER.findall(template)


def render(template: str, resolve: Callable[[str], str]) -> str:
    return PLACEHOLDER.sub(lambda m: resolve(m.group(1)), template)
