"""Where OAuth grants and client registrations live: in the vault, encrypted like any secret.

A user's grant for a server is the secret ``OAUTH_GRANT`` of that (server,
user); the server's client registration and discovered endpoints are its shared
secret ``OAUTH_CLIENT``. Both hold JSON. The ``OAUTH_`` prefix is reserved:
``valet secret set`` refuses it and ``${secret:OAUTH_...}`` cannot be injected.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from addon.oauth.client import Client, Endpoints, Tokens
from addon.ops import logscrub
from addon.secrets.vault import SecretCache, Vault

GRANT = "OAUTH_GRANT"
CLIENT = "OAUTH_CLIENT"
RESERVED_PREFIX = "OAUTH_"


@dataclass(frozen=True)
class Grant:
    access_token: str
    refresh_token: str | None
    expires_at: float | None
    scope: str | None
    lifetime: float | None
    obtained_at: float
    refreshed_at: float | None = None
    needs_login: bool = False
    failure: str | None = None  # the OAuth error code of the last failed refresh

    @classmethod
    def from_tokens(cls, tokens: Tokens, previous: Grant | None = None) -> Grant:
        now = time.time()
        return cls(tokens.access_token, tokens.refresh_token, tokens.expires_at, tokens.scope or (
            previous.scope if previous else None), tokens.lifetime, previous.obtained_at if previous else now,
            now if previous else None)

    def expiring(self, now: float | None = None) -> bool:
        """Refresh ahead of expiry by a fifth of the token's lifetime, between half a second and a minute."""
        if self.expires_at is None:
            return False
        margin = min(60.0, max(0.5, (self.lifetime or 300.0) * 0.2))
        return (now or time.time()) >= self.expires_at - margin

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def failed(self, code: str, permanent: bool) -> Grant:
        return replace(self, failure=code, needs_login=self.needs_login or permanent)

    def secrets(self) -> dict[str, str]:
        """The values to redact from everything that flows back."""
        values = {"OAUTH_ACCESS_TOKEN": self.access_token}
        if self.refresh_token:
            values["OAUTH_REFRESH_TOKEN"] = self.refresh_token
        return values

    def dump(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Registration:
    client: Client
    endpoints: Endpoints

    def dump(self) -> str:
        return json.dumps({"client": asdict(self.client), "endpoints": self.endpoints.to_json()})

    @classmethod
    def load(cls, text: str) -> Registration:
        data = json.loads(text)
        return cls(Client(**data["client"]), Endpoints.from_json(data["endpoints"]))


def parse_grant(text: str | None) -> Grant | None:
    """A grant as stored; its tokens are known to the log guard from here on (before any of them is
    sent anywhere, so a token endpoint that echoes the refresh token cannot put it in a log line)."""
    if text is None:
        return None
    data: dict[str, Any] = json.loads(text)
    grant = Grant(**data)
    logscrub.remember_values(grant.secrets().items())
    return grant


def read_grant(cache: SecretCache, server: str, user: str) -> Grant | None:
    return parse_grant(cache.lookup_exact(server, user, GRANT))


def read_registration(cache: SecretCache, server: str) -> Registration | None:
    text = cache.lookup_exact(server, "", CLIENT)
    if text is None:
        return None
    registration = Registration.load(text)
    if registration.client.client_secret:
        logscrub.remember_values((("OAUTH_CLIENT_SECRET", registration.client.client_secret),))
    return registration


def save_grant(vault: Vault, server: str, user: str, grant: Grant) -> None:
    vault.set(server, user, GRANT, grant.dump())


def save_grant_if(vault: Vault, server: str, user: str, grant: Grant, expected: Grant) -> bool:
    """Compare-and-save: store ``grant`` only if the vault still holds ``expected`` (same tokens).

    A refusal (``needs_login``) is about the tokens that were refused; if
    another Valet or a new login stored a fresh grant meanwhile, the refusal
    must not overwrite it. Read, compare and write are one vault transaction.
    Returns False when the vault held something else.
    """
    def unchanged(current: str | None) -> bool:
        held = parse_grant(current)
        return held is not None and (held.access_token, held.refresh_token) == (
            expected.access_token, expected.refresh_token)

    return vault.set(server, user, GRANT, grant.dump(), expect=unchanged) is not None


def save_registration(vault: Vault, server: str, registration: Registration) -> None:
    vault.set(server, None, CLIENT, registration.dump())
