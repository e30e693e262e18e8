"""Review 3, G6: a revocation, kill switch or deny rule that arrives while a request's body is still on its way
applies to that request, and a body cannot trickle in for longer than ``timeouts.body_total_seconds``.

Before, everything was judged with what held when the HEAD arrived: an agent could send heads in advance,
hold the bodies, and complete them after it was cut off, with the user's secrets injected.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ALLOW_ALL, Upstream, Valet, assert_clean_log, jsonrpc, start_valet
from .test_e2e_policy import raw_call

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def valet(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    tmp = tmp_path_factory.mktemp("review3-midbody")
    proxy = start_valet(tmp, None, config_text=f"servers:\n  notes:\n    url: {upstream.url}\n", policy=ALLOW_ALL)
    yield proxy
    (tmp / "policy.yaml").write_text(ALLOW_ALL)
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def open_request(valet: Valet, key: str, tool: str, rpc_id: int) -> tuple[socket.socket, bytes]:
    """A tools/call whose head and first 10 body bytes are sent; the rest is held back."""
    body = json.dumps(jsonrpc("tools/call", {"name": tool, "arguments": {"a": 1, "b": 2}}, rpc_id)).encode()
    s = socket.create_connection(("127.0.0.1", valet.port))
    s.settimeout(30)
    s.sendall(b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
              b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
              b"Content-Length: %d\r\n\r\n" % (valet.port, key.encode(), len(body)) + body[:10])
    return s, body


def finish(s: socket.socket, body: bytes) -> tuple[int, str]:
    s.sendall(body[10:])
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.decode(errors="replace")


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def wait_refused(valet: Valet, key: str, tool: str, status: int) -> None:
    """Until a NEW call is refused: the change is in force in the proxy."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if raw_call(valet, key, tool, {"a": 1, "b": 2}).status_code == status:
            return
        time.sleep(0.2)
    raise AssertionError("the change never took effect")


def wait_allowed(valet: Valet, key: str) -> None:
    deadline = time.monotonic() + 30
    while raw_call(valet, key, "add", {"a": 1, "b": 2}).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_kill_switch_loaded_mid_body_applies(valet: Valet, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "midbody-switch")
    wait_allowed(valet, key)
    s, body = open_request(valet, key, "add", 71)
    time.sleep(0.3)
    policy = valet.config.parent / "policy.yaml"
    policy.write_text("users:\n  alice: {enabled: false}\n" + ALLOW_ALL)
    try:
        wait_refused(valet, key, "add", 403)
        status, text = finish(s, body)
        assert status == 403 and "switched off by users.alice.enabled" in text, text
        row = valet.rows("rpc_id = '71'")[0]  # (the probing calls above reached the upstream until the reload)
        assert (row["decision"], row["reason"]) == ("deny", "disabled")
    finally:
        policy.write_text(ALLOW_ALL)
    wait_allowed(valet, key)


def test_a_deny_rule_loaded_mid_body_applies(valet: Valet, upstream: Upstream) -> None:
    key, _ = valet.new_key("alice", "midbody-deny")
    wait_allowed(valet, key)
    s, body = open_request(valet, key, "add", 72)
    time.sleep(0.3)
    policy = valet.config.parent / "policy.yaml"
    policy.write_text("rules:\n  - {id: no-add, effect: deny, tools: [add]}\n  - {id: allow-all, effect: allow}\n")
    try:
        wait_refused(valet, key, "add", 403)
        status, text = finish(s, body)
        assert status == 403 and "no-add" in text, text
        row = valet.rows("rpc_id = '72'")[0]
        assert (row["decision"], row["reason"], row["rule"]) == ("deny", "denied", "no-add")
    finally:
        policy.write_text(ALLOW_ALL)
    wait_allowed(valet, key)


def test_a_key_revoked_mid_body_is_refused(valet: Valet, upstream: Upstream) -> None:
    key, key_id = valet.new_key("alice", "midbody-revoke")
    wait_allowed(valet, key)
    s, body = open_request(valet, key, "add", 73)
    time.sleep(0.3)
    before = upstream.requests_seen()
    valet.cli("key", "revoke", key_id)
    status, text = finish(s, body)  # without waiting for a new request to notice: the body took > 0.3 s
    assert status == 401 and "revoked" in text, text
    assert upstream.requests_seen() == before
    row = valet.rows("key_id = ? AND http_method = 'POST'", (key_id,), expect=2)[-1]
    assert (row["decision"], row["reason"], row["user"]) == ("deny", "revoked_key", "alice")


def test_a_body_that_trickles_past_the_total_bound_is_cut(upstream: Upstream, tmp_path: Path) -> None:
    proxy = start_valet(tmp_path, None, policy=ALLOW_ALL, config_text=(
        f"servers:\n  notes:\n    url: {upstream.url}\ntimeouts:\n  body_total_seconds: 1.5\n"))
    try:
        key, _ = proxy.new_key("alice", "trickle")
        assert raw_call(proxy, key, "add", {"a": 1, "b": 2}).status_code == 200
        s, body = open_request(proxy, key, "add", 74)
        started = time.monotonic()
        answer = b""
        s.settimeout(0.3)
        for byte in body[10:-1]:  # one byte every 0.3 s: never idle for body_read_seconds (60 s)
            try:
                s.sendall(bytes([byte]))
                answer += s.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            if answer:
                break
        elapsed = time.monotonic() - started
        s.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 1.0 <= elapsed < 30
    finally:
        assert proxy.stop() == 0


def test_a_route_changed_mid_body_is_refused_not_sent_elsewhere(upstream: Upstream, tmp_path: Path) -> None:
    from .support import free_port

    proxy = start_valet(tmp_path, None, policy=ALLOW_ALL, config_text=f"servers:\n  notes:\n    url: {upstream.url}\n")
    try:
        key, _ = proxy.new_key("alice", "reroute")
        assert raw_call(proxy, key, "add", {"a": 1, "b": 2}).status_code == 200
        s, body = open_request(proxy, key, "add", 75)
        time.sleep(0.3)
        before = upstream.requests_seen()
        text = proxy.config.read_text().replace(upstream.url, f"http://127.0.0.1:{free_port()}/mcp")
        proxy.config.write_text(text)  # the config file is reloaded without a settle time
        status, answer = finish(s, body)
        assert status == 503 and "reconfigured" in answer and "-32070" in answer, answer
        assert upstream.requests_seen() == before
    finally:
        assert proxy.stop() == 0
