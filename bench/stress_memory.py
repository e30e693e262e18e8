"""Valet's memory under hostile load (issue 9 item 1): prints RSS idle, peak and after, in MiB.

Loads against a real Valet (run_proxy.py, reverse mode):

- ``bodies``: 10 concurrent chunked 30 MiB POSTs without a valet key;
- ``floods``: three concurrent request heads of header lines without end (64 MiB each, or until
  Valet closes the connection);
- ``answers``: 10 concurrent 16 MiB upstream answers (tests/upstream/large.py) with a key, against a
  40 MiB ``limits.max_buffered_total_bytes`` (and, for comparison, a budget too large to matter);
- ``h2``: 20 concurrent HTTP/2 CONTINUATION floods (48 MiB of header block each) over TLS;
- ``hello``: 10 concurrent TLS ClientHellos claiming 16 MiB (12 MiB sent each).

Usage: ``.venv/bin/python bench/stress_memory.py``. The first two run in
``tests/test_e2e_holdup_memory.py`` with generous bounds; the others in ``tests/test_e2e_holdup_budget.py``
and ``tests/test_e2e_holdup_h2.py``.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import start_valet  # noqa: E402

MIB = 1024 * 1024


@dataclass
class Figures:
    load: str
    idle: float
    peak: float
    after: float
    seconds: float

    def line(self) -> str:
        return (f"{self.load:<40} idle {self.idle:7.1f} MiB  peak {self.peak:7.1f} MiB (+{self.peak - self.idle:.1f})"
                f"  after {self.after:7.1f} MiB (+{self.after - self.idle:.1f})  {self.seconds:.1f} s")


def _rss(process: psutil.Process) -> float:
    return process.memory_info().rss / MIB


def chunked_body(port: int, size: int = 30 * MIB) -> None:
    """A chunked POST of ``size`` bytes without a key; stops when Valet closes the connection."""
    piece = b"x" * (256 * 1024)
    frame = b"%x\r\n%s\r\n" % (len(piece), piece)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(f"POST /up HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
                         "transfer-encoding: chunked\r\n\r\n".encode())
            sent = 0
            while sent < size:
                sock.sendall(frame)
                sent += len(piece)
            sock.sendall(b"0\r\n\r\n")
            while sock.recv(65536):
                pass
    except OSError:
        pass  # Valet answered and closed: that is the point


def header_flood(port: int, size: int = 64 * MIB) -> None:
    line = b"x-flood: " + b"f" * 4000 + b"\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(f"GET /up HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n".encode())
            sent = 0
            while sent < size:
                sock.sendall(line)
                sent += len(line)
    except OSError:
        pass


def measure(pid: int, port: int, load: str, worker: Callable[[int], None], count: int) -> Figures:
    process = psutil.Process(pid)
    time.sleep(0.5)
    idle = _rss(process)
    peak = idle
    threads = [threading.Thread(target=worker, args=(port,)) for _ in range(count)]
    started = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, _rss(process))
        time.sleep(0.02)
    seconds = time.monotonic() - started
    after = _rss(process)
    deadline = time.monotonic() + 10
    while after - idle > 20 and time.monotonic() < deadline:  # give the allocator a moment to give back
        time.sleep(0.25)
        after = _rss(process)
    return Figures(load, idle, max(peak, after), after, seconds)


def run(tmp: Path) -> list[Figures]:
    valet = start_valet(tmp, {"up": "http://127.0.0.1:9/mcp"})
    try:
        return [
            measure(valet.process.pid, valet.port, "10 x 30 MiB chunked bodies, no key", chunked_body, 10),
            measure(valet.process.pid, valet.port, "3 x 64 MiB header floods", header_flood, 3),
        ]
    finally:
        valet.stop()


def _answers(valet_port: int, key: str, count: int = 10, size_mib: int = 16) -> list[int]:
    import asyncio

    import httpx

    async def fetch_all() -> list[int]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        headers = {"accept": "application/json, text/event-stream", "authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=300, limits=limits) as http:
            answers = await asyncio.gather(*[
                http.post(f"http://127.0.0.1:{valet_port}/big/big/{size_mib}",
                          json={"jsonrpc": "2.0", "id": i, "method": "tools/list"}, headers=headers)
                for i in range(count)])
        return [a.status_code for a in answers]

    return asyncio.run(fetch_all())


def run_answers(tmp: Path, total_mib: int) -> Figures:
    """10 concurrent 16 MiB answers through a Valet whose global body budget is ``total_mib``."""
    import subprocess

    from tests.support import PYTHON, free_port, wait_for_port

    port = free_port()
    upstream = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/large.py"), "--port", str(port),
                                 "--log", str(tmp / "large.log")], cwd=ROOT)
    wait_for_port(port)
    extra = f"limits:\n  max_buffered_bytes: {20 * MIB}\n  max_buffered_total_bytes: {total_mib * MIB}\n"
    valet = start_valet(tmp, {"big": f"http://127.0.0.1:{port}"}, extra=extra)
    try:
        key = valet.new_key()[0]
        statuses: list[int] = []
        figures = measure(valet.process.pid, valet.port, f"10 x 16 MiB answers, budget {total_mib} MiB",
                          lambda p: statuses.extend(_answers(p, key)), 1)
        figures.load += f" ({statuses.count(200)} x 200, {statuses.count(503)} x 503)"
        return figures
    finally:
        valet.stop()
        upstream.terminate()
        upstream.wait(10)


def run_tls(tmp: Path) -> list[Figures]:
    """HTTP/2 CONTINUATION floods and oversized TLS ClientHellos against one Valet."""
    from tests.test_e2e_holdup_h2 import _continuation_flood, _hello_flood

    valet = start_valet(tmp, {"notes": "http://127.0.0.1:9/mcp"}, extra="http2: true\n")  # h2 is opt-in
    try:
        return [
            measure(valet.process.pid, valet.port, "20 x h2 CONTINUATION floods (48 MiB)",
                    lambda p: _continuation_flood(valet, 384, []), 20),
            measure(valet.process.pid, valet.port, "10 x TLS ClientHello floods (12 MiB)",
                    lambda p: _hello_flood(p, 12 * MIB, []), 10),
        ]
    finally:
        valet.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("a", "b", "c", "d"):
            (root / name).mkdir()
        for figures in run(root / "a") + [run_answers(root / "b", 40), run_answers(root / "c", 4096)] + \
                run_tls(root / "d"):
            print(figures.line(), flush=True)


if __name__ == "__main__":
    main()
