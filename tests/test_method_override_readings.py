"""Method overrides under every reading a framework makes (review 4, H3; issue 8).

Unit tests of :mod:`addon.protocol.method_override` (names, query, form, JSON, multipart, content codings),
then end to end: a real Valet in front of a real upstream (tests/upstream/override_api.py) that runs a POST
as the method a Rails/Laravel/Symfony/PHP/Express reading finds, and records the effective method. The
policy allows only ``POST /items/**``: nothing may run there as a DELETE.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import zlib
from collections.abc import Iterator

import httpx
import pytest

from addon.protocol.errors import Cause, Refusal
from addon.protocol.method_override import (body_overrides, check_body, form_overrides, is_override_name,
                                            json_overrides, multipart_overrides)
from addon.protocol.request_checks import check_request_line

from .support import (PYTHON, ROOT, Upstream, Valet, assert_clean_log, free_port, jsonrpc, post, start_valet,
                      wait_for_port)

CAP = 1024 * 1024


# --- names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "_method", "_METHOD", " _method", "_method ", "\t_Method\n", ".method", " .method", "+.method", "%2Emethod",
    "%2emethod", "%5Fmethod", "%255Fmethod", "%25255Fmethod", "_method[]", "_method[x]", "_method[", "[method",
    "_method\x00junk", "%5Fmethod%00x", "_httpmethod", "_HttpMethod", "x-http-method-override",
    "X_HTTP_METHOD_OVERRIDE", "x.http.method", "x-method-override", "_m%65thod", "%5F%6D%65%74%68%6F%64",
])
def test_override_names_under_every_reading(name: str) -> None:
    assert is_override_name(name), name


@pytest.mark.parametrize("name", [
    "method", "payment_method", "payment.method", "_methods", "http_method", "methodology", "_meth od", "a",
    "%41", "shipping[method]", "x-http-method-override-not", "",
])
def test_ordinary_names_pass(name: str) -> None:
    assert not is_override_name(name), name


def test_query_names_are_read_as_php_and_with_semicolons() -> None:
    for query, raw in [([(".method", "DELETE")], ".method=DELETE"), ([("_method[]", "DELETE")], "_method%5B%5D=x"),
                       ([("a", "1;_method=DELETE")], "a=1;_method=DELETE"), ([], "a=1&%255Fmethod=PUT")]:
        with pytest.raises(Refusal) as info:
            check_request_line([], query, raw)
        assert info.value.cause is Cause.METHOD_OVERRIDE, raw
    check_request_line([], [("payment_method", "card"), ("q", "%")], "payment_method=card&q=%25")


# --- bodies ------------------------------------------------------------------------------------------------

def multipart(name: bytes, value: bytes = b"DELETE", boundary: bytes = b"XyZ") -> bytes:
    return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=" + name + b"\r\n\r\n" + value +
            b"\r\n--" + boundary + b"--\r\n")


@pytest.mark.parametrize("body", [
    b"_method=DELETE", b"a=1&_method=DELETE", b"a=1;_method=DELETE", b"_method%5B%5D=DELETE", b"%2Emethod=DELETE",
    b"+_method=DELETE", b"_METHOD=delete", b"_method", b"x=%26&_method=PUT",
])
def test_form_readings(body: bytes) -> None:
    assert form_overrides(body) and body_overrides(body, ""), body


@pytest.mark.parametrize("body", [
    b'{"_method": "DELETE"}', b'{"a": 1, "_Method": "DELETE"}', b'{"\\u005fmethod": "DELETE"}',
    b'{"_method": "DELETE",}', b'{/* lenient */ "_method": "DELETE"}', json.dumps({"_method": "PUT"}).encode("utf-16"),
    b'{"_method": "DELETE", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # JavaScript parses it
    b'{"_method": "DELETE", "x": "\xff"}',                 # Node's body-parser replaces invalid UTF-8
    b'{"_method": "DELETE", "n": ' + b"1" * 5000 + b"}",  # past Python's int digits limit, not PHP's
    b'\xef\xbb\xbf{"_method": "DELETE"}',                 # a UTF-8 BOM
])
def test_json_readings(body: bytes) -> None:
    assert json_overrides(body) and body_overrides(body, "application/json"), body[:40]


@pytest.mark.parametrize("name", [
    b'"_method"', b"_method", b'"_Method"', b'" _method"', b'"_m\\ethod"', b'"%5Fmethod"',
    b"\"x\"; name*=utf-8''%5Fmethod", b'"=?utf-8?b?X21ldGhvZA==?="', b'"=?utf-8?q?=5Fmethod?="',
    b'"_method[]"', b'"_method', b'"a"; name*0="_me"; name*1="thod"',
])
def test_multipart_readings(name: bytes) -> None:
    body = multipart(name)
    assert multipart_overrides(body), name
    assert body_overrides(body, "multipart/form-data; boundary=XyZ")
    assert body_overrides(body, ""), "a body that starts like multipart is read as one whatever its type"


@pytest.mark.parametrize("body, content_type", [
    (b"payment_method=card&amount=5", "application/x-www-form-urlencoded"),
    (b'{"payment_method": "card", "note": "100%"}', "application/json"),
    (b'{"data": {"_method": "DELETE"}}', "application/json"),  # valid JSON: only top-level members are read
    (b'["_method", "DELETE"]', "application/json"),
    (multipart(b'"payment_method"', b"_method=DELETE"), "multipart/form-data; boundary=XyZ"),
    (multipart(b'"f"; filename="_method"'), "multipart/form-data; boundary=XyZ"),
    (b"plain text about the HTTP method", "text/plain"),
    (b"", ""),
])
def test_ordinary_bodies_pass(body: bytes, content_type: str) -> None:
    assert not body_overrides(body, content_type)
    check_body(body, content_type, "", CAP)


def test_coded_bodies_are_read_decoded() -> None:
    form = b"_method=DELETE"
    for coded, coding in [(gzip.compress(form), "gzip"), (zlib.compress(form), "deflate"),
                          (zlib.compress(form)[2:-4], "deflate"), (gzip.compress(gzip.compress(form)), "gzip, gzip")]:
        with pytest.raises(Refusal) as info:
            check_body(coded, "application/x-www-form-urlencoded", coding, CAP)
        assert info.value.cause is Cause.METHOD_OVERRIDE, coding
    check_body(gzip.compress(b"a=1"), "", "gzip", CAP)
    for coded, coding, cause in [(b"_method=DELETE", "compress", Cause.UNSUPPORTED_MEDIA),
                                 (b"not gzip", "gzip", Cause.UNSUPPORTED_MEDIA),
                                 (gzip.compress(b"a" * (CAP + 1)), "gzip", Cause.BODY_TOO_LARGE)]:
        with pytest.raises(Refusal) as info:
            check_body(coded, "", coding, CAP)
        assert info.value.cause is cause, coding


@pytest.mark.parametrize("body", [
    b"%" * (4 << 20), b"method" * (1 << 20), b"&" * (4 << 20), b"\\" * (4 << 20), b'"' * (4 << 20),
    b'"\\' * (2 << 20), b'{"a":"' + b'\\"' * (2 << 20), b"name=\"" * (1 << 20), b"--\r\n" + b";name*0=\"" * (1 << 19),
    b"%25" * (1 << 20) + b"5Fmethod",
])
def test_hostile_bodies_are_read_in_linear_time(body: bytes) -> None:
    """Each reading is a regular expression without nested backtracking, or json.loads: 4 MiB of the worst
    shapes for them finishes (a quadratic reading would take hours here, not seconds)."""
    body_overrides(body, "multipart/form-data; boundary=x")


# --- end to end --------------------------------------------------------------------------------------------

API_KEY = "fake-api-key-override-5b1e77"
POLICY = """
servers:
  api: {default: deny}
rules:
  - id: create-items
    effect: allow
    servers: [api]
    http: {methods: [POST], paths: ["/items/**"]}
  - id: mcp
    effect: allow
    servers: [notes]
"""


@pytest.fixture(scope="module")
def overrides_api() -> Iterator[Upstream]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/override_api.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    server = Upstream(port, process)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def valet(overrides_api: Upstream, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    config = f"""
servers:
  notes:
    url: {upstream.url}
  api:
    url: http://127.0.0.1:{overrides_api.port}
    kind: http
    headers:
      X-Api-Key: "${{secret:API_KEY}}"
"""
    proxy = start_valet(tmp_path_factory.mktemp("overrides"), None, config_text=config, policy=POLICY)
    proxy.cli("secret", "set", "API_KEY", "--server", "api", stdin=API_KEY)
    yield proxy
    assert proxy.stop() == 0
    assert_clean_log(proxy)


def effective(api: Upstream) -> list[list[str]]:
    return httpx.get(f"http://127.0.0.1:{api.port}/_effective", timeout=5).json()


FORM = {"content-type": "application/x-www-form-urlencoded"}
RAILS_MULTIPART = multipart(b'"_method"', boundary=b"----RailsForm")


OVERRIDES = [
    ("/items/5", b"_method=DELETE", FORM),                                        # Rails/Laravel/Symfony form
    ("/items/5", b"_method=DELETE", {}),                                          # Rack: no Content-Type is a form
    ("/items/5", b"title=x&_method=DELETE", {"content-type": "text/plain"}),      # the type says otherwise
    ("/items/5", b'{"_method": "DELETE"}', {"content-type": "application/json"}),  # Laravel's JSON bag
    ("/items/5", RAILS_MULTIPART, {"content-type": "multipart/form-data; boundary=----RailsForm"}),  # file form
    ("/items/5", gzip.compress(b"_method=DELETE"), {**FORM, "content-encoding": "gzip"}),  # body-parser inflates
    ("/items/5?.method=DELETE", None, {}),                                        # PHP: $_GET['_method']
    ("/items/5?%2Emethod=DELETE", None, {}),
    ("/items/5?+.method=DELETE", None, {}),
    ("/items/5?_method[]=DELETE", None, {}),
    ("/items/5?a=1;_method=DELETE", None, {}),
]
OVERRIDE_IDS = ['form', 'form-no-type', 'form-text-plain', 'json', 'rails-multipart', 'gzip-form', 'query-php-dot', 'query-pct-dot', 'query-plus-dot', 'query-array', 'query-semicolon']


@pytest.mark.parametrize("path, body, headers", [
    pytest.param(*case, id=name) for name, case in zip(OVERRIDE_IDS, OVERRIDES, strict=True)
    if name not in ("form-text-plain", "query-array", "query-semicolon")])
def test_the_upstream_runs_these_as_delete(overrides_api: Upstream, path: str, body: bytes | None,
                                           headers: dict[str, str]) -> None:
    """Asked directly (not through Valet), the test upstream's framework readings run each of them as a DELETE:
    what Valet must keep from it. (``;`` is a separator for Rack 2 and some servlet containers, not for
    its parse_qsl; a form labelled text/plain is read by a body parser configured for any type, not by it;
    ``_method[]`` is an array, which Symfony ignores: Valet refuses those too, as doubtful.)"""
    r = httpx.post(f"http://127.0.0.1:{overrides_api.port}{path}", content=body, headers=headers, timeout=15)
    assert r.json()["effective"] == "DELETE", r.text


@pytest.mark.parametrize("path, body, headers", OVERRIDES, ids=OVERRIDE_IDS)
def test_overrides_never_reach_the_upstream(valet: Valet, overrides_api: Upstream, path: str, body: bytes | None,
                                            headers: dict[str, str]) -> None:
    key, key_id = valet.new_key("alice", "override")
    before = effective(overrides_api)
    r = httpx.post(f"{valet.base}/api{path}", content=body, headers={"authorization": f"Bearer {key}", **headers},
                   timeout=15)
    assert r.status_code == 400 and r.json()["error"]["data"]["reason"] == "method_override", r.text
    assert effective(overrides_api) == before  # never reached it (it would have run a DELETE)
    row, = valet.rows("key_id = ?", (key_id,))
    assert (row["decision"], row["reason"]) == ("deny", "method_override"), row


def test_ordinary_posts_still_reach_the_upstream(valet: Valet, overrides_api: Upstream) -> None:
    key, _ = valet.new_key("alice", "plain")
    auth = {"authorization": f"Bearer {key}"}
    before = len(effective(overrides_api))
    for body, headers in [(b"payment_method=card&note=100%25", FORM),
                          (b'{"payment_method": "card", "data": {"_method": "DELETE"}}',
                           {"content-type": "application/json"}),
                          (multipart(b'"payment_method"'), {"content-type": "multipart/form-data; boundary=XyZ"}),
                          (b"x" * (1 << 20) + b"&method=1", FORM)]:  # large: read in a worker thread
        r = httpx.post(f"{valet.base}/api/items/5?sort=method", content=body, headers={**auth, **headers},
                       timeout=30)
        assert r.status_code == 200 and r.json()["effective"] == "POST", r.text
    assert [seen[2] for seen in effective(overrides_api)[before:]] == ["POST"] * 4


def test_mcp_bodies_are_strict_json_rpc(valet: Valet, upstream: Upstream) -> None:
    """A JSON-RPC body is parsed strictly: a top-level ``_method`` is an unknown member (invalid_request), and
    a body in any other type than application/json is refused, so no framework reads a form from it."""
    key, _ = valet.new_key("alice", "mcp")
    before = upstream.requests_seen()
    r = post(valet.base + "/notes", {**jsonrpc("ping"), "_method": "DELETE"}, key)
    assert r.status_code == 400 and r.json()["error"]["data"]["reason"] == "invalid_request", r.text
    r = post(valet.base + "/notes", b"_method=DELETE", key, headers=FORM)
    assert r.status_code == 415, r.text
    r = httpx.post(valet.base + "/notes?.method=DELETE", json=jsonrpc("ping"),
                   headers={"authorization": f"Bearer {key}", "accept": "application/json, text/event-stream"},
                   timeout=15)
    assert r.status_code == 400 and r.json()["error"]["data"]["reason"] == "method_override", r.text
    assert upstream.requests_seen() == before
