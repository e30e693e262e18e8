"""A real MCP server (the `mcp` SDK) used as Valet's upstream in tests and the benchmark.

It runs as its own process so that Valet talks to it over a real socket, exactly as
it would in production. Tools:

- ``add``: the cheapest possible call; ``add_authed``, the same with an
  ``api_key`` argument, used by the benchmark (Valet injects the key).
- ``echo``: returns its arguments, so tests can see what Valet forwarded.
- ``progress``: emits a progress notification every ``interval`` seconds, each
  stamped with the wall-clock time it was sent, so tests can measure how late
  Valet delivers streamed events.
- ``die_midstream``: sends one progress event, then kills the whole process,
  so tests can see what Valet does when an upstream dies mid-stream.
- ``whoami``: echoes its arguments and the HTTP request as the upstream saw it
  (headers, query), and first streams the same as progress messages, raw and
  encoded: the worst upstream a secret could meet.
- ``signed``: takes an ``api_key`` argument mirrored in the ``Mcp-Param-Api-Key``
  header (``x-mcp-header``), which 2026-07-28 servers check against the body.

``<path>/_raw_sse`` answers any JSON-RPC request with an SSE stream written in
small pieces, splitting the caller's ``Authorization`` value across network
chunks in several encodings, and echoes it in a response header.

``GET /_requests`` answers how many requests reached the MCP endpoint, so tests
can prove that a refused request never reached the upstream, and
``<path>/_echo_headers`` returns the request's path, query and headers as the
upstream received them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import time
import urllib.parse
from typing import Annotated

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

server = MCPServer("valet-test-upstream")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def add_authed(a: int, b: int, api_key: str) -> int:
    """``add`` with a credential argument: the benchmark's Valet run injects it."""
    if not api_key:
        raise ValueError("api_key is required")
    return a + b


@server.tool()
def read_file(path: str) -> str:
    """Pretends to read a file: returns the path exactly as it arrived (no file system access)."""
    return json.dumps({"path": path})


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


def digest(value: str) -> str:
    """A one-way proof of which value arrived, that tests can compare without the value itself coming back."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _seen(ctx: Context, arguments: dict) -> dict:
    request = ctx.request_context.request
    headers = dict(request.headers) if request is not None else {}
    query = request.url.query if request is not None else ""
    return {"arguments": arguments, "headers": headers, "query": query,
            "digests": {k: digest(v) for k, v in [*arguments.items(), *headers.items()] if isinstance(v, str)}}


def encodings(value: str) -> list[str]:
    """The forms a careless upstream might echo a secret in."""
    raw = value.encode()
    return [
        value,
        base64.b64encode(raw).decode(),
        "xyz" + base64.b64encode(b"\x01" + raw).decode(),  # inside a larger base64 blob, off alignment
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        urllib.parse.quote(value, safe=""),
        json.dumps(value)[1:-1],
        "".join(f"\\u{ord(c):04x}" for c in value),  # fully \u-escaped inside a JSON string
    ]


@server.tool()
async def whoami(ctx: Context, token: str = "", text: str = "") -> str:
    """Echo everything, streamed first, then as the result."""
    seen = _seen(ctx, {"token": token, "text": text})
    for value in [token, *seen["headers"].values()]:
        for form in encodings(value):
            await ctx.report_progress(1, 2, message=f"echo {form}")
    return json.dumps(seen)


@server.tool()
async def signed(ctx: Context, api_key: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Api-Key"})],
                 text: str = "") -> str:
    """A tool whose api_key argument is mirrored in an HTTP header."""
    return json.dumps(_seen(ctx, {"api_key": api_key, "text": text}))


async def raw_sse(scope, receive, send) -> None:
    """An SSE answer written in 5-byte pieces, with the caller's Authorization value in it in several forms."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    auth = dict(scope["headers"]).get(b"authorization", b"").decode()
    token = auth.split(" ", 1)[-1]
    text = " | ".join(encodings(token))
    result = {"jsonrpc": "2.0", "id": request.get("id"),
              "result": {"content": [{"type": "text", "text": text}], "isError": False}}
    # the JSON text escapes backslashes: make the \u form a real JSON escape of the token
    payload = json.dumps(result).replace("\\\\u", "\\u").encode()
    stream = b"event: message\r\ndata: " + payload + b"\r\n\r\n"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"x-echo-auth", auth.encode())]})
    for i in range(0, len(stream), 5):
        await send({"type": "http.response.body", "body": stream[i:i + 5], "more_body": True})
        await asyncio.sleep(0.001)
    await send({"type": "http.response.body", "body": b""})


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
        if scope["type"] == "http" and scope["path"] == self.mcp_path + "/_raw_sse":
            self.count += 1
            await raw_sse(scope, receive, send)
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
    parser.add_argument("--json-response", action="store_true", help="answer with JSON instead of SSE")
    args = parser.parse_args()
    app = CountRequests(
        server.streamable_http_app(streamable_http_path=args.path, json_response=args.json_response), args.path
    )
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
