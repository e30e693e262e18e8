"""OAuth refresh under faults, end to end: a slow and failing authorization server (the MCP SDK's handlers,
rotating refresh tokens) shared by two Valets through a real Redis, and one that issues unusable tokens."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from .support import PYTHON, ROOT, Valet, assert_clean_log, free_port, start_valet, wait_for_port
from .test_e2e_oauth import AuthServer, burst, call_me, config, login, status, subject

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/oauth_server.py"), "--port", str(port),
                                "--access-ttl", "3"], cwd=ROOT)
    wait_for_port(port)
    server = AuthServer(port, process)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def healthy(auth_server: AuthServer) -> Iterator[None]:
    yield
    for what, params in [("down", {"seconds": 0}), ("slow", {"seconds": 0}), ("ttl", {"seconds": 3}),
                         ("grace", {"seconds": 0}), ("issue", {"style": "ok"})]:
        auth_server.control(what, **params)


@contextmanager
def two_valets(auth: AuthServer, tmp_path: Path, redis_url: str) -> Iterator[tuple[Valet, Valet]]:
    """Two Valet processes on one data dir, sharing a Redis (as two replicas behind a load balancer)."""
    (tmp_path / "one").mkdir()
    first = start_valet(tmp_path / "one", None, config_text=config(auth, redis_url))
    second = None
    try:
        port = free_port()
        log = tmp_path / "second.log"
        with log.open("wb") as out:
            process = subprocess.Popen([PYTHON, str(ROOT / "run_proxy.py"), "--config", str(first.config),
                                        "--data-dir", str(first.data_dir), "--listen", f"127.0.0.1:{port}"],
                                       cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(port)
        second = Valet(port, first.data_dir, first.config, "reverse", process, log)
        yield first, second
    finally:
        assert first.stop() == 0
        assert_clean_log(first)
        if second is not None:
            assert second.stop() == 0
            assert_clean_log(second)


def expires(valet: Valet, user: str) -> float:
    """The access token's expiry as `oauth status` shows it (whole seconds: the real one is up to 1 s later)."""
    return datetime.fromisoformat(status(valet)[user]["expires"]).timestamp()


def test_a_slow_failing_server_never_makes_two_valets_spend_a_rotated_refresh_token(
        auth_server: AuthServer, tmp_path: Path, redis_url: str) -> None:
    """The refresh outlives the old 15 s lock: 503s for 12 s, every answer 4 s late. The holder keeps (renews) the
    lock; the other Valet waits for it and uses what it stored, instead of refreshing beside it with the spent
    refresh token and saving `needs_login` over the fresh grant."""
    with two_valets(auth_server, tmp_path, redis_url) as (first, second):
        login(first, auth_server, "erin")
        key, _ = first.new_key("erin", "e")
        assert subject(call_me(first, key)) == "subject=erin"
        time.sleep(max(0.0, expires(first, "erin") + 1.2 - time.time()))  # expired for both Valets
        refreshes = auth_server.stats()["refresh_token"]
        auth_server.control("ttl", seconds=60)  # the fresh token must outlive its 4 s late delivery
        auth_server.control("slow", seconds=4)
        auth_server.control("down", seconds=12)

        responses = asyncio.run(burst([(first, key), (second, key)] * 3))

        assert [subject(r) for r in responses] == ["subject=erin"] * 6
        assert auth_server.stats()["refresh_token"] == refreshes + 1, "one refresh, by the lock holder only"
        assert status(first)["erin"]["needs_login"] == "no"
        auth_server.control("slow", seconds=0)
        assert subject(call_me(second, key)) == "subject=erin", "the stored grant is the live one"
        assert not first.rows("user = 'erin' AND rpc_method = 'oauth/refresh' AND decision = 'error' "
                              "AND reason = 'invalid_grant'", expect=0)


def test_a_failed_proactive_refresh_serves_the_still_valid_token(
        auth_server: AuthServer, tmp_path: Path, redis_url: str) -> None:
    """The token is about to expire but still valid and the server answers 503: every call is served with the
    token it has, each Valet asks the server once (then backs off), instead of every waiting request running the
    whole retry cycle under the lock, one after another."""
    auth_server.control("ttl", seconds=15)  # refreshed from 3 s before expiry
    auth_server.control("grace", seconds=60)  # the resource server's clock is not what this test is about
    with two_valets(auth_server, tmp_path, redis_url) as (first, second):
        login(first, auth_server, "frank")
        key, _ = first.new_key("frank", "f")
        assert subject(call_me(first, key)) == "subject=frank"
        time.sleep(max(0.0, expires(first, "frank") - 1.5 - time.time()))  # expiring, still valid for >= 1.5 s
        auth_server.control("down", seconds=60)
        asked = auth_server.stats()["token_requests"]

        responses = asyncio.run(burst([(first, key), (second, key)] * 3))

        assert [subject(r) for r in responses] == ["subject=frank"] * 6
        assert auth_server.stats()["token_requests"] - asked <= 2, "one try per Valet, then back off"
        assert status(first)["frank"]["needs_login"] == "no"
        first.rows("user = 'frank' AND rpc_method = 'oauth/refresh' AND reason = 'authorization_server_unavailable'")


@pytest.mark.parametrize("style", ["crlf", "short"])
def test_unusable_tokens_from_the_server_are_refused(auth_server: AuthServer, tmp_path: Path, style: str) -> None:
    """A token with CR/LF would add upstream headers; one of 5 characters could never be scrubbed."""
    valet = start_valet(tmp_path, None, config_text=config(auth_server))
    try:
        login(valet, auth_server, "gus")
        key, _ = valet.new_key("gus", "g")
        assert subject(call_me(valet, key)) == "subject=gus"
        auth_server.control("issue", style=style)
        time.sleep(max(0.0, expires(valet, "gus") + 1.2 - time.time()))
        r = call_me(valet, key)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["data"]["reason"] == "oauth_unavailable" and "unusable token" in error["message"]
        assert "X-Injected" not in r.text and "fk-at" not in r.text
        row = valet.rows("user = 'gus' AND rpc_method = 'oauth/refresh' AND decision = 'error'")[-1]
        assert row["reason"] == "invalid_token_response"
        log = valet.log.read_text(errors="replace")
        assert "X-Injected" not in log and "fk-at" not in log
    finally:
        assert valet.stop() == 0
        assert_clean_log(valet)
