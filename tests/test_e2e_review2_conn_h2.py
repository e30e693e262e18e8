"""Review 2, F11: over HTTP/2 (forward mode, inside a TLS tunnel), a revoked key's open SSE stream ends
with Valet's JSON-RPC error event as its last DATA frame, as over HTTP/1.1 (before: a bare RST_STREAM).

HTTP/2 towards agents is opt-in (``http2: true``) where the configuration has that option.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from addon.config import ValetConfig
from tests.support import PYTHON, ROOT, free_port, running_valet, wait_for_port
from tests.tls import self_signed_localhost


def test_revoked_key_h2_stream_ends_with_the_error_event(tmp: Path) -> None:
    cert, keyfile = self_signed_localhost(tmp)
    port = free_port()
    upstream = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/tls_sse.py"), str(port), str(cert), str(keyfile)],
                                cwd=ROOT)
    try:
        wait_for_port(port)
        config = (f"servers:\n  api:\n    url: https://localhost:{port}\n    kind: http\n"
                  f"upstream_ca_file: {cert}\n")
        if "http2" in ValetConfig.model_fields:
            config += "http2: true\n"
        with running_valet(tmp, None, config_text=config, mode="forward") as valet:
            key, key_id = valet.new_key()
            sock = socket.create_connection(("127.0.0.1", valet.port), timeout=20)
            auth = base64.b64encode(f"agent:{key}".encode()).decode()
            sock.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n"
                         f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            context = ssl.create_default_context(cafile=str(valet.data_dir / "mitmproxy" / "mitmproxy-ca-cert.pem"))
            context.set_alpn_protocols(["h2"])
            tls = context.wrap_socket(sock, server_hostname="localhost")
            tls.settimeout(30)
            assert tls.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", f"localhost:{port}"),
                                  (":path", "/sse")], end_stream=True)
            tls.sendall(conn.data_to_send())

            def revoke() -> None:
                time.sleep(2)
                valet.cli("key", "revoke", key_id)

            threading.Thread(target=revoke, daemon=True).start()
            got, end = b"", "?"
            try:
                while end == "?":
                    data = tls.recv(65536)
                    if not data:
                        end = "closed"
                        break
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.DataReceived):
                            got += ev.data
                            conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                        elif isinstance(ev, h2.events.StreamEnded):
                            end = "ended"
                        elif isinstance(ev, h2.events.StreamReset):
                            end = f"reset {ev.error_code}"
                    tls.sendall(conn.data_to_send())
            except TimeoutError:
                end = "timeout"
            tls.close()
            assert b'data: {"n": 0}' in got  # the stream was open
            assert end == "ended", end  # was: reset INTERNAL_ERROR, with no event
            assert got.rstrip().endswith(b"}}") and b"event: error" in got and b"revoked_key" in got
    finally:
        upstream.kill()
        upstream.wait(10)
