"""The MCP Python SDK 1.x through Valet in reverse mode, as docs/clients.md shows it.

Usage: VALET_KEY=vk_... .venv/bin/python client.py http://127.0.0.1:8787/<server>[/sse]
Prints one JSON line {"tools": {name: [argument names]}, "result": text of whoami, "is_error": ...},
or "refused: <message>" and exits 1. A URL ending in /sse uses the 2024-11-05 HTTP+SSE transport.
"""

import asyncio
import json
import os
import sys

import httpx
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str) -> dict:
    # snippet: docs/clients.md shows the lines up to "end snippet"
    key = os.environ["VALET_KEY"]
    if url.endswith("/sse"):  # a server on the 2024-11-05 HTTP+SSE transport
        transport = sse_client(url, headers={"Authorization": f"Bearer {key}"})
    else:
        http = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
        transport = streamable_http_client(url, http_client=http)
    async with transport as (read, write, *_):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            result = await session.call_tool("whoami", {"text": "from the python sdk 1.x"})
    # end snippet
    return {"tools": {t.name: sorted(t.inputSchema.get("properties", {})) for t in tools},
            "result": result.content[0].text, "is_error": result.isError}


def first_error(error: BaseException) -> BaseException:
    """The SDK raises ExceptionGroups from its task groups: the first leaf says what went wrong."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


if __name__ == "__main__":
    try:
        print(json.dumps(asyncio.run(asyncio.wait_for(main(sys.argv[1]), 90))))
    except BaseException as error:  # noqa: BLE001 - a client's whole failure is the output
        leaf = first_error(error)
        print(f"refused: {type(leaf).__name__}: {leaf}")
        sys.exit(1)
