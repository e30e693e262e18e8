"""Valet's Prometheus metrics, behind a tiny API the hooks call in one line each.

Why a module of functions: the hooks must not know prometheus_client, and when
the admin listener is off (the default) every call must cost one global lookup
and one ``is None`` test, nothing more. :func:`enable` builds the registry when
``--admin-listen`` is given; until then :data:`_M` is None and each function
returns at once.

Label values are only ever configured or code-defined names, never raw agent
input, so cardinality stays bounded:

- server: a configured server name (the exchange is routed) or ``-``;
- decision: allow | deny | error; reason: a reason Valet's code defines (else ``other``);
- tool: only a name seen in a ``tools/list`` answer relayed from that server (at most
  :data:`MAX_TOOLS` in all), else ``other``;
- rule: a policy rule id (from the operator's files);
- user: only with ``--metrics-users`` (users are named by the operator when issuing keys).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

MAX_TOOLS = 2000  # tool label values across all servers; later names count as "other"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_UPSTREAM_REASONS = ("upstream_error", "upstream_status", "upstream_timeout", "gateway_timeout", "bad_gateway")


def _known_reasons() -> frozenset[str]:
    from addon.protocol.errors import Cause

    return frozenset(c.reason for c in Cause) | frozenset(
        {"client_disconnected", "upstream_status", "interrupted", "canary_tripped", *_UPSTREAM_REASONS})


class Metrics:
    """The registry and every metric Valet exposes (docs/metrics.md lists them)."""

    def __init__(self, users: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self.users = users
        self.reasons = _known_reasons()
        self.tools: set[tuple[str, str]] = set()
        self.exchanges = Counter("valet_exchanges", "Exchanges ended, by server, decision and reason.",
                                 ["server", "decision", "reason"], registry=r)
        self.tool_calls = Counter("valet_tool_calls", "tools/call exchanges by server, tool and decision.",
                                  ["server", "tool", "decision"], registry=r)
        self.user_exchanges = (Counter("valet_user_exchanges", "Exchanges by user and decision (--metrics-users).",
                                       ["user", "decision"], registry=r) if users else None)
        self.valet_latency = Histogram(
            "valet_proxy_latency_seconds",
            "Valet's own time: request received to forwarded (or to the refusal, when refused).",
            ["server"], buckets=_BUCKETS, registry=r)
        self.upstream_latency = Histogram(
            "valet_upstream_latency_seconds", "Forwarded to the upstream's response headers.",
            ["server"], buckets=_BUCKETS, registry=r)
        self.upstream_errors = Counter("valet_upstream_errors", "Upstream failures (5xx, errors, timeouts) by kind.",
                                       ["server", "kind"], registry=r)
        self.rate_limited = Counter("valet_rate_limit_refusals", "Requests refused by a rate rule.",
                                    ["rule"], registry=r)
        self.oauth_refreshes = Counter("valet_oauth_refreshes", "Upstream OAuth refreshes by outcome.",
                                       ["server", "outcome"], registry=r)
        self.audit_commit = Histogram("valet_audit_commit_latency_seconds",
                                      "Audit row queued to committed (what a request waits for).",
                                      buckets=_BUCKETS, registry=r)
        self.reloads = Counter("valet_config_reloads", "Configuration reloads by outcome.", ["outcome"], registry=r)
        self.canaries = Counter("valet_canary_trips", "Requests refused because they carried a canary secret.",
                                ["server"], registry=r)
        self.open_streams = Gauge("valet_open_streams", "Streamed (SSE) responses in progress.", registry=r)
        self.open_sessions = Gauge("valet_open_sessions", "MCP sessions Valet knows the owner of.", registry=r)
        self.audit_queue = Gauge("valet_audit_queue_depth", "Audit records waiting for the writer.", registry=r)
        self.open_exchanges = Gauge("valet_open_exchanges", "Exchanges written ahead, outcome not yet recorded.",
                                    registry=r)
        self.buffered = Gauge("valet_buffered_bytes", "Body bytes held in memory now, against "
                              "limits.max_buffered_total_bytes.", registry=r)
        self.connections_closed = Counter(
            "valet_connections_closed", "Agent connections Valet closed before a request: idle, evicted "
            "(limits.max_pending_connections) or a stalled body.", ["reason"], registry=r)
        self.pending_connections = Gauge("valet_pending_connections",
                                         "Agent connections open with no request in progress.", registry=r)
        self.up = Gauge("valet_start_time_seconds", "Unix time the process started serving metrics.", registry=r)
        self.up.set(time.time())

    def server(self, name: str | None) -> str:
        return name or "-"

    def reason(self, reason: str | None) -> str:
        if reason is None:
            return "-"
        return reason if reason in self.reasons else "other"

    def tool(self, server: str | None, tool: str | None) -> str:
        return tool if tool is not None and (server or "", tool) in self.tools else "other"

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


_M: Metrics | None = None


def enable(users: bool = False) -> Metrics:
    """Build the registry (the admin listener is on). Idempotent."""
    global _M
    if _M is None:
        _M = Metrics(users)
    return _M


def disable() -> None:
    global _M
    _M = None


def current() -> Metrics | None:
    return _M


def watch(gauge: str, read: Callable[[], float]) -> None:
    """Sample a gauge at scrape time (queue depth, open exchanges, sessions): no cost per request."""
    m = _M
    if m is not None:
        getattr(m, gauge).set_function(read)


# --- the one-line calls from hooks/ -------------------------------------------------------------

_FORWARDED = "valet.metrics.forwarded"
_STREAM = "valet.metrics.stream"
_COUNTED = "valet.metrics.counted"


def forwarded(flow: Any) -> None:
    """The request leaves Valet now: Valet's own latency ends and the upstream's begins."""
    m = _M
    if m is None or flow.response is not None or flow.error is not None:
        return  # refused: Valet's latency ends with the refusal (flow_done)
    flow.metadata[_FORWARDED] = time.time()


def response_headers(flow: Any) -> None:
    """The upstream's response headers arrived: its latency, and a stream opens."""
    m = _M
    if m is None or flow.response is None:
        return
    sent = flow.metadata.get(_FORWARDED)
    exchange = flow.metadata.get("valet")
    server = m.server(exchange.server if exchange is not None else None)
    if sent is not None and flow.response.timestamp_start:
        m.upstream_latency.labels(server).observe(max(0.0, flow.response.timestamp_start - sent))
    if flow.response.stream and not flow.metadata.get(_STREAM):
        flow.metadata[_STREAM] = True
        m.open_streams.inc()


def flow_done(flow: Any) -> None:
    """The flow ended (response sent, or error): count its exchange once."""
    m = _M
    if m is None or flow.metadata.get(_COUNTED):
        return
    exchange = flow.metadata.get("valet")
    if flow.metadata.pop(_STREAM, False):
        m.open_streams.dec()
    if exchange is None or not exchange.recorded:
        return
    flow.metadata[_COUNTED] = True
    server = m.server(exchange.server)
    decision = exchange.decision
    reason = m.reason(exchange.reason)
    m.exchanges.labels(server, decision, reason).inc()
    if exchange.rpc_method == "tools/call":
        m.tool_calls.labels(server, m.tool(exchange.server, exchange.tool), decision).inc()
    if m.user_exchanges is not None and exchange.user:
        m.user_exchanges.labels(exchange.user, decision).inc()
    if reason in _UPSTREAM_REASONS or (reason == "upstream_status"):
        m.upstream_errors.labels(server, reason).inc()
    elif exchange.reason and "timeout" in exchange.reason:
        m.upstream_errors.labels(server, reason).inc()
    if exchange.reason == "rate_limited" and exchange.rule:
        m.rate_limited.labels(exchange.rule).inc()
    received = flow.request.timestamp_end or flow.request.timestamp_start
    end = flow.metadata.get(_FORWARDED)
    if end is None and flow.response is not None and decision != "allow":
        end = flow.response.timestamp_start or time.time()
    if received and end:
        m.valet_latency.labels(server).observe(max(0.0, end - received))


def tool_seen(server: str, tool: str) -> None:
    """A tool name in a tools/list answer relayed from ``server``: usable as a label from now on."""
    m = _M
    if m is None or len(m.tools) >= MAX_TOOLS:
        return
    m.tools.add((server, tool))


def config_reload(outcome: str) -> None:
    m = _M
    if m is not None:
        m.reloads.labels(outcome).inc()


def oauth_refresh(server: str | None, outcome: str) -> None:
    m = _M
    if m is not None:
        m.oauth_refreshes.labels(m.server(server), outcome).inc()


def canary(server: str | None) -> None:
    m = _M
    if m is not None:
        m.canaries.labels(m.server(server)).inc()


def connection_closed(reason: str) -> None:
    """Valet closed an agent connection with no request in progress (reason: idle, evicted, body_timeout)."""
    m = _M
    if m is not None:
        m.connections_closed.labels(reason).inc()


def audit_queued(future: Any) -> None:
    """A row was queued; observe how long until it is committed (the wait a request sees)."""
    m = _M
    if m is None or future is None:
        return
    start = time.monotonic()
    future.add_done_callback(lambda _f: m.audit_commit.observe(time.monotonic() - start))


__all__ = ["Metrics", "audit_queued", "canary", "config_reload", "connection_closed", "current", "disable", "enable", "flow_done",
           "forwarded", "oauth_refresh", "response_headers", "tool_seen", "watch"]
