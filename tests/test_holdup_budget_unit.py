"""The global body budget's accounting (addon/protocol/mitm_limits.py), without a proxy: shares per owner and
kind, release on demand and when the owner goes away, decoded bytes reserved up front, Busy vs too large."""

from __future__ import annotations

import asyncio
import gc
import gzip
from collections.abc import Iterator

import pytest

from addon.protocol import mitm_limits
from addon.secrets import compressed


class Owner:
    """Stands in for a stream or a flow (anything weak-referenceable)."""


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[mitm_limits._Budget]:
    fresh = mitm_limits._Budget()
    monkeypatch.setattr(mitm_limits, "BUDGET", fresh)
    monkeypatch.setattr(mitm_limits, "MAX_BUFFERED_TOTAL", 1000)
    yield fresh


def test_shares_are_per_owner_and_kind(budget: mitm_limits._Budget) -> None:
    stream, flow = Owner(), Owner()
    budget.add(stream, 300, "request")
    budget.add(stream, 200, "response")
    budget.add(flow, 100, "replay")
    assert budget.total == 600 and budget.spent(401) and not budget.spent(400)
    budget.release(id(stream), "request")  # the request body ended: the answer's share stays
    assert budget.total == 300
    budget.release(id(flow))
    assert budget.total == 200


def test_an_owner_that_goes_away_gives_its_shares_back(budget: mitm_limits._Budget) -> None:
    stream = Owner()
    budget.add(stream, 700, "response")
    budget.add(stream, 100, "request")
    del stream
    gc.collect()
    assert budget.total == 0 and not budget._held


def test_hold_refuses_past_the_budget(budget: mitm_limits._Budget) -> None:
    flow = Owner()
    mitm_limits.hold(flow, 900, "replay")
    with pytest.raises(mitm_limits.Busy) as busy:
        mitm_limits.hold(flow, 200, "replay")
    assert busy.value.refusal.cause.reason == "busy" and busy.value.refusal.http_status == 503
    assert budget.total == 900


def test_decoded_bytes_are_reserved_then_counted(budget: mitm_limits._Budget) -> None:
    flow, other = Owner(), Owner()
    body = gzip.compress(b"a" * 600)

    decoded = asyncio.run(mitm_limits.decode_within(flow, lambda limit: compressed.decode("gzip", body, limit), 800))
    assert decoded == b"a" * 600 and budget.total == 600  # the reservation became the real size

    budget.release(id(flow))
    budget.add(other, 700, "response")  # 300 left: less than the decoded size
    with pytest.raises(mitm_limits.Busy):
        asyncio.run(mitm_limits.decode_within(flow, lambda limit: compressed.decode("gzip", body, limit), 800))
    assert budget.total == 700  # nothing of the failed decode is held


def test_past_the_size_cap_a_body_is_too_large_not_busy(budget: mitm_limits._Budget) -> None:
    flow = Owner()
    body = gzip.compress(b"a" * 600)
    with pytest.raises(compressed.TooLarge) as error:
        asyncio.run(mitm_limits.decode_within(flow, lambda limit: compressed.decode("gzip", body, limit), 500))
    assert not isinstance(error.value, mitm_limits.Busy) and budget.total == 0
