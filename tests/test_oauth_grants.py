"""The pieces of a safe refresh, one by one: compare-and-save of refusals, the Redis lock's renewal and
compare-and-delete release (against a real redis-server), and tokens a server must not be believed with."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from addon.oauth import client, refresher
from addon.oauth.grants import Grant, read_grant, save_grant, save_grant_if
from addon.secrets import vault as v


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(v.ENV_VAR, raising=False)
    v._ENV_CACHE.clear()


def grant(access: str, refresh: str) -> Grant:
    return Grant(access, refresh, time.time() + 60, "mcp", 60.0, time.time())


def test_a_refusal_is_saved_only_over_the_grant_that_was_refused(tmp_path: Path) -> None:
    vault = v.Vault(tmp_path, v.load_master_keys(tmp_path))
    old = grant("fake-at-old-0000", "fake-rt-old-0000")
    save_grant(vault, "cloud", "erin", old)
    fresh = grant("fake-at-new-0000", "fake-rt-new-0000")
    save_grant(vault, "cloud", "erin", fresh)  # another Valet refreshed meanwhile

    assert not save_grant_if(vault, "cloud", "erin", old.failed("invalid_grant", permanent=True), old)
    cache = v.SecretCache(tmp_path)
    cache.reload()
    assert read_grant(cache, "cloud", "erin") == fresh

    assert save_grant_if(vault, "cloud", "erin", fresh.failed("invalid_grant", permanent=True), fresh)
    cache.reload()
    stored = read_grant(cache, "cloud", "erin")
    assert stored is not None and stored.needs_login


def test_the_redis_lock_is_renewed_while_held_and_never_deleted_when_not_ours(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refresher, "LOCK_TTL_MS", 600)  # renewed every 0.2 s

    async def scenario() -> None:
        from coredis import Redis

        cache = v.SecretCache(tmp_path)
        r = refresher.Refresher(cache, lambda row: None, redis_url)
        redis = Redis.from_url(redis_url)
        key = "valet:oauth-refresh:cloud:erin"
        async with r._shared_lock("cloud", "erin") as holding:
            assert holding
            mine = await redis.get(key)
            await asyncio.sleep(1.5)  # more than twice the TTL: only renewal keeps it
            assert await redis.get(key) == mine, "renewed while the refresh runs"
            await redis.set(key, "someone-else")  # as if it had expired and another Valet took it
        assert await redis.get(key) in (b"someone-else", "someone-else"), "release is compare-and-delete"
        await redis.delete([key])
        await r.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("token", ["fk-at", "1234567", "fake-at-1\r\nX-Injected: 1", "fake at with space",
                                   "fake-at-\x00-000", "fake-at-é-0000"])
def test_tokens_a_server_must_not_be_believed_with(token: str) -> None:
    with pytest.raises(client.OAuthError) as info:
        client.Tokens.from_response({"access_token": token, "token_type": "Bearer", "expires_in": 60})
    assert info.value.code == "invalid_token_response" and token not in str(info.value)
    with pytest.raises(client.OAuthError):
        client.Tokens.from_response({"access_token": "fake-at-good-000", "refresh_token": token})
    assert client.Tokens.from_response({"access_token": "fake-at-good-000"}).access_token == "fake-at-good-000"
