"""The columns of ``exchanges`` (shared by the writer and the chain, which must agree on them)."""

from __future__ import annotations

COLUMNS: tuple[str, ...] = (
    "ts",
    "ts_unix",
    "duration_ms",
    "key_id",
    "user",
    "agent",
    "server",
    "mode",
    "http_method",
    "http_path",
    "http_status",
    "rpc_method",
    "rpc_id",
    "tool",
    "arguments",
    "decision",
    "rule",
    "reason",
    "error_code",
    "session_id",
    "bytes_in",
    "bytes_out",
    "injected",
    "overridden",
    "state",
)

# What the end of an exchange may change in its row (the rest is fixed when it is written ahead).
OUTCOME: tuple[str, ...] = (
    "duration_ms",
    "http_status",
    "decision",
    "reason",
    "error_code",
    "session_id",
    "bytes_out",
)

COLUMN_TYPES = {"ts_unix": "REAL", "duration_ms": "REAL", "http_status": "INTEGER", "error_code": "INTEGER",
                "bytes_in": "INTEGER", "bytes_out": "INTEGER"}

__all__ = ["COLUMNS", "COLUMN_TYPES", "OUTCOME"]
