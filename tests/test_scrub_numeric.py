"""A secret that reads as a bare JSON number is quoted when redacted outside a string: that check must stay
linear in the number of matches (a hostile upstream echoed an 8-digit secret ~20,000 times and froze every
agent for 20 s while each match walked every JSON string of the body)."""

from __future__ import annotations

import json
import time

from addon.secrets.scrubber import Scrubber

PIN = "73914862"  # fake, numeric on purpose
S = Scrubber([("PIN", PIN)], key_shape=False)


def test_bare_number_is_quoted_and_string_member_is_not() -> None:
    body = json.dumps({"a": int(PIN), "b": f"x{PIN}y", "c": [PIN, 1]}).encode()
    out = S.bytes(body)
    doc = json.loads(out)  # still valid JSON
    assert doc == {"a": "[REDACTED:PIN]", "b": "x[REDACTED:PIN]y", "c": ["[REDACTED:PIN]", 1]}


def test_many_numeric_matches_between_many_strings_stay_linear() -> None:
    items = [f'{{"k{i}": {PIN}, "s{i}": "v"}}' for i in range(100_000)]
    body = ("[" + ",".join(items) + "]").encode()
    began = time.monotonic()
    out = S.bytes(body)
    elapsed = time.monotonic() - began
    doc = json.loads(out)
    assert doc[0] == {"k0": "[REDACTED:PIN]", "s0": "v"} and doc[-1]["k99999"] == "[REDACTED:PIN]"
    assert PIN.encode() not in out
    assert elapsed < 20, f"{elapsed:.1f} s for 100,000 numeric matches"  # quadratic: hours
