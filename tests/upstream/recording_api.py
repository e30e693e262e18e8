"""A minimal JSON-RPC upstream that records the id of every request it receives.

The durability tests kill Valet under load and then account for every request:
each one the agent got an answer to, and each one that reached this upstream,
must have an audit row (matched by JSON-RPC id). ``GET /_ids`` returns the ids
received so far. A ``tools/call`` whose arguments hold ``"sleep": N`` is
answered N seconds later (to keep requests in flight); one with ``"die": true`` gets
headers and part of a body, then the connection is dropped. ``initialize`` is answered with a
session id and one SSE event on a stream then left open for 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import uvicorn

RECEIVED: list[object] = []


async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    if scope["path"] == "/_ids":
        await _send(send, 200, {"ids": RECEIVED})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    try:
        request = json.loads(body)
    except ValueError:
        await _send(send, 400, {"error": "not json"})
        return
    RECEIVED.append(request.get("id"))
    if request.get("method") == "initialize":  # a session id, one SSE event, then a stream left open
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"mcp-session-id", b"sess-recording-1")]})
        event = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": {"protocolVersion": "2025-11-25"}})
        await send({"type": "http.response.body", "body": f"event: message\ndata: {event}\n\n".encode(),
                    "more_body": True})
        await asyncio.sleep(3)
        await send({"type": "http.response.body", "body": b""})
        return
    arguments = (request.get("params") or {}).get("arguments") or {}
    delay = arguments.get("sleep", 0.01) if isinstance(arguments, dict) else 0.01
    await asyncio.sleep(float(delay))
    if isinstance(arguments, dict) and arguments.get("die"):  # promise a body, send part of it, hang up
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b'{"jsonrpc": "2.0", "id": ', "more_body": True})
        raise RuntimeError("the upstream dies mid-answer")
    await _send(send, 200, {"jsonrpc": "2.0", "id": request.get("id"),
                            "result": {"content": [{"type": "text", "text": "ok"}], "isError": False}})


async def _send(send, status: int, payload: object) -> None:  # type: ignore[no-untyped-def]
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
