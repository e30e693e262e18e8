"""What the audit log's write-ahead costs: the bench workload through bare mitmproxy, Valet, and Valet
with write-ahead switched off (rows then written when the exchange ends, as before write-ahead).

    .venv/bin/python bench/audit_cost.py [--calls N] [--clients C] [--per-client M]

Prints p50/p99 latency, throughput and proxy CPU per call for each, then
``valet_cpu_per_call_vs_bare_mitmproxy=<ratio>`` and ``write_ahead_p50_delta_ms=<ms>``.
The switch (env ``VALET_BENCH_NO_WRITE_AHEAD=1``) exists for this measurement only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench import (  # noqa: E402  (bench/bench.py, the shared benchmark)
    BENCH_API_KEY, BENCH_TOKEN, Result, Target, _start_bare, _valet_config, _valet_policy, add_arguments,
    measure_all,
)
from tests.support import start_upstream, start_valet  # noqa: E402


def _valet(tmp: Path, upstream_url: str, args: argparse.Namespace, env: dict[str, str]):  # type: ignore[no-untyped-def]
    valet = start_valet(tmp, None, config_text=_valet_config(upstream_url, args.rules),
                        policy=_valet_policy(args.rules), env=env)
    key, _ = valet.new_key("bench", "bench")
    valet.cli("secret", "set", "BENCH_API_KEY", "--server", "bench", stdin=BENCH_API_KEY)
    valet.cli("secret", "set", "BENCH_TOKEN", "--server", "bench", stdin=BENCH_TOKEN)
    return valet, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args()
    upstream = start_upstream()
    bare, bare_port = _start_bare(upstream.port)
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory() as tmp_on, tempfile.TemporaryDirectory() as tmp_off:
            on, key_on = _valet(Path(tmp_on), upstream.url, args, {})
            off, key_off = _valet(Path(tmp_off), upstream.url, args, {"VALET_BENCH_NO_WRITE_AHEAD": "1"})
            try:  # all three at once, measured in alternating turns (see bench.py)
                results = measure_all([
                    Target("bare mitmproxy", f"http://127.0.0.1:{bare_port}/mcp", bare.pid, None),
                    Target("valet", f"{on.base}/bench", on.process.pid, key_on),
                    Target("valet no WA", f"{off.base}/bench", off.process.pid, key_off),
                ], args)
            finally:
                on.stop()
                off.stop()
    finally:
        bare.terminate()
        bare.wait(10)
        upstream.stop()
    print(f"\n{os.cpu_count()} cores; {args.calls} sequential calls, {args.clients} clients x {args.per_client} calls"
          f"{f', in {args.rounds} alternating turns' if args.rounds > 0 else ''}")
    print(f"{'target':<16}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}{'proxy CPU ms/call':>19}")
    for r in results:
        print(f"{r.name:<16}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.throughput:>10.1f}{r.cpu_per_call_ms or 0:>19.3f}")
    bare_r, on, off = results
    assert bare_r.cpu_per_call_ms and on.cpu_per_call_ms and off.cpu_per_call_ms
    print(f"valet_cpu_per_call_vs_bare_mitmproxy={on.cpu_per_call_ms / bare_r.cpu_per_call_ms:.2f}")
    print(f"valet_no_write_ahead_cpu_per_call_vs_bare_mitmproxy={off.cpu_per_call_ms / bare_r.cpu_per_call_ms:.2f}")
    print(f"write_ahead_p50_delta_ms={on.p50_ms - off.p50_ms:.2f}")


if __name__ == "__main__":
    main()
