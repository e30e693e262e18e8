"""Bounds on what an agent can make one audit row hold, chosen so that the bound cannot be aimed (review G11).

``arguments`` used to be cut at 64 KiB of its JSON text, in the agent's member order: 70 KB of padding first
and the argument that mattered (``path``) was nowhere in the row. Here an oversized value keeps its shape:
every member name stays, and each long string is cut to an equal share, ending with how long it was and a
SHA-256 of the whole (so the value an upstream logged can still be matched). Only if the names themselves
do not fit are members dropped (counted). ``rpc_id`` and ``rpc_method`` get a bound of their own: a 3 MB
string id made a 3 MB row. Called only on the rare oversized value: the common path is one ``len``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_TEXT_CHARS = 256  # rpc_id (JSON-encoded) and rpc_method
MIN_SHARE = 16  # the shortest a string is cut to before members are dropped instead
MARK = "…(truncated"  # in every cut value (``valet policy replay`` looks for it: a cut row is not replayed exactly)


def bounded_text(value: str | None, limit: int = MAX_TEXT_CHARS) -> str | None:
    """``value`` itself when it fits, else its first ``limit`` characters and how long it was, with a hash."""
    if value is None or len(value) <= limit:
        return value
    return value[:limit] + _cut_marker(value)


def bounded_path(path: str, limit: int) -> str:
    """A request target cut to about ``limit`` characters with every query parameter still named: each value
    is shortened (to an equal share of the room, at least MIN_SHARE characters) before anything is dropped,
    so an agent cannot push the parameter that mattered out of the row with padding before it (review 4,
    H11); the marker gives the whole target's length and hash."""
    if len(path) <= limit:
        return path
    base, sep, query = path.partition("?")
    if not sep or len(base) >= limit:
        return bounded_text(path, limit) or ""
    params = query.split("&")
    share = max(MIN_SHARE, (limit - len(base) - 1) // len(params))
    kept = []
    for param in params:
        name, eq, value = param.partition("=")
        kept.append(name[:share] + eq + (value[:share] + "…" if len(value) > share else value))
    return (base + "?" + "&".join(kept))[:limit] + _cut_marker(path)


def _cut_marker(value: str) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{MARK}: {len(value)} chars, sha256 {digest})"


def bounded_arguments(text: str, limit: int) -> str:
    """JSON ``text`` (already scrubbed) cut to about ``limit`` characters without losing its member names.

    Strings are cut to a share that halves until the whole fits; then arrays and objects keep their first
    members and count the rest (``"…": "N more"``). Text that is not JSON is cut at the end, as before.
    """
    if len(text) <= limit:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text[:limit] + _cut_marker(text)
    share = max(MIN_SHARE, limit // 4)
    while share >= MIN_SHARE:
        cut = _dump(_cut_strings(value, share))
        if len(cut) <= limit:
            return cut
        share //= 2
    keep = 64
    while keep >= 1:
        cut = _dump(_cut_members(_cut_strings(value, MIN_SHARE), keep))
        if len(cut) <= limit:
            return cut
        keep //= 2
    return text[:limit] + _cut_marker(text)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _cut_strings(value: Any, share: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= share else value[:share] + _cut_marker(value)
    if isinstance(value, dict):
        return {(k if len(k) <= share else k[:share] + _cut_marker(k)): _cut_strings(v, share)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, share) for v in value]
    return value


def _cut_members(value: Any, keep: int) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        cut = {k: _cut_members(v, keep) for k, v in items[:keep]}
        if len(items) > keep:
            cut["…"] = f"{MARK}: {len(items) - keep} more members)"
        return cut
    if isinstance(value, list):
        cut = [_cut_members(v, keep) for v in value[:keep]]
        if len(value) > keep:
            cut.append(f"{MARK}: {len(value) - keep} more items)")
        return cut
    return value
