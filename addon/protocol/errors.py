"""Every way Valet refuses a request, with a stable JSON-RPC code and HTTP status.

The codes are part of Valet's interface: agents and ops match on them, so a code
never changes meaning once released. They live in the JSON-RPC "server error"
range reserved for implementations (-32000 to -32099), except the standard
parse/invalid-request codes and -32020, the code the MCP SDK itself uses when
2026-07-28 routing headers disagree with the body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Cause(Enum):
    """(reason, JSON-RPC code, HTTP status) for each kind of refusal."""

    PARSE_ERROR = ("parse_error", -32700, 400)
    INVALID_REQUEST = ("invalid_request", -32600, 400)
    MISSING_KEY = ("missing_key", -32001, 401)
    UNKNOWN_KEY = ("unknown_key", -32001, 401)
    REVOKED_KEY = ("revoked_key", -32001, 401)
    PROXY_AUTH_REQUIRED = ("proxy_auth_required", -32001, 407)
    UNKNOWN_SERVER = ("unknown_server", -32002, 404)
    UNKNOWN_SESSION = ("unknown_session", -32007, 404)
    MISSING_SECRET = ("missing_secret", -32008, 424)
    VAULT_ERROR = ("vault_error", -32009, 500)
    NOT_ALLOWED_DESTINATION = ("destination_not_allowed", -32003, 403)
    BAD_PATH = ("bad_path", -32004, 400)
    BODY_TOO_LARGE = ("body_too_large", -32005, 413)
    UNSUPPORTED_MEDIA = ("unsupported_media_type", -32006, 415)
    HEADER_MISMATCH = ("header_mismatch", -32020, 400)
    AUDIT_UNAVAILABLE = ("audit_unavailable", -32010, 503)
    UPSTREAM_ERROR = ("upstream_error", -32011, 502)
    SHUTTING_DOWN = ("shutting_down", -32012, 503)
    RATE_LIMITED = ("rate_limited", -32029, 429)
    DENIED = ("denied", -32030, 403)
    DISABLED = ("disabled", -32031, 403)
    INVALID_TOOL_NAME = ("invalid_tool_name", -32032, 400)
    REAUTH_REQUIRED = ("reauth_required", -32040, 403)
    OAUTH_UNAVAILABLE = ("oauth_unavailable", -32041, 503)
    # The request side (issue 8): what could reach an upstream read differently, or not at all through Valet.
    UPGRADE_REFUSED = ("upgrade_not_allowed", -32050, 400)
    METHOD_OVERRIDE = ("method_override", -32051, 400)
    REWRITE_HEADER = ("rewrite_header", -32052, 400)
    KEY_MISPLACED = ("key_misplaced", -32053, 400)
    ORIGIN_NOT_ALLOWED = ("origin_not_allowed", -32054, 403)
    HOST_NOT_ALLOWED = ("host_not_allowed", -32055, 403)
    PARAM_HEADERS_UNVERIFIED = ("param_headers_unverified", -32056, 400)
    CASE_TWIN = ("case_twin_members", -32057, 400)
    OAUTH_NOT_SUPPORTED = ("oauth_not_supported", -32058, 404)  # OAuth discovery against Valet itself
    # The request side, after review: names and values a downstream parser reads differently.
    UNDERSCORE_HEADER = ("underscore_header", -32059, 400)
    FOLDED_HEADER = ("folded_header", -32060, 400)
    MEMBER_CASE = ("member_case", -32061, 400)
    BATCH_TOO_LARGE = ("batch_too_large", -32062, 413)
    CHARSET_NOT_UTF8 = ("charset_not_utf8", -32063, 415)
    ABSOLUTE_TARGET = ("absolute_target", -32064, 400)
    CANARY_TRIPPED = ("canary_tripped", -32065, 403)  # the request carried a canary secret (docs/operations.md)
    TRAILERS_REFUSED = ("trailers_refused", -32066, 400)  # fields after the body: no stage could judge them
    RECONFIGURED = ("reconfigured", -32070, 503)  # the server's route changed while the request body arrived
    METHOD_VARIANT = ("method_variant", -32071, 400)  # a method that folds or trims to an MCP method but is not it
    # Holding up under load and faults (issue 9).
    UPSTREAM_TIMEOUT = ("upstream_timeout", -32013, 504)
    HEADERS_TOO_LARGE = ("headers_too_large", -32014, 431)
    BUSY = ("busy", -32015, 503)
    REQUEST_TIMEOUT = ("request_timeout", -32016, 408)
    INTERNAL_ERROR = ("internal_error", -32603, 500)

    @property
    def reason(self) -> str:
        return self.value[0]

    @property
    def code(self) -> int:
        return self.value[1]

    @property
    def status(self) -> int:
        return self.value[2]


@dataclass
class Refusal(Exception):
    """A decision not to forward; `message` is shown to the agent, so it never holds a secret."""

    cause: Cause
    message: str
    rpc_id: Any = None
    status: int | None = None  # overrides cause.status, e.g. 407 for key failures on proxy credentials
    data: dict[str, Any] | None = None  # more for error.data, e.g. the rule that decided
    headers: dict[str, str] | None = None  # more response headers, e.g. Retry-After

    @property
    def http_status(self) -> int:
        return self.status or self.cause.status

    def body(self) -> bytes:
        """The JSON-RPC error object the agent receives (also readable as plain JSON)."""
        error = {
            "code": self.cause.code,
            "message": self.message,
            "data": {"reason": self.cause.reason, **(self.data or {})},
        }
        return json.dumps({"jsonrpc": "2.0", "id": self.rpc_id, "error": error}).encode()
