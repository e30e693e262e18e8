"""A plain HTTP API that honours method overrides the way common frameworks do, and records the effective
method of every request it receives (``GET /_effective``, asked directly, not through Valet).

From review 4's ``override_up.py`` (finding H3), plus the multipart and content-coding readings:
- Rack::MethodOverride (Rails), Laravel/Symfony, Express method-override with a body getter: a POST whose
  form body has ``_method`` (Rack reads a POST with no Content-Type as a form too);
- Laravel (its request bag is the JSON body for JSON requests): a POST whose JSON body has ``_method``;
- Rails forms with a file input (multipart/form-data): a part named ``_method``;
- Express's body-parser inflates gzip/deflate request bodies before any of that;
- PHP's $_GET: leading spaces dropped, then ' ', '.' (and an unclosed '[') turned into '_', so
  ``?.method=DELETE`` is ``$_GET['_method']``.
Usage: override_api.py --port PORT
"""

from __future__ import annotations

import asyncio
import email.parser
import json
import zlib
from urllib.parse import parse_qsl

SEEN: list[list[str]] = []


def php_name(name: str) -> str:
    """php_register_variable_ex: leading spaces skipped, then ' ' and '.' become '_' (and an unclosed '[')."""
    name = name.lstrip(" ")
    return "".join("_" if c in " ." or (c == "[" and "]" not in name[i:]) else c for i, c in enumerate(name))


def multipart_fields(ctype: str, body: bytes) -> dict[str, str]:
    message = email.parser.BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    fields = {}
    for part in message.get_payload() if message.is_multipart() else []:
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (part.get_payload(decode=True) or b"").decode("latin-1")
    return fields


def effective(method: str, target: str, headers: dict[str, str], body: bytes) -> str:
    if method != "POST":
        return method
    override = None
    for k, v in parse_qsl(target.partition("?")[2], keep_blank_values=True):
        if php_name(k) == "_method":
            override = v
    if headers.get("content-encoding") in ("gzip", "deflate"):
        body = zlib.decompress(body, 47)  # gzip or zlib, as body-parser's inflate
    ctype = headers.get("content-type", "")
    if ctype.startswith("application/x-www-form-urlencoded") or not ctype:
        for k, v in parse_qsl(body.decode("latin-1"), keep_blank_values=True):
            if php_name(k) == "_method":
                override = v
    elif ctype.startswith("application/json"):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("_method"), str):
            override = doc["_method"]
    elif ctype.startswith("multipart/form-data"):
        override = multipart_fields(ctype, body).get("_method", override)
    return (override or method).upper()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    k, v = line.split(":", 1)
                    headers.setdefault(k.strip().lower(), v.strip())
            n = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(n) if n else b""
            if target == "/_effective":
                out = json.dumps(SEEN).encode()
            else:
                eff = effective(method, target, headers, body)
                SEEN.append([method, target, eff])
                out = json.dumps({"method": method, "effective": eff, "path": target}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                         % len(out) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, zlib.error):
        pass
    finally:
        writer.close()


if __name__ == "__main__":
    from raw_serve import run  # this directory is on sys.path when run as a script

    run(handle)
