"""``valet oauth``: log users in to OAuth-protected servers, import, inspect and drop their grants.

Token values are never printed: only scopes, expiry and state. The login
runs the authorization code flow with PKCE (S256) and a random ``state``
through a loopback redirect (RFC 8252) on 127.0.0.1; the URL to open is the
only thing printed on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import click

if TYPE_CHECKING:  # the modules themselves are imported by the commands: `valet key ...` stays fast
    from addon.config import ServerConfig
    from addon.oauth.grants import Grant
    from addon.oauth.client import Client, Endpoints
    from addon.secrets.vault import SecretCache

LOGIN_TIMEOUT = 300.0


def _server(config_path: Path, name: str) -> ServerConfig:
    from addon.config import ConfigError, load_config

    try:
        config = load_config(config_path).config
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    server = config.servers.get(name)
    if server is None:
        raise click.ClickException(f"no server named {name!r} in {config_path}")
    if server.auth != "oauth":
        raise click.ClickException(f"server {name!r} is not configured with auth: oauth")
    return server


def _cache(data_dir: Path) -> SecretCache:
    from addon.secrets.vault import SecretCache, VaultError

    cache = SecretCache(data_dir)
    try:
        cache.reload()
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None
    return cache


def _audit(data_dir: Path, row: dict[str, object]) -> None:
    from addon.audit.log import AuditWriter
    from addon.audit.exchange import _utc_now

    writer = AuditWriter(data_dir / "audit.db")
    writer.submit({"ts": _utc_now(), "mode": "cli", "http_method": "OAUTH", **row})
    writer.close()


def _overrides(server: ServerConfig) -> dict[str, str | None]:
    o = server.oauth
    if o is None:
        return {}
    return {"resource": o.resource, "authorization_endpoint": o.authorization_endpoint,
            "token_endpoint": o.token_endpoint, "registration_endpoint": o.registration_endpoint,
            "revocation_endpoint": o.revocation_endpoint}


def _shown_scope(scope: str | None) -> str:
    """A grant's scope as the terminal may show it: RFC 6749's grammar (a grant stored before that check may
    hold anything an authorization server sent), with every known secret value redacted."""
    from addon.oauth.client import valid_scope
    from addon.ops import logscrub

    if not scope:
        return "-"
    return logscrub.scrub_text(scope) if valid_scope(scope) else "(not shown: not an RFC 6749 scope)"


def _scopes(server: ServerConfig, endpoints: Endpoints) -> str | None:
    if server.oauth is not None and server.oauth.scopes:
        return " ".join(server.oauth.scopes)
    return " ".join(endpoints.scopes_supported) or None


def _configured_client(cache: SecretCache, name: str, server: ServerConfig, redirect_uri: str | None) -> Client | None:
    from addon.oauth.client import Client

    if server.oauth is None or not server.oauth.client_id:
        return None
    secret = None
    if server.oauth.client_secret:
        from addon.secrets.templates import names

        (secret_name,) = names(server.oauth.client_secret)
        secret = cache.lookup_exact(name, "", secret_name)
        if secret is None:
            raise click.ClickException(f"the client secret {secret_name} is not in the vault for server {name} "
                                       f"(valet secret set {secret_name} --server {name})")
    return Client(server.oauth.client_id, secret, redirect_uri)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state_matches(params: dict[str, list[str]], state: str) -> bool:
    """Exactly one ``state``, equal to ours (compared as bytes, in constant time: any text is safe to compare)."""
    values = params.get("state", [])
    return len(values) == 1 and hmac.compare_digest(values[0].encode("utf-8", "surrogatepass"), state.encode())


async def _wait_for_callback(port: int, timeout: float, state: str) -> dict[str, str]:
    """Serve GET /callback on the loopback interface until one arrives with our ``state``; return its parameters.

    Anything else (another path, no state, a wrong or malformed one, as a
    page on the same machine could send) is answered 400 and the wait goes on:
    it neither ends nor decides the login.
    """
    arrived: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

    def answer(writer: asyncio.StreamWriter, status: bytes, body: bytes) -> None:
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1")
            headers = 0
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                headers += 1
                if headers > 100:
                    break
            target = line.split(" ")[1] if line.count(" ") >= 2 else ""
            parts = urlsplit(target)
            if parts.path != "/callback":
                answer(writer, b"404 Not Found", b"")
                return
            params = parse_qs(parts.query, keep_blank_values=True, errors="strict") if parts.query.isascii() else {}
            if arrived.done() or not _state_matches(params, state):
                answer(writer, b"400 Bad Request", b"Valet: this is not the answer to the login it is waiting for.\n")
                return
            answer(writer, b"200 OK", b"Valet: you can close this window and go back to the terminal.\n")
            arrived.set_result({k: v[0] for k, v in params.items()})
        except (TimeoutError, UnicodeDecodeError, ValueError, ConnectionError):
            answer(writer, b"400 Bad Request", b"")
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        return await asyncio.wait_for(arrived, timeout)
    except TimeoutError:
        raise click.ClickException(f"no login arrived within {timeout:.0f}s") from None
    finally:
        server.close()


def _ca_file(config_path: Path) -> str | None:
    """The operator's upstream CA also verifies authorization servers."""
    from addon.config import ConfigError, load_config

    try:
        return load_config(config_path).config.upstream_ca_file
    except ConfigError:
        return None


async def _login(config_path: Path, data_dir: Path, name: str, user: str, timeout: float) -> Grant:

    from addon.oauth import client as oauth
    from addon.cli.main import _vault
    from addon.oauth.grants import Grant, Registration, read_registration, save_grant, save_registration
    from addon.oauth.client import OAuthError

    server = _server(config_path, name)
    vault = _vault(data_dir)
    cache = _cache(data_dir)
    async with oauth.http_client(_ca_file(config_path), timeout=30) as http:
        try:
            endpoints = await oauth.discover(http, server.url, _overrides(server))
        except OAuthError as exc:
            raise click.ClickException(str(exc)) from None
        registration = read_registration(cache, name)
        redirect_uri = registration.client.redirect_uri if registration and registration.client.redirect_uri \
            else f"http://127.0.0.1:{_free_port()}/callback"
        client = _configured_client(cache, name, server, redirect_uri)
        if client is None:
            client = registration.client if registration is not None else None
            if client is None:
                try:
                    client = await oauth.register(http, endpoints, redirect_uri, _scopes(server, endpoints))
                except OAuthError as exc:
                    raise click.ClickException(str(exc)) from None
        save_registration(vault, name, Registration(client, endpoints))
        verifier, challenge = oauth.pkce_pair()
        state = secrets.token_urlsafe(24)
        url = oauth.authorization_url(endpoints, client, redirect_uri, state, challenge, _scopes(server, endpoints))
        click.echo(f"Open this URL in a browser to log {user} in to {name} (waiting {timeout:.0f}s):", err=True)
        click.echo(url)
        sys.stdout.flush()
        port = urlsplit(redirect_uri).port or 80
        params = await _wait_for_callback(port, timeout, state)  # only an answer with our state ends the wait
        if "error" in params:
            raise click.ClickException(f"the authorization server refused the login: {params['error']}")
        if "code" not in params:
            raise click.ClickException("the login answer has no code")
        try:
            tokens = await oauth.exchange_code(http, endpoints, client, params["code"], verifier, redirect_uri)
        except OAuthError as exc:
            _audit(data_dir, {"server": name, "user": user, "rpc_method": "oauth/login", "http_path": "login",
                              "decision": "error", "reason": exc.code or "login_failed"})
            raise click.ClickException(str(exc)) from None
    grant = Grant.from_tokens(tokens)
    save_grant(vault, name, user, grant)
    _audit(data_dir, {"server": name, "user": user, "rpc_method": "oauth/login", "http_path": "login",
                      "decision": "allow", "reason": "logged_in"})
    return grant


def _when(epoch: float | None) -> str:
    from addon.timestamps import from_epoch  # one timestamp format in every listing (docs/cli.md)

    return from_epoch(epoch)


def register(main: click.Group, data_dir_option, default_config: Path) -> None:  # type: ignore[no-untyped-def]
    config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                                 default=default_config, show_default=True, envvar="VALET_CONFIG",
                                 help="Valet's YAML configuration (where the server's OAuth settings are).")

    @main.group("oauth")
    def oauth_group() -> None:
        """OAuth grants Valet holds for users of `auth: oauth` servers (never printed)."""

    @oauth_group.command("login")
    @click.argument("server")
    @click.option("--user", required=True, help="The Valet user the grant is for.")
    @config_option
    @data_dir_option
    @click.option("--timeout", default=LOGIN_TIMEOUT, show_default=True, help="Seconds to wait for the browser.")
    def login(server: str, user: str, config_path: Path, data_dir: Path, timeout: float) -> None:
        """Log USER in to SERVER: prints the URL to open, waits for the loopback redirect, stores the grant."""
        grant = asyncio.run(_login(config_path, data_dir, server, user, timeout))
        click.echo(f"logged in: {user} on {server}, scopes {_shown_scope(grant.scope)}, "
                   f"access token expires {_when(grant.expires_at) or 'never'}", err=True)

    @oauth_group.command("import")
    @click.argument("server")
    @click.option("--user", required=True, help="The Valet user the grant is for.")
    @config_option
    @data_dir_option
    def import_(server: str, user: str, config_path: Path, data_dir: Path) -> None:
        """Store a token response (JSON on stdin) obtained by another front end."""
        from addon.oauth import client as oauth
        from addon.cli.main import _vault
        from addon.oauth.grants import Grant, Registration, read_registration, save_grant, save_registration
        from addon.oauth.client import Endpoints, OAuthError

        cfg = _server(config_path, server)
        try:
            tokens = oauth.Tokens.from_response(json.loads(sys.stdin.read()))
        except (ValueError, OAuthError) as exc:
            raise click.ClickException(f"stdin is not an OAuth token response: {exc}") from None
        vault = _vault(data_dir)
        cache = _cache(data_dir)
        if read_registration(cache, server) is None:
            client = _configured_client(cache, server, cfg, None)
            if client is not None:
                async def endpoints() -> Endpoints:
                    async with oauth.http_client(_ca_file(config_path), timeout=30) as http:
                        return await oauth.discover(http, cfg.url, _overrides(cfg))

                try:
                    save_registration(vault, server, Registration(client, asyncio.run(endpoints())))
                except OAuthError as exc:
                    raise click.ClickException(str(exc)) from None
            else:
                click.echo("warning: no client registration for this server yet: Valet cannot refresh this grant "
                           "until a `valet oauth login` or a configured client_id", err=True)
        save_grant(vault, server, user, Grant.from_tokens(tokens))
        _audit(data_dir, {"server": server, "user": user, "rpc_method": "oauth/import", "http_path": "import",
                          "decision": "allow", "reason": "imported"})
        click.echo(f"imported a grant for {user} on {server}", err=True)

    @oauth_group.command("status")
    @click.option("--server", default=None, help="Only this server's grants.")
    @click.option("--user", default=None, help="Only this user's grants.")
    @data_dir_option
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def status(server: str | None, user: str | None, data_dir: Path, as_json: bool) -> None:
        """Per user and server: scopes, expiry, last refresh, whether a new login is needed. Never tokens."""
        from addon.cli.main import _print_rows
        from addon.oauth.grants import GRANT, read_grant
        from addon.secrets.vault import VAULT_FILE, read_rows

        cache = _cache(data_dir)
        rows = []
        for row in read_rows(data_dir / VAULT_FILE, server, user):
            if row.name != GRANT:
                continue
            grant = read_grant(cache, row.server, row.user)
            if grant is None:
                continue
            rows.append({"server": row.server, "user": row.user, "scopes": grant.scope and _shown_scope(grant.scope),
                         "expires": _when(grant.expires_at), "obtained": _when(grant.obtained_at),
                         "last_refresh": _when(grant.refreshed_at),
                         "needs_login": "yes" if grant.needs_login else "no", "last_failure": grant.failure})
        _print_rows(rows, as_json, ["server", "user", "scopes", "expires", "obtained", "last_refresh",
                                    "needs_login", "last_failure"])

    @oauth_group.command("logout")
    @click.argument("server")
    @click.option("--user", required=True, help="The Valet user the grant is for.")
    @data_dir_option
    def logout(server: str, user: str, data_dir: Path) -> None:
        """Drop USER's grant for SERVER, revoking its tokens at the server when it supports RFC 7009."""
        from addon.oauth import client as oauth
        from addon.cli.main import _vault
        from addon.oauth.grants import GRANT, read_grant, read_registration

        vault = _vault(data_dir)
        cache = _cache(data_dir)
        grant = read_grant(cache, server, user)
        if grant is None:
            raise click.ClickException(f"{user} has no grant for {server}")
        registration = read_registration(cache, server)
        revoked = False
        if registration is not None:
            async def revoke_all() -> bool:
                async with oauth.http_client(None, timeout=30) as http:
                    done = False
                    if grant.refresh_token:
                        done = await oauth.revoke(http, registration.endpoints, registration.client,
                                                  grant.refresh_token, "refresh_token")
                    return await oauth.revoke(http, registration.endpoints, registration.client,
                                              grant.access_token, "access_token") or done

            revoked = asyncio.run(revoke_all())
        vault.delete(server, user, GRANT)
        _audit(data_dir, {"server": server, "user": user, "rpc_method": "oauth/logout", "http_path": "logout",
                          "decision": "allow", "reason": "revoked" if revoked else "dropped"})
        click.echo(f"logged out {user} from {server}" + (" (tokens revoked at the server)" if revoked else ""),
                   err=True)
