"""The entry point the raw-socket test upstreams share: serve one asyncio connection handler on loopback.

Each upstream imports it only when run as a script (``python tests/upstream/X.py --port N``: this directory is
then on ``sys.path``); tests import some of those modules for their data, without starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(handle: Handler, port: int | None = None) -> None:
    """Serve ``handle`` on 127.0.0.1 at ``port`` (default: the command line's ``--port N``) until killed."""
    if port is None:
        parser = argparse.ArgumentParser()
        parser.add_argument("--port", type=int, required=True)
        port = parser.parse_args().port
    asyncio.run(_serve(handle, port))


async def _serve(handle: Handler, port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()
