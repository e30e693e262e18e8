"""Valet's benchmark: the same MCP workload direct, through a bare mitmproxy, and through Valet.

    make bench            # or: .venv/bin/python bench/bench.py [--calls N] [--clients C] [--per-client M]

For each target it measures, with the official SDK client (legacy mode, one
kept session per client) calling a cheap tool (`add_authed`, whose `api_key`
argument the client passes itself to the direct and bare-mitmproxy targets and
Valet injects from its vault, along with an `Authorization` header; every
response goes through Valet's redaction; Valet's policy has 53 rules, among
them an argument constraint and a rate limit that count every call):

- sequential `tools/call` latency, p50 and p99;
- throughput with C concurrent clients;
- CPU time (user+system) of the proxy process per call, over both phases:
  far steadier than wall time on a shared 2-core machine;
- the proxy process's RSS at the end.

Then the scrubbing figures (bench/scrub_bench.py): the scrubber against the
old redactor and a plain copy, the event-loop gap while a thread scrubs 30 MiB,
and the stall of other agents while one fetches 30 MiB answers, through Valet
and through a bare mitmproxy (`--scrub-only` runs just these, `--no-scrub`
skips them).

The call benchmark's line is `valet_cpu_per_call_vs_bare_mitmproxy=<ratio>`,
the scrubbing one's `valet_stall_of_others_p99_ms=<ms>`.
Everything runs on loopback; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import free_port, start_upstream, start_valet  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import scrub_bench  # noqa: E402


BENCH_API_KEY = "fake-bench-api-key-0000"
BENCH_TOKEN = "fake-bench-bearer-token-0000"


def _valet_config(upstream_url: str, rules: int) -> str:
    """Valet with every feature on: header and argument injection, redaction, and ``rules`` inject rules."""
    filler = "".join(
        f"      - tools: [\"never_called_{i}_*\"]\n        arguments: {{x{i}: \"${{secret:BENCH_TOKEN}}\"}}\n"
        for i in range(rules)
    )
    return (
        "servers:\n  bench:\n"
        f"    url: {upstream_url}\n"
        "    headers:\n      Authorization: \"Bearer ${secret:BENCH_TOKEN}\"\n"
        "    inject:\n"
        f"{filler}"
        "      - tools: [\"add_authed\"]\n        arguments: {api_key: \"${secret:BENCH_API_KEY}\"}\n"
    )


def _valet_policy(rules: int) -> str:
    """``rules`` access rules that do not match the benchmark's call, then the ones that do, and a rate rule."""
    filler = "".join(
        f"  - id: other-{i}\n    effect: {'deny' if i % 2 else 'allow'}\n    servers: [bench]\n"
        f"    tools: [\"other_tool_{i}_*\"]\n"
        for i in range(rules)
    )
    return (
        "servers:\n  bench: {default: deny}\nrules:\n" + filler
        + "  - id: no-deletes\n    effect: deny\n    tools: [\"delete_*\"]\n"
        + "  - id: bench-add\n    effect: allow\n    servers: [bench]\n    tools: [add_authed]\n"
        + "    arguments:\n      a: {min: -1000000000, max: 1000000000}\n"
        + "  - id: bench-rate\n    tools: [\"*\"]\n    rate: 1000000/minute\n    per: [user]\n"
    )


@dataclass
class Result:
    name: str
    p50_ms: float
    p99_ms: float
    throughput: float
    cpu_per_call_ms: float | None
    rss_mib: float | None


def _client(url: str, key: str | None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    return Client(streamable_http_client(url, http_client=http), mode="legacy")


def _args(key: str | None, a: int, b: int) -> dict[str, object]:
    # Through Valet the agent does not hold the API key: Valet injects it.
    return {"a": a, "b": b} if key else {"a": a, "b": b, "api_key": BENCH_API_KEY}


async def _sequential(url: str, key: str | None, calls: int, warmup: int) -> list[float]:
    latencies: list[float] = []
    async with _client(url, key) as c:
        for i in range(warmup + calls):
            start = time.perf_counter()
            result = await c.call_tool("add_authed", _args(key, i, 1))
            elapsed = time.perf_counter() - start
            assert result.content[0].text == str(i + 1), result
            if i >= warmup:
                latencies.append(elapsed)
    return latencies


async def _concurrent(url: str, key: str | None, clients: int, per_client: int) -> float:
    async def one(n: int) -> None:
        async with _client(url, key) as c:
            for i in range(per_client):
                result = await c.call_tool("add_authed", _args(key, n, i))
                assert result.content[0].text == str(n + i)

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(clients)))
    return clients * per_client / (time.perf_counter() - start)


@dataclass
class Target:
    name: str
    url: str
    pid: int | None
    key: str | None


async def _interleaved(targets: list[Target], args: argparse.Namespace) -> list[Result]:
    """Every target measured in ``args.rounds`` turns, in rotating order, on sessions kept open throughout.

    Other work on a shared machine comes and goes within seconds; measured one after the other, the targets
    see different loads and their CPU per call moves by ±20 %. In turns, each sees the same load, so the ratio
    is steady. Each turn: ``calls / rounds`` sequential calls (timed one by one), then ``clients`` concurrent
    clients with ``per_client / rounds`` calls each. A proxy's CPU time is counted during its own turns only.
    """
    rounds = max(1, args.rounds)
    seq_calls, conc_calls = max(1, args.calls // rounds), max(1, args.per_client // rounds)
    procs = {t.name: psutil.Process(t.pid) if t.pid else None for t in targets}
    latencies: dict[str, list[float]] = {t.name: [] for t in targets}
    busy: dict[str, float] = {t.name: 0.0 for t in targets}
    cpu: dict[str, float] = {t.name: 0.0 for t in targets}
    done: dict[str, int] = {t.name: 0 for t in targets}
    async with contextlib.AsyncExitStack() as stack:
        sequential = {t.name: await stack.enter_async_context(_client(t.url, t.key)) for t in targets}
        concurrent = {t.name: [await stack.enter_async_context(_client(t.url, t.key)) for _ in range(args.clients)]
                      for t in targets}
        for t in targets:  # warm-up: imports, caches, the first snapshot
            for i in range(args.warmup):
                await sequential[t.name].call_tool("add_authed", _args(t.key, i, 1))

        async def one(client: Client, key: str | None, n: int) -> None:
            for i in range(conc_calls):
                result = await client.call_tool("add_authed", _args(key, n, i))
                assert result.content[0].text == str(n + i)

        for r in range(rounds):
            for t in targets[r % len(targets):] + targets[:r % len(targets)]:
                cpu0 = _cpu(procs[t.name])
                client = sequential[t.name]
                for i in range(seq_calls):
                    start = time.perf_counter()
                    result = await client.call_tool("add_authed", _args(t.key, i, 1))
                    latencies[t.name].append(time.perf_counter() - start)
                    assert result.content[0].text == str(i + 1), result
                start = time.perf_counter()
                await asyncio.gather(*(one(c, t.key, n) for n, c in enumerate(concurrent[t.name])))
                busy[t.name] += time.perf_counter() - start
                cpu[t.name] += _cpu(procs[t.name]) - cpu0
                done[t.name] += seq_calls + conc_calls * args.clients
    results = []
    for t in targets:
        lat = sorted(latencies[t.name])
        proc = procs[t.name]
        results.append(Result(
            name=t.name,
            p50_ms=statistics.median(lat) * 1000,
            p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
            throughput=conc_calls * args.clients * rounds / busy[t.name],
            cpu_per_call_ms=cpu[t.name] / done[t.name] * 1000 if proc else None,
            rss_mib=_rss_mib(proc) if proc else None,
        ))
    return results


def measure_all(targets: list[Target], args: argparse.Namespace) -> list[Result]:
    """In turns (``--rounds``, the default), or one target after the other (``--rounds 0``, as before)."""
    if args.rounds > 0:
        return asyncio.run(_interleaved(targets, args))
    return [measure(t.name, t.url, t.pid, t.key, args) for t in targets]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The workload options shared by bench.py and audit_cost.py."""
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per target")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--per-client", type=int, default=60, help="calls per concurrent client")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rules", type=int, default=50,
                        help="extra injection rules in Valet's config, and extra policy rules")
    parser.add_argument("--rounds", type=int, default=10,
                        help="measure the targets in this many alternating turns (0: one after the other)")


def _cpu(proc: psutil.Process | None) -> float:
    """The process's CPU and its children's (Valet's audit writer process), while they run."""
    if proc is None:
        return 0.0
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _rss_mib(proc: psutil.Process) -> float:
    """Resident memory of the process and its children, MiB."""
    total = 0
    for p in (proc, *proc.children(recursive=True)):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def measure(name: str, url: str, pid: int | None, key: str | None, args: argparse.Namespace) -> Result:
    proc = psutil.Process(pid) if pid else None
    asyncio.run(_sequential(url, key, 0, args.warmup))
    cpu0 = _cpu(proc)
    latencies = asyncio.run(_sequential(url, key, args.calls, 0))
    throughput = asyncio.run(_concurrent(url, key, args.clients, args.per_client))
    cpu = _cpu(proc) - cpu0
    total_calls = args.calls + args.clients * args.per_client
    latencies.sort()
    return Result(
        name=name,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        throughput=throughput,
        cpu_per_call_ms=cpu / total_calls * 1000 if proc else None,
        rss_mib=_rss_mib(proc) if proc else None,
    )


def _start_bare(upstream_port: int) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/bare_mitmproxy.py"), "--upstream", f"http://127.0.0.1:{upstream_port}",
         "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None and "listening" in process.stdout.readline()
    return process, port


@contextlib.contextmanager
def _admin_target(tmp: Path, upstream_url: str, args: argparse.Namespace) -> Iterator[Target]:
    """A second Valet with the admin listener on (every metric counted), scraped once a second as
    Prometheus would (more often than the usual 15 s); measured in the same turns as the others."""
    from tests.ops_support import start_ops_valet

    folder = tmp / "admin"
    folder.mkdir()
    admin_port = free_port()
    valet = start_ops_valet(folder, _valet_config(upstream_url, args.rules), _valet_policy(args.rules),
                            "--admin-listen", f"127.0.0.1:{admin_port}")
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            httpx2.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10)
            stop.wait(1.0)

    thread = threading.Thread(target=scraper, daemon=True)
    try:
        key, _ = valet.new_key("bench", "bench")
        valet.cli("secret", "set", "BENCH_API_KEY", "--server", "bench", stdin=BENCH_API_KEY)
        valet.cli("secret", "set", "BENCH_TOKEN", "--server", "bench", stdin=BENCH_TOKEN)
        thread.start()
        yield Target("valet + admin", f"{valet.base}/bench", valet.process.pid, key)
    finally:
        stop.set()
        valet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--scrub-only", action="store_true", help="only the scrubbing figures (bench/scrub_bench.py)")
    parser.add_argument("--no-scrub", action="store_true", help="skip the scrubbing figures")
    parser.add_argument("--no-admin", action="store_true",
                        help="skip the 'valet + admin' target (Valet with --admin-listen: metrics on)")
    args = parser.parse_args()
    if args.scrub_only:
        scrub_bench.main()
        return

    upstream = start_upstream()
    bare, bare_port = _start_bare(upstream.port)
    with tempfile.TemporaryDirectory() as tmp:
        valet = start_valet(Path(tmp), None, config_text=_valet_config(upstream.url, args.rules),
                            policy=_valet_policy(args.rules))
        key, _ = valet.new_key("bench", "bench")
        valet.cli("secret", "set", "BENCH_API_KEY", "--server", "bench", stdin=BENCH_API_KEY)
        valet.cli("secret", "set", "BENCH_TOKEN", "--server", "bench", stdin=BENCH_TOKEN)
        try:
            with contextlib.ExitStack() as stack:
                targets = [
                    Target("direct", upstream.url, None, None),
                    Target("bare mitmproxy", f"http://127.0.0.1:{bare_port}/mcp", bare.pid, None),
                    Target("valet", f"{valet.base}/bench", valet.process.pid, key),
                ]
                if not args.no_admin:
                    targets.append(stack.enter_context(_admin_target(Path(tmp), upstream.url, args)))
                results = measure_all(targets, args)
        finally:
            valet.stop()
            bare.terminate()
            bare.wait(10)
            upstream.stop()

    print(f"\n{os.cpu_count()} cores; {args.calls} sequential calls, {args.clients} clients x {args.per_client} calls"
          f"{f', in {args.rounds} alternating turns' if args.rounds > 0 else ''}")
    print(f"{'target':<16}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}{'proxy CPU ms/call':>19}{'proxy RSS MiB':>15}")
    for r in results:
        cpu = f"{r.cpu_per_call_ms:.3f}" if r.cpu_per_call_ms is not None else "-"
        rss = f"{r.rss_mib:.1f}" if r.rss_mib is not None else "-"
        print(f"{r.name:<16}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.throughput:>10.1f}{cpu:>19}{rss:>15}")
    bare_cpu, valet_cpu = results[1].cpu_per_call_ms, results[2].cpu_per_call_ms
    assert bare_cpu and valet_cpu
    print(f"valet_cpu_per_call_vs_bare_mitmproxy={valet_cpu / bare_cpu:.2f}")
    if len(results) > 3 and results[3].cpu_per_call_ms:
        print(f"valet_admin_listener_cpu_overhead_pct={(results[3].cpu_per_call_ms / valet_cpu - 1) * 100:.1f}")
    if not args.no_scrub:
        scrub_bench.main()


if __name__ == "__main__":
    main()
