"""A real OAuth 2.1 authorization server and the MCP server it protects, for Valet's OAuth tests.

Built on the ``mcp`` SDK's own authorization-server handlers (authorize, token,
registration, revocation, RFC 8414 metadata) and resource-server pieces (RFC
9728 protected resource metadata, bearer-token middleware, ``WWW-Authenticate``
on 401). The provider below is the server's memory: it issues access tokens
that live ``--access-ttl`` seconds and refresh tokens that rotate on every use
(the old one stops working at once).

The login step a person would do in a browser is ``GET /login?pending=...&user=NAME``:
the authorize endpoint sends the browser there, and it sends the browser on to
the client's redirect URI with a code. Tests drive it with an HTTP client.

Test controls (not OAuth): ``GET /_oauth/stats`` counts token requests by grant
type; ``POST /_oauth/revoke?user=NAME`` revokes that user's refresh tokens;
``POST /_oauth/down?seconds=N`` makes the token endpoint answer 503 for N
seconds; ``POST /_oauth/expire?user=NAME`` expires that user's access tokens now;
``POST /_oauth/slow?seconds=N`` makes every token endpoint answer wait N seconds
after the request was processed (a refresh token is spent at once, the answer
comes late); ``POST /_oauth/ttl?seconds=N`` sets the lifetime of tokens issued
from now on; ``POST /_oauth/grace?seconds=N`` makes the resource server accept
access tokens N seconds past their announced expiry; ``POST /_oauth/issue?style=
short|crlf|ok`` makes the token endpoint issue unusable tokens (5 characters, or
with a CR/LF) from now on. ``token_requests`` in the stats counts every request
to the token endpoint, 503s included.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from typing import Any

import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    construct_redirect_uri,
)
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response


class MemoryProvider:
    """Clients, codes and tokens in memory; short-lived access tokens, rotating refresh tokens."""

    def __init__(self, access_ttl: float) -> None:
        self.access_ttl = access_ttl
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.pending: dict[str, tuple[OAuthClientInformationFull, AuthorizationParams]] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.stats: dict[str, int] = {"authorization_code": 0, "refresh_token": 0, "revoke": 0, "register": 0,
                                      "token_requests": 0}
        self.down_until = 0.0
        self.slow = 0.0
        self.grace = 0.0
        self.style = "ok"

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        self.stats["register"] += 1
        assert client_info.client_id is not None
        self.clients[client_info.client_id] = client_info

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        pending = secrets.token_urlsafe(16)
        self.pending[pending] = (client, params)
        return f"{ISSUER}/login?pending={pending}"

    def login(self, pending: str, user: str) -> str:
        client, params = self.pending.pop(pending)
        code = secrets.token_urlsafe(24)
        self.codes[code] = AuthorizationCode(
            code=code, scopes=params.scopes or ["mcp"], expires_at=time.time() + 300,
            client_id=client.client_id or "", code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri, redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource, subject=user,
        )
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

    async def load_authorization_code(self, client: OAuthClientInformationFull, code: str) -> AuthorizationCode | None:
        return self.codes.get(code)

    def _issue(self, client_id: str, scopes: list[str], subject: str | None, resource: str | None) -> OAuthToken:
        self._check_up()
        access = "fake-at-" + secrets.token_urlsafe(24)
        refresh = "fake-rt-" + secrets.token_urlsafe(24)
        if self.style == "short":
            access = "fk-at"
        elif self.style == "crlf":
            access = "fake-at-x\r\nX-Injected: fake-header-" + secrets.token_urlsafe(8)
        expires = int(time.time() + self.access_ttl)
        self.access[access] = AccessToken(token=access, client_id=client_id, scopes=scopes, expires_at=expires,
                                          subject=subject, resource=resource)
        self.refresh[refresh] = RefreshToken(token=refresh, client_id=client_id, scopes=scopes, subject=subject,
                                             resource=resource)
        return OAuthToken(access_token=access, token_type="Bearer", expires_in=int(self.access_ttl),
                          refresh_token=refresh, scope=" ".join(scopes))

    def _check_up(self) -> None:
        if time.time() < self.down_until:
            raise Unavailable()

    async def exchange_authorization_code(self, client: OAuthClientInformationFull,
                                          authorization_code: AuthorizationCode) -> OAuthToken:
        self.stats["authorization_code"] += 1
        self.codes.pop(authorization_code.code, None)
        return self._issue(client.client_id or "", authorization_code.scopes, authorization_code.subject,
                           authorization_code.resource)

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> RefreshToken | None:
        self._check_up()
        return self.refresh.get(refresh_token)

    async def exchange_refresh_token(self, client: OAuthClientInformationFull, refresh_token: RefreshToken,
                                     scopes: list[str]) -> OAuthToken:
        self.stats["refresh_token"] += 1
        self.refresh.pop(refresh_token.token, None)  # rotation: the old refresh token is spent
        return self._issue(client.client_id or "", scopes or refresh_token.scopes, refresh_token.subject,
                           refresh_token.resource)

    async def load_access_token(self, token: str) -> AccessToken | None:
        found = self.access.get(token)
        if found is None or (found.expires_at is not None and found.expires_at + self.grace < time.time()):
            return None
        return found

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        self.stats["revoke"] += 1
        self.access.pop(token.token, None)
        self.refresh.pop(token.token, None)


class Unavailable(Exception):
    """The token endpoint is 'down' (a test control)."""


ISSUER = ""
provider: MemoryProvider


def build(port: int, access_ttl: float, tls: bool = False) -> Any:
    global ISSUER, provider
    ISSUER = f"https://localhost:{port}" if tls else f"http://127.0.0.1:{port}"
    provider = MemoryProvider(access_ttl)
    server = MCPServer(
        "valet-oauth-upstream",
        auth=AuthSettings(
            issuer_url=ISSUER,
            resource_server_url=f"{ISSUER}/mcp",
            client_registration_options=ClientRegistrationOptions(enabled=True, valid_scopes=["mcp"],
                                                                  default_scopes=["mcp"]),
            revocation_options=RevocationOptions(enabled=True),
            required_scopes=["mcp"],
        ),
        auth_server_provider=provider,
    )

    @server.tool()
    def me() -> str:
        """Who the access token says the caller is, and a prefix of the token (fake values only)."""
        token = get_access_token()
        return f"subject={token.subject if token else None}"

    @server.tool()
    def echo_token() -> str:
        """A hostile tool: the whole access token it was called with, raw and percent-encoded (fake values)."""
        token = get_access_token()
        value = token.token if token else ""
        return f"token={value} pct={''.join(f'%{b:02x}' for b in value.encode())}"

    @server.custom_route("/login", methods=["GET"])
    async def login(request: Request) -> Response:
        return RedirectResponse(provider.login(request.query_params["pending"], request.query_params["user"]), 302)

    @server.custom_route("/_oauth/stats", methods=["GET"])
    async def stats(request: Request) -> Response:
        return JSONResponse(provider.stats)

    @server.custom_route("/_oauth/revoke", methods=["POST"])
    async def revoke(request: Request) -> Response:
        user = request.query_params["user"]
        for token, rt in list(provider.refresh.items()):
            if rt.subject == user:
                del provider.refresh[token]
        return JSONResponse({"ok": True})

    @server.custom_route("/_oauth/expire", methods=["POST"])
    async def expire(request: Request) -> Response:
        user = request.query_params["user"]
        for at in provider.access.values():
            if at.subject == user:
                at.expires_at = int(time.time()) - 1
        return JSONResponse({"ok": True})

    @server.custom_route("/_oauth/slow", methods=["POST"])
    async def slow(request: Request) -> Response:
        provider.slow = float(request.query_params["seconds"])
        return JSONResponse({"ok": True})

    @server.custom_route("/_oauth/ttl", methods=["POST"])
    async def ttl(request: Request) -> Response:
        provider.access_ttl = float(request.query_params["seconds"])
        return JSONResponse({"ok": True})

    @server.custom_route("/_oauth/grace", methods=["POST"])
    async def grace(request: Request) -> Response:
        provider.grace = float(request.query_params["seconds"])
        return JSONResponse({"ok": True})

    @server.custom_route("/_oauth/issue", methods=["POST"])
    async def issue(request: Request) -> Response:
        provider.style = request.query_params["style"]
        return JSONResponse({"ok": True})

    @server.custom_route("/_oauth/down", methods=["POST"])
    async def down(request: Request) -> Response:
        provider.down_until = time.time() + float(request.query_params["seconds"])
        return JSONResponse({"ok": True})

    app = server.streamable_http_app()

    async def guarded(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        """The token endpoint answers 503 while 'down', and late while 'slow'."""
        if scope["type"] != "http" or scope["path"] != "/token":
            await app(scope, receive, send)
            return
        provider.stats["token_requests"] += 1
        delay = provider.slow

        async def late(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start" and delay:
                await asyncio.sleep(delay)
            await send(message)

        if time.time() < provider.down_until:
            await late({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"down for a test"})
            return
        await app(scope, receive, late)

    return guarded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--access-ttl", type=float, default=3.0)
    parser.add_argument("--certfile", help="serve HTTPS (issuer https://localhost:PORT) with this certificate")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    tls = {"ssl_certfile": args.certfile, "ssl_keyfile": args.keyfile} if args.certfile else {}
    uvicorn.run(build(args.port, args.access_ttl, bool(tls)), host="127.0.0.1", port=args.port, log_level="warning",
                **tls)


if __name__ == "__main__":
    main()
