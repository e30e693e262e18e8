"""Request shapes that make an upstream (or something in front of it) read another request than Valet judged.

Pure functions on header pairs and query pairs, refused before routing matters:

- protocol upgrades (``Upgrade``, ``Connection: upgrade``): after a ``101`` the
  connection is no longer HTTP, so nothing after it could be parsed, judged,
  scrubbed or audited. Refused for every server kind and for passthrough.
- method overrides (``?_method=DELETE``, ``X-HTTP-Method-Override``...): many
  frameworks act on them, so the policy would judge a GET that runs as a DELETE.
  Query names are compared under every reading frameworks make (percent-decoding,
  PHP's name mangling: ``?.method=`` is ``$_GET['_method']``, case, whitespace,
  ``;`` as a separator): see :mod:`addon.protocol.method_override`, which also
  reads bodies (called from the RpcInspector, once the body is buffered).
- URL-rewrite and forwarding headers (``X-Original-URL``, ``X-Rewrite-URL``,
  ``X-Forwarded-Prefix``, ``X-Forwarded-Host``, ``Forwarded``...): IIS, Symfony,
  Spring and many reverse proxies route on them instead of the request line, and
  URL builders (a legacy SSE ``endpoint``, a redirect) use them to name an origin.

- header names with an underscore (``X_Original_URL``, ``Mcp_Session_Id``):
  CGI, WSGI (wsgiref), PHP and others fold ``-`` and ``_`` into one
  ``HTTP_X_ORIGINAL_URL`` key, so the name Valet compared is not the name the
  upstream reads. All of them are refused, not just the folded forms of the
  names Valet guards: the guarded set is long (rewrite, override, forwarding,
  authorization, cookies, ``mcp-*``, content headers, every header a server's
  ``headers:`` injects) and grows, and one missed entry is a bypass; nginx
  drops such headers by default (``underscores_in_headers off``) and no MCP
  client sends one.
- folded header values (obs-fold, a continuation line starting with a space or
  tab): RFC 9112 section 5.2 lets a server refuse them, and a downstream parser
  that unfolds differently reads another header.

Refusing rather than stripping tells a misconfigured client why, and no
legitimate MCP client sends any of them.
"""

from __future__ import annotations

from collections.abc import Iterable

from addon.protocol.errors import Cause, Refusal
from addon.protocol.method_override import METHOD_OVERRIDE_PARAMS, form_overrides, names_override

__all__ = ["METHOD_OVERRIDE_HEADERS", "METHOD_OVERRIDE_PARAMS", "REWRITE_HEADERS", "check_header_names",
           "check_request_line", "check_upgrade"]

METHOD_OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
REWRITE_HEADERS = frozenset({
    "x-original-url", "x-rewrite-url", "x-original-uri", "x-forwarded-prefix", "x-forwarded-path",
    "x-forwarded-uri", "x-envoy-original-path", "x-forwarded-host", "x-forwarded-server", "x-forwarded-proto",
    "x-forwarded-port", "x-forwarded-scheme", "x-url-scheme", "x-host", "x-http-host-override", "forwarded",
})


def check_upgrade(headers: Iterable[tuple[str, str]]) -> None:
    """Refuse any request asking to leave HTTP (WebSocket, h2c, anything else)."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == "upgrade" or (lowered == "connection" and "upgrade" in value.lower()) or \
                lowered in ("http2-settings", "sec-websocket-key"):
            raise Refusal(Cause.UPGRADE_REFUSED, "protocol upgrades (WebSocket, h2c) are not proxied")


def check_header_names(headers: Iterable[tuple[str, str]]) -> None:
    """Refuse underscore header names and folded (multi-line) header values: both are read differently."""
    for name, value in headers:
        if "_" in name:
            raise Refusal(Cause.UNDERSCORE_HEADER, f"header names with an underscore are not accepted "
                          f"({name.lower()!r}; use '-')")
        if "\r" in value or "\n" in value:
            raise Refusal(Cause.FOLDED_HEADER, f"the {name.lower()!r} header is folded over several lines")


def check_request_line(headers: Iterable[tuple[str, str]], query: Iterable[tuple[str, str]],
                       raw_query: str = "") -> None:
    """Refuse method overrides and URL-rewrite headers: the request line is the only request.

    ``query`` is the decoded query (mitmproxy's reading); ``raw_query`` the query string as sent, read
    again as a framework may (``;`` separators, names decoded more than once).
    """
    for name, _ in headers:
        lowered = name.lower()
        if lowered in METHOD_OVERRIDE_HEADERS:
            raise Refusal(Cause.METHOD_OVERRIDE, f"method-override header {lowered!r} is not accepted")
        if lowered in REWRITE_HEADERS:
            raise Refusal(Cause.REWRITE_HEADER, f"URL-rewrite or forwarding header {lowered!r} is not accepted")
    if names_override(name for name, _ in query) or (
            raw_query and form_overrides(raw_query.encode("utf-8", "surrogateescape"))):
        raise Refusal(Cause.METHOD_OVERRIDE, "method-override query parameters are not accepted")
