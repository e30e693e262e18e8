"""Fail closed when a hook itself fails.

mitmproxy's addon manager logs an exception raised by a hook and then carries
on with the flow as if nothing happened. For a request-side hook of Valet that
would mean forwarding a request that was never authenticated, routed, parsed or
injected: fail open. Every request-side hook is therefore wrapped so that any
unexpected exception refuses the flow (500, ``internal_error``), and every
response-side hook so that the agent gets an error instead of an unfiltered
response. The log names the exception type and where it was raised, never its
message (which could quote request data).
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from addon.protocol.errors import Cause, Refusal
from addon.hooks.state import refuse

log = logging.getLogger("valet")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno}" if last else type(exc).__name__


def _fail(addon: Any, flow: http.HTTPFlow, hook: str, exc: BaseException) -> None:
    log.error("internal error in %s: %s; the flow is refused", hook, _where(exc))
    if hook.endswith(".responseheaders"):
        # The upstream's body has not been read yet and cannot be vetted: cut the flow.
        flow.kill()
        return
    refuse(flow, Refusal(Cause.INTERNAL_ERROR, "Valet could not process this request"), "error")
    if flow.request.method == "CONNECT" and hasattr(addon, "state"):
        addon.state.record_refused_connect(flow)


def fail_closed(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a hook taking a flow: any exception answers the flow with an internal error."""
    name = method.__qualname__
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_wrapper(self: Any, flow: http.HTTPFlow) -> None:
            try:
                await method(self, flow)
            except Exception as exc:  # noqa: BLE001 - the point is to catch everything
                _fail(self, flow, name, exc)

        return async_wrapper

    @functools.wraps(method)
    def wrapper(self: Any, flow: http.HTTPFlow) -> None:
        try:
            method(self, flow)
        except Exception as exc:  # noqa: BLE001
            _fail(self, flow, name, exc)

    return wrapper
