"""A hostile upstream that answers every request with ``101 Switching Protocols`` and then talks raw bytes.

After the 101 it sends a greeting that quotes every request header it received
(the injected credential included), then echoes whatever arrives. Through a
proxy that relays raw TCP after a 101, the agent would read the credential
and could talk to the upstream unjudged. ``GET /_requests`` (plain HTTP)
answers how many upgrade answers it gave.
"""

from __future__ import annotations

import argparse
import asyncio
import json

COUNT = {"upgrades": 0}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()
        return
    if head.startswith(b"GET /_requests "):
        body = json.dumps({"count": COUNT["upgrades"]}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()
        return
    COUNT["upgrades"] += 1
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: raw\r\nconnection: upgrade\r\n\r\n")
    writer.write(b"GREETING " + head + b"\r\n")
    await writer.drain()
    try:
        while data := await reader.read(4096):
            writer.write(b"ECHO " + data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
