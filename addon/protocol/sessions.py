"""Bind each upstream MCP session to the valet key that opened it.

An ``Mcp-Session-Id`` is a bearer capability at the upstream: whoever presents
it acts in that session. Without a binding, one agent that learns another's
session id (a log, a shared transcript) could act in it. Valet records which
key opened each session (from the upstream's initialize response) and refuses a
session id presented with any other key, or one it never saw, with the 404 the
MCP spec defines for an unknown session, which makes a compliant client
re-initialize. Bindings are persisted (:mod:`addon.protocol.session_store`), so a
restart keeps them, still bound to the key that opened them.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

from addon.protocol.errors import Cause, Refusal
from addon.protocol.session_store import TOUCH_EVERY_SECONDS, RedisSessions, SessionStore

DEFAULT_MAX_SESSIONS = 100_000


def digest(server: str, session_id: str) -> bytes:
    """What a binding is keyed by, in memory and on disk: never the session id itself."""
    return hashlib.sha256(server.encode() + b"\0" + session_id.encode("utf-8", "surrogatepass")).digest()


class SessionOwners:
    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        self._owners: OrderedDict[bytes, tuple[str, float]] = OrderedDict()  # digest -> (key id, last persisted)
        self._max = max_sessions
        self.store: SessionStore | None = None
        self.shared: RedisSessions | None = None  # when rate_limits.storage is Redis

    def attach(self, store: SessionStore) -> None:
        """Load the persisted bindings (at startup) and persist every change from now on."""
        if self.store is not None:
            self.store.close()
        self.store = store
        for entry, key_id, last_used in store.load():
            self._owners[entry] = (key_id, last_used)
            self._owners.move_to_end(entry)
        while len(self._owners) > self._max:
            self._owners.popitem(last=False)

    async def recall(self, server: str, session_id: str) -> None:
        """A session id not known here may have been bound by another Valet sharing Redis (or before a
        restart with another data dir): learn its owner from there before :meth:`check`."""
        entry = digest(server, session_id)
        if self.shared is None or entry in self._owners:
            return
        owner = await self.shared.lookup(entry)
        if owner is not None and entry not in self._owners:
            self._owners[entry] = (owner, time.time())
            if self.store is not None:
                self.store.bind(entry, owner)
            while len(self._owners) > self._max:
                self._owners.popitem(last=False)

    def check(self, server: str, session_id: str, key_id: str | None) -> None:
        entry = digest(server, session_id)
        owner = self._owners.get(entry)
        if owner is None or owner[0] != key_id:
            # One answer for "never seen" and "someone else's": the reply must not confirm that a session exists.
            raise Refusal(Cause.UNKNOWN_SESSION, "unknown or expired session; initialize a new one")
        self._owners.move_to_end(entry)
        now = time.time()
        if self.store is not None and now - owner[1] > TOUCH_EVERY_SECONDS:
            self._owners[entry] = (owner[0], now)
            self.store.touch(entry)
            if self.shared is not None:
                self.shared.touch(entry)

    def bind(self, server: str, session_id: str, key_id: str) -> None:
        entry = digest(server, session_id)
        if entry not in self._owners:
            self._owners[entry] = (key_id, time.time())
            if self.store is not None:
                self.store.bind(entry, key_id)
            if self.shared is not None:
                self.shared.bind(entry, key_id)
        self._owners.move_to_end(entry)
        while len(self._owners) > self._max:
            self._owners.popitem(last=False)

    def end(self, server: str, session_id: str) -> None:
        entry = digest(server, session_id)
        if self._owners.pop(entry, None) is not None and self.store is not None:
            self.store.end(entry)
        if self.shared is not None:
            self.shared.end(entry)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def __len__(self) -> int:
        return len(self._owners)
