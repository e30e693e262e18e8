"""Shared by the audit tests: the recording upstream (tests/upstream/recording_api.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from .support import PYTHON, ROOT, Upstream, free_port, wait_for_port


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
