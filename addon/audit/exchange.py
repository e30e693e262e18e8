"""The record of one exchange as it moves through the addons, ending as an audit row."""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Any

from addon.audit.columns import COLUMNS
from addon.audit.log import Pending, utc_iso


_ROW = operator.attrgetter(*COLUMNS[:-1])  # every column but ``state``, which is last
assert COLUMNS[-1] == "state"


def _utc_now() -> str:
    return utc_iso(time.time())


@dataclass(slots=True)
class Exchange:
    mode: str
    http_method: str
    http_path: str
    ts_unix: float = field(default_factory=time.time)
    ts: str = ""
    started: float = field(default_factory=time.monotonic)
    key_id: str | None = None
    user: str | None = None
    agent: str | None = None
    server: str | None = None
    rpc_method: str | None = None
    rpc_id: str | None = None
    tool: str | None = None
    arguments: str | None = None
    decision: str = "allow"
    rule: str | None = None  # the policy rule (or switch, or server default) that decided
    reason: str | None = None
    error_code: int | None = None
    session_id: str | None = None
    http_status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: float | None = None
    injected: str | None = None  # JSON list of the secret names injected
    overridden: str | None = None  # JSON list of injected arguments the agent had set itself
    recorded: bool = False
    row: Pending | None = None  # the row written ahead (None until then)
    committed: Any = None  # asyncio future: the row (written ahead, or whole) is committed
    # Not audited: what later stages need from earlier ones.
    snapshot: Any = None  # the configuration and policy in force when the request arrived (addon.snapshot)
    body: Any = None  # the parsed JSON-RPC body (addon.protocol.jsonrpc.Body), forwarded after injection
    outbound: Any = None  # the response transformation (addon.secrets.outbound.Outbound), if any
    visible: Any = None  # tool name -> may this caller see it in tools/list (from the policy)
    oauth_token: str | None = None  # the upstream access token injected (to know a 401 is about it)
    replayed: bool = False  # the request was sent again after an OAuth refresh
    rewritten: bool = False  # the policy forwarded an argument in its normalized form
    legacy_transport: bool = False  # a POST on a 2024-11-05 HTTP+SSE session (bound to this key)

    def __post_init__(self) -> None:
        if not self.ts:
            self.ts = utc_iso(self.ts_unix)

    def request_row(self) -> dict[str, Any]:
        """The row as written ahead: everything known before the request leaves Valet."""
        return {column: getattr(self, column) for column in COLUMNS if column != "state"}

    def values(self, state: str) -> tuple[Any, ...]:
        """The row as a tuple in ``COLUMNS`` order (what the writer stores), without a dict in between."""
        return (*_ROW(self), state)

    def finish(self, status: int | None) -> dict[str, Any]:
        """Close the exchange and return its audit row."""
        self.recorded = True
        self.http_status = status
        self.duration_ms = round((time.monotonic() - self.started) * 1000, 3)
        return {column: getattr(self, column) for column in COLUMNS if column != "state"}
