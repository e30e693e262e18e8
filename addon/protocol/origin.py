"""Origin and Host, checked as the MCP transport asks of a server (to its agents, Valet is the server).

A browser page can reach a loopback Valet through DNS rebinding: its own name
resolves to 127.0.0.1, the browser sends ``Host: evil.example`` and
``Origin: http://evil.example``. The streamable HTTP transport says servers
must validate ``Origin``; since Valet rewrites ``Host`` to the upstream's own,
the upstream can no longer check either, so Valet does:

- a request with an ``Origin`` header is refused unless it matches
  ``allowed_origins`` (``null`` included); requests without one (every
  non-browser client) are unaffected;
- in reverse mode the ``Host`` must be one of Valet's own names
  (``allowed_hosts``): by default the listen address, ``localhost``,
  ``127.0.0.1`` and ``[::1]``, with the listen port.

Patterns are case-insensitive globs where only ``*`` (any run of characters)
and ``?`` (one character) are special, so ``[::1]`` is literal
(``http://localhost:*``). A host pattern without a port matches any port.
"""

from __future__ import annotations

import re
from functools import lru_cache

DEFAULT_ORIGINS = (
    "http://localhost", "http://localhost:*", "http://127.0.0.1", "http://127.0.0.1:*",
    "http://[::1]", "http://[::1]:*",
    "https://localhost", "https://localhost:*", "https://127.0.0.1", "https://127.0.0.1:*",
    "https://[::1]", "https://[::1]:*",
)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_WILDCARD_LISTEN = ("", "0.0.0.0", "::", "[::]")


def default_hosts(listen_host: str, listen_port: int) -> tuple[str, ...]:
    """Valet's own names when none are configured: loopback names and the listen address, with its port."""
    names = list(LOOPBACK_NAMES)
    host = listen_host.strip().lower()
    if host not in _WILDCARD_LISTEN:
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return tuple(f"{name}:{listen_port}" for name in dict.fromkeys(names))


_SERIALIZED_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(?:\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?")


def origin_allowed(origin: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether an Origin header value is a well-formed origin (scheme://host[:port], nothing else) that a
    pattern allows; ``null`` only if a pattern says exactly ``null``."""
    value = origin.strip().lower()
    if value == "null":
        return "null" in (p.strip().lower() for p in patterns)
    if not _SERIALIZED_ORIGIN.fullmatch(value):
        return False
    return any(fnmatchcase(value, pattern.strip().lower()) for pattern in patterns)


def split_authority(authority: str, default_port: int) -> tuple[str, int] | None:
    """``host[:port]`` -> (lowercased host, brackets kept for IPv6, port), or None if malformed."""
    value = authority.strip().lower()
    if not value or any(ord(c) < 0x21 or ord(c) > 0x7E for c in value) or "@" in value or "/" in value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
    else:
        host, sep, port_text = value.partition(":")
        rest = sep + port_text
    if not rest:
        return host, default_port
    if not rest.startswith(":") or not rest[1:].isdigit() or not 0 < int(rest[1:]) < 65536:
        return None
    return host, int(rest[1:])


def host_allowed(authority: str, patterns: tuple[str, ...] | list[str], default_port: int = 80) -> bool:
    parsed = split_authority(authority, default_port)
    if parsed is None:
        return False
    host, port = parsed
    hostport = f"{host}:{port}"
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if fnmatchcase(hostport, pattern):
            return True
        if not _has_port(pattern) and fnmatchcase(host, pattern):
            return True  # no port in the pattern: any port
    return False


def _has_port(pattern: str) -> bool:
    tail = pattern.rsplit("]", 1)[-1] if pattern.startswith("[") else pattern
    return ":" in tail


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), re.DOTALL)


def fnmatchcase(value: str, pattern: str) -> bool:
    """``*`` and ``?`` globbing only: brackets are literal (IPv6 hosts)."""
    return _glob(pattern).fullmatch(value) is not None
