"""Review 4 (H6): an agent cannot rebuild a secret from byte ranges, each too short to be scrubbed.

``Range`` and ``If-Range`` (and ``Accept-Charset``) are not forwarded, so the upstream answers the whole,
scrubbed whole; a ``206`` or ``multipart/byteranges`` answer an upstream sends anyway is refused."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import PYTHON, ROOT, Valet, assert_clean_log, free_port, start_valet, wait_for_port

TOKEN = "fake-files-token-0a1b2c3d4e5f6a7b"  # obviously fake


@pytest.fixture(scope="module")
def valet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valet]:
    port = free_port()
    upstream = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/ranges.py"), "--port", str(port)], cwd=ROOT)
    wait_for_port(port)
    config = (f"servers:\n  files:\n    url: http://127.0.0.1:{port}\n    kind: http\n"
              f"    headers:\n      Authorization: \"Bearer ${{secret:FILES_TOKEN}}\"\n")
    proxy = start_valet(tmp_path_factory.mktemp("ranges"), None, config_text=config)
    try:
        proxy.cli("secret", "set", "FILES_TOKEN", "--server", "files", stdin=TOKEN)
        yield proxy
    finally:
        proxy.stop()
        upstream.kill()
        upstream.wait(10)
    assert_clean_log(proxy)


def _get(valet: Valet, path: str, key: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{valet.base}/files{path}", headers={"authorization": f"Bearer {key}", **headers}, timeout=30)


def test_overlapping_ranges_get_whole_scrubbed_answers(valet: Valet) -> None:
    key, _ = valet.new_key()
    whole = _get(valet, "/log", key)
    assert whole.status_code == 200 and TOKEN not in whole.text and "[REDACTED:FILES_TOKEN]" in whole.text
    start = whole.text.index("[REDACTED")
    pieces = []
    for offset in range(start - 8, start + len(TOKEN), 5):  # slices shorter than the token, overlapping
        r = _get(valet, "/log", key, range=f"bytes={offset}-{offset + 5}", **{"if-range": "x"})
        assert r.status_code == 200, "the upstream never saw the Range: it answered the whole"
        assert r.headers["x-seen-range"] == "-"
        pieces.append(r.text)
    assert all(TOKEN not in p for p in pieces)
    assert TOKEN not in "".join(pieces)


def test_accept_charset_is_not_forwarded(valet: Valet) -> None:
    key, _ = valet.new_key()
    r = _get(valet, "/log", key, **{"accept-charset": "utf-16"})
    assert r.status_code == 200 and r.headers["x-seen-accept-charset"] == "-"


@pytest.mark.parametrize("path", ["/always-partial", "/byteranges"])
def test_a_partial_answer_the_upstream_sends_anyway_is_refused(valet: Valet, path: str) -> None:
    key, _ = valet.new_key()
    r = _get(valet, path, key)
    assert r.status_code == 502
    assert r.json()["error"]["data"]["reason"] == "upstream_error"
    rows = valet.rows(f"http_path = '/files{path}'")
    assert rows and rows[-1]["http_status"] == 502 and rows[-1]["reason"] == "upstream_error"
