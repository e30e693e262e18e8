"""Issue 10 item 6 ("correct rows") over HTTP/2, and refusals below the flow layer while the log is down.

HTTP/2 agents (``http2: true``; TLS with ALPN ``h2`` to Valet's listener) used to leave gaps HTTP/1 agents
do not: a head over the caps was answered 431 on its stream with no audit row, a CONTINUATION flood or an
HPACK bomb ended the connection with GOAWAY and no row, an upstream still in its TLS handshake at its
deadline ended the agent's whole connection without an answer, and a streamed answer was "taken as sent"
(the row counted body bytes h2 still held for a full window). And a refusal answered below the flow layer
(400, 431, 408) was sent as that refusal even when its row could not be committed.

The client is the ``h2`` library over a real TLS socket (``tests/test_e2e_holdup_h2.H2Agent``); upstreams
are real processes; the lock is held by a real ``sqlite3`` connection in another process.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from tests.audit_support import HOLD_LOCK, last_id, raw_exchange, rows_now
from tests.support import PYTHON, ROOT, Valet, free_port, running_valet, wait_for_port
from tests.test_e2e_holdup_h2 import H2Agent

pytestmark = pytest.mark.e2e
LIMITS = "http2: true\nlimits:\n  max_header_bytes: 16384\n  max_header_count: 40\n"


def test_an_h2_head_over_the_caps_has_a_row_committed_before_the_431(tmp: Path) -> None:
    with running_valet(tmp, {"notes": "http://127.0.0.1:9/mcp"}, extra=LIMITS) as valet:
        key, key_id = valet.new_key()
        agent = H2Agent(valet)
        try:
            agent.request([("authorization", f"Bearer {key}")], stream_id=1)  # Valet has read the new key
            for stream_id, extra, auth in ((3, [(f"x-field-{i}", "v") for i in range(60)], True),
                                           (5, [("x-big", "b" * 20000)], False)):
                since = last_id(valet)
                headers = [("authorization", f"Bearer {key}")] if auth else []
                status, body = agent.request(headers + extra, stream_id=stream_id)
                assert status == 431 and b"headers_too_large" in body and b"-32014" in body
                rows = rows_now(valet, since)
                assert len(rows) == 1, f"{len(rows)} rows on disk when the 431 arrived"
                row = rows[0]
                assert (row["decision"], row["reason"], row["error_code"], row["http_status"], row["rule"]) == (
                    "deny", "headers_too_large", -32014, 431, "http2:head_too_large")
                assert (row["http_method"], row["http_path"]) == ("GET", "/notes")
                assert row["bytes_in"] > (16384 if stream_id == 5 else 60 * 10)  # the decoded head's size
                assert row["key_id"] == (key_id if auth else None)
                assert key not in json.dumps(dict(row)), "the key itself is never stored"
            status, _ = agent.request([], stream_id=7)  # the connection is still usable after a 431
            assert status == 401
        finally:
            agent.close()
        done = valet.rows("rule = 'http2:head_too_large'", expect=2)  # completed with what the agent got
        assert [(r["http_status"], r["bytes_out"] > 0) for r in done] == [(431, True)] * 2
    assert "Traceback" not in valet.log.read_text()


def test_keyless_h2_431s_stay_within_the_pre_auth_budget(tmp: Path) -> None:
    from addon.audit.preauth import ROWS_PER_INTERVAL, SUMMARY_METHOD

    with running_valet(tmp, {"notes": "http://127.0.0.1:9/mcp"}, extra=LIMITS) as valet:
        since = last_id(valet)
        agent = H2Agent(valet)
        try:
            for i in range(ROWS_PER_INTERVAL + 5):
                assert agent.request([(f"x-field-{j}", "v") for j in range(60)], stream_id=1 + 2 * i)[0] == 431
        finally:
            agent.close()
        own = [r for r in rows_now(valet, since) if r["rpc_method"] != SUMMARY_METHOD]
        assert len(own) == ROWS_PER_INTERVAL
    assert valet.stop() == 0
    summaries = [r for r in rows_now(valet, since) if r["rpc_method"] == SUMMARY_METHOD]
    assert [json.loads(r["arguments"])["count"] for r in summaries] == [5]


def _goaway_case(valet: Valet, how: str) -> H2Agent:
    agent = H2Agent(valet)
    if how == "continuation flood":
        size = agent.conn.max_outbound_frame_size
        try:
            agent.sock.sendall(HeadersFrame(1, data=b"\x00" * 16, flags=["END_STREAM"]).serialize())
            for _ in range(64):
                agent.sock.sendall(ContinuationFrame(1, data=b"\x00" * size).serialize())
        except OSError:
            pass
    else:  # an HPACK bomb: a header list past even h2's decoder limit
        agent.conn.send_headers(1, agent.headers([(f"x-h{i}", "v" * 1000) for i in range(60)]), end_stream=True)
        agent.sock.sendall(agent.conn.data_to_send())
    agent.read_until(lambda: agent.goaway() is not None or agent.closed)
    return agent


@pytest.mark.parametrize("how", ["continuation flood", "hpack bomb"])
def test_a_header_block_that_ends_the_connection_has_one_row(tmp: Path, how: str) -> None:
    with running_valet(tmp, {"notes": "http://127.0.0.1:9/mcp"}, extra=LIMITS) as valet:
        since = last_id(valet)
        agent = _goaway_case(valet, how)
        try:
            terminated = agent.goaway()
            assert terminated is not None and terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            rows = rows_now(valet, since)
            assert len(rows) == 1, f"{how}: {len(rows)} rows when the GOAWAY arrived"
        finally:
            agent.close()
        row = valet.rows(f"id > {since}")[0]
        assert (row["decision"], row["reason"], row["error_code"], row["rule"], row["http_status"]) == (
            "deny", "headers_too_large", -32014, "http2:header_block_too_large", None), dict(row)
        assert row["key_id"] is None
        if how == "continuation flood":  # the encoded block Valet held (an HPACK bomb's is h2's, never measured)
            assert row["bytes_in"] > 2 * 16384
        time.sleep(0.5)
        assert len(rows_now(valet, since)) == 1, "one row for the connection"


def _full_backlog() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: a new connection's SYN is dropped, its connect never completes."""
    held = _listener(backlog_full=True)
    return held[0], held[1:]


@pytest.mark.parametrize("stall", ["tls handshake", "tcp connect"])
def test_an_h2_agent_gets_the_504_when_its_upstream_never_finishes_connecting(tmp: Path, stall: str) -> None:
    """An https upstream whose TLS handshake never completes, or one whose TCP connect never does: the agent's
    stream gets 504 upstream_timeout (the JSON-RPC error body an HTTP/1 agent gets), the row says so, and the
    connection goes on (it used to be closed with no answer)."""
    sockets: list[socket.socket] = []
    upstream = None
    if stall == "tls handshake":
        port = free_port()
        upstream = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/stalling_up.py"), str(port)], cwd=ROOT)
        wait_for_port(port)
        url = f"https://127.0.0.1:{port}"
    else:
        listener, sockets = _full_backlog()
        sockets.append(listener)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        config = (f"servers:\n  up:\n    url: {url}\n    kind: http\n"
                  "http2: true\ntimeouts:\n  connect_seconds: 2\n  first_byte_seconds: 3\n")
        policy = "servers:\n  up: {default: allow}\nrules: []\n"
        with running_valet(tmp, None, config_text=config, policy=policy) as valet:
            key, _ = valet.new_key()
            agent = H2Agent(valet)
            try:
                agent.conn.send_headers(1, [(":method", "GET"), (":path", "/up/x"), (":scheme", "https"),
                                            (":authority", f"127.0.0.1:{valet.port}"),
                                            ("authorization", f"Bearer {key}")], end_stream=True)
                agent.sock.sendall(agent.conn.data_to_send())
                status, body = agent.answer(1)  # was: the connection closed, no answer
                assert status == 504, body
                error = json.loads(body)["error"]
                assert (error["code"], error["data"]["reason"]) == (-32013, "upstream_timeout")
                assert agent.request([], stream_id=3)[0] == 401  # the connection is still served
            finally:
                agent.close()
            row = valet.rows("http_path = '/up/x'")[0]
            assert (row["http_status"], row["bytes_out"]) == (504, len(body)), row
            assert (row["decision"], row["reason"], row["error_code"]) == ("error", "upstream_timeout", -32013)
    finally:
        for sock in sockets:
            sock.close()
        if upstream is not None:
            upstream.kill()
            upstream.wait(10)


DYING_UPSTREAM = r'''
import asyncio, sys

async def handle(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):  # a port probe
        return
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n"
                 b"content-length: %d\r\n\r\n" % (8 << 20))
    for _ in range(32):  # 2 MiB of the promised 8, then the connection drops
        writer.write(b"x" * 65536)
        await writer.drain()
    await asyncio.sleep(1.5)
    writer.transport.abort()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


def _closed_window_fetch(tmp: Path, upstream_script: str, extra_config: str = "") -> tuple[int, dict[str, Any]]:
    """An h2 agent with a 16 KiB window it never opens fetches ``/api/big`` from ``upstream_script`` through
    Valet until its stream is reset; returns the body bytes it got and the exchange's audit row."""
    port = free_port()
    script = tmp / "upstream.py"
    script.write_text(upstream_script)
    upstream = subprocess.Popen([sys.executable, str(script), str(port)])
    try:
        wait_for_port(port)
        config = (f"servers:\n  api:\n    url: http://127.0.0.1:{port}\n    kind: http\nhttp2: true\n"
                  + extra_config)
        policy = "servers:\n  api: {default: allow}\nrules: []\n"
        with running_valet(tmp, None, config_text=config, policy=policy) as valet:
            key, _ = valet.new_key()
            agent = H2Agent(valet)
            try:
                agent.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16384})
                agent.conn.send_headers(1, [(":method", "GET"), (":path", "/api/big"), (":scheme", "https"),
                                            (":authority", f"127.0.0.1:{valet.port}"),
                                            ("authorization", f"Bearer {key}")], end_stream=True)
                agent.sock.sendall(agent.conn.data_to_send())
                got, end = 0, None
                deadline = time.monotonic() + 30
                while end is None and time.monotonic() < deadline:
                    try:
                        data = agent.sock.recv(65536)
                    except OSError:
                        break
                    if not data:
                        break
                    for event in agent.conn.receive_data(data):  # never acknowledged: the window stays shut
                        if isinstance(event, h2.events.ResponseReceived):
                            assert dict(event.headers)[":status"] == "200"
                        elif isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                            got += len(event.data)
                        elif isinstance(event, (h2.events.StreamReset, h2.events.StreamEnded)):
                            end = event
                    agent.sock.sendall(agent.conn.data_to_send())
                assert isinstance(end, h2.events.StreamReset), end
            finally:
                agent.close()
            return got, valet.rows("http_path = '/api/big'")[0]
    finally:
        upstream.kill()
        upstream.wait(10)


def test_an_h2_streamed_answer_cut_by_its_upstream_counts_only_the_bytes_sent(tmp: Path) -> None:
    """The agent's window is small and it never opens it: h2 holds most of the streamed body. When the
    upstream dies, the stream is reset and those bytes never leave: the row counts what the agent got (it
    used to count every byte handed to the h2 connection), with the upstream's status (its HEADERS went)."""
    got, row = _closed_window_fetch(tmp, DYING_UPSTREAM)
    assert 0 < got <= 65536
    assert (row["http_status"], row["decision"], row["reason"]) == (200, "error", "upstream_error"), row
    assert row["bytes_out"] == got, (row["bytes_out"], got)  # was: about 2 MiB


def test_an_h2_streamed_answer_cut_by_valets_idle_timeout_counts_only_the_bytes_sent(tmp: Path) -> None:
    """The same full window, but the upstream stalls after 2 MiB and Valet's own idle timeout cuts the
    exchange (the Watchdog's path): the row counts what the agent got, not what h2 still held."""
    got, row = _closed_window_fetch(tmp, DYING_UPSTREAM.replace("await asyncio.sleep(1.5)", "await asyncio.sleep(60)"),
                                    "timeouts:\n  idle_seconds: 2\n")
    assert 0 < got <= 65536
    assert (row["http_status"], row["reason"]) == (200, "upstream_timeout"), row
    assert row["bytes_out"] == got, (row["bytes_out"], got)  # was: about 2 MiB


def _http1_answer(valet: Valet, data: bytes) -> bytes:
    return raw_exchange(valet.port, data)


def test_refusals_below_the_flow_layer_get_503_while_the_log_is_locked(tmp: Path) -> None:
    """While another process holds the audit database locked, a 431 (HTTP/1 and HTTP/2), a framing 400 and a
    stalled head's 408 cannot have their rows committed: the agent gets 503 audit_unavailable instead; once
    the lock is released the rows land and say 503."""
    extra = LIMITS + "timeouts:\n  header_read_seconds: 1\naudit:\n  commit_timeout_seconds: 1\n"
    with running_valet(tmp, {"notes": "http://127.0.0.1:9/mcp"}, extra=extra) as valet:
        key, key_id = valet.new_key()
        host = b"Host: 127.0.0.1:%d" % valet.port
        auth = host + b"\r\nAuthorization: Bearer " + key.encode()
        _http1_answer(valet, b"GET /notes HTTP/1.1\r\nConnection: close\r\n" + auth + b"\r\n\r\n")  # key read
        since = last_id(valet)
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(valet.data_dir / "audit.db"), "12"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            cases = {
                "http1:head_too_large": b"POST /notes HTTP/1.1\r\n" + auth + b"\r\nX-Big: "
                                        + b"a" * 20000 + b"\r\n\r\n",
                "http1:framing": b"POST /notes HTTP/1.1\r\n" + auth
                                 + b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "http1:head_timeout": b"POST /notes HTTP/1.1\r\n" + auth + b"\r\n",
            }
            for rule, data in cases.items():
                answer = _http1_answer(valet, data)
                assert answer.startswith(b"HTTP/1.1 503"), (rule, answer[:200])
                assert b"audit_unavailable" in answer and b"-32010" in answer, rule
            agent = H2Agent(valet)
            try:
                status, body = agent.request([("authorization", f"Bearer {key}"), ("x-big", "b" * 20000)])
                assert status == 503 and b"audit_unavailable" in body, (status, body)
            finally:
                agent.close()
        finally:
            holder.wait(30)
        rules = [*cases, "http2:head_too_large"]
        rows = valet.rows(f"id > {since} AND key_id = ?", (key_id,), expect=len(rules), timeout=30)
        by_rule = {r["rule"]: r for r in rows}
        assert set(rules) <= set(by_rule), by_rule.keys()
        for rule in rules:
            row = by_rule[rule]
            assert (row["decision"], row["reason"], row["error_code"], row["http_status"]) == (
                "deny", "audit_unavailable", -32010, 503), (rule, dict(row))


def test_an_h2_header_block_that_never_finishes_has_a_row_and_a_goaway(tmp: Path) -> None:
    """HEADERS without END_HEADERS and nothing more: header_read_seconds later one row for the connection
    (request_timeout), then GOAWAY through the agent's TLS (it used to be written under it, as plain bytes)."""
    with running_valet(tmp, {"notes": "http://127.0.0.1:9/mcp"},
                       extra=LIMITS + "timeouts:\n  header_read_seconds: 1\n") as valet:
        since = last_id(valet)
        agent = H2Agent(valet)
        try:
            agent.sock.sendall(HeadersFrame(1, data=b"\x82", flags=["END_STREAM"]).serialize())
            agent.read_until(lambda: agent.closed or agent.goaway() is not None, seconds=30)
            terminated = agent.goaway()
            assert terminated is not None and terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            assert len(rows_now(valet, since)) == 1, "the row is committed before the GOAWAY"
        finally:
            agent.close()
        row = valet.rows(f"id > {since}")[0]
        assert (row["decision"], row["reason"], row["rule"], row["http_status"]) == (
            "deny", "request_timeout", "http2:head_timeout", None), row


def _listener(backlog_full: bool) -> list[socket.socket]:
    """A loopback listener that never accepts: with its backlog full a connect never completes; else the kernel
    completes it and nobody ever answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0 if backlog_full else 16)
    held = [listener]
    for _ in range(4 if backlog_full else 0):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(listener.getsockname())
        except BlockingIOError:
            pass
        held.append(filler)
    time.sleep(0.2)
    return held


@pytest.mark.parametrize("backlog_full", [True, False], ids=["never-connects", "never-answers"])
def test_two_h2_streams_cut_at_once_each_get_their_own_504_and_row(tmp: Path, backlog_full: bool) -> None:
    """Two streams of one agent connection whose upstreams time out together (review 5, F1): the endings
    were one per connection, so the second cut overwrote the first: one stream got mitmproxy's HTML 502 or
    the other's 504, and the rows were swapped or empty."""
    groups = [_listener(backlog_full), _listener(backlog_full)]
    ports = [g[0].getsockname()[1] for g in groups]
    config = (f"servers:\n  up1:\n    url: http://127.0.0.1:{ports[0]}\n    kind: http\n"
              f"  up2:\n    url: http://127.0.0.1:{ports[1]}\n    kind: http\n"
              "http2: true\ntimeouts:\n  connect_seconds: 2\n  first_byte_seconds: 3\n")
    policy = "servers:\n  up1: {default: allow}\n  up2: {default: allow}\nrules: []\n"
    streams = {1: "/up1/x", 3: "/up2/x"}
    try:
        with running_valet(tmp, None, config_text=config, policy=policy) as valet:
            key, _ = valet.new_key()
            agent = H2Agent(valet)
            try:
                for sid, path in streams.items():
                    agent.conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                                  (":authority", f"127.0.0.1:{valet.port}"),
                                                  ("authorization", f"Bearer {key}")], end_stream=True)
                agent.sock.sendall(agent.conn.data_to_send())
                got: dict[int, tuple[Any, bytes]] = {}
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and len(got) < 2 and not agent.closed:
                    agent.receive()
                    for sid in streams:
                        if sid not in got and any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid
                                                  for e in agent.events):
                            got[sid] = agent.answer(sid)
                        elif sid not in got and any(isinstance(e, h2.events.StreamReset) and e.stream_id == sid
                                                    for e in agent.events):
                            got[sid] = ("reset", b"")
            finally:
                agent.close()
            for sid, path in streams.items():
                status, body = got.get(sid, (None, b""))
                assert status == 504 and b"upstream_timeout" in body, (path, status, body[:120])
                row = valet.rows(f"http_path = '{path}'")[0]
                assert (row["http_status"], row["reason"], row["bytes_out"]) == (504, "upstream_timeout", len(body))
    finally:
        for group in groups:
            for sock in group:
                sock.close()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_reads_ending_inside_frame_headers_do_not_pile_up_head_timers(tmp: Path) -> None:
    """Legal WINDOW_UPDATE frames, each split 4|9 bytes over two TLS records (review 5, F3): every read ending
    inside a frame header armed a new 30 s wakeup (an asyncio task, ~1.8 KB) and none was ever reused:
    ~2 MB a second per connection. One head timer per connection at most now."""
    import threading

    window_update = bytes([0, 0, 4, 0x8, 0, 0, 0, 0, 0]) + (1).to_bytes(4, "big")  # stream 0, +1
    with running_valet(tmp, {"notes": "http://127.0.0.1:9/mcp"}, extra="http2: true\n") as valet:
        agents = [H2Agent(valet) for _ in range(2)]
        try:
            time.sleep(1)
            before = _rss_mib(valet.process.pid)

            def flood(agent: H2Agent) -> None:
                agent.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                stop = time.monotonic() + 6
                while time.monotonic() < stop:
                    agent.sock.sendall(window_update[:4])
                    time.sleep(0.0003)
                    agent.sock.sendall(window_update[4:])
                    time.sleep(0.0003)

            threads = [threading.Thread(target=flood, args=(agent,)) for agent in agents]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            time.sleep(1)
            grown = _rss_mib(valet.process.pid) - before
            assert valet.process.poll() is None
        finally:
            for agent in agents:
                agent.close()
    assert grown < 10, f"Valet grew by {grown:.1f} MiB"
