"""The admin listener: ``/metrics``, ``/healthz``, ``/readyz`` on their own port (``--admin-listen``).

A tiny HTTP/1.1 server on asyncio streams inside the proxy's own event loop: no
thread, no web framework, nothing that could block the loop. It answers GET (and
HEAD) on three paths and closes the connection after each answer. Requests are
bounded (8 KiB of head, 5 s to send it, 32 connections at once) because the port may
be reachable by more than the operator's scraper. It is separate from the proxy listener, so
that metrics never travel through the proxy's hooks, and it is off unless
``--admin-listen`` is given (loopback by default when it is).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from addon.ops import metrics
from addon.protocol import mitm_limits
from addon.ops.health import readiness
from addon.protocol import mitm_conn

MAX_HEAD = 8192
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 32  # more at once are closed at once: a scraper needs one
log = logging.getLogger("valet.admin")


class AdminServer:
    def __init__(self, host: str, port: int, state: Any, valet: Any = None) -> None:
        self.host, self.port, self.state, self.valet = host, port, state, valet
        self._server: asyncio.Server | None = None
        self._active = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD)
        m = metrics.current()
        if m is not None:  # gauges sampled at scrape time: nothing per request
            state = self.state
            metrics.watch("audit_queue", lambda: float(state.audit.backlog) if state.audit else 0.0)
            metrics.watch("open_exchanges", lambda: float(state.open_exchanges))
            metrics.watch("buffered", lambda: float(mitm_limits.BUDGET.held()))
            metrics.watch("pending_connections", lambda: float(mitm_conn.pending_count()))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= MAX_CONNECTIONS:
            writer.close()
            return
        self._active += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            status, ctype, body = await self._answer(method, path)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
                "cache-control: no-store\r\nconnection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # a slow, oversized or broken request: just close
        except Exception as exc:  # noqa: BLE001 - never take the loop down for an admin request
            log.error("admin request failed: %s", type(exc).__name__)
        finally:
            self._active -= 1
            writer.close()

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "application/json", b'{"error": "GET only"}'
        if path == "/healthz":
            return 200, "application/json", json.dumps({"status": "ok"}).encode()
        if path == "/readyz":
            ready, body = await readiness(self.state)
            return (200 if ready else 503), "application/json", json.dumps(body).encode()
        if path == "/metrics":
            m = metrics.current()
            if m is None:
                return 404, "application/json", b'{"error": "metrics are off"}'
            sessions = _sessions(self.valet)
            if sessions is not None:
                m.open_sessions.set(sessions)
            return 200, "text/plain; version=0.0.4; charset=utf-8", m.render()
        return 404, "application/json", b'{"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]}'


def _sessions(valet: Any) -> int | None:
    """Sessions whose owner the SessionGuard stage remembers (bounded by its LRU)."""
    for stage in getattr(valet, "stages", ()):
        owners = getattr(stage, "owners", None)
        if owners is not None and hasattr(owners, "__len__"):
            return len(owners)
    return None


__all__ = ["AdminServer"]
