"""Review G7: the pre-authentication row budget is global too, not only per address.

One client binding many addresses (all of 127.0.0.0/8 answers on Linux; an IPv6 /48 is 65,536 /64s) got 60
own rows a minute for each: 400 keyless requests from 200 addresses wrote 400 rows. Now loopback is one
peer, and past GLOBAL_ROWS_PER_INTERVAL own rows an interval every keyless refusal is counted under "*".
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

from addon.audit import preauth
from addon.audit.exchange import Exchange

from .support import start_http_api, running_valet


def _refusal(i: int) -> Exchange:
    return Exchange(mode="reverse", http_method="GET", http_path=f"/x{i}", decision="deny", reason="missing_key")


def test_many_peers_share_one_global_budget_and_the_rest_is_counted() -> None:
    aggregator = preauth.Aggregator()
    written: list[dict] = []
    own = 0
    peers = [preauth._peer(f"10.{i // 250}.{i % 250}.1") for i in range(2000)]
    total = 0
    for round_ in range(3):
        for i, peer in enumerate(peers):
            total += 1
            if aggregator.admit(peer, _refusal(i), 401, written.append):
                own += 1
    assert own == preauth.GLOBAL_ROWS_PER_INTERVAL
    aggregator.flush()
    counted = sum(json.loads(row["arguments"])["count"] for row in written)
    assert own + counted == total, "every refusal is a row or counted in a summary"
    star = [json.loads(row["arguments"]) for row in written if json.loads(row["arguments"])["peer"] == "*"]
    assert len(star) == 1 and 0 < len(star[0]["sample_peers"]) <= preauth.SAMPLE_PEERS
    assert len(written) <= preauth.GLOBAL_ROWS_PER_INTERVAL + 1, "summaries are bounded by the peers with own rows"


def test_every_loopback_address_is_one_peer() -> None:
    assert preauth._peer("127.0.0.1") == preauth._peer("127.3.2.1") == preauth._peer("::ffff:127.0.0.9")
    assert preauth._peer("10.0.0.1") != preauth._peer("10.0.0.2")
    assert preauth._peer("2001:db8::1") == preauth._peer("2001:db8::2") != preauth._peer("2001:db8:0:1::1")


def test_binding_many_loopback_addresses_gets_no_more_rows(tmp: Path) -> None:
    api = start_http_api()
    try:
        config = f"servers:\n  api:\n    url: http://127.0.0.1:{api.port}\n    kind: http\n"
        with running_valet(tmp, None, config_text=config) as valet:
            addresses = ["127.0.0.1"] + [f"127.0.{i // 250 + 1}.{i % 250 + 1}" for i in range(100)]
            sent = 0
            for _ in range(2):
                for address in addresses:
                    with socket.socket() as s:
                        s.bind((address, 0))
                        s.connect(("127.0.0.1", valet.port))
                        s.sendall(f"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1:{valet.port}\r\n"
                                  "Connection: close\r\n\r\n".encode())
                        assert s.recv(200).startswith(b"HTTP/1.1 401")
                        sent += 1
        assert valet.process.returncode == 0
        conn = sqlite3.connect(valet.data_dir / "audit.db")
        own = conn.execute("SELECT count(*) FROM exchanges WHERE rpc_method IS NOT 'valet/refusals' "
                           "AND key_id IS NULL").fetchone()[0]
        counted = sum(json.loads(a)["count"] for (a,) in conn.execute(
            "SELECT arguments FROM exchanges WHERE rpc_method = 'valet/refusals'"))
        conn.close()
        assert own == preauth.ROWS_PER_INTERVAL, f"{own} own rows for {sent} refusals from one host"
        assert own + counted == sent
    finally:
        api.process.kill()
        api.process.wait(10)
