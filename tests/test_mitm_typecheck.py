"""The garbage collector's load: mitmproxy's field type check answered without an exception where mitmproxy's
own check accepts the value (addon/protocol/mitm_typecheck.py: the same verdicts, the same errors, and no
reference cycles left behind), and the start-up heap frozen once the proxy runs (addon/server.py)."""

from __future__ import annotations

import gc
import io
import typing
from collections.abc import Sequence
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tutils
from mitmproxy.utils import typecheck

from addon.protocol import mitm_typecheck

TYPES: list[Any] = [
    int, float, str, bytes, bool, typing.Any, float | None, bytes | None, http.Headers | None, int | str,
    typing.Optional[str], typing.Union[int, None], tuple[int, str], Sequence[str], typing.TextIO,
    typing.Optional[tuple[int, int]], typing.Optional[Sequence[str]], str | typing.Any,
]
VALUES: list[Any] = [None, 0, 1, True, 1.5, "x", b"x", (1, "a"), (1, 2), ["a"], [1], http.Headers(), io.StringIO()]


def _verdict(check: Any, value: Any, typeinfo: Any) -> str:
    try:
        check("field", value, typeinfo)
    except TypeError as exc:
        return f"TypeError: {exc}"
    return "ok"


@pytest.mark.parametrize("typeinfo", TYPES, ids=str)
def test_every_verdict_and_error_is_mitmproxys(typeinfo: Any) -> None:
    for value in VALUES:
        assert _verdict(mitm_typecheck.check_option_type, value, typeinfo) == \
            _verdict(mitm_typecheck._original, value, typeinfo), (value, typeinfo)


def _cyclic_garbage(make: Any, n: int = 50) -> int:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(n):
            make()
        gc.collect()
        return len(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_requests_and_responses_leave_no_reference_cycles_once_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    make = lambda: (tutils.treq(timestamp_end=None), tutils.tresp(timestamp_end=None))  # noqa: E731
    monkeypatch.setattr(typecheck, "check_option_type", mitm_typecheck._original)
    assert _cyclic_garbage(make) > 0  # mitmproxy's check raises and catches a TypeError per Optional field
    monkeypatch.setattr(typecheck, "check_option_type", mitm_typecheck.check_option_type)
    assert _cyclic_garbage(make) == 0


def test_a_wrong_field_is_still_refused() -> None:
    mitm_typecheck.install()
    with pytest.raises(TypeError):
        tutils.treq(timestamp_end="later")


def test_valets_master_installs_it(tmp_path: Any) -> None:
    import asyncio

    from addon.cli.main import DEFAULT_CONFIG
    from addon.server import Settings, build_master

    async def build() -> None:
        settings = Settings(host="127.0.0.1", port=0, mode="reverse", data_dir=tmp_path, config=DEFAULT_CONFIG)
        proxy = build_master(settings)
        valet = next(a for a in proxy.addons.chain if hasattr(a, "write_ahead"))
        await valet.done()

    asyncio.run(build())
    assert typecheck.check_option_type is mitm_typecheck.check_option_type


def test_the_start_up_heap_is_frozen_once_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from addon import server

    before = gc.get_freeze_count()
    try:
        server.freeze_startup_heap()
        assert gc.get_freeze_count() > before + 1000
    finally:
        gc.unfreeze()
    calls: list[str] = []
    monkeypatch.setattr(server, "freeze_startup_heap", lambda: calls.append("frozen"))
    server._on_running(server.Settings(host="127.0.0.1", port=0, mode="reverse", data_dir=tmp_path,
                                       config=tmp_path / "valet.yaml"))
    assert calls == ["frozen"]
