"""Refusals made inside mitmproxy's body readers, a body over ``limits.max_buffered_bytes`` (413) and an HTTP/1
chunked body with trailers (400), are answered only once their row is committed, like every refusal (review 5,
F2). While another process holds the audit database locked they are answered ``503 audit_unavailable``; the row
lands when the lock goes and says what the agent got. Over HTTP/2 the 413 is Valet's JSON-RPC error, not
mitmproxy's HTML page, and its row counts the bytes sent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.audit_support import HOLD_LOCK, last_id, raw_exchange, rows_now
from tests.support import Valet, running_valet
from tests.test_e2e_holdup_h2 import H2Agent

LIMITS = "audit:\n  commit_timeout_seconds: 1\nlimits:\n  max_body_bytes: 32768\n  max_buffered_bytes: 65536\n"
SERVERS = {"notes": "http://127.0.0.1:9/mcp"}  # nothing is ever forwarded: no upstream needed


def _head(valet: Valet, key: str) -> bytes:
    return b"Host: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n" % (valet.port, key.encode())


def _too_large(valet: Valet, key: str, chunked: bool) -> bytes:
    """A body over the limits: its length said up front (Valet refuses it as its head arrives, and mitmproxy's own
    check of the same length would answer its 413 instead), or chunked (mitmproxy's reader stops at the limit)."""
    body = b"x" * 100_000
    head = b"POST /notes HTTP/1.1\r\n" + _head(valet, key) + (b"Content-Type: application/json\r\n"
                                                              b"Accept: application/json, text/event-stream\r\n")
    if chunked:
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _with_trailers(valet: Valet, key: str) -> bytes:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    return (b"POST /notes HTTP/1.1\r\n" + _head(valet, key) + b"Content-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (len(body), body))


REQUESTS = {
    "length": (lambda valet, key: _too_large(valet, key, False), 413, "body_too_large"),
    "chunked": (lambda valet, key: _too_large(valet, key, True), 413, "body_too_large"),
    "trailers": (_with_trailers, 400, "trailers_refused"),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_a_reader_refusal_is_answered_after_its_row_and_503_while_the_log_is_locked(tmp_path: Path, case: str) -> None:
    make, status, reason = REQUESTS[case]
    with running_valet(tmp_path, SERVERS, extra=LIMITS) as valet:
        key, _ = valet.new_key()
        since = last_id(valet)
        answer = raw_exchange(valet.port, make(valet, key))
        assert answer.startswith(b"HTTP/1.1 %d" % status) and reason.encode() in answer, answer[:300]
        assert len(rows_now(valet, since)) == 1, "the row is committed before the answer"
        row = valet.rows(f"id > {since}")[0]
        assert (row["http_status"], row["reason"]) == (status, reason), row
        assert row["bytes_out"] == len(answer.split(b"\r\n\r\n", 1)[1]), row
        since = last_id(valet)
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(valet.data_dir / "audit.db"), "4"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            answer = raw_exchange(valet.port, make(valet, key))
            assert answer.startswith(b"HTTP/1.1 503") and b"audit_unavailable" in answer, answer[:300]
        finally:
            holder.wait(30)
        row = valet.rows(f"id > {since}", timeout=20)[0]  # landed once the lock went: says what was sent
        assert (row["http_status"], row["reason"]) == (503, "audit_unavailable"), row
        assert row["bytes_out"] == len(answer.split(b"\r\n\r\n", 1)[1]), row


def test_an_h2_body_over_the_limit_gets_valets_json_error_and_an_exact_row(tmp_path: Path) -> None:
    with running_valet(tmp_path, SERVERS, extra=LIMITS + "http2: true\n") as valet:
        key, _ = valet.new_key()
        agent = H2Agent(valet)
        try:  # the length says it is over the limit: refused as its head arrives (mitmproxy's "early" case)
            agent.conn.send_headers(1, [(":method", "POST"), (":path", "/notes"), (":scheme", "https"),
                                        (":authority", f"127.0.0.1:{valet.port}"), ("content-type", "application/json"),
                                        ("accept", "application/json, text/event-stream"),
                                        ("content-length", "100000"), ("authorization", f"Bearer {key}")])
            agent.sock.sendall(agent.conn.data_to_send())
            status, answer = agent.answer(1)
        finally:
            agent.close()
        assert status == 413 and b"body_too_large" in answer, (status, answer[:200])
        row = valet.rows("http_path = '/notes'")[0]
        assert (row["http_status"], row["reason"], row["bytes_out"]) == (413, "body_too_large", len(answer)), row
