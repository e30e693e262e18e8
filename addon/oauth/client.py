"""OAuth 2.1 as a client on the user's behalf: discovery, registration, PKCE login, refresh, revocation.

Protocol steps only: where grants are kept is :mod:`addon.oauth.grants`, when to
refresh is :mod:`addon.oauth.refresher`. Discovery follows the MCP authorization
spec, with the ``mcp`` SDK's URL builders and metadata models: the server's
401 ``WWW-Authenticate`` names its protected resource metadata (RFC 9728),
which names the authorization server, whose metadata (RFC 8414 / OIDC
discovery) gives the endpoints. Without a configured client id Valet registers
itself (RFC 7591). Every request carries the RFC 8707 ``resource``.

No function here logs or raises a token value; errors carry the OAuth error
code and the endpoint, never a response body.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

import httpx2
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
)
from mcp.shared.auth import OAuthMetadata, ProtectedResourceMetadata
from pydantic import ValidationError

_RESOURCE_METADATA = re.compile(r'resource_metadata="([^"]+)"')
CLIENT_NAME = "Valet (MCP credential proxy)"


class OAuthError(Exception):
    """A failed OAuth exchange; ``permanent`` means a new login is needed (invalid_grant...)."""

    def __init__(self, message: str, code: str = "", permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent


@dataclass(frozen=True)
class Endpoints:
    authorization_endpoint: str
    token_endpoint: str
    registration_endpoint: str | None
    revocation_endpoint: str | None
    resource: str
    issuer: str
    scopes_supported: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "scopes_supported": list(self.scopes_supported)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Endpoints:
        return cls(**{**data, "scopes_supported": tuple(data.get("scopes_supported") or ())})


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str | None = None
    redirect_uri: str | None = None


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_at: float | None  # epoch seconds
    scope: str | None
    lifetime: float | None  # seconds the access token was issued for

    @classmethod
    def from_response(cls, body: dict[str, Any], previous_refresh: str | None = None) -> Tokens:
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise OAuthError("the token response has no access_token", "invalid_response")
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            raise OAuthError("only Bearer tokens are supported", "unsupported_token_type")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else None
        refresh = body.get("refresh_token") if isinstance(body.get("refresh_token"), str) else previous_refresh
        scope = body.get("scope") if isinstance(body.get("scope"), str) else None
        return cls(access, refresh, time.time() + lifetime if lifetime else None, scope, lifetime)


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


async def discover(http: httpx2.AsyncClient, server_url: str, overrides: dict[str, str | None]) -> Endpoints:
    """Endpoints for an MCP server: explicit ones from the config win, the rest are discovered."""
    resource = overrides.get("resource") or server_url
    probe = await http.post(server_url, json={"jsonrpc": "2.0", "id": 0, "method": "ping"},
                            headers={"accept": "application/json, text/event-stream"})
    found = _RESOURCE_METADATA.search(probe.headers.get("www-authenticate", "")) if probe.status_code == 401 else None
    auth_server: str | None = None
    for url in build_protected_resource_metadata_discovery_urls(found.group(1) if found else None, server_url):
        prm = await _metadata(http, url, ProtectedResourceMetadata)
        if prm is not None:
            resource = overrides.get("resource") or str(prm.resource)
            auth_server = str(prm.authorization_servers[0]) if prm.authorization_servers else None
            break
    meta: OAuthMetadata | None = None
    for url in build_oauth_authorization_server_metadata_discovery_urls(auth_server, server_url):
        meta = await _metadata(http, url, OAuthMetadata)
        if meta is not None:
            break
    def pick(name: str, discovered: Any) -> str | None:
        value = overrides.get(name)
        return value or (str(discovered) if discovered is not None else None)

    authorization = pick("authorization_endpoint", meta.authorization_endpoint if meta else None)
    token = pick("token_endpoint", meta.token_endpoint if meta else None)
    if not authorization or not token:
        raise OAuthError(f"no OAuth endpoints found for {server_url}: configure them explicitly", "discovery")
    if meta is not None and meta.code_challenge_methods_supported is not None \
            and "S256" not in meta.code_challenge_methods_supported:
        raise OAuthError("the authorization server does not support PKCE S256", "discovery")
    return Endpoints(
        authorization_endpoint=authorization, token_endpoint=token,
        registration_endpoint=pick("registration_endpoint", meta.registration_endpoint if meta else None),
        revocation_endpoint=pick("revocation_endpoint", meta.revocation_endpoint if meta else None),
        resource=resource,
        issuer=str(meta.issuer) if meta else (auth_server or ""),
        scopes_supported=tuple(meta.scopes_supported or ()) if meta else (),
    )


async def _metadata(http: httpx2.AsyncClient, url: str, model: Any) -> Any:
    try:
        response = await http.get(url, headers={"accept": "application/json"})
    except httpx2.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return model.model_validate_json(response.content)
    except ValidationError:
        return None


async def register(http: httpx2.AsyncClient, endpoints: Endpoints, redirect_uri: str, scopes: str | None) -> Client:
    if not endpoints.registration_endpoint:
        raise OAuthError("the authorization server offers no dynamic registration: configure client_id", "registration")
    body: dict[str, Any] = {
        "client_name": CLIENT_NAME, "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_post",
    }
    if scopes:
        body["scope"] = scopes
    response = await http.post(endpoints.registration_endpoint, json=body)
    if response.status_code not in (200, 201):
        raise OAuthError(f"registration at {endpoints.registration_endpoint} failed: HTTP {response.status_code}",
                         "registration")
    data = response.json()
    if not isinstance(data.get("client_id"), str):
        raise OAuthError("the registration response has no client_id", "registration")
    return Client(data["client_id"], data.get("client_secret"), redirect_uri)


def authorization_url(endpoints: Endpoints, client: Client, redirect_uri: str, state: str, challenge: str,
                      scopes: str | None) -> str:
    params = {
        "response_type": "code", "client_id": client.client_id, "redirect_uri": redirect_uri, "state": state,
        "code_challenge": challenge, "code_challenge_method": "S256", "resource": endpoints.resource,
    }
    if scopes:
        params["scope"] = scopes
    separator = "&" if "?" in endpoints.authorization_endpoint else "?"
    return endpoints.authorization_endpoint + separator + urlencode(params)


async def exchange_code(http: httpx2.AsyncClient, endpoints: Endpoints, client: Client, code: str, verifier: str,
                        redirect_uri: str) -> Tokens:
    return await _token_request(http, endpoints, client, {
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": verifier,
    })


async def refresh(http: httpx2.AsyncClient, endpoints: Endpoints, client: Client, refresh_token: str,
                  scopes: str | None) -> Tokens:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scopes:
        form["scope"] = scopes
    return await _token_request(http, endpoints, client, form, previous_refresh=refresh_token)


async def _token_request(http: httpx2.AsyncClient, endpoints: Endpoints, client: Client, form: dict[str, str],
                         previous_refresh: str | None = None) -> Tokens:
    form = {**form, "client_id": client.client_id, "resource": endpoints.resource}
    if client.client_secret:
        form["client_secret"] = client.client_secret
    try:
        response = await http.post(endpoints.token_endpoint, data=form, headers={"accept": "application/json"})
    except httpx2.HTTPError as exc:
        raise OAuthError(f"token endpoint unreachable ({type(exc).__name__})", "unreachable") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise OAuthError(f"token endpoint answered HTTP {response.status_code}", "unavailable")
    try:
        body = response.json()
    except ValueError:
        raise OAuthError(f"token endpoint answered HTTP {response.status_code} without JSON", "invalid_response") \
            from None
    if response.status_code != 200:
        code = str(body.get("error", "")) if isinstance(body, dict) else ""
        permanent = code in ("invalid_grant", "invalid_client", "unauthorized_client")
        raise OAuthError(f"token endpoint refused: {code or 'HTTP ' + str(response.status_code)}", code, permanent)
    return Tokens.from_response(body, previous_refresh)


async def revoke(http: httpx2.AsyncClient, endpoints: Endpoints, client: Client, token: str, hint: str) -> bool:
    """RFC 7009; False when the server has no revocation endpoint or refused."""
    if not endpoints.revocation_endpoint:
        return False
    form = {"token": token, "token_type_hint": hint, "client_id": client.client_id}
    if client.client_secret:
        form["client_secret"] = client.client_secret
    try:
        response = await http.post(endpoints.revocation_endpoint, data=form)
    except httpx2.HTTPError:
        return False
    return response.status_code == 200
