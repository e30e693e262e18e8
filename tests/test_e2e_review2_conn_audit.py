"""Review 2, F14: what a client without a key can make the audit log hold is bounded, and the audit
disk has a free-space watermark. A real Valet; the rows are read from its audit.db.

Before: every keyless request wrote a whole row (path up to 2,048 characters), about 4.5 KB each at
278 requests/s from one client, and nothing watched the disk.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx

from tests.support import running_valet, start_http_api


def _rows(valet, where: str = "1=1") -> list[dict]:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(f"file:{valet.data_dir / 'audit.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM exchanges WHERE {where} ORDER BY id")]
    finally:
        conn.close()


def test_keyless_refusals_are_aggregated_and_counted(tmp: Path) -> None:
    upstream = start_http_api()
    try:
        config = f"servers:\n  api:\n    url: http://127.0.0.1:{upstream.port}\n    kind: http\n"
        with running_valet(tmp, None, config_text=config) as valet:
            long_path = "/api/" + "a" * 3000
            with httpx.Client(base_url=valet.base, timeout=30) as client:
                for i in range(300):
                    r = client.get(long_path if i == 0 else f"/api/x{i}")
                    assert r.status_code == 401
            valet.rows("reason = 'missing_key'", expect=60)
            valet.stop()  # the interval's summary is written on the way out
            own = _rows(valet, "reason = 'missing_key' AND rpc_method IS NOT 'valet/refusals'")
            summaries = _rows(valet, "rpc_method = 'valet/refusals'")
            assert len(own) <= 61, len(own)  # was 300 rows
            assert len(summaries) == 1, summaries
            detail = json.loads(summaries[0]["arguments"])
            assert detail["peer"] == "127.0.0.0/8" and summaries[0]["reason"] == "missing_key"
            assert len(own) + detail["count"] == 300  # nothing silently lost
            first = own[0]["http_path"]
            assert first.startswith("/api/aaa") and len(first) < 160 and "…#" in first  # was 2,048 characters
    finally:
        upstream.process.kill()
        upstream.process.wait(10)


def test_authenticated_requests_keep_their_own_rows(tmp: Path) -> None:
    upstream = start_http_api()
    try:
        config = f"servers:\n  api:\n    url: http://127.0.0.1:{upstream.port}\n    kind: http\n"
        with running_valet(tmp, None, config_text=config) as valet:
            key, _ = valet.new_key()
            path = "/api/" + "b" * 1000
            with httpx.Client(base_url=valet.base, timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
                for _ in range(80):
                    assert c.get(path).status_code == 200
            rows = valet.rows("key_id IS NOT NULL", expect=80)
            assert len(rows) == 80 and len(rows[0]["http_path"]) > 1000
    finally:
        upstream.process.kill()
        upstream.process.wait(10)


def test_free_disk_watermark_refuses_then_recovers(tmp: Path) -> None:
    upstream = start_http_api()
    try:
        base = f"servers:\n  api:\n    url: http://127.0.0.1:{upstream.port}\n    kind: http\n"
        huge = base + "audit:\n  min_free_bytes: 1000000000000000000\n"  # more than any disk
        with running_valet(tmp, None, config_text=huge) as valet:
            key, _ = valet.new_key()
            auth = {"authorization": f"Bearer {key}"}
            r = httpx.get(f"{valet.base}/api/hello", headers=auth, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["data"]["reason"] == "audit_unavailable"
            text = valet.config.read_text().replace("min_free_bytes: 1000000000000000000", "min_free_bytes: 1")
            valet.config.write_text(text)
            deadline = time.monotonic() + 60
            while True:  # the reload and the next disk check: automatic, no restart
                r = httpx.get(f"{valet.base}/api/hello", headers=auth, timeout=30)
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert r.status_code == 200
            assert "below audit.min_free_bytes" in valet.log.read_text(errors="replace")
    finally:
        upstream.process.kill()
        upstream.process.wait(10)


def test_readyz_reports_the_disk_watermark(tmp: Path) -> None:
    """/readyz's check (addon.ops.health.readiness) says not ready below audit.min_free_bytes."""
    import asyncio
    from types import SimpleNamespace

    from addon.audit import preauth
    from addon.config import parse_config
    from addon.ops.health import readiness

    (tmp / "audit.db").write_bytes(b"")
    for minimum, ok in ((10**18, False), (1, True)):
        config = parse_config(f"audit:\n  min_free_bytes: {minimum}\n")
        state = SimpleNamespace(snapshot=SimpleNamespace(config=config), secrets=None, draining=False,
                                audit=SimpleNamespace(path=str(tmp / "audit.db"), healthy=True, lost=None))
        preauth.DISK._checked = 0.0  # a new check now, not within the second of the last one
        ready, body = asyncio.run(readiness(state))
        assert not ready
        assert body["checks"]["audit_disk"]["ok"] is ok
