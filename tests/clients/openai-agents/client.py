"""The OpenAI Agents SDK's MCP servers through Valet in reverse mode, as docs/clients.md shows it.

Usage: VALET_KEY=vk_... .venv/bin/python client.py http://127.0.0.1:8787/<server>[/sse]
Prints one JSON line {"tools": {name: [argument names]}, "result": text of whoami, "is_error": ...},
or "refused: <message>" and exits 1. No model and no OpenAI key are involved: the agent's MCP
server object lists and calls tools by itself (an Agent(mcp_servers=[server]) does the same).
A URL ending in /sse uses MCPServerSse (the 2024-11-05 transport), otherwise MCPServerStreamableHttp.
"""

import asyncio
import json
import os
import sys

from agents.mcp import MCPServerSse, MCPServerStreamableHttp


async def main(url: str) -> dict:
    # snippet: docs/clients.md shows the lines up to "end snippet"
    params = {"url": url, "headers": {"Authorization": f"Bearer {os.environ['VALET_KEY']}"}}
    if url.endswith("/sse"):  # a server on the 2024-11-05 HTTP+SSE transport
        server = MCPServerSse(params=params, name="valet")
    else:
        server = MCPServerStreamableHttp(params=params, name="valet")
    async with server:
        tools = await server.list_tools()
        result = await server.call_tool("whoami", {"text": "from the openai agents sdk"})
    # end snippet
    v2 = hasattr(result, "is_error")  # mcp 2.x names; the SDK also runs on mcp 1.x (camelCase)
    return {"tools": {t.name: sorted((t.input_schema if v2 else t.inputSchema).get("properties", {})) for t in tools},
            "result": result.content[0].text, "is_error": result.is_error if v2 else result.isError}


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
