"""A hook that raises must refuse the flow: mitmproxy alone would log the error and forward it."""

from __future__ import annotations

import json

from mitmproxy.test import tflow

from addon.hooks.failsafe import fail_closed


class Exploding:
    state = None

    @fail_closed
    def requestheaders(self, flow) -> None:  # type: ignore[no-untyped-def]
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    @fail_closed
    async def request(self, flow) -> None:  # type: ignore[no-untyped-def]
        raise KeyError("boom")

    @fail_closed
    def responseheaders(self, flow) -> None:  # type: ignore[no-untyped-def]
        raise ValueError("boom")


def test_a_raising_request_hook_refuses_the_flow(caplog) -> None:  # type: ignore[no-untyped-def]
    flow = tflow.tflow()
    Exploding().requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 500
    body = json.loads(flow.response.content or b"")
    assert body["error"]["code"] == -32603 and body["error"]["data"]["reason"] == "internal_error"
    assert "UnicodeEncodeError at test_failsafe.py" in caplog.text
    assert "surrogates" not in caplog.text, "the exception's message (request data) is never logged"


def test_a_raising_async_hook_refuses_the_flow() -> None:
    import asyncio

    flow = tflow.tflow()
    asyncio.run(Exploding().request(flow))
    assert flow.response is not None and flow.response.status_code == 500


def test_a_raising_response_headers_hook_kills_the_flow() -> None:
    flow = tflow.tflow(resp=True)
    flow.live = True
    Exploding().responseheaders(flow)
    assert flow.error is not None and not flow.live
