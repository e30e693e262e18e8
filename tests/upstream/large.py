"""An upstream that answers large bodies, slowly enough that several overlap (a raw asyncio HTTP/1.1 server).

By the first path segment, with the size in MiB as the second (``/big/8``):

- ``big``: a JSON-RPC result whose text is N MiB, sent with a content-length in 64 KiB pieces, a short
  pause every MiB (so concurrent answers are buffered by Valet at the same time);
- ``gzip``: the same answer gzip-compressed (``content-encoding: gzip``), small on the wire, N MiB decoded.

Every connection that ends appends ``closed <path> <bytes sent>`` to the file given with ``--log``, so a
test can tell that Valet cancelled an upstream answer before its end.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip

MIB = 1024 * 1024
PIECE = 64 * 1024


def answer(size_mib: int) -> bytes:
    prefix = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"'
    suffix = b'"}]}}'
    return prefix + b"x" * (size_mib * MIB - len(prefix) - len(suffix)) + suffix


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: str) -> None:
    path, sent = "?", 0
    try:
        while True:
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
            kind, _, size = path.strip("/").partition("/")
            body = answer(int(size or "1"))
            extra = b""
            if kind == "gzip":
                body, extra = gzip.compress(body, compresslevel=6), b"content-encoding: gzip\r\n"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + extra +
                         b"content-length: %d\r\n\r\n" % len(body))
            for offset in range(0, len(body), PIECE):
                writer.write(body[offset:offset + PIECE])
                sent += min(PIECE, len(body) - offset)
                await writer.drain()
                if offset % MIB == 0:
                    await asyncio.sleep(0.02)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        with open(log, "a") as out:
            out.write(f"closed {path} {sent}\n")
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
