"""An upstream 401 on a token Valet believed valid: refresh once, send the request once more.

Only requests whose body Valet holds (POST, DELETE) are replayed; a 401 on a
GET stream triggers the refresh and goes back to the agent, whose client opens
the stream again. The replayed answer is read whole (an SSE answer arrives at
once rather than event by event) and then scrubbed like any other, by the
server's scrubber as it is when the answer passes: the new tokens are noted
(:meth:`ValetState.note_grant`) before, and the old ones stay in it.

The replay holds to the same limits as any answer: its raw bytes are read in pieces up to
``limits.max_buffered_bytes`` (past it: 502 ``upstream_error``), a compressed body is decoded in
bounded steps under the same cap, and the server's ``timeouts`` apply (504 ``upstream_timeout``).

The replay is a second forwarding, after a refresh that may take seconds (a slow or retried token
endpoint): right before it is sent, the request is judged again as a body that took long to arrive is
(:func:`addon.hooks.authenticate.rejudge`: the key ring and configuration in force now) and by the
policy in force now on the same calls (:func:`addon.hooks.gate.redecide`): a key revoked, a kill switch
or a deny rule loaded meanwhile gets the agent that refusal (review 4, H5). While the refresh and the
replay are under way, the watchdog's cut (a revocation, a kill switch, the total time) is handed here
(:func:`cut`): the replay goes through Valet's own HTTP client, which the watchdog cannot close, so its
task is cancelled and the agent gets the watchdog's ending as Valet's refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import httpx2
from mitmproxy import ctx, http

from addon.config import timeouts_for
from addon.protocol import mitm_limits
from addon.protocol.errors import Cause, Refusal
from addon.protocol.mitm_limits import Ending
from addon.secrets import compressed
from addon.audit.exchange import Exchange
from addon.hooks.authenticate import rejudge
from addon.hooks.failsafe import fail_closed
from addon.hooks.gate import redecide
from addon.hooks.state import ValetState, exchange_of, refuse

REPLAYING = "valet.replaying"  # flow.metadata: the _InFlight of a replay under way (see cut())


@dataclass(eq=False)
class _InFlight:
    """A replay under way: the watchdog's ending, if it cut the exchange, and the task sending the request."""

    ending: Ending | None = None
    task: asyncio.Task[None] | None = None

    def refusal(self) -> Refusal | None:
        return None if self.ending is None else Refusal(self.ending.cause, self.ending.message)


def _decision(refusal: Refusal) -> str:
    """A timeout is an error; a revoked key, a kill switch, a rule are refusals."""
    return "error" if refusal.cause is Cause.UPSTREAM_TIMEOUT else "deny"


def cut(flow: http.HTTPFlow, ending: Ending) -> bool:
    """The watchdog ends ``flow`` (a revoked key, a kill switch, a timeout): if its OAuth replay is under way,
    the replay is cancelled (or, during the refresh before it, never sent) and the agent gets ``ending`` as
    Valet's refusal. True: handled here; False: not a replay, the watchdog closes the upstream as usual.

    The replay goes through Valet's own HTTP client, not a mitmproxy connection the watchdog could close.
    """
    inflight = flow.metadata.get(REPLAYING)
    if inflight is None:
        return False
    inflight.ending = ending
    if inflight.task is not None:
        inflight.task.cancel()
    return True

_CODECS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate", "br": "br", "zstd": "zstd"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
               "content-length", "proxy-authorization"}


class OAuthReplay:
    def __init__(self, state: ValetState, bind_answer: Callable[[http.HTTPFlow], object] | None = None) -> None:
        self.state = state
        self.bind_answer = bind_answer  # SessionGuard's: its responseheaders hook saw the 401, not the replay
        self._http: httpx2.AsyncClient | None = None

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            ca = ctx.options.ssl_verify_upstream_trusted_ca
            self._http = httpx2.AsyncClient(timeout=60, verify=ca or True, trust_env=False)
        return self._http

    @fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        response = flow.response
        if (exchange is None or response is None or response.status_code != 401 or exchange.oauth_token is None
                or exchange.replayed or self.state.refresher is None or exchange.decision != "allow"):
            return
        replays = flow.request.method in ("POST", "DELETE")
        inflight = _InFlight()
        if replays:
            flow.metadata[REPLAYING] = inflight  # from now on a cut by the watchdog is answered here (cut())
        try:
            await self._refresh_and_replay(flow, exchange, inflight, replays)
        finally:
            flow.metadata.pop(REPLAYING, None)
            if inflight.task is not None and not inflight.task.done():
                inflight.task.cancel()  # we were cancelled ourselves: the replay goes with us

    async def _refresh_and_replay(self, flow: http.HTTPFlow, exchange: Exchange, inflight: _InFlight,
                                  replays: bool) -> None:
        server = exchange.snapshot.config.servers[exchange.server]
        try:
            grant = await self.state.refresher.refresh(exchange.server, server, exchange.user or "",  # type: ignore[union-attr]
                                                       stale=exchange.oauth_token)
        except Refusal as refusal:
            refuse(flow, refusal)
            return
        exchange.oauth_token = grant.access_token
        self.state.note_grant(exchange.server, grant)  # the replayed answer is scrubbed for the NEW token too
        if not replays:
            return
        # the refresh may have taken seconds: the replay is a second forwarding, judged by the world as it is
        # now (review 4 H5), as a body that took long to arrive is (authenticate.rejudge, gate.redecide)
        refusal = inflight.refusal() or await rejudge(self.state, flow, exchange, look_again=True)
        if refusal is None:
            refusal = redecide(flow, exchange.snapshot.policy)
        if refusal is not None:
            refuse(flow, refusal, _decision(refusal))
            return
        inflight.task = asyncio.get_running_loop().create_task(self._replay(flow, exchange, grant.access_token))
        await asyncio.wait([inflight.task])  # not `await task`: its cancellation is not ours
        refusal = inflight.refusal()
        if refusal is not None:  # the watchdog cut it (a revoked key, a kill switch, the total time)
            refuse(flow, refusal, _decision(refusal))
            return
        if inflight.task.cancelled():  # not by the watchdog (it sets its ending first): fail closed
            refuse(flow, Refusal(Cause.UPSTREAM_ERROR, "the replayed request was cancelled"), "error")
            return
        inflight.task.result()

    async def _replay(self, flow: http.HTTPFlow, exchange: Exchange, access_token: str) -> None:
        """Send the request once more with ``access_token``; its answer (or Valet's refusal) becomes the flow's."""
        request = flow.request
        headers = [(k, v) for k, v in request.headers.items(multi=True) if k.lower() not in _HOP_BY_HOP]
        headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        headers.append(("authorization", f"Bearer {access_token}"))
        config = exchange.snapshot.config
        cap, limits = config.limits.max_buffered_bytes, timeouts_for(config, exchange.server)
        timeout = httpx2.Timeout(limits["first_byte_seconds"], connect=limits["connect_seconds"])
        try:
            async with asyncio.timeout(limits["total_seconds"]):
                async with self._client().stream(request.method, request.url, headers=headers,
                                                 content=request.raw_content or b"", timeout=timeout) as replayed:
                    body = bytearray()
                    async for piece in replayed.aiter_raw():
                        body += piece
                        if len(body) > cap:
                            raise compressed.TooLarge("the replayed answer is over the size limit")
                        mitm_limits.hold(flow, len(piece), "replay")  # in the global budget, or Busy
                    status, replied = replayed.status_code, replayed.headers
            content = bytes(body)
            encoding = replied.get("content-encoding", "identity").strip().lower()
            if encoding not in ("identity", ""):
                codec = _CODECS.get(encoding)
                if codec is None:
                    raise ValueError(encoding)
                raw = content
                content = await mitm_limits.decode_within(flow, lambda limit: compressed.decode(codec, raw, limit),
                                                          cap)
        except mitm_limits.Busy as busy:
            refuse(flow, busy.refusal, "error")
            return
        except (TimeoutError, httpx2.TimeoutException):
            refuse(flow, Refusal(Cause.UPSTREAM_TIMEOUT, "the upstream did not answer the replayed request in time"),
                   "error")
            return
        except compressed.TooLarge:
            refuse(flow, Refusal(Cause.UPSTREAM_ERROR, "the upstream's answer is larger than Valet may hold"), "error")
            return
        except (ValueError, httpx2.HTTPError):
            refuse(flow, Refusal(Cause.UPSTREAM_ERROR, "the upstream failed to answer the replayed request"), "error")
            return
        exchange.replayed = True
        kept = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in replied.multi_items()
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-encoding"]  # the body is decoded
        flow.response = http.Response.make(status, content, http.Headers(kept))
        if self.bind_answer is not None:
            self.bind_answer(flow)  # a session id the replayed answer issues is the caller's

    async def done(self) -> None:
        if self._http is not None:
            await self._http.aclose()
