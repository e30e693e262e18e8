"""The tools of ``mcp_server.py`` over the legacy HTTP+SSE transport (2024-11-05), for the client matrix.

Clients that still offer the old transport (Python SDK 1.x ``sse_client``, fastmcp's
``SSETransport``, the OpenAI Agents SDK's ``MCPServerSse``, the Inspector's ``--transport sse``)
are tested against the very same tools as over streamable HTTP, so one assertion (the
injected ``token`` arrived: ``whoami`` returns its digest) serves both transports.
``GET /sse`` opens the stream, ``POST /messages/?session_id=`` takes the requests.
"""

from __future__ import annotations

import argparse

import uvicorn

from mcp_server import server  # the script's folder is on sys.path when run as a file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(server.sse_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
