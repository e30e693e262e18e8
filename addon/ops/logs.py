"""``--log-format json``: one JSON object per line, stable field names, for log shippers.

Fields: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``msg`` (the formatted
message), ``exc_type`` when an exception is attached (its type only: exception texts can quote
input), and any structured fields a call passes with ``extra={"valet": {...}}``. Valet's messages
never hold secret values (they name secrets, never print them), so the formatter adds nothing
that the text format would not show; it leaves tracebacks out for the same reason.
"""

from __future__ import annotations

import json
import logging
import time

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        fields = getattr(record, "valet", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(str(key), value)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(fmt: str) -> None:
    """Install the root handler in the chosen format (``text`` keeps Valet's usual lines)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("valet").setLevel(logging.INFO)


__all__ = ["JsonFormatter", "configure"]
