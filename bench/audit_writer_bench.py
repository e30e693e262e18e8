"""Bench only: the audit writer's own cost per exchange, in process, without a proxy around it.

    .venv/bin/python bench/audit_writer_bench.py [--exchanges N] [--batch B]

Feeds the writer what the benchmark's calls give it: a row written ahead with two
secret-usage ledger rows, and the previous exchange's outcome riding along in the same
commit (sequential traffic), or ``--batch`` rows written ahead together (concurrent
traffic). Prints the writer thread's CPU µs per exchange and the event loop's CPU µs per
exchange (queueing, waking, resolving), both from thread CPU clocks.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from addon.audit import log as audit_log  # noqa: E402
from addon.audit.exchange import Exchange  # noqa: E402

USES = [("BENCH_API_KEY", "fp-aaaaaaaaaaaaaaaa", "shared", "bench", "127.0.0.1"),
        ("BENCH_TOKEN", "fp-bbbbbbbbbbbbbbbb", "shared", "bench", "127.0.0.1")]


def _exchange(i: int) -> Exchange:
    exchange = Exchange(mode="reverse", http_method="POST", http_path="/bench", session_id="0" * 32)
    exchange.key_id, exchange.user, exchange.agent, exchange.server = "abcdef012345", "bench", "bench", "bench"
    exchange.rpc_method, exchange.rpc_id, exchange.tool = "tools/call", str(i), "add_authed"
    exchange.arguments = '{"a":1,"b":2,"api_key":"[REDACTED:BENCH_API_KEY]"}'
    exchange.rule, exchange.bytes_in = "allow-add", 180
    exchange.injected = '["BENCH_API_KEY","BENCH_TOKEN"]'
    return exchange


async def run(writer: audit_log.AuditWriter, exchanges: int, batch: int) -> float:
    start = time.thread_time_ns()
    previous: list[Exchange] = []
    for i in range(0, exchanges, batch):
        group = [_exchange(i + j) for j in range(batch)]
        for exchange in previous:  # the outcomes wait beside the queue, as the proxy's do
            writer.complete(exchange.row, exchange.finish(200))
        futures = []
        for exchange in group:
            exchange.row, exchange.committed = writer.begin(exchange.request_row(), USES)
            futures.append(exchange.committed)
        for future in futures:
            assert await future
        previous = group
    return (time.thread_time_ns() - start) / exchanges / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchanges", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        writer = audit_log.AuditWriter(Path(tmp) / "audit.db", recover=True)
        asyncio.run(run(writer, 200, args.batch))  # warm up (statement cache, first pages)
        thread_cpu: dict[str, int] = {}
        original = writer._commit

        def timed(*a, **k):  # type: ignore[no-untyped-def]
            t = time.thread_time_ns()
            try:
                return original(*a, **k)
            finally:
                thread_cpu["commit"] = thread_cpu.get("commit", 0) + time.thread_time_ns() - t

        writer._commit = timed  # type: ignore[method-assign]
        ident = writer._thread.ident
        before = _thread_cpu_ns(ident)
        loop_us = asyncio.run(run(writer, args.exchanges, args.batch))
        after = _thread_cpu_ns(ident)
        writer.close()
    print(f"exchanges {args.exchanges}, written ahead {args.batch} per commit")
    print(f"writer thread CPU per exchange: {(after - before) / args.exchanges / 1000:.1f} us "
          f"(of which inside the commit: {thread_cpu.get('commit', 0) / args.exchanges / 1000:.1f} us)")
    print(f"event loop CPU per exchange:    {loop_us:.1f} us")


def _thread_cpu_ns(ident: int | None) -> int:
    """CPU time of another thread of this process, from /proc (Linux)."""
    import os

    native = next(t.native_id for t in threading.enumerate() if t.ident == ident)
    fields = Path(f"/proc/self/task/{native}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
