"""Glob patterns for names and paths, compiled once.

Names (users, agents, tools, JSON-RPC methods): ``*`` any run of characters,
``?`` one character, ``[abc]`` a class, as in fnmatch. Paths: ``*`` stays inside
one segment, ``**`` crosses segments.

Case: an *allow* rule matches the case exactly as written, so a case trick can
never widen what is allowed; a *deny* rule matches regardless of case, so a
case trick can never slip past a denial (an upstream that ignores case would
otherwise run the denied call).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import translate


def name_pattern(globs: Iterable[str], ignore_case: bool) -> re.Pattern[str]:
    flags = re.IGNORECASE if ignore_case else 0
    return re.compile("|".join(f"(?:{translate(g)})" for g in globs) or "(?!)", flags)


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
