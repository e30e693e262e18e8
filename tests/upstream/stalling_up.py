"""An upstream that stalls: a TLS client gets no byte (a handshake that hangs, as a stuck load balancer's);
an HTTP request gets a head (Content-Length: 1000) and 10 bytes of body, then nothing. Usage: stalling_up.py PORT"""
import asyncio
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        first = await reader.read(65536)
        if first and first[0] != 0x16:  # not a TLS ClientHello: an HTTP request
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                         + b'{"a": "123')
            await writer.drain()
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
