"""Valet's options, configuration snapshot, key ring, vault, rate limiter and audit writer, shared by the stages."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addon import fdlimit
from addon.audit.chain import ChainKeys
from addon.audit import preauth
from addon.audit.log import AuditWriter
from addon.config import ConfigError, timeouts_for
from addon.protocol import mitm_conn, mitm_limits
from addon.protocol.errors import Refusal
from addon.audit.exchange import Exchange
from addon.filewatch import reload_if_stale
from addon.identity import KeyRing, KeyStore
from addon.audit.exchange import _utc_now
from addon.policy.ratelimit import RateLimiter
from addon.oauth.refresher import Refresher
from addon.snapshot import SETTLE_SECONDS, Snapshot, describe_change, load_snapshot, signature_of, unsettled_for, watched
from addon.secrets.vault import SecretCache, VaultError
from addon.secrets.scrubber import Scrubber
from addon.oauth.grants import GRANT, Grant, parse_grant, read_registration
from addon.ops import logscrub, metrics

MAX_REMEMBERED_TOKENS = 256  # per server: previous OAuth tokens stay scrubbed after a refresh
MAX_REMEMBERED_VALUES = 1024  # previous values of the vault's secrets stay scrubbed after a rotation (newest kept)

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
        self._pending: tuple[tuple[int, ...], float] | None = None  # a change seen, not yet settled: (sig, since)
        self.keyring: KeyRing | None = None
        self.audit: AuditWriter | None = None
        self.secrets: SecretCache | None = None
        self.refresher: Refresher | None = None
        self.mode = "reverse"
        self.draining = False  # SIGTERM: no new exchanges, the open ones may finish
        self.open_exchanges = 0  # written ahead, outcome not yet recorded (GET streams not counted)
        # For bench/audit_cost.py only: measure what write-ahead costs (rows are then written at the end).
        self.write_ahead_enabled = os.environ.get("VALET_BENCH_NO_WRITE_AHEAD") != "1"
        # The egress scrubber: (what it was built from, scrubber), and every value it knew: {value: name}
        self._egress: tuple[tuple[object, ...], Scrubber] | None = None
        self._remembered: dict[str, str] = {}
        # (snapshot, vault generation, token epoch, scrubber): the per-call check that nothing changed
        self._current_scrubber: tuple[object, int, int, Scrubber] | None = None
        self._token_epoch = 0
        self._tokens: dict[str, dict[str, str]] = {}  # server -> {token value: name}, current and previous

    def load(self, loader: Loader) -> None:
        loader.add_option("valet_config", str, "", "Path of Valet's YAML configuration.")
        loader.add_option("valet_data_dir", str, ".valet", "Directory for keys, audit log and CA.")
        loader.add_option("valet_mode", str, "reverse", "reverse | forward")

    def configure(self, updated: set[str]) -> None:
        if "valet_config" in updated and ctx.options.valet_config:
            try:
                snapshot = load_snapshot(Path(ctx.options.valet_config), settle=SETTLE_SECONDS)
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
            timeout = self.snapshot.config.audit.commit_timeout_seconds if self.snapshot else 1.0
            self.audit = AuditWriter(data_dir / "audit.db", commit_timeout=timeout, recover=True,
                                     keys=ChainKeys(secrets.vault.keys))
            storage = self.snapshot.config.rate_limits.storage if self.snapshot else "memory://"
            self.refresher = Refresher(secrets, self.audit_event, storage if storage.startswith("redis") else None,
                                       ca_file=lambda: self.snapshot.config.upstream_ca_file if self.snapshot else None)

    def _install(self, snapshot: Snapshot) -> None:
        """Make a snapshot current, with the mitmproxy options and the limiter it implies."""
        previous = self.snapshot
        self.snapshot = snapshot
        self._watched = watched(snapshot.config_path, snapshot.config)
        config = snapshot.config
        # mitmproxy aborts any buffered body past this while it arrives (before it is all in memory),
        # for refused flows too; SSE responses are streamed and not held.
        ctx.options.update(body_size_limit=str(config.limits.max_buffered_bytes))
        mitm_limits.MAX_HEADER_BYTES = config.limits.max_header_bytes
        mitm_limits.MAX_HEADER_COUNT = config.limits.max_header_count
        mitm_limits.MAX_BUFFERED_TOTAL = config.limits.max_buffered_total_bytes
        mitm_limits.REFUSE = refuse
        mitm_limits.HEADER_READ_SECONDS = timeouts_for(config, None)["header_read_seconds"]
        mitm_conn.configure(config.limits, timeouts_for(config, None))
        if config.upstream_ca_file:
            ctx.options.update(ssl_verify_upstream_trusted_ca=config.upstream_ca_file)
        if self.audit is not None:
            self.audit.commit_timeout = config.audit.commit_timeout_seconds
        if previous is None or previous.config.rate_limits != config.rate_limits or self.limiter is None:
            self.limiter = RateLimiter(config.rate_limits.storage, config.rate_limits.max_keys_per_rule,
                                       config.rate_limits.max_identities_per_rule)

    async def current(self) -> Snapshot:
        """The snapshot for a new request: reloaded first if any config or policy file changed.

        A few ``stat`` calls per request; the reading and validation run in a worker thread. A change
        is read only once the policy files have settled (see :mod:`addon.snapshot`); until then the
        last snapshot stays in force.
        """
        assert self.snapshot is not None
        signature = signature_of(self._watched)
        if signature != self.snapshot.signature and signature != self._rejected and self._settled(signature):
            previous = self.snapshot
            try:
                snapshot = await asyncio.to_thread(load_snapshot, self.snapshot.config_path)
            except ConfigError as exc:
                self._rejected = signature
                metrics.config_reload("rejected")
                log.error("configuration change rejected, the last good configuration stays in force:\n%s", exc)
            except Exception as exc:  # noqa: BLE001 - never fail open, never crash the request path
                self._rejected = signature
                metrics.config_reload("failed")
                log.error("configuration reload failed (%s); the last good configuration stays in force",
                          type(exc).__name__)
            else:
                self._rejected = None
                self._install(snapshot)
                metrics.config_reload("ok")
                log.warning("configuration reloaded: %d servers, %d rules from %d policy files; %s",
                            len(snapshot.config.servers), snapshot.policy.rule_count,
                            len(snapshot.policy.sources.files), describe_change(previous, snapshot))
        return self.snapshot

    def _settled(self, signature: tuple[int, ...]) -> bool:
        """Whether a change has stopped changing: policy files' mtimes old enough, or this very signature
        seen for SETTLE_SECONDS already (covers mtimes in the future and coarse clocks)."""
        assert self.snapshot is not None
        now = asyncio.get_running_loop().time()
        if self._pending is None or self._pending[0] != signature:
            self._pending = (signature, now)
        if now - self._pending[1] >= SETTLE_SECONDS:
            return True
        try:
            return unsettled_for(self.snapshot.config_path, self.snapshot.config) <= 0
        except Exception:  # noqa: BLE001 - cannot tell: wait for the observed signature to settle instead
            return False
    def note_grant(self, server: str, grant: Grant | None) -> None:
        """Tokens Valet sent (or will send) to ``server``: scrubbed from then on, and after they are replaced."""
        if grant is None:
            return
        tokens = self._tokens.setdefault(server, {})
        fresh = {v: k for k, v in grant.secrets().items() if v not in tokens}
        if fresh:
            if len(tokens) + len(fresh) > MAX_REMEMBERED_TOKENS:
                for old in list(tokens)[: len(tokens) + len(fresh) - MAX_REMEMBERED_TOKENS]:
                    del tokens[old]
            tokens.update(fresh)
            self._token_epoch += 1  # the egress scrubber is rebuilt with them
    def scrubber(self, server_name: str | None = None) -> Scrubber:
        """THE egress scrubber for an answer (of ``server_name``, or of passthrough): the same for every
        server, the union of every value any upstream could hold (:meth:`egress_scrubber`). Checked per call
        against the snapshot, the vault generation and the known tokens; rebuilt only when one changed."""
        snapshot = self.snapshot
        generation = self.secrets.generation if self.secrets is not None else 0
        known = self._current_scrubber
        if known is not None and known[0] is snapshot and known[1] == generation and known[2] == self._token_epoch:
            return known[3]  # what egress_scrubber depends on is unchanged: no per-call key building
        scrubber = self.egress_scrubber()
        self._current_scrubber = (snapshot, generation, self._token_epoch, scrubber)
        return scrubber

    def egress_scrubber(self) -> Scrubber:
        """The scrubber of every value any upstream could hold, whichever answers (``origin`` is not used
        to narrow it): every user's and the shared value of every secret the injections of every server
        reference, every user's OAuth tokens (current and previous), the OAuth client secrets, the valet-key
        shape, and the values of all of these that were replaced since (MAX_REMEMBERED_VALUES, for the
        process lifetime: a stateful upstream may echo a rotated secret).

        Why not per origin (it was): an origin is how the config *spells* an upstream, and one upstream
        process answers under many spellings (``127.0.0.1:P`` and ``localhost:P``, a name and its address,
        two virtual hosts of one gateway), and one server may relay another's answers; review 4 (H1) had a
        token injected for one server echoed raw through the other. A value of any server in any answer is
        a leak. Cached; rebuilt when the vault generation, a server's config or the known tokens change;
        never per request.
        """
        snapshot = self.snapshot
        upstreams = snapshot.routes.upstreams if snapshot is not None else {}
        names = sorted(upstreams)
        servers = {n: snapshot.config.servers[n] for n in names} if snapshot is not None else {}
        secrets = self.secrets
        generation = secrets.generation if secrets is not None else 0
        key = (generation, self._token_epoch, tuple((n, s.secret_names, s.auth) for n, s in servers.items()))
        cached = self._egress
        if cached is not None and cached[0] == key:
            return cached[1]
        values: list[tuple[str, str]] = []
        for server_name, server in servers.items():
            if secrets is not None:
                values += secrets.values_of(server_name, server.secret_names)
                if server.auth == "oauth":
                    for _, grant_text in secrets.values_of(server_name, {GRANT}):
                        self.note_grant(server_name, parse_grant(grant_text))
                    registration = read_registration(secrets, server_name)
                    if registration is not None and registration.client.client_secret:
                        values.append(("OAUTH_CLIENT_SECRET", registration.client.client_secret))
            values += [(name, value) for value, name in self._tokens.get(server_name, {}).items()]
        remembered = self._remembered
        current = {value for _, value in values}
        for name, value in values:
            remembered.pop(value, None)
            remembered[value] = name  # the current ones last: the oldest previous ones are dropped first
        for old in list(remembered)[: max(0, len(remembered) - len(current) - MAX_REMEMBERED_VALUES)]:
            del remembered[old]
        scrubber = Scrubber([(name, value) for value, name in remembered.items()])
        key = (generation, self._token_epoch, key[2])  # note_grant above may have learnt tokens
        self._egress = (key, scrubber)
        logscrub.remember("egress", scrubber)  # log records are scrubbed with the values in force too
        return scrubber

    def running(self) -> None:
        fdlimit.install(asyncio.get_running_loop())  # fd exhaustion: one line per interval, not a traceback flood
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
            preauth.AGGREGATOR.flush()  # the interval's summaries of keyless refusals (addon.audit.preauth)
            self.audit.close()

    def audit_event(self, row: dict[str, object]) -> None:
        """An audit row that is not an agent's exchange (an OAuth refresh, a failure)."""
        if row.get("rpc_method") == "oauth/refresh":
            metrics.oauth_refresh(row.get("server"), "ok" if row.get("decision") == "allow" else str(row.get("reason")))
        if self.audit is not None:
            self.audit.submit({"ts": _utc_now(), "mode": self.mode, **row})

    def record(self, exchange: Exchange, status: int | None) -> None:
        """The exchange is over: complete its row written ahead, or write it whole (then ``committed``)."""
        if exchange.recorded or self.audit is None:
            return
        row = exchange.finish(status)
        if exchange.row is not None:
            if exchange.http_method != "GET":
                self.open_exchanges -= 1
            self.audit.complete(exchange.row, row)
        else:
            exchange.committed = self.audit.submit(row, wait=True)

    def write_ahead(self, exchange: Exchange, uses: list[tuple[object, ...]] | None = None) -> None:
        """Queue the row of an exchange about to leave Valet; ``exchange.committed`` says when it is durable."""
        assert self.audit is not None
        exchange.row, exchange.committed = self.audit.begin_values(exchange.values("pending"), uses)
        metrics.audit_queued(exchange.committed)
        if exchange.http_method != "GET":  # a GET is a standing stream: a shutdown does not wait for it
            self.open_exchanges += 1


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
