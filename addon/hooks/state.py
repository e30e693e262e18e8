"""Valet's options, configuration snapshot, key ring, vault, rate limiter and audit writer, shared by the stages."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addon.audit.log import AuditWriter
from addon.config import ConfigError
from addon.protocol.errors import Refusal
from addon.audit.exchange import Exchange
from addon.filewatch import reload_if_stale
from addon.identity import KeyRing, KeyStore
from addon.audit.exchange import _utc_now
from addon.policy.ratelimit import RateLimiter
from addon.oauth.refresher import Refresher
from addon.snapshot import Snapshot, load_snapshot, signature_of, watched
from addon.secrets.vault import SecretCache, VaultError

log = logging.getLogger("valet")
METADATA_KEY = "valet"
KEY_REFRESH_SECONDS = 1.0
WWW_AUTHENTICATE = ('Bearer realm="valet", error="invalid_token", '
                    'error_description="send a valet key as Authorization: Bearer vk_..."')


class ValetState:
    """Loads what the other addons decide with; reloads nothing behind their back."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.limiter: RateLimiter | None = None
        self._watched: list[Path] = []
        self._rejected: tuple[int, ...] | None = None  # signature of files whose reload failed
        self.keyring: KeyRing | None = None
        self.audit: AuditWriter | None = None
        self.secrets: SecretCache | None = None
        self.refresher: Refresher | None = None
        self.mode = "reverse"

    def load(self, loader: Loader) -> None:
        loader.add_option("valet_config", str, "", "Path of Valet's YAML configuration.")
        loader.add_option("valet_data_dir", str, ".valet", "Directory for keys, audit log and CA.")
        loader.add_option("valet_mode", str, "reverse", "reverse | forward")

    def configure(self, updated: set[str]) -> None:
        if "valet_config" in updated and ctx.options.valet_config:
            try:
                snapshot = load_snapshot(Path(ctx.options.valet_config))
            except ConfigError as exc:
                raise exceptions.OptionsError(str(exc)) from None
            self._install(snapshot)
        if "valet_mode" in updated:
            if ctx.options.valet_mode not in ("reverse", "forward"):
                raise exceptions.OptionsError("valet_mode must be 'reverse' or 'forward'")
            self.mode = ctx.options.valet_mode
        if "valet_data_dir" in updated:
            data_dir = Path(ctx.options.valet_data_dir)
            data_dir.mkdir(parents=True, exist_ok=True)
            self.keyring = KeyRing(KeyStore(data_dir / "keys.db"))
            self.keyring.reload()
            secrets = SecretCache(data_dir)
            try:
                secrets.reload()  # creates the key file on first run; a wrong key stops the start here
            except VaultError as exc:
                raise exceptions.OptionsError(f"vault: {exc}") from None
            self.secrets = secrets
            if self.audit is not None:
                self.audit.close()
            self.audit = AuditWriter(data_dir / "audit.db")
            storage = self.snapshot.config.rate_limits.storage if self.snapshot else "memory://"
            self.refresher = Refresher(secrets, self.audit_event, storage if storage.startswith("redis") else None)

    def _install(self, snapshot: Snapshot) -> None:
        """Make a snapshot current, with the mitmproxy options and the limiter it implies."""
        previous = self.snapshot
        self.snapshot = snapshot
        self._watched = watched(snapshot.config_path, snapshot.config)
        config = snapshot.config
        # mitmproxy aborts any buffered body past this while it arrives (before it is all in memory),
        # for refused flows too; SSE responses are streamed and not held.
        ctx.options.update(body_size_limit=str(config.limits.max_buffered_bytes))
        if config.upstream_ca_file:
            ctx.options.update(ssl_verify_upstream_trusted_ca=config.upstream_ca_file)
        if previous is None or previous.config.rate_limits != config.rate_limits or self.limiter is None:
            self.limiter = RateLimiter(config.rate_limits.storage)

    async def current(self) -> Snapshot:
        """The snapshot for a new request: reloaded first if any config or policy file changed.

        A few ``stat`` calls per request; the reading and validation run in a worker thread.
        """
        assert self.snapshot is not None
        signature = signature_of(self._watched)
        if signature != self.snapshot.signature and signature != self._rejected:
            try:
                snapshot = await asyncio.to_thread(load_snapshot, self.snapshot.config_path)
            except ConfigError as exc:
                self._rejected = signature
                log.error("configuration change rejected, the last good configuration stays in force:\n%s", exc)
            except Exception as exc:  # noqa: BLE001 - never fail open, never crash the request path
                self._rejected = signature
                log.error("configuration reload failed (%s); the last good configuration stays in force",
                          type(exc).__name__)
            else:
                self._rejected = None
                self._install(snapshot)
                log.info("configuration reloaded: %d servers, %d rules from %d policy files",
                            len(snapshot.config.servers), snapshot.policy.rule_count,
                            len(snapshot.policy.sources.files))
        return self.snapshot

    def running(self) -> None:
        self._key_refresh = asyncio.get_running_loop().create_task(self._refresh_keys())

    async def _refresh_keys(self) -> None:
        """Notice revocations even without new requests, so that open streams are cut within a second."""
        while True:
            await asyncio.sleep(KEY_REFRESH_SECONDS)
            try:
                await reload_if_stale(self.keyring)
            except Exception as exc:  # noqa: BLE001 - keep refreshing; requests reload (fail closed) on their own
                log.error("key refresh failed: %s", type(exc).__name__)

    async def done(self) -> None:
        key_refresh = getattr(self, "_key_refresh", None)
        if key_refresh is not None:
            key_refresh.cancel()
        if self.refresher is not None:  # its HTTP connections to authorization servers
            try:
                await self.refresher.close()
            except Exception as exc:  # noqa: BLE001 - shutting down: the audit flush below matters more
                log.warning("closing the OAuth client failed: %s", type(exc).__name__)
        if self.audit is not None:
            self.audit.close()

    def audit_event(self, row: dict[str, object]) -> None:
        """An audit row that is not an agent's exchange (an OAuth refresh, a failure)."""
        if self.audit is not None:
            self.audit.submit({"ts": _utc_now(), "mode": self.mode, **row})

    def record(self, exchange: Exchange, status: int | None) -> None:
        if not exchange.recorded and self.audit is not None:
            self.audit.submit(exchange.finish(status))


    def record_refused_connect(self, flow: http.HTTPFlow) -> None:
        """A refused CONNECT gets its own row; allowed ones do not (the tunnel's requests do)."""
        exchange = exchange_of(flow)
        if exchange is not None and flow.response is not None:
            exchange.bytes_out = len(flow.response.raw_content or b"")
            self.record(exchange, flow.response.status_code)


def exchange_of(flow: http.HTTPFlow) -> Exchange | None:
    return flow.metadata.get(METADATA_KEY)


def refuse(flow: http.HTTPFlow, refusal: Refusal, decision: str = "deny") -> None:
    """Answer the flow ourselves: nothing goes upstream, the audit row says why."""
    exchange = exchange_of(flow)
    if exchange is not None:
        exchange.decision = decision
        exchange.reason = refusal.cause.reason
        exchange.error_code = refusal.cause.code
    headers = {"content-type": "application/json", **(refusal.headers or {})}
    if exchange is not None and refusal.data and "rule" in refusal.data:
        exchange.rule = refusal.data["rule"]
    status = refusal.http_status
    if status == 407:
        headers["proxy-authenticate"] = 'Basic realm="valet"'
    elif status == 401:
        # No resource_metadata: Valet is not an OAuth resource server, and a client that finds no
        # metadata pointer (and 404s on discovery, see hooks/wellknown.py) stops instead of registering.
        headers["www-authenticate"] = WWW_AUTHENTICATE
    flow.response = http.Response.make(status, refusal.body(), headers)


def answered(flow: http.HTTPFlow) -> bool:
    """True when this flow needs nothing more from a request-side hook."""
    return flow.response is not None or flow.error is not None or not flow.live


def routed(flow: http.HTTPFlow) -> Exchange | None:
    """The exchange of a live, unanswered flow that was authenticated and routed to a configured server."""
    if answered(flow):
        return None
    exchange = exchange_of(flow)
    if exchange is None or exchange.server is None or exchange.user is None:
        return None
    return exchange
