"""The secret-usage ledger: for every exchange, which secrets (name, fingerprint) went to which upstream host.

Rows of ``secret_uses`` are written in the same transaction as the exchange's
row written ahead, so "where did STRIPE_KEY go last week, for which keys?" is a
join away, and a use is on record before the request carrying it leaves Valet.
Only names and the vault's keyed fingerprints are stored, never values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS secret_uses (
    exchange_id INTEGER NOT NULL,  -- exchanges.id (its key_id, user, agent, tool, decision...)
    ts_unix     REAL NOT NULL,     -- when the request arrived (as exchanges.ts_unix)
    name        TEXT NOT NULL,     -- the secret's name, e.g. STRIPE_KEY
    fingerprint TEXT,              -- the vault's keyed fingerprint of the value (NULL for OAuth tokens)
    scope       TEXT,              -- user | shared | oauth
    server      TEXT,              -- the configured server
    host        TEXT               -- the upstream host the request was sent to
);
CREATE INDEX IF NOT EXISTS secret_uses_name ON secret_uses (name, ts_unix);
CREATE INDEX IF NOT EXISTS secret_uses_exchange ON secret_uses (exchange_id);
"""

INSERT = "INSERT INTO secret_uses VALUES (?, ?, ?, ?, ?, ?, ?)"

OAUTH_TOKEN = "OAUTH_ACCESS_TOKEN"


def uses(cache: Any, server: str, user: str, names: Iterable[str], host: str) -> list[tuple[Any, ...]]:
    """(name, fingerprint, scope, server, host) for each injected name, resolved as the injection did:
    the user's own secret first, else the server's shared one."""
    rows = getattr(cache, "_rows", None) or {}  # SecretCache's in-memory rows: no disk, no decryption
    found: list[tuple[Any, ...]] = []
    for name in names:
        if name == OAUTH_TOKEN:
            found.append((name, None, "oauth", server, host))
            continue
        row = rows.get((server, user, name)) or rows.get((server, "", name))
        found.append((name, getattr(row, "fingerprint", None), getattr(row, "scope", None), server, host))
    return found


USAGE_SQL = """
SELECT e.ts, u.name, u.fingerprint, u.scope, u.server, u.host, e.user, e.agent, e.key_id, e.tool,
       e.decision, e.http_status, e.id AS exchange_id
FROM secret_uses u JOIN exchanges e ON e.id = u.exchange_id
WHERE u.name = ? AND u.ts_unix >= ?
ORDER BY u.ts_unix
"""
