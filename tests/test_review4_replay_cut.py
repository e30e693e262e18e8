"""Review 4, H5: the watchdog's cut reaches an OAuth replay under way (hooks/oauthretry.cut).

The replay goes through Valet's own HTTP client, not a mitmproxy connection the watchdog could close, so
the watchdog hands the cut to the replay: during the refresh the request is then never sent again, and a
replay already sent is cancelled; the agent gets the watchdog's ending as Valet's refusal. (The end-to-end
cases, a key revoked or a policy loaded during a slow refresh, are in test_e2e_review4_replay.py; there the
refresh outlasts the change, and nothing holds the replay itself long enough to cut it end to end.)
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import httpx2
from mitmproxy.test import tflow, tutils

from addon.audit.exchange import Exchange
from addon.hooks import oauthretry
from addon.hooks.oauthretry import OAuthReplay
from addon.hooks.state import METADATA_KEY
from addon.protocol.errors import Cause
from addon.protocol.mitm_limits import Ending
from addon.snapshot import load_snapshot


class _State:
    """What OAuthReplay and rejudge read of ValetState: no key ring (nothing revoked there), one snapshot."""

    def __init__(self, snapshot, refreshed: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
        self.snapshot, self.keyring, self.refreshed = snapshot, None, refreshed
        self.refresher = self

    async def refresh(self, server_name, server, user, stale):  # type: ignore[no-untyped-def]
        await self.refreshed.wait()
        return SimpleNamespace(access_token="fake-at-new")

    def note_grant(self, server, grant) -> None:  # type: ignore[no-untyped-def]
        pass

    async def current(self):  # type: ignore[no-untyped-def]
        return self.snapshot


def _setup(tmp_path: Path, refreshed: asyncio.Event, sent: list[int], hold: asyncio.Event):  # type: ignore[no-untyped-def]
    (tmp_path / "policy.yaml").write_text("rules:\n  - id: allow-all\n    effect: allow\n")
    (tmp_path / "valet.yaml").write_text("servers:\n  cloud:\n    url: http://127.0.0.1:9/mcp\n    auth: oauth\n"
                                         "policy_files: [policy.yaml]\n")
    snapshot = load_snapshot(tmp_path / "valet.yaml")
    body = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "me"}}).encode()
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/mcp", port=9, content=body),
                       resp=tutils.tresp(status_code=401))
    exchange = Exchange(mode="reverse", http_method="POST", http_path="/cloud", server="cloud", user="alice",
                        key_id="k1", oauth_token="fake-at-old", snapshot=snapshot)
    flow.metadata[METADATA_KEY] = exchange

    async def upstream(request: httpx2.Request) -> httpx2.Response:
        sent.append(1)
        await hold.wait()  # an upstream slow to answer the replay
        return httpx2.Response(200, json={"jsonrpc": "2.0", "id": 2, "result": {}})

    replay = OAuthReplay(_State(snapshot, refreshed))  # type: ignore[arg-type]
    replay._http = httpx2.AsyncClient(transport=httpx2.MockTransport(upstream))
    return flow, exchange, replay


def _reason(flow) -> str:  # type: ignore[no-untyped-def]
    return json.loads(flow.response.content)["error"]["data"]["reason"]


def test_a_replay_under_way_is_cancelled_by_the_cut(tmp_path: Path) -> None:
    async def run() -> None:
        refreshed, hold, sent = asyncio.Event(), asyncio.Event(), []
        flow, exchange, replay = _setup(tmp_path, refreshed, sent, hold)
        refreshed.set()
        hook = asyncio.create_task(replay.response(flow))
        for _ in range(500):
            if sent:
                break
            await asyncio.sleep(0.01)
        assert sent == [1]  # the replay is under way, held by the upstream
        assert oauthretry.cut(flow, Ending(Cause.REVOKED_KEY, "the valet key was revoked; Valet closed this exchange"))
        await asyncio.wait_for(hook, 10)  # at once: not when the upstream answers (it never does here)
        assert flow.response.status_code == 401 and _reason(flow) == "revoked_key"
        assert (exchange.decision, exchange.reason, exchange.replayed) == ("deny", "revoked_key", False)
        assert not oauthretry.cut(flow, Ending(Cause.DISABLED, "x"))  # done: the watchdog's own path again
        await replay.done()

    asyncio.run(run())


def test_a_cut_during_the_refresh_means_no_replay(tmp_path: Path) -> None:
    async def run() -> None:
        refreshed, hold, sent = asyncio.Event(), asyncio.Event(), []
        hold.set()
        flow, exchange, replay = _setup(tmp_path, refreshed, sent, hold)
        hook = asyncio.create_task(replay.response(flow))
        await asyncio.sleep(0.05)  # the refresh is under way
        assert oauthretry.cut(flow, Ending(Cause.DISABLED, "switched off by users.alice.enabled"))
        refreshed.set()
        await asyncio.wait_for(hook, 10)
        assert sent == []  # never sent again
        assert flow.response.status_code == 403 and _reason(flow) == "disabled"
        assert (exchange.decision, exchange.reason) == ("deny", "disabled")
        await replay.done()

    asyncio.run(run())


def test_an_upstream_timeout_cut_is_an_error(tmp_path: Path) -> None:
    async def run() -> None:
        refreshed, hold, sent = asyncio.Event(), asyncio.Event(), []
        flow, exchange, replay = _setup(tmp_path, refreshed, sent, hold)
        refreshed.set()
        hook = asyncio.create_task(replay.response(flow))
        while not sent:
            await asyncio.sleep(0.01)
        oauthretry.cut(flow, Ending(Cause.UPSTREAM_TIMEOUT, "the upstream's answer took more than 1 s"))
        await asyncio.wait_for(hook, 10)
        assert flow.response.status_code == 504 and (exchange.decision, exchange.reason) == ("error", "upstream_timeout")
        await replay.done()

    asyncio.run(run())
