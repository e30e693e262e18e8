"""An upstream that stalls: for the timeout and stream-cutting tests (a raw asyncio HTTP/1.1 server).

By the first path segment (``/hang/...``, ``/stream/...``):

- ``hang``: reads the request, never answers;
- ``stream``: answers a chunked ``text/event-stream`` with one event, then stays open sending nothing;
- ``bomb``: answers a small gzip body that inflates to 64 MiB (labelled ``content-encoding: gzip``).

Every connection that ends (the peer closed it) appends a line ``closed <path>`` to the file given with
``--log``, so a test can tell that Valet cancelled the upstream request.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip

EVENT = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{"data":"hello"}}\n\n'

BOMB = gzip.compress(b"0" * (64 * 1024 * 1024), compresslevel=9)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: str) -> None:
    path = "?"
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length:
            await reader.readexactly(length)
        if path.startswith("/bomb"):
            body = BOMB
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                         b"content-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        if path.startswith("/stream"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
            await writer.drain()
        while await reader.read(65536):  # until the peer closes
            pass
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        with open(log, "a") as out:
            out.write(f"closed {path}\n")
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    server = await asyncio.start_server(lambda r, w: handle(r, w, args.log), "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
