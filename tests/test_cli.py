"""The `valet` command behaves the same way everywhere (docs/cli.md): options, exit codes, no surprises.

Exit codes: 0 ok/allow, 1 deny or an operation that did not happen, 2 usage or configuration error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import httpx
import pytest

from addon.cli.main import main as valet_main

from .support import MCP_HEADERS, PYTHON, ROOT, VALET_CLI, Valet, free_port, jsonrpc, write_config

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def cli(*args: str, data_dir: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("VALET_DATA_DIR", None)
    env.pop("VALET_CONFIG", None)
    if data_dir is not None:
        env["VALET_DATA_DIR"] = str(data_dir)
    return subprocess.run([VALET_CLI, *args], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True,
                          timeout=60)


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
    return found


def test_every_command_takes_data_dir_and_every_option_has_help() -> None:
    for name, command in _commands(valet_main):
        if isinstance(command, click.Group):
            continue
        options = {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}
        assert "--data-dir" in options, f"valet {name} does not take --data-dir"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"valet {name} {param.opts[0]} has no help text"


def test_check_commands_accept_data_dir_and_create_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for args in (["policy", "check", "--data-dir", str(data)], ["config", "check", "--data-dir", str(data)],
                 ["policy", "explain", "--data-dir", str(data), "--user", "a", "--server", "demo", "--tool", "echo"],
                 ["vault", "status"], ["key", "list"], ["secret", "list"], ["audit", "query", "SELECT 1"]):
        result = cli(*args, data_dir=data)
        assert result.returncode in (0, 1), (args, result.stderr)
        assert not data.exists(), f"valet {' '.join(args)} created {data}"
    assert "master key: none yet" in cli("vault", "status", data_dir=data).stdout


def test_exit_code_2_for_usage_and_configuration_errors(tmp_path: Path) -> None:
    unknown = cli("policy", "explain", "--user", "a", "--server", "nope", "--tool", "x")
    assert unknown.returncode == 2 and "no server named 'nope'" in unknown.stderr and "demo" in unknown.stderr
    assert cli("policy", "explain", "--user", "a", "--server", "demo", "--tool", "die_x").returncode == 1
    assert cli("policy", "explain", "--user", "a", "--server", "demo", "--tool", "x", "--args", "[").returncode == 2
    assert cli("key", "list", "--no-such-option").returncode == 2
    config = write_config(tmp_path / "valet.yaml", {"demo": "http://127.0.0.1:1/mcp"},
                          policy="rules:\n  - id: r\n    effect: allow\n    servers: [dmeo]\n")
    for args in (["config", "check", str(config)], ["policy", "check", "--config", str(config)]):
        failed = cli(*args)
        assert failed.returncode == 2, (args, failed.stderr)
        # config check loads the policy files too (as `valet run` does), and the error names the line
        assert f"{tmp_path / 'policy.yaml'}:4: rules[0] (r): no server named 'dmeo'" in failed.stderr


def test_run_refuses_what_config_check_refuses(tmp_path: Path) -> None:
    config = write_config(tmp_path / "valet.yaml", {"demo": "http://127.0.0.1:1/mcp"},
                          policy="servers:\n  nope: {default: deny}\n")
    check = cli("config", "check", str(config))
    run = subprocess.run([PYTHON, str(ROOT / "run_proxy.py"), "--config", str(config), "--data-dir",
                          str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=60)
    assert check.returncode == run.returncode == 2
    assert f"{tmp_path / 'policy.yaml'}:2: servers.nope" in check.stderr and "servers.nope" in run.stderr


def test_secret_set_refuses_a_server_the_config_lacks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    typo = cli("secret", "set", "DEMO_TOKEN", "--server", "dmeo", data_dir=data, stdin="fake-value-123\n")
    assert typo.returncode == 2 and "no server named 'dmeo'" in typo.stderr and "--force" in typo.stderr
    assert not data.exists()
    forced = cli("secret", "set", "DEMO_TOKEN", "--server", "dmeo", "--force", data_dir=data, stdin="fake-value-123\n")
    assert forced.returncode == 0, forced.stderr
    rows = [json.loads(line) for line in cli("secret", "list", "--json", data_dir=data).stdout.splitlines()]
    assert [r["server"] for r in rows] == ["dmeo"]
    assert TIMESTAMP.match(rows[0]["created"]) and TIMESTAMP.match(rows[0]["updated"])


def test_key_revoke_takes_the_key_itself(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = cli("key", "create", "--user", "alice", "--agent", "a", data_dir=data).stdout.strip()
    key_id = key.split("_")[1]
    revoked = cli("key", "revoke", key, data_dir=data)
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"revoked {key_id}" and key not in revoked.stdout
    again = cli("key", "revoke", key_id, data_dir=data)
    assert again.returncode == 1 and "no active key" in again.stderr
    (row,) = [json.loads(line) for line in cli("key", "list", "--json", data_dir=data).stdout.splitlines()]
    assert TIMESTAMP.match(row["created"]) and TIMESTAMP.match(row["revoked"])
    missing = tmp_path / "none"
    assert cli("key", "revoke", key_id, data_dir=missing).returncode == 1 and not missing.exists()


@pytest.mark.e2e
def test_last_used_counts_only_authenticated_uses(valet: Valet) -> None:
    key, key_id = valet.new_key("alice", "last-used")
    initialize = jsonrpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                        "clientInfo": {"name": "t", "version": "1"}})
    assert httpx.post(f"{valet.base}/notes", json=initialize,
                      headers={**MCP_HEADERS, "authorization": f"Bearer {key}"}, timeout=15).status_code == 200
    valet.rows("key_id = ? AND decision = 'allow'", (key_id,))
    valet.cli("key", "revoke", key)
    refused = httpx.post(f"{valet.base}/notes", json=initialize,
                         headers={**MCP_HEADERS, "authorization": f"Bearer {key}"}, timeout=15)
    assert refused.status_code == 401
    (allowed,) = valet.rows("key_id = ? AND decision = 'allow'", (key_id,))
    valet.rows("key_id = ? AND reason = 'revoked_key'", (key_id,))
    rows = [json.loads(line) for line in valet.cli("key", "list", "--json").stdout.splitlines()]
    (mine,) = [r for r in rows if r["id"] == key_id]
    assert mine["last_used"] == allowed["ts"] and TIMESTAMP.match(mine["last_used"])


@pytest.mark.e2e
def test_address_in_use_is_reported_in_valets_words(valet: Valet, tmp_path: Path) -> None:
    run = subprocess.run([PYTHON, str(ROOT / "run_proxy.py"), "--config", str(valet.config), "--data-dir",
                          str(tmp_path / "data"), "--listen", f"127.0.0.1:{valet.port}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run
    assert f"127.0.0.1:{valet.port} is already in use" in run.stderr and "--listen" in run.stderr
    assert "--mode" not in run.stderr and "Traceback" not in run.stderr


@pytest.mark.e2e
def test_ready_file_is_written_when_listening_and_removed_on_exit(tmp_path: Path) -> None:
    config = write_config(tmp_path / "valet.yaml", {"demo": "http://127.0.0.1:1/mcp"})
    ready, port = tmp_path / "ready", free_port()
    ready.write_text("stale")
    process = subprocess.Popen([PYTHON, str(ROOT / "run_proxy.py"), "--config", str(config), "--data-dir",
                                str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}", "--ready-file", str(ready)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()  # printed just before the ready file is written
        assert "listening on" in banner
        import time
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text() != "stale") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.read_text() == f"http://127.0.0.1:{port}\n"
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 404  # really listening
    finally:
        process.terminate()
        assert process.wait(30) == 0
    assert not ready.exists()


def test_makefile_refuses_a_python_that_is_not_3_13(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    wrong = subprocess.run([make, "-C", str(ROOT), "venv", "PYTHON=/no/such/python"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and "PYTHON=/no/such/python" in wrong.stderr and "3.13" in wrong.stderr
    # a .venv made by another Python is rebuilt, not used (dry run in a copy: nothing is installed)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / ".venv/bin").mkdir(parents=True)
    other = shutil.which("python3.11") or shutil.which("python3.12") or "/bin/false"
    (tmp_path / ".venv/bin/python").symlink_to(other)
    (tmp_path / ".venv/.installed").touch()
    dry = subprocess.run([make, "-C", str(tmp_path), "-n", "venv", f"PYTHON={sys.executable}"],
                         capture_output=True, text=True, timeout=60)
    assert "rebuilding" in dry.stdout and "-m venv" in dry.stdout, dry
