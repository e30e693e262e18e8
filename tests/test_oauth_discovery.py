"""OAuth discovery believes nothing it was not asked for: `valet oauth login` against an MCP server whose
metadata lies (tests/upstream/lying_oauth.py) is refused before anything goes to the origin the lie points
at, which a recorder process proves by counting what it received."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import ALLOW_ALL, PYTHON, ROOT, VALET_CLI, Upstream, free_port, wait_for_port

pytestmark = pytest.mark.e2e


def _start(*args: str) -> Upstream:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/lying_oauth.py"), "--port", str(port), *args],
                               cwd=ROOT)
    wait_for_port(port)
    return Upstream(port, process)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Upstream]:
    server = _start("--role", "recorder")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def liar(recorder: Upstream) -> Iterator[Upstream]:
    server = _start("--other", f"http://127.0.0.1:{recorder.port}")
    yield server
    server.stop()


def lie(liar: Upstream, mode: str) -> None:
    httpx.post(f"http://127.0.0.1:{liar.port}/_lie", params={"mode": mode}, timeout=5).raise_for_status()


def received(recorder: Upstream) -> int:
    return httpx.get(f"http://127.0.0.1:{recorder.port}/_count", timeout=5).json()["count"]


def login(tmp_path: Path, liar: Upstream, oauth: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "policy.yaml").write_text(ALLOW_ALL)
    config = tmp_path / "valet.yaml"
    config.write_text(f"servers:\n  cloud:\n    url: {liar.url}\n    auth: oauth\n{oauth}"
                      "policy_files: [policy.yaml]\n")
    env = {**os.environ, "VALET_DATA_DIR": str(tmp_path / "data"),
           "HTTP_PROXY": f"http://127.0.0.1:{free_port()}", "ALL_PROXY": f"http://127.0.0.1:{free_port()}"}
    return subprocess.run([VALET_CLI, "oauth", "login", "cloud", "--user", "u", "--config", str(config),
                           "--timeout", "2"], capture_output=True, text=True, env=env, timeout=60)


def test_truthful_metadata_gets_as_far_as_the_login_url(tmp_path: Path, liar: Upstream, recorder: Upstream) -> None:
    """The baseline, with proxy variables in the environment that point nowhere: they are not used."""
    lie(liar, "none")
    done = login(tmp_path, liar)
    assert done.stdout.startswith(f"http://127.0.0.1:{liar.port}/authorize?"), done.stderr
    assert "no login arrived" in done.stderr
    assert received(recorder) == 0


@pytest.mark.parametrize(("mode", "message"), [
    ("resource_metadata", "protected resource metadata on another origin"),
    ("resource", "for another resource"),
    ("issuer", "names another issuer"),
    ("endpoints", "not on the issuer's origin"),
])
def test_lying_metadata_is_refused_and_the_other_origin_receives_nothing(
        tmp_path: Path, liar: Upstream, recorder: Upstream, mode: str, message: str) -> None:
    lie(liar, mode)
    done = login(tmp_path, liar)
    assert done.returncode == 1 and done.stdout == ""
    assert message in done.stderr and "refused" in done.stderr
    assert received(recorder) == 0, "nothing may go where the lie points"


def test_endpoints_configured_explicitly_are_the_operators_choice(liar: Upstream, recorder: Upstream) -> None:
    from addon.oauth import client

    lie(liar, "endpoints")
    other = f"http://127.0.0.1:{recorder.port}"
    overrides: dict[str, str | None] = {"token_endpoint": f"{other}/token", "registration_endpoint": f"{other}/register",
                                        "revocation_endpoint": f"{other}/revoke"}

    async def discover() -> client.Endpoints:
        async with client.http_client() as http:
            return await client.discover(http, liar.url, overrides)

    endpoints = asyncio.run(discover())
    assert endpoints.token_endpoint == f"{other}/token" and endpoints.issuer.rstrip("/").endswith(str(liar.port))
    assert received(recorder) == 0
