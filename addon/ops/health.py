"""Readiness: can this process do its job right now? (``/readyz``; ``/healthz`` only says it serves.)

Every check is bounded in time and runs its blocking part in a worker thread, so a
slow disk or an unreachable Redis never stalls the proxy's event loop. A check
that cannot tell counts as failing (fail closed: a load balancer should not send
traffic to a Valet that may refuse it all).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

CHECK_TIMEOUT = 2.0


def _audit_probe(path: Path) -> None:
    """Take the write lock on the audit log and let it go: proves the file is there and writable now."""
    if not path.is_file():
        raise OSError("audit.db is missing")
    # mode=rw: never creates the file (a missing log must stay missing, for the writer to notice)
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=1.0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _vault_probe(data_dir: Path) -> None:
    from addon.secrets.vault import Vault, exclusive, load_master_keys

    with exclusive(data_dir, shared=True):
        Vault(data_dir, load_master_keys(data_dir)).verify_keys()


async def _redis_probe(url: str) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 6379)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise OSError("no answer")  # any RESP answer (+PONG, -NOAUTH) means the server is there
    finally:
        writer.close()


async def _check(name: str, work: Any) -> tuple[str, dict[str, Any]]:
    try:
        await asyncio.wait_for(work, CHECK_TIMEOUT)
        return name, {"ok": True}
    except TimeoutError:
        return name, {"ok": False, "error": "timed out"}
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready"; the type says which, never a value
        return name, {"ok": False, "error": type(exc).__name__}


async def readiness(state: Any) -> tuple[bool, dict[str, Any]]:
    """(ready, body): configuration loaded, audit writable, vault opens, Redis reachable when configured."""
    checks: dict[str, dict[str, Any]] = {}
    snapshot = state.snapshot
    checks["config"] = {"ok": snapshot is not None}
    audit = state.audit
    if audit is None:
        checks["audit"] = {"ok": False, "error": "not open"}
    elif not audit.healthy:
        checks["audit"] = {"ok": False, "error": "writer unhealthy" if audit.lost is None else "file lost"}
    else:
        name, result = await _check("audit", asyncio.to_thread(_audit_probe, Path(audit.path)))
        checks[name] = result
    if audit is not None and snapshot is not None and snapshot.config.audit.min_free_bytes > 0:
        from addon.audit import preauth

        low = preauth.disk_low(state)
        checks["audit_disk"] = {"ok": not low, "free_bytes": preauth.DISK.free,
                                "min_free_bytes": snapshot.config.audit.min_free_bytes}
    secrets = state.secrets
    if secrets is None:
        checks["vault"] = {"ok": False, "error": "not open"}
    else:
        name, result = await _check("vault", asyncio.to_thread(_vault_probe, Path(secrets.data_dir)))
        checks[name] = result
    storage = snapshot.config.rate_limits.storage if snapshot is not None else ""
    if storage.startswith("redis"):
        name, result = await _check("redis", _redis_probe(storage))
        checks[name] = result
    if state.draining:
        checks["draining"] = {"ok": False, "error": "shutting down"}
    ready = all(c["ok"] for c in checks.values())
    return ready, {"status": "ready" if ready else "not ready", "checks": checks}


__all__ = ["readiness"]
