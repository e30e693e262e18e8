"""Issue 9 item 6: at the fd limit, one log line per interval (not a traceback per accept), and serving
resumes by itself once fds are free (RLIMIT_NOFILE lowered on the running proxy with prlimit)."""

from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path

from tests.support import running_valet


def test_fd_exhaustion_is_one_line_and_serving_resumes(tmp: Path) -> None:
    with running_valet(tmp, {"up": "http://127.0.0.1:9/mcp"}) as valet:
        pid = valet.process.pid
        opened = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (opened + 20, opened + 20))
        socks = []
        try:
            for _ in range(60):  # more than the proxy may hold: the rest wait in the listen queue
                socks.append(socket.create_connection(("127.0.0.1", valet.port), timeout=10))
            time.sleep(2)
            size = valet.log.stat().st_size
            time.sleep(4)
            growth = valet.log.stat().st_size - size
            text = valet.log.read_text(errors="replace")
            assert growth < 2000, growth  # was ~320 KB/s of tracebacks
            assert "cannot accept new connections" in text and "Traceback" not in text
        finally:
            for sock in socks:
                sock.close()
        deadline = time.monotonic() + 20
        while True:  # asyncio retries accepting every second
            try:
                with socket.create_connection(("127.0.0.1", valet.port), timeout=5) as sock:
                    sock.sendall(b"GET /up HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n\r\n" % valet.port)
                    if sock.recv(100).startswith(b"HTTP/1.1 401"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serving did not resume"
            time.sleep(0.5)
