"""File-descriptor exhaustion: one log line per interval while it lasts, not a traceback per attempt.

At the fd limit asyncio's accept loop fails on every ready listening socket, up to its backlog (100)
times per loop tick, and hands each failure with its traceback to the loop's exception handler:
416 KB/s of identical tracebacks in mitmproxy's log, which can fill a disk and hide everything else.
asyncio itself retries accepting a second later, so serving resumes by itself once fds are free; this
handler only turns the noise into one warning per ``INTERVAL_SECONDS`` (with how many accepts failed)
and passes every other exception on to the handler that was there.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

log = logging.getLogger("valet")
INTERVAL_SECONDS = 10.0
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def install(loop: asyncio.AbstractEventLoop) -> None:
    previous = loop.get_exception_handler()
    state = {"last": 0.0, "count": 0}

    def handler(loop_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRORS and "accept" in str(context.get("message", "")):
            state["count"] += 1
            now = time.monotonic()
            if now - state["last"] >= INTERVAL_SECONDS:
                log.warning("cannot accept new connections: %s (%d failed accepts since the last such line); "
                            "they wait in the listen queue and are served once file descriptors are free",
                            exc.strerror or exc, state["count"])
                state["last"], state["count"] = now, 0
            return
        if previous is not None:
            previous(loop_, context)
        else:
            loop_.default_exception_handler(context)

    loop.set_exception_handler(handler)
