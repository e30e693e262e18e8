"""Which configured server a request is for, and where it goes upstream.

Pure functions on strings. A path suffix is normalized before it is used and the
normalized form is what goes upstream: a suffix may never climb out of the
server's URL prefix, whatever the encoding (`..`, `%2e%2e`, `%2f`, backslashes).
Rather than resolving such segments, we refuse them: no legitimate MCP client
sends them, and refusing removes a whole class of parser differentials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from addon.config import ServerConfig, ValetConfig
from addon.protocol.errors import Cause, Refusal
from addon.protocol.paths import segment_problem


@dataclass(frozen=True, slots=True)
class Upstream:
    """A parsed server URL, kept ready so that routing does no parsing per request."""

    name: str
    scheme: str
    host: str
    port: int
    path: str  # without trailing slash, "" for the root

    @classmethod
    def from_config(cls, name: str, server: ServerConfig) -> Upstream:
        parts = urlsplit(server.url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(name, scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/"))


@dataclass(frozen=True, slots=True)
class Route:
    server: str
    scheme: str
    host: str
    port: int
    path: str  # normalized path plus query, what is sent upstream


class RouteTable:
    """Routes for one config; built once per config load."""

    def __init__(self, config: ValetConfig) -> None:
        self.upstreams = {name: Upstream.from_config(name, s) for name, s in config.servers.items()}
        self.passthrough = {_hostport_key(p) for p in config.passthrough}

    def reverse(self, raw_path: str) -> Route:
        """`/<server><suffix>?query` -> that server's URL + suffix + query."""
        path, sep, query = raw_path.partition("?")
        if not path.startswith("/"):
            raise Refusal(Cause.BAD_PATH, "request path must start with '/'")
        name, slash, rest = path[1:].partition("/")
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise Refusal(Cause.UNKNOWN_SERVER, f"no server named {_printable(name)!r} is configured")
        suffix = normalize_path("/" + rest) if slash else ""
        return _route(upstream, suffix, sep + query)

    def forward(self, scheme: str, host: str, port: int, raw_path: str) -> Route | None:
        """The server whose URL contains this absolute URL; None for allowed passthrough."""
        path, sep, query = raw_path.partition("?")
        normalized = normalize_path(path or "/")
        host = host.lower()
        for upstream in self.upstreams.values():
            if (upstream.scheme, upstream.host, upstream.port) != (scheme, host, port):
                continue
            if normalized == upstream.path or normalized.startswith(upstream.path + "/"):
                return _route(upstream, normalized[len(upstream.path):], sep + query)
        if self.allows_passthrough(host, port):
            return None
        raise Refusal(
            Cause.NOT_ALLOWED_DESTINATION,
            f"{scheme}://{_printable(host)}:{port} is neither a configured server nor allowed passthrough",
        )

    def allows_host(self, host: str, port: int) -> bool:
        """Whether a CONNECT to host:port can lead anywhere (a server or passthrough)."""
        host = host.lower()
        return self.allows_passthrough(host, port) or any(
            (u.host, u.port) == (host, port) for u in self.upstreams.values()
        )

    def allows_passthrough(self, host: str, port: int) -> bool:
        return host in self.passthrough or f"{host}:{port}" in self.passthrough


def _route(upstream: Upstream, suffix: str, query: str) -> Route:
    path = (upstream.path + suffix) or "/"
    return Route(upstream.name, upstream.scheme, upstream.host, upstream.port, path + query)


def normalize_path(path: str) -> str:
    """The RFC 3986 normal form of a path, refusing anything that could climb or be read two ways.

    Each segment is fully percent-decoded for the checks: ``.`` and ``..``
    (also as ``..;params``, which Java servers resolve), encoded ``/`` or
    ``\\``, control characters and invalid UTF-8 (overlong forms included) are
    refused, and so is whatever :func:`addon.protocol.paths.segment_problem`
    finds a lenient decoder could read differently (double encoding, ``%u``,
    NFKC look-alikes of ``.`` ``/`` ``\\``, trailing dots or spaces). What is
    forwarded keeps every reserved character as the agent encoded it
    (``;`` and ``%3B`` stay different), decodes only unreserved characters,
    upper-cases the remaining escapes and collapses empty segments (``//``).
    """
    if not path.isascii():
        raise Refusal(Cause.BAD_PATH, "path must be ASCII (percent-encode anything else)")
    out: list[str] = []
    for raw in path.split("/")[1:]:
        if _BAD_ESCAPE.search(raw):
            raise Refusal(Cause.BAD_PATH, "path has a malformed percent-escape")
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise Refusal(Cause.BAD_PATH, "path is not valid UTF-8 once percent-decoded") from None
        if segment in (".", "..") or segment.partition(";")[0] in (".", ".."):
            raise Refusal(Cause.BAD_PATH, "path may not contain '.' or '..' segments")
        if "/" in segment or "\\" in segment or any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment):
            raise Refusal(Cause.BAD_PATH, "path may not contain encoded separators or control characters")
        problem = segment_problem(segment.partition(";")[0]) or segment_problem(segment)
        if problem:
            raise Refusal(Cause.BAD_PATH, f"path is ambiguous: {problem}")
        if raw:
            out.append(_ESCAPE.sub(_normal_escape, _UNSAFE.sub(_escape_char, raw)))
    trailing = "/" if path.endswith("/") and out else ""
    return "/" + "/".join(out) + trailing if out else ""


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Characters that may not appear unencoded in a path segment (RFC 3986 pchar, '%' handled apart).
_UNSAFE = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@%]")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _normal_escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _escape_char(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode())


def _hostport_key(entry: str) -> str:
    return entry.strip().lower()


def _printable(text: str, limit: int = 64) -> str:
    """Bound and neutralize user-supplied text before echoing it in an error."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")
