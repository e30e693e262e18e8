"""Where a request goes: a configured server (reverse path or forward URL), or nowhere.

Routing happens in ``requestheaders``, so that with mitmproxy's lazy connection
strategy no upstream connection is opened before the decision. What goes
upstream is the normalized path from :mod:`addon.protocol.routing`, never the raw one.
"""

from __future__ import annotations

from mitmproxy import connection, http
from mitmproxy.net.http import url
from mitmproxy.proxy import server_hooks

from addon.protocol.errors import Cause, Refusal
from addon.protocol.request_checks import check_header_names, check_request_line, check_upgrade
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, answered, exchange_of, refuse


class Router:
    def __init__(self, state: ValetState) -> None:
        self.state = state
        self._tunnels: dict[str, tuple[str, int]] = {}

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        host, port = flow.request.host.lower(), flow.request.port
        exchange = exchange_of(flow)
        if exchange is None or not exchange.snapshot.routes.allows_host(host, port):
            refuse(flow, Refusal(Cause.NOT_ALLOWED_DESTINATION, f"CONNECT to {host}:{port} is not allowed"))
            self.state.record_refused_connect(flow)
            return
        self._tunnels[flow.client_conn.id] = (host, port)

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        request = flow.request
        exchange = exchange_of(flow)
        if exchange is None:
            return
        routes = exchange.snapshot.routes
        try:
            # Every kind of server and passthrough alike: nothing may leave HTTP or be read as another request.
            check_header_names(request.headers.items(multi=True))
            check_upgrade(request.headers.items(multi=True))
            check_request_line(request.headers.items(multi=True), request.query.items(multi=True),
                               request.path.partition("?")[2])
            if not request.path.startswith("/"):
                # An h2 ``:path`` is taken as written (``http://other.example/x``, ``*``) and would reach an
                # HTTP/1 upstream as an absolute-form target naming an origin Valet never allowed.
                raise Refusal(Cause.ABSOLUTE_TARGET, "send the request target as a path starting with /")
            if self.state.mode == "reverse":
                if request.authority and request.http_version.startswith("HTTP/1"):
                    # absolute-form (``POST http://evil.example.com/x``): a reverse proxy has one origin, and an
                    # upstream or URL builder behind it may read the target's host instead of Valet's route.
                    raise Refusal(Cause.ABSOLUTE_TARGET, "send the request target as a path (origin-form)")
                route = routes.reverse(request.path)
            else:
                self._check_tunnel_host(flow)
                route = routes.forward(request.scheme, request.host, request.port, request.path)
        except Refusal as refusal:
            refuse(flow, refusal)
            return
        if route is not None:
            exchange.server = route.server
            request.scheme, request.host, request.port = route.scheme, route.host, route.port
            request.path = route.path
            # Bodies coming back must be readable (to stream SSE event by event, to redact):
            # ask for no content coding rather than decode what we did not ask for.
            request.headers["accept-encoding"] = "identity"
        # Routed or passed through (still authenticated and audited), the upstream gets origin-form: an
        # absolute-form target would name the origin for it (RFC 9112 §3.2.2) instead of the Host Valet checked.
        _origin_form(request)
        # What would make the upstream send a part of an answer, or another charset, is not forwarded: the
        # scrubber matches whole values in UTF-8-family text, and overlapping byte ranges would let an agent
        # rebuild a secret from slices too short to match (review 4, H6). A server may ignore Range (RFC 9110
        # §14.2): it answers the whole, which is scrubbed whole. A 206 that comes anyway is refused (relay).
        for name in _NOT_FORWARDED:
            if name in request.headers:
                del request.headers[name]

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        """Refuse a request with trailers (h2, or HTTP/1 chunked): fields after the body that no stage judged.

        The key search, the header checks and the policy read the head; trailers would reach an HTTP/2
        upstream unread, and mitmproxy's HTTP/1 client crashes on them, logging their values.
        """
        if answered(flow) or not flow.request.trailers:
            return
        refuse(flow, Refusal(Cause.TRAILERS_REFUSED, "requests with trailers are not accepted"))

    def _check_tunnel_host(self, flow: http.HTTPFlow) -> None:
        """The Host header must name the CONNECT target, or the absolute URL's host (no domain fronting)."""
        tunnel = tunnel_target = self._tunnels.get(flow.client_conn.id)
        if tunnel is None:
            # A plain-HTTP proxy request: the Host header must name the absolute URL's authority, or a
            # passthrough upstream (forwarded as is) would serve the Host the agent chose instead.
            tunnel = (flow.request.host.lower(), flow.request.port)
        if tunnel_target is not None and flow.request.authority and (
                _authority(flow.request.authority, flow.request.port) != tunnel):
            # ``GET http://internal-admin.example/x`` inside a tunnel to an allowed origin: the target's
            # authority, not Host, is what an origin server serves (domain fronting).
            raise Refusal(Cause.ABSOLUTE_TARGET, "the request target names another host than the CONNECT target")
        if _authority(flow.request.host_header or "", flow.request.port) != tunnel:
            raise Refusal(Cause.NOT_ALLOWED_DESTINATION, "the Host header differs from the CONNECT target or URL")

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """An upstream that switches protocols on its own is not followed: mark the exchange before any relay."""
        exchange = exchange_of(flow)
        if exchange is not None and flow.response is not None and flow.response.status_code == 101:
            exchange.decision, exchange.reason = "error", Cause.UPSTREAM_ERROR.reason

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        """A ``101`` never reaches the agent: with it the connection would stop being HTTP (and unjudged)."""
        if flow.response is not None and flow.response.status_code == 101:
            refuse(flow, Refusal(Cause.UPSTREAM_ERROR, "the upstream tried to switch protocols; Valet relays HTTP only"),
                   "error")
            flow.response.headers["connection"] = "close"

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """The upstream TLS name is the host Valet routed to, never an SNI the agent chose."""
        if data.server.address is not None:
            data.server.sni = data.server.address[0]

    def client_disconnected(self, client: connection.Client) -> None:
        self._tunnels.pop(client.id, None)


def _authority(authority: str, default_port: int) -> tuple[str, int]:
    """(host, port) of an authority, lower-cased; a malformed one is refused."""
    try:
        host, port = url.parse_authority(authority, check=True)
    except ValueError:
        raise Refusal(Cause.NOT_ALLOWED_DESTINATION, "request has no valid Host header") from None
    return host.lower(), port or default_port


def _origin_form(request: http.Request) -> None:
    """Send the request target as a path: the authority (HTTP/1 absolute-form, or h2 ``:authority``) goes.

    For HTTP/2 the ``:authority`` is the request's Host: it moves into a Host header first (mitmproxy's
    HTTP/1 client does the same when it converts; its HTTP/2 client makes ``:authority`` from Host again).
    """
    if not request.authority:
        return
    if "host" not in request.headers:
        request.headers.insert(0, "Host", request.authority)
    request.authority = ""


_NOT_FORWARDED = ("range", "if-range", "accept-charset")
