"""A plain HTTP API (not MCP) for tests of ``kind: http`` servers: it echoes what it received.

Every request is answered with JSON naming the method, the raw path exactly as
it arrived on the wire, the query and the headers; ``GET /_requests`` says how
many requests reached it.
"""

from __future__ import annotations

import argparse
import gzip
import json

import uvicorn


class EchoApi:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        if scope["path"] == "/_requests":
            body = json.dumps({"count": self.count}).encode()
        else:
            self.count += 1
            received = b""
            while True:
                message = await receive()
                received += message.get("body", b"")
                if not message.get("more_body"):
                    break
            body = json.dumps({
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query": scope["query_string"].decode("latin-1"),
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
                "body": received.decode("utf-8", "replace"),
            }).encode()
        headers = [(b"content-type", b"application/json")]
        encoding = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p).get("encoding")
        if encoding:  # ?encoding=x-gzip: a compressed answer under a name Valet may not know
            body = gzip.compress(body)
            headers.append((b"content-encoding", encoding.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(EchoApi(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
