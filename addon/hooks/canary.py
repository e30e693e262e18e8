"""Refuse any request that carries a canary secret, and (if configured) revoke the key that sent it.

Runs on the whole request (path and query, every header, the body as received), after
authentication and routing and before anything parses or forwards it, so a canary
never reaches an upstream and the refusal's audit row names the key, user and server.
The canary set is rebuilt only when the vault changes (the same reload the injector
uses); a request with no canary configured costs one check.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import http

from addon.filewatch import reload_if_stale
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, answered, exchange_of, refuse
from addon.ops import metrics
from addon.protocol.errors import Cause, Refusal
from addon.protocol.method_override import decoded_body
from addon.secrets.canary import Canaries

log = logging.getLogger("valet.canary")
THREAD_BYTES = 64 * 1024  # larger requests are searched in a worker thread: the loop stays free
REFUSED = Refusal(Cause.CANARY_TRIPPED, "this request was refused and reported")


class CanaryTrap:
    def __init__(self, state: ValetState) -> None:
        self.state = state
        self._generation = -1
        self._canaries = Canaries([])

    def _current(self) -> Canaries:
        secrets = self.state.secrets
        if secrets is None:
            return self._canaries
        if secrets.generation != self._generation:
            self._canaries = Canaries(secrets.canaries())
            self._generation = secrets.generation
        return self._canaries

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if answered(flow) or exchange is None or self.state.secrets is None:
            return
        await reload_if_stale(self.state.secrets, exchange)
        canaries = self._current()
        if not canaries:
            return
        request = flow.request
        headers = list(request.headers.items(multi=True))
        body = request.raw_content or b""
        coding = request.headers.get("content-encoding", "")
        if len(body) > THREAD_BYTES or (body and coding.strip()):
            found = await asyncio.to_thread(_search, canaries, request.path, headers, body, coding,
                                            exchange.snapshot.config.limits.max_buffered_bytes if exchange.snapshot else 1 << 24)
        else:
            found = canaries.in_request(request.path, headers, body)
        if found is None:
            return
        name, where = found
        exchange.http_path = canaries.redact(exchange.http_path)
        revoke = bool(exchange.snapshot and exchange.snapshot.config.canaries.revoke_key and exchange.key_id)
        metrics.canary(exchange.server)
        log.error("canary %s tripped: key %s (user %s, agent %s) sent it in the %s to server %s; refused%s",
                  name, exchange.key_id, exchange.user, exchange.agent, where, exchange.server,
                  ", key revoked" if revoke else "",
                  extra={"valet": {"event": "canary_tripped", "canary": name, "key_id": exchange.key_id,
                                   "user": exchange.user, "agent": exchange.agent, "server": exchange.server,
                                   "where": where, "revoked": revoke}})
        if revoke and exchange.key_id is not None and self.state.keyring is not None:
            keyring = self.state.keyring
            await asyncio.to_thread(keyring.store.revoke, exchange.key_id)
            await asyncio.to_thread(keyring.reload)  # open streams of that key are cut by the key refresh
        refuse(flow, REFUSED)


def _search(canaries: Canaries, path: str, headers: list[tuple[str, str]], body: bytes, coding: str,
            cap: int) -> tuple[str, str] | None:
    """The request as received, and its body decoded too when it is content-coded (review 4: a canary in a
    gzip body reached a ``kind: http`` upstream, which inflates it). A body that does not decode is searched
    as received only: the parse stage refuses it for a server, and passthrough bodies are forwarded as is."""
    found = canaries.in_request(path, headers, body)
    if found is not None or not coding.strip():
        return found
    try:
        decoded = decoded_body(body, coding, cap)
    except Refusal:
        return None
    return canaries.in_request(path, [], decoded) if decoded is not body else None
