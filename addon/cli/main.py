"""The ``valet`` command: run the proxy, manage valet keys, read the audit log.

Built on click (well-kept, composable subcommands, env-var defaults). Every
command takes ``--data-dir`` (env ``VALET_DATA_DIR``, default ``./.valet``):
the proxy and the CLI agree on state only through that directory.

Exit codes are one contract for scripts (docs/cli.md): 0 ok or allow, 1 deny or
an operation that did not happen (no such key, no such secret), 2 a usage or
configuration error (bad option, a config or policy file with an error, a
server that is not configured). Commands that only read never create a file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from addon.audit import log as audit
from addon.identity import KeyStore, key_id_from_argument, last_used as keys_last_used
from addon.timestamps import display as show_time

# mitmproxy and pydantic are imported only by the commands that need them, so
# that key and audit commands start in a fraction of a second.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "policies" / "valet.yaml"

data_dir_option = click.option(
    "--data-dir",
    envvar="VALET_DATA_DIR",
    default=".valet",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Keys, vault, audit log and CA live here (env VALET_DATA_DIR).",
)

# The one --config option; commands that need the servers (policy, secret set, oauth) all take it.
config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG,
    envvar="VALET_CONFIG", show_default=True,
    help="Valet's YAML configuration: the servers, and the policy files it names (env VALET_CONFIG).",
)

EXIT_DENY = 1
EXIT_CONFIG = 2


class ConfigProblem(click.ClickException):
    """A usage or configuration error: exit code 2, like click's own usage errors (not 1, which means deny)."""

    exit_code = EXIT_CONFIG


def _snapshot(config_path: Path, extra: list[Path] | None = None):  # type: ignore[no-untyped-def]
    """The config and every policy file, loaded exactly as ``valet run`` loads them."""
    from addon.config import ConfigError
    from addon.snapshot import load_snapshot

    try:
        return load_snapshot(config_path, extra or [])
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8787")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.group()
@click.version_option(package_name="mcp-valet")
def main() -> None:
    """Valet: the proxy that holds the keys so that AI agents don't."""
    os.umask(0o077)  # whatever this command creates in the data dir is its owner's alone


@main.command("run")
@config_option
@data_dir_option
@click.option("--listen", default="127.0.0.1:8787", show_default=True, help="HOST:PORT to listen on.")
@click.option("--mode", type=click.Choice(["reverse", "forward"]), default="reverse", show_default=True,
              help="reverse: agents call http://LISTEN/<server>; forward: agents set HTTPS_PROXY to Valet.")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write this file (holding the listen URL) once Valet accepts connections; removed on exit. "
                   "Scripts wait for it instead of polling the port.")
@click.option("--admin-listen", default=None, help="HOST:PORT for /metrics, /healthz, /readyz (off by default; "
              "a bare :PORT is loopback). See docs/metrics.md.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per line (docs/operations.md).")
@click.option("--metrics-users", is_flag=True, help="Also count exchanges per user in /metrics.")
def run_command(config_path: Path, data_dir: Path, listen: str, mode: str, ready_file: Path | None,
                admin_listen: str | None, log_format: str, metrics_users: bool) -> None:
    """Run the proxy until SIGINT/SIGTERM."""
    from addon.server import Settings, run

    host, port = _listen(listen)
    admin = _listen(admin_listen) if admin_listen else None
    sys.exit(run(Settings(config=config_path, data_dir=data_dir, host=host, port=port, mode=mode,
                          ready_file=ready_file, admin=admin, log_format=log_format, metrics_users=metrics_users)))


@main.group()
def key() -> None:
    """Valet keys: what agents present instead of real credentials."""


@key.command("create")
@click.option("--user", required=True, help="Whose secrets the key's agent may use.")
@click.option("--agent", required=True, help="A name for the agent holding the key.")
@data_dir_option
def key_create(user: str, agent: str, data_dir: Path) -> None:
    """Print a new key once; only its hash is stored."""
    plaintext, record = KeyStore(data_dir / "keys.db").create(user, agent)
    click.echo(f"created key {record.id} for user {user!r}, agent {agent!r}; it is shown only once:", err=True)
    click.echo(plaintext)


@key.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def key_list(data_dir: Path, as_json: bool) -> None:
    """Show id, user, agent, created, last used, revoked: never the key."""
    records = KeyStore(data_dir / "keys.db").all()
    last_used = keys_last_used(data_dir / "audit.db")
    rows = [
        {"id": r.id, "user": r.user, "agent": r.agent, "created": show_time(r.created_at),
         "last_used": show_time(last_used.get(r.id)), "revoked": show_time(r.revoked_at)}
        for r in records
    ]
    _print_rows(rows, as_json, ["id", "user", "agent", "created", "last_used", "revoked"])


@key.command("revoke")
@click.argument("key_or_id", metavar="KEY_OR_ID")
@data_dir_option
def key_revoke(key_or_id: str, data_dir: Path) -> None:
    """Revoke a key, given the key itself (e.g. "$KEY") or its id; a running proxy refuses it from its next request.

    Exits 1 if there is no active key with that id.
    """
    key_id = key_id_from_argument(key_or_id)
    store = KeyStore(data_dir / "keys.db")
    if not store.path.exists() or not store.revoke(key_id):
        raise click.ClickException(f"no active key with id {_safe(key_id)!r} in {data_dir}")
    click.echo(f"revoked {key_id}")


def _tail_line(row: dict[str, Any]) -> str:
    parts = [
        row["ts"], row["decision"], str(row["http_status"]), row["user"] or "-", row["agent"] or "-",
        row["server"] or "-", row["http_method"], row["rpc_method"] or "-", row["tool"] or "-",
        row["reason"] or "", f"{row['duration_ms']}ms" if row["duration_ms"] is not None else "",
    ]
    return " ".join(_field(p) for p in parts if p)


def _field(text: str) -> str:
    """One space-separated field: quoted if it holds whitespace, so an agent's value cannot pose as two."""
    safe = _safe(text)
    return json.dumps(safe) if any(c.isspace() for c in safe) or not safe else safe


def _safe(text: str) -> str:
    """Audit values come from agents: never let them drive the terminal (C0, C1, bidi controls escaped)."""
    return "".join(c if c.isprintable() and c.isascii() or (c.isprintable() and ord(c) > 0x9F and
                                                            c not in _BIDI) else repr(c)[1:-1] for c in text)


_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=True))
        return
    table = [[_safe("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@main.group()
def secret() -> None:
    """Secrets in the encrypted vault. There is deliberately no command that prints a value."""


@contextmanager
def _vault_errors() -> Iterator[None]:
    """Vault errors are messages for the operator (they never hold key material or values)."""
    from addon.secrets.vault import VaultError

    try:
        yield
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None


def _vault(data_dir: Path, create: bool = True):  # type: ignore[no-untyped-def]
    """The vault; ``create=False`` for commands that only read (no master key is made for them)."""
    from addon.datadir import lock_down
    from addon.secrets.vault import Vault, load_master_keys

    lock_down(data_dir)  # files an older Valet left group- or world-readable
    with _vault_errors():
        vault = Vault(data_dir, load_master_keys(data_dir, create=create))
        vault.verify_keys()
    return vault


def _read_secret_value() -> str:
    """From stdin when piped, else a no-echo prompt: never from argv, where ps and shell history see it."""
    stdin = click.get_text_stream("stdin")
    if not stdin.isatty():
        value = stdin.read()
        return value[:-1] if value.endswith("\n") else value
    return click.prompt("value", hide_input=True, confirmation_prompt=True, err=True)


@secret.command("set")
@click.argument("name")
@click.option("--server", default=None, help="The configured server the secret is for (required but with --canary).")
@click.option("--user", default=None, help="Whose secret; without it, a shared secret every user falls back to.")
@config_option
@click.option("--force", is_flag=True, help="Store it even though --server is not in the config (yet).")
@click.option("--canary", is_flag=True, help="A decoy Valet never injects: a request carrying it is refused "
              "(docs/operations.md).")
@data_dir_option
def secret_set(name: str, server: str | None, user: str | None, config_path: Path, force: bool, canary: bool,
               data_dir: Path) -> None:
    """Store a secret; the value is read from stdin or a no-echo prompt.

    A server the config does not name is refused (exit 2) unless --force: a typo in
    --server would otherwise store a secret that no request ever uses.
    """
    if name.startswith("OAUTH_"):
        raise ConfigProblem("the OAUTH_ prefix is reserved for grants Valet manages (valet oauth ...)")
    from addon.secrets.vault import CANARY_SERVER, check_value

    if canary:
        if server is not None or user is not None:
            raise ConfigProblem("a canary belongs to no server and no user: drop --server and --user")
        server = CANARY_SERVER
    elif server is None:
        raise ConfigProblem("--server is required (or --canary for a decoy)")
    elif not force:
        _check_server_configured(config_path, server)

    vault = _vault(data_dir)
    value = _read_secret_value()
    with _vault_errors():
        check_value(value)  # no CR/LF/NUL/C0/DEL (header injection), at least 8 characters (scrubbing)
        row = vault.set(server, user, name, value)
    assert row is not None
    if canary:
        click.echo(f"stored canary {name}, fingerprint {row.fingerprint}; Valet refuses any request carrying it")
        return
    click.echo(f"stored {name} for server {server} ({'user ' + user if user else 'shared'}), "
               f"fingerprint {row.fingerprint}")


def _check_server_configured(config_path: Path, server: str) -> None:
    from addon.config import ConfigError, load_config

    try:
        servers = load_config(config_path).config.servers
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    if server not in servers:
        raise ConfigProblem(f"no server named {_safe(server)!r} in {config_path} "
                            f"(configured: {', '.join(sorted(servers)) or 'none'}); "
                            f"--config names another config, --force stores it anyway")


@secret.command("list")
@click.option("--server", default=None, help="Only this server's secrets.")
@click.option("--user", default=None, help="Only this user's own secrets ('' for shared ones).")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def secret_list(server: str | None, user: str | None, data_dir: Path, as_json: bool) -> None:
    """Names, scopes, fingerprints and dates: never values."""
    from addon.secrets.vault import VAULT_FILE, read_rows

    rows = [
        {"server": r.server, "name": r.name, "scope": r.scope, "user": r.user or None,
         "fingerprint": r.fingerprint, "key_version": r.key_version, "created": show_time(r.created_at),
         "updated": show_time(r.updated_at)}
        for r in read_rows(data_dir / VAULT_FILE, server, user)
    ]
    _print_rows(rows, as_json, ["server", "name", "scope", "user", "fingerprint", "key_version", "created", "updated"])


@secret.command("delete")
@click.argument("name")
@click.option("--server", required=True, help="The server the secret is for.")
@click.option("--user", default=None, help="Delete this user's secret; without it, the shared one.")
@data_dir_option
def secret_delete(name: str, server: str, user: str | None, data_dir: Path) -> None:
    """Delete one secret."""
    if not _vault(data_dir).delete(server, user, name):
        raise click.ClickException(f"no {'secret of user ' + repr(user) if user else 'shared secret'} "
                                   f"{name!r} for server {server!r}")
    click.echo(f"deleted {name}")


@main.group()
def vault() -> None:
    """The vault's master keys."""


@vault.command("rotate")
@click.option("--prune", is_flag=True, help="Then drop the old key versions from the key file.")
@data_dir_option
def vault_rotate(prune: bool, data_dir: Path) -> None:
    """Make a new master key version and re-encrypt every secret under it, atomically.

    A running proxy picks the change up on its next request.
    """
    from addon.secrets.vault import rotate

    with _vault_errors():  # rotate() checks the current keys open the vault, under the vault lock
        version, count = rotate(data_dir, prune=prune)
    click.echo(f"master key version {version}: re-encrypted {count} secrets")


@vault.command("reencrypt")
@data_dir_option
def vault_reencrypt(data_dir: Path) -> None:
    """Re-encrypt every secret under the newest key version (after adding one to VALET_MASTER_KEY)."""
    from addon.secrets.vault import reencrypt

    with _vault_errors():  # under the vault lock, keys read inside it
        version, count = reencrypt(data_dir)
    click.echo(f"master key version {version}: re-encrypted {count} secrets")


@vault.command("status")
@data_dir_option
def vault_status(data_dir: Path) -> None:
    """Where the master key comes from, its versions, and whether it opens the vault. Creates nothing."""
    from addon.secrets.vault import ENV_VAR, KEY_FILE, VAULT_FILE, read_rows

    if not (data_dir / KEY_FILE).exists() and ENV_VAR not in os.environ:
        click.echo(f"master key: none yet ({data_dir / KEY_FILE} is created by the first `valet secret set`, "
                   f"or set {ENV_VAR}); the vault holds {len(read_rows(data_dir / VAULT_FILE))} secrets")
        return
    v = _vault(data_dir, create=False)
    used = sorted({r.key_version for r in read_rows(data_dir / VAULT_FILE)})
    click.echo(f"master key: {v.keys.source}; versions {v.keys.versions}, current {v.keys.current}; "
               f"versions in use {used}; the vault opens")


@main.command("ca")
@data_dir_option
def ca(data_dir: Path) -> None:
    """Print the path of the CA certificate agents must trust in forward mode (created if needed)."""
    from mitmproxy.certs import CertStore

    from addon.server import mitm_confdir

    confdir = mitm_confdir(data_dir)
    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(str(confdir), "mitmproxy", 2048)
    click.echo(str((confdir / "mitmproxy-ca-cert.pem").resolve()))


@main.group()
def policy() -> None:
    """Check policy files and predict decisions."""


@policy.command("check")
@config_option
@data_dir_option
@click.argument("extra", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
def policy_check(config_path: Path, data_dir: Path, extra: tuple[Path, ...]) -> None:
    """Validate the config and its policy files, plus EXTRA policy files (e.g. one you are about to add).

    Exits 2, naming file, line and problem, on the first error. (--data-dir is accepted like
    everywhere; checking reads no state.) Warns (on stderr, exit 0) about rate rules any caller can fill.
    """
    from addon.policy.ratelimit import shared_cap_warnings

    snapshot = _snapshot(config_path, _not_yet_loaded(config_path, extra))
    files = snapshot.policy.sources.files
    click.echo(f"ok: {len(snapshot.config.servers)} servers, {snapshot.policy.rule_count} rules "
               f"from {len(files)} policy files ({', '.join(str(f) for f in files) or 'none'})")
    for warning in shared_cap_warnings(snapshot.policy.sources):
        click.echo(f"WARNING: {warning}", err=True)


def _not_yet_loaded(config_path: Path, extra: tuple[Path, ...]) -> list[Path]:
    """EXTRA files the config does not load already: checking a file that is live must not read it twice."""
    from addon.config import ConfigError, load_config
    from addon.policy.files import policy_paths

    try:
        config = load_config(config_path).config
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    loaded = {path.resolve() for path in policy_paths(config_path, config)}
    return [path for path in extra if path.resolve() not in loaded]


@policy.command("explain")
@config_option
@data_dir_option
@click.option("--user", required=True, help="The user the calling key belongs to.")
@click.option("--agent", default="", help="The key's agent name.")
@click.option("--key", "key_id", default="", help="The key id.")
@click.option("--server", required=True, help="A configured server.")
@click.option("--tool", default=None, help="A tools/call of this tool.")
@click.option("--args", "args_json", default="{}", help="Its arguments, as a JSON object.")
@click.option("--method", default=None, help="A JSON-RPC method (default tools/call with --tool).")
@click.option("--http-method", default=None, help="For kind: http servers: the HTTP method...")
@click.option("--path", default=None, help="...and the path as the agent sends it after /SERVER (reverse mode).")
def policy_explain(config_path: Path, data_dir: Path, user: str, agent: str, key_id: str, server: str,
                   tool: str | None, args_json: str, method: str | None, http_method: str | None,
                   path: str | None) -> None:
    """Print the decision Valet would make, the rule that makes it, and the rate limits that would count it.

    Exits 0 for allow, 1 for deny, 2 for a usage or configuration error (e.g. a server that is not configured).
    """
    from urllib.parse import unquote

    from addon.protocol.errors import Refusal
    from addon.policy.decisions import Call

    snapshot = _snapshot(config_path)
    if server not in snapshot.config.servers:
        raise ConfigProblem(f"no server named {_safe(server)!r} in {config_path} "
                            f"(configured: {', '.join(sorted(snapshot.config.servers)) or 'none'})")
    try:
        arguments = json.loads(args_json)
    except ValueError:
        raise click.BadParameter("must be a JSON object", param_hint="--args") from None
    if not isinstance(arguments, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--args")
    if snapshot.config.servers[server].kind == "http":
        if not (http_method and path):
            raise click.UsageError(f"{server} is a plain HTTP server: give --http-method and --path")
        try:  # rules match the upstream path, as Valet routes and normalizes it
            upstream_path = snapshot.routes.reverse(f"/{server}{path}").path
        except Refusal as refusal:
            click.echo(f"deny ({refusal.cause.reason}): {refusal.message}")
            sys.exit(EXIT_DENY)
        call = Call(user, agent, key_id, server, http_method=http_method.upper(),
                    http_path=unquote(upstream_path.partition("?")[0]), is_http_api=True)
    else:
        call = Call(user, agent, key_id, server, method or "tools/call", tool, arguments if tool else None)
    decision = snapshot.policy.decide(call)
    verdict = "allow" if decision.allowed else "deny"
    click.echo(f"{verdict} ({decision.reason}) by {decision.label}")
    for name, value in decision.rewrites:
        click.echo(f"  forwards {name} as {value!r}")
    if decision.allowed:
        for rate in snapshot.policy.rate_rules(call):
            limits = " and ".join(str(item) for item in rate.limits)
            click.echo(f"  counted by rate rule {rate.id}: {limits}, per {', '.join(rate.identifiers(call))}")
    sys.exit(0 if decision.allowed else EXIT_DENY)


def _register_oauth() -> None:
    from addon.cli.oauth import register

    register(main, data_dir_option, DEFAULT_CONFIG)


_register_oauth()


def _register_audit() -> None:
    from addon.cli.audit import register

    register(main, data_dir_option, _print_rows, _tail_line)


_register_audit()


@main.group("config")
def config_group() -> None:
    """Check configuration files."""


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG, envvar="VALET_CONFIG")
@data_dir_option
def config_check(path: Path, data_dir: Path) -> None:
    """Validate a config file and the policy files it names, exactly as `valet run` does.

    Exits 2 with file:line messages on the first error. (--data-dir is accepted like everywhere;
    checking reads no state.)
    """
    snapshot = _snapshot(path)
    click.echo(f"{path}: ok ({len(snapshot.config.servers)} servers); {snapshot.policy.rule_count} rules "
               f"from {len(snapshot.policy.sources.files)} policy files")


if __name__ == "__main__":
    main()


def _register_ops() -> None:
    from addon.cli.browse import register as register_browse
    from addon.cli.replay import register

    register(policy, data_dir_option, DEFAULT_CONFIG)
    register_browse(main.commands["audit"], data_dir_option)  # type: ignore[arg-type]


_register_ops()
