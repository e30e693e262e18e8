"""Issue 9 item 1: buffered RESPONSE bodies count in the one global budget (``limits.max_buffered_total_bytes``).

Before this, only request bodies did: ten concurrent large upstream answers were all buffered at once,
whatever the budget. Now an answer that would pass the budget is cut: the upstream request is cancelled,
the agent gets ``503 busy`` (-32015) as a JSON-RPC error, the audit row says so, and the budget is given
back (``valet_buffered_bytes`` on /metrics returns to 0). Decoded bytes of compressed answers count too.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.ops_support import sample, scrape, start_ops_valet
from tests.support import MCP_HEADERS, PYTHON, ROOT, free_port, jsonrpc, wait_for_port

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024


@pytest.fixture
def large(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, log = free_port(), tmp_path / "large.log"
    log.write_text("")
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/large.py"), "--port", str(port),
                                "--log", str(log)], cwd=ROOT)
    wait_for_port(port)
    yield port, log
    process.terminate()
    process.wait(10)


def _config(port: int, buffered_mib: int, total_mib: int) -> str:
    return (f"servers:\n  big:\n    url: http://127.0.0.1:{port}/big\n  gz:\n    url: http://127.0.0.1:{port}/gzip\n"
            f"limits:\n  max_buffered_bytes: {buffered_mib * MIB}\n  max_buffered_total_bytes: {total_mib * MIB}\n")


class PeakRss:
    """The proxy's RSS sampled every 50 ms in a thread while the load runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.idle = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _fetch_all(base: str, key: str, paths: list[str], server: str = "big") -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(paths), max_keepalive_connections=0)
    headers = {**MCP_HEADERS, "authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        return await asyncio.gather(*[http.post(f"{base}/{server}/{p}", json=jsonrpc("tools/list", rpc_id=i),
                                                headers=headers) for i, p in enumerate(paths)])


def _buffered(admin: int) -> float:
    return sample(scrape(admin), "valet_buffered_bytes")


def _back_to_zero(admin: int) -> float:
    deadline = time.monotonic() + 20
    held = _buffered(admin)
    while held and time.monotonic() < deadline:
        time.sleep(0.2)
        held = _buffered(admin)
    return held


def test_concurrent_large_answers_share_one_budget(tmp: Path, large: tuple[int, Path]) -> None:
    """Ten 16 MiB answers at once against a 40 MiB budget: some are answered whole, the others 503 busy
    (the upstream request cancelled); RSS stays far below what buffering them all would take."""
    port, upstream_log = large
    admin = free_port()
    valet = start_ops_valet(tmp, _config(port, 20, 40), "rules:\n  - id: all\n    effect: allow\n",
                            "--admin-listen", f"127.0.0.1:{admin}")
    try:
        key, key_id = valet.new_key()
        assert _buffered(admin) == 0
        with PeakRss(valet.process.pid) as rss:
            answers = asyncio.run(_fetch_all(valet.base, key, ["16"] * 10))
        whole = [a for a in answers if a.status_code == 200]
        busy = [a for a in answers if a.status_code == 503]
        assert len(whole) + len(busy) == 10, [a.status_code for a in answers]
        assert whole and busy, [a.status_code for a in answers]
        for answer in whole:
            assert len(answer.content) == 16 * MIB and answer.json()["result"]["content"][0]["text"][:3] == "xxx"
        for answer in busy:
            error = answer.json()["error"]
            assert error["code"] == -32015 and error["data"]["reason"] == "busy", answer.text[:300]
            assert answer.headers["retry-after"] == "1"
        rows = valet.rows("key_id = ? AND reason = 'busy'", (key_id,), expect=len(busy))
        assert all(r["http_status"] == 503 and r["decision"] == "error" for r in rows)
        # the cut upstream answers were cancelled: every upstream connection ends (none is left sending into
        # a dropped stream), and some before their whole answer was even written to the socket
        deadline = time.monotonic() + 20
        sent: list[int] = []
        while len(sent) < 10 and time.monotonic() < deadline:
            sent = [int(line.split()[2]) for line in upstream_log.read_text().splitlines()
                    if line.startswith("closed /big/16")]
            time.sleep(0.1)
        assert len(sent) == 10 and min(sent) < 16 * MIB, upstream_log.read_text()
        # 10 x 16 MiB buffered at once would be 160 MiB before any copy; bounded well below that
        assert rss.peak - rss.idle < 150 * MIB, (rss.idle // MIB, rss.peak // MIB)
        assert _back_to_zero(admin) == 0
    finally:
        valet.stop()


def _start_upload(port: int, key: str, size: int) -> socket.socket:
    """A chunked POST left unfinished: its body so far is held in the budget until the connection goes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST /big HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
                 f"authorization: Bearer {key}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
    piece = b"x" * 65536
    for _ in range(size // len(piece)):
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    return sock


def test_decoded_bytes_count_and_the_budget_comes_back(tmp: Path, large: tuple[int, Path]) -> None:
    """A 6 MiB gzip answer is a few KB on the wire; decoded, it must fit in what is left of the 10 MiB budget.
    Alone it is answered whole; while an upload holds 7 MiB of the budget it is 503 busy; after, whole again."""
    port, _ = large
    admin = free_port()
    valet = start_ops_valet(tmp, _config(port, 10, 10), "rules:\n  - id: all\n    effect: allow\n",
                            "--admin-listen", f"127.0.0.1:{admin}")
    try:
        key, key_id = valet.new_key()
        alone = asyncio.run(_fetch_all(valet.base, key, ["6"], server="gz"))[0]
        assert alone.status_code == 200 and len(alone.content) == 6 * MIB, alone.text[:300]
        assert "content-encoding" not in alone.headers  # decoded by Valet (scrubbed), sent decoded
        upload = _start_upload(valet.port, key, 7 * MIB)
        deadline = time.monotonic() + 20
        while _buffered(admin) < 7 * MIB and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _buffered(admin) >= 7 * MIB
        squeezed = asyncio.run(_fetch_all(valet.base, key, ["6"], server="gz"))[0]
        assert squeezed.status_code == 503 and squeezed.json()["error"]["data"]["reason"] == "busy", squeezed.text[:300]
        row = valet.rows("key_id = ? AND server = 'gz' AND reason = 'busy'", (key_id,))[0]
        assert row["http_status"] == 503
        upload.close()
        assert _back_to_zero(admin) == 0
        again = asyncio.run(_fetch_all(valet.base, key, ["6"], server="gz"))[0]
        assert again.status_code == 200 and len(again.content) == 6 * MIB
        assert _back_to_zero(admin) == 0
    finally:
        valet.stop()
