"""The mitmproxy side of Valet: one addon that runs small stages, each a thin shell over the pure core.

mitmproxy walks its whole addon list for every event of every flow, whether an
addon implements the event or not, and that walk is most of what an addon
costs. So mitmproxy sees one addon, :class:`Valet`, which runs the stages in a
fixed order (and Valet's master looks each event's hooks up once:
:mod:`addon.protocol.mitm_dispatch`); each stage is still its own small class with one concern:

    open the exchange -> check Origin/Host -> authenticate -> route -> check the session
    -> refuse canaries -> parse
    -> decide (policy, rate) -> inject -> rebuild Mcp-Param-* -> write ahead -> (upstream)
    -> filter the response -> rewrite legacy SSE endpoints -> record

The write-ahead step is not a stage in the list: the dispatcher runs it after the request-side
stages of every request hook, so that a refusal's row is committed before the refusal is sent
and a forwarded request's row before it is forwarded (:class:`~addon.hooks.recorder.WriteAhead`).

Every stage hook returns at once when an earlier stage already answered the
flow, and every hook, the stages' and this dispatcher's, fails closed
(:mod:`.failsafe`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import connection, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks

from addon.hooks.authenticate import Authenticator
from addon.hooks.canary import CanaryTrap
from addon.hooks.inject import Injector
from addon.hooks.legacy import LegacyEndpoints
from addon.hooks.oauthretry import OAuthReplay
from addon.hooks.origin import OriginGuard
from addon.hooks.paramheaders import ParamHeaderGuard
from addon.hooks.failsafe import fail_closed
from addon.hooks.gate import PolicyGate
from addon.hooks.parse import RpcInspector
from addon.hooks.recorder import ExchangeOpener, ExchangeRecorder, WriteAhead
from addon.hooks.relay import ResponseFilter
from addon.hooks.router import Router
from addon.hooks.sessions import SessionGuard
from addon.hooks.state import ValetState
from addon.hooks.wellknown import FirstContact
from addon.hooks.watchdog import Watchdog
from addon.ops import metrics


def _chain(stages: list[Any], hook: str) -> list[Callable[..., Any]]:
    return [getattr(stage, hook) for stage in stages if hasattr(stage, hook)]


class Valet:
    def __init__(self, on_running: Callable[[], None] | None = None) -> None:
        self.on_running = on_running
        state = self.state = ValetState()
        injector = Injector(state)
        sessions = SessionGuard(state)
        stages = [
            ExchangeOpener(state),
            OriginGuard(state),
            FirstContact(state),  # OAuth discovery, "/", a key without "Bearer": answered before authentication
            Authenticator(state),
            Router(state),
            sessions,
            CanaryTrap(state),  # before anything parses or forwards a request that carries a canary
            RpcInspector(state),
            PolicyGate(state),
            injector,
            ParamHeaderGuard(state, injector.schemas),
            OAuthReplay(state, sessions.bind_answer),
            ResponseFilter(state),
            LegacyEndpoints(state, sessions),  # wraps the relay ResponseFilter installed
            Watchdog(state),  # timeouts, revocation and kill switches cut exchanges in transit
            ExchangeRecorder(state),
        ]
        self.stages = stages
        self.write_ahead = WriteAhead(state)
        self._http_connect = _chain(stages, "http_connect")
        self._requestheaders = _chain(stages, "requestheaders")
        self._request = _chain(stages, "request")
        self._responseheaders = _chain(stages, "responseheaders")
        self._response = _chain(stages, "response")
        self._error = _chain(stages, "error")
        self._client_disconnected = _chain(stages, "client_disconnected")
        self._server_connect = _chain(stages, "server_connect")

    # lifecycle: the state owns options, config, key ring, vault and audit writer
    def load(self, loader: Loader) -> None:
        self.state.load(loader)

    def configure(self, updated: set[str]) -> None:
        self.state.configure(updated)
        for stage in self.stages:
            configure = getattr(stage, "configure", None)
            if configure is not None:
                configure(updated)

    def running(self) -> None:
        self.state.running()
        if self.on_running is not None:
            self.on_running()

    async def done(self) -> None:
        for stage in self.stages:
            close = getattr(stage, "done", None)
            if close is not None:
                await close()
        await self.state.done()

    # flow events
    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        await _run(self._http_connect, flow)
        await self.write_ahead.commit(flow, forwarding=False)
        metrics.flow_done(flow)

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        await _run(self._requestheaders, flow)
        await self.write_ahead.commit(flow, forwarding=False)

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        await _run(self._request, flow)
        if flow.response is None and flow.error is None:
            frame(flow.request)
        await self.write_ahead.commit(flow, forwarding=True)
        metrics.forwarded(flow)

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        for hook in self._responseheaders:
            hook(flow)
        metrics.response_headers(flow)

    @fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        for hook in self._response:
            result = hook(flow)
            if result is not None:  # an async stage hook's coroutine (see _run)
                await result
        metrics.flow_done(flow)

    async def error(self, flow: http.HTTPFlow) -> None:
        for hook in self._error:
            result = hook(flow)
            if result is not None:  # the recorder holds a refusal mitmproxy sends next until its row is committed
                await result
        metrics.flow_done(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        for hook in self._client_disconnected:
            hook(client)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        for hook in self._server_connect:
            hook(data)


async def _run(hooks: list[Callable[[http.HTTPFlow], Any]], flow: http.HTTPFlow) -> None:
    """Stage hooks are ``-> None``, sync or async (wrapped by :func:`~addon.hooks.failsafe.fail_closed`, which
    returns None): a result that is not None is an async hook's coroutine. ``is not None`` instead of
    ``inspect.isawaitable`` per hook and event (an ABC check for every sync hook's None: ~0.3 µs, ~20 a call)."""
    for hook in hooks:
        result = hook(flow)
        if result is not None:
            await result
        if flow.response is not None or flow.error is not None:
            return  # answered (refused) by this stage: the later ones have nothing to add


def frame(request: http.Request) -> None:
    """Decide the framing of a forwarded request from the bytes Valet judged, whatever the agent sent.

    mitmproxy converts an HTTP/2 request (which needs no length) to HTTP/1.1 without adding a length and
    writes its body raw after the head: an upstream then reads the body as a second request nobody judged.
    A ``Transfer-Encoding`` next to a length is the classic desync as well. Every body is buffered
    (``stream_large_bodies`` is never set), so its length is known: say it, and nothing else.
    """
    body = request.raw_content
    if body is None:
        raise RuntimeError("a request body was not buffered; its framing cannot be decided")
    request.headers.pop("transfer-encoding", None)
    if body or "content-length" in request.headers or request.method.upper() in _BODY_METHODS:
        request.headers["content-length"] = str(len(body))


# Methods whose requests always say their length (RFC 9110 §8.6: a user agent SHOULD send Content-Length
# for a POST or PUT even when the body is empty), so an upstream never waits for a body or reads past it.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def valet_addons(on_running: Callable[[], None] | None = None) -> list[object]:
    return [Valet(on_running)]


__all__ = ["Valet", "ValetState", "frame", "valet_addons"]
