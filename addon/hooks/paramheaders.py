"""``Mcp-Param-*`` headers go upstream only as Valet rebuilt them from the arguments it forwards.

2026-07-28 servers read some tool arguments from ``Mcp-Param-*`` headers
(the schema's ``x-mcp-header``) and check them against the body. An agent's
own headers could say something else than the body the policy judged, and a
header the server reads first would then win. So, after the policy and the
injection (this stage runs after :class:`~addon.hooks.inject.Injector`):

- no ``Mcp-Param-*`` header from the agent: nothing to do;
- the tool's schema is known (from a tools/list relayed by this process):
  every agent ``Mcp-Param-*`` header is dropped and the set is rebuilt from the
  final arguments;
- the schema is not known yet: the request is refused
  (``param_headers_unverified``), telling the client to list tools first.
"""

from __future__ import annotations

from typing import Any

from mcp.shared.inbound import mcp_param_headers, x_mcp_header_map
from mitmproxy import http

from addon.protocol.errors import Cause, Refusal
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, refuse, routed

PREFIX = "mcp-param-"


class ParamHeaderGuard:
    def __init__(self, state: ValetState, schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.state = state
        self.schemas = schemas  # the Injector's: (server, tool) -> inputSchema, as relayed in tools/list

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        sent = [name for name in headers if name.lower().startswith(PREFIX)]
        if not sent:
            return
        exchange = routed(flow)
        if exchange is None:
            return  # answered already, or passthrough (not a server of ours)
        for name in sent:
            del headers[name]
        body = exchange.body
        message = body.messages[0] if body is not None and not body.is_batch else None
        tool = message.tool if message is not None else None
        schema = self.schemas.get((exchange.server, tool)) if tool is not None else None
        if schema is None:
            rpc_id = message.id if message is not None else None
            refuse(flow, Refusal(
                Cause.PARAM_HEADERS_UNVERIFIED,
                "Mcp-Param-* headers are accepted only for a tools/call whose schema Valet has relayed: "
                "call tools/list through Valet first, then retry", rpc_id))
            return
        header_map = x_mcp_header_map(schema)
        for name, value in mcp_param_headers(header_map, message.arguments or {}).items():
            headers[name] = value
