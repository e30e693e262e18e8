"""`make mutate`'s summary: the mutation score per mutated module, from mutmut's own result files.

mutmut 3 prints only totals; the score per module is what docs/mutation-survivors.md and reviews need.
Score = killed (or timed out) / mutants that were checked; "no tests" counts as survived (no unit test
reaches that code, which is exactly what the score is meant to show). Not a test module (no ``test_``
prefix): pytest does not collect it. Run as ``python -m tests.mutation_report`` after ``mutmut run``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # mutmut's exit codes for killed, timeout, caught by type check
SURVIVED = {0, 5, 33}  # survived, no tests


def main(root: Path = Path("mutants")) -> int:
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/ (run `make mutate`)", file=sys.stderr)
        return 1
    total: Counter[str] = Counter()
    print(f"{'module':40} {'killed':>7} {'survived':>9} {'score':>7}")
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        counts = Counter("killed" if c in KILLED else "survived" if c in SURVIVED else "other" for c in codes)
        total += counts
        checked = counts["killed"] + counts["survived"]
        module = str(meta.relative_to(root))[: -len(".meta")]
        score = 100 * counts["killed"] / checked if checked else 0.0
        print(f"{module:40} {counts['killed']:7} {counts['survived']:9} {score:6.1f}%")
    checked = total["killed"] + total["survived"]
    print(f"{'total':40} {total['killed']:7} {total['survived']:9} {100 * total['killed'] / max(checked, 1):6.1f}%"
          + (f"  ({total['other']} unchecked or suspicious)" if total["other"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
