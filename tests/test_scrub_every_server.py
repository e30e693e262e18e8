"""Review 4 (H1): every answer is scrubbed of every server's secrets, not only those of the servers on its
origin as the config spells it. One upstream reached under two names (``127.0.0.1:P`` and ``localhost:P``),
or an upstream that holds another server's value by other means, must not hand it to an agent."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from .support import PYTHON, ROOT, assert_clean_log, free_port, jsonrpc, post, start_valet, wait_for_port

TOKEN = "fake-billing-token-7f3a9c2e1d5b"  # obviously fake


@pytest.fixture
def last_request(request: pytest.FixtureRequest) -> Iterator[tuple[int, list[str]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> int:
        port = free_port()
        procs.append(subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/last_request.py"), "--port", str(port),
                                       *extra], cwd=ROOT))
        wait_for_port(port)
        return port

    yield start  # type: ignore[misc]
    for proc in procs:
        proc.kill()
        proc.wait(10)


def _config(billing: str, notes: str) -> str:
    return f"""
servers:
  billing:
    url: {billing}
    headers:
      Authorization: "Bearer ${{secret:BILLING_TOKEN}}"
  notes:
    url: {notes}
"""


def test_one_upstream_under_two_names_does_not_hand_one_servers_token_to_the_other(tmp_path: Path,
                                                                                    last_request) -> None:
    port = last_request()
    valet = start_valet(tmp_path, None, config_text=_config(f"http://127.0.0.1:{port}/mcp",
                                                          f"http://localhost:{port}/mcp"))
    try:
        valet.cli("secret", "set", "BILLING_TOKEN", "--server", "billing", stdin=TOKEN)
        key, _ = valet.new_key()
        first = post(f"{valet.base}/billing", jsonrpc("tools/call", {"name": "charge", "arguments": {}}, 1), key)
        second = post(f"{valet.base}/notes", jsonrpc("tools/call", {"name": "read", "arguments": {}}, 2), key)
        assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
        assert TOKEN not in second.text
        assert "[REDACTED:BILLING_TOKEN]" in second.text  # the upstream did quote it: Valet scrubbed it
    finally:
        valet.stop()
    assert_clean_log(valet)
    assert TOKEN not in valet.log.read_text(errors="replace")


def test_an_upstream_holding_another_servers_value_cannot_pass_it_on(tmp_path: Path, last_request) -> None:
    """Two distinct upstreams; the one ``notes`` reaches holds billing's token by other means (a relay to
    billing, a shared cache): its answers are scrubbed of it too."""
    billing = last_request()
    notes = last_request("--say", f"cached credential {TOKEN}")
    valet = start_valet(tmp_path, None, config_text=_config(f"http://127.0.0.1:{billing}/mcp",
                                                          f"http://127.0.0.1:{notes}/mcp"))
    try:
        valet.cli("secret", "set", "BILLING_TOKEN", "--server", "billing", stdin=TOKEN)
        key, _ = valet.new_key()
        answer = post(f"{valet.base}/notes", jsonrpc("tools/call", {"name": "read", "arguments": {}}, 1), key)
        assert answer.status_code == 200, answer.text
        assert TOKEN not in answer.text and "[REDACTED:BILLING_TOKEN]" in answer.text
    finally:
        valet.stop()
