"""Review 2, F12 and F4: tools/list answers Valet must read whatever their spelling, and keep little of.

F12: the filter that hides tools the policy denies ran only when the raw bytes held ``"tools"``, so an
answer writing ``"\\u0074ools"`` (which every JSON parser reads as ``tools``), or compressed without a
label, listed a denied tool. F4: Valet kept a deep copy of every relayed schema (up to 10,000, no
bound in bytes): 22 MiB of tools/list answers cost +333 MiB of RSS, for good. It now keeps only the
``x-mcp-header`` skeleton of each schema, which is what rebuilding ``Mcp-Param-*`` headers needs.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from .support import PYTHON, ROOT, Valet, assert_clean_log, free_port, jsonrpc, post, start_valet, wait_for_port

pytestmark = pytest.mark.e2e

POLICY = ("rules:\n  - id: allow-all\n    effect: allow\n"
          "  - id: no-delete\n    effect: deny\n    tools: [delete_everything]\n")
SHAPES = ("plain", "escaped", "gzip", "badgzip", "big")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    port = free_port()
    upstream = subprocess.Popen([PYTHON, str(ROOT / "tests" / "upstream" / "tools_lists.py"), str(port)], cwd=ROOT)
    wait_for_port(port)
    config = "servers:\n" + "".join(f"  {shape}:\n    url: http://127.0.0.1:{port}/{shape}\n" for shape in SHAPES)
    valet = start_valet(tmp_path_factory.mktemp("tools"), None, config_text=config, policy=POLICY)
    yield valet
    try:
        assert valet.stop() == 0
        assert_clean_log(valet)
    finally:
        upstream.terminate()
        upstream.wait(10)


def tool_names(answer: httpx.Response) -> list[str]:
    """The tool names an agent reads, decompressing what its client would have to guess at."""
    raw = answer.content
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return [tool["name"] for tool in json.loads(raw)["result"]["tools"]]


@pytest.mark.parametrize("shape", ["plain", "escaped", "gzip"])
def test_a_denied_tool_is_never_listed_whatever_the_spelling_of_the_answer(proxy: Valet, shape: str) -> None:
    key, _ = proxy.new_key("alice", f"list-{shape}")
    answer = post(f"{proxy.base}/{shape}", jsonrpc("tools/list"), key)
    assert answer.status_code == 200, answer.text[:300]
    assert tool_names(answer) == ["read_notes"]


def test_a_tools_list_answer_that_claims_gzip_and_does_not_decode_is_refused(proxy: Valet) -> None:
    key, _ = proxy.new_key("alice", "list-badgzip")
    answer = post(f"{proxy.base}/badgzip", jsonrpc("tools/list"), key)
    assert answer.status_code == 502
    assert b"delete_everything" not in answer.content


def test_remembered_schemas_keep_only_what_mcp_param_headers_need(proxy: Valet) -> None:
    key, _ = proxy.new_key("alice", "list-big")
    process = psutil.Process(proxy.process.pid)
    post(f"{proxy.base}/big", jsonrpc("tools/list"), key)  # warm up: buffers, parsers, first allocations
    time.sleep(1)
    before = process.memory_info().rss
    relayed = 0
    for i in range(3):  # about 7 MiB each, 100 fresh tools each time
        answer = post(f"{proxy.base}/big", jsonrpc("tools/list", rpc_id=i + 2), key)
        assert answer.status_code == 200
        relayed += len(answer.content)
    time.sleep(2)
    grown = (process.memory_info().rss - before) >> 20
    assert relayed > 18 << 20
    assert grown < 120, f"Valet kept +{grown} MiB after relaying {relayed >> 20} MiB of tools/list answers"
    # what is kept is enough: an Mcp-Param-* header of a remembered tool is verified and rebuilt, not refused
    call = jsonrpc("tools/call", {"name": "t3_7", "arguments": {"region": "eu"}})
    answer = post(f"{proxy.base}/big", call, key, headers={"mcp-param-region": "eu"})
    assert answer.status_code == 200, answer.text[:300]
    unknown = post(f"{proxy.base}/big", jsonrpc("tools/call", {"name": "never_listed", "arguments": {}}), key,
                   headers={"mcp-param-region": "eu"})
    assert unknown.json()["error"]["data"]["reason"] == "param_headers_unverified"
