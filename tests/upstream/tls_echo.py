"""A TLS HTTP/1.1 upstream that records every request head it parses (tests of framing and targets).

Usage: ``tls_echo.py PORT CERTFILE KEYFILE LOGFILE``. It reads requests the way a plain HTTP/1.1
origin does (head up to the blank line, then exactly ``Content-Length`` bytes) and appends each head
it parsed to LOGFILE, so that a test can see a request smuggled in another request's body. It answers
every request with its head and body as JSON.
"""

import asyncio
import json
import ssl
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            with open(sys.argv[4], "ab") as log:
                log.write(head + b"=====\n")
            out = json.dumps({"head": head.decode("latin-1"), "body": body.decode("latin-1")}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                         % len(out) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    context.set_alpn_protocols(["http/1.1"])
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), ssl=context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
