"""Start mitmproxy in-process with the Valet addons (what ``run_proxy.py`` and ``valet run`` do)."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import exceptions, master, options
from mitmproxy.addons import block, core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig

from addon.ops import logscrub
from addon.protocol import mitm_conn, mitm_dispatch, mitm_errors, mitm_limits, mitm_typecheck
from addon.config import ConfigError, load_config
from addon.datadir import lock_down
from addon.config import ConfigError
from addon.snapshot import load_snapshot
from addon.hooks import valet_addons

# A placeholder upstream for mitmproxy's reverse mode: the Router rewrites every
# routed request before any connection is made (lazy connection strategy).
_REVERSE_PLACEHOLDER = "reverse:http://127.0.0.1:9"

# Nothing may leave mitmproxy's HTTP layer unparsed: every byte Valet relays goes through its hooks.
# rawtcp: a 101 answer (or a non-HTTP tunnel) would otherwise become a raw TCP pipe no hook sees;
# websocket: frames Valet neither parses nor judges; http3: QUIC/UDP, never offered to agents;
# tcp_hosts / ignore_hosts: hosts relayed without HTTP parsing (kept empty, as their defaults are).
NOTHING_UNPARSED: dict[str, object] = {
    "rawtcp": False, "websocket": False, "http3": False, "tcp_hosts": [], "ignore_hosts": [],
}



@dataclass(frozen=True)
class Settings:
    config: Path
    data_dir: Path
    host: str
    port: int
    mode: str  # reverse | forward
    ready_file: Path | None = None  # written once listening (scripts wait for it), removed on exit
    admin: tuple[str, int] | None = None  # --admin-listen: /metrics, /healthz, /readyz (addon/ops/admin.py)
    log_format: str = "text"  # --log-format text | json (addon/ops/logs.py)
    metrics_users: bool = False  # --metrics-users: a per-user exchange counter


def mitm_confdir(data_dir: Path) -> Path:
    """mitmproxy's CA and state live in the data dir, never in ~/.mitmproxy."""
    return data_dir / "mitmproxy"


def _mitmproxy_addons() -> list[object]:
    """The built-in addons Valet needs, and only those.

    mitmproxy's own tools load ~35 addons (replay, map-local, cookies, HAR
    export...) and visit every one of them on every event of every flow. Valet
    uses the proxy core, TLS, protocol detection, h2c refusal, the block of
    non-local clients (mitmproxy's ``block_global``) and the startup error check.
    """
    return [
        core.Core(),
        block.Block(),
        disable_h2c.DisableH2C(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        StartupCheck(),
    ]


class StartupCheck(errorcheck.ErrorCheck):
    """mitmproxy's startup error check (any error logged while starting stops the start), in Valet's words.

    mitmproxy's own message for a port in use advises a ``--mode reverse:...@port``
    syntax that Valet does not have, and it exits 1, which Valet's CLI reserves for
    "deny". Startup failures are configuration errors: exit 2, naming ``--listen``.
    """

    name = "errorcheck"  # the master looks its startup check up by this name

    async def shutdown_if_errored(self) -> None:
        await asyncio.sleep(0)  # let pending log records arrive, as the original does
        if not self.logger.has_errored:
            return
        for record in self.logger.has_errored:
            print(f"valet: cannot start: {_startup_problem(record)}", file=sys.stderr, flush=True)
        sys.exit(2)


def _startup_problem(record: logging.LogRecord) -> str:
    """One line for an error mitmproxy logged while starting (its listen errors read "... failed to listen
    on HOST:PORT with [Errno N] reason")."""
    message = record.getMessage()
    if "failed to listen" in message:
        where = message.split("failed to listen on ", 1)[-1].split(" with ", 1)[0]
        lowered = message.lower()
        if f"[errno {errno.EADDRINUSE}]" in lowered or "address already in use" in lowered:
            return (f"{where} is already in use (another Valet, or another server?); "
                    f"stop it or choose another address with --listen HOST:PORT")
        reason = message.split(" with ", 1)[-1].splitlines()[0]
        return f"cannot listen on {where}: {reason}; choose another address with --listen HOST:PORT"
    return message.splitlines()[0]


def _hide_listen_errors(record: logging.LogRecord) -> bool:
    """The console handler skips mitmproxy's own listen error: :class:`StartupCheck` says it in Valet's words."""
    return not (record.name.startswith("mitmproxy") and "failed to listen" in record.getMessage())


def _http2_wanted(config: Path) -> bool:
    """The config's ``http2`` (read at start: mitmproxy offers ALPN per listener); off when it cannot be read."""
    try:
        return load_config(config).config.http2
    except ConfigError:
        return False  # fail closed: the addon reports the error itself


def build_master(settings: Settings, on_running: Callable[[], None] | None = None) -> master.Master:
    logscrub.install()  # no valet key in any log record, mitmproxy's crash tracebacks included
    mitm_errors.install()
    mitm_limits.install()  # request heads capped; Valet's own answer when it cuts an exchange
    mitm_conn.install()  # idle/pending connections, stalled bodies, upstream heads (after mitm_limits)
    mitm_typecheck.install()  # mitmproxy's field type check without an exception per Optional field
    mode = _REVERSE_PLACEHOLDER if settings.mode == "reverse" else "regular"
    confdir = mitm_confdir(settings.data_dir)
    confdir.mkdir(parents=True, exist_ok=True)
    opts = options.Options(
        mode=[mode], listen_host=settings.host, listen_port=settings.port, confdir=str(confdir)
    )
    master_ = master.Master(opts, with_termlog=False)
    mitm_dispatch.install(master_)  # each event's hooks looked up once, not on every event of every flow
    master_.addons.add(*_mitmproxy_addons())
    # Options owned by built-in addons exist only once the master is built.
    # keep_host_header: the Host the agent sent is checked against Valet's own names (hooks/origin.py);
    # routing then sets the upstream's (Host follows request.host).
    opts.update(connection_strategy="lazy", keep_host_header=True, **NOTHING_UNPARSED)
    # HTTP/2 towards agents only when the config asks for it (docs/security.md: HTTP/2 and agents).
    opts.update(http2=_http2_wanted(settings.config))
    master_.addons.add(*valet_addons(on_running))
    opts.update(
        valet_mode=settings.mode,
        valet_data_dir=str(settings.data_dir),
        valet_config=str(settings.config),
    )
    return master_


def _announce(s: Settings) -> None:
    """The one startup line, printed once the listener is really up (tests wait for it)."""
    print(
        f"valet: listening on http://{s.host}:{s.port} ({s.mode} mode), config {s.config}, data dir {s.data_dir}",
        flush=True,
    )


async def _drain(proxy: master.Master) -> None:
    """SIGTERM: stop accepting, let open exchanges finish for the grace period, then stop.

    New connections are no longer accepted; requests on kept-alive connections get 503
    ``shutting_down``. What is still open when the grace period ends is recorded ``interrupted``
    by the audit writer as it closes (addon.audit.log).
    """
    valet = next((a for a in proxy.addons.chain if hasattr(a, "state") and hasattr(a, "write_ahead")), None)
    try:
        server = proxy.addons.get("proxyserver")
        if server is not None:
            await server.servers.update([])
        if valet is not None:
            state = valet.state
            state.draining = True
            grace = state.snapshot.config.audit.shutdown_grace_seconds if state.snapshot else 10.0
            deadline = loop_time() + grace
            while state.open_exchanges > 0 and loop_time() < deadline:
                await asyncio.sleep(0.05)
            if state.open_exchanges > 0:
                logging.getLogger("valet").warning(
                    "shutdown: %d exchanges still open after the %.1f s grace period; recorded as interrupted",
                    state.open_exchanges, grace)
    finally:
        proxy.shutdown()


def _configure_logging(settings: Settings) -> None:
    from addon.ops.logs import configure

    configure(settings.log_format)
    logscrub.install()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_hide_listen_errors)


def _announce_ops(s: Settings) -> None:
    """With --log-format json the startup line is a JSON object too (it still says "listening on")."""
    if s.log_format == "json":
        logging.getLogger("valet").warning(
            "listening on http://%s:%d (%s mode), config %s, data dir %s", s.host, s.port, s.mode, s.config,
            s.data_dir)
    else:
        _announce(s)
    if s.admin is not None:
        logging.getLogger("valet").warning("admin listener on http://%s:%d (/metrics, /healthz, /readyz)", *s.admin)


async def _start_admin(settings: Settings, proxy: master.Master) -> object | None:
    """The admin listener, in this event loop, before the proxy starts (its port is then bound)."""
    if settings.admin is None:
        return None
    from addon.ops import metrics
    from addon.ops.admin import AdminServer

    metrics.enable(users=settings.metrics_users)
    valet = next(a for a in proxy.addons.chain if hasattr(a, "state") and hasattr(a, "write_ahead"))
    admin = AdminServer(settings.admin[0], settings.admin[1], valet.state, valet)
    try:
        await admin.start()
    except OSError as exc:
        print(f"valet: cannot listen on {settings.admin[0]}:{settings.admin[1]} (admin): {exc.strerror or exc}",
              file=sys.stderr)
        raise SystemExit(1) from None
    return admin


def loop_time() -> float:
    return asyncio.get_running_loop().time()
def _write_ready_file(s: Settings) -> None:
    """Atomically (write, then rename), so a script that sees the file can read a whole line."""
    if s.ready_file is None:
        return
    tmp = s.ready_file.with_name(f".{s.ready_file.name}.tmp")
    tmp.write_text(f"http://{s.host}:{s.port}\n")
    os.replace(tmp, s.ready_file)
def _on_running(s: Settings) -> None:
    _announce_ops(s)  # first, so that whoever sees the ready file has the line in its log already
    _write_ready_file(s)
    freeze_startup_heap()


def freeze_startup_heap() -> None:
    """Move what start-up built (modules, the config snapshot, pydantic models, scrubbers: ~150 k objects)
    out of the garbage collector's reach, after one collection.

    They live as long as the process, yet every full collection walked all of them again: one every ~1200
    calls under the bench's load, 130 ms each, ~110 µs of CPU per call; frozen, 35 ms and ~40 µs
    (docs/benchmarks.md, "Fifth pass"). Frozen objects are still freed when their last reference goes (a
    replaced snapshot, a reloaded vault); only a reference cycle among them would stay, once.
    """
    gc.collect()
    gc.freeze()


async def serve(settings: Settings) -> None:
    proxy = build_master(settings, on_running=lambda: _on_running(settings))
    admin = await _start_admin(settings, proxy)
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if draining:  # a second signal: stop now (what is open is recorded interrupted)
            proxy.shutdown()
        else:
            draining.append(loop.create_task(_drain(proxy)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await proxy.run()
    finally:
        if admin is not None:
            await admin.close()


def run(settings: Settings) -> int:
    _configure_logging(settings)  # reloads and refusals of config changes are for ops (INFO)
    try:  # fail before binding anything, with the file:line message; what `valet config check` loads
        load_snapshot(settings.config)
    except ConfigError as exc:
        print(f"valet: configuration error:\n{exc}", file=sys.stderr)
        return 2
    lock_down(settings.data_dir)  # umask 077, data dir 0700, its files 0600 (addon/datadir.py)
    if settings.ready_file is not None:
        settings.ready_file.unlink(missing_ok=True)  # a stale file from an earlier run must not say "ready"
    try:
        asyncio.run(serve(settings))
    except exceptions.OptionsError as exc:  # raised by an addon's configure(): e.g. the vault cannot be opened
        print(f"valet: cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"valet: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; "
              f"choose another address with --listen HOST:PORT", file=sys.stderr)
        return 2
    finally:
        if settings.ready_file is not None:
            settings.ready_file.unlink(missing_ok=True)
    return 0
