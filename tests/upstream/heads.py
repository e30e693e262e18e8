"""An upstream whose response heads are the test (a raw asyncio HTTP/1.1 server), by the last path segment:

- ``flood``: a response head of 64 MiB of header lines, sent as fast as the peer reads, never ended;
- ``many``: a head of 300 short header lines, then a small JSON body;
- ``fine``: a head of 60 header lines (a busy but legitimate answer), then a small JSON body.
"""

from __future__ import annotations

import asyncio

BODY = b'{"ok": true}'


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode("latin-1")
        last = path.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        if last == "flood":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
            line = b"x-flood: " + b"a" * 1000 + b"\r\n"
            for _ in range(64 * 1024):
                writer.write(line * 16)  # 16 KB a write
                await writer.drain()
        else:
            count = 300 if last == "many" else 60
            lines = b"".join(b"x-h%d: v\r\n" % i for i in range(count))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + lines
                         + b"content-length: %d\r\n\r\n" % len(BODY) + BODY)
            await writer.drain()
            while await reader.read(65536):
                pass
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    from raw_serve import run  # this directory is on sys.path when run as a script

    run(handle)
