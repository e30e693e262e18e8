"""Shared by the audit tests: the recording upstream (tests/upstream/recording_api.py), the rows on disk right now,
and a process that holds the audit database locked."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from .support import PYTHON, ROOT, Upstream, Valet, free_port, wait_for_port


@pytest.fixture
def recording() -> Iterator[Upstream]:
    """A JSON-RPC upstream that records the id of every request it receives (no MCP session needed)."""
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/recording_api.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    upstream = Upstream(port, process)
    yield upstream
    process.kill()  # it may hold a deliberately slow request: no graceful wait
    process.wait(10)


def upstream_ids(upstream: Upstream) -> set[str]:
    """The JSON-encoded ids of the requests that reached the upstream."""
    ids = httpx.get(f"http://127.0.0.1:{upstream.port}/_ids", timeout=10).json()["ids"]
    return {json.dumps(i) for i in ids}


def rows_now(valet: Valet, since: int = 0) -> list[sqlite3.Row]:
    """The rows after id ``since`` as they are on disk right now (no waiting: a row must precede the answer)."""
    conn = sqlite3.connect(f"file:{valet.data_dir / 'audit.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM exchanges WHERE id > ? ORDER BY id", (since,)).fetchall()
    finally:
        conn.close()


def last_id(valet: Valet) -> int:
    rows = rows_now(valet)
    return rows[-1]["id"] if rows else 0


# ``python -c HOLD_LOCK DB SECONDS``: a real second process holding the database's write lock for SECONDS
HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` to Valet as raw bytes on a new connection and read everything until it is closed."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(20)
        sock.sendall(data)
        answer = b""
        while True:
            try:
                piece = sock.recv(65536)
            except OSError:
                break
            if not piece:
                break
            answer += piece
        return answer
