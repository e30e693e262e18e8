"""Bench only: where Valet's own CPU time goes under the bench workload (yappi, every thread, CPU clock).

    .venv/bin/pip install yappi   # not a dependency of Valet
    .venv/bin/python bench/profile_valet.py [--calls N] [--clients C] [--per-client M] [--out FILE] [--top N]

Starts the same Valet as ``make bench`` (every feature on) with
``bench/profiling/sitecustomize.py`` on its ``PYTHONPATH``, runs the same calls,
stops it (the profile is written at exit) and prints the functions with the most
own time and the most cumulative time. Profiling slows everything down: read the
shares, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench import BENCH_API_KEY, BENCH_TOKEN, _valet_config, _valet_policy, measure  # noqa: E402
from tests.support import start_upstream, start_valet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rules", type=int, default=50)
    parser.add_argument("--out", default="/tmp/valet-profile.pstat")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--spy", metavar="FILE",
                        help="no profiler inside: sample the proxy with py-spy (pip install py-spy) into FILE "
                             "(collapsed stacks), then print the functions with the most samples")
    parser.add_argument("--stages", action="store_true",
                        help="no profiler: CPU time per call of each stage hook and of the audit writer thread")
    args = parser.parse_args()
    upstream = start_upstream()
    env = {} if args.spy else {
        ("VALET_BENCH_STAGES" if args.stages else "VALET_BENCH_PROFILE"): args.out,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "bench/profiling"), os.environ.get("PYTHONPATH")])),
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            valet = start_valet(Path(tmp), None, config_text=_valet_config(upstream.url, args.rules),
                                policy=_valet_policy(args.rules), env=env)
            key, _ = valet.new_key("bench", "bench")
            valet.cli("secret", "set", "BENCH_API_KEY", "--server", "bench", stdin=BENCH_API_KEY)
            valet.cli("secret", "set", "BENCH_TOKEN", "--server", "bench", stdin=BENCH_TOKEN)
            spy = None
            if args.spy:  # sampling from outside: the proxy runs at full speed
                spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                                        str(valet.process.pid), "--rate", "1000", "--threads",
                                        "--format", "raw", "--output", args.spy],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                result = measure("valet", f"{valet.base}/bench", valet.process.pid, key, args)
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
                valet.stop()
    finally:
        upstream.stop()
    print(f"(profiled) cpu/call {result.cpu_per_call_ms:.3f} ms")
    if args.stages:
        _print_stages(args.out)
        return
    if args.spy:
        _print_spy(args.spy, args.top)
        return
    stats = pstats.Stats(args.out)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


def _print_spy(path: str, top: int) -> None:
    """Own and inclusive samples per function from py-spy's collapsed stacks (``a;b;c count`` lines)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    print(f"{total} samples")
    for title, table in (("own", own), ("inclusive", inclusive)):
        print(f"--- {title}")
        for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{100 * n / total:6.2f} %  {frame}")


def _print_stages(path: str) -> None:
    totals = json.loads(Path(path).read_text())
    calls = totals.get("WriteAhead.commit", [0, 0])[0] / 2 or 1  # two per call (requestheaders, request)
    print(f"{'part':<40}{'calls':>8}{'us/call':>10}")
    summed = 0.0
    for name, (count, ns) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        per_call = ns / calls / 1000
        if ":" not in name:  # "audit writer: ...", "WriteAhead: ...": parts of another line, not added twice
            summed += per_call
        print(f"{name:<40}{count:>8}{per_call:>10.1f}")
    print(f"{'total (per call, writer thread included)':<40}{'':>8}{summed:>10.1f}")


if __name__ == "__main__":
    main()
