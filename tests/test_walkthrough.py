"""The README's walkthrough is executed, so that README and product cannot drift.

``docs/walkthrough.sh`` runs the walkthrough's commands unattended. These tests check
that every command the README's walkthrough shows is in that script (the script may
add what running unattended needs: a trailing ``&``, a ready file, ``--no-follow``),
that the Python client shown is the script's, byte for byte, and then run the script
and find every output line the README shows (``# ...`` under a command) in what it
really printed, in order. Timestamps, ids, fingerprints and durations are compared by
shape; ``...`` in a README line stands for anything.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ROOT

README = ROOT / "README.md"
SCRIPT = ROOT / "docs" / "walkthrough.sh"
PORTS = (8787, 9001)  # the README's own

# Fixed ports, call.py in the repository root and an edit of policies/rules/demo.yaml while it runs: under
# xdist it holds the repo_tree lock (tests/conftest.py), as every test that reads the repository's policies/.
pytestmark = pytest.mark.repo_tree


def _walkthrough_blocks() -> list[tuple[str, list[str]]]:
    text = README.read_text()
    section = text.split("## Five-minute walkthrough", 1)[1].split("\n## ", 1)[0]
    return [(lang, body.splitlines()) for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S)]


def _commands_and_outputs() -> tuple[list[str], list[str]]:
    commands, outputs = [], []
    for lang, lines in _walkthrough_blocks():
        if lang != "sh":
            continue
        for line in lines:
            if line.startswith("# "):
                outputs.append(line[2:])
            elif line.strip():
                commands.append(_without_comment(line))
    return commands, outputs


def _without_comment(line: str) -> str:
    """A command without its trailing explanation (``   # ...`` after two or more spaces)."""
    return re.split(r"\s{2,}# ", line, maxsplit=1)[0].strip()


def _shape(line: str) -> str:
    line = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<ts>", line)
    line = re.sub(r"\b\d+(\.\d+)?ms\b", "<ms>", line)
    line = re.sub(r"\b[0-9a-f]{12}\b", "<hex>", line)
    return " ".join(line.split())


def test_every_readme_command_is_in_the_script() -> None:
    script_lines = [_without_comment(line) for line in SCRIPT.read_text().splitlines()]
    commands, outputs = _commands_and_outputs()
    assert len(commands) >= 15 and len(outputs) >= 15
    missing = [c for c in commands if not any(line.startswith(c) for line in script_lines)]
    assert not missing, f"README walkthrough commands that docs/walkthrough.sh does not run: {missing}"


def test_the_readme_client_is_the_scripts() -> None:
    python = ["\n".join(lines) for lang, lines in _walkthrough_blocks() if lang == "python"]
    assert len(python) == 1
    assert python[0] in SCRIPT.read_text(), "the README's call.py differs from the one docs/walkthrough.sh writes"


def _busy(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def readme_ports() -> Iterator[None]:
    """The README's ports are the machine's, not this checkout's: walkthroughs of all checkouts take turns.

    Without it, two checkouts running the suite at once (or an xdist worker of each) made one walkthrough
    find the ports taken: skipped locally, failed in CI.
    """
    with (Path(tempfile.gettempdir()) / "valet-tests-readme-ports.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.mark.e2e
def test_the_walkthrough_runs_and_prints_what_the_readme_shows(tmp_path: Path, readme_ports: None) -> None:
    busy = [p for p in PORTS if _busy(p)]
    if busy:
        if os.environ.get("CI"):
            pytest.fail(f"ports {busy} are taken; the walkthrough needs them")
        pytest.skip(f"ports {busy} are taken (another `make run`?); CI runs this test")
    policy_before = (ROOT / "policies/rules/demo.yaml").read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "VALET_CONFIG"}  # the README's default config
    env["VALET_DATA_DIR"] = str(tmp_path / "valet-data")  # never the developer's ./.valet
    process = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"the walkthrough did not finish in 300 s:\n{output}")
    assert process.returncode == 0, output
    printed = [_shape(line) for line in output.splitlines()]
    position = 0
    for expected in _commands_and_outputs()[1]:
        pattern = re.compile(".*".join(re.escape(part) for part in _shape(expected).split("...")) + "$")
        for index in range(position, len(printed)):
            if pattern.match(printed[index]):
                position = index + 1
                break
        else:
            pytest.fail(f"the README shows {expected!r}, which the walkthrough did not print (in that order):\n"
                        f"{output}")
    assert not (ROOT / "call.py").exists() and not (ROOT / "policies/rules/demo.yaml.bak").exists()
    assert (ROOT / "policies/rules/demo.yaml").read_bytes() == policy_before, \
        "the walkthrough must restore the policy file it edits"
