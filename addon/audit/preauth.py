"""What a client without a key can make the audit log hold: bounded per peer, and never past the disk.

Every refusal keeps an audit row, but before authentication nobody is accountable for it: one local
client made 278 refusals a second, about 4.5 KB of ``audit.db`` each (1.3 MB/s, ~110 GB a day, in an
append-only log the operator cannot prune in place). So, for refusals of requests that presented no
known key (review 2, F14):

- **the path is stored short**: its first :data:`PATH_CHARS` characters and a hash of the rest;
- **beyond a per-peer rate they are aggregated**: the first :data:`ROWS_PER_INTERVAL` refusals of a peer
  address in an interval get their own rows, as always; the rest are counted per peer and reason, and
  one summary row per (peer, reason) is written when the interval ends (or Valet stops), with the
  count, the first and last time and one sample path. Nothing is silently dropped: the rows plus the
  summaries' counts are every refusal, and the summaries are in the MAC chain like any row;
- **a free-disk watermark** (``audit.min_free_bytes``) for the audit database's filesystem: below it
  new requests are refused ``503 audit_unavailable`` before anything is written, and ``/readyz`` says
  not ready, so the disk never fills to the point where the log breaks. Checked at most once a second
  (one ``statvfs``); recovery is automatic once space is free.

Authenticated exchanges are untouched: they are accountable to a key, and rate rules bound them.

Refusals answered below mitmproxy's flow layer (review 3, G5: a head mitmproxy cannot frame, such as
``Content-Length`` with ``Transfer-Encoding``, ``400``; a head over the caps, ``431``, HTTP/1 or on an
HTTP/2 stream; a header block that ends an HTTP/2 connection with ``GOAWAY``; a head that never completes,
``408``; see :mod:`addon.protocol.mitm_limits`) have no flow and no hook: :func:`layer_refusal` writes their
row ahead from the head bytes Valet read, with the key id (never the key) when the head carried a known
key, and through the same per-peer aggregation when it did not; :class:`Held` completes it with what the
agent got (the refusal, or ``503 audit_unavailable`` when the row could not be committed in time).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from addon.audit.exchange import Exchange
from addon.audit.log import utc_iso
from addon.protocol.keyleak import bearer_or_basic_key

log = logging.getLogger("valet")

PATH_CHARS = 128
ROWS_PER_INTERVAL = 60  # own rows per peer (an IPv4 address, an IPv6 /64) and interval before aggregating
INTERVAL_SECONDS = 60.0
MAX_PEERS = 1000  # peers with own rows in an interval; refusals from more are aggregated under the peer "*"
# Own rows across all peers and interval (review 3, G7): one client with many addresses (all of 127.0.0.0/8,
# an IPv6 /48's 65,536 /64s) is many peers; past this, every keyless refusal is counted under the peer "*".
GLOBAL_ROWS_PER_INTERVAL = 600
SAMPLE_PEERS = 8  # peers named in a "*" summary
DISK_CHECK_SECONDS = 1.0
SUMMARY_METHOD = "valet/refusals"


def short_path(path: str) -> str:
    """The first :data:`PATH_CHARS` characters, then ``…#`` and 16 hex digits of the SHA-256 of the rest."""
    if len(path) <= PATH_CHARS:
        return path
    rest = path[PATH_CHARS:].encode("utf-8", "surrogatepass")
    return f"{path[:PATH_CHARS]}…#{hashlib.sha256(rest).hexdigest()[:16]}"


@dataclass
class _Summary:
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    status: int | None = None
    error_code: int | None = None
    sample: str = ""
    mode: str = ""
    methods: set[str] = field(default_factory=set)
    peers: set[str] = field(default_factory=set)  # for the "*" summary: a sample of who was counted there


class Aggregator:
    """Per-peer counts of refusals before authentication in the current interval."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}  # peer -> own rows written this interval
        self.own = 0  # own rows written this interval, all peers together (GLOBAL_ROWS_PER_INTERVAL)
        self.summaries: dict[tuple[str, str], _Summary] = {}
        self.started = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._submit: Any = None

    def admit(self, peer: str, exchange: Any, status: int | None, submit: Any) -> bool:
        """True if this refusal gets its own row; False if it was counted into its peer's summary."""
        self._submit = submit
        if time.monotonic() - self.started >= INTERVAL_SECONDS:
            self.flush()
        who = peer
        if self.own >= GLOBAL_ROWS_PER_INTERVAL or (peer not in self.rows and len(self.rows) >= MAX_PEERS):
            peer = "*"
        seen = self.rows.get(peer, 0)
        if peer != "*" and seen < ROWS_PER_INTERVAL:
            self.rows[peer] = seen + 1
            self.own += 1
            return True
        reason = exchange.reason or "other"
        summary = self.summaries.get((peer, reason))
        if summary is None:
            summary = self.summaries[(peer, reason)] = _Summary(first=exchange.ts_unix, status=status,
                                                                 error_code=exchange.error_code,
                                                                 sample=exchange.http_path, mode=exchange.mode)
            if len(self.summaries) == 1:
                log.warning("refusals before authentication from %s past %d per %.0f s: aggregated into "
                            "one audit row per peer and reason", peer, ROWS_PER_INTERVAL, INTERVAL_SECONDS)
        summary.count += 1
        summary.last = exchange.ts_unix
        if len(summary.methods) < 8:
            summary.methods.add(exchange.http_method)
        if peer == "*" and len(summary.peers) < SAMPLE_PEERS:
            summary.peers.add(who)
        self._arm()
        return False

    def _arm(self) -> None:
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            due = max(0.0, self.started + INTERVAL_SECONDS - time.monotonic())
            self._timer = loop.call_later(due, self.flush)

    def flush(self) -> None:
        """Write one summary row per (peer, reason) of the interval that ends, and start a new one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        summaries, self.summaries = self.summaries, {}
        self.rows = {}
        self.own = 0
        self.started = time.monotonic()
        if self._submit is None:
            return
        for (peer, reason), s in summaries.items():
            detail = {"peer": peer, "count": s.count, "first": utc_iso(s.first), "last": utc_iso(s.last),
                      "methods": sorted(s.methods), "sample_path": s.sample,
                      **({"sample_peers": sorted(s.peers)} if peer == "*" else {})}
            self._submit({
                "ts": utc_iso(s.first), "ts_unix": s.first, "mode": s.mode, "http_method": "-",
                "http_path": f"({s.count} refusals before authentication from {peer})",
                "rpc_method": SUMMARY_METHOD, "decision": "deny", "reason": reason, "error_code": s.error_code,
                "http_status": s.status, "arguments": json.dumps(detail), "duration_ms": (s.last - s.first) * 1000,
            })


AGGREGATOR = Aggregator()


def _peer(address: str) -> str:
    """A peer as one party holds it: an IPv4 address (all of 127.0.0.0/8 as one: this host), or an IPv6 /64
    (one host's usual allocation)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _peer(str(ip.ipv4_mapped))
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    if ip.is_loopback:  # every address of 127.0.0.0/8 is this host: one party, however many it binds
        return "127.0.0.0/8"
    return str(ip)


LAYER_STATE: Any = None  # the proxy's ValetState, bound by hooks/recorder.py (the layer below has no flow to ask)


@dataclass(eq=False)
class Held:
    """A refusal answered below the flow layer, held until its row is committed.

    The answer waits for ``committed`` (at most ``bound`` seconds: the writer's commit bound, or 0 when the
    log is known to be failing); if the row was not committed by then, the agent gets ``503
    audit_unavailable`` instead of the refusal (issue 10 item 4: nothing is answered unrecorded while the log
    is down). :meth:`answered` then completes the row with what the agent actually got, so a row written
    ahead as a 431 ends as the 503 it was, once the log recovers. ``exchange`` is None when the row cannot be
    changed any more (a whole row, or one counted into its peer's summary).
    """

    committed: asyncio.Future[bool] | None
    bound: float
    exchange: Exchange | None = None
    state: Any = None

    def answered(self, cause: Any, status: int | None, bytes_out: int) -> None:
        """The agent got ``status`` and ``bytes_out`` body bytes; ``cause`` when that is not the refusal the
        row was written ahead with (``audit_unavailable``)."""
        exchange, self.exchange = self.exchange, None
        if exchange is None or self.state is None:
            return
        if cause is not None:
            exchange.reason, exchange.error_code = cause.reason, cause.code
        exchange.bytes_out = bytes_out
        self.state.record(exchange, status)


def _failed() -> asyncio.Future[bool]:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    future.set_result(False)
    return future


def layer_refusal(peer: Any, head: bytes, cause: Any, status: int | None, rule: str,
                  answer_bytes: int, bytes_in: int | None = None) -> Held | None:
    """Write the row of a refusal answered below the flow layer (HTTP/1 and HTTP/2: ``head`` is the raw HTTP/1
    head, or an HTTP/2 head written out the same way); returns what the answer waits for, or None when there
    is nothing to wait for (no log, or the refusal was counted into its peer's summary while the log works).
    ``bytes_in``: what Valet read, when that is not ``head`` (an h2 head's decoded size, an encoded block)."""
    state = LAYER_STATE
    if getattr(state, "audit", None) is None:
        return None
    method, path, credentials = _read_head(head)
    exchange = Exchange(mode=state.mode, http_method=method[:16] or "-", http_path=path or "-",
                        bytes_in=len(head) if bytes_in is None else bytes_in, bytes_out=answer_bytes)
    return refused_without_flow(state, peer, exchange, credentials, cause, status, rule)


def refused_without_flow(state: Any, peer: Any, exchange: Exchange, credentials: list[str], cause: Any,
                         status: int | None, rule: str) -> Held | None:
    """Write the row of ``exchange``, refused before any stage saw it: named after the key among
    ``credentials`` if one is known, else aggregated per peer like any refusal without a key.

    The row is written ahead with the refusal as its outcome (``status``, the reason), so that what is
    committed before the answer already says what the agent gets; :meth:`Held.answered` completes it. While
    the log is failing the answer does not wait (``bound`` 0): it is ``503 audit_unavailable`` at once, and a
    refusal counted into its peer's summary gets that too (its summary row is not committed either).
    """
    audit = state.audit
    healthy = audit.healthy
    exchange.http_path = short_path(exchange.http_path)
    exchange.decision, exchange.rule, exchange.reason, exchange.error_code = "deny", rule, cause.reason, cause.code
    record = _known_key(state.keyring, credentials)
    if record is not None:
        exchange.key_id, exchange.user, exchange.agent = record.id, record.user, record.agent
    elif not AGGREGATOR.admit(_peer(peer[0] if peer else "?"), exchange, status, audit.submit):
        exchange.recorded = True  # counted into its peer's summary
        return None if healthy else Held(_failed(), 0.0)
    exchange.http_status = status
    state.write_ahead(exchange)
    return Held(exchange.committed, audit.commit_timeout if healthy else 0.0, exchange, state)


def credentials_of(values: list[str]) -> list[str]:
    """What may be a valet key in (Proxy-)Authorization values: a Bearer token, a Basic pair and its halves."""
    found: list[str] = []
    for value in values[:4]:
        credential = bearer_or_basic_key(value)
        if credential:
            found += [credential, *credential.split(":", 1)]  # Basic: KEY: or :KEY
    return found


def _read_head(head: bytes) -> tuple[str, str, list[str]]:
    """Method, target and the credentials of (Proxy-)Authorization lines of a raw head (possibly cut)."""
    lines = head.split(b"\n", MAX_HEAD_LINES)
    start = lines[0].decode("utf-8", "backslashreplace").split()
    method, path = (start[0], start[1] if len(start) > 1 else "") if start else ("", "")
    values = []
    for line in lines[1:MAX_HEAD_LINES]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"authorization", b"proxy-authorization"):
            values.append(value.decode("utf-8", "replace"))
    return method, path, credentials_of(values)


MAX_HEAD_LINES = 200


def _known_key(keyring: Any, credentials: list[str]) -> Any:
    for credential in credentials:
        try:
            record = keyring.verify(credential) if keyring is not None else None
        except Exception:  # noqa: BLE001 - an unreadable value is no key
            record = None
        if record is not None:
            return record
    return None


def absorbed(state: Any, flow: Any, exchange: Any) -> bool:
    """Called before a refused exchange's row is written: shorten its path if it presented no known key,
    and say whether its row is counted into a summary instead (then it is marked recorded)."""
    if exchange is None or exchange.key_id is not None or flow.response is None or exchange.decision == "allow":
        return False
    exchange.http_path = short_path(exchange.http_path)
    if state.audit is None:
        return False
    peer = _peer(flow.client_conn.peername[0] if flow.client_conn.peername else "?")
    if AGGREGATOR.admit(peer, exchange, flow.response.status_code, state.audit.submit):
        return False
    exchange.recorded = True  # counted: nothing else writes a row for it
    return True


class DiskWatermark:
    """Whether the audit database's filesystem has at least ``audit.min_free_bytes`` free."""

    def __init__(self) -> None:
        self._checked = 0.0
        self._low = False
        self.free: int | None = None

    def low(self, path: str | os.PathLike[str] | None, minimum: int) -> bool:
        if path is None or minimum <= 0:
            return False
        now = time.monotonic()
        if now - self._checked >= DISK_CHECK_SECONDS:
            self._checked = now
            try:
                st = os.statvfs(os.path.dirname(os.fspath(path)) or ".")
                self.free = st.f_bavail * st.f_frsize
            except OSError:
                self.free = None  # cannot tell: fail closed
            low = self.free is None or self.free < minimum
            if low != self._low:
                if low:
                    log.error("audit log disk: %s free, below audit.min_free_bytes (%d): refusing new requests "
                              "(503 audit_unavailable) until space is freed",
                              "unknown" if self.free is None else self.free, minimum)
                else:
                    log.warning("audit log disk: %d bytes free again; serving", self.free or 0)
            self._low = low
        return self._low


DISK = DiskWatermark()


def disk_low(state: Any) -> bool:
    """The watermark for the current configuration (False when none is set or no log is open)."""
    snapshot = state.snapshot
    if state.audit is None or snapshot is None:
        return False
    return DISK.low(state.audit.path, snapshot.config.audit.min_free_bytes)
