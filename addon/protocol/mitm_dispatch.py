"""mitmproxy's addon manager, with the walk for every event done once instead of on every event.

Measured (issue 10 item 2, docs/benchmarks.md "Fifth pass"): for every event of every flow (about
seven a ``tools/call``, each followed by an ``update`` event that no addon of Valet's master handles)
mitmproxy's :class:`~mitmproxy.addonmanager.AddonManager` visits every addon of the chain: a
generator-based ``safecall`` context manager, a coroutine, a recursive ``traverse`` generator, a
``getattr``, and the hook's ``args()`` (``dataclasses.fields``) again for each addon. With the eight
addons of Valet's master that is ~110 visits a call for ~15 hook calls that do something, several
hundred microseconds of CPU, more than all of Valet's policy stages together.

:class:`HookTable` keeps mitmproxy's semantics and caches their result: for an event name, the hook
callables of every addon (children included, in ``traverse`` order), grouped by top-level addon. The
table is rebuilt whenever the chain changes (``add``, ``remove``, ``clear``). Calling them is what
mitmproxy does:

* one addon's exception is logged (mitmproxy's own ``safecall`` logs it, with its "Addon error"
  message) and the next top-level addon still runs; the rest of the failing addon's children do not;
* ``AddonHalt`` stops the event; ``OptionsError`` propagates;
* a hook's awaitable result is awaited;
* an ``update`` event follows every flow event, only when some addon handles ``update``.

What it assumes, and Valet's master satisfies: an addon does not replace its hook methods, nor
change its ``addons`` children, after it was added (mitmproxy reads both on every event; this reads
them when the chain changes). An attribute named like a hook that is neither callable nor a module
is left to mitmproxy's own path, which reports it as before.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks

_Group = tuple[Callable[..., Any], ...]


class _NotCacheable(Exception):
    """An attribute named like the hook that mitmproxy's own path must report."""


class HookTable(addonmanager.AddonManager):
    """An :class:`~mitmproxy.addonmanager.AddonManager` that looks each event's hooks up once."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._groups: dict[str, tuple[_Group, ...] | None] = {}  # None: use mitmproxy's own walk

    # --- the chain changes: the table is rebuilt lazily --------------------------------------------
    def clear(self) -> None:
        self._groups = {}
        try:
            super().clear()
        finally:
            self._groups = {}

    def add(self, *addons: Any) -> None:
        self._groups = {}
        try:
            super().add(*addons)
        finally:
            self._groups = {}

    def remove(self, addon: Any) -> None:
        self._groups = {}
        try:
            super().remove(addon)
        finally:
            self._groups = {}

    def _lookup(self, name: str) -> tuple[_Group, ...] | None:
        try:
            return self._groups[name]
        except KeyError:
            pass
        groups: tuple[_Group, ...] | None
        try:
            groups = tuple(group for group in (self._hooks_of(top, name) for top in self.chain) if group)
        except _NotCacheable:
            groups = None
        self._groups[name] = groups
        return groups

    @staticmethod
    def _hooks_of(top: Any, name: str) -> _Group:
        """What ``AddonManager._iter_hooks`` yields for ``top`` and an event called ``name``."""
        found = []
        for addon in addonmanager.traverse([top]):
            func = getattr(addon, name, None)
            if not func:
                continue
            if callable(func):
                found.append(func)
            elif not isinstance(func, types.ModuleType):
                raise _NotCacheable(name)
        return tuple(found)

    # --- events --------------------------------------------------------------------------------------
    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        if self._lookup("update"):  # mitmproxy follows every flow event with an update event
            message = event.args()[0]
            if isinstance(message, flow.Flow):
                await self.trigger_event(hooks.UpdateHook([message]))

    async def trigger_event(self, event: hooks.Hook) -> None:
        groups = self._lookup(event.name)
        if groups is None:
            await super().trigger_event(event)
            return
        if not groups:
            return
        args = event.args()
        for group in groups:
            try:
                for func in group:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception:  # noqa: BLE001 - logged exactly as mitmproxy logs it, then the next addon
                with addonmanager.safecall():
                    raise


def install(master: Any) -> None:
    """Give ``master`` a :class:`HookTable` (before any addon is added to it)."""
    if master.addons.chain:
        raise RuntimeError("the hook table must be installed before any addon is added")
    master.addons = HookTable(master)
