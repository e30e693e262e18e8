"""mitmproxy's type check of message fields, without an exception for every ``Optional`` field that is set.

mitmproxy checks the type of every field of every request and response it builds
(``RequestData``/``ResponseData.__post_init__``, :func:`mitmproxy.utils.typecheck.check_option_type`).
For a field typed ``X | None`` it tries each alternative in turn and catches the ``TypeError`` the
first wrong one raises: a raised exception, its traceback and the frames it holds, for each such
field, ~12 a call. Each is a reference cycle (the frame holds the exception that holds the
traceback that holds the frame), so besides raising it the garbage collector must find and free
it: ~60 of the ~290 objects of cyclic garbage a proxied call leaves (docs/benchmarks.md, "Fifth pass").

:func:`check_option_type` answers those cases first without raising: an alternative that is
``None`` or a plain class the value is an instance of (``float`` also taking an ``int``, as
mitmproxy does) makes the value valid, which is what mitmproxy's own check concludes. Everything
else (no alternative matches, tuples, sequences, IO types, ``Any``) goes to mitmproxy's function
unchanged, which raises the same error as before.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from mitmproxy.utils import typecheck

_original = typecheck.check_option_type
_UNIONS = (typing.Union, types.UnionType)
_NONE = type(None)


def _plainly_valid(value: Any, alternative: Any) -> bool:
    """True when mitmproxy's check would accept ``value`` for ``alternative`` without any branch but
    ``isinstance`` (a plain class: no parameters, not ``Any``, not an IO type)."""
    if alternative is _NONE:
        return value is None
    if not isinstance(alternative, type) or typing.get_origin(alternative) is not None:
        return False
    if alternative in (typing.Any, typing.TextIO, typing.BinaryIO):  # Any is a class since Python 3.11
        return False
    return isinstance(value, alternative) or (alternative is float and isinstance(value, int))


def check_option_type(name: str, value: Any, typeinfo: Any) -> None:
    if typing.get_origin(typeinfo) in _UNIONS:
        for alternative in typing.get_args(typeinfo):
            if _plainly_valid(value, alternative):
                return
    _original(name, value, typeinfo)


_installed = False


def install() -> None:
    """Replace mitmproxy's function (its own recursion and every caller look it up on the module)."""
    global _installed
    if not _installed:
        typecheck.check_option_type = check_option_type
        _installed = True
