from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ROOT, Upstream, Valet, assert_clean_log, free_port, start_upstream, start_valet, wait_for_port


REPO_TREE_LOCK = Path(tempfile.gettempdir()) / f"valet-tests-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}.lock"


@pytest.fixture(autouse=True)
def _repo_tree_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests marked ``repo_tree`` run one at a time across every pytest process of this checkout.

    Why: ``make test`` runs test files in parallel (pytest-xdist, ``--dist loadfile``). Tests that use
    something outside their tmp dirs (the README's fixed ports, ``call.py`` written into the repository,
    ``policies/`` edited while the walkthrough runs) would see each other's half-done work. An flock
    (released by the kernel if the holder dies) on a file named after this checkout serializes them,
    whichever worker or run they are in; one serial run never contends for it. It is not
    ``xdist_group``: ``--dist loadgroup`` silently stopped grouping with pytest 9.2 (pytest-xdist#1386).
    """
    if request.node.get_closest_marker("repo_tree") is None:
        yield
        return
    with REPO_TREE_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


DURATIONS = Path(__file__).with_name("durations.json")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the slowest test files first (``--dist loadfile --no-loadscope-reorder``).

    Why: a worker takes a whole file at a time, so the run ends when the last file taken ends. Taken
    last, one 80-second file (the walkthrough) kept a 2-core run going alone for minutes; taken first,
    the quick unit-test files fill the gaps at the end. ``tests/durations.json`` holds each file's
    measured seconds (only the order matters, so stale numbers cost time, never correctness); a file
    it does not know yet counts as slow and goes first. Serial runs keep pytest's own order.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    try:
        seconds: dict[str, float] = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        seconds = {}
    slowest = max(seconds.values(), default=0.0)
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::", 1)[0], slowest))  # stable: a file keeps its order


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Seconds per test file (setup, call, teardown), summed where the reports arrive (the xdist controller)."""
    if os.environ.get("VALET_TEST_DURATIONS") and not os.environ.get("PYTEST_XDIST_WORKER"):
        path = report.nodeid.split("::", 1)[0]
        _measured[path] = _measured.get(path, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """``VALET_TEST_DURATIONS=1 make test`` updates tests/durations.json with the files this run measured."""
    if _measured and exitstatus == 0:
        try:
            seconds = json.loads(DURATIONS.read_text())
        except (OSError, ValueError):
            seconds = {}
        seconds.update({path: round(total, 1) for path, total in _measured.items()})
        DURATIONS.write_text(json.dumps(dict(sorted(seconds.items())), indent=1) + "\n")


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
