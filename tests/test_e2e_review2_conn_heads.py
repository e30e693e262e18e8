"""Review 2, F10: an upstream's response head is capped like an agent's request head.

A real Valet in front of tests/upstream/heads.py. Before, a 64 MiB head was all kept (1.4 GB RSS for
256 MiB) and then relayed to the agent.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

from tests.support import PYTHON, ROOT, free_port, running_valet, wait_for_port


@pytest.fixture
def heads() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests" / "upstream" / "heads.py"), "--port", str(port)],
                               cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        process.kill()
        process.wait(10)


def _config(port: int) -> str:
    return f"servers:\n  api:\n    url: http://127.0.0.1:{port}\n    kind: http\n"


def test_flooding_response_head_is_502_with_bounded_memory(tmp: Path, heads: int) -> None:
    with running_valet(tmp, None, config_text=_config(heads)) as valet:
        key, _ = valet.new_key()
        proc = psutil.Process(valet.process.pid)
        time.sleep(0.5)
        rss0 = proc.memory_info().rss
        peak = [rss0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], proc.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            r = httpx.get(f"{valet.base}/api/flood", headers={"authorization": f"Bearer {key}"}, timeout=120)
        finally:
            time.sleep(0.5)
            stop.set()
            watcher.join(5)
        assert r.status_code == 502, r.text[:200]
        assert r.json()["error"]["data"]["reason"] == "upstream_error"
        assert "x-flood" not in r.text
        assert (peak[0] - rss0) < 64 * 1024 * 1024, f"RSS grew {(peak[0] - rss0) >> 20} MiB"
        rows = valet.rows("http_path LIKE '%flood%'")
        assert rows[0]["reason"] == "upstream_error"


def test_too_many_response_header_lines_is_502(tmp: Path, heads: int) -> None:
    with running_valet(tmp, None, config_text=_config(heads)) as valet:
        key, _ = valet.new_key()
        auth = {"authorization": f"Bearer {key}"}
        r = httpx.get(f"{valet.base}/api/many", headers=auth, timeout=60)
        assert r.status_code == 502 and r.json()["error"]["data"]["reason"] == "upstream_error"
        fine = httpx.get(f"{valet.base}/api/fine", headers=auth, timeout=60)  # 60 lines: relayed
        assert fine.status_code == 200 and fine.json() == {"ok": True}
        assert fine.headers["x-h59"] == "v"
