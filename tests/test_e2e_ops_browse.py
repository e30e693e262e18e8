"""valet audit browse: the audit log in datasette, loaded in a real headless Chromium.

Skipped when Chromium is not installed, except in CI (CI=true), where .ci/run installs it
and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from .ops_support import start_ops_valet, stateless
from .support import ROOT, VALET_CLI, Upstream, Valet, free_port, wait_for_port

pytestmark = pytest.mark.e2e

POLICY = """
servers:
  notes: {default: deny}
rules:
  - id: notes-echo
    effect: allow
    servers: [notes]
    tools: [echo]
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is required in CI (.ci/run installs the Debian package)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser() -> str:
    return chromium()


@pytest.fixture(scope="module")
def recorded(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Valet, str]]:
    tmp = tmp_path_factory.mktemp("browse")
    config = (f"servers:\n  notes:\n    url: {upstream.url}\n    headers:\n"
              "      X-Api-Key: \"${secret:API_KEY}\"\n")
    proxy = start_ops_valet(tmp, config, POLICY)
    try:
        proxy.cli("secret", "set", "API_KEY", "--server", "notes", stdin="fake-browse-api-key-01")
        key, key_id = proxy.new_key("auditor-alice", "browse-agent")
        for i in range(3):
            assert stateless(proxy, key, "tools/call", {"name": "echo", "arguments": {"text": f"t{i}"}}).status_code == 200
        assert stateless(proxy, key, "tools/call", {"name": "read_file", "arguments": {"path": "/x"}}).status_code == 403
        proxy.rows("rpc_method = 'tools/call'", expect=4)
    finally:
        assert proxy.stop() == 0
    yield proxy, key_id


@pytest.fixture(scope="module")
def browse(recorded: tuple[Valet, str]) -> Iterator[str]:
    valet, _ = recorded
    port = free_port()
    process = subprocess.Popen([VALET_CLI, "audit", "browse", "--data-dir", str(valet.data_dir), "--port", str(port)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)


def render(browser: str, url: str, tmp: Path) -> tuple[str, Path]:
    """The DOM after Chromium ran the page, and a screenshot of it."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,1400"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    shot = tmp / f"shot-{time.monotonic_ns()}.png"
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    return dom, shot


def png_colours(path: Path) -> int:
    """Distinct pixel values of an 8-bit RGB(A) PNG (a blank or error page has very few)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8
            channels = {2: 3, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels + 1
    pixels = set()
    for y in range(0, height, 7):  # every 7th scanline is plenty; filters make raw bytes vary, so count them only
        line = raw[y * stride + 1:(y + 1) * stride]
        pixels.update(line[x:x + channels] for x in range(0, len(line), channels * 5))
    return len(pixels)


def test_canned_queries_render_rows_in_chromium(browser: str, browse: str, recorded: tuple[Valet, str],
                                                 tmp_path: Path) -> None:
    _, key_id = recorded
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    pages = {
        "/audit/denials_by_reason": ["denied", "notes"],
        f"/audit/key_history?key_id={key_id}": ["echo", "read_file", "browse-agent"],
        "/audit/secret_usage?name=API_KEY": ["API_KEY", "auditor-alice"],
        f"/audit/agent_day?agent=browse-agent&day={day}": ["echo", "auditor-alice"],
    }
    for path, expected in pages.items():
        dom, shot = render(browser, browse + path, tmp_path)
        assert 'class="rows-and-columns"' in dom, (path, dom[:2000])
        body = dom.split('class="rows-and-columns"', 1)[1]
        assert body.count("<tr") >= 2, path  # a header row and at least one row of data
        for text in expected:
            assert text in body, (path, text)
        assert shot.is_file() and shot.stat().st_size > 10_000, path
        assert png_colours(shot) > 20, path  # the page drew a table, not a blank or an error page


def test_exchanges_have_facets_and_the_log_is_read_only(browser: str, browse: str, recorded: tuple[Valet, str],
                                                         tmp_path: Path) -> None:
    dom, _ = render(browser, browse + "/audit/exchanges", tmp_path)
    for facet in ("user", "server", "tool", "decision"):
        assert f'data-column="{facet}"' in dom, facet
    # no write SQL through the browser: the connection is read-only
    r = httpx.get(browse + "/audit.json", params={"sql": "DELETE FROM exchanges"}, timeout=30)
    assert r.status_code >= 400 or not r.json().get("ok", True)
    valet, _ = recorded
    assert valet.rows("1=1", expect=4)
