"""Rate limits, with the ``limits`` package's async API (memory, or Redis shared by several Valets).

Moving-window limits: "60/minute" means no more than 60 in any 60 seconds, not
60 per calendar minute, so no burst of 120 across a minute boundary. The async
storage keeps Redis round trips off the event loop's critical path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from addon.policy.decisions import Call, RateRule


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str | None = None
    retry_after: int = 0  # seconds


class RateLimiter:
    def __init__(self, storage_url: str) -> None:
        scheme, _, rest = storage_url.partition("://")
        self.storage_url = storage_url
        self.storage = storage_from_string(f"async+{scheme}://{rest}")
        self.limiter = MovingWindowRateLimiter(self.storage)

    async def hit(self, rules: list[RateRule], call: Call) -> Verdict:
        """Count the call against every matching rule; refuse if any budget is spent."""
        for rule in rules:
            identifiers = (rule.id, *rule.identifiers(call))
            for item in rule.limits:
                if not await self.limiter.hit(item, *identifiers):
                    stats = await self.limiter.get_window_stats(item, *identifiers)
                    return Verdict(False, rule.id, max(1, int(stats.reset_time - time.time()) + 1))
        return Verdict(True)
