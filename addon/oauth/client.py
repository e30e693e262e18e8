"""OAuth 2.1 as a client on the user's behalf: discovery, registration, PKCE login, refresh, revocation.

Protocol steps only: where grants are kept is :mod:`addon.oauth.grants`, when to
refresh is :mod:`addon.oauth.refresher`. Discovery follows the MCP authorization
spec, with the ``mcp`` SDK's URL builders and metadata models: the server's
401 ``WWW-Authenticate`` names its protected resource metadata (RFC 9728),
which names the authorization server, whose metadata (RFC 8414 / OIDC
discovery) gives the endpoints. Without a configured client id Valet registers
itself (RFC 7591). Every request carries the RFC 8707 ``resource``.

Discovery believes nothing it was not asked for: a ``resource_metadata`` URL
in the 401 must be on the server's own origin (else any upstream could make
Valet fetch an internal URL); the protected resource's ``resource`` must be the
server URL or a parent of it (RFC 9728 §3.3); the authorization server's
``issuer`` must be the URL its metadata was fetched for (RFC 8414 §3.3); and the
token, registration and revocation endpoints must be on the issuer's origin,
since that is where client secrets and refresh tokens go. Explicitly
configured endpoints are trusted as the operator wrote them.

Tokens and client secrets from a server are checked before they are stored:
at least 8 characters (shorter ones cannot be scrubbed from responses) and
visible ASCII only (a CR/LF in a token would add upstream headers).

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
from urllib.parse import urlencode, urlsplit

import httpx2
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
)
from mcp.shared.auth import OAuthMetadata, ProtectedResourceMetadata
from mcp.shared.auth_utils import check_resource_allowed
from pydantic import ValidationError

from addon.ops import logscrub

_RESOURCE_METADATA = re.compile(r'resource_metadata="([^"]+)"')
CLIENT_NAME = "Valet (MCP credential proxy)"
MIN_TOKEN_CHARS = 8
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what can go in a header, nothing that ends it


def http_client(ca_file: str | None = None, timeout: float = 10) -> httpx2.AsyncClient:
    """The HTTP client for authorization servers: no proxy from the environment, Valet's upstream CA.

    ``HTTP(S)_PROXY`` in Valet's environment is for Valet's operator tools, not
    a route for refresh tokens and client secrets; ``upstream_ca_file`` is the
    trust the operator configured for upstreams, authorization servers included.
    """
    return httpx2.AsyncClient(timeout=timeout, trust_env=False, verify=ca_file or True)


def check_token(value: str, what: str) -> str:
    """A token or client secret from a server: refused (never echoed) unless at least 8 visible ASCII chars."""
    if len(value) < MIN_TOKEN_CHARS or not _TOKEN_CHARS.fullmatch(value):
        raise OAuthError(f"the authorization server sent an unusable {what} (shorter than {MIN_TOKEN_CHARS} "
                         "characters, or with control, space or non-ASCII characters)", "invalid_token_response")
    return value


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _same_url(a: str, b: str) -> bool:
    return origin(a) == origin(b) and urlsplit(a).path.rstrip("/") == urlsplit(b).path.rstrip("/")


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
        scope = body.get("scope") if valid_scope(body.get("scope")) else None
        check_token(access, "access token")
        if refresh is not None:
            check_token(refresh, "refresh token")
        return cls(access, refresh, time.time() + lifetime if lifetime else None, scope, lifetime)


# RFC 6749 §3.3: scope = scope-token *( SP scope-token ), scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")
MAX_SCOPE_CHARS = 1024


def valid_scope(scope: object) -> bool:
    """A ``scope`` an authorization server may send back: RFC 6749's grammar, bounded. Anything else (control
    characters that would drive the operator's terminal, any length) is not kept, nor printed (review 4 H10):
    the grant then holds no scope, and the CLI shows ``-``."""
    return isinstance(scope, str) and len(scope) <= MAX_SCOPE_CHARS and _SCOPE.fullmatch(scope) is not None


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


async def discover(http: httpx2.AsyncClient, server_url: str, overrides: dict[str, str | None]) -> Endpoints:
    """Endpoints for an MCP server: explicit ones from the config win, the rest are discovered and checked."""
    resource = overrides.get("resource") or server_url
    probe = await http.post(server_url, json={"jsonrpc": "2.0", "id": 0, "method": "ping"},
                            headers={"accept": "application/json, text/event-stream"})
    found = _RESOURCE_METADATA.search(probe.headers.get("www-authenticate", "")) if probe.status_code == 401 else None
    if found is not None and origin(found.group(1)) != origin(server_url):
        raise OAuthError(f"{server_url} names protected resource metadata on another origin: refused "
                         "(configure the OAuth endpoints explicitly if this is intended)", "discovery")
    auth_server: str | None = None
    for url in build_protected_resource_metadata_discovery_urls(found.group(1) if found else None, server_url):
        prm = await _metadata(http, url, ProtectedResourceMetadata)
        if prm is not None:
            if not check_resource_allowed(server_url, str(prm.resource)):
                raise OAuthError(f"the protected resource metadata of {server_url} is for another resource "
                                 "(RFC 9728 §3.3): refused", "discovery")
            resource = overrides.get("resource") or str(prm.resource)
            auth_server = str(prm.authorization_servers[0]) if prm.authorization_servers else None
            break
    # Without protected resource metadata, the MCP spec's fallback: the server's origin is the issuer.
    expected_issuer = auth_server or "{0}://{1}".format(*urlsplit(server_url)[:2])
    meta: OAuthMetadata | None = None
    refused: str | None = None
    for url in build_oauth_authorization_server_metadata_discovery_urls(auth_server, server_url):
        meta = await _metadata(http, url, OAuthMetadata)
        if meta is not None:
            if not _same_url(str(meta.issuer), expected_issuer):
                # Not believed at all; explicitly configured endpoints can still do without it.
                refused = (f"the authorization server metadata fetched for {expected_issuer} names another "
                           "issuer (RFC 8414 §3.3): refused")
                meta = None
            break
    issuer = str(meta.issuer) if meta else (auth_server or "")

    def pick(name: str, discovered: Any) -> str | None:
        value = overrides.get(name)
        if value:
            return value  # configured explicitly: the operator's choice
        if discovered is None:
            return None
        url = str(discovered)
        if origin(url) != origin(issuer):
            raise OAuthError(f"the {name.replace('_', ' ')} is not on the issuer's origin ({issuer}): refused "
                             f"(configure oauth.{name} explicitly if this is intended)", "discovery")
        return url

    authorization = pick("authorization_endpoint", meta.authorization_endpoint if meta else None)
    token = pick("token_endpoint", meta.token_endpoint if meta else None)
    if not authorization or not token:
        raise OAuthError(refused or f"no OAuth endpoints found for {server_url}: configure them explicitly",
                         "discovery")
    if meta is not None and meta.code_challenge_methods_supported is not None \
            and "S256" not in meta.code_challenge_methods_supported:
        raise OAuthError("the authorization server does not support PKCE S256", "discovery")
    return Endpoints(
        authorization_endpoint=authorization, token_endpoint=token,
        registration_endpoint=pick("registration_endpoint", meta.registration_endpoint if meta else None),
        revocation_endpoint=pick("revocation_endpoint", meta.revocation_endpoint if meta else None),
        resource=resource,
        issuer=issuer,
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
    secret = data.get("client_secret")
    if secret is not None:
        if not isinstance(secret, str):
            raise OAuthError("the registration response has a client_secret that is not a string", "registration")
        check_token(secret, "client secret")
    return Client(data["client_id"], secret, redirect_uri)


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
    logscrub.remember_values((f"OAUTH_{name.upper()}", form[name]) for name in _SECRET_FORM_FIELDS if form.get(name))
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
        code = error_code(body.get("error") if isinstance(body, dict) else None)
        permanent = code in ("invalid_grant", "invalid_client", "unauthorized_client")
        raise OAuthError(f"token endpoint refused: {code or 'HTTP ' + str(response.status_code)}", code, permanent)
    tokens = Tokens.from_response(body, previous_refresh)
    logscrub.remember_values((("OAUTH_ACCESS_TOKEN", tokens.access_token),
                              ("OAUTH_REFRESH_TOKEN", tokens.refresh_token or "")))
    return tokens


# What a token request sends that must never appear in a log line (the log guard learns it before sending).
_SECRET_FORM_FIELDS = ("refresh_token", "code", "code_verifier", "client_secret")

# The registered OAuth error codes a token endpoint answers with (RFC 6749 §5.2, RFC 6750 §3.1, RFC 8628
# §3.5, RFC 8707 §2, RFC 9449 §12.2, OpenID Connect Core §3.1.2.6). Only these are kept: the ``error``
# member is the server's text, and it goes into Valet's log, the audit row and the vault's grant.
ERROR_CODES = frozenset({
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client", "unsupported_grant_type",
    "invalid_scope", "access_denied", "server_error", "temporarily_unavailable", "invalid_token",
    "insufficient_scope", "authorization_pending", "slow_down", "expired_token", "invalid_target",
    "invalid_dpop_proof", "use_dpop_nonce", "interaction_required", "login_required", "consent_required",
})
UNRECOGNIZED = "unrecognized_error"


def error_code(value: Any) -> str:
    """The server's ``error`` if it is a registered code, else ``unrecognized_error`` ("" when absent).

    Never the server's text itself: a token endpoint (buggy, hostile, or anything on the path to it)
    answered ``{"error": "bad\\n<the refresh token it was sent>"}``, and Valet logged it raw: the refresh
    token in ``valet.log`` and a forged log line (review 3, G4). ``error_description`` is never read.
    """
    if value is None or value == "":
        return ""
    return value if isinstance(value, str) and value in ERROR_CODES else UNRECOGNIZED


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
