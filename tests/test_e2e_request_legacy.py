"""JSON-RPC is judged as JSON-RPC wherever it is sent; the legacy HTTP+SSE transport works through Valet (item 6).

The upstream is the `mcp` SDK's own legacy server (``sse_app``): ``GET /sse``
streams the answers, ``POST /messages/?session_id=`` takes the requests.
Through Valet, its ``endpoint`` event names Valet's mount, its messages
endpoint is judged by tool rules (a server ``default: allow`` never lets a
denied tool run), its session is bound to the key that opened the stream, and
tools/list answers arriving on the stream are filtered.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from .support import PYTHON, ROOT, Upstream, Valet, assert_clean_log, free_port, jsonrpc, start_valet, wait_for_port

pytestmark = pytest.mark.e2e

POLICY = """
servers:
  legacy: {default: allow}
rules:
  - id: no-delete
    effect: deny
    tools: [delete_everything]
  - id: no-hidden
    effect: deny
    tools: [hidden_tool]
"""
INIT = jsonrpc("initialize", {"protocolVersion": "2024-11-05", "capabilities": {},
                              "clientInfo": {"name": "raw", "version": "0"}})
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def legacy() -> Iterator[Upstream]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/legacy_sse.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    server = Upstream(port, process)
    yield server
    server.stop()


def seen(upstream: Upstream) -> dict:
    return httpx.get(f"http://127.0.0.1:{upstream.port}/_requests", timeout=5).json()


@pytest.fixture(scope="module", params=["reverse", "forward"])
def valet(request, legacy: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start_valet(tmp_path_factory.mktemp(f"legacy-{request.param}"), {"legacy": f"http://127.0.0.1:{legacy.port}"},
                        mode=request.param, policy=POLICY)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


class Agent:
    """A raw legacy-transport agent: the stream in a background thread-free loop, POSTs beside it."""

    def __init__(self, valet: Valet, legacy: Upstream, key: str) -> None:
        self.valet, self.key = valet, key
        if valet.mode == "reverse":
            self.base = valet.base + "/legacy"
            self.proxy = None
            self.client = httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=15)
        else:
            self.base = f"http://127.0.0.1:{legacy.port}"
            self.proxy = f"http://agent:{key}@127.0.0.1:{valet.port}"
            self.client = httpx.Client(proxy=self.proxy, timeout=15)

    def url(self, endpoint: str) -> str:
        return (self.valet.base if self.valet.mode == "reverse" else self.base) + endpoint

    @contextmanager
    def stream(self, path: str) -> Iterator[tuple[str, str]]:
        """Open the event stream, yield its first event (name, data) while it stays open."""
        with httpx.Client(headers=self.client.headers, timeout=15,
                          **({"proxy": self.proxy} if self.proxy else {})) as streaming:
            with streaming.stream("GET", self.base + path, headers={"accept": "text/event-stream"}) as r:
                assert r.status_code == 200
                text = ""
                chunks = r.iter_text()  # kept referenced: a collected generator would close the stream
                for chunk in chunks:
                    text += chunk
                    if "\n\n" in text.replace("\r\n", "\n"):
                        break
                lines = text.replace("\r\n", "\n").split("\n")
                event = next((line[6:].strip() for line in lines if line.startswith("event:")), "")
                data = "\n".join(line[5:].strip() for line in lines if line.startswith("data:"))
                yield event, data


def test_the_sdk_legacy_client_works_and_sees_only_allowed_tools(valet: Valet, legacy: Upstream) -> None:
    key, _ = valet.new_key("alice", f"legacy-sdk-{valet.mode}")
    if valet.mode == "reverse":
        url, headers, factory = f"{valet.base}/legacy/sse", {"authorization": f"Bearer {key}"}, None
    else:  # the agent talks to the upstream's own URL, through Valet as its HTTP proxy
        url, headers = f"http://127.0.0.1:{legacy.port}/sse", None
        proxy = f"http://agent:{key}@127.0.0.1:{valet.port}"

        def factory(headers=None, timeout=None, auth=None):  # type: ignore[no-untyped-def]
            return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, proxy=proxy)

    async def scenario() -> tuple[list[str], str]:
        transport = sse_client(url, headers=headers, **({"httpx_client_factory": factory} if factory else {}))
        async with Client(transport, mode="legacy") as client:
            names = [t.name for t in (await client.list_tools()).tools]
            echoed = (await client.call_tool("echo", {"text": "hi"})).content[0].text
            return names, echoed

    names, echoed = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "echo" in names and "delete_everything" not in names and "hidden_tool" not in names
    assert echoed == "hi"


def test_the_endpoint_names_valets_mount_and_a_denied_tool_never_runs(valet: Valet, legacy: Upstream) -> None:
    key, key_id = valet.new_key("alice", f"legacy-raw-{valet.mode}")
    thief, _ = valet.new_key("mallory", f"legacy-thief-{valet.mode}")
    agent = Agent(valet, legacy, key)
    with agent.stream("/sse") as (event, endpoint):
        _judged_and_bound(valet, legacy, agent, thief, key_id, event, endpoint)


def _judged_and_bound(valet: Valet, legacy: Upstream, agent: Agent, thief: str, key_id: str, event: str,
                      endpoint: str) -> None:
    assert event == "endpoint"
    assert endpoint.startswith("/legacy/messages/?session_id=" if valet.mode == "reverse" else "/messages/?session_id=")
    before = seen(legacy)
    denied = agent.client.post(agent.url(endpoint), headers=HEADERS, content=json.dumps(
        jsonrpc("tools/call", {"name": "delete_everything", "arguments": {}}, 3)))
    assert denied.status_code == 403 and denied.json()["error"]["data"]["rule"] == "no-delete", denied.text
    assert seen(legacy) == before, "a denied tool must not reach the upstream, whatever path it is sent to"
    row = valet.rows("key_id = ? AND tool = 'delete_everything'", (key_id,))[-1]
    assert row["decision"] == "deny" and row["rpc_method"] == "tools/call"
    # the session belongs to the key that opened the stream
    other = Agent(valet, legacy, thief)
    for url in (agent.url(endpoint), agent.url(endpoint.replace("session_id=", "session_id=0"))):
        stolen = other.client.post(url, headers=HEADERS, content=json.dumps(INIT))
        assert stolen.status_code == 404 and stolen.json()["error"]["data"]["reason"] == "unknown_session"
    twice = agent.client.post(agent.url(endpoint) + "&session_id=0", headers=HEADERS, content=json.dumps(INIT))
    assert twice.status_code == 400
    assert seen(legacy) == before
    ok = agent.client.post(agent.url(endpoint), headers=HEADERS, content=json.dumps(INIT))
    assert ok.status_code == 202, ok.text


def test_an_endpoint_on_another_origin_is_refused(valet: Valet, legacy: Upstream) -> None:
    key, key_id = valet.new_key("alice", f"legacy-evil-{valet.mode}")
    with Agent(valet, legacy, key).stream("/evil_sse") as (event, data):
        pass
    assert "evil.example" not in data
    assert event == "error" and "stream refused" in data
    row = valet.rows("key_id = ? AND reason = 'legacy_endpoint_refused'", (key_id,))[-1]
    assert row["http_status"] == 200 and row["decision"] == "deny"
