"""No valet key in any log line, whoever logs it: a guard under every logger, Valet's and mitmproxy's.

Valet's own messages never quote request data, but mitmproxy's do: its crash handler logs the
traceback of an internal error, and the exception text can hold the event that failed, with header
or trailer values (a valet key among them). Filters on loggers do not see records of their child
loggers and filters on handlers miss handlers added later, so the guard sits where every record is
made: the log record factory. A record whose message, exception or stack text holds anything shaped
like a valet key (:data:`addon.protocol.keyleak.KEY_SHAPE`, loose on purpose) or any secret value the
egress scrubbers know (in any of their forms) gets the text with it replaced; other records are left as
they are.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from addon.protocol.keyleak import KEY_SHAPE

MARK = "[REDACTED:valet_key]"
_installed: list[Any] = []
# The egress scrubbers in force, by upstream origin (set by hooks/state.py whenever it builds one): together
# they know every secret value that could reach an upstream, so an injected secret quoted in a crash log
# (a request head in an exception text) is replaced too. Only read here, from any thread: the scrubbers
# are thread-safe (a Hyperscan scratch per thread).
_scrubbers: dict[Any, Any] = {}


def remember(origin: Any, scrubber: Any) -> None:
    """The scrubber now in force for ``origin`` (replacing the previous one of that origin)."""
    _scrubbers[origin] = scrubber


def _has_secret(text: str) -> bool:
    return bool(KEY_SHAPE.search(text)) or any(s.text(text) is not text for s in list(_scrubbers.values()))


def scrub_text(text: str) -> str:
    text = KEY_SHAPE.sub(MARK, text)
    for scrubber in list(_scrubbers.values()):
        text = scrubber.text(text)
    return text


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Replace key-shaped text in the record's message (with its arguments), exception and stack text."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: keep the template only, not the arguments
        message, record.args = str(record.msg), None
    if _has_secret(message):
        record.msg, record.args = scrub_text(message), None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if _has_secret(text):
            record.exc_text = scrub_text(text)  # formatters use exc_text when it is set
    if record.exc_text and _has_secret(record.exc_text):
        record.exc_text = scrub_text(record.exc_text)
    if record.stack_info and _has_secret(record.stack_info):
        record.stack_info = scrub_text(record.stack_info)
    return record


def install() -> None:
    """Wrap the process's log record factory once (idempotent); every record made afterwards is scrubbed."""
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return scrub_record(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _installed.append(factory)


__all__ = ["MARK", "install", "remember", "scrub_record", "scrub_text"]
