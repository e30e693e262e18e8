"""Review 2, F5: one agent's large body must not stall the others (the case-twin search was quadratic).

The twin's name for the error message was found by comparing every member name with every other:
a 200 KB call held mitmproxy's only event loop for 20 seconds, 4 MiB for hours. The search is now
one pass, and bodies over a few hundred KiB are parsed in a worker thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from addon.protocol.errors import Cause, Refusal
from addon.protocol.jsonrpc import parse_body

from .support import Upstream, Valet, assert_clean_log, start_http_api, start_valet

MEMBERS = 100_000


def _call(arguments: dict[str, int]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "echo", "arguments": arguments}}).encode()


@pytest.mark.parametrize("twin", ["K0", f"K{MEMBERS - 1}", None])
def test_case_twins_among_100000_members_are_found_in_linear_time(twin: str | None) -> None:
    arguments = {f"k{i}": i for i in range(MEMBERS)}
    if twin is not None:
        arguments[twin] = 0
    body = _call(arguments)
    started = time.monotonic()
    if twin is None:
        assert len(parse_body(body, len(body)).messages[0].arguments) == MEMBERS
    else:
        with pytest.raises(Refusal) as refused:
            parse_body(body, len(body))
        assert refused.value.cause is Cause.CASE_TWIN
        assert repr(twin) in str(refused.value)  # the smallest name of the colliding group ("K..." < "k...")
    assert time.monotonic() - started < 10  # quadratic: hours; linear: well under a second when idle


def test_case_twins_in_a_nested_object_name_the_twin() -> None:
    body = _call({"outer": {"Path": 1, "path": 2, "other": 3}})
    with pytest.raises(Refusal) as refused:
        parse_body(body, len(body))
    assert refused.value.cause is Cause.CASE_TWIN and "'Path'" in str(refused.value)


@pytest.fixture(scope="module")
def api() -> Iterator[Upstream]:
    server = start_http_api()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(upstream: Upstream, api: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    config = (f"servers:\n  notes:\n    url: {upstream.url}\n"
              f"  api:\n    url: http://127.0.0.1:{api.port}\n    kind: http\n")
    valet = start_valet(tmp_path_factory.mktemp("parse"), None, config_text=config)
    yield valet
    assert valet.stop() == 0
    assert_clean_log(valet)


@pytest.mark.e2e
def test_a_large_call_with_case_twins_does_not_stall_another_agent(proxy: Valet) -> None:
    alice, _ = proxy.new_key("alice", "twins")
    bob, _ = proxy.new_key("bob", "bystander")
    arguments = {f"k{i}": 0 for i in range(MEMBERS)}
    arguments["K0"] = 0
    body = _call(arguments)  # about 1.3 MB, under the default max_body_bytes
    out: dict[str, httpx.Response] = {}

    def attack() -> None:
        out["alice"] = httpx.post(f"{proxy.base}/notes", content=body, timeout=120, headers={
            "authorization": f"Bearer {alice}", "content-type": "application/json",
            "accept": "application/json, text/event-stream"})

    assert httpx.get(f"{proxy.base}/api/warm", headers={"authorization": f"Bearer {bob}"}, timeout=30).is_success
    thread = threading.Thread(target=attack)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    answer = httpx.get(f"{proxy.base}/api/hello", headers={"authorization": f"Bearer {bob}"}, timeout=120)
    waited = time.monotonic() - started
    thread.join(150)
    assert answer.is_success
    assert waited < 30, f"bob waited {waited:.1f} s"  # generous: the quadratic search held the loop for hours
    assert out["alice"].status_code == 400
    assert out["alice"].json()["error"]["data"]["reason"] == "case_twin_members"
