"""CPU cost of the metric calls one exchange makes (addon/ops/metrics.py), off and on, in-process.

    .venv/bin/python bench/metrics_cost.py

`make bench`'s `valet + admin` target measures the same end to end, but on a shared
2-core machine two runs of one target differ by more than the 3 % budget; this
isolates the metric calls (forwarded, response_headers, audit_queued, flow_done with
the labels of a tools/call) so their share of a call's CPU can be stated.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import time
from types import SimpleNamespace
from addon.ops import metrics
from addon.audit.exchange import Exchange

def flow():
    ex = Exchange(mode="reverse", http_method="POST", http_path="/bench")
    ex.server, ex.decision, ex.rpc_method, ex.tool, ex.recorded = "bench", "allow", "tools/call", "add_authed", True
    now = time.time()
    req = SimpleNamespace(timestamp_start=now, timestamp_end=now)
    resp = SimpleNamespace(timestamp_start=now + 0.001, stream=False)
    return SimpleNamespace(metadata={"valet": ex}, request=req, response=None, error=None), resp

def run(n):
    flows = [flow() for _ in range(n)]
    loop = asyncio.new_event_loop()
    t0 = time.process_time()
    for f, resp in flows:
        metrics.forwarded(f)
        f.response = resp
        metrics.response_headers(f)
        fut = loop.create_future(); metrics.audit_queued(fut); fut.set_result(True)
        metrics.flow_done(f)
    loop.run_until_complete(asyncio.sleep(0))
    return (time.process_time() - t0) / n * 1e6

N = 20000  # exchanges per run
print("off: %.2f us/exchange" % run(N))
metrics.enable(); metrics.tool_seen("bench", "add_authed")
run(1000)
print("on:  %.2f us/exchange" % run(N))
