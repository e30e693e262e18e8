"""The mitmproxy addons: thin shells over the pure core, sharing one Exchange per flow.

Order matters and is fixed by :func:`valet_addons`: open the exchange,
authenticate, route, check the session, parse, inject, filter the response, and
last, record the exchange. Each hook returns at once when an earlier addon already answered
the flow (``flow.response`` set) or the flow is dead.
"""

from __future__ import annotations

from .authenticate import Authenticator
from .inject import Injector
from .inspect import RpcInspector
from .recorder import ExchangeOpener, ExchangeRecorder
from .relay import ResponseFilter
from .router import Router
from .sessions import SessionGuard
from .state import ValetState


def valet_addons() -> list[object]:
    state = ValetState()
    return [
        state,
        ExchangeOpener(state),
        Authenticator(state),
        Router(state),
        SessionGuard(state),
        RpcInspector(state),
        Injector(state),
        ResponseFilter(state),
        ExchangeRecorder(state),
    ]


__all__ = ["valet_addons", "ValetState"]
