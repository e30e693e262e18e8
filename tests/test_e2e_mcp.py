"""The MCP SDK client, in both protocol generations, through a real Valet to a real MCP server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .support import Upstream, Valet

pytestmark = pytest.mark.e2e


def client(valet: Valet, key: str, mode: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return Client(streamable_http_client(f"{valet.base}/notes", http_client=http), mode=mode)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_list_and_call_through_valet_are_audited(valet: Valet, mode: str) -> None:
    key, key_id = valet.new_key("alice", f"agent-{mode}")

    async def scenario() -> tuple[list[str], str]:
        async with client(valet, key, mode) as c:
            tools = await c.list_tools()
            result = await c.call_tool("add", {"a": 20, "b": 22})
            return [t.name for t in tools.tools], result.content[0].text

    names, answer = asyncio.run(scenario())
    assert {"add", "echo", "progress"} <= set(names)
    assert answer == "42"

    call = valet.rows("key_id = ? AND rpc_method = 'tools/call'", (key_id,))[0]
    assert call["user"] == "alice" and call["agent"] == f"agent-{mode}"
    assert call["server"] == "notes" and call["mode"] == "reverse"
    assert call["tool"] == "add" and json.loads(call["arguments"]) == {"a": 20, "b": 22}
    assert call["decision"] == "allow" and call["http_status"] == 200
    assert call["bytes_in"] > 0 and call["bytes_out"] > 0 and call["duration_ms"] > 0
    assert call["ts"].endswith("Z") and "T" in call["ts"]
    assert json.loads(call["rpc_id"]) is not None
    assert valet.rows("key_id = ? AND rpc_method = 'tools/list'", (key_id,))
    if mode == "legacy":
        init = valet.rows("key_id = ? AND rpc_method = 'initialize'", (key_id,))[0]
        assert init["session_id"], "the session id the upstream issued is recorded"
        assert call["session_id"] == init["session_id"]
        # the SDK ends a legacy session with DELETE; the GET stream row completes when it closes
        assert valet.rows("key_id = ? AND http_method = 'DELETE'", (key_id,))[0]["http_status"] in (200, 204)
        assert valet.rows("key_id = ? AND http_method = 'GET'", (key_id,))[0]["http_status"] == 200


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_progress_events_arrive_as_they_are_sent(valet: Valet, mode: str) -> None:
    key, _ = valet.new_key()
    delays: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        assert message is not None
        delays.append(time.time() - float(message.split("=", 1)[1]))

    async def scenario() -> str:
        async with client(valet, key, mode) as c:
            result = await c.call_tool("progress", {"steps": 5, "interval": 0.2}, progress_callback=on_progress)
            return result.content[0].text

    assert asyncio.run(scenario()) == "done"
    assert len(delays) == 5
    assert max(delays) < 0.05, f"progress events were held back: {delays}"


def test_upstream_dying_midstream_is_an_audited_error_and_valet_keeps_serving(
    valet: Valet, upstream: Upstream, tmp_path
) -> None:
    from .support import running_valet, start_upstream

    doomed = start_upstream()
    try:
        with running_valet(tmp_path, {"doomed": doomed.url, "notes": upstream.url}) as proxy:
            key, key_id = proxy.new_key()

            async def call_doomed() -> None:
                http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=10)
                async with Client(streamable_http_client(f"{proxy.base}/doomed", http_client=http),
                                  mode="auto", read_timeout_seconds=5) as c:
                    await c.call_tool("die_midstream", {})

            with pytest.raises(BaseException):
                asyncio.run(call_doomed())
            row = proxy.rows("tool = 'die_midstream'")[0]
            assert row["decision"] == "error" and row["reason"] == "upstream_error"

            async def call_healthy() -> str:
                async with client(proxy, key, "auto") as c:
                    return (await c.call_tool("add", {"a": 1, "b": 1})).content[0].text

            assert asyncio.run(call_healthy()) == "2"
    finally:
        doomed.stop()
