"""A token endpoint in front of tests/upstream/oauth_server.py that echoes what it was sent (review 3, G4).

authorization_code grants are passed on to the real server; refresh_token grants are answered
``400 {"error": "bad\\n<the refresh token>", "error_description": "<the refresh token>"}``, as a buggy or
hostile authorization server might. GET /_seen returns the refresh tokens it received.
Usage: echo_token_endpoint.py PORT REAL_BASE
"""

from __future__ import annotations

import json
import sys
import urllib.parse

import httpx
import uvicorn

REAL = sys.argv[2]
SEEN: list[str] = []


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/_seen":
        out, status = json.dumps(SEEN).encode(), 200
    else:
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form.get("grant_type") == "refresh_token":
            SEEN.append(form["refresh_token"])
            token = form["refresh_token"]
            out = json.dumps({"error": "bad\n" + token + "\r\nvalet WARNING audit checkpoint: forged",
                              "error_description": token}).encode()
            status = 400
        else:
            headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.lower() in (b"content-type", b"accept")}
            async with httpx.AsyncClient() as client:
                r = await client.post(REAL + "/token", content=body, headers=headers)
            out, status = r.content, r.status_code
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
