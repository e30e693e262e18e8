from __future__ import annotations

import pytest

from addon.protocol.errors import Cause, Refusal
from addon.protocol.sessions import SessionOwners


def test_binding() -> None:
    owners = SessionOwners(max_sessions=2)
    owners.bind("notes", "s1", "k1")
    owners.check("notes", "s1", "k1")
    for server, session, key in [("notes", "s1", "k2"), ("other", "s1", "k1"), ("notes", "s9", "k1"),
                                 ("notes", "s1", None)]:
        with pytest.raises(Refusal) as info:
            owners.check(server, session, key)
        assert info.value.cause is Cause.UNKNOWN_SESSION
    owners.bind("notes", "s1", "k2")  # an issued id is never re-bound to another key
    owners.check("notes", "s1", "k1")
    owners.end("notes", "s1")
    with pytest.raises(Refusal):
        owners.check("notes", "s1", "k1")


def test_oldest_sessions_are_evicted_past_the_cap() -> None:
    owners = SessionOwners(max_sessions=2)
    for i in range(3):
        owners.bind("n", f"s{i}", "k")
    assert len(owners) == 2
    with pytest.raises(Refusal):
        owners.check("n", "s0", "k")
    owners.check("n", "s2", "k")
