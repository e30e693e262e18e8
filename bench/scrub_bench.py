"""Scrubbing figures for `make bench`: speed of the scrubber, and how much it stalls everyone else.

- micro: 20 secrets over an 8 MiB and a 30 MiB JSON answer (a secret every
  64 KiB): the old regex-alternation redactor (bench/old_redact.py, the code
  before the one egress scrubber) against the scrubber, and against a plain
  copy of the body;
- interpreter stall: the longest gap of a 1 ms asyncio ticker while another
  thread scrubs 30 MiB (what every other agent would wait for);
- end to end: another agent's small calls while one agent fetches 30 MiB
  answers, through Valet and through a bare mitmproxy (tests/test_scrub_stall.py).
"""

from __future__ import annotations

import asyncio
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
    data = body(30)
    old_stall = loop_stall(lambda: old.json_or_raw(data))
    new_stall = loop_stall(lambda: new.bytes(data))
    print(f"longest event-loop gap while a thread scrubs 30 MiB: old {old_stall * 1000:.1f} ms, "
          f"new {new_stall * 1000:.1f} ms")


def end_to_end() -> None:
    upstream = start_hostile()
    port = free_port()
    bare = subprocess.Popen([sys.executable, str(ROOT / "bench/bare_mitmproxy.py"), "--upstream",
                             f"http://127.0.0.1:{upstream.port}", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    assert bare.stdout is not None and "listening" in bare.stdout.readline()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            valet = start_big_valet(Path(tmp), upstream.port)
            try:
                key, _ = valet.new_key("bench", "stall")
                through_valet = measure_stall(f"{valet.base}/big", key)
            finally:
                valet.stop()
        through_bare = measure_stall(f"http://127.0.0.1:{port}/api", SECRETS["S00"], scrubbed=False)
    finally:
        bare.terminate()
        bare.wait(10)
        upstream.stop()
    print("\nstall of others: small calls while another agent fetches 30 MiB answers (3 fetches):")
    print(f"{'target':<16}{'alone p50':>11}{'alone p99':>11}{'during p50':>12}{'during p99':>12}"
          f"{'30 MiB fetch':>14}")
    for name, f in (("bare mitmproxy", through_bare), ("valet", through_valet)):
        print(f"{name:<16}{f['alone_p50'] * 1000:>9.1f}ms{f['alone_p99'] * 1000:>9.1f}ms"
              f"{f['during_p50'] * 1000:>10.1f}ms{f['during_p99'] * 1000:>10.1f}ms{f['big_fetch'] * 1000:>12.0f}ms")
    print(f"valet_stall_of_others_p99_ms={through_valet['during_p99'] * 1000:.1f} "
          f"(bare mitmproxy {through_bare['during_p99'] * 1000:.1f})")


def main() -> None:
    micro()
    end_to_end()


if __name__ == "__main__":
    main()
