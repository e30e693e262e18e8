from __future__ import annotations

import sqlite3
from pathlib import Path

from addon.audit.log import AuditWriter, open_readonly
from addon.identity import KeyRing, KeyStore, key_id_of


def test_keys_are_stored_hashed_verified_and_revoked(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    key, record = store.create("alice", "bot")
    assert key.startswith("vk_") and key_id_of(key) == record.id
    raw = (tmp_path / "keys.db").read_bytes()
    assert key.encode() not in raw and key.split("_", 2)[2].encode() not in raw
    ring = KeyRing(store)
    ring.reload()
    assert ring.verify(key) == record
    assert ring.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert ring.verify(f"vk_{record.id}_" + "x" * 43) is None
    assert ring.verify("") is None and ring.verify("vk_") is None
    assert ring.verify("\udcff") is None and ring.verify(key + "\udcff") is None and ring.verify("é" * 40) is None
    assert not ring.stale()
    assert store.revoke(record.id) and not store.revoke(record.id)
    assert ring.stale(), "a revocation must be visible to the proxy's next stat"
    ring.reload()
    verified = ring.verify(key)
    assert verified is not None and verified.revoked


def test_audit_writer_flushes_on_close_and_is_readable_while_open(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit.db")
    assert writer.healthy
    for i in range(1200):
        writer.submit({"ts": f"t{i}", "mode": "reverse", "http_method": "POST", "http_path": "/x",
                       "decision": "allow", "arguments": '{"a":"\\u0000 \\u001b[31m"}'})
    writer.close()
    assert writer.written == 1200
    assert not writer.healthy, "a closed writer accepts nothing more"
    conn = open_readonly(tmp_path / "audit.db")
    assert conn.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 1200
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    try:
        conn.execute("DELETE FROM exchanges")
    except sqlite3.OperationalError as exc:
        assert "readonly" in str(exc)
    else:
        raise AssertionError("the read-only connection accepted a write")


def test_audit_writer_survives_values_sqlite_cannot_encode(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit.db")
    writer.submit({"ts": "t", "mode": "reverse", "http_method": "GET", "http_path": "/\udcff", "decision": "deny",
                   "session_id": "\udcff\udc00"})
    writer.submit({"ts": "t2", "mode": "reverse", "http_method": "GET", "http_path": "/ok", "decision": "allow"})
    writer.close()
    conn = open_readonly(tmp_path / "audit.db")
    paths = [r[0] for r in conn.execute("SELECT http_path FROM exchanges ORDER BY id")]
    assert paths == ["/\\udcff", "/ok"]
