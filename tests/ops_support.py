"""Helpers for the operations tests: Valet started with extra run options, stateless MCP calls, scraping."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from .support import PYTHON, ROOT, Valet, free_port, jsonrpc, post, write_config


def start_ops_valet(tmp: Path, config_text: str, policy: str, *args: str,
                    env: dict[str, str] | None = None) -> Valet:
    """Like support.start_valet, with extra ``valet run`` options (``--admin-listen``, ``--log-format``)."""
    (tmp / "policy.yaml").write_text(policy)
    config = tmp / "valet.yaml"
    config.write_text(config_text + "\npolicy_files: [policy.yaml]\n")
    data_dir = tmp / "data"
    port = free_port()
    log = tmp / "valet.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PYTHON, str(ROOT / "run_proxy.py"), "--config", str(config), "--data-dir", str(data_dir),
             "--listen", f"127.0.0.1:{port}", *args],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on" in text:
            banner = next(line for line in text.splitlines() if "listening on" in line)
            return Valet(port, data_dir, config, "reverse", process, log, banner)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"valet did not start: {log.read_text(errors='replace')}")


def stateless(valet: Valet, key: str, method: str, params: dict[str, Any], rpc_id: int = 1,
              server: str = "notes", headers: dict[str, str] | None = None) -> httpx.Response:
    """A 2026-07-28 request (no session), with the routing headers the SDK would send."""
    from mcp.shared.inbound import encode_header_value

    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    body = jsonrpc(method, {**params, "_meta": meta}, rpc_id)
    h = {"mcp-protocol-version": "2026-07-28", "mcp-method": method}
    if method == "tools/call":
        h["mcp-name"] = encode_header_value(params["name"])
    h.update(headers or {})
    return post(f"{valet.base}/{server}", body, key, headers=h)


def scrape(port: int) -> dict[str, float]:
    """/metrics as {'name{label="v",...}': value} (labels in the order Prometheus prints them)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


__all__ = ["sample", "scrape", "start_ops_valet", "stateless", "write_config"]
