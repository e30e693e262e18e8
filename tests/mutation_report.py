"""`make mutate`'s summary: the mutation score per mutated module, from mutmut's own result files.

mutmut 3 prints only totals; the score per module is what docs/mutation-survivors.md and reviews need.
Score = killed (or timed out, or crashed) / mutants that were checked; "no tests" counts as survived (no
unit test reaches that code, which is exactly what the score is meant to show). Not a test module (no
``test_`` prefix): pytest does not collect it. Run as ``python -m tests.mutation_report`` after ``mutmut run``;
``--survivors`` prints every survivor with the line it changed, in the format of docs/mutation-survivors.md.
"""

from __future__ import annotations

import ast
import difflib
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit codes. Killed: the tests failed (1), pytest broke (3), a timeout (SIGXCPU: 24, -24, 152, 255;
# mutmut's own 36), caught by a type check (37), or the test process crashed (-11 SIGSEGV: hyperscan given a
# mutated argument; -9 SIGKILL after the CPU limit). A crash is a test run that did not pass, so the mutant
# was noticed.
KILLED = {1, 3, 36, 24, -24, 152, 255, 37, -11, -9}
SURVIVED = {0, 5, 33}  # survived, no tests


def _metas(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py.meta"))


def main(root: Path = Path("mutants")) -> int:
    metas = _metas(root)
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


def survivors(root: Path = Path("mutants")) -> int:
    """Each survivor as ``- `name`: `the changed line``` (the line as the mutant has it), per module."""
    for meta in _metas(root):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        names = [k for k, c in codes.items() if c in SURVIVED]
        if not names:
            continue
        source = Path(str(meta)[: -len(".meta")])
        lines = source.read_text().splitlines()
        functions = {node.name: lines[node.lineno - 1: node.end_lineno] for node in ast.walk(ast.parse("\n".join(lines)))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        module = str(source.relative_to(root))
        print(f"\n{module}\n")
        for key in sorted(names, key=lambda k: (k.rsplit("__mutmut_", 1)[0], int(k.rsplit("_", 1)[1]))):
            name = key.rsplit(".", 1)[1]
            original = functions.get(name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", [])
            mutant = functions.get(name, [])
            added = [line[1:].strip() for line in difflib.unified_diff(original[1:], mutant[1:], lineterm="", n=0)
                     if line.startswith("+") and not line.startswith("+++")]
            changed = " / ".join(added) if added else (mutant[0].strip() if mutant else "?")
            status = "" if codes[key] == 0 else " (no tests)"
            print(f"- `{name}`{status}: `{changed[:110]}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(survivors() if "--survivors" in sys.argv[1:] else main())
