"""The mitmproxy addons: thin shells over the pure core, sharing one Exchange per flow.

Order matters and is fixed by :func:`valet_addons`: record, authenticate, route,
check the session, inspect, relay. Each hook returns at once when an earlier addon already answered
the flow (``flow.response`` set) or the flow is dead.
"""

from __future__ import annotations

from .authenticate import Authenticator
from .inspect import RpcInspector
from .recorder import Recorder
from .relay import StreamRelay
from .router import Router
from .sessions import SessionGuard
from .state import ValetState


def valet_addons() -> list[object]:
    state = ValetState()
    return [state, Recorder(state), Authenticator(state), Router(state), SessionGuard(state),
            RpcInspector(state), StreamRelay(state)]


__all__ = ["valet_addons", "ValetState"]
