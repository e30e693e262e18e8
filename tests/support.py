"""Helpers for the end-to-end tests: real processes on real loopback sockets.

Valet is started exactly as a user starts it (``run_proxy.py`` in a subprocess,
with a config file and a data dir); keys are made with the real ``valet`` CLI;
the upstream is a real MCP server (``tests/upstream/mcp_server.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
VALET_CLI = str(Path(sys.executable).parent / "valet")  # the console script users run


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_slice() -> range:
    """This test process's own ports: below the kernel's ephemeral range, one slice per xdist worker.

    Why not bind port 0 and hand the number on: that port comes from the ephemeral range, and
    between our close and the server's bind any outbound connection on the machine (three workers
    make thousands) may be given it as its local port -- CI failed on exactly that
    ("127.0.0.1:50283 is already in use"). Ports below the range are never handed out by the
    kernel, and a slice per worker keeps the workers off each other's ports.
    """
    low, _high = _ephemeral_range()
    top = min(low, 32768) if low >= 16000 else 32768  # a range that starts low leaves no safe room anyway
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    base, size = 12000, max(500, (top - 12000) // 8)
    start = base + (index % 8) * size
    return range(start, start + size)


_PORTS = _port_slice()
_next_port = (os.getpid() * 7) % len(_PORTS)  # a later run on the same slice starts elsewhere (TIME_WAIT)


def free_port() -> int:
    """A loopback port nothing listens on, from this worker's slice (see ``_port_slice``)."""
    global _next_port
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port % len(_PORTS)]
        _next_port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the slice is exhausted: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Upstream:
    port: int
    process: subprocess.Popen[bytes]
    scheme: str = "http"

    @property
    def url(self) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}/mcp"

    def requests_seen(self) -> int:
        verify: Any = False if self.scheme == "https" else True
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        r = httpx.get(f"{self.scheme}://{host}:{self.port}/_requests", verify=verify, timeout=5)
        return r.json()["count"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_upstream(certfile: Path | None = None, keyfile: Path | None = None, json_response: bool = False) -> Upstream:
    port = free_port()
    cmd = [PYTHON, str(ROOT / "tests/upstream/mcp_server.py"), "--port", str(port)]
    if json_response:
        cmd.append("--json-response")
    if certfile and keyfile:
        cmd += ["--certfile", str(certfile), "--keyfile", str(keyfile)]
    process = subprocess.Popen(cmd, cwd=ROOT)
    wait_for_port(port)
    return Upstream(port, process, "https" if certfile else "http")


def start_http_api() -> Upstream:
    """The plain HTTP echo API (tests/upstream/http_api.py), for ``kind: http`` servers."""
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/http_api.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    return Upstream(port, process)


@dataclass
class Valet:
    """A running Valet proxy and the CLI bound to its data dir."""

    port: int
    data_dir: Path
    config: Path
    mode: str
    process: subprocess.Popen[bytes]
    log: Path
    banner: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VALET_DATA_DIR": str(self.data_dir), "VALET_CONFIG": str(self.config)}
        return subprocess.run(
            [VALET_CLI, *args], cwd=ROOT, env=env, input=stdin,
            capture_output=True, text=True, check=check, timeout=60,
        )

    def new_key(self, user: str = "alice", agent: str = "test-agent") -> tuple[str, str]:
        """(key, key id), made with the real CLI."""
        key = self.cli("key", "create", "--user", user, "--agent", agent).stdout.strip()
        return key, key.split("_")[1]

    def rows(self, where: str = "1=1", params: tuple[Any, ...] = (), expect: int = 1,
             timeout: float = 10.0, settled: bool = True) -> list[dict[str, Any]]:
        """Audit rows matching ``where``; waits until at least ``expect`` exist (the writer is async).

        Rows are written ahead and completed when the exchange ends; ``settled`` (the default) counts
        only completed rows, so that assertions on the outcome do not race the completion.
        """
        if settled:
            where = f"({where}) AND coalesce(state, 'done') != 'pending'"
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                conn = sqlite3.connect(f"file:{self.data_dir / 'audit.db'}?mode=ro", uri=True)
                conn.row_factory = sqlite3.Row
                rows = [dict(r) for r in conn.execute(f"SELECT * FROM exchanges WHERE {where} ORDER BY id", params)]
                conn.close()
            except sqlite3.OperationalError:
                rows = []
            if len(rows) >= expect:
                return rows
            time.sleep(0.05)
        raise AssertionError(f"expected {expect} audit rows where {where} {params}, found {len(rows)}: {rows}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return -9
        return self.process.returncode


ALLOW_ALL = "rules:\n  - id: allow-all\n    effect: allow\n"


def write_config(path: Path, servers: dict[str, str], extra: str = "", policy: str | None = ALLOW_ALL) -> Path:
    """A config, and beside it ``policy.yaml`` (by default one rule allowing everything)."""
    lines = ["servers:"] + [f"  {name}:\n    url: {url}" for name, url in servers.items()]
    if not servers:
        lines = ["servers: {}"]
    text = "\n".join(lines) + "\n" + extra
    if policy is not None:
        (path.parent / "policy.yaml").write_text(policy)
        if "policy_files" not in text:
            text += "\npolicy_files: [policy.yaml]\n"
    path.write_text(text)
    return path


def start_valet(tmp: Path, servers: dict[str, str] | None, mode: str = "reverse", extra: str = "",
                config_text: str | None = None, env: dict[str, str] | None = None,
                policy: str | None = ALLOW_ALL) -> Valet:
    """Start run_proxy.py; its whole output goes to ``<tmp>/valet.log`` (tests search it for leaks)."""
    config = tmp / "valet.yaml"
    if config_text is not None:
        if policy is not None:
            (tmp / "policy.yaml").write_text(policy)
            if "policy_files" not in config_text:
                config_text += "\npolicy_files: [policy.yaml]\n"
        config.write_text(config_text)
    else:
        write_config(config, servers or {}, extra, policy)
    data_dir = tmp / "data"
    port = free_port()
    log = tmp / "valet.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PYTHON, str(ROOT / "run_proxy.py"), "--config", str(config), "--data-dir", str(data_dir),
             "--listen", f"127.0.0.1:{port}", "--mode", mode],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on" in text:
            banner = next(line for line in text.splitlines() if "listening on" in line)
            return Valet(port, data_dir, config, mode, process, log, banner)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"valet did not start: {log.read_text(errors='replace')}")


def jsonrpc(method: str, params: dict[str, Any] | None = None, rpc_id: int | None = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    if rpc_id is not None:
        msg["id"] = rpc_id
    return msg


MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def post(url: str, body: bytes | dict[str, Any] | list[Any], key: str | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    h = dict(MCP_HEADERS)
    if key is not None:
        h["authorization"] = f"Bearer {key}"
    h.update(headers or {})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, headers=h, timeout=15)


@contextmanager
def running_valet(tmp: Path, servers: dict[str, str], **kw: Any) -> Iterator[Valet]:
    valet = start_valet(tmp, servers, **kw)
    try:
        yield valet
    finally:
        valet.stop()


def assert_clean_log(valet: Valet) -> None:
    """No hook raised while the suite drove this proxy: an unexpected exception is a bug even when it failed closed."""
    log = valet.log.read_text(errors="replace")
    assert "Addon error" not in log and "internal error" not in log, log[-3000:]
