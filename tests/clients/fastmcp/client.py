"""fastmcp's client through Valet in reverse mode, as docs/clients.md shows it.

Usage: VALET_KEY=vk_... .venv/bin/python client.py http://127.0.0.1:8787/<server>[/sse]
Prints one JSON line {"tools": {name: [argument names]}, "result": text of whoami, "is_error": ...},
or "refused: <message>" and exits 1. fastmcp picks the 2024-11-05 HTTP+SSE transport for a URL
ending in /sse and streamable HTTP otherwise; a string `auth` is sent as `Authorization: Bearer`.
"""

import asyncio
import json
import os
import sys

from fastmcp import Client


async def main(url: str) -> dict:
    # snippet: docs/clients.md shows the lines up to "end snippet"
    async with Client(url, auth=os.environ["VALET_KEY"]) as client:
        tools = await client.list_tools()
        result = await client.call_tool("whoami", {"text": "from fastmcp"})
    # end snippet
    return {"tools": {t.name: sorted(t.input_schema.get("properties", {})) for t in tools},
            "result": result.content[0].text, "is_error": result.is_error}


def first_error(error: BaseException) -> BaseException:
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
