"""Rate limits, with the ``limits`` package's async API (memory, or Redis shared by several Valets).

Moving-window limits: "60/minute" means no more than 60 in any 60 seconds, not
60 per calendar minute, so no burst of 120 across a minute boundary. The async
storage keeps Redis round trips off the event loop's critical path.

Budget keys are bounded in size and in number. An ``argument:NAME`` scope
enters a key as a 128-bit hash of the value's canonical JSON (see
:func:`addon.policy.decisions.argument_key`), never as the value itself. And a
rule holds at most ``max_keys_per_rule`` distinct budgets within its window:
a call that would open one more is refused (``rate_limited``) until the oldest
budget's window has passed. Refusing is the fail-closed choice: folding the
excess into one shared overflow budget would let an agent that sprays distinct
values decide how much budget legitimate new values get, and would count calls
against budgets that were never theirs; a refusal is explicit, audited, and
names the rule.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from addon.policy.decisions import Call, RateRule

DEFAULT_MAX_KEYS_PER_RULE = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str | None = None
    retry_after: int = 0  # seconds
    too_many_keys: bool = False  # refused by the cap on distinct budgets, not by a spent budget


class KeyTable:
    """The distinct budget keys each rule has used within its window, oldest first (in this process)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._tables: dict[str, OrderedDict[tuple[str, ...], float]] = {}

    def admit(self, rule: str, key: tuple[str, ...], window: float, now: float) -> float | None:
        """None if the key may be used; else the seconds until the oldest key's window has passed."""
        table = self._tables.setdefault(rule, OrderedDict())
        while table and next(iter(table.values())) <= now:
            table.popitem(last=False)
        if key in table or len(table) < self.cap:
            table[key] = now + window
            table.move_to_end(key)
            return None
        return next(iter(table.values())) - now

    def count(self, rule: str) -> int:
        return len(self._tables.get(rule, ()))


EXPIRE_SECONDS = 1.0  # how often the in-process storage drops entries past their window (memory only)


def _throttle_expiry(storage: object) -> None:
    """limits' in-process storage starts a cleanup task after every hit once the previous one ended, and that
    task sends each key's entry list to a worker thread: with the event loop idle between calls, one thread
    hop and one list copy per call (~0.15 ms of CPU, the largest part of a policy decision; see
    docs/benchmarks.md). The cleanup only frees memory: every check reads entry times, never relies on old
    entries being gone. So it runs at most once per ``EXPIRE_SECONDS``. (A private hook of the library: if it
    is renamed, nothing changes but the cost.)"""
    name = "_MemoryStorage__schedule_expiry"
    schedule = getattr(storage, name, None)
    if schedule is None:
        return
    last = [float("-inf")]

    async def throttled() -> None:
        now = time.monotonic()
        if now - last[0] < EXPIRE_SECONDS:
            return
        last[0] = now
        await schedule()

    setattr(storage, name, throttled)


class RateLimiter:
    def __init__(self, storage_url: str, max_keys_per_rule: int = DEFAULT_MAX_KEYS_PER_RULE) -> None:
        scheme, _, rest = storage_url.partition("://")
        self.storage_url = storage_url
        self.storage = storage_from_string(f"async+{scheme}://{rest}")
        _throttle_expiry(self.storage)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.keys = KeyTable(max_keys_per_rule)

    async def hit(self, rules: list[RateRule], call: Call) -> Verdict:
        """Count the call against every matching rule; refuse if any budget is spent or cannot be opened."""
        for rule in rules:
            identifiers = (rule.id, *rule.identifiers(call))
            window = max((item.get_expiry() for item in rule.limits), default=1)
            wait = self.keys.admit(rule.id, identifiers, window, time.monotonic())
            if wait is not None:
                return Verdict(False, rule.id, max(1, int(wait) + 1), too_many_keys=True)
            for item in rule.limits:
                if not await self.limiter.hit(item, *identifiers):
                    stats = await self.limiter.get_window_stats(item, *identifiers)
                    return Verdict(False, rule.id, max(1, int(stats.reset_time - time.time()) + 1))
        return Verdict(True)
