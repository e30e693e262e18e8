"""Canary secrets: a request carrying one, in any form the scrubber knows, is refused, recorded, counted,
logged at ERROR, and (with canaries.revoke_key) the key that sent it is revoked at once."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from .ops_support import sample, scrape, start_ops_valet, stateless
from .support import Upstream, Valet, assert_clean_log, free_port

pytestmark = pytest.mark.e2e

CANARY = "fake-canary-AKIA-0123456789"
POLICY = "rules:\n  - id: allow-all\n    effect: allow\n"


def config(upstream: Upstream, revoke: bool) -> str:
    return f"servers:\n  notes:\n    url: {upstream.url}\ncanaries:\n  revoke_key: {str(revoke).lower()}\n"


@pytest.fixture(scope="module")
def admin_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def valet(upstream: Upstream, admin_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    proxy = start_ops_valet(tmp_path_factory.mktemp("canary"), config(upstream, False), POLICY,
                            "--admin-listen", f"127.0.0.1:{admin_port}")
    out = proxy.cli("secret", "set", "DECOY_AWS", "--canary", stdin=CANARY).stdout
    assert "canary" in out and CANARY not in out
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def echo(text: str) -> dict:
    return {"name": "echo", "arguments": {"text": text}}


ENCODINGS = {
    "body raw": lambda v, k, p: stateless(p, k, "tools/call", echo(f"use {v} now")),
    "body json-escaped": lambda v, k, p: _raw_body(p, k, "".join(f"\\u{ord(c):04x}" for c in v)),
    "body base64": lambda v, k, p: stateless(p, k, "tools/call", echo(base64.b64encode(v.encode()).decode())),
    "body hex": lambda v, k, p: stateless(p, k, "tools/call", echo(v.encode().hex())),
    "query percent": lambda v, k, p: stateless(p, k, "tools/call", echo("ok"), server="notes?t=" + quote(v, safe="")
                                               .replace("-", "%2D")),
    "header": lambda v, k, p: stateless(p, k, "tools/call", echo("ok"), headers={"x-upstream-token": v}),
    "header base64url": lambda v, k, p: stateless(p, k, "tools/call", echo("ok"), headers={
        "authorization-extra": base64.urlsafe_b64encode(b"user:" + v.encode()).decode()}),
}


def _raw_body(valet: Valet, key: str, escaped_text: str) -> httpx.Response:
    """An echo call whose text is written with JSON escapes (every character as \\uXXXX) on the wire."""
    meta = json.dumps({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                       "io.modelcontextprotocol/clientCapabilities": {}})
    body = ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", '
            f'"arguments": {{"text": "{escaped_text}"}}, "_meta": {meta}}}}}')
    return httpx.post(f"{valet.base}/notes", content=body.encode(), timeout=15,
                      headers={"authorization": f"Bearer {key}", "accept": "application/json, text/event-stream",
                               "content-type": "application/json", "mcp-protocol-version": "2026-07-28",
                               "mcp-method": "tools/call", "mcp-name": "echo"})


@pytest.mark.parametrize("form", list(ENCODINGS))
def test_a_canary_in_any_form_is_refused(valet: Valet, upstream: Upstream, admin_port: int, form: str) -> None:
    key, key_id = valet.new_key("canary-user", f"agent-{form.replace(' ', '-')}")
    assert stateless(valet, key, "tools/call", echo("innocent")).status_code == 200
    before_seen = upstream.requests_seen()
    before = sample(scrape(admin_port), "valet_canary_trips_total", server="notes")
    r = ENCODINGS[form](CANARY, key, valet)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["data"]["reason"] == "canary_tripped"
    assert r.json()["error"]["code"] == -32065
    assert upstream.requests_seen() == before_seen, "a canary must never reach the upstream"
    row = valet.rows("key_id = ? AND reason = 'canary_tripped'", (key_id,))[0]
    assert row["decision"] == "deny" and row["user"] == "canary-user" and row["server"] == "notes"
    assert CANARY not in json.dumps(row)
    assert sample(scrape(admin_port), "valet_canary_trips_total", server="notes") == before + 1
    # without canaries.revoke_key the key still works for innocent calls
    assert stateless(valet, key, "tools/call", echo("innocent")).status_code == 200


def test_the_trip_is_logged_at_error_without_the_value(valet: Valet) -> None:
    log = valet.log.read_text()
    lines = [line for line in log.splitlines() if "canary DECOY_AWS tripped" in line]
    assert lines and all("ERROR" in line for line in lines)
    assert CANARY not in log


def test_the_key_that_sent_a_canary_is_revoked(upstream: Upstream, tmp_path: Path) -> None:
    proxy = start_ops_valet(tmp_path, config(upstream, True), POLICY)
    try:
        proxy.cli("secret", "set", "DECOY_DOC", "--canary", stdin=CANARY)
        key, key_id = proxy.new_key("victim", "injected-agent")
        other, _ = proxy.new_key("victim", "other-agent")
        r = stateless(proxy, key, "tools/call", echo("token=" + quote(CANARY)))
        assert r.status_code == 403 and r.json()["error"]["data"]["reason"] == "canary_tripped"
        again = stateless(proxy, key, "tools/call", echo("innocent"))
        assert again.status_code == 401 and again.json()["error"]["data"]["reason"] == "revoked_key"
        listing = [json.loads(line) for line in proxy.cli("key", "list", "--json").stdout.splitlines()]
        assert next(k for k in listing if k["id"] == key_id)["revoked"]
        assert stateless(proxy, other, "tools/call", echo("innocent")).status_code == 200  # only that key
        assert "key revoked" in proxy.log.read_text()
    finally:
        assert proxy.stop() == 0


def test_secret_set_canary_takes_no_server(valet: Valet) -> None:
    r = valet.cli("secret", "set", "X_DECOY", "--canary", "--server", "notes", stdin="fake-decoy-value-42", check=False)
    assert r.returncode != 0 and "canary" in r.stderr
    r = valet.cli("secret", "set", "X_PLAIN", stdin="fake-plain-value-42", check=False)
    assert r.returncode != 0 and "--server" in r.stderr


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd", "deflate", "gzip, gzip"])
def test_a_canary_in_a_content_coded_body_is_refused(upstream: Upstream, tmp_path: Path, coding: str) -> None:
    """Review 4: a kind: http upstream inflates a gzip request body; the canary inside used to be forwarded."""
    from addon.secrets import compressed

    from .support import start_http_api

    api = start_http_api()
    try:
        text = f"servers:\n  api:\n    url: http://127.0.0.1:{api.port}\n    kind: http\n"
        proxy = start_ops_valet(tmp_path, text, "rules:\n  - id: api\n    effect: allow\n    servers: [api]\n"
                                "    http: {methods: [POST], paths: ['/**']}\n")
        try:
            proxy.cli("secret", "set", "DECOY_AWS", "--canary", stdin=CANARY)
            key, _ = proxy.new_key()
            body = json.dumps({"note": f"use {CANARY} now"}).encode()
            for codec in reversed([c.strip() for c in coding.split(",")]):
                body = compressed.encode(codec, body)
            r = httpx.post(f"{proxy.base}/api/notes", content=body, timeout=30,
                           headers={"authorization": f"Bearer {key}", "content-type": "application/json",
                                    "content-encoding": coding})
            assert r.status_code == 403 and r.json()["error"]["data"]["reason"] == "canary_tripped", r.text
            plain = httpx.post(f"{proxy.base}/api/notes", content=compressed.encode("gzip", b'{"note": "fine"}'),
                               headers={"authorization": f"Bearer {key}", "content-type": "application/json",
                                        "content-encoding": "gzip"}, timeout=30)
            assert plain.status_code == 200, plain.text
        finally:
            proxy.stop()
    finally:
        api.stop()
