"""Bind each upstream MCP session to the valet key that opened it.

An ``Mcp-Session-Id`` is a bearer capability at the upstream: whoever presents
it acts in that session. Without a binding, one agent that learns another's
session id (a log, a shared transcript) could act in it. Valet records which
key opened each session (from the upstream's initialize response) and refuses a
session id presented with any other key, or one it never saw, with the 404 the
MCP spec defines for an unknown session, which makes a compliant client
re-initialize. After a Valet restart existing sessions are unknown, so clients
re-initialize once: we fail closed rather than trust an unbound id.
"""

from __future__ import annotations

from collections import OrderedDict

from addon.protocol.errors import Cause, Refusal

DEFAULT_MAX_SESSIONS = 100_000


class SessionOwners:
    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        self._owners: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._max = max_sessions

    def check(self, server: str, session_id: str, key_id: str | None) -> None:
        owner = self._owners.get((server, session_id))
        if owner is None or owner != key_id:
            # One answer for "never seen" and "someone else's": the reply must not confirm that a session exists.
            raise Refusal(Cause.UNKNOWN_SESSION, "unknown or expired session; initialize a new one")
        self._owners.move_to_end((server, session_id))

    def bind(self, server: str, session_id: str, key_id: str) -> None:
        self._owners.setdefault((server, session_id), key_id)
        self._owners.move_to_end((server, session_id))
        while len(self._owners) > self._max:
            self._owners.popitem(last=False)

    def end(self, server: str, session_id: str) -> None:
        self._owners.pop((server, session_id), None)

    def __len__(self) -> int:
        return len(self._owners)
