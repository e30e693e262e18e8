"""--log-format json: every line Valet writes is one JSON object with stable fields, and no secret value."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .ops_support import start_ops_valet, stateless
from .support import Upstream

pytestmark = pytest.mark.e2e

SECRET = "fake-json-log-secret-0001"
POLICY = "rules:\n  - id: allow-all\n    effect: allow\n"


def test_json_logs_parse_line_by_line_without_secrets(upstream: Upstream, tmp_path: Path) -> None:
    config = (f"servers:\n  notes:\n    url: {upstream.url}\n    headers:\n"
              "      X-Api-Key: \"${secret:API_KEY}\"\n")
    proxy = start_ops_valet(tmp_path, config, POLICY, "--log-format", "json")
    try:
        proxy.cli("secret", "set", "API_KEY", "--server", "notes", stdin=SECRET)
        key, _ = proxy.new_key("log-user", "l")
        assert stateless(proxy, key, "tools/call", {"name": "echo", "arguments": {"text": "x"}}).status_code == 200
        policy = tmp_path / "policy.yaml"
        policy.write_text("rules: [oops\n")  # a broken policy: an ERROR line, the last good one stays
        deadline = time.monotonic() + 20
        while "configuration change rejected" not in proxy.log.read_text():
            assert time.monotonic() < deadline, proxy.log.read_text()[-2000:]
            stateless(proxy, key, "tools/list", {})
            time.sleep(0.3)
    finally:
        assert proxy.stop() == 0
    text = proxy.log.read_text()
    assert SECRET not in text and key not in text
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict)
        assert {"ts", "level", "logger", "msg"} <= entry.keys(), line
        entries.append(entry)
    assert any("listening on" in e["msg"] and e["logger"] == "valet" for e in entries)
    rejected = [e for e in entries if "configuration change rejected" in e["msg"]]
    assert rejected and rejected[0]["level"] == "ERROR"
    assert all(e["ts"].endswith("Z") for e in entries)
