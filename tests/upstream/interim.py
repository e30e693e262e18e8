"""An upstream that sends interim 1xx heads before its answer (a raw asyncio HTTP/1.1 server, kept alive),
chosen by the last path segment (review 4, H4):

- ``early``: ``103 Early Hints`` (with a ``Link`` field), then the ``200`` JSON-RPC answer;
- ``cont``: an unsolicited ``100 Continue``, then the answer;
- ``split``: ``100``, then two ``103`` heads, written in pieces (one cut inside a head, one inside the final
  head), then the answer;
- ``many``: 20 ``103`` heads, then the answer (more than Valet accepts);
- ``huge``: a ``103`` head with 300 fields (over the response head caps), then the answer;
- anything else: the answer alone.

Every answer echoes the request's JSON-RPC id and names the shape: ``{"result": {"shape": ...}}``.
"""

from __future__ import annotations

import asyncio
import json

EARLY = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def answer(rpc_id: object, shape: str) -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": {"shape": shape}}).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            try:
                rpc_id = json.loads(body).get("id")
            except ValueError:
                rpc_id = None
            path = head.split(b" ", 2)[1].decode("latin-1")
            shape = path.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
            final = answer(rpc_id, shape)
            if shape == "early":
                pieces = [EARLY + final]
            elif shape == "cont":
                pieces = [CONTINUE + final]
            elif shape == "split":
                pieces = [CONTINUE, EARLY[:20], EARLY[20:] + EARLY + final[:30], final[30:]]
            elif shape == "many":
                pieces = [EARLY * 20 + final]
            elif shape == "huge":
                fields = b"".join(b"link: </x%d.css>; rel=preload\r\n" % i for i in range(300))
                pieces = [b"HTTP/1.1 103 Early Hints\r\n" + fields + b"\r\n" + final]
            else:
                pieces = [final]
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                if len(pieces) > 1:
                    await asyncio.sleep(0.05)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    from raw_serve import run  # this directory is on sys.path when run as a script

    run(handle)
