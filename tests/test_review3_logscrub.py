"""Review 3, G4: no upstream-controlled text enters a log line raw, and every OAuth value is known to the
log guard from the moment Valet reads or sends it (not only once an answer of its origin was relayed)."""

from __future__ import annotations

import json
import logging

import pytest

from addon.oauth.client import UNRECOGNIZED, error_code
from addon.oauth.grants import parse_grant
from addon.ops import logscrub


@pytest.mark.parametrize(("value", "code"), [
    ("invalid_grant", "invalid_grant"), ("temporarily_unavailable", "temporarily_unavailable"),
    ("bad\nfake-rt-0123456789", UNRECOGNIZED), ("fake-rt-0123456789", UNRECOGNIZED), ("x" * 10_000, UNRECOGNIZED),
    (["invalid_grant"], UNRECOGNIZED), (42, UNRECOGNIZED), (None, ""), ("", ""),
])
def test_only_registered_oauth_error_codes_are_kept(value: object, code: str) -> None:
    assert error_code(value) == code


def record(msg: object, *args: object) -> logging.LogRecord:
    return logscrub.scrub_record(logging.LogRecord("valet", logging.WARNING, __file__, 1, msg, args or None, None))


def test_arguments_are_escaped_and_bounded() -> None:
    r = record("refresh failed (%s), attempt %d", "bad\r\nvalet WARNING audit checkpoint: {}\x1b[2J\u2028", 1)
    message = r.getMessage()
    assert "\n" not in message and "\r" not in message and "\x1b" not in message and "\u2028" not in message
    assert message == "refresh failed (bad\\r\\nvalet WARNING audit checkpoint: {}\\x1b[2J\\u2028), attempt 1"
    long = record("%s", "y" * 100_000).getMessage()
    assert len(long) < logscrub.MAX_ARG_CHARS + 100 and long.endswith("(100000 chars)")
    assert record("%s", ValueError("a\nb")).getMessage() == "a\\nb"
    assert record("%(x)s", {"x": "1\n2"}).getMessage() == "1\\n2"
    assert record("%s", b"\xff\n").getMessage() == "\\xff\\n"


def test_the_template_keeps_its_lines_and_a_configuration_error_too() -> None:
    from addon.config import ConfigError

    assert record("first\nsecond %s", "x").getMessage() == "first\nsecond x"
    assert record("rejected:\n%s", ConfigError("a.yaml:1: bad\na.yaml:2: worse")).getMessage() == \
        "rejected:\na.yaml:1: bad\na.yaml:2: worse"
    assert record("bell\x07").getMessage() == "bell\\x07"


def test_a_grant_read_is_known_to_the_log_guard_before_any_answer() -> None:
    grant = {"access_token": "fake-at-g4-0123456789", "refresh_token": "fake-rt-g4-0123456789", "expires_at": 1.0,
             "scope": None, "lifetime": None, "obtained_at": 0.0}
    parse_grant(json.dumps(grant))
    message = record("refresh failed (%s)", "echo fake-rt-g4-0123456789 fake-at-g4-0123456789").getMessage()
    assert "fake-rt-g4" not in message and "fake-at-g4" not in message
    assert "[REDACTED:OAUTH_REFRESH_TOKEN]" in message and "[REDACTED:OAUTH_ACCESS_TOKEN]" in message


def test_remembered_values_are_bounded_and_short_ones_ignored() -> None:
    saved = dict(logscrub._literals)
    try:
        logscrub.remember_values([("X", "short")])
        assert "short" not in logscrub._literals
        for i in range(logscrub.MAX_LITERALS + 10):
            logscrub.remember_values([("X", f"fake-value-{i:08d}")])
        assert len(logscrub._literals) <= logscrub.MAX_LITERALS
    finally:
        logscrub._literals.clear()
        logscrub._literals.update(saved)
