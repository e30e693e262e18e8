"""A real MCP server (the `mcp` SDK) used as Valet's upstream in tests and the benchmark.

It runs as its own process so that Valet talks to it over a real socket, exactly as
it would in production. Tools:

- ``add``: the cheapest possible call, used by the benchmark.
- ``echo``: returns its arguments, so tests can see what Valet forwarded.
- ``progress``: emits a progress notification every ``interval`` seconds, each
  stamped with the wall-clock time it was sent, so tests can measure how late
  Valet delivers streamed events.
- ``die_midstream``: sends one progress event, then kills the whole process,
  so tests can see what Valet does when an upstream dies mid-stream.

``GET /_requests`` answers how many requests reached the MCP endpoint, so tests
can prove that a refused request never reached the upstream, and
``<path>/_echo_headers`` returns the request's path, query and headers as the
upstream received them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


@server.tool()
async def die_midstream(ctx: Context) -> str:
    """Start a stream, then die without finishing it."""
    await ctx.report_progress(1, 2, message="about to die")
    await asyncio.sleep(0.2)
    os._exit(3)


class CountRequests:
    """ASGI wrapper: counts requests to the MCP endpoint, serves the count at /_requests."""

    def __init__(self, app, mcp_path: str) -> None:
        self.app, self.mcp_path, self.count = app, mcp_path, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/_requests":
            body = json.dumps({"count": self.count}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["path"] == self.mcp_path + "/_echo_headers":
            headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
            body = json.dumps({"path": scope["path"], "query": scope["query_string"].decode(),
                               "headers": headers}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["path"].startswith(self.mcp_path):
            self.count += 1
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mcp")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    app = CountRequests(server.streamable_http_app(streamable_http_path=args.path), args.path)
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
