"""An HTTP API that serves byte ranges (tests only), for ``kind: http`` servers.

``GET /log`` is an access log quoting every request head it received (injected credentials included, as a
web server's log does); with a ``Range: bytes=A-B`` header it answers ``206`` with those bytes. ``GET
/always-partial`` answers 206 though nobody asked; ``GET /byteranges`` answers ``multipart/byteranges``.
Every answer says in ``x-seen-range`` / ``x-seen-accept-charset`` what it was sent.

    ranges.py --port P
"""

from __future__ import annotations

import asyncio

_log: list[str] = []


def _answer(status: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *fields = head.split("\r\n")
            path = request_line.split(" ")[1]
            headers = {f.split(":", 1)[0].strip().lower(): f.split(":", 1)[1].strip() for f in fields if ":" in f}
            length = int(headers.get("content-length") or 0)
            if length:
                await reader.readexactly(length)
            _log.append(" | ".join(fields))
            seen = {"x-seen-range": headers.get("range", "-"), "x-seen-accept-charset": headers.get("accept-charset", "-"),
                    "content-type": "text/plain"}
            document = ("\n".join(_log) + "\n").encode()
            if path == "/always-partial":
                out = _answer("206 Partial Content", document[:8], {**seen, "content-range": f"bytes 0-7/{len(document)}"})
            elif path == "/byteranges":
                body = b"--SEP\r\ncontent-type: text/plain\r\ncontent-range: bytes 0-3/9\r\n\r\nabcd\r\n--SEP--\r\n"
                out = _answer("200 OK", body, {**seen, "content-type": "multipart/byteranges; boundary=SEP"})
            elif "range" in headers and headers["range"].startswith("bytes="):
                first, _, last = headers["range"][6:].partition("-")
                piece = document[int(first):int(last) + 1]
                out = _answer("206 Partial Content", piece,
                              {**seen, "content-range": f"bytes {first}-{last}/{len(document)}"})
            else:
                out = _answer("200 OK", document, seen)
            writer.write(out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    from raw_serve import run  # this directory is on sys.path when run as a script

    run(_serve)
