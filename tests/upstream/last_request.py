"""A stateful HTTP/1.1 upstream (tests only): every answer quotes the head of the PREVIOUS request it received.

One process listening on several addresses (``--host`` repeated) is one upstream reached under several
names, as a gateway or a name and its address are. ``--say TEXT`` adds a fixed text to every answer (an
upstream that holds some value by other means). Answers are JSON-RPC results for any POST.

    last_request.py --port P [--host 127.0.0.1 --host ::1] [--say TEXT] [--status "200 OK"] [--announce N]

``--announce N``: the head says ``content-length: N``, then 10 bytes of the answer go out and the
connection is closed (an upstream that dies right after a large answer's head).
"""

from __future__ import annotations

import argparse
import asyncio
import json

_previous: dict[str, object] = {"headers": {}, "target": ""}


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, say: str, status: str,
                 announce: int | None) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *fields = head.decode("latin-1").split("\r\n")
            target = request_line.split(" ")[1]
            headers = {}
            for field in fields:
                if ":" in field:
                    name, value = field.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
            try:
                rpc_id = json.loads(body).get("id")
            except (ValueError, AttributeError):
                rpc_id = None
            quoted = dict(_previous)
            _previous.update(headers=headers, target=target)
            text = json.dumps({"previous_request": quoted, "note": say})
            answer = json.dumps({"jsonrpc": "2.0", "id": rpc_id,
                                 "result": {"content": [{"type": "text", "text": text}]}}).encode()
            writer.write(b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                         % (status.encode(), announce or len(answer)) + (answer[:10] if announce else answer))
            await writer.drain()
            if announce:
                return
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", action="append")
    parser.add_argument("--say", default="")
    parser.add_argument("--status", default="200 OK", help="the status line's code and reason, sent as is")
    parser.add_argument("--announce", type=int, default=None)
    args = parser.parse_args()
    servers = [await asyncio.start_server(lambda r, w: _serve(r, w, args.say, args.status, args.announce), host, args.port)
               for host in (args.host or ["127.0.0.1"])]
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
