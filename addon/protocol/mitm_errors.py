"""Make mitmproxy's own error responses JSON-RPC error objects.

When mitmproxy itself fails a request (upstream unreachable, upstream died
before answering, malformed HTTP), its HTTP/1 layer answers with an HTML page
built by ``_http1.make_error_response``; no addon hook can replace that
response. Agents need the same machine-readable shape as every other Valet
refusal, so we swap that one function for one that builds a JSON-RPC error with
a stable code. mitmproxy is pinned below 13; the test suite checks the result
end to end (``test_unreachable_upstream_is_a_json_rpc_error``), so a change in
mitmproxy's internals fails loudly rather than silently.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from addon.protocol.errors import Cause, Refusal

_CAUSE_BY_STATUS = {400: Cause.INVALID_REQUEST, 413: Cause.BODY_TOO_LARGE}


_MESSAGES = {400: "the request could not be read", 413: "the body is too large"}


# Protocol errors Valet raises itself inside mitmproxy's readers start with their reason (mitm_conn item 7);
# mitmproxy's own messages are never quoted (they can hold upstream bytes), these fixed texts are.
_VALET_REASONS = {Cause.TRAILERS_REFUSED.reason: (Cause.TRAILERS_REFUSED, "requests with trailers are not accepted")}


def error_page(status_code: int, message: str = "") -> tuple[Cause, bytes]:
    """The cause and body of the page mitmproxy sends for this status (the audit row records the same)."""
    known = _VALET_REASONS.get(message.partition(":")[0].strip().lower()) if status_code == 400 else None
    if known is not None:
        return known[0], Refusal(*known).body()
    cause = _CAUSE_BY_STATUS.get(status_code, Cause.UPSTREAM_ERROR)
    return cause, Refusal(cause, _MESSAGES.get(status_code, "the upstream failed to answer")).body()


def _json_error_response(status_code: int, message: str = "") -> bytes:
    """A fixed text per status: mitmproxy's own message can quote raw upstream bytes (a secret, say)."""
    _cause, body = error_page(status_code, message)
    response = http.Response.make(
        status_code, body, http.Headers(content_type="application/json", connection="close")
    )
    return http1.assemble_response(response)


def install() -> None:
    _http1.make_error_response = _json_error_response
