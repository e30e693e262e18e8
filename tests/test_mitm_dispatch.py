"""The hook table (addon/protocol/mitm_dispatch.py) calls what mitmproxy's addon manager calls, in its order,
with its error semantics; only the walk over the chain is done once per event name instead of per event."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from mitmproxy import exceptions, master, options
from mitmproxy.addonmanager import AddonManager
from mitmproxy.test import tflow

from addon.protocol.mitm_dispatch import HookTable, install


def _sync(test: Any) -> Any:
    """Run an async test body in its own event loop (mitmproxy's Master wants a running loop)."""
    import functools
    import inspect

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    run.__signature__ = inspect.signature(test)  # type: ignore[attr-defined]
    return run


class Recorder:
    def __init__(self, name: str, calls: list[str], fail: BaseException | None = None,
                 children: list[Any] | None = None) -> None:
        self.name = name
        self.calls = calls
        self.fail = fail
        if children is not None:
            self.addons = children

    def request(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.request")
        if self.fail is not None:
            raise self.fail


class AsyncRecorder:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def request(self, flow: Any) -> None:
        await asyncio.sleep(0)
        self.calls.append("async.request")


class UpdateWatcher:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def update(self, flows: list[Any]) -> None:
        self.calls.append(f"update:{len(flows)}")


class NotAHook:
    request = 42  # named like a hook, not callable: mitmproxy reports it


async def _both(addons: list[Any], event: Any, lifecycle: bool = False) -> tuple[list[str], list[str]]:
    """The same addons (recording into one list each) under mitmproxy's manager and under the hook table."""
    results = []
    for manager_type in (AddonManager, HookTable):
        m = master.Master(options.Options())
        m.addons = manager_type(m)
        calls: list[str] = []
        for addon in addons:
            addon_for_run = addon(calls)
            m.addons.add(addon_for_run)
        if lifecycle:
            await m.addons.handle_lifecycle(event)
        else:
            await m.addons.trigger_event(event)
        results.append(calls)
    return results[0], results[1]


def _request_event() -> Any:
    from mitmproxy.http import HTTPFlow
    from mitmproxy.proxy.layers.http import HttpRequestHook

    flow: HTTPFlow = tflow.tflow()
    return HttpRequestHook(flow)


@_sync
async def test_same_calls_in_the_same_order_children_included() -> None:
    addons = [
        lambda calls: Recorder("a", calls),
        lambda calls: Recorder("b", calls, children=[Recorder("b1", calls), Recorder("b2", calls)]),
        lambda calls: AsyncRecorder(calls),
        lambda calls: UpdateWatcher(calls),
    ]
    theirs, ours = await _both(addons, _request_event(), lifecycle=True)
    assert ours == theirs == ["a.request", "b.request", "b1.request", "b2.request", "async.request", "update:1"]


@_sync
async def test_an_addons_exception_is_logged_and_the_next_addon_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    addons = [
        lambda calls: Recorder("a", calls, fail=ValueError("boom"),
                               children=[Recorder("a1", calls)]),
        lambda calls: Recorder("b", calls),
    ]
    with caplog.at_level(logging.ERROR):
        theirs, ours = await _both(addons, _request_event())
    assert ours == theirs == ["a.request", "b.request"]  # a's child skipped, b runs
    assert sum("Addon error: boom" in r.getMessage() for r in caplog.records) == 2  # once per manager


@_sync
async def test_addon_halt_stops_the_event() -> None:
    addons = [lambda calls: Recorder("a", calls, fail=exceptions.AddonHalt()), lambda calls: Recorder("b", calls)]
    theirs, ours = await _both(addons, _request_event())
    assert ours == theirs == ["a.request"]


@_sync
async def test_options_error_propagates() -> None:
    m = master.Master(options.Options())
    install(m)
    m.addons.add(Recorder("a", [], fail=exceptions.OptionsError("bad")))
    with pytest.raises(exceptions.OptionsError):
        await m.addons.trigger_event(_request_event())


@_sync
async def test_the_table_follows_the_chain_as_it_changes() -> None:
    m = master.Master(options.Options())
    install(m)
    calls: list[str] = []
    first = Recorder("first", calls)
    m.addons.add(first)
    await m.addons.trigger_event(_request_event())
    second = Recorder("second", calls)
    m.addons.add(second)
    await m.addons.trigger_event(_request_event())
    m.addons.remove(first)
    await m.addons.trigger_event(_request_event())
    m.addons.clear()
    await m.addons.trigger_event(_request_event())
    assert calls == ["first.request", "first.request", "second.request", "second.request"]


@_sync
async def test_no_update_event_when_no_addon_handles_it_and_one_when_some_does() -> None:
    m = master.Master(options.Options())
    install(m)
    calls: list[str] = []
    m.addons.add(Recorder("a", calls))
    await m.addons.handle_lifecycle(_request_event())
    m.addons.add(UpdateWatcher(calls))
    await m.addons.handle_lifecycle(_request_event())
    assert calls == ["a.request", "a.request", "update:1"]


@_sync
async def test_an_attribute_named_like_a_hook_is_reported_as_mitmproxy_does(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        theirs, ours = await _both([lambda calls: NotAHook(), lambda calls: Recorder("b", calls)], _request_event())
    assert ours == theirs == ["b.request"]
    assert sum("not callable" in r.getMessage() for r in caplog.records) == 2


@_sync
async def test_install_refuses_a_master_that_has_addons_already() -> None:
    m = master.Master(options.Options())
    m.addons.add(Recorder("a", []))
    with pytest.raises(RuntimeError):
        install(m)


@_sync
async def test_valets_master_uses_the_hook_table(tmp_path: Any) -> None:
    from addon.cli.main import DEFAULT_CONFIG
    from addon.server import Settings, build_master

    settings = Settings(host="127.0.0.1", port=0, mode="reverse", data_dir=tmp_path, config=DEFAULT_CONFIG)
    proxy = build_master(settings)
    assert isinstance(proxy.addons, HookTable)
    assert proxy.addons.get("proxyserver") is not None
    valet = next(a for a in proxy.addons.chain if hasattr(a, "write_ahead"))
    await valet.done()  # the audit writer it opened is closed again
