"""``valet audit ...``: read, export and verify the audit log (plain SQLite: ``sqlite3 DATA_DIR/audit.db``).

Every command opens the log read-only: the proxy's writer is the only one that changes it.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from addon.audit import log as audit

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str) -> float:
    """``15m``, ``2h``, ``7d`` (ago) or an ISO 8601 date/time (UTC unless it says otherwise) -> unix time."""
    text = value.strip()
    match = _DURATION.match(text)
    if match:
        return time.time() - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a duration such as 15m, 2h, 7d or an ISO 8601 "
                                 "date/time such as 2026-11-21T09:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# A cell a spreadsheet reads as a formula: OWASP's CSV-injection list (= + - @ TAB CR), their full-width
# forms (read as formulas by some spreadsheets), and the same after leading blanks.
FORMULA_START = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that would start a formula gets a leading ``'`` (OWASP's advice for CSV exports): agents
    choose methods, session ids and paths, and an export often ends up in a spreadsheet. Numbers stay
    numbers (an error code is -32600), and JSON output is not touched."""
    if isinstance(value, str) and value and (value[0] in FORMULA_START or value.lstrip(" \n")[:1] in FORMULA_START):
        return "'" + value
    return value


def register(main: click.Group, data_dir_option: Any, print_rows: Any, tail_line: Any) -> None:
    """Add the ``audit`` group to the ``valet`` command (the helpers are shared with the other groups)."""

    @main.group("audit")
    def audit_group() -> None:
        """Read, export and verify the audit log (also plain SQLite: sqlite3 DATA_DIR/audit.db)."""

    @audit_group.command("query")
    @click.argument("sql")
    @data_dir_option
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line (as --format jsonl).")
    @click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "json", "csv", "tsv"]), default="table",
                  show_default=True, help="Output format.")
    def audit_query(sql: str, data_dir: Path, as_json: bool, fmt: str) -> None:
        """Run one read-only SQL statement against the audit log."""
        try:
            conn = audit.open_readonly(data_dir / "audit.db")
            cursor = conn.execute(sql)
            columns = [d[0] for d in cursor.description or ()]
            rows = [dict(zip(columns, row, strict=True)) for row in cursor]
        except (sqlite3.Error, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
        fmt = "jsonl" if as_json else fmt
        if fmt in ("table", "jsonl"):
            print_rows(rows, fmt == "jsonl", columns)
        elif fmt == "json":
            click.echo(json.dumps(rows, ensure_ascii=True, indent=2))
        else:
            writer = csv.writer(sys.stdout, dialect="excel" if fmt == "csv" else "excel-tab")
            writer.writerow(columns)
            writer.writerows([spreadsheet_safe(row[c]) for c in columns] for row in rows)

    @audit_group.command("tail")
    @data_dir_option
    @click.option("-n", "--lines", default=20, show_default=True, help="How many recent rows to show first.")
    @click.option("--follow/--no-follow", default=True, show_default=True, help="Keep printing new rows.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def audit_tail(data_dir: Path, lines: int, follow: bool, as_json: bool) -> None:
        """Show the latest exchanges, then follow new ones (Ctrl-C to stop)."""
        path = data_dir / "audit.db"
        while not path.exists():
            if not follow:
                raise click.ClickException(f"no audit log at {path}")
            time.sleep(0.5)
        conn = audit.open_readonly(path)
        (max_id,) = conn.execute("SELECT coalesce(max(id), 0) FROM exchanges").fetchone()
        last = max(0, max_id - lines)
        try:
            while True:
                for row in audit.rows_after(conn, last):
                    last = row["id"]
                    click.echo(json.dumps(dict(row), ensure_ascii=True) if as_json else tail_line(dict(row)))
                if not follow:
                    return
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    @audit_group.command("export")
    @data_dir_option
    @click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True,
                  help="Output format: one JSON object per line (the only one today).")
    @click.option("--since", default=None, help="Rows from then on: 15m, 2h, 7d or an ISO 8601 date/time.")
    @click.option("--until", default=None, help="Rows before then (same forms as --since).")
    @click.option("--after-id", type=int, default=0, show_default=True,
                  help="Rows with a larger id only (for incremental pulls: pass the last id you saw).")
    @click.option("--include-pending/--settled-only", default=False, show_default=True,
                  help="Rows still written ahead (exchange not over) too; by default only finished ones.")
    def audit_export(data_dir: Path, fmt: str, since: str | None, until: str | None, after_id: int,
                     include_pending: bool) -> None:
        """Stream rows as JSON lines, oldest first, for a SIEM pipeline."""
        where, params = ["id > ?"], [after_id]
        if since:
            where.append("ts_unix >= ?")
            params.append(parse_since(since))
        if until:
            where.append("ts_unix < ?")
            params.append(parse_since(until))
        if not include_pending:
            where.append("coalesce(state, 'done') != 'pending'")
        try:
            conn = audit.open_readonly(data_dir / "audit.db")
            cursor = conn.execute(f"SELECT * FROM exchanges WHERE {' AND '.join(where)} ORDER BY id", params)
            for row in cursor:
                click.echo(json.dumps(dict(row), ensure_ascii=True))
        except (sqlite3.Error, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None

    @audit_group.command("verify")
    @data_dir_option
    @click.option("--checkpoint", "shipped", multiple=True, metavar="LINE",
                  help="A checkpoint line shipped off the machine (the JSON, or the whole 'audit checkpoint:' "
                       "log line), checked like those in audit.checkpoints. Repeatable.")
    def audit_verify(data_dir: Path, shipped: tuple[str, ...]) -> None:
        """Check the MAC chain: broken links, deleted, edited or inserted rows, a truncated tail, a moved start.

        Needs the vault's master key (the key file in the data dir, or VALET_MASTER_KEY). Exit 0 when
        the log is intact, 1 when it is not. A log with rows but no checkpoint at all is not intact.
        """
        from addon.audit.chain import CHECKPOINT_FILE, ChainKeys, verify
        from addon.secrets.vault import VaultError, load_master_keys

        try:
            keys = ChainKeys(load_master_keys(data_dir, create=False))
            conn = audit.open_readonly(data_dir / "audit.db")
            report = verify(conn, keys, data_dir / CHECKPOINT_FILE, shipped=shipped)
        except (VaultError, sqlite3.Error, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
        for note in report.notes:
            click.echo(f"note: {note}")
        checkpoint = report.checkpoint
        where = (f"; last checkpoint {checkpoint['ts']} at record {checkpoint['seq']}" if checkpoint
                 else "; no checkpoint yet")
        click.echo(f"{report.rows} rows, {report.records} chain records, head {report.head[:16]}{where}")
        for problem in report.problems:
            click.echo(f"TAMPERED: {problem}")
        if not report.ok:
            sys.exit(1)
        click.echo("ok: the audit log is intact")

    secret_group = main.commands.get("secret")
    if isinstance(secret_group, click.Group):

        @secret_group.command("usage")
        @click.argument("name")
        @click.option("--since", default="7d", show_default=True,
                      help="From then on: 15m, 2h, 7d or an ISO 8601 date/time.")
        @data_dir_option
        @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
        def secret_usage(name: str, since: str, data_dir: Path, as_json: bool) -> None:
            """Where a secret went: every exchange that carried it, to which host, for which key (never values)."""
            from addon.audit.ledger import USAGE_SQL

            try:
                conn = audit.open_readonly(data_dir / "audit.db")
                cursor = conn.execute(USAGE_SQL, (name, parse_since(since)))
                columns = [d[0] for d in cursor.description or ()]
                rows = [dict(row) for row in cursor]
            except (sqlite3.Error, FileNotFoundError) as exc:
                raise click.ClickException(str(exc)) from None
            print_rows(rows, as_json, columns)


__all__ = ["parse_since", "register"]
