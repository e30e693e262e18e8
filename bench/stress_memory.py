"""Valet's memory under hostile load (issue 9 item 1): prints RSS idle, peak and after, in MiB.

Two loads against a real Valet (run_proxy.py, reverse mode, one configured server):

- ``bodies``: 10 concurrent chunked 30 MiB POSTs without a valet key;
- ``floods``: three concurrent request heads of header lines without end (64 MiB each, or until
  Valet closes the connection).

Usage: ``.venv/bin/python bench/stress_memory.py``. The same measurement runs in
``tests/test_e2e_holdup_memory.py`` with generous bounds.
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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for figures in run(Path(tmp)):
            print(figures.line())


if __name__ == "__main__":
    main()
