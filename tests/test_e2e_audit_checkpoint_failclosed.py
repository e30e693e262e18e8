"""Review 3 observation: a checkpoint that cannot be written fails closed like a commit that cannot.

Checkpoints are the only evidence against a cut tail (docs/audit.md, "Tamper evidence"); with
``audit.checkpoints`` replaced by a directory the writer used to log one error and serve on, keeping no
evidence at all. Now it is unhealthy (503 audit_unavailable) until a checkpoint is written again.
"""

from __future__ import annotations

import time
from pathlib import Path

from .audit_support import recording  # noqa: F401 - a fixture
from .support import Upstream, jsonrpc, post, running_valet


def _status(url: str, key: str, i: int) -> tuple[int, str | None]:
    r = post(url, jsonrpc("tools/call", {"name": "x", "arguments": {}}, i), key)
    return r.status_code, (r.json().get("error", {}).get("data", {}).get("reason") if r.status_code >= 400 else None)


def test_an_unwritable_checkpoint_file_refuses_traffic_until_it_is_writable_again(
        tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        url = f"{valet.base}/notes"
        assert _status(url, key, 1)[0] == 200
        checkpoints = valet.data_dir / "audit.checkpoints"
        kept = checkpoints.read_text()
        checkpoints.unlink()
        checkpoints.mkdir()  # appending to it fails (IsADirectoryError), as a read-only or full disk would
        started, i = time.monotonic(), 2
        while _status(url, key, i) != (503, "audit_unavailable"):
            assert time.monotonic() - started < 15, "the checkpoint failure did not stop traffic"
            time.sleep(0.2)
            i += 1
        assert "audit checkpoint cannot be written" in valet.log.read_text()
        checkpoints.rmdir()
        checkpoints.write_text(kept)
        started = time.monotonic()
        while _status(url, key, i)[0] != 200:
            assert time.monotonic() - started < 10, "no recovery once the checkpoint file is writable"
            time.sleep(0.2)
            i += 1
        assert "audit checkpoints are written again" in valet.log.read_text()
    assert valet.cli("audit", "verify", check=False).returncode == 0
