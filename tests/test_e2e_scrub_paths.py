"""End to end: the ways around the one scrubber that today's review found, each closed.

- a legacy ``endpoint`` event that Valet's rewrite would resolve (``x/../``) or
  collapse (``//``) into a secret AFTER the scrubber ran: refused;
- two servers on one upstream origin: the answer of one carries what the other
  was sent (the hostile upstream quotes the previous caller's token);
- forward-mode passthrough to the origin of a server: scrubbed with that
  origin's values, never not at all;
- a static secret rotated: its previous value stays scrubbed.

The upstream is tests/upstream/hostile.py (it echoes the injected token and the
previous request's token, in every form).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from addon.protocol.legacy_sse import EndpointRefused, Mount, rewrite_endpoint
from addon.protocol.routing import Upstream as Route
from addon.secrets import compressed

from .support import Upstream, Valet, assert_clean_log, start_valet
from .test_e2e_leaks import body_of, hostile, raw_exchange  # noqa: F401 - the hostile fixture
from .upstream.hostile import forms

pytestmark = pytest.mark.e2e

SLASHED = "fake/alice-token/0001-abcdef"  # a secret with '/': resolving dot segments can spell it
A_TOKEN = "fake-secret-for-server-AAAA"
B_TOKEN = "fake-secret-for-server-BBBB"
OLD, NEW = "fake-rotated-old-value-1111", "fake-rotated-new-value-2222-longer"  # lengths differ
HEADERS = '    headers:\n      Authorization: "Bearer ${secret:API_TOKEN}"\n'


def assert_absent(data: bytes, values: tuple[str, ...], where: str) -> None:
    for value in values:
        for form in forms(value):
            assert form.encode() not in data, f"{where}: a form of {value[:12]}... reached the agent: {form[:40]}"
        assert value.encode() not in data, where


# --- 1. the legacy endpoint rewrite ---------------------------------------------------------------------------

def mount(path: str = "/mcp") -> Mount:
    return Mount("reverse", "h", Route("h", "http", "127.0.0.1", 9000, path), "http://127.0.0.1:9000/mcp/sse")


@pytest.mark.parametrize("data", [
    "/mcp/messages/fake/x/../alice-token/0001-abcdef?session_id=abc",
    "/mcp/messages/fake//alice-token/0001-abcdef?session_id=abc",
    "/mcp/messages/fake/./alice-token?session_id=abc",
    "/mcp/messages/fake/x/%2e%2e/alice-token?s=1", "/mcp/messages/fake/x/.%2E/alice-token?s=1",
    "/mcp/x/../messages/?session_id=abc", "messages/../../mcp/m?s=1", "/mcp/messages/a/..", "/mcp//messages/",
    "http://127.0.0.1:9000/mcp/a/../b", "/mcp/messages\\..\\x", "/mcp/%7euser/messages/",
])
def test_an_endpoint_that_normalization_would_change_is_refused(data: str) -> None:
    with pytest.raises(EndpointRefused):
        rewrite_endpoint(data, mount())


def test_an_endpoint_in_normal_form_is_still_rewritten() -> None:
    assert rewrite_endpoint("/mcp/messages/?session_id=ab", mount()) == (
        "/h/messages/?session_id=ab", [("session_id", "ab")])
    assert rewrite_endpoint("messages/?session_id=ab", mount())[0] == "/h/messages/?session_id=ab"
    assert rewrite_endpoint("/mcp/messages/a..b/c.d?x=../..", mount())[0] == "/h/messages/a..b/c.d?x=../.."


@pytest.fixture(scope="module")
def valet(hostile: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:  # noqa: F811
    config = (f"servers:\n  hmcp:\n    url: http://127.0.0.1:{hostile.port}/mcp\n{HEADERS}"
              f"  a:\n    url: http://127.0.0.1:{hostile.port}/a\n    kind: http\n{HEADERS}"
              f"  b:\n    url: http://127.0.0.1:{hostile.port}/b\n    kind: http\n{HEADERS}"
              f"  r:\n    url: http://127.0.0.1:{hostile.port}/r\n    kind: http\n{HEADERS}")
    proxy = start_valet(tmp_path_factory.mktemp("scrubpaths"), None, config_text=config)
    for server, value in (("hmcp", SLASHED), ("a", A_TOKEN), ("b", B_TOKEN), ("r", OLD)):
        proxy.cli("secret", "set", "API_TOKEN", "--server", server, "--user", "alice", stdin=value)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


@pytest.mark.parametrize("shape", ["legacy-dots", "legacy-slashes"])
def test_a_legacy_endpoint_cannot_assemble_a_secret(valet: Valet, shape: str) -> None:
    key, key_id = valet.new_key("alice", f"legacy-{shape}")
    raw = raw_exchange(valet, "GET", f"/hmcp/{shape}", key, extra="Accept: text/event-stream\r\n")
    _, body = body_of(raw)
    assert b"stream refused" in body, body
    assert b"alice-token" not in raw, raw
    valet.rows("key_id = ? AND reason = 'legacy_endpoint_refused'", (key_id,))


# --- 2. one origin, several servers -------------------------------------------------------------------------

def test_the_answer_of_one_server_never_carries_what_another_on_its_origin_was_sent(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "two-servers")
    for first, then in (("a", "b"), ("b", "a")):
        raw_exchange(valet, "GET", f"/{first}/json", key)
        raw = raw_exchange(valet, "GET", f"/{then}/json", key)  # the upstream quotes the previous token
        head, body = body_of(raw)
        assert b"REDACTED" in raw
        assert_absent(raw + head + body, (A_TOKEN, B_TOKEN), f"{then} after {first}")


# --- 3. rotation ----------------------------------------------------------------------------------------------

def test_a_rotated_static_secret_stays_scrubbed(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "rotation")
    raw = raw_exchange(valet, "GET", "/r/json", key)
    assert_absent(raw, (OLD,), "before the rotation")
    assert f"x-token-length: {len(OLD)}".encode() in raw
    valet.cli("secret", "set", "API_TOKEN", "--server", "r", "--user", "alice", stdin=NEW)
    for _ in range(100):  # until the new value is injected (the proxy picks the vault change up)
        raw = raw_exchange(valet, "GET", "/r/json", key)
        head, body = body_of(raw)
        assert_absent(raw + head + body, (OLD, NEW), "after the rotation")
        if f"x-token-length: {len(NEW)}".encode() in raw:
            break  # this answer quoted the previous caller's token: the OLD value, redacted
    else:
        pytest.fail("the rotated value was never injected")


# --- 2b. passthrough ------------------------------------------------------------------------------------------

def test_forward_passthrough_is_scrubbed_with_its_origins_values(hostile: Upstream, tmp_path: Path) -> None:  # noqa: F811
    config = (f"servers:\n  a:\n    url: http://127.0.0.1:{hostile.port}/api\n    kind: http\n{HEADERS}"
              f"passthrough: [\"127.0.0.1:{hostile.port}\"]\n")
    proxy = start_valet(tmp_path, None, mode="forward", config_text=config)
    try:
        proxy.cli("secret", "set", "API_TOKEN", "--server", "a", "--user", "alice", stdin=A_TOKEN)
        key, _ = proxy.new_key("alice", "forward")
        with httpx.Client(proxy=f"http://agent:{key}@127.0.0.1:{proxy.port}", timeout=30) as client:
            base = f"http://127.0.0.1:{hostile.port}"
            for path in ("/zzz/json", "/other/sse", "/zzz/gzip-unlabelled"):
                first = client.get(base + "/api/json")
                assert first.status_code == 200
                r = client.get(base + path)  # passthrough: nothing injected, the previous token quoted
                assert r.status_code == 200, r.text
                seen = (r.reason_phrase + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items())).encode()
                _, body = body_of(b"\r\n\r\n" + r.content)
                assert_absent(seen + r.content + body, (A_TOKEN,), f"passthrough {path}")
                assert b"REDACTED" in seen + r.content + body
    finally:
        assert proxy.stop() == 0
    assert_clean_log(proxy)


# --- 5. compressed bodies: every member decoded, formats Valet does not decode refused -------------------------

@pytest.mark.parametrize("shape", ["gzipmulti-unlabelled", "zstdmulti-unlabelled", "bzip2-unlabelled"])
def test_every_member_is_scrubbed_and_an_unreadable_format_refused(valet: Valet, shape: str) -> None:
    key, _ = valet.new_key("alice", f"compressed-{shape}")
    raw = raw_exchange(valet, "GET", f"/a/{shape}", key)
    head, body = body_of(raw)
    if shape.startswith("bzip2"):
        assert head.split(b" ")[1] != b"200", head
        assert b"BZh" not in body
    else:
        assert head.split(b" ")[1] == b"200", head
        codec = "gzip" if shape.startswith("gzip") else "zstd"
        body = compressed.decode(codec, raw.partition(b"\r\n\r\n")[2], 1 << 26)
        assert b"REDACTED" in body
    assert_absent(raw + head + body, (A_TOKEN, B_TOKEN), shape)


# --- 11. escape-dense events are not scrubbed on the event loop ------------------------------------------------

def test_an_escape_dense_event_ends_its_stream_and_others_are_served(valet: Valet) -> None:
    key, _ = valet.new_key("alice", "escsse")
    latencies: list[float] = []
    stop = threading.Event()

    def small_calls() -> None:
        while not stop.is_set():
            started = time.monotonic()
            raw_exchange(valet, "GET", "/a/small", key)
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)

    caller = threading.Thread(target=small_calls, daemon=True)
    caller.start()
    try:
        raw = raw_exchange(valet, "GET", "/hmcp/escsse", key, extra="Accept: text/event-stream\r\n")
    finally:
        stop.set()
        caller.join(60)
    print(f"escape-dense stream: {len(latencies)} small calls meanwhile, slowest {max(latencies or [0]):.2f} s")
    _, body = body_of(raw)
    assert b"stream refused" in body and b"%61&#107;" not in body, body[:300]
    assert_absent(raw + body, (SLASHED,), "escsse")
