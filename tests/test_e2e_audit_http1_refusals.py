"""Review G5: refusals answered below mitmproxy's flow layer get an audit row, committed before the answer.

A head mitmproxy cannot frame or validate (Content-Length with Transfer-Encoding: the smuggling probe; a bad
version line), a head over the caps (431), a head that never completes (408) and a body that stalls (408)
were answered with no row at all. Each is now recorded: named after the key the head carried (its id, never
the key), or, without a known key, through the per-peer pre-auth budget like every keyless refusal.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from .audit_support import last_id, recording, rows_now  # noqa: F401 - a fixture
from .support import Upstream, Valet, jsonrpc, post, running_valet

TIMEOUTS = "timeouts:\n  header_read_seconds: 1\n  body_read_seconds: 1\n"
BODY = json.dumps(jsonrpc("tools/call", {"name": "x", "arguments": {"i": 5}}, 5)).encode()


def _exchange(valet: Valet, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read the answer's status line (the connection is then closed)."""
    with socket.create_connection(("127.0.0.1", valet.port)) as s:
        s.settimeout(20)
        s.sendall(data)
        return s.recv(200).split(b"\r\n", 1)[0]


def _head(valet: Valet, key: str | None, *lines: bytes, request_line: bytes = b"POST /notes HTTP/1.1") -> bytes:
    auth = [b"Authorization: Bearer " + key.encode()] if key else []
    return b"\r\n".join([request_line, b"Host: 127.0.0.1:%d" % valet.port, *auth, *lines]) + b"\r\n"


CASES = {
    "smuggling probe": (lambda v, k: _head(v, k, b"Content-Type: application/json", b"Content-Length: %d" % len(BODY),
                                           b"Transfer-Encoding: chunked", b"") + BODY,
                        b"HTTP/1.1 400", "invalid_request", "http1:framing"),
    "bad request line": (lambda v, k: _head(v, k, b"Content-Length: 0", b"", request_line=b"POST  /notes HTTP/1.1 x"),
                         b"HTTP/1.1 400", "invalid_request", "http1:framing"),
    "oversized head": (lambda v, k: _head(v, k, b"X-Big: " + b"a" * 200_000, b"Content-Length: 0", b""),
                       b"HTTP/1.1 431", "headers_too_large", "http1:head_too_large"),
    "head never completes": (lambda v, k: _head(v, k), b"HTTP/1.1 408", "request_timeout", "http1:head_timeout"),
    "body stalls": (lambda v, k: _head(v, k, b"Content-Type: application/json", b"Content-Length: %d" % len(BODY),
                                       b"") + BODY[:5], b"HTTP/1.1 408", "request_timeout", None),
}


def test_every_http1_refusal_has_a_row_naming_the_key_committed_before_the_answer(
        tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}, extra=TIMEOUTS) as valet:
        key, key_id = valet.new_key()
        assert post(f"{valet.base}/notes", jsonrpc("tools/call", {"name": "x", "arguments": {}}, 1), key).is_success
        valet.rows("rpc_method = 'tools/call'")
        for name, (make, status, reason, rule) in CASES.items():
            since = last_id(valet)
            answer = _exchange(valet, make(valet, key))
            assert answer.startswith(status), (name, answer)
            rows = rows_now(valet, since)
            assert len(rows) == 1, f"{name}: {len(rows)} rows on disk when the answer arrived"
            row = rows[0]
            assert (row["decision"], row["reason"], row["http_status"]) == ("deny", reason, int(status[-3:])), name
            assert (row["key_id"], row["user"]) == (key_id, "alice"), name
            if rule is not None:
                assert row["rule"] == rule, name
            assert key not in json.dumps(dict(row)), "the key itself is never stored"
    assert "Traceback" not in valet.log.read_text()


def test_keyless_http1_refusals_stay_within_the_pre_auth_budget(tmp: Path, recording: Upstream) -> None:
    """70 smuggling probes without a key: own rows up to the per-peer budget, the rest in one summary row."""
    from addon.audit.preauth import ROWS_PER_INTERVAL, SUMMARY_METHOD

    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}, extra=TIMEOUTS) as valet:
        make = CASES["smuggling probe"][0]
        since = last_id(valet)
        for _ in range(ROWS_PER_INTERVAL + 10):
            assert _exchange(valet, make(valet, None)).startswith(b"HTTP/1.1 400")
        own = [r for r in rows_now(valet, since) if r["rpc_method"] != SUMMARY_METHOD]
        assert len(own) == ROWS_PER_INTERVAL
        assert all(r["key_id"] is None and r["reason"] == "invalid_request" for r in own)
    assert valet.stop() == 0
    summaries = [r for r in rows_now(valet, since) if r["rpc_method"] == SUMMARY_METHOD]
    assert [json.loads(r["arguments"])["count"] for r in summaries] == [10]


@pytest.mark.parametrize("sent", [b"GET / HTTP/1.1\r\n\r\n"])
def test_an_ordinary_request_is_untouched(tmp: Path, recording: Upstream, sent: bytes) -> None:
    """The interception of mitmproxy's reader passes every command of a head it accepts through."""
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}, extra=TIMEOUTS) as valet:
        key, _ = valet.new_key()
        for i in range(3):
            assert post(f"{valet.base}/notes", jsonrpc("tools/call", {"name": "x", "arguments": {}}, i), key).is_success
        assert not _exchange(valet, sent).startswith(b"HTTP/1.1 400")
