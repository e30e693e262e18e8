"""The secret-usage ledger: which secret (name, fingerprint) went to which host, for which key; never a value."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from .audit_support import recording, upstream_ids  # noqa: F401 - a fixture
from .support import Upstream, jsonrpc, post, start_valet

USER_VALUE = "fake-stripe-alice-0001"
SHARED_VALUE = "fake-stripe-shared-0002"


def test_secret_usage_names_host_fingerprint_and_key(tmp: Path, recording: Upstream) -> None:
    config = (f"servers:\n  pay:\n    url: http://127.0.0.1:{recording.port}/mcp\n"
              "    headers:\n      Authorization: \"Bearer ${secret:STRIPE_KEY}\"\n")
    valet = start_valet(tmp, None, config_text=config)
    try:
        valet.cli("secret", "set", "STRIPE_KEY", "--server", "pay", "--user", "alice", stdin=USER_VALUE)
        valet.cli("secret", "set", "STRIPE_KEY", "--server", "pay", stdin=SHARED_VALUE)
        alice, alice_id = valet.new_key("alice", "billing-bot")
        bob, bob_id = valet.new_key("bob", "other-bot")
        for key, rpc_id in ((alice, 1), (bob, 2)):
            assert post(f"{valet.base}/pay", jsonrpc("tools/call", {"name": "charge", "arguments": {}}, rpc_id),
                        key).is_success
        valet.rows("rpc_method = 'tools/call'", expect=2)
        fingerprints = {(r["scope"], r["user"]): r["fingerprint"] for r in
                        map(json.loads, valet.cli("secret", "list", "--json").stdout.splitlines())}
        usage = [json.loads(line) for line in
                 valet.cli("secret", "usage", "STRIPE_KEY", "--since", "1h", "--json").stdout.splitlines()]
        assert [(u["key_id"], u["user"], u["host"], u["scope"], u["server"]) for u in usage] == [
            (alice_id, "alice", "127.0.0.1", "user", "pay"), (bob_id, "bob", "127.0.0.1", "shared", "pay")]
        assert usage[0]["fingerprint"] == fingerprints[("user", "alice")]
        assert usage[1]["fingerprint"] == fingerprints[("shared", None)]
        assert "charge" not in valet.cli("secret", "usage", "OTHER").stdout
    finally:
        assert valet.stop() == 0
    dump = "\n".join(sqlite3.connect(valet.data_dir / "audit.db").iterdump())
    assert USER_VALUE not in dump and SHARED_VALUE not in dump
    verified = valet.cli("audit", "verify")
    assert "ok: the audit log is intact" in verified.stdout
    # the ledger is chained with its exchange: editing where a secret went is tampering
    with sqlite3.connect(valet.data_dir / "audit.db") as conn:
        conn.execute("UPDATE secret_uses SET host = 'evil.example' WHERE scope = 'shared'")
    tampered = valet.cli("audit", "verify", check=False)
    assert tampered.returncode == 1 and "was edited (its request part" in tampered.stdout
