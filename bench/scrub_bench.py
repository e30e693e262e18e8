"""Scrubbing figures for `make bench`: speed of the scrubber, and how much it stalls everyone else.

- micro: 20 secrets over an 8 MiB and a 30 MiB JSON answer (a secret every
  64 KiB): the old regex-alternation redactor (bench/old_redact.py, the code
  before the one egress scrubber) against the scrubber, and against a plain
  copy of the body;
- interpreter stall: the longest gap of a 1 ms asyncio ticker while another
  thread scrubs 30 MiB (what every other agent would wait for);
- streamed: the same body fed to the streamed scrub (addon/secrets/bodystream.py)
  in mitmproxy's 64 KiB reads, on the event loop: total, and the longest piece
  (what every other agent would wait for);
- end to end: another agent's small calls while one agent fetches 30 MiB
  answers, through Valet and through a bare mitmproxy (tests/test_scrub_stall.py),
  in alternating turns (this machine's load drifts), with the proxy process's
  CPU time per 30 MiB fetch (steadier than wall time).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from addon.secrets.bodystream import BodyStream  # noqa: E402
from addon.secrets.scrubber import Scrubber  # noqa: E402
from old_redact import Redactor as OldRedactor  # noqa: E402
from tests.support import free_port  # noqa: E402
from tests.test_scrub_stall import SECRETS, measure_stall, start_big_valet, start_hostile  # noqa: E402


def body(mib: float) -> bytes:
    line = b"lorem ipsum dolor sit amet, consectetur adipiscing elit \\n sed do eiusmod tempor. "
    chunk = line * (65536 // len(line)) + SECRETS["S00"].encode()
    return b'{"text": "' + chunk * int(mib * 16) + b'"}'


def timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def loop_stall(work: Callable[[], Any]) -> float:
    """The longest gap, in seconds, of a 1 ms asyncio ticker while ``work`` runs in a thread."""

    async def run() -> float:
        gaps: list[float] = []
        thread = threading.Thread(target=work)
        last = time.perf_counter()
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        thread.join()
        return max(gaps, default=0.0)

    return asyncio.run(run())


def streamed(scrubber: Scrubber, data: bytes, piece: int = 65535) -> tuple[float, float]:
    """(total, longest piece) seconds of the streamed scrub of ``data`` in mitmproxy-sized reads; best of 3."""
    best: tuple[float, float] = (float("inf"), 0.0)
    for _ in range(3):
        stream = BodyStream(lambda: scrubber)
        worst, out = 0.0, 0
        begin = time.perf_counter()
        for i in range(0, len(data), piece):
            start = time.perf_counter()
            out += len(stream.feed(data[i : i + piece]))
            worst = max(worst, time.perf_counter() - start)
        out += len(stream.end())
        total = time.perf_counter() - begin
        assert out > len(data) * 0.99
        best = min(best, (total, worst))
    return best


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def micro() -> None:
    values = dict(SECRETS)
    old, new = OldRedactor(values), Scrubber(values.items())
    print("\nscrubbing, 20 secrets, a secret every 64 KiB (best of 3):")
    print(f"{'body':<8}{'copy ms':>10}{'old ms':>10}{'new ms':>10}{'new/copy':>10}{'old/new':>10}")
    for mib in (8, 30):
        data = body(mib)
        copy = timed(lambda: bytes(bytearray(data)))
        old_t = timed(lambda: old.json_or_raw(data), 1)
        new_t = timed(lambda: new.bytes(data))
        print(f"{mib:>3} MiB {copy * 1000:>10.1f}{old_t * 1000:>10.1f}{new_t * 1000:>10.1f}"
              f"{new_t / copy:>10.2f}{old_t / new_t:>10.1f}")
    print("\nstreamed scrub, 64 KiB pieces on the event loop (best of 3):")
    for mib in (8, 30):
        data = body(mib)
        total, worst = streamed(new, data)
        print(f"{mib:>3} MiB: {total * 1000:.1f} ms in all, longest piece {worst * 1000:.2f} ms")
    data = body(30)
    old_stall = loop_stall(lambda: old.json_or_raw(data))
    new_stall = loop_stall(lambda: new.bytes(data))
    print(f"longest event-loop gap while a thread scrubs 30 MiB: old {old_stall * 1000:.1f} ms, "
          f"new {new_stall * 1000:.1f} ms")


def big_fetch_cpu(base: str, key: str, pid: int, fetches: int = 4) -> float:
    """The proxy's CPU seconds per 30 MiB fetch, nothing else running through it."""
    import httpx

    with httpx.Client(timeout=120) as client:
        before = cpu_seconds(pid)
        for _ in range(fetches):
            r = client.get(f"{base}/big?mib=30", headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200
        return (cpu_seconds(pid) - before) / fetches


def end_to_end(turns: int = 3) -> None:
    upstream = start_hostile()
    port = free_port()
    bare = subprocess.Popen([sys.executable, str(ROOT / "bench/bare_mitmproxy.py"), "--upstream",
                             f"http://127.0.0.1:{upstream.port}", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    assert bare.stdout is not None and "listening" in bare.stdout.readline()
    results: dict[str, list[dict[str, float]]] = {"bare mitmproxy": [], "valet": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            valet = start_big_valet(Path(tmp), upstream.port)
            try:
                key, _ = valet.new_key("bench", "stall")
                targets = {
                    "bare mitmproxy": (f"http://127.0.0.1:{port}/api", SECRETS["S00"], False, bare.pid),
                    "valet": (f"{valet.base}/big", key, True, valet.process.pid),
                }
                for _ in range(turns):  # alternating turns: both targets see the same drift in load
                    for name, (base, auth, scrubbed, pid) in targets.items():
                        figures = measure_stall(base, auth, big_fetches=5, scrubbed=scrubbed)
                        figures["cpu"] = big_fetch_cpu(base, auth, pid)
                        results[name].append(figures)
            finally:
                valet.stop()
    finally:
        bare.terminate()
        bare.wait(10)
        upstream.stop()
    print(f"\nstall of others: small calls while another agent fetches 30 MiB answers "
          f"(5 fetches per turn, {turns} alternating turns, medians of the turns):")
    print(f"{'target':<16}{'alone p50':>11}{'alone p99':>11}{'during p50':>12}{'during p99':>12}"
          f"{'30 MiB fetch':>14}{'proxy CPU/fetch':>17}")
    for name, turns_of in results.items():
        m = {k: statistics.median(t[k] for t in turns_of) for k in turns_of[0]}
        print(f"{name:<16}{m['alone_p50'] * 1000:>9.1f}ms{m['alone_p99'] * 1000:>9.1f}ms"
              f"{m['during_p50'] * 1000:>10.1f}ms{m['during_p99'] * 1000:>10.1f}ms{m['big_fetch'] * 1000:>12.0f}ms"
              f"{m['cpu'] * 1000:>15.0f}ms")
    per_turn = [v["during_p99"] - b["during_p99"] for v, b in zip(results["valet"], results["bare mitmproxy"])]
    print("during p99, valet minus bare mitmproxy, per turn: "
          + ", ".join(f"{d * 1000:+.1f} ms" for d in per_turn))
    valet_p99 = statistics.median(t["during_p99"] for t in results["valet"])
    bare_p99 = statistics.median(t["during_p99"] for t in results["bare mitmproxy"])
    print(f"valet_stall_of_others_p99_ms={valet_p99 * 1000:.1f} (bare mitmproxy {bare_p99 * 1000:.1f})")


def main() -> None:
    micro()
    end_to_end()


if __name__ == "__main__":
    main()
