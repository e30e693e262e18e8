"""The vault and the data dir under real processes: concurrent rotations, values that would inject headers or
escape the scrubber, and file modes under the usual umask 022."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from addon.secrets import vault as v

from .support import ROOT, VALET_CLI, Upstream, post, jsonrpc, start_valet


def cli(data_dir: Path, *args: str, stdin: str | None = None, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: val for k, val in os.environ.items() if k != v.ENV_VAR}
    if args[:2] == ("secret", "set"):  # these tests' servers are not in a config: store anyway
        args = (*args, "--force")
    return subprocess.run([VALET_CLI, *args, "--data-dir", str(data_dir)], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(v.ENV_VAR, raising=False)
    v._ENV_CACHE.clear()


def test_concurrent_rotations_leave_every_secret_readable(tmp_path: Path) -> None:
    """Five `valet vault rotate --prune` at once, three times over: without the vault lock, rows ended up under a
    version the key file no longer held (every secret unrecoverable)."""
    data = tmp_path / "data"
    values = {f"TOKEN_{i}": f"fake-secret-value-{i:04d}" for i in range(6)}
    for name, value in values.items():
        assert cli(data, "secret", "set", name, "--server", "gh", stdin=value).returncode == 0
    for _ in range(3):
        runs = [subprocess.Popen([VALET_CLI, "vault", "rotate", "--prune", "--data-dir", str(data)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
        results = [(p.wait(60), p.stderr.read() if p.stderr else "") for p in runs]
        assert all(code == 0 for code, _ in results), results
    cache = v.SecretCache(data)
    cache.reload()
    assert {name: cache.lookup("gh", "", name) for name in values} == values
    keys = v.read_key_file(data / v.KEY_FILE)
    assert keys.versions == [16], "1 + 15 rotations, each pruning the versions before it"
    assert {row.key_version for row in v.read_rows(data / v.VAULT_FILE)} == {16}
    assert "the vault opens" in cli(data, "vault", "status").stdout


@pytest.mark.parametrize("value", ["fake-token-1\r\nX-Injected: yes", "fake-token-2\n", "fake\x00token-3",
                                   "fake\ttoken-4", "fake-token-5\x7f", "fake\x1b[31mtoken-6", "fake123"])
def test_values_that_could_inject_headers_or_escape_the_scrubber_are_refused(tmp_path: Path, value: str) -> None:
    data = tmp_path / "data"
    done = cli(data, "secret", "set", "TOKEN", "--server", "gh", stdin=value + "\n")
    assert done.returncode == 1
    assert ("control characters" in done.stderr) or ("at least 8 characters" in done.stderr), done.stderr
    assert "fake" not in done.stdout + done.stderr, "the message never repeats the value"
    assert v.read_rows(data / v.VAULT_FILE) == []
    with pytest.raises(v.VaultError):
        v.Vault(data, v.load_master_keys(data)).put("gh", None, "TOKEN", value)


def test_a_value_of_eight_visible_characters_is_accepted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli(data, "secret", "set", "TOKEN", "--server", "gh", stdin="fake1234\n").returncode == 0


def test_the_data_dir_is_private_under_umask_022(tmp_path: Path, upstream: Upstream) -> None:
    """The CLI and the proxy create everything owner-only, and the proxy tightens what an older Valet left open."""
    data = tmp_path / "data"
    assert cli(data, "key", "create", "--user", "alice", "--agent", "a", umask=0o022).returncode == 0
    assert cli(data, "secret", "set", "TOKEN", "--server", "notes", stdin="fake-secret-0000", umask=0o022).returncode == 0
    assert mode(data) == 0o700
    for name in ("keys.db", "vault.db", "master.key", "vault.lock"):
        assert mode(data / name) == 0o600, name
    # what an older Valet (or a copy with cp -r under umask 022) leaves behind
    data.chmod(0o755)
    (data / "keys.db").chmod(0o644)
    (data / "vault.db").chmod(0o644)
    (data / "stray.db").write_bytes(b"")
    (data / "stray.db").chmod(0o664)

    key = cli(data, "key", "create", "--user", "alice", "--agent", "b", umask=0o022).stdout.strip()
    with umask(0o022):  # the proxy inherits the usual umask
        proxy = start_valet(tmp_path, {"notes": upstream.url})
    try:
        assert proxy.data_dir == data
        init = jsonrpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "raw", "version": "0"}})
        assert post(proxy.base + "/notes", init, key).status_code == 200
        proxy.rows("1=1")
        assert mode(data) == 0o700
        for path in [data / "mitmproxy", *data.iterdir(), *(data / "mitmproxy").iterdir()]:
            assert mode(path) & 0o077 == 0, f"{path.name} is {mode(path):o}"
        assert {"audit.db", "keys.db", "vault.db", "master.key", "stray.db"} <= {p.name for p in data.iterdir()}
    finally:
        assert proxy.stop() == 0
