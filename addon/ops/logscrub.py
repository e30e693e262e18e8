"""No valet key in any log line, whoever logs it: a guard under every logger, Valet's and mitmproxy's.

Valet's own messages never quote request data, but mitmproxy's do: its crash handler logs the
traceback of an internal error, and the exception text can hold the event that failed, with header
or trailer values (a valet key among them). Filters on loggers do not see records of their child
loggers and filters on handlers miss handlers added later, so the guard sits where every record is
made: the log record factory. A record whose message, exception or stack text holds anything shaped
like a valet key (:data:`addon.protocol.keyleak.KEY_SHAPE`, loose on purpose) or any secret value the
egress scrubbers know (in any of their forms) or any OAuth value Valet holds or sends (every grant's tokens
from the moment the grant is read, the refresh token and client secret a token request sends, the tokens it
receives: :func:`remember_values`) gets the text with it replaced; other records are left as they are.

Every record's arguments are also made harmless (review 3, G4): a string argument (or an exception's
text) has its control characters escaped (``\\n`` for a newline, ``\\x1b`` for ESC) and is cut at
``MAX_ARG_CHARS``, so upstream-controlled text (an OAuth server's error, a header value) can neither start
a forged log line, such as an ``audit checkpoint:`` line operators ship and trust, nor flood the log. The
template itself is Valet's (or mitmproxy's) and may span lines; its other control characters are escaped
too. A configuration error (the operator's own files, one problem per line) keeps its lines.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable
from typing import Any

from addon.protocol.keyleak import KEY_SHAPE

MARK = "[REDACTED:valet_key]"
_installed: list[Any] = []
# The egress scrubbers in force, by upstream origin (set by hooks/state.py whenever it builds one): together
# they know every secret value that could reach an upstream, so an injected secret quoted in a crash log
# (a request head in an exception text) is replaced too. Only read here, from any thread: the scrubbers
# are thread-safe (a Hyperscan scratch per thread).
_scrubbers: dict[Any, Any] = {}


# OAuth values by value -> their name, newest last, bounded: known from the moment Valet reads or sends them.
_literals: dict[str, str] = {}
MAX_LITERALS = 4096
MIN_LITERAL_CHARS = 8  # shorter values would redact ordinary words; OAuth tokens are far longer
MAX_ARG_CHARS = 2048
_ARG_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TEMPLATE_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # keeps \t and \n
_MULTILINE_TYPES = frozenset({"ConfigError"})  # the operator's own configuration problems, one per line


def remember(origin: Any, scrubber: Any) -> None:
    """The scrubber now in force under ``origin`` (a name; replacing the previous one under it)."""
    _scrubbers[origin] = scrubber


def remember_values(values: Iterable[tuple[str, str]]) -> None:
    """Values (name, value) no log line may show from now on: OAuth tokens and client secrets.

    Called for every grant read and every token request, so it must be cheap when nothing is new: one
    dict lookup per value."""
    for name, value in values:
        if not value or len(value) < MIN_LITERAL_CHARS or value in _literals:
            continue
        _literals[value] = name
        if len(_literals) > MAX_LITERALS:
            del _literals[next(iter(_literals))]


def _has_secret(text: str) -> bool:
    return (bool(KEY_SHAPE.search(text)) or any(value in text for value in list(_literals))
            or any(s.text(text) is not text for s in list(_scrubbers.values())))


def scrub_text(text: str) -> str:
    text = KEY_SHAPE.sub(MARK, text)
    for value, name in list(_literals.items()):
        if value in text:
            text = text.replace(value, f"[REDACTED:{name}]")
    for scrubber in list(_scrubbers.values()):
        text = scrubber.text(text)
    return text


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(code) or (
        f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def harmless(value: Any) -> Any:
    """An argument as it may enter a log line: text escaped and bounded; numbers and other objects as they are."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "backslashreplace")
    elif isinstance(value, BaseException) and type(value).__name__ not in _MULTILINE_TYPES:
        value = str(value)
    if not isinstance(value, str):
        return value
    if len(value) > MAX_ARG_CHARS:
        value = f"{value[:MAX_ARG_CHARS]}…({len(value)} chars)"
    return _ARG_CONTROLS.sub(_escape, value)


def _defuse(record: logging.LogRecord) -> None:
    args = record.args
    if isinstance(args, tuple) and args:
        record.args = tuple(harmless(a) for a in args)
    elif isinstance(args, dict) and args:
        record.args = {k: harmless(v) for k, v in args.items()}
    msg = record.msg
    if not isinstance(msg, str) and not (isinstance(msg, BaseException)
                                         and type(msg).__name__ in _MULTILINE_TYPES):
        msg = harmless(msg) if isinstance(msg, (bytes, bytearray, BaseException)) else msg
    if isinstance(msg, str) and _TEMPLATE_CONTROLS.search(msg):
        msg = _TEMPLATE_CONTROLS.sub(_escape, msg)
    record.msg = msg


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Escape and bound the record's arguments; replace key-shaped text and known secret values in its
    message (with its arguments), exception and stack text."""
    try:
        _defuse(record)
    except Exception:  # noqa: BLE001 - an object whose str() fails: keep the template only
        record.msg, record.args = str(record.msg), None
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


__all__ = ["MARK", "harmless", "install", "remember", "remember_values", "scrub_record", "scrub_text"]
