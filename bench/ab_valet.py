"""Bench only: two Valet trees side by side (before and after a change) next to a bare mitmproxy, in turns.

    git archive <commit> | tar -x -C /tmp/before && ln -s "$PWD/.venv" /tmp/before/.venv
    .venv/bin/python bench/ab_valet.py --before /tmp/before [--calls N --clients C --per-client M --rounds R]

On a shared machine the ratio moves by ±10 % between runs; between two Valets
measured in the same run, in alternating turns (see bench.py), the difference
is what the change did. The "before" tree runs its own ``run_proxy.py`` and
``addon/``; keys and secrets are made with this tree's CLI (same files).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import tests.support as support  # noqa: E402
from bench import (  # noqa: E402
    BENCH_API_KEY, BENCH_TOKEN, Target, _start_bare, _valet_config, _valet_policy, add_arguments, measure_all,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other tree (with run_proxy.py)")
    add_arguments(parser)
    args = parser.parse_args()
    upstream = support.start_upstream()
    bare, bare_port = _start_bare(upstream.port)
    valets = []
    with tempfile.TemporaryDirectory() as tmp_before, tempfile.TemporaryDirectory() as tmp_after:
        try:
            for root, tmp in ((args.before.resolve(), tmp_before), (ROOT, tmp_after)):
                support.ROOT = root  # start_valet runs <ROOT>/run_proxy.py
                valet = support.start_valet(Path(tmp), None, config_text=_valet_config(upstream.url, args.rules),
                                            policy=_valet_policy(args.rules))
                key, _ = valet.new_key("bench", "bench")
                valet.cli("secret", "set", "BENCH_API_KEY", "--server", "bench", stdin=BENCH_API_KEY)
                valet.cli("secret", "set", "BENCH_TOKEN", "--server", "bench", stdin=BENCH_TOKEN)
                valets.append((valet, key))
            results = measure_all([
                Target("bare mitmproxy", f"http://127.0.0.1:{bare_port}/mcp", bare.pid, None),
                Target("valet before", f"{valets[0][0].base}/bench", valets[0][0].process.pid, valets[0][1]),
                Target("valet after", f"{valets[1][0].base}/bench", valets[1][0].process.pid, valets[1][1]),
            ], args)
        finally:
            support.ROOT = ROOT
            for valet, _ in valets:
                valet.stop()
            bare.terminate()
            bare.wait(10)
            upstream.stop()
    print(f"{'target':<16}{'p50 ms':>9}{'p99 ms':>9}{'proxy CPU ms/call':>19}{'proxy RSS MiB':>15}")
    for r in results:
        print(f"{r.name:<16}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.cpu_per_call_ms or 0:>19.3f}{r.rss_mib or 0:>15.1f}")
    bare_cpu = results[0].cpu_per_call_ms
    assert bare_cpu and results[1].cpu_per_call_ms and results[2].cpu_per_call_ms
    print(f"before_vs_bare_mitmproxy={results[1].cpu_per_call_ms / bare_cpu:.2f}")
    print(f"after_vs_bare_mitmproxy={results[2].cpu_per_call_ms / bare_cpu:.2f}")


if __name__ == "__main__":
    main()
