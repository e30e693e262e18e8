"""Every `valet policy ...` and `valet config ...` command the README and docs show runs on a fresh clone.

Commands are taken from the ```sh blocks of README.md, docs/*.md and policies/examples/README.md,
run with the real CLI from the repository root, and the ``# ...`` lines under each are found in
what it printed, in order (``...`` stands for anything). Check commands must succeed; explain
commands must exit 0 for a printed allow and 1 for a printed deny.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from .support import ROOT, VALET_CLI

DOCS = [ROOT / "README.md", ROOT / "policies/examples/README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"^(?:\.venv/bin/)?valet (policy|config) ")


def _examples() -> list[tuple[str, str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S):
            current: tuple[str, str, list[str]] | None = None
            for line in block.splitlines():
                if line.startswith("# ") and current is not None:
                    current[2].append(line[2:])
                    continue
                current = None
                command = re.split(r"\s{2,}# ", line, maxsplit=1)[0].strip()
                if RUNNABLE.match(command):
                    current = (doc.relative_to(ROOT).as_posix(), command, [])
                    found.append(current)
    return found


EXAMPLES = _examples()

# The commands read the repository's policies/, which test_walkthrough.py edits while it runs.
pytestmark = pytest.mark.repo_tree


def test_the_docs_show_runnable_examples() -> None:
    assert len(EXAMPLES) >= 6, EXAMPLES
    assert any("policies/examples.yaml" in command for _, command, _ in EXAMPLES)


@pytest.mark.parametrize(("doc", "command", "expected"), EXAMPLES, ids=[f"{d}: {c[:70]}" for d, c, _ in EXAMPLES])
def test_documented_command_runs(doc: str, command: str, expected: list[str], tmp_path: Path) -> None:
    argv = shlex.split(command)
    argv[0] = VALET_CLI
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**{k: v for k, v in os.environ.items() if k != "VALET_CONFIG"},
                                 "VALET_DATA_DIR": str(tmp_path / "data")})
    output = result.stdout + result.stderr
    if argv[1:3] == ["policy", "explain"]:
        verdict = result.stdout.split(" ", 1)[0]
        assert (verdict, result.returncode) in (("allow", 0), ("deny", 1)), output
    else:
        assert result.returncode == 0, output
    lines = output.splitlines()
    position = 0
    for line in expected:
        pattern = re.compile(".*".join(re.escape(part) for part in line.split("...")) + "$")
        for index in range(position, len(lines)):
            if pattern.match(lines[index]):
                position = index + 1
                break
        else:
            pytest.fail(f"{doc} shows {line!r} for `{command}`, which printed:\n{output}")
    assert not (tmp_path / "data").exists(), "checking and explaining must not create files"
