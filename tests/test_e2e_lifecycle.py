"""Starting and stopping Valet the way users do."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .support import PYTHON, ROOT, Upstream, jsonrpc, post, start_valet, write_config

pytestmark = pytest.mark.e2e


def test_broken_config_is_refused_at_startup_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("servers:\n  notes:\n    url: http://127.0.0.1:1/mcp\n    colour: blue\n")
    done = subprocess.run(
        [PYTHON, str(ROOT / "run_proxy.py"), "--config", str(config), "--data-dir", str(tmp_path / "d"),
         "--listen", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert f"{config}:4: servers.notes.colour: unknown key" in done.stderr


def test_sigterm_flushes_the_audit_log_and_exits_cleanly(upstream: Upstream, tmp_path: Path) -> None:
    valet = start_valet(tmp_path, {"notes": upstream.url})
    assert "listening on http://127.0.0.1:" in valet.banner and str(valet.config) in valet.banner
    key, key_id = valet.new_key()
    for i in range(50):
        post(valet.base + "/notes", jsonrpc("ping", rpc_id=i), key)
    assert valet.stop() == 0
    rows = valet.rows("key_id = ?", (key_id,), expect=50, timeout=0.5)
    assert len(rows) == 50
    # mitmproxy's CA lives in the data dir, not in ~/.mitmproxy
    assert (valet.data_dir / "mitmproxy" / "mitmproxy-ca.pem").exists()


def test_config_check_cli(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.yaml", {"notes": "http://127.0.0.1:1/mcp"})
    cli = str(Path(PYTHON).parent / "valet")
    ok = subprocess.run([cli, "config", "check", str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "ok (1 servers)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers:\n  notes: {url: gopher://x}\n")
    failed = subprocess.run([cli, "config", "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and f"{bad}:2: servers.notes.url" in failed.stderr
