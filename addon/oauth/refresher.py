"""Keep each user's OAuth access token fresh: proactively before expiry, reactively after a 401.

Single flight: per (server, user) one refresh at a time in this process (an
asyncio lock), and across processes sharing a Redis (the rate-limit storage) a
Redis lock; whoever waits re-reads the vault afterwards and uses the token the
winner stored. The rotated refresh token is written to the vault before the new
access token is used, so a crash can never lose the only valid refresh token.

Failures: an ``invalid_grant`` (revoked, expired, reused refresh token) marks
the grant as needing a new login and the agent gets ``reauth_required`` with
the command to run; a transient failure (network, 5xx, 429) is retried with
backoff and leaves the grant as it was. Every refresh and failure is audited.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2

from addon.oauth import client as oauth
from addon.config import ServerConfig
from addon.protocol.errors import Cause, Refusal
from addon.filewatch import reload_if_stale
from addon.oauth.grants import Grant, Registration, read_grant, read_registration, save_grant
from addon.oauth.client import Client, OAuthError
from addon.secrets.vault import SecretCache

log = logging.getLogger("valet.oauth")
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)
LOCK_TTL_MS = 15_000
Audit = Callable[[dict[str, Any]], None]


def reauth(server: str, user: str, why: str) -> Refusal:
    return Refusal(Cause.REAUTH_REQUIRED,
                   f"{why}: an operator must run `valet oauth login {server} --user {user}`",
                   data={"command": f"valet oauth login {server} --user {user}"})


class Refresher:
    def __init__(self, secrets_cache: SecretCache, audit: Audit, redis_url: str | None = None) -> None:
        self.cache = secrets_cache
        self.audit = audit
        self.http = httpx2.AsyncClient(timeout=10)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._redis: Any = None
        if redis_url:
            from coredis import Redis

            self._redis = Redis.from_url(redis_url)

    async def _fresh_cache(self) -> None:
        await reload_if_stale(self.cache)

    async def access_token(self, name: str, server: ServerConfig, user: str) -> Grant:
        """The grant to use now, refreshed first if it is about to expire."""
        await self._fresh_cache()
        grant = read_grant(self.cache, name, user)
        if grant is None:
            raise reauth(name, user, f"user {user!r} has no OAuth grant for {name}")
        if grant.needs_login:
            raise reauth(name, user, f"the OAuth grant of {user!r} for {name} was refused by its server")
        if not grant.expiring():
            return grant
        return await self.refresh(name, server, user, stale=grant.access_token)

    async def refresh(self, name: str, server: ServerConfig, user: str, stale: str) -> Grant:
        """Refresh unless someone already replaced ``stale``; one refresh at a time per (server, user)."""
        lock = self._locks.setdefault((name, user), asyncio.Lock())
        async with lock, self._shared_lock(name, user):
            await self._fresh_cache()
            grant = read_grant(self.cache, name, user)
            if grant is None or grant.needs_login:
                raise reauth(name, user, f"user {user!r} has no usable OAuth grant for {name}")
            if grant.access_token != stale and not grant.expiring():
                return grant  # refreshed meanwhile, here or by another Valet
            return await self._refresh(name, server, user, grant)

    async def _refresh(self, name: str, server: ServerConfig, user: str, grant: Grant) -> Grant:
        registration = read_registration(self.cache, name)
        if registration is None or not grant.refresh_token:
            await self._persist(name, user, grant.failed("no_refresh_token", permanent=True))
            raise reauth(name, user, "the grant cannot be refreshed (no refresh token or client registration)")
        client = self._client(name, server, registration)
        scopes = " ".join(server.oauth.scopes) if server.oauth and server.oauth.scopes else None
        started = time.monotonic()
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS)):
            if delay:
                await asyncio.sleep(delay)
            try:
                tokens = await oauth.refresh(self.http, registration.endpoints, client, grant.refresh_token, scopes)
            except OAuthError as exc:
                if exc.permanent:
                    await self._persist(name, user, grant.failed(exc.code, permanent=True))
                    self._event(name, user, "error", exc.code or "refresh_refused", started)
                    raise reauth(name, user, f"the authorization server refused the refresh ({exc.code})") from None
                log.warning("OAuth refresh for %s/%s failed (%s), attempt %d", name, user, exc.code, attempt + 1)
                continue
            fresh = Grant.from_tokens(tokens, grant)
            await self._persist(name, user, fresh)  # the rotated refresh token is stored before it is used
            self._event(name, user, "allow", "refreshed", started)
            return fresh
        self._event(name, user, "error", "authorization_server_unavailable", started)
        if not grant.expired():
            return grant  # still valid for a moment: use it, try again on the next request
        raise Refusal(Cause.OAUTH_UNAVAILABLE, f"the authorization server of {name} is unavailable; the grant is "
                      "kept, retry later")

    def _client(self, name: str, server: ServerConfig, registration: Registration) -> Client:
        secret = registration.client.client_secret
        if server.oauth is not None and server.oauth.client_secret:
            from addon.secrets.templates import names

            (secret_name,) = names(server.oauth.client_secret)
            secret = self.cache.lookup_exact(name, "", secret_name) or secret
        client_id = (server.oauth.client_id if server.oauth and server.oauth.client_id
                     else registration.client.client_id)
        return Client(client_id, secret, registration.client.redirect_uri)

    async def _persist(self, name: str, user: str, grant: Grant) -> None:
        await asyncio.to_thread(save_grant, self.cache.vault, name, user, grant)
        await asyncio.to_thread(self.cache.reload)

    @asynccontextmanager
    async def _shared_lock(self, name: str, user: str) -> AsyncIterator[None]:
        if self._redis is None:
            yield
            return
        key, token = f"valet:oauth-refresh:{name}:{user}", secrets.token_hex(8)
        deadline = time.monotonic() + LOCK_TTL_MS / 1000
        from coredis.tokens import PureToken

        while not await self._redis.set(key, token, condition=PureToken.NX, px=LOCK_TTL_MS):
            if time.monotonic() > deadline:
                break  # the holder died without releasing: its lock has expired by now
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            if await self._redis.get(key) in (token, token.encode()):
                await self._redis.delete([key])

    def _event(self, name: str, user: str, decision: str, reason: str, started: float) -> None:
        self.audit({"server": name, "user": user, "http_method": "OAUTH", "http_path": "refresh",
                    "rpc_method": "oauth/refresh", "decision": decision, "reason": reason,
                    "duration_ms": round((time.monotonic() - started) * 1000, 3)})

    async def close(self) -> None:
        await self.http.aclose()
