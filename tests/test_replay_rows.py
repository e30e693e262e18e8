"""policy replay on hand-made audit rows: what is judged, what is not, batches, truncated arguments."""

from __future__ import annotations

from pathlib import Path

from addon.cli.replay import recorded_verdict, replay
from addon.snapshot import load_snapshot

POLICY = """
servers:
  notes: {default: deny}
rules:
  - id: echo-ok
    effect: allow
    servers: [notes]
    tools: [echo]
  - id: no-secret-paths
    effect: deny
    tools: [echo]
    arguments:
      text: {regex: ".*forbidden.*"}
"""


def row(i: int, **kw: object) -> dict[str, object]:
    base = {"id": i, "ts": "2026-11-28T10:00:00.000Z", "ts_unix": 1_800_000_000.0 + i, "key_id": "k1",
            "user": "alice", "agent": "a", "server": "notes", "mode": "reverse", "http_method": "POST",
            "http_path": "/notes", "rpc_method": "tools/call", "tool": "echo", "arguments": '{"text":"hi"}',
            "decision": "allow", "rule": "echo-ok", "reason": None}
    base.update(kw)
    return base


def snapshot(tmp: Path) -> object:
    (tmp / "policy.yaml").write_text(POLICY)
    config = tmp / "valet.yaml"
    config.write_text("servers:\n  notes:\n    url: http://127.0.0.1:9/mcp\npolicy_files: [policy.yaml]\n")
    return load_snapshot(config)


def test_recorded_verdicts() -> None:
    assert recorded_verdict(row(1)) == "allow"
    assert recorded_verdict(row(1, decision="deny", reason="denied")) == "deny"
    assert recorded_verdict(row(1, decision="deny", reason="rate_limited")) == "allow"  # the policy allowed it
    assert recorded_verdict(row(1, decision="deny", reason="parse_error")) is None  # never judged
    assert recorded_verdict(row(1, decision="error", reason="upstream_status")) == "allow"


def test_replay_of_hand_made_rows(tmp_path: Path) -> None:
    rows = [
        row(1),  # unchanged
        row(2, arguments='{"text":"this is forbidden"}'),  # allow -> deny by the argument rule
        row(3, tool="read_file", arguments='{"path":"/x"}', decision="deny", reason="denied", rule="default"),
        row(4, user=None, key_id=None, decision="deny", reason="unknown_key"),  # not judged
        row(5, rpc_method="batch", tool=None,
            arguments='[{"method":"tools/call","id":1,"tool":"echo","arguments":{"text":"forbidden"}}]'),
        row(6, rpc_method="batch", tool=None, arguments='[{"method":"tools/call"' + "x" * 10 + "…(truncated)"),
        row(7, rpc_method=None, tool=None, arguments=None, http_method="GET"),  # the session's stream
        row(8, arguments='{"text":"[REDACTED:API_KEY]"}'),
    ]
    report = replay(rows, snapshot(tmp_path)).as_dict()
    assert report["replayed"] == 6
    assert report["not_replayed"] == {"batch whose messages were not recorded whole": 1}
    assert report["not_judged_by_policy"] == {"unknown_key": 1}
    assert report["allow_to_deny"]["count"] == 2 and report["allow_to_deny"]["by_rule"] == {"no-secret-paths": 2}
    assert report["deny_to_allow"]["count"] == 0
    assert report["inexact"] == {"arguments truncated in the audit row": 1, "arguments hold a redacted secret": 1}
