"""No valet key in any log record (review 2, F8): mitmproxy's crash log printed request trailer values.

Valet now refuses trailers (tests/test_e2e_review2_h2.py), but the guard is generic: every record any
logger makes is scrubbed of key-shaped text, its message, arguments and exception text alike. The
crash is reproduced with mitmproxy's own code (its HTTP/1 client asserting on a trailers event, then
the connection handler's "mitmproxy has crashed!" record with the traceback), in a process that
configures logging exactly as ``valet run`` does.
"""

from __future__ import annotations

import subprocess

import pytest

from .support import PYTHON, ROOT

FAKE_KEY = "vk_0123456789ab_" + "F" * 43  # shaped like a key; never a real one

CRASH = r'''
import logging, sys
from pathlib import Path
from addon import server
from mitmproxy import connection, http, options
from mitmproxy.proxy import context
from mitmproxy.proxy.layers.http import RequestHeaders, RequestTrailers
from mitmproxy.proxy.layers.http._http1 import Http1Client
from mitmproxy.test.tutils import treq

key, fmt = sys.argv[1], sys.argv[2]
server._configure_logging(server.Settings(Path("c.yaml"), Path("d"), "127.0.0.1", 1, "forward", log_format=fmt))
ctx = context.Context(connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0),
                      options.Options())
ctx.server = connection.Server(address=("127.0.0.1", 3))
client = Http1Client(ctx)
request = treq(headers=http.Headers(x_api=key))
list(client.send(RequestHeaders(1, request, False)))
try:  # what mitmproxy 12 does with h2 request trailers towards an HTTP/1 upstream
    list(client.send(RequestTrailers(1, http.Headers(x_note=f"trailer with the key {key}"))))
except AssertionError:
    logging.getLogger("mitmproxy.proxy.server").log(logging.ERROR, "mitmproxy has crashed!", exc_info=True)
logging.getLogger("mitmproxy.proxy.server").error("a header said %s", key)
logging.getLogger("valet").warning(f"an f-string with {key.upper()}")
print("done", file=sys.stderr)
'''


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_mitmproxys_crash_log_never_prints_a_valet_key(fmt: str) -> None:
    done = subprocess.run([PYTHON, "-c", CRASH, FAKE_KEY, fmt], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    log = done.stderr
    assert done.returncode == 0 and "done" in log, log
    assert "mitmproxy has crashed!" in log and "a header said" in log and "an f-string with" in log, log
    assert FAKE_KEY not in log and FAKE_KEY.upper() not in log and "F" * 43 not in log, log
    assert "[REDACTED:valet_key]" in log
    if fmt == "text":
        assert "AssertionError" in log and "RequestTrailers" in log  # the traceback is kept, minus the key
