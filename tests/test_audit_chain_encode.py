"""The chain's records are encoded by the stdlib's C encoder built once (addon/audit/chain.py ``_ENCODE``);
``valet audit verify`` recomputes them with ``JSONEncoder.encode``. Both must give the same bytes for every
value a row can hold, or every record written would read as edited."""

from __future__ import annotations

from typing import Any

import pytest

from addon.audit import chain

AWKWARD: list[Any] = [
    None, "", "plain", "ünïcode \u2028\u2029 \"quoted\" \\ back", "\x00\x01\x1f\x7f control", "\ud800 lone surrogate",
    "emoji \U0001f600", 0, -1, 2**63, 10**30, 1.5, -0.0, 1e16, 1e-7, 123456789.123456, float("inf"), True, False,
]


def test_the_encoder_is_the_c_one_built_once() -> None:
    assert chain._ENCODE is not chain._ENCODER.encode


@pytest.mark.parametrize("value", AWKWARD)
def test_every_awkward_value_encodes_as_verify_encodes_it(value: Any) -> None:
    payload = ["p" * 64, 1, 2, "request", [value, [value]], [[value, None]]]
    assert chain._ENCODE(payload) == chain._ENCODER.encode(payload)
