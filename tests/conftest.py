from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Upstream, Valet, assert_clean_log, start_upstream, start_valet


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
