"""Review 4 (H8): headers naming a second resource of the upstream (S3-style copy sources, WebDAV
``Destination``) are judged by the HTTP rules like the path: a policy allowing only ``/bucket/public/**``
does not let an agent copy a private object into public."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from addon.hooks.gate import resource_headers
from mitmproxy import http

from .support import Upstream, Valet, assert_clean_log, start_http_api, start_valet

POLICY = """
rules:
  - id: public-objects
    effect: allow
    servers: [store]
    http: {methods: [GET, PUT, MOVE, COPY], paths: ["/bucket/public/**"]}
"""


@pytest.fixture(scope="module")
def store() -> Iterator[Upstream]:
    api = start_http_api()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def valet(store: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    config = f"servers:\n  store:\n    url: http://127.0.0.1:{store.port}\n    kind: http\n"
    proxy = start_valet(tmp_path_factory.mktemp("store"), None, config_text=config, policy=POLICY)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def _send(valet: Valet, key: str, method: str, path: str, **headers: str) -> httpx.Response:
    return httpx.request(method, f"{valet.base}/store{path}", content=b"x",
                         headers={"authorization": f"Bearer {key}", **headers}, timeout=30)


@pytest.mark.parametrize("header", ["x-amz-copy-source", "x-goog-copy-source", "x-ms-copy-source"])
def test_a_copy_from_a_forbidden_path_is_refused(valet: Valet, header: str) -> None:
    key, _ = valet.new_key()
    assert _send(valet, key, "PUT", "/bucket/public/x", **{header: "/bucket/public/y"}).status_code == 200
    for source in ("/bucket/private/payroll.csv", "bucket/private/payroll.csv", "/bucket/private/payroll.csv?versionId=3",
                   "/bucket/public/../private/payroll.csv", "/bucket/%70rivate/payroll.csv"):
        refused = _send(valet, key, "PUT", "/bucket/public/x", **{header: source})
        assert refused.status_code in (400, 403), (source, refused.text)


def test_a_webdav_destination_is_judged_with_the_requests_method(valet: Valet) -> None:
    key, _ = valet.new_key()
    assert _send(valet, key, "MOVE", "/bucket/public/a", destination="/bucket/public/b").status_code == 200
    refused = _send(valet, key, "MOVE", "/bucket/public/a",
                    destination=f"http://127.0.0.1:{valet.port}/bucket/private/a")
    assert refused.status_code == 403 and refused.json()["error"]["data"]["reason"] == "denied"


def test_headers_that_cannot_be_read_one_way_are_refused() -> None:
    twice = http.Headers([(b"x-amz-copy-source", b"/a"), (b"x-amz-copy-source", b"/b")])
    with pytest.raises(ValueError):
        resource_headers(twice, "PUT")
    with pytest.raises(ValueError):
        resource_headers(http.Headers(destination="//other.example/x"), "MOVE")
    assert resource_headers(http.Headers(destination="https://h.example/p/q?x=1"), "COPY") == [("COPY", "/p/q")]


def test_a_get_with_a_query_on_an_mcp_endpoint_is_judged_by_http_rules(tmp_path: Path) -> None:
    """No MCP client sends a query on the endpoint's GET (its SSE stream): an upstream serving something else
    there is not reachable unjudged (review 4). Judged by http rules: denied by default."""
    from .support import start_upstream

    upstream = start_upstream()
    try:
        proxy = start_valet(tmp_path, {"notes": upstream.url},
                            policy="rules:\n  - id: notes-tools\n    effect: allow\n    servers: [notes]\n    tools: ['*']\n")
        try:
            key, _ = proxy.new_key()
            r = httpx.get(f"{proxy.base}/notes?debug=1", headers={"authorization": f"Bearer {key}",
                                                                 "accept": "text/event-stream"}, timeout=30)
            assert r.status_code == 403 and r.json()["error"]["data"]["reason"] == "denied", r.text
        finally:
            proxy.stop()
    finally:
        upstream.stop()
