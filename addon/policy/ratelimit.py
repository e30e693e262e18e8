"""Rate limits, with the ``limits`` package's async API (memory, or Redis shared by several Valets).

Moving-window limits: "60/minute" means no more than 60 in any 60 seconds, not
60 per calendar minute, so no burst of 120 across a minute boundary. The async
storage keeps Redis round trips off the event loop's critical path.

Budget keys are bounded in size and in number. An ``argument:NAME`` scope
enters a key as a 128-bit hash of the value's canonical JSON (see
:func:`addon.policy.decisions.argument_key`), never as the value itself. And
the number of distinct budgets is capped per rule *and per caller*: each
(rule, identity) pair, where the identity is the ``user``/``key``/``agent``
parts of the rule's ``per``, holds at most ``max_keys_per_rule`` budgets within
the rule's window, and a rule tracks at most ``max_identities_per_rule``
identities. A call that would open one more budget is refused
(``rate_limited``) until the oldest budget's window has passed.

Why scoped by identity: with one table per rule, filled by every caller, one
agent spraying distinct values locked every other user out of the rule for
its whole window (review finding F15). Identities are issued by the operator
(valet keys), never made up by an agent, so bounding them bounds memory
without handing any agent a lever on anyone else's calls. A rule whose ``per``
names no identity still has one table per rule, which any caller can fill:
``valet policy check`` warns about such a rule when its budgets are keyed by
values the caller chooses (see :func:`shared_cap_warnings`).

Refusing is the fail-closed choice: folding the excess into one shared
overflow budget would let an agent that sprays distinct values decide how much
budget legitimate new values get, and would count calls against budgets that
were never theirs; a refusal is explicit, audited, and names the rule.
"""

from __future__ import annotations

import collections
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from limits import RateLimitItem
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from addon.config import line_of
from addon.policy.decisions import Call, RateRule
from addon.policy.files import PolicySources

DEFAULT_MAX_KEYS_PER_RULE = 10_000  # per rule and identity
DEFAULT_MAX_IDENTITIES_PER_RULE = 10_000  # as many callers as the one per-rule table of old could count

IDENTITY_SCOPES = frozenset({"user", "key", "agent"})  # fixed by the valet key, chosen by the operator

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str | None = None
    retry_after: int = 0  # seconds
    too_many_keys: bool = False  # refused by a cap on distinct budgets (or identities), not by a spent budget
    too_many_identities: bool = False  # the rule already tracks max_identities_per_rule callers


@dataclass(frozen=True, slots=True)
class Full:
    """Why :meth:`KeyTable.claim` refused a new budget, and for how long."""

    wait: float  # seconds until the oldest entry in the way has expired
    identities: bool = False  # the rule's bound on identities, not the caller's own cap on budgets


def identity_of(rule: RateRule, identifiers: tuple[str, ...]) -> tuple[str, ...]:
    """The ``user``/``key``/``agent`` parts of a budget key (``rule.identifiers`` follows ``rule.per``'s order);
    empty when the rule's ``per`` names no identity, and then the whole rule shares one table."""
    return tuple(part for scope, part in zip(rule.per, identifiers, strict=True) if scope in IDENTITY_SCOPES)


class KeyTable:
    """The distinct budget keys in use within their window, one table per (rule, identity), oldest first.

    Per rule, identities are kept in the order of their newest budget, so an identity whose budgets have all
    expired is dropped from the front in amortized O(1). In this process: with Redis the budgets are shared, the
    tables are not (each Valet enforces its own caps).
    """

    def __init__(self, cap: int, max_identities: int = DEFAULT_MAX_IDENTITIES_PER_RULE) -> None:
        self.cap = cap
        self.max_identities = max_identities
        self._rules: dict[str, OrderedDict[tuple[str, ...], OrderedDict[tuple[str, ...], float]]] = {}

    def admit(self, rule: str, key: tuple[str, ...], window: float, now: float,
              identity: tuple[str, ...] = ()) -> float | None:
        """:meth:`claim`, reporting only the seconds to wait (None: admitted)."""
        full = self.claim(rule, key, window, now, identity)
        return None if full is None else full.wait

    def claim(self, rule: str, key: tuple[str, ...], window: float, now: float,
              identity: tuple[str, ...] = ()) -> Full | None:
        """None if the key may be used (and is then counted); else why not and for how long."""
        tables = self._rules.setdefault(rule, OrderedDict())
        while tables:  # identities none of whose budgets is still within its window
            oldest = next(iter(tables.values()))
            if oldest and next(reversed(oldest.values())) > now:
                break
            tables.popitem(last=False)
        table = tables.get(identity)
        if table is None:
            if len(tables) >= self.max_identities:
                return Full(max(0.0, next(reversed(next(iter(tables.values())).values())) - now), identities=True)
            table = tables[identity] = OrderedDict()
        while table and next(iter(table.values())) <= now:
            table.popitem(last=False)
        if key in table or len(table) < self.cap:
            table[key] = now + window
            table.move_to_end(key)
            tables.move_to_end(identity)  # ordered by newest budget, so the front is the first to expire whole
            return None
        return Full(next(iter(table.values())) - now)

    def count(self, rule: str, identity: tuple[str, ...] | None = None) -> int:
        """Budgets held by one identity under a rule, or (identity None) by all of them."""
        tables = self._rules.get(rule, {})
        if identity is not None:
            return len(tables.get(identity, ()))
        return sum(len(table) for table in tables.values())

    def identities(self, rule: str) -> int:
        return len(self._rules.get(rule, ()))


def shared_cap_warnings(sources: PolicySources) -> list[str]:
    """Rate rules whose one budget table any caller can fill: budgeted per argument value, with no identity
    in ``per``. One agent spraying distinct values then gets every other caller's new values refused for the
    rule's window. (A ``tool`` part on a rule that does not pin its tool names is sprayable too, but budgets
    one per tool for everyone are a common, deliberate choice; docs/policies.md says so instead.)"""
    out = []
    index_in_file: dict[str, int] = {}
    for rule, origin in sources.rules:  # in file order, every rule of a file appended
        index = index_in_file[origin] = index_in_file.get(origin, -1) + 1
        if rule.rate is None or any(scope in IDENTITY_SCOPES for scope in rule.per):
            continue
        chosen = [scope for scope in rule.per if scope.startswith("argument:")]
        if chosen:
            out.append(f"{_where(origin, index)}: rate rule {rule.id!r} is budgeted per {', '.join(chosen)} with no user, key or "
                       "agent in per: its cap on distinct budgets (rate_limits.max_keys_per_rule) is shared by "
                       "every caller, so one agent sending distinct values gets everyone's new values refused "
                       "for the rule's window; add user (or key) to per")
    return out


def _where(origin: str, index: int) -> str:
    """``file:line`` of a file's rule ``index`` (its ``id``), as every other policy message names it."""
    try:
        return f"{origin}:{line_of(Path(origin).read_text(encoding='utf-8'), 'rules', index, 'id')}"
    except (OSError, UnicodeDecodeError):
        return origin


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


class LocalWindows:
    """The moving window of ``memory://`` storage, in this process, without the ``limits`` storage around it.

    The same rule as ``limits``' moving window (an entry is refused while ``amount`` entries are at most
    ``expiry`` seconds old; see ``limits.aio.storage.MemoryStorage.acquire_entry``), for a fraction of its
    cost per call: no coroutine, lock, key string or list insertion at the front per hit, and no cleanup
    task (each budget's entries are a deque, oldest first, trimmed when it is hit; budgets not hit for their
    whole window are dropped from the front of an ordered dict, oldest hit first, amortized O(1) per hit).
    Bounded like the storage it replaces: at most ``amount`` entries per budget, and the budgets are those
    :class:`KeyTable` admitted. Monotonic time, so a clock step neither frees nor blocks a budget.
    """

    def __init__(self) -> None:
        self._windows: OrderedDict[tuple[object, ...], tuple[collections.deque[float], float]] = OrderedDict()

    def hit(self, item: RateLimitItem, identifiers: tuple[str, ...], now: float) -> bool:
        """Count one call against ``item`` for these identifiers if the window has room; False if not."""
        windows = self._windows
        while windows:  # budgets whose newest entry has left its window: nothing left to count
            entries, expiry = next(iter(windows.values()))
            if entries and entries[-1] >= now - expiry:
                break
            windows.popitem(last=False)
        key = (item, *identifiers)
        slot = windows.get(key)
        expiry = float(item.get_expiry())
        if slot is None:
            slot = windows[key] = (collections.deque(), expiry)
        else:
            windows.move_to_end(key)
        entries = slot[0]
        cutoff = now - expiry
        while entries and entries[0] < cutoff:
            entries.popleft()
        if len(entries) >= item.amount:
            return False
        entries.append(now)
        return True

    def reset_in(self, item: RateLimitItem, identifiers: tuple[str, ...], now: float) -> float:
        """Seconds until the oldest entry in the window leaves it (and the budget has room again)."""
        slot = self._windows.get((item, *identifiers))
        if not slot or not slot[0]:
            return 0.0
        return max(0.0, slot[0][0] + slot[1] - now)

    def __len__(self) -> int:
        return len(self._windows)


class RateLimiter:
    def __init__(self, storage_url: str, max_keys_per_rule: int = DEFAULT_MAX_KEYS_PER_RULE,
                 max_identities_per_rule: int = DEFAULT_MAX_IDENTITIES_PER_RULE) -> None:
        scheme, _, rest = storage_url.partition("://")
        self.storage_url = storage_url
        # memory://: the moving window in this process (LocalWindows); any other storage (Redis, shared
        # by several Valets) through the ``limits`` async API, unchanged.
        self.local = LocalWindows() if scheme == "memory" else None
        self.storage = None if self.local is not None else storage_from_string(f"async+{scheme}://{rest}")
        if self.storage is not None:
            _throttle_expiry(self.storage)
        self.limiter = MovingWindowRateLimiter(self.storage) if self.storage is not None else None
        self.keys = KeyTable(max_keys_per_rule, max_identities_per_rule)
        self._warned: set[str] = set()  # rules whose identity bound was reached (logged once each)

    async def hit(self, rules: list[RateRule], call: Call) -> Verdict:
        """Count the call against every matching rule; refuse if any budget is spent or cannot be opened."""
        for rule in rules:
            parts = rule.identifiers(call)
            identifiers = (rule.id, *parts)
            window = max((item.get_expiry() for item in rule.limits), default=1)
            full = self.keys.claim(rule.id, identifiers, window, time.monotonic(), identity_of(rule, parts))
            if full is not None:
                if full.identities and rule.id not in self._warned:
                    self._warned.add(rule.id)
                    log.warning("rate rule %r tracks rate_limits.max_identities_per_rule=%d callers within its "
                                "window: new callers are refused rate_limited until one's budgets expire; raise "
                                "the bound if that many users or keys are expected", rule.id, self.keys.max_identities)
                return Verdict(False, rule.id, max(1, int(full.wait) + 1), too_many_keys=True,
                               too_many_identities=full.identities)
            if self.local is not None:
                now = time.monotonic()
                for item in rule.limits:
                    if not self.local.hit(item, identifiers, now):
                        return Verdict(False, rule.id, max(1, int(self.local.reset_in(item, identifiers, now)) + 1))
                continue
            assert self.limiter is not None
            for item in rule.limits:
                if not await self.limiter.hit(item, *identifiers):
                    stats = await self.limiter.get_window_stats(item, *identifiers)
                    return Verdict(False, rule.id, max(1, int(stats.reset_time - time.time()) + 1))
        return Verdict(True)
