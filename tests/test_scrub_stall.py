"""Scrubbing a large answer must not stall the other agents (the event loop stays free).

One agent fetches a 30 MiB answer (20 secrets configured, one quoted every
64 KiB) again and again; meanwhile another agent's small calls are timed. The
bound here is generous (a loaded 2-core CI machine); ``make bench`` prints the
precise figure. The helpers are shared with bench/bench.py.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import PYTHON, ROOT, Upstream, Valet, assert_clean_log, free_port, start_valet, wait_for_port

pytestmark = pytest.mark.e2e

SECRETS = {f"S{i:02d}": f"fake-stall-secret-{i:02d}-0123456789abcdef" for i in range(20)}


def start_hostile() -> Upstream:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/hostile.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    return Upstream(port, process)


def big_config(upstream_port: int) -> str:
    headers = "".join(f'      X-{name}: "${{secret:{name}}}"\n' for name in SECRETS)
    return (f"servers:\n  big:\n    url: http://127.0.0.1:{upstream_port}/api\n    kind: http\n"
            f"    headers:\n      Authorization: \"Bearer ${{secret:S00}}\"\n{headers}"
            "limits:\n  max_buffered_bytes: 134217728\n")


def start_big_valet(tmp: Path, upstream_port: int) -> Valet:
    valet = start_valet(tmp, None, config_text=big_config(upstream_port))
    for name, value in SECRETS.items():
        valet.cli("secret", "set", name, "--server", "big", stdin=value)
    return valet


def measure_stall(base: str, key: str, mib: float = 30, big_fetches: int = 3,
                  headers: dict[str, str] | None = None, scrubbed: bool = True) -> dict[str, float]:
    """Small calls' latency alone, then while another client fetches ``mib`` MiB answers; seconds."""
    auth = {"authorization": f"Bearer {key}", **(headers or {})}

    def small_calls(client: httpx.Client, stop: threading.Event | None, count: int) -> list[float]:
        out: list[float] = []
        while (stop is None and len(out) < count) or (stop is not None and not stop.is_set()):
            start = time.perf_counter()
            r = client.get(f"{base}/small", headers=auth)
            out.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
            time.sleep(0.005)
        return out

    with httpx.Client(timeout=120) as small, httpx.Client(timeout=120) as large:
        alone = small_calls(small, None, 100)
        stop = threading.Event()
        during: list[float] = []
        worker = threading.Thread(target=lambda: during.extend(small_calls(small, stop, 0)))
        big_times: list[float] = []
        worker.start()
        try:
            for _ in range(big_fetches):
                start = time.perf_counter()
                r = large.get(f"{base}/big?mib={mib}", headers=auth)
                big_times.append(time.perf_counter() - start)
                assert r.status_code == 200 and len(r.content) > mib * 2**20 * 0.9
                if scrubbed:
                    assert b"fake-stall-secret" not in r.content and b"[REDACTED:" in r.content
        finally:
            stop.set()
            worker.join(120)
    alone.sort()
    during.sort()
    return {
        "alone_p50": statistics.median(alone),
        "alone_p99": alone[int(len(alone) * 0.99) - 1],
        "during_p50": statistics.median(during),
        "during_p99": during[max(0, int(len(during) * 0.99) - 1)],
        "during_max": during[-1],
        "big_fetch": statistics.median(big_times),
        "small_calls_during": float(len(during)),
    }


@pytest.fixture(scope="module")
def hostile() -> Iterator[Upstream]:
    upstream = start_hostile()
    yield upstream
    upstream.stop()


def test_a_30_mib_answer_does_not_stall_the_others(hostile: Upstream, tmp_path: Path) -> None:
    valet = start_big_valet(tmp_path, hostile.port)
    try:
        key, _ = valet.new_key("alice", "stall")
        figures = measure_stall(f"{valet.base}/big", key)
    finally:
        assert valet.stop() == 0
    assert_clean_log(valet)
    assert figures["small_calls_during"] >= 3
    assert figures["during_p99"] < 0.5 + figures["alone_p99"], figures
