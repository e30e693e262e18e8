"""Glob patterns for names and paths, compiled once.

Names (users, agents, tools, JSON-RPC methods): ``*`` any run of characters,
``?`` one character, ``[abc]`` a class, as in fnmatch. Paths: ``*`` stays inside
one segment, ``**`` crosses segments.

Case: an *allow* rule matches the case exactly as written, so a case trick can
never widen what is allowed; a *deny* rule matches regardless of case, so a
case trick can never slip past a denial (an upstream that ignores case would
otherwise run the denied call).

Namespaces: gateways and aggregators publish a tool behind a prefix
(``notes__delete_everything``, ``notes.delete_everything``,
``notes/delete_everything``, ``notes-delete_everything``, at any depth). A *restrictive* tool pattern (deny
and rate rules) also matches a name behind such a prefix, so a namespace never
slips a call past a denial; an allow pattern matches only the name as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import translate


# Any run of characters ending in a namespace separator: ``__``, ``.``, ``/`` or ``-`` (LiteLLM's MCP
# gateway publishes ``notes-delete_everything``). A single ``-`` also sits inside ordinary names
# (``list-files``); this prefix is only used by restrictive rules, where reading ``files`` behind
# ``list-`` can only deny or count more, never allow more.
NAMESPACE_PREFIX = r"(?:.*(?:__|[./-]))?"


def name_pattern(globs: Iterable[str], ignore_case: bool, namespaced: bool = False) -> re.Pattern[str]:
    """One regex for a list of globs; use ``.match`` (fnmatch's translation anchors the end).

    ``namespaced``: also match the name behind any namespace prefix (for tool names in deny and rate rules).
    """
    flags = re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL
    prefix = NAMESPACE_PREFIX if namespaced else ""
    return re.compile("|".join(f"(?:{prefix}{translate(g)})" for g in globs) or "(?!)", flags)


def _path_regex(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def path_pattern(globs: Iterable[str], ignore_case: bool) -> re.Pattern[str]:
    flags = re.IGNORECASE if ignore_case else 0
    return re.compile("|".join(f"(?:{_path_regex(g)})\\Z" for g in globs) or "(?!)", flags)
