from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path

import pytest

from addon.secrets import vault as v


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(v.ENV_VAR, raising=False)
    v._ENV_CACHE.clear()


def test_key_file_is_created_private_and_refused_when_exposed(tmp_path: Path) -> None:
    keys = v.load_master_keys(tmp_path)
    path = tmp_path / v.KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600 and keys.versions == [1]
    assert "versions=[1]" in repr(keys) and base64.b64encode(keys._keys[1]).decode() not in repr(keys)
    path.chmod(0o640)
    with pytest.raises(v.VaultError, match="chmod 600"):
        v.load_master_keys(tmp_path)


def test_secrets_are_encrypted_bound_to_their_row_and_resolved_user_first(tmp_path: Path) -> None:
    vault = v.Vault(tmp_path, v.load_master_keys(tmp_path))
    vault.set("gh", "alice", "TOKEN", "fake-alice-000000")
    vault.set("gh", None, "TOKEN", "fake-shared-00000")
    raw = (tmp_path / v.VAULT_FILE).read_bytes()
    assert b"fake-alice" not in raw and b"fake-shared" not in raw
    cache = v.SecretCache(tmp_path)
    cache.reload()
    assert cache.lookup("gh", "alice", "TOKEN") == "fake-alice-000000"
    assert cache.lookup("gh", "bob", "TOKEN") == "fake-shared-00000"
    assert cache.lookup("other", "alice", "TOKEN") is None
    conn = sqlite3.connect(tmp_path / v.VAULT_FILE)
    with conn:  # move alice's ciphertext onto the shared row
        nonce, ct = conn.execute("SELECT nonce, ciphertext FROM secrets WHERE user = 'alice'").fetchone()
        conn.execute("UPDATE secrets SET nonce = ?, ciphertext = ? WHERE user = ''", (nonce, ct))
    conn.close()
    assert cache.stale()
    cache.reload()
    with pytest.raises(v.VaultError, match="tampered with or moved") as info:
        cache.lookup("gh", "bob", "TOKEN")
    assert "fake" not in str(info.value)


def test_nonces_are_fresh_on_every_write(tmp_path: Path) -> None:
    vault = v.Vault(tmp_path, v.load_master_keys(tmp_path))
    first = vault.set("s", "u", "N", "fake-same-value-0")
    second = vault.set("s", "u", "N", "fake-same-value-0")
    assert first.nonce != second.nonce and first.ciphertext != second.ciphertext
    assert first.fingerprint == second.fingerprint and first.created_at == second.created_at


def test_short_values_and_bad_names_are_refused(tmp_path: Path) -> None:
    vault = v.Vault(tmp_path, v.load_master_keys(tmp_path))
    with pytest.raises(v.VaultError, match="at least 8"):
        vault.set("s", None, "N", "short")
    with pytest.raises(v.VaultError, match="names must match"):
        vault.set("s", None, "bad-name", "fake-long-enough")


def test_rotation_reencrypts_everything_and_a_running_cache_follows(tmp_path: Path) -> None:
    vault = v.Vault(tmp_path, v.load_master_keys(tmp_path))
    for i in range(5):
        vault.set("s", f"u{i}", "N", f"fake-value-{i:06d}")
    cache = v.SecretCache(tmp_path)
    cache.reload()
    version, count = v.rotate(tmp_path, prune=True)
    assert (version, count) == (2, 5)
    assert {r.key_version for r in v.read_rows(tmp_path / v.VAULT_FILE)} == {2}
    assert v.load_master_keys(tmp_path).versions == [2]
    assert cache.stale()
    cache.reload()
    assert cache.lookup("s", "u3", "N") == "fake-value-000003"


def test_env_keys_are_taken_out_of_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key1, key2 = os.urandom(32), os.urandom(32)
    monkeypatch.setenv(v.ENV_VAR, f"1:{base64.b64encode(key1).decode()},2:{base64.b64encode(key2).decode()}")
    keys = v.load_master_keys(tmp_path)
    assert v.ENV_VAR not in os.environ, "a child process must not inherit the master key"
    assert keys.current == 2 and keys.source == v.ENV_VAR
    assert not (tmp_path / v.KEY_FILE).exists()
    with pytest.raises(v.VaultError, match="reencrypt"):
        v.rotate(tmp_path)


@pytest.mark.parametrize("value", ["not base64!", "1:" + base64.b64encode(b"short").decode(), "0:AAAA", "x:y"])
def test_bad_env_keys_are_clear_errors(value: str) -> None:
    with pytest.raises(v.VaultError) as info:
        v.MasterKeys(v.parse_env_keys(value), v.ENV_VAR)
    assert value not in str(info.value)


def test_a_wrong_key_is_reported_when_the_vault_opens(tmp_path: Path) -> None:
    vault = v.Vault(tmp_path, v.load_master_keys(tmp_path))
    vault.set("s", None, "N", "fake-value-000000")
    wrong = v.Vault(tmp_path, v.MasterKeys({1: os.urandom(32)}, "test"))
    with pytest.raises(v.VaultError, match="wrong key"):
        wrong.verify_keys()
    missing = v.Vault(tmp_path, v.MasterKeys({7: os.urandom(32)}, "test"))
    with pytest.raises(v.VaultError, match="version 1"):
        missing.verify_keys()
