from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Upstream, Valet, assert_clean_log, free_port, start_upstream, start_valet, wait_for_port


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = start_upstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def valet(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    """One reverse-mode Valet per test module, routing `notes` to the shared upstream."""
    proxy = start_valet(tmp_path_factory.mktemp("valet"), {"notes": upstream.url})
    yield proxy
    assert proxy.stop() == 0, "valet must shut down cleanly on SIGTERM"
    assert_clean_log(proxy)


@pytest.fixture
def key(valet: Valet) -> tuple[str, str]:
    return valet.new_key("alice", "test-agent")


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server of the suite's own, on a free loopback port (CI installs the package)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI installs it")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL)
    wait_for_port(port)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)
