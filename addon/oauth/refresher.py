"""Keep each user's OAuth access token fresh: proactively before expiry, reactively after a 401.

Single flight, in two rings:

- In this process, one refresh per (server, user) at a time, as one shared
  future: every request that needs the refresh awaits the same result instead
  of queueing up to run its own retry cycle after it.
- Across processes sharing a Redis (the rate-limit storage), a Redis lock
  (``SET NX PX`` with a random token). The holder renews it while its refresh
  runs, so the lock never expires under a slow authorization server; release
  and renewal are compare-and-act Lua scripts, so a holder can never delete or
  extend a lock that is no longer its own. Waiters wait for the holder (never
  refresh without the lock) and then re-read the vault, where the holder
  stored the rotated grant.

The rotated refresh token is written to the vault before the new access
token is used, so a crash can never lose the only valid refresh token.

Failures: an ``invalid_grant`` (revoked, expired, reused refresh token) marks
the grant as needing a new login, but only if the vault still holds the grant
that was refused (compare-and-save: another Valet may have stored a fresh one
meanwhile, which is then used). A transient failure (network, 5xx, 429) on a
token that is still valid is not an error to the agent: the still-valid token
is served, and this grant backs off (1 s, doubling to 30 s) before the next
try. On an expired token the refresh is retried with backoff within a bounded
budget, then the agent gets ``oauth_unavailable``. Every refresh and failure
is audited.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import httpx2

from addon.config import ServerConfig
from addon.filewatch import reload_if_stale
from addon.oauth import client as oauth
from addon.oauth.client import Client, OAuthError
from addon.oauth.grants import Grant, Registration, read_grant, read_registration, save_grant, save_grant_if
from addon.protocol.errors import Cause, Refusal
from addon.secrets.vault import SecretCache

log = logging.getLogger("valet.oauth")
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)
HTTP_TIMEOUT = 10.0  # one token request
REFRESH_BUDGET = 30.0  # no new attempt starts after this many seconds of one refresh
LOCK_TTL_MS = 10_000  # renewed every third of it while the holder works
LOCK_WAIT = REFRESH_BUDGET + HTTP_TIMEOUT + 5.0  # the longest a holder can keep the lock, and a margin
PROACTIVE_WAIT = 2.0  # a request whose token is still valid waits at most this for a fresh one
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
Audit = Callable[[dict[str, Any]], None]

# KEYS[1] the lock, ARGV[1] our token: act only if the lock is still ours.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
          "else return 0 end")


def reauth(server: str, user: str, why: str) -> Refusal:
    return Refusal(Cause.REAUTH_REQUIRED,
                   f"{why}: an operator must run `valet oauth login {server} --user {user}`",
                   data={"command": f"valet oauth login {server} --user {user}"})


def unavailable(server: str, why: str = "is unavailable") -> Refusal:
    return Refusal(Cause.OAUTH_UNAVAILABLE, f"the authorization server of {server} {why}; the grant is kept, "
                   "retry later")


@dataclass
class _Backoff:
    refresh_token: str | None  # the grant it is about: a new grant (a new login) starts afresh
    failures: int
    until: float  # monotonic


class Refresher:
    def __init__(self, secrets_cache: SecretCache, audit: Audit, redis_url: str | None = None,
                 ca_file: Callable[[], str | None] | None = None) -> None:
        self.cache = secrets_cache
        self.audit = audit
        self._ca_file = ca_file or (lambda: None)
        self._clients: dict[str | None, httpx2.AsyncClient] = {}
        self._flights: dict[tuple[str, str], asyncio.Future[Grant]] = {}
        self._backoff: dict[tuple[str, str], _Backoff] = {}
        self._redis: Any = None
        if redis_url:
            from coredis import Redis

            self._redis = Redis.from_url(redis_url)

    @property
    def http(self) -> httpx2.AsyncClient:
        """No proxy from the environment; the configured upstream CA (followed across config reloads)."""
        ca = self._ca_file()
        client = self._clients.get(ca)
        if client is None:
            client = self._clients[ca] = oauth.http_client(ca, HTTP_TIMEOUT)
        return client

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
        backoff = self._backoff.get((name, user))
        if backoff is not None and backoff.refresh_token == grant.refresh_token and time.monotonic() < backoff.until:
            if not grant.expired():
                return grant  # the last try failed moments ago: serve the still-valid token, try again later
            raise unavailable(name, f"is unavailable (next try in {backoff.until - time.monotonic():.0f}s)")
        if grant.expired():
            return await self.refresh(name, server, user, stale=grant.access_token)
        flight = self._flight(name, server, user, grant.access_token, urgent=False)
        try:  # still valid: wait a moment for the fresh token, else use this one while the refresh goes on
            return await asyncio.wait_for(asyncio.shield(flight),
                                          max(0.0, min(PROACTIVE_WAIT, grant.expires_at - time.time() - 0.5)))
        except TimeoutError:
            return grant

    async def refresh(self, name: str, server: ServerConfig, user: str, stale: str) -> Grant:
        """Refresh unless someone already replaced ``stale``; every caller shares the one refresh in flight.

        Called when the token cannot be used any more (expired, or refused by the
        upstream with a 401): the refresh retries within its budget."""
        return await asyncio.shield(self._flight(name, server, user, stale, urgent=True))

    def _flight(self, name: str, server: ServerConfig, user: str, stale: str,
                urgent: bool) -> asyncio.Future[Grant]:
        key = (name, user)
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = asyncio.ensure_future(self._fly(name, server, user, stale, urgent))
            flight.add_done_callback(lambda f: self._landed(key, f))
        return flight

    def _landed(self, key: tuple[str, str], flight: asyncio.Future[Grant]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: a refresh nobody waits for any more is not an "unhandled" error

    async def _fly(self, name: str, server: ServerConfig, user: str, stale: str, urgent: bool) -> Grant:
        try:
            async with self._shared_lock(name, user) as holding:
                await self._fresh_cache()
                grant = read_grant(self.cache, name, user)
                if grant is None or grant.needs_login:
                    raise reauth(name, user, f"user {user!r} has no usable OAuth grant for {name}")
                if grant.access_token != stale and not grant.expiring():
                    return grant  # refreshed meanwhile, here or by another Valet
                if not holding:  # another Valet holds the refresh far longer than it can: never refresh beside it
                    if not grant.expired():
                        return grant
                    raise unavailable(name, "is being refreshed by another Valet that does not finish")
                return await self._refresh(name, server, user, grant, urgent)
        except _LockUnavailable:
            grant = read_grant(self.cache, name, user)
            if grant is not None and not grant.needs_login and not grant.expired():
                return grant
            raise unavailable(name, "cannot be refreshed now (the shared refresh lock is unreachable)") from None

    async def _refresh(self, name: str, server: ServerConfig, user: str, grant: Grant, urgent: bool) -> Grant:
        registration = read_registration(self.cache, name)
        if registration is None or not grant.refresh_token:
            await self._refused(name, user, grant, "no_refresh_token")
            raise reauth(name, user, "the grant cannot be refreshed (no refresh token or client registration)")
        client = self._client(name, server, registration)
        scopes = " ".join(server.oauth.scopes) if server.oauth and server.oauth.scopes else None
        started = time.monotonic()
        # A token that is still valid gets one try now and more on later requests (backoff): requests are
        # served meanwhile. An expired one (or one the upstream refused) is retried here, within the budget:
        # nothing can be served without a new one.
        urgent = urgent or grant.expired()
        delays = (0.0, *RETRY_DELAYS) if urgent else (0.0,)
        failure = "authorization_server_unavailable"
        for attempt, delay in enumerate(delays):
            if delay:
                if time.monotonic() - started + delay > REFRESH_BUDGET:
                    break
                await asyncio.sleep(delay)
            try:
                tokens = await oauth.refresh(self.http, registration.endpoints, client, grant.refresh_token, scopes)
            except OAuthError as exc:
                if exc.permanent:
                    self._event(name, user, "error", exc.code or "refresh_refused", started)
                    fresh = await self._refused(name, user, grant, exc.code)
                    if fresh is not None:
                        return fresh  # another Valet or a new login stored a fresh grant meanwhile: use it
                    raise reauth(name, user, f"the authorization server refused the refresh ({exc.code})") from None
                log.warning("OAuth refresh for %s/%s failed (%s), attempt %d", name, user, exc.code, attempt + 1)
                if exc.code == "invalid_token_response":
                    failure = exc.code
                    break  # the server answered, with something unusable: asking again the same way will not help
                continue
            fresh = Grant.from_tokens(tokens, grant)
            await self._persist(name, user, fresh)  # the rotated refresh token is stored before it is used
            self._backoff.pop((name, user), None)
            self._event(name, user, "allow", "refreshed", started)
            return fresh
        self._back_off(name, user, grant)
        self._event(name, user, "error", failure, started)
        if not urgent and not grant.expired():
            return grant  # still valid: serve it, try again after the backoff
        if failure == "invalid_token_response":
            raise unavailable(name, "sent an unusable token (too short, or with control characters)")
        raise unavailable(name)

    def _back_off(self, name: str, user: str, grant: Grant) -> None:
        previous = self._backoff.get((name, user))
        failures = previous.failures + 1 if previous and previous.refresh_token == grant.refresh_token else 1
        delay = BACKOFF[min(failures, len(BACKOFF)) - 1]
        self._backoff[(name, user)] = _Backoff(grant.refresh_token, failures, time.monotonic() + delay)

    async def _refused(self, name: str, user: str, grant: Grant, code: str) -> Grant | None:
        """Save the refusal only over the grant that was refused; else return the fresh grant found instead."""
        saved = await asyncio.to_thread(save_grant_if, self.cache.vault, name, user,
                                        grant.failed(code, permanent=True), grant)
        await asyncio.to_thread(self.cache.reload)
        if saved:
            return None
        current = read_grant(self.cache, name, user)
        log.info("OAuth refresh for %s/%s was refused, but the vault holds a newer grant: kept", name, user)
        return current if current is not None and not current.needs_login and not current.expired() else None

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
    async def _shared_lock(self, name: str, user: str) -> AsyncIterator[bool]:
        """Yields True while this process holds the cross-process lock (renewed), False if it gave up waiting."""
        if self._redis is None:
            yield True
            return
        from coredis.exceptions import RedisError
        from coredis.tokens import PureToken

        key, token = f"valet:oauth-refresh:{name}:{user}", secrets.token_hex(16)
        deadline = time.monotonic() + LOCK_WAIT
        try:
            while not await self._redis.set(key, token, condition=PureToken.NX, px=LOCK_TTL_MS):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            else:
                renewer = asyncio.ensure_future(self._renew(key, token))
                try:
                    yield True
                finally:
                    renewer.cancel()
                    with suppress(asyncio.CancelledError):
                        await renewer
                    with suppress(RedisError, OSError):
                        await self._redis.eval(_RELEASE, keys=[key], args=[token])
                return
        except (RedisError, OSError):
            raise _LockUnavailable() from None
        yield False

    async def _renew(self, key: str, token: str) -> None:
        """Keep the lock ours while the refresh runs; a lock taken over meanwhile is never extended."""
        from coredis.exceptions import RedisError

        while True:
            await asyncio.sleep(LOCK_TTL_MS / 3000)
            try:
                if not await self._redis.eval(_RENEW, keys=[key], args=[token, str(LOCK_TTL_MS)]):
                    log.warning("the OAuth refresh lock %s was lost while refreshing", key)
                    return
            except (RedisError, OSError) as exc:
                log.warning("renewing the OAuth refresh lock failed: %s", type(exc).__name__)

    def _event(self, name: str, user: str, decision: str, reason: str, started: float) -> None:
        self.audit({"server": name, "user": user, "http_method": "OAUTH", "http_path": "refresh",
                    "rpc_method": "oauth/refresh", "decision": decision, "reason": reason,
                    "duration_ms": round((time.monotonic() - started) * 1000, 3)})

    async def close(self) -> None:
        for flight in list(self._flights.values()):
            flight.cancel()
        for client in self._clients.values():
            await client.aclose()


class _LockUnavailable(Exception):
    """Redis could not be asked for the refresh lock."""
