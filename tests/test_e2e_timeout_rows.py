"""Review 3, G13: a timeout's audit row says what the agent actually got.

(1) An https upstream whose TLS handshake never completes: the agent's connection used to be closed with no
answer at all while the row said 504 and 268 bytes; it now gets the 504 ``upstream_timeout`` and the row
says so. (2) A buffered answer whose upstream stalls after its head: the agent gets Valet's 504; the row
used to say 200 (the upstream's head, which never reached the agent) and the bytes of an SSE event.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from .support import PYTHON, ROOT, free_port, running_valet, wait_for_port

POLICY = "servers:\n  tls: {default: allow}\n  api: {default: allow}\nrules: []\n"


def test_timeout_rows_record_the_answer_the_agent_got(tmp: Path) -> None:
    port = free_port()
    upstream = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/stalling_up.py"), str(port)], cwd=ROOT)
    try:
        wait_for_port(port)
        config = (f"servers:\n  tls:\n    url: https://127.0.0.1:{port}\n    kind: http\n"
                  f"  api:\n    url: http://127.0.0.1:{port}\n    kind: http\n"
                  "timeouts:\n  connect_seconds: 2\n  first_byte_seconds: 3\n  total_seconds: 2\n")
        with running_valet(tmp, None, config_text=config, policy=POLICY) as valet:
            key, _ = valet.new_key()
            for path in ("/tls/x", "/api/halfbody"):
                r = httpx.get(f"{valet.base}{path}", headers={"authorization": f"Bearer {key}"}, timeout=30)
                assert r.status_code == 504, (path, r.status_code)
                assert r.json()["error"]["data"]["reason"] == "upstream_timeout"
                row = valet.rows("http_path = ?", (path,))[0]
                assert (row["http_status"], row["bytes_out"]) == (504, len(r.content)), (path, row)
                assert (row["decision"], row["reason"], row["error_code"]) == ("error", "upstream_timeout", -32013)
    finally:
        upstream.kill()
        upstream.wait(10)

