"""A hostile upstream: it echoes every value Valet injected, in every form, in every place of a response.

A raw asyncio HTTP/1.1 server (not a framework: it must control the status
reason, header names, trailers and unlabelled compressed bodies). It reads the
injected values from the ``Authorization`` (``Bearer <v>``) and ``X-Shared``
headers, remembers the previous request's ``Authorization`` (a stateful
upstream quoting the previous caller) and answers according to the last path
segment:

- ``json``: reason, header values, a header NAME, and a JSON body with every form;
- ``html``: an HTML page with numeric and named character references;
- ``gzip``/``br``/``zstd``/``deflate`` (labelled) and ``<codec>-unlabelled``;
  ``gzipmulti``/``zstdmulti``/``bzip2``-unlabelled: two members (frames), or bzip2;
- ``sse``: a text/event-stream (chunked) with the forms in ``id:`` and ``data:``,
  used both for POST answers (MCP servers) and GET streams;
- ``trailers``: a chunked body with the forms in a trailer;
- ``sse-<codec>`` and ``sse-<codec>-unlabelled``: a compressed event stream;
- ``sse-live-gzip``: one gzip-compressed event, flushed, then the stream stays open;
- ``escsse``: three 1 MiB SSE events of nothing but escapes (CPU for the scrubber);
- ``legacy-dots``/``legacy-slashes``: a legacy ``endpoint`` event naming
  ``/mcp/messages/<token>`` with ``x/../`` (or ``/``) spliced into the token after
  its first ``/``: resolved or collapsed, the path would spell the token.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bz2
import gzip
import json
import os
import zlib

import brotli

try:
    from backports import zstd
except ImportError:  # pragma: no cover
    from compression import zstd  # type: ignore[no-redef]


def forms(value: str) -> list[str]:
    raw = value.encode()
    out = [
        value,
        json.dumps(value)[1:-1].replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" for c in value),
        "".join(f"\\u{ord(c):04X}" for c in value),
        "".join(f"%{b:02X}" for b in raw),
        "".join(f"%{b:02x}" for b in raw),
        "".join(f"%{b:02x}" if i % 2 else chr(b) for i, b in enumerate(raw)),
        "".join(f"&#{ord(c)};" for c in value),
        "".join(f"&#000{ord(c)};" for c in value),
        "".join(f"&#x{ord(c):x};" for c in value),
        "".join(f"&#X{ord(c):04X};" for c in value),
        raw.hex(),
        raw.hex().upper(),
        "".join([f"%{ord(c):02x}", f"\\u{ord(c):04X}", c, f"&#{ord(c)};"][i % 4] for i, c in enumerate(value)),
    ]
    for offset in range(3):
        out.append(base64.b64encode(b"z" * offset + raw + b"tail").decode())
        out.append(base64.urlsafe_b64encode(b"z" * offset + raw + b"tail").decode())
    return out


class Hostile:
    def __init__(self) -> None:
        self.previous: str = ""

    def values(self, headers: dict[str, str]) -> list[str]:
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        values = [v for v in (token, headers.get("x-shared", ""), self.previous) if v]
        self.previous = token or self.previous
        return values

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                path, _, query = target.partition("?")
                shape = path.rstrip("/").rsplit("/", 1)[-1]
                if shape in ("big", "small"):
                    self.sized(writer, shape, query, headers)
                else:
                    await self.answer(writer, shape, headers)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def sized(self, writer: asyncio.StreamWriter, shape: str, query: str, headers: dict[str, str]) -> None:
        """``big?mib=N``: an N MiB JSON text answer quoting the injected token now and then (the scrubbing
        benchmark); ``small``: a tiny one (the calls of the others, whose delay is measured)."""
        token = headers.get("authorization", "").removeprefix("Bearer ").strip().encode()
        if shape == "small":
            body = b'{"ok": true}'
        else:
            mib = float(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("mib", "1"))
            line = b"lorem ipsum dolor sit amet, consectetur adipiscing elit \\n sed do eiusmod tempor. "
            chunk = line * (65536 // len(line)) + token  # a secret every 64 KiB
            body = b'{"text": "' + chunk * int(mib * 16) + b'"}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def answer(self, writer: asyncio.StreamWriter, shape: str, headers: dict[str, str]) -> None:
        values = self.values(headers)
        every = [f for v in values for f in forms(v)]
        token = values[0] if values else "none"
        document = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {
            "content": [{"type": "text", "text": " | ".join(every)}], "forms": every, "n": 1e300}},
            ensure_ascii=False).encode()
        if shape == "sse-live-gzip":  # one event, flushed, then the stream stays open
            compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
            event = b"event: message\r\ndata: " + json.dumps({"echo": every}).encode() + b"\r\n\r\n"
            part = compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                         b"content-encoding: gzip\r\n\r\n" + f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
            await asyncio.sleep(60)
            return
        if shape == "escsse":  # three 1 MiB events of nothing but escapes (and the token, percent-encoded)
            mib = float(os.environ.get("HOSTILE_ESC_MIB", "1"))  # (7 for the review's measurement)
            data = forms(token)[4].encode() + (b"\\u0066%61&#107;" * int(mib * (1 << 20) // 15))
            events = b"".join(b"event: message\r\ndata: " + data + b"\r\n\r\n" for _ in range(3))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
                         + str(len(events)).encode() + b"\r\n\r\n" + events)
            return
        if shape.startswith("legacy-"):  # a legacy `endpoint` event that resolving would turn into the token
            cut = token.find("/") + 1 or len(token) // 2
            spliced = token[:cut] + ("x/../" if shape == "legacy-dots" else "/") + token[cut:]
            event = f"event: endpoint\r\ndata: /mcp/messages/{spliced}?session_id=abc\r\n\r\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                         + f"{len(event):x}\r\n".encode() + event + b"\r\n0\r\n\r\n")
            return
        if shape in ("sse", "mcp") or shape.startswith("sse-"):
            events = b"".join(
                b"event: message\r\nid: " + f.encode() + b"\r\ndata: " + json.dumps(
                    {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": f}}).encode() + b"\r\n\r\n"
                for f in every) + b"event: message\r\ndata: " + document + b"\r\n\r\n"
            head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
            codec, _, unlabelled = shape.removeprefix("sse-").partition("-") if shape.startswith("sse-") else ("", "", "")
            if codec:
                events = {"gzip": gzip.compress, "br": brotli.compress, "zstd": zstd.compress,
                          "deflate": zlib.compress}[codec](events)
                if not unlabelled:
                    head += f"content-encoding: {codec}\r\n"
            writer.write(head.encode() + b"\r\n")
            for i in range(0, len(events), 97):  # small chunks: forms split across network chunks
                part = events[i:i + 97]
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return
        if shape == "trailers":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
                         b"trailer: x-echo\r\n\r\n")
            writer.write(f"{len(document):x}\r\n".encode() + document + b"\r\n")
            writer.write(b"0\r\nx-echo: " + every[0].encode() + b" " + every[4].encode() + b"\r\n\r\n")
            return
        body, extra = document, []
        content_type = "application/json"
        if shape == "html":
            content_type = "text/html"
            body = ("<html><body>" + "".join(f"<p title='{f}'>{f}</p>" for f in every) + "</body></html>").encode()
        codec, _, unlabelled = shape.partition("-")
        encoders = {"gzip": gzip.compress, "br": brotli.compress, "zstd": zstd.compress, "deflate": zlib.compress,
                    # two members/frames, the secrets in the second; a format Valet refuses
                    "gzipmulti": lambda b: gzip.compress(b[:9]) + gzip.compress(b[9:]),
                    "zstdmulti": lambda b: zstd.compress(b[:9]) + zstd.compress(b[9:]), "bzip2": bz2.compress}
        if codec in encoders:
            body = encoders[codec](body)
            if not unlabelled:
                extra.append(("content-encoding", codec))
        reason = f"OK {token} {forms(token)[4]}"
        response = [f"HTTP/1.1 200 {reason}", f"content-type: {content_type}", f"content-length: {len(body)}",
                    f"x-{token}: name", f"x-token-length: {len(token)}",  # (tells a rotation was picked up)
                    *(f"x-echo-{i}: {f}" for i, f in enumerate(every)),
                    *(f"{k}: {v}" for k, v in extra)]
        writer.write(("\r\n".join(response) + "\r\n\r\n").encode("utf-8") + body)


async def main(port: int) -> None:
    hostile = Hostile()
    server = await asyncio.start_server(hostile.handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
