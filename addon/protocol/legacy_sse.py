"""The legacy HTTP+SSE transport (MCP 2024-11-05): rewrite its ``endpoint`` event to Valet's own mount.

In that transport the agent opens a GET event stream; the server's first event,
``endpoint``, names the URL the agent must POST its JSON-RPC messages to,
usually ``/messages/?session_id=<id>``, resolved against the stream's URL.
Relayed as is, it names the upstream's path (wrong in reverse mode) or, from a
hostile upstream, another origin that a client following it would send its
valet key to. So every ``endpoint`` event is resolved against the upstream URL
of the stream and:

- refused (the event is dropped and the stream ends) unless it stays on the
  upstream's origin and under the configured server URL's path, in the
  normal form :func:`addon.protocol.routing.normalize_path` accepts;
- refused too when resolving or normalizing it would change any of its
  characters: dot segments (``x/../y``, also percent-encoded), empty segments
  (``//``), a backslash, escapes normalization rewrites. Such a rewrite builds
  new bytes out of upstream bytes AFTER the scrubber saw them, so it could
  assemble a secret (``fake/x/../alice-token`` becomes ``fake/alice-token``).
  The endpoint the agent gets is the upstream's text, prefix swapped, and the
  hook scrubs the rewritten event once more anyway;
- rewritten to Valet's mount: ``/<server><rest>?<query>`` in reverse mode,
  the origin-relative upstream path in forward mode (the agent resolves it
  against the URL it used, which Valet routes back to the same server);
- its query parameters (``session_id``) are returned, so that the caller binds
  them to the key that opened the stream.

Pure functions on bytes and strings; the hook is ``addon.hooks.legacy``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urljoin, urlsplit

from addon.protocol.errors import Refusal
from addon.protocol.routing import Upstream, normalize_path
from addon.protocol.sse import join_event, split_event

MAX_ENDPOINT_CHARS = 2048


class EndpointRefused(Exception):
    """The endpoint event names somewhere Valet does not route this server's agents to."""


@dataclass(frozen=True, slots=True)
class Mount:
    mode: str  # reverse | forward
    server: str
    upstream: Upstream
    stream_url: str  # the upstream URL the event stream was fetched from


def event_name(others: list[bytes]) -> bytes | None:
    for line in others:
        if line.startswith(b"event:"):
            value = line[6:]
            return value[1:] if value.startswith(b" ") else value
    return None


def rewrite_endpoint(data: str, mount: Mount) -> tuple[str, list[tuple[str, str]]]:
    """(the endpoint the agent gets, the query parameters to bind), or EndpointRefused."""
    text = data.strip()
    if not text or len(text) > MAX_ENDPOINT_CHARS or not text.isascii() or \
            any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise EndpointRefused("the endpoint is empty, too long or not printable ASCII")
    _refuse_transformations(text)
    resolved = urlsplit(urljoin(mount.stream_url, text))
    upstream = mount.upstream
    try:
        port = resolved.port or (443 if resolved.scheme == "https" else 80)
    except ValueError:
        raise EndpointRefused("the endpoint has an invalid port") from None
    if (resolved.scheme, (resolved.hostname or "").lower(), port) != (upstream.scheme, upstream.host, upstream.port):
        raise EndpointRefused("the endpoint is on another origin than the server's")
    if resolved.username or resolved.password or resolved.fragment:
        raise EndpointRefused("the endpoint carries credentials or a fragment")
    try:
        path = normalize_path(resolved.path or "/") or "/"
    except Refusal as refusal:
        raise EndpointRefused(f"the endpoint's path is refused: {refusal.message}") from None
    own_path = urlsplit(text).path
    if path != resolved.path or not (own_path == path or (not own_path.startswith("/") and path.endswith("/" + own_path))):
        raise EndpointRefused("the endpoint is not in normal form (Valet does not rewrite upstream bytes)")
    prefix = upstream.path
    if prefix and not (path == prefix or path.startswith(prefix + "/")):
        raise EndpointRefused("the endpoint is outside the server's URL")
    query = "?" + resolved.query if resolved.query else ""
    rest = path[len(prefix):] if prefix else ("" if path == "/" else path)
    endpoint = f"/{mount.server}{rest}{query}" if mount.mode == "reverse" else f"{path}{query}"
    return endpoint, parse_qsl(resolved.query, keep_blank_values=True)


_DOT_SEGMENT = re.compile(r"(?:^|/)(?:\.|%2[eE]){1,2}(?:[/;?#]|$)")


def _refuse_transformations(text: str) -> None:
    """Anything :func:`urljoin` or :func:`normalize_path` would resolve, collapse or re-encode is refused."""
    path = re.split(r"[?#]", text, maxsplit=1)[0]
    after_authority = path.split("//", 1)[1].partition("/")[2] if "://" in path or path.startswith("//") else path
    if _DOT_SEGMENT.search(after_authority):
        raise EndpointRefused("the endpoint has a dot segment")
    if "//" in after_authority or "\\" in text:
        raise EndpointRefused("the endpoint has an empty segment or a backslash")


def rewrite_event(event: bytes, mount: Mount) -> tuple[bytes, list[tuple[str, str]]]:
    """One complete SSE event: an ``endpoint`` event rewritten (bindings returned), any other as is."""
    if b"endpoint" not in event:
        return event, []
    others, data, eol = split_event(event)
    if event_name(others) != b"endpoint":
        return event, []
    try:
        text = (data or b"").decode("ascii")
    except UnicodeDecodeError:
        raise EndpointRefused("the endpoint is not ASCII") from None
    endpoint, params = rewrite_endpoint(text, mount)
    return join_event(others, endpoint.encode(), eol), params
