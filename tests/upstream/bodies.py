"""A hostile upstream of large answers, for the streamed scrub (tests/test_e2e_bodystream.py).

Every answer quotes the injected token (the ``Authorization`` header) in every form of
tests/upstream/hostile.py ``forms`` plus a zero-padded reference, again and again, and is written to the
socket in pieces of odd sizes with a pause between them, so the forms are split across network reads
at ever different offsets. The body is a pure function of the token and the path, so the test can
compute exactly what the whole-body scrub gives.

- ``/chunked?kib=N``: application/json, chunked (no length);
- ``/sized?kib=N``: the same with a Content-Length;
- ``/b64?kib=N``: one long base64 string with the forms inside it (no separator for kilobytes);
- ``/gzip?kib=N``: a gzip body labelled ``application/json`` without Content-Encoding;
- ``/latin1?kib=N``: text/plain that stops being UTF-8 half-way;
- ``/latin1page?kib=N``: text/html in ISO-8859-1, as it says (not streamed: scrubbed whole);
- ``/small``: a small JSON answer with the token (buffered, not streamed);
- ``/stall?kib=N``: the ``chunked`` answer's first N KiB, then a minute of silence (an idle timeout cuts it);
- ``/sse-cr-pause``: an SSE event ended by CRLF CR, then a minute of silence (the LF that could follow the CR
  never comes); ``/sse-cr-end``: a stream that ends right after a lone CR.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import random

try:
    from .hostile import forms
except ImportError:  # run as a script
    from hostile import forms  # type: ignore[no-redef]

PIECES = (1, 7, 97, 1000, 4093, 65537)


def body(shape: str, token: str, kib: int) -> bytes:
    every = forms(token) + ["".join(f"&#{'0' * 50}{ord(c)};" for c in token)]
    if shape == "b64":
        rng = random.Random(3)
        parts = []
        while sum(map(len, parts)) < kib * 1024:
            parts.append(base64.b64encode(rng.randbytes(rng.randrange(3000, 9000))).decode())
            parts.append(every[len(parts) // 2 % len(every)])
        return json.dumps({"b64": "".join(parts)}).encode()
    filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40
    items = []
    size = 0
    while size < kib * 1024:
        form = every[len(items) % len(every)]
        item = {"i": len(items), "text": filler + form + " " + filler[: len(items) % 997], "form": form}
        items.append(item)
        size += len(filler) * 2 + len(form)
    text = json.dumps({"items": items}, ensure_ascii=False)
    if shape == "latin1":
        return text.encode()[: len(text) // 2] + "ÿ".encode("latin-1") + text.encode()[len(text) // 2:]
    if shape == "latin1page":
        return text.encode("latin-1", "replace")
    return text.encode()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
            length = int(headers.get("content-length", "0"))
            if length:
                await reader.readexactly(length)
            token = headers.get("authorization", "").removeprefix("Bearer ").strip()
            path, _, query = target.partition("?")
            shape = path.rstrip("/").rsplit("/", 1)[-1]
            kib = int(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("kib", "2048"))
            if shape in ("sse-cr-pause", "sse-cr-end"):  # an event ended by a lone CR, then a pause or the end
                event = b'event: message\r\ndata: {"token": "%s"}\r\n\r' % token.encode()
                if shape == "sse-cr-end":
                    event = event[:-3] + b"\r"  # the stream ends right after a CR that ends the data line
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                             + b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                if shape == "sse-cr-pause":
                    await asyncio.sleep(60)  # the LF that may follow a CR never comes (in time)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                continue
            if shape == "stall":  # a large JSON answer that stops half-way: Valet's idle timeout must cut it
                data = body("chunked", token, kib * 2)[: kib * 1024]
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                             + b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                await asyncio.sleep(60)
                continue
            if shape == "small":
                data = json.dumps({"token": token}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                             % len(data) + data)
                await writer.drain()
                continue
            data = body(shape, token, kib)
            media = {"latin1": b"text/plain; charset=utf-8", "latin1page": b"text/html; charset=iso-8859-1"}.get(
                shape, b"application/json")
            if shape == "gzip":
                data = gzip.compress(data)
            chunked = shape in ("chunked", "gzip")
            head_out = b"HTTP/1.1 200 OK\r\ncontent-type: " + media + b"\r\n"
            head_out += b"transfer-encoding: chunked\r\n\r\n" if chunked else b"content-length: %d\r\n\r\n" % len(data)
            writer.write(head_out)
            pos, turn = 0, 0
            while pos < len(data):
                piece = data[pos : pos + PIECES[turn % len(PIECES)]]
                pos += len(piece)
                turn += 1
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if turn % 5 == 0:
                    await writer.drain()
                    await asyncio.sleep(0.001)  # let the proxy read what is there: reads split at new places
            if chunked:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    from raw_serve import run  # this directory is on sys.path when run as a script

    run(handle)
