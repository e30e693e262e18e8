"""Who is calling: the valet key, checked on every request, stripped before upstream.

Reverse mode: ``Authorization: Bearer <key>``. Forward mode: ``Proxy-Authorization``
(Basic with the key as password, so ``http://agent:<key>@valet:8787`` proxy URLs
work, or Bearer). For HTTPS the key arrives once, on CONNECT; it is remembered
for that client connection and re-verified on every request in the tunnel, so a
revocation cuts a live tunnel on its next request.

The key and the configuration are judged when the head arrives, and again when the
body is complete (:meth:`Authenticator.request`, before the policy gate): a key revoked,
or a kill switch or deny rule loaded, while a body was still arriving applies to that
request too (review 3, G6). The second look is an identity comparison and a dict lookup;
only a body that took longer than ``RECHECK_AFTER_SECONDS`` makes it look at the files
again (the few ``stat`` calls every new request makes).
"""

from __future__ import annotations

import base64
import binascii
import re

from mitmproxy import connection, http

from addon.protocol import mitm_conn
from addon.protocol.errors import Cause, Refusal
from addon.protocol.keyleak import KEY_SHAPE, bearer_or_basic_key, carries_key, misplaced_key
from addon.filewatch import reload_if_stale
from addon.audit.exchange import Exchange
from addon.identity import KeyRecord
from addon.hooks.failsafe import fail_closed
from addon.hooks.state import ValetState, answered, exchange_of, refuse

# A body that arrived within this of its head is judged with what Valet knew at the head, plus whatever it
# has learnt since (another request or the watchdog's 1 s sweep reloading): no file is looked at again.
RECHECK_AFTER_SECONDS = 0.05


def _native(value: bytes) -> str:
    """A header value as mitmproxy's ``headers.get`` decodes it."""
    return value.decode("utf-8", "surrogateescape")


def _key_from_bearer(value: str) -> str | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _key_from_proxy_auth(value: str) -> str | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer":
        return token.strip() or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # ValueError: non-ASCII in the header (UnicodeDecodeError is one too)
        return None
    return decoded.partition(":")[2] or None


_KEY_SHAPE_BYTES = re.compile(KEY_SHAPE.pattern.encode(), re.IGNORECASE)


def _nothing_to_find(fields: tuple[tuple[bytes, bytes], ...], path: bytes) -> bool:
    """One scan of every header name and value and the path with its query, joined, as sent: True when
    :func:`misplaced_key` cannot find anything there, so the field-by-field search is skipped.

    It is a superset check: the joined bytes are pure ASCII (so case-insensitive matching is ASCII's),
    hold no ``%`` or ``+`` (so every percent-decoded form is the text itself, and mitmproxy's decoded
    query is the raw one), no ``basic`` (no Basic credential to decode), and no key shape (a valet key
    Valet accepted has that shape too). Fields are joined with a newline, which no key shape spans.
    """
    raw = b"\n".join([*(part for field in fields for part in field), path])
    return (raw.isascii() and b"%" not in raw and b"+" not in raw and b"basic" not in raw.lower()
            and _KEY_SHAPE_BYTES.search(raw) is None)


class Authenticator:
    def __init__(self, state: ValetState) -> None:
        self.state = state
        self._tunnel_keys: dict[str, str] = {}

    async def _verify(self, flow: http.HTTPFlow, key: str | None, missing: Cause) -> KeyRecord:
        """The caller's key record, or a Refusal; a revoked key's owner is still named in the audit row."""
        keyring = self.state.keyring
        if keyring is None:
            raise Refusal(Cause.AUDIT_UNAVAILABLE, "Valet is not configured with a data dir")
        if key is None:
            raise Refusal(missing, "a valet key is required")
        await reload_if_stale(keyring)
        record = keyring.verify(key)
        if record is None:
            raise Refusal(Cause.UNKNOWN_KEY, "unknown valet key")
        self._identify(flow, record)
        if record.revoked:
            raise Refusal(Cause.REVOKED_KEY, "this valet key has been revoked")
        return record

    def _identify(self, flow: http.HTTPFlow, record: KeyRecord) -> None:
        exchange = exchange_of(flow)
        if exchange is not None:
            exchange.key_id, exchange.user, exchange.agent = record.id, record.user, record.agent

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        key = _key_from_proxy_auth(flow.request.headers.get("proxy-authorization", ""))
        try:
            await self._verify(flow, key, Cause.PROXY_AUTH_REQUIRED)
        except Refusal as refusal:
            if refusal.cause.status == 401:
                refusal.status = 407  # HTTP's answer to refused proxy credentials
            refuse(flow, refusal)
            self.state.record_refused_connect(flow)
            return
        self._tunnel_keys[flow.client_conn.id] = key  # type: ignore[assignment]

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        headers = flow.request.headers
        # one pass over the fields for both credentials (each get/get_all/pop scans them all)
        authorization: list[bytes] = []
        proxy_authorization: list[bytes] = []
        for field_name, value in headers.fields:
            lowered = field_name.lower()
            if lowered == b"authorization":
                authorization.append(value)
            elif lowered == b"proxy-authorization":
                proxy_authorization.append(value)
        for name, values in (("authorization", authorization), ("proxy-authorization", proxy_authorization)):
            if len(values) > 1:
                refuse(flow, Refusal(Cause.INVALID_REQUEST, f"the {name} header is given more than once"))
                return
        proxy_auth: str | None = None
        if self.state.mode == "reverse":
            key = _key_from_bearer(_native(authorization[0]) if authorization else "")
            if authorization:
                headers.pop("authorization", None)
            missing = Cause.MISSING_KEY
        else:
            proxy_auth = _native(proxy_authorization[0]) if proxy_authorization else None
            key = _key_from_proxy_auth(proxy_auth) if proxy_auth else self._tunnel_keys.get(flow.client_conn.id)
            missing = Cause.PROXY_AUTH_REQUIRED
        if proxy_authorization:
            headers.pop("proxy-authorization", None)
        try:
            await self._verify(flow, key, missing)
            self._strip_key(flow, key)
        except Refusal as refusal:
            if proxy_auth and refusal.cause.status == 401:
                refusal.status = 407  # credentials given to the proxy itself were refused
            refuse(flow, refusal)

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        """The body is complete: judge the request by the key ring and the configuration in force NOW.

        The exchange's snapshot becomes the current one (the policy gate, the injector and the audit row
        then use it), unless the server's route changed meanwhile: the request was routed by the old one,
        so it is refused (503 ``reconfigured``, retry), never sent where the configuration no longer says.
        """
        if answered(flow):
            return
        exchange = exchange_of(flow)
        if exchange is None or exchange.key_id is None:
            return
        state = self.state
        request = flow.request
        took = (request.timestamp_end or 0.0) - (request.timestamp_start or 0.0)
        if took > RECHECK_AFTER_SECONDS and took > mitm_conn.BODY_TOTAL_SECONDS:
            # HTTP/1 bodies are cut by their timer; this covers HTTP/2
            refuse(flow, Refusal(Cause.REQUEST_TIMEOUT, "the request body did not arrive in time"))
            return
        refusal = await rejudge(state, flow, exchange, look_again=took > RECHECK_AFTER_SECONDS)
        if refusal is not None:
            refuse(flow, refusal)

    @staticmethod
    def _strip_key(flow: http.HTTPFlow, key: str | None) -> None:
        """Remove the forward-mode Authorization that carries a valet key; refuse a key anywhere else."""
        headers = flow.request.headers
        for value in headers.get_all("authorization"):
            token = bearer_or_basic_key(value)
            if (token and carries_key(token, key)) or carries_key(value, key):
                headers.pop("authorization", None)
        if _nothing_to_find(headers.fields, flow.request.data.path):
            return
        where = misplaced_key(key, headers.items(multi=True), flow.request.query.items(multi=True),
                              flow.request.path.partition("?")[0])
        if where is not None:
            raise Refusal(Cause.KEY_MISPLACED, f"a valet key was found in {where}; send it only as the "
                          "proxy or bearer credential (it never goes upstream)")

    def client_disconnected(self, client: connection.Client) -> None:
        self._tunnel_keys.pop(client.id, None)


async def rejudge(state: ValetState, flow: http.HTTPFlow, exchange: Exchange, look_again: bool) -> Refusal | None:
    """Judge an authenticated request again by the key ring and the configuration in force NOW; None: it stands.

    Used when the body is complete (:meth:`Authenticator.request`) and before an OAuth replay sends the request
    once more after a refresh that may have taken seconds (:mod:`.oauthretry`, review 4 H5). ``look_again``
    makes it look at the files (configuration, policy, key ring) rather than at what Valet last loaded. The
    exchange's snapshot becomes the current one, unless the server's route changed (503 ``reconfigured``) or a
    passthrough destination is no longer allowed; the policy's own verdict on the new snapshot is the caller's
    to take (:func:`addon.hooks.gate.redecide`).
    """
    if look_again:
        await state.current()
        await reload_if_stale(state.keyring)
    keyring = state.keyring
    if keyring is not None and exchange.key_id is not None and keyring.revoked(exchange.key_id):
        return Refusal(Cause.REVOKED_KEY, "this valet key has been revoked")
    snapshot = state.snapshot
    previous = exchange.snapshot
    if snapshot is None or snapshot is previous:
        return None
    server = exchange.server
    if server is not None and previous is not None and (
            snapshot.routes.upstreams.get(server) != previous.routes.upstreams.get(server)):
        return Refusal(Cause.RECONFIGURED, f"server {server!r} was reconfigured while the request "
                       "arrived; send it again", headers={"retry-after": "0"})
    request = flow.request
    target = (request.host, request.port)
    if server is None and previous is not None and previous.routes.allows_passthrough(*target) \
            and not snapshot.routes.allows_passthrough(*target):
        return Refusal(Cause.NOT_ALLOWED_DESTINATION, "%s:%d is no longer allowed" % target)
    exchange.snapshot = snapshot
    return None
