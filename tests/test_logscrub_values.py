"""The log guard replaces the secret values the egress scrubbers know, not only valet-key shapes: a crash log
that quotes a request head after injection (an exception text with the upstream's Authorization header) must
not write the injected secret."""

from __future__ import annotations

import logging

import pytest

from addon.ops import logscrub
from addon.secrets.scrubber import Scrubber

SECRET = "fake-injected-upstream-token-7788"


@pytest.fixture
def remembered() -> object:
    logscrub.install()
    logscrub.remember(("http", "upstream.test", 80), Scrubber([("API_TOKEN", SECRET)]))
    yield
    logscrub._scrubbers.pop(("http", "upstream.test", 80), None)


def test_a_secret_in_a_message_argument_and_in_an_exception_is_replaced(remembered: object,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("mitmproxy.proxy.server")
    with caplog.at_level(logging.INFO):
        log.info("sending %s", f"authorization: Bearer {SECRET}")
        try:
            raise AssertionError(f"Unexpected event: RequestHeaders(authorization={SECRET})")
        except AssertionError:
            log.exception("mitmproxy has crashed!")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert SECRET not in text
    assert text.count("[REDACTED:API_TOKEN]") >= 2


def test_records_without_a_secret_are_left_as_they_are(remembered: object, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("valet").info("listening on %s", "127.0.0.1:8787")
    assert caplog.records[-1].getMessage() == "listening on 127.0.0.1:8787"
