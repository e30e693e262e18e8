"""Find a valet key anywhere in a request, so that none ever reaches an upstream.

A valet key is a credential for Valet alone. An agent (or a confused client
library) may put it in more places than the one Valet reads: a query parameter
(``?api_key=vk_...``), a custom header, a cookie, ``Authorization`` in forward
mode. Valet removes the header it authenticates with; everything else that
carries the caller's key, or any token shaped like a valet key (someone
else's key must not travel either), is refused; so is a JSON-RPC body holding
one (checked before the body is described in the audit row, which must never
hold a key either). Values are checked as sent
and percent-decoded (``+`` as space too), so an encoded key is found as well.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from urllib.parse import unquote, unquote_plus

from addon.identity import KEY_PREFIX

# vk_<12 hex>_<token_urlsafe(32)>; matched loosely (any case, shorter tails) to catch look-alike forms too.
KEY_SHAPE = re.compile(re.escape(KEY_PREFIX) + r"[0-9A-Fa-f]{6,}_[A-Za-z0-9_\-]{8,}", re.IGNORECASE)


def _forms(value: str) -> Iterable[str]:
    yield value
    if "%" in value or "+" in value:
        yield unquote(value)
        yield unquote_plus(value)


def carries_key(value: str, key: str | None) -> bool:
    """True when ``value`` holds ``key`` or anything shaped like a valet key, raw or percent-decoded."""
    for form in _forms(value):
        if (key and key in form) or KEY_SHAPE.search(form):
            return True
    return False


def bearer_or_basic_key(value: str) -> str | None:
    """The credential of an ``Authorization``-shaped value: a Bearer token, or the whole decoded Basic pair.

    For Basic this is ``user:password`` as decoded, not just the password: curl's
    ``-u KEY:`` puts the key in the user name, and a search that looked only at
    the password let it reach an upstream. The caller searches the result for a
    key, so holding both parts is what it needs.
    """
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer":
        return token or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(token, validate=True).decode("utf-8") or None
        except (binascii.Error, ValueError):
            return None
    return None


def misplaced_key(
    key: str | None, headers: Iterable[tuple[str, str]], query: Iterable[tuple[str, str]], raw_path: str,
) -> str | None:
    """Where a valet key still is in this request (a header name, ``query`` or ``path``), or None."""
    for name, value in headers:
        if carries_key(name, key) or carries_key(value, key):
            return f"the {name.lower()} header"
        # Any header may carry "Basic <base64>" (X-Authorization, a custom auth header): decode them all.
        token = bearer_or_basic_key(value)
        if token:
            if carries_key(token, key):
                return f"the {name.lower()} header"
    for name, value in query:
        if carries_key(name, key) or carries_key(value, key):
            return "the query"
    if carries_key(raw_path, key):
        return "the path"
    return None


def body_carries_key(raw: bytes, canonical: Callable[[], bytes]) -> bool:
    """True when a JSON-RPC body holds anything shaped like a valet key, raw or behind JSON escapes.

    ``canonical`` (the re-serialization that would be forwarded, escapes resolved)
    is only computed when the raw text has a backslash, i.e. could hide one; the
    percent-decoded forms only when there is a ``%`` or ``+``.
    """
    text = raw.decode("utf-8", "replace")
    if "\\" in text:
        text = canonical().decode("utf-8", "replace")
    return any(KEY_SHAPE.search(form) for form in _forms(text))
