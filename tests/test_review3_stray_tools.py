"""Review 3 (observation): a tools list on ANY answer of an MCP server is filtered, not only on the answer to
the tools/list request. A hostile upstream sent ``{"id": 5, "result": {"tools": [...]}}`` as an event of another
call's SSE answer (or in another call's JSON answer) before answering id 5, and the agent's SDK took it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from addon.secrets.outbound import Outbound
from addon.secrets.scrubber import Scrubber

from .support import PYTHON, ROOT, free_port, jsonrpc, post, start_valet, wait_for_port

TOOLS = [{"name": "read_notes"}, {"name": "delete_everything"}]


def outbound(mcp: bool = True) -> Outbound:
    return Outbound(Scrubber([]), visible=lambda name: name != "delete_everything", mcp=mcp)


def test_a_stray_tools_list_in_an_event_is_filtered() -> None:
    event = b"event: message\r\ndata: " + json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS}}).encode()
    out = outbound().event(event)
    assert b"delete_everything" not in out and b"read_notes" in out
    assert outbound(mcp=False).event(event) == event  # a plain HTTP API's answer is not an MCP result


def test_a_stray_tools_list_in_a_body_is_filtered_escaped_or_in_a_batch() -> None:
    body = ("[%s,%s]" % (json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": TOOLS}}).replace(
        '"tools"', '"\\u0074ools"'), json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}))).encode()
    out = outbound().body(body)
    assert b"delete_everything" not in out and b"read_notes" in out


def test_answers_without_a_tools_list_are_left_as_sent() -> None:
    for body in (b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"tools \\u00e9"}]}}',
                 b'not json at all, tools', b'{"jsonrpc":"2.0","id":1,"result":{"tools":"not a list"}}'):
        assert outbound().body(body) == body
        assert outbound().event(b"data: " + body) == b"data: " + body


POLICY = """
servers:
  stray: {default: allow}
rules:
  - id: no-wipe
    effect: deny
    tools: [delete_everything]
"""


@pytest.mark.e2e
@pytest.mark.parametrize("shape", ["sse", "json", "bigjson"])  # bigjson: 1.5 MiB, buffered for MCP servers
def test_end_to_end_a_stray_tools_list_is_filtered(tmp_path: Path, shape: str) -> None:
    port = free_port()
    upstream = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/tools_lists.py"), str(port)], cwd=ROOT)
    try:
        wait_for_port(port)
        proxy = start_valet(tmp_path, None, policy=POLICY,
                            config_text=f"servers:\n  stray:\n    url: http://127.0.0.1:{port}/stray-{shape}\n")
        try:
            key, _ = proxy.new_key("alice", "stray")
            r = post(f"{proxy.base}/stray", jsonrpc("tools/call", {"name": "read_notes", "arguments": {}}, 5), key,
                     headers={"mcp-protocol-version": "2025-11-25"})
            assert r.status_code == 200, r.text
            assert "read_notes" in r.text and '"ok' in r.text
            assert "delete_everything" not in r.text
        finally:
            assert proxy.stop() == 0
    finally:
        upstream.terminate()
        upstream.wait(10)
