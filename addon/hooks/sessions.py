"""Enforce the session-to-key binding of :mod:`addon.protocol.sessions` on live flows.

Two kinds of session id: the streamable HTTP transport's ``Mcp-Session-Id``
header (bound when the upstream issues it), and the legacy HTTP+SSE
transport's query parameter (``?session_id=``, bound when the ``endpoint``
event that carries it is relayed on the stream the key opened; see
:mod:`.legacy`). Either, presented with another key or never seen, is
refused on ANY path of the server, before anything is judged or forwarded.
Every GET event stream of an MCP server also gets its ``tools/list`` answers
filtered: on the legacy transport the answer to a POSTed tools/list arrives
there.
"""

from __future__ import annotations

from pathlib import Path

from mitmproxy import ctx, http

from addon.protocol.errors import Cause, Refusal
from addon.protocol.session_store import RedisSessions, SessionStore
from addon.protocol.sessions import DEFAULT_MAX_SESSIONS, SessionOwners
from addon.protocol.sse import is_event_stream
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, answered, exchange_of, refuse

# Query parameters naming a legacy session (the Python SDK's and the TypeScript SDK's), compared lowercased;
# names seen in relayed endpoint events are added (bounded).
LEGACY_SESSION_PARAMS = frozenset({"session_id", "sessionid"})
MAX_LEARNED_PARAMS = 16
STREAM_TOOLS_LIST = "valet:any-tools-list-on-this-stream"


class SessionGuard:
    def __init__(self, state: ValetState) -> None:
        self.state = state
        self.owners = SessionOwners()
        self.legacy_params: set[str] = set(LEGACY_SESSION_PARAMS)
        self._shared_url: str | None = None

    def configure(self, updated: set[str]) -> None:
        """The bindings of the data dir (``sessions.db``): loaded at startup, every change persisted."""
        if "valet_data_dir" in updated and ctx.options.valet_data_dir:
            self.owners.attach(SessionStore(Path(ctx.options.valet_data_dir) / "sessions.db", DEFAULT_MAX_SESSIONS))
        snapshot = self.state.snapshot
        storage = snapshot.config.rate_limits.storage if snapshot is not None else ""
        if self._shared_url != storage:
            self._shared_url = storage
            self.owners.shared = RedisSessions(storage) if storage.startswith("redis") else None

    async def done(self) -> None:
        self.owners.close()

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        exchange = exchange_of(flow)
        if exchange is None or exchange.server is None:
            return
        try:
            session_id = flow.request.headers.get("mcp-session-id")
            if session_id is not None:
                await self.owners.recall(exchange.server, session_id)
                self.owners.check(exchange.server, session_id, exchange.key_id)
            if exchange.snapshot.config.servers[exchange.server].kind == "mcp":  # an HTTP API's own query is its own
                exchange.legacy_transport = await self._check_legacy(flow, exchange.server, exchange.key_id)
        except Refusal as refusal:
            refuse(flow, refusal)

    async def _check_legacy(self, flow: http.HTTPFlow, server: str, key_id: str | None) -> bool:
        """Refuse a legacy session parameter that is not this key's; whether the request names one (then it is
        a POST of the 2024-11-05 HTTP+SSE transport, which has no per-request MCP headers)."""
        seen: set[str] = set()
        for name, value in flow.request.query.items(multi=True):
            lowered = name.strip().lower()
            if lowered not in self.legacy_params:
                continue
            if lowered in seen:  # one reader takes the first, another the last
                raise Refusal(Cause.INVALID_REQUEST, f"the {lowered} query parameter is given more than once")
            seen.add(lowered)
            await self.owners.recall(server, _legacy_id(lowered, value))  # bound by another Valet (Redis)?
            self.owners.check(server, _legacy_id(lowered, value), key_id)
        return bool(seen)

    def bind_legacy(self, server: str, params: list[tuple[str, str]], key_id: str) -> None:
        """An endpoint event was relayed on a stream ``key_id`` opened: its session parameters are that key's."""
        for name, value in params:
            lowered = name.strip().lower()
            if lowered not in self.legacy_params and len(self.legacy_params) < len(LEGACY_SESSION_PARAMS) + \
                    MAX_LEARNED_PARAMS:
                self.legacy_params.add(lowered)
            if lowered in self.legacy_params:
                self.owners.bind(server, _legacy_id(lowered, value), key_id)

    def bind_answer(self, flow: http.HTTPFlow) -> bool:
        """Bind the session id the upstream's answer issues to the caller's key (end one it ended).

        Run on every answer's headers, and again on an answer that replaced the first one (an OAuth
        replay, :mod:`.oauthretry`): otherwise the id a replayed ``initialize`` issues is never bound
        and the agent's next call on it is refused ``unknown_session``. False when the flow is not an
        allowed exchange with an upstream answer: only what the upstream said changes bindings.
        """
        exchange = exchange_of(flow)
        if (exchange is None or exchange.server is None or exchange.key_id is None or flow.response is None
                or exchange.decision != "allow"):
            return False
        issued = flow.response.headers.get("mcp-session-id")
        presented = flow.request.headers.get("mcp-session-id")
        if issued and issued != presented:
            self.owners.bind(exchange.server, issued, exchange.key_id)
        if presented and (flow.response.status_code == 404 or
                          (flow.request.method == "DELETE" and flow.response.status_code < 300)):
            self.owners.end(exchange.server, presented)
        return True

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Bind before the agent can see the new id: the headers go out after this hook."""
        exchange = exchange_of(flow)
        if not self.bind_answer(flow) or exchange is None:
            return
        outbound = exchange.outbound
        if (flow.request.method == "GET" and is_event_stream(flow.response.headers) and outbound is not None
                and not outbound.tools_list_ids):
            # A GET stream answers requests POSTed elsewhere (legacy transport): filter every tools list on it.
            outbound.tools_list_ids = frozenset({STREAM_TOOLS_LIST})


def _legacy_id(name: str, value: str) -> str:
    return f"?{name}={value}"
