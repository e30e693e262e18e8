"""Cut exchanges that must not go on: upstream timeouts, revoked keys and kill switches on open streams.

mitmproxy's only timeout is a 600 s inactivity timeout, after which the agent's connection is closed
with no answer; and a flow in transit cannot be killed (``flow.kill`` acts only at hook boundaries).
So one sweeper task looks at every forwarded exchange a few times a second and, when one is due,
marks how it ends (:data:`addon.protocol.mitm_limits.ENDINGS`) and closes its upstream connection:
the upstream request is cancelled, and the agent gets ``504 upstream_timeout`` (or ``revoked_key`` /
``disabled``) as a JSON-RPC error, or that error as the last SSE event of an open stream, then its
connection is closed. The audit row says why.

Deadlines (``timeouts`` in the configuration, global and per server): connect, first byte (response
head), idle between pieces of a streamed response, and a total per response. A standing GET stream
(the agent's own listening stream) is exempt from idle and total: it is quiet by nature.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, http

from addon.audit.exchange import Exchange
from addon.config import timeouts_for
from addon.protocol.sse import is_event_stream
from addon.hooks import oauthretry
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, answered, exchange_of
from addon.protocol.errors import Cause
from addon.protocol.mitm_conn import end_connecting, stream_of
from addon.protocol.mitm_limits import Ending, forget, set_ending, unsent
from addon.protocol.mitm_limits import _close_client as close_client

log = logging.getLogger("valet")
SWEEP_SECONDS = 0.2
SETTLE_SECONDS = 2.0  # how long a cut exchange's row waits to learn what the agent's side wrote
POLICY_CHECK_SECONDS = 0.5


@dataclass
class _Watch:
    flow: http.HTTPFlow
    exchange: Exchange
    limits: dict[str, float]
    started: float
    last: float
    standing: bool  # a GET event stream: no idle or total limit (a GET until its head says otherwise)
    headers: bool = False
    streamed: bool = False
    ending: Ending | None = field(default=None)
    unsent: int = 0  # body bytes an HTTP/2 agent's full window still held when the exchange was cut (dropped)


class Watchdog:
    def __init__(self, state: ValetState) -> None:
        self.state = state
        self._watches: dict[str, _Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._completing: set[asyncio.Task[None]] = set()

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        exchange = exchange_of(flow)
        if exchange is None:
            return
        now = asyncio.get_running_loop().time()
        limits = timeouts_for(exchange.snapshot.config, exchange.server)
        self._watches[flow.id] = _Watch(flow, exchange, limits, now, now, flow.request.method.upper() == "GET")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._sweep())

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        watch = self._watches.get(flow.id)
        if watch is None or flow.response is None:
            return
        watch.headers = True
        watch.last = asyncio.get_running_loop().time()
        # only an event stream opened by GET stands open for as long as it likes; a GET that answers a
        # plain body (an HTTP API, a large download) is bounded by the idle and total limits like any answer
        watch.standing = watch.standing and is_event_stream(flow.response.headers)
        stream = flow.response.stream
        if callable(stream):
            watch.streamed = True
            loop = asyncio.get_running_loop()

            def noted(chunk: bytes, _inner=stream):  # type: ignore[no-untyped-def]
                watch.last = loop.time()
                return _inner(chunk)

            flow.response.stream = noted

    def response(self, flow: http.HTTPFlow) -> None:
        self._watches.pop(flow.id, None)

    def error(self, flow: http.HTTPFlow) -> None:
        watch = self._watches.pop(flow.id, None)
        if watch is None or watch.ending is None or watch.exchange.recorded:
            return
        if flow.response is not None:  # taken now: the stream's reset drops them (mitm_limits.unsent)
            watch.unsent = unsent(flow.response)
        if watch.ending.settled:
            self._complete(watch)
            return
        # mitmproxy runs this hook before it hands the ending to the agent's side (mitm_limits._send): the row
        # is completed once that is done, with what was actually written (review 3, G13)
        watch.exchange.recorded = True  # no later stage completes it meanwhile
        task = asyncio.get_running_loop().create_task(self._complete_when_settled(watch))
        self._completing.add(task)
        task.add_done_callback(self._completing.discard)

    async def _complete_when_settled(self, watch: _Watch) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        await asyncio.sleep(0)
        while (not watch.ending.settled and watch.flow.client_conn.timestamp_end is None  # type: ignore[union-attr]
               and loop.time() < deadline):
            await asyncio.sleep(0.01)
        watch.exchange.recorded = False
        self._complete(watch)

    def _complete(self, watch: _Watch) -> None:
        """The row says what the agent got: Valet's whole answer, its error event after the upstream's head,
        the upstream's head and part of a streamed body, or nothing at all (its connection was closed)."""
        exchange, ending, response = watch.exchange, watch.ending, watch.flow.response
        assert ending is not None
        exchange.reason = ending.cause.reason
        exchange.error_code = ending.cause.code
        timeout = ending.cause is Cause.UPSTREAM_TIMEOUT
        written = ending.written
        had_head = watch.streamed and response is not None  # only a streamed answer's head reached the agent
        if written is not None and written[0] is not None:  # Valet's whole answer
            exchange.decision = "error" if timeout else "deny"
            exchange.bytes_out = written[1]
            status: int | None = written[0]
        elif had_head and response is not None:  # the upstream's head, part of its stream, then the cut
            if timeout:
                exchange.decision = "error"
            exchange.bytes_out = max(0, exchange.bytes_out - watch.unsent) + (written[1] if written is not None else 0)
            status = response.status_code
        else:  # nothing reached the agent: its connection was closed without an answer
            exchange.decision = "error" if timeout else "deny"
            exchange.bytes_out = 0
            status = None
        self.state.record(exchange, status)

    def client_disconnected(self, client: connection.Client) -> None:
        forget(client.id)

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        policy_checked = 0.0
        while self._watches:
            await asyncio.sleep(SWEEP_SECONDS)
            now = loop.time()
            try:
                if now - policy_checked >= POLICY_CHECK_SECONDS and self.state.snapshot is not None:
                    policy_checked = now
                    await self.state.current()  # a kill switch set in a policy file is noticed without requests
                for flow_id, watch in list(self._watches.items()):
                    if not watch.flow.live or watch.ending is not None:
                        if not watch.flow.live:
                            self._watches.pop(flow_id, None)
                        continue
                    ending = self._due(watch, now)
                    if ending is not None:
                        self._cut(watch, ending)
            except Exception as exc:  # noqa: BLE001 - the sweeper must keep running
                log.error("watchdog sweep failed: %s", type(exc).__name__)

    def _due(self, watch: _Watch, now: float) -> Ending | None:
        exchange = watch.exchange
        keyring = self.state.keyring
        if keyring is not None and exchange.key_id is not None and keyring.revoked(exchange.key_id):
            return Ending(Cause.REVOKED_KEY, "the valet key was revoked; Valet closed this exchange")
        snapshot = self.state.snapshot
        if snapshot is not None and exchange.server is not None:
            sources = snapshot.policy.sources
            for kind, value, switched in (("servers", exchange.server, sources.disabled_servers),
                                          ("users", exchange.user, sources.disabled_users),
                                          ("keys", exchange.key_id, sources.disabled_keys)):
                if value is not None and value in switched:
                    return Ending(Cause.DISABLED, f"switched off by {kind}.{value}.enabled; Valet closed this exchange")
        limits, elapsed = watch.limits, now - watch.started
        if not watch.headers:
            server = watch.flow.server_conn
            if server.timestamp_tcp_setup is None and elapsed > limits["connect_seconds"]:
                return _timeout(f"the upstream did not accept a connection within {limits['connect_seconds']:g} s")
            if elapsed > limits["first_byte_seconds"]:
                return _timeout(f"the upstream did not answer within {limits['first_byte_seconds']:g} s")
            return None
        if watch.standing:
            return None
        if watch.streamed and now - watch.last > limits["idle_seconds"]:
            return _timeout(f"the upstream's stream was idle for more than {limits['idle_seconds']:g} s")
        if elapsed > limits["total_seconds"]:
            return _timeout(f"the upstream's answer took more than {limits['total_seconds']:g} s")
        return None

    def _cut(self, watch: _Watch, ending: Ending) -> None:
        """Mark how the exchange ends, then close its upstream connection (mitmproxy does the rest)."""
        flow = watch.flow
        watch.ending = ending
        if oauthretry.cut(flow, ending):  # an OAuth replay under way: cancelled there, refused with the ending
            return
        server = ctx.master.addons.get("proxyserver")
        handler = server.connections.get(flow.client_conn.id) if server is not None else None
        if handler is None:
            return
        upstream = flow.server_conn
        if (upstream not in handler.transports and not watch.headers
                and flow.request.http_version.upper().startswith("HTTP/1")):
            # No upstream connection to close yet (still connecting, or in its TLS handshake: mitmproxy gives
            # the flow the connection only once it is up), so the agent's own connection is what ends: it gets
            # the ending first, written here, then is closed (before, it was closed without an answer: G13).
            ending.wrote(ending.cause.status, ending.body())
            close_client(flow.client_conn.id, ending.response())
            return
        if upstream not in handler.transports and not watch.headers and end_connecting(handler, flow, ending):
            return  # HTTP/2: the connection being opened is closed, the agent's stream gets the ending
        set_ending(flow.client_conn.id, ending, stream_of(handler, flow))  # HTTP/2: that stream's, not the connection's
        target = upstream if upstream in handler.transports else flow.client_conn
        if target in handler.transports:
            handler.close_connection(target)


def _timeout(message: str) -> Ending:
    return Ending(Cause.UPSTREAM_TIMEOUT, message)
