"""``valet audit browse``: the audit log in datasette, read-only, with the questions auditors ask.

Datasette (the optional ``browse`` extra: ``pip install 'mcp-valet[browse]'``) opens
``audit.db`` with ``mode=ro`` connections and no write API, so browsing can never
change the log the proxy's writer owns (and the MAC chain ``valet audit verify``
checks). The canned queries and the facets live in a metadata file written for
this run; nothing is installed in the data dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

FACETS = ["user", "server", "tool", "decision"]

# Each canned query names its parameters; datasette shows a form for them.
QUERIES: dict[str, dict[str, Any]] = {
    "denials_by_reason": {
        "title": "Denials by reason",
        "description": "Refused exchanges, by reason and server, most frequent first.",
        "sql": "SELECT reason, server, count(*) AS denials, min(ts) AS first, max(ts) AS last\n"
               "FROM exchanges WHERE decision = 'deny'\nGROUP BY reason, server ORDER BY denials DESC",
    },
    "key_history": {
        "title": "A key's history",
        "description": "Every exchange of one valet key (its id, as in valet key list), newest first.",
        "sql": "SELECT id, ts, user, agent, server, rpc_method, tool, decision, reason, rule, http_status\n"
               "FROM exchanges WHERE key_id = :key_id ORDER BY id DESC LIMIT 1000",
    },
    "secret_usage": {
        "title": "Secret usage",
        "description": "Where secrets went: every exchange that carried one, to which host, for which key "
                       "(names and fingerprints, never values). Leave name empty for all.",
        "sql": "SELECT e.ts, u.name, u.fingerprint, u.scope, u.server, u.host, e.user, e.agent, e.key_id,\n"
               "       e.tool, e.decision, e.http_status, e.id AS exchange_id\n"
               "FROM secret_uses u JOIN exchanges e ON e.id = u.exchange_id\n"
               "WHERE (:name = '' OR u.name = :name) ORDER BY u.ts_unix DESC LIMIT 1000",
    },
    "agent_day": {
        "title": "An agent's day",
        "description": "Everything one agent (the agent name of its keys) did on one UTC day (YYYY-MM-DD).",
        "sql": "SELECT id, ts, user, key_id, server, rpc_method, tool, arguments, decision, reason, http_status\n"
               "FROM exchanges WHERE agent = :agent AND ts_unix >= unixepoch(:day) AND ts_unix < unixepoch(:day, '+1 day')\n"
               "ORDER BY id",
    },
}


def metadata(db_name: str = "audit") -> dict[str, Any]:
    return {
        "title": "Valet audit log",
        "description": "Read-only. Every exchange Valet saw, allowed or not (docs/audit.md).",
        "databases": {
            db_name: {
                "queries": QUERIES,
                "tables": {"exchanges": {"facets": FACETS, "sort_desc": "id"}},
            }
        },
    }


def datasette_argv(db: Path, meta: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "datasette", "serve", str(db), "--metadata", str(meta), "--host", host,
            "--port", str(port), "--setting", "default_facet_size", "20",
            "--setting", "sql_time_limit_ms", "5000", "--setting", "allow_download", "off"]


def register(audit_group: click.Group, data_dir_option: Any) -> None:
    """Add ``browse`` to the ``valet audit`` group."""

    @audit_group.command("browse")
    @data_dir_option
    @click.option("--host", default="127.0.0.1", show_default=True, help="Where datasette listens (loopback).")
    @click.option("--port", default=8001, show_default=True, type=int, help="Port for datasette on the host.")
    def audit_browse(data_dir: Path, host: str, port: int) -> None:
        """Open the audit log read-only in datasette, with canned queries (denials by reason, a key's
        history, secret usage, an agent's day) and facets on user, server, tool and decision."""
        try:
            import datasette  # noqa: F401
        except ImportError:
            raise click.ClickException("datasette is not installed: pip install 'mcp-valet[browse]'") from None
        db = data_dir / "audit.db"
        if not db.is_file():
            raise click.ClickException(f"no audit log at {db}")
        with tempfile.TemporaryDirectory(prefix="valet-browse-") as tmp:
            meta = Path(tmp) / "metadata.json"
            meta.write_text(json.dumps(metadata(db.stem)))
            click.echo(f"valet: browsing {db} read-only at http://{host}:{port}/ (Ctrl-C to stop)", err=True)
            process = subprocess.Popen(datasette_argv(db, meta, host, port), env=os.environ.copy())
            # SIGTERM to `valet audit browse` stops datasette too (Python's default would leave it orphaned).
            signal.signal(signal.SIGTERM, lambda _signum, _frame: process.terminate())
            try:
                sys.exit(process.wait())
            except KeyboardInterrupt:
                process.terminate()
                process.wait(10)


__all__ = ["FACETS", "QUERIES", "metadata", "register"]
