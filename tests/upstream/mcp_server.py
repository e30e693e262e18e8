"""A real MCP server (the `mcp` SDK) used as Valet's upstream in tests and the benchmark.

It runs as its own process so that Valet talks to it over a real socket, exactly as
it would in production. Tools:

- ``add``: the cheapest possible call, used by the benchmark.
- ``echo``: returns its arguments, so tests can see what Valet forwarded.
- ``progress``: emits a progress notification every ``interval`` seconds, each
  stamped with the wall-clock time it was sent, so tests can measure how late
  Valet delivers streamed events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("valet-test-upstream")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str = "", extra: dict | None = None) -> str:
    """Return the arguments as JSON."""
    return json.dumps({"text": text, "extra": extra})


@server.tool()
async def progress(steps: int, interval: float, ctx: Context) -> str:
    """Report progress ``steps`` times, ``interval`` seconds apart."""
    for i in range(steps):
        await asyncio.sleep(interval)
        await ctx.report_progress(i + 1, steps, message=f"sent_at={time.time():.6f}")
    return "done"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mcp")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    app = server.streamable_http_app(streamable_http_path=args.path)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
