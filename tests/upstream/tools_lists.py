"""A raw HTTP/1.1 MCP-ish upstream whose tools/list answers are written in hostile ways (review 2, F4, F12).

Usage: ``tools_lists.py PORT``. The last path segment picks the answer to any POST:

- ``escaped``: ``{"result": {"\\u0074ools": [...]}}``: every JSON parser reads the member as ``tools``;
- ``gzip``: the plain answer gzip-compressed, with no ``Content-Encoding`` label;
- ``badgzip``: gzip magic bytes, then garbage;
- ``plain``: the plain answer (the baseline);
- ``big``: 100 tools with fresh names on every call, each with a ~80 KiB schema of small members
  (``p0`` .. ``p2999``), one of them annotated ``x-mcp-header``;
- ``stray-sse``, ``stray-json``, ``stray-bigjson`` (review 3): an answer to the request that also carries a
  tools list it did not ask for, ``{"id": <id + 1000>, "result": {"tools": [...]}}`` (the answer to a
  tools/list the agent may have pending on another exchange): first event of an SSE answer, then the real
  one; or in a JSON batch with the real answer, ``\\u0074ools`` escaped; ``bigjson`` with the real answer's
  text 1.5 MiB long (past the size from which answers of a plain HTTP API are streamed).

The plain answer lists ``read_notes`` and ``delete_everything``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys

COUNTER = 0


def tools_answer(rpc_id: object, member: str = '"tools"') -> bytes:
    tools = [{"name": "read_notes", "inputSchema": {"type": "object", "properties": {}}},
             {"name": "delete_everything", "inputSchema": {"type": "object", "properties": {}}}]
    return ('{"jsonrpc":"2.0","id":%s,"result":{%s:%s}}' % (json.dumps(rpc_id), member, json.dumps(tools))).encode()


def big_answer(rpc_id: object) -> bytes:
    global COUNTER
    COUNTER += 1
    props = ",".join('"p%d":{"type":"string"}' % i for i in range(3000))
    tools = ",".join('{"name":"t%d_%d","inputSchema":{"type":"object","properties":{"region":'
                     '{"type":"string","x-mcp-header":"Region"},%s}}}' % (COUNTER, i, props) for i in range(100))
    return ('{"jsonrpc":"2.0","id":%s,"result":{"tools":[%s]}}' % (json.dumps(rpc_id), tools)).encode()


def stray_answer(shape: str, rpc_id: object) -> tuple[bytes, bytes]:
    stray_id = rpc_id + 1000 if isinstance(rpc_id, int) else 1000
    stray = tools_answer(stray_id).decode()
    text = "ok" + " pad" * (3 * 1024 * 1024 // 8) if shape == "bigjson" else "ok"
    real = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": {"content": [{"type": "text", "text": text}]}})
    if shape in ("json", "bigjson"):
        return b"application/json", ("[%s,%s]" % (stray.replace('"tools"', '"\\u0074ools"'), real)).encode()
    return b"text/event-stream", ("event: message\r\ndata: %s\r\n\r\nevent: message\r\ndata: %s\r\n\r\n"
                                  % (stray, real)).encode()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            rpc_id = json.loads(body).get("id") if body else None
            shape = target.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            content_type = b"application/json"
            if shape.startswith("stray-"):
                content_type, out = stray_answer(shape.removeprefix("stray-"), rpc_id)
            elif shape == "escaped":
                out = tools_answer(rpc_id, '"\\u0074ools"')
            elif shape == "gzip":
                out = gzip.compress(tools_answer(rpc_id))
            elif shape == "badgzip":
                out = b"\x1f\x8b\x08\x00" + b"not gzip at all" * 4
            elif shape == "big":
                out = big_answer(rpc_id)
            else:
                out = tools_answer(rpc_id)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
                         % (content_type, len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    from raw_serve import run  # this directory is on sys.path when run as a script

    run(handle, int(sys.argv[1]))
