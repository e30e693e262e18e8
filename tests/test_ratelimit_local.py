"""The ``memory://`` moving window runs in this process (:class:`addon.policy.ratelimit.LocalWindows`).

It replaced ``limits``' in-process storage on the policy decision's path (a coroutine, a lock, a key
string and a list insertion at the front per hit, plus its cleanup task: about half of a policy decision's
CPU, docs/benchmarks.md). The rule must stay the moving window's: no more than N calls in any window, an
entry still counted at the exact end of its window, the retry time the oldest entry's exit, budgets freed
once their window has passed. Redis storage still goes through ``limits`` (tests/test_ratelimit_scope.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter

from addon.policy import ratelimit
from addon.policy.ratelimit import LocalWindows, RateLimiter

from .test_ratelimit_scope import call, policy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_storage_does_not_go_through_the_limits_storage(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(*_a: object, **_k: object) -> bool:
        raise AssertionError("limits' storage used for memory://")

    monkeypatch.setattr(MovingWindowRateLimiter, "hit", refused)
    p = policy(tmp_path, "rules:\n  - id: two\n    tools: [t]\n    rate: 2/minute\n")
    limiter = RateLimiter("memory://")

    async def run() -> list[bool]:
        out = []
        for _ in range(3):
            c = call("alice", "x")
            out.append((await limiter.hit(p.rate_rules(c), c)).allowed)
        return out

    assert asyncio.run(run()) == [True, True, False]
    assert limiter.storage is None and limiter.local is not None


def test_the_moving_window_holds_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(ratelimit.time, "monotonic", clock)
    p = policy(tmp_path, "rules:\n  - id: five\n    tools: [t]\n    rate: 5/minute\n")
    limiter = RateLimiter("memory://")

    async def hit() -> tuple[bool, int]:
        c = call("alice", "x")
        verdict = await limiter.hit(p.rate_rules(c), c)
        return verdict.allowed, verdict.retry_after

    async def run() -> list[tuple[bool, int]]:
        out = []
        for step in (0, 1, 2, 3, 4, 10, 60, 60.5, 60.7, 61.5):
            clock.now = 1000.0 + step
            out.append(await hit())
        return out

    assert asyncio.run(run()) == [
        (True, 0), (True, 0), (True, 0), (True, 0), (True, 0),
        (False, 51),  # the oldest entry (t=0) leaves the window at t=60: 50 s, rounded up past it
        (False, 1),  # at t=60 exactly the t=0 entry still counts (limits' rule: atime >= now - expiry)
        (True, 0),  # t=0 has left
        (False, 1),  # five in the window again (1, 2, 3, 4, 60.5)
        (True, 0),  # t=1 has left
    ]


def test_a_call_refused_by_one_limit_still_counts_against_those_before_it() -> None:
    """As with limits: each limit of a rule is hit in turn; a refusal by a later one keeps earlier entries."""
    windows = LocalWindows()
    minute, hour = parse("2/minute"), parse("3/hour")
    ids = ("r", "user=alice")
    got = []
    for t in (0.0, 1.0, 61.0, 62.0):
        got.append(windows.hit(minute, ids, t) and windows.hit(hour, ids, t))
    assert got == [True, True, True, False]
    assert windows.reset_in(hour, ids, 62.0) == pytest.approx(3600 - 62)


def test_budgets_past_their_window_are_dropped() -> None:
    windows = LocalWindows()
    minute = parse("10/minute")
    for i in range(100):
        assert windows.hit(minute, ("r", f"q={i}"), float(i) / 100)
    assert len(windows) == 100
    assert windows.hit(minute, ("r", "late"), 61.0)
    assert len(windows) == 1, "every budget whose newest entry left its window is gone"
