"""Put the user's real credentials into what goes upstream; prepare what must come back scrubbed.

All in the ``request`` hook, after the body is parsed (with the lazy
connection strategy nothing has reached the upstream yet): configured headers
and query parameters (every request to the server, GET streams and DELETEs
included), injected ``tools/call`` arguments, ``Mcp-Param-*`` headers mirrored
from the final arguments, the exchange's :class:`~addon.secrets.outbound.Outbound`
(the server's one egress scrubber, looked up when bytes pass, and tools/list
rewriting), the audit description with secrets redacted, and
the one serialization of the body that is forwarded.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mcp.shared.inbound import mcp_param_headers, x_mcp_header_map
from mitmproxy import http

from addon.config import ServerConfig
from addon.filewatch import reload_if_stale
from addon.protocol.errors import Cause, Refusal
from addon.protocol.param_schema import header_skeleton
from addon.audit.exchange import Exchange
from addon.secrets.inject import Resolution, hide_injected, inject_arguments, upstream_headers, upstream_query
from addon.secrets.outbound import Outbound
from addon.secrets.scrubber import MARKER
from addon.secrets.templates import render
from addon.secrets.vault import VaultError
from addon.hooks.parse import describe
from addon.hooks.failsafe import fail_closed
from addon.ops import metrics
from addon.hooks.state import ValetState, refuse, routed

log = logging.getLogger("valet.inject")
MAX_REMEMBERED_SCHEMAS = 10_000
MAX_REMEMBERED_SCHEMA_BYTES = 16 * 1024 * 1024  # what the skeletons of remembered schemas may take in all


class Injector:
    def __init__(self, state: ValetState) -> None:
        self.state = state
        self.schemas: dict[tuple[str, str], dict[str, Any]] = {}

    def _resolution(self, server_name: str, user: str) -> Resolution:
        secrets = self.state.secrets
        return Resolution(lambda name: secrets.lookup(server_name, user, name) if secrets else None)

    def _outbound(self, exchange: Exchange, server: ServerConfig) -> Outbound:
        hide = (lambda tool: hide_injected(server, tool)) if server.inject else None
        state, server_name = self.state, exchange.server or ""
        cap = exchange.snapshot.config.limits.max_buffered_bytes
        # the scrubber is looked up each time bytes pass, never captured: after an OAuth refresh or a
        # vault change the answer is scrubbed with the values of that moment (and the previous ones)
        return Outbound(lambda: state.scrubber(server_name), hide=hide, remember=self._remember(exchange),
                        visible=exchange.visible, cap=cap, mcp=server.kind == "mcp")

    def _remember(self, exchange: Exchange):  # type: ignore[no-untyped-def]
        server = exchange.server

        def remember(tool: dict[str, Any]) -> None:
            name, schema = tool.get("name"), tool.get("inputSchema")
            if isinstance(name, str) and isinstance(schema, dict) and server is not None:
                # Only the x-mcp-header skeleton is kept (a whole parsed schema is ~10x its wire size), with a
                # bound in bytes per tool and in total (review 2, F4); past the total, start over.
                kept = header_skeleton(schema)
                if kept is None:
                    self.schemas.pop((server, name), None)  # its Mcp-Param-* headers are refused as unverified
                else:
                    total = getattr(self, "_schema_bytes", 0) + kept[1]
                    if len(self.schemas) >= MAX_REMEMBERED_SCHEMAS or total > MAX_REMEMBERED_SCHEMA_BYTES:
                        self.schemas.clear()
                        total = kept[1]
                    self._schema_bytes = total
                    self.schemas[(server, name)] = kept[0]
                metrics.tool_seen(server, name)

        return remember

    async def _fresh_secrets(self, exchange: Exchange) -> None:
        await reload_if_stale(self.state.secrets, exchange)  # once per exchange (the canary trap may have)

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        exchange = routed(flow)
        if exchange is None:
            return  # answered already, or passthrough
        server = exchange.snapshot.config.servers[exchange.server]
        body = exchange.body
        try:
            if server.secret_names:
                await self._fresh_secrets(exchange)
            grant = None
            if server.auth == "oauth" and self.state.refresher is not None:
                grant = await self.state.refresher.access_token(exchange.server, server, exchange.user)
            self.state.note_grant(exchange.server, grant)
            scrubber = self.state.scrubber(exchange.server)
            resolution = self._resolution(exchange.server, exchange.user)
            headers = upstream_headers(server, resolution)
            query = upstream_query(server, resolution)
            overridden, audited = (self._inject(flow, exchange.server, server, body, resolution)
                                   if body and server.inject else ([], {}))
            resolution.check(body.messages[0].id if body and not body.is_batch else None)
        except Refusal as refusal:
            refuse(flow, refusal)
            return
        except VaultError as exc:
            log.error("vault error for server %s: %s", exchange.server, exc)
            refuse(flow, Refusal(Cause.VAULT_ERROR, "a secret this request needs cannot be decrypted"), "error")
            return
        for name, value in headers.items():
            flow.request.headers[name] = value
        if grant is not None:  # the agent's own Authorization never goes upstream
            flow.request.headers["authorization"] = f"Bearer {grant.access_token}"
            exchange.oauth_token = grant.access_token
        for name, value in query.items():
            flow.request.query[name] = value
        injected = sorted(resolution.used) + (["OAUTH_ACCESS_TOKEN"] if grant is not None else [])
        exchange.injected = json.dumps(injected) if injected else None
        exchange.overridden = json.dumps(sorted(set(overridden))) if overridden else None
        self.mirror_after_rewrite(flow, exchange)
        outbound = self._outbound(exchange, server)
        exchange.outbound = outbound
        if body is not None:
            outbound.tools_list_ids = frozenset(m.id for m in body.messages if m.method == "tools/list")
            # the audit row shows what is forwarded, secrets redacted
            describe(exchange, body, scrubber.bytes, audited)
            # raw_content, not content: a JSON-RPC body is never content-encoded here (RpcInspector refuses
            # any encoding but identity), so mitmproxy's content setter would only look the encoding up, then
            # scan the headers twice more to rewrite content-length, which the dispatcher's frame() sets anyway
            # from these very bytes before the request is forwarded.
            flow.request.raw_content = body.serialize()

    def _inject(self, flow: http.HTTPFlow, server_name: str, server: ServerConfig, body: Any,
                resolution: Resolution) -> tuple[list[str], dict[int, dict[str, Any]]]:
        """Inject into every tools/call of the body; returns the injected arguments the agent had set, and
        per message index the arguments as audited (each injected value as its template with markers)."""
        overridden: list[str] = []
        audited: dict[int, dict[str, Any]] = {}
        for index, message in enumerate(body.messages):
            tool = message.tool
            if tool is None:
                continue
            arguments, agent_set = inject_arguments(server, tool, message.arguments, resolution)
            if arguments is message.arguments:
                continue
            wanted = server.arguments_for(tool)
            overridden += agent_set + _drop_case_twins(arguments, wanted)
            message.raw["params"]["arguments"] = arguments
            audited[index] = _as_audited(arguments, wanted)
            if not body.is_batch:
                self._mirror_param_headers(flow, server_name, tool, arguments or {})
        return overridden, audited

    def mirror_after_rewrite(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        """The policy forwarded a normalized argument: headers mirroring arguments must say the same."""
        body = exchange.body
        if exchange.rewritten and body is not None and not body.is_batch and body.messages[0].tool:
            message = body.messages[0]
            self._mirror_param_headers(flow, exchange.server or "", message.tool, message.arguments or {})

    def _mirror_param_headers(self, flow: http.HTTPFlow, server: str, tool: str, arguments: dict[str, Any]) -> None:
        """2026-07-28 servers check Mcp-Param-* against the body: rebuild them from what is forwarded."""
        schema = self.schemas.get((server, tool))
        if schema is None:
            return
        header_map = x_mcp_header_map(schema)
        if not header_map:
            return
        for name in [n for n in flow.request.headers if n.lower().startswith("mcp-param-")]:
            del flow.request.headers[name]
        for name, value in mcp_param_headers(header_map, arguments).items():
            flow.request.headers[name] = value


def _as_audited(arguments: dict[str, Any] | None, injected: dict[str, str]) -> dict[str, Any]:
    """The forwarded arguments with each injected one replaced by its template, every secret in it a
    marker (``[REDACTED:NAME]``): the same members in the same order, no secret value to search for."""
    audited = dict(arguments or {})
    for name, template in injected.items():
        audited[name] = _marked(template)
    return audited


_MARKED: dict[str, str] = {}


def _marked(template: str) -> str:
    """A template with each placeholder as its marker: the same for every call (templates come from the
    operator's config, so the cache is bounded by it; cleared past 4096 in case of many reloads)."""
    marked = _MARKED.get(template)
    if marked is None:
        if len(_MARKED) >= 4096:
            _MARKED.clear()
        marked = _MARKED[template] = render(template, MARKER.format)
    return marked


def _drop_case_twins(arguments: dict[str, Any] | None, injected: dict[str, Any]) -> list[str]:
    """Remove the agent's arguments whose names fold to an injected one's (``TOKEN`` next to ``token``).

    The strict parse refuses case twins the agent sends, but injection adds a member after it: an
    upstream that ignores case would read the agent's ``TOKEN`` as the credential. Dropped, like an
    injected argument the agent set exactly, and named in the audit row's ``overridden``.
    """
    if not arguments or not injected:
        return []
    folded = {name.casefold() for name in injected}
    twins = [key for key in arguments if key not in injected and key.casefold() in folded]
    for key in twins:
        del arguments[key]
    return twins
