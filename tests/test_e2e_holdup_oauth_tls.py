"""Issue 9 item 4: the OAuth refresh client trusts ``upstream_ca_file`` and nothing else, and ignores proxy
variables from the environment.

The authorization server (the MCP SDK's handlers, tests/upstream/oauth_server.py) is served over HTTPS with
a throwaway CA (tests/tls.py). With ``upstream_ca_file`` naming that CA, logins and refreshes succeed, while
``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` in Valet's environment point at a listener that must never be
contacted. Without ``upstream_ca_file``, the refresh fails closed (``oauth_unavailable``, no token request
reached the server): there is no fallback to unverified TLS, and ``SSL_CERT_FILE`` in the environment
(pointing at the same CA) is not consulted either.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import PYTHON, ROOT, VALET_CLI, Upstream, Valet, free_port, start_valet, wait_for_port
from tests.test_e2e_oauth import call_me, status, subject
from tests.tls import self_signed_localhost

pytestmark = pytest.mark.e2e


class TlsAuthServer(Upstream):
    ca: Path = Path()

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.base}/_oauth/stats", verify=str(self.ca), timeout=5).json()


@pytest.fixture
def tls_auth_server(tmp_path: Path) -> Iterator[TlsAuthServer]:
    certfile, keyfile = self_signed_localhost(tmp_path)
    port = free_port()
    process = subprocess.Popen([PYTHON, str(ROOT / "tests/upstream/oauth_server.py"), "--port", str(port),
                                "--access-ttl", "2", "--certfile", str(certfile), "--keyfile", str(keyfile)],
                               cwd=ROOT)
    wait_for_port(port)
    server = TlsAuthServer(port, process, "https")
    server.ca = certfile
    yield server
    server.stop()


class Trap:
    """A TCP listener standing in for a proxy: it counts connections, and must see none."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _config(auth: TlsAuthServer, ca: Path | None) -> str:
    text = f"servers:\n  cloud:\n    url: {auth.base}/mcp\n    auth: oauth\n    oauth:\n      scopes: [mcp]\n"
    if ca is not None:
        text += f"upstream_ca_file: {ca}\n"
    return text


def _login(valet: Valet, auth: TlsAuthServer, user: str, env: dict[str, str]) -> None:
    """`valet oauth login` against the HTTPS authorization server; the browser step trusts the test CA."""
    process = subprocess.Popen([VALET_CLI, "oauth", "login", "cloud", "--user", user, "--config", str(valet.config),
                                "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **env, "VALET_DATA_DIR": str(valet.data_dir)})
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith(f"{auth.base}/authorize?"), (url, process.stderr.read() if not url else "")
    with httpx.Client(timeout=10, verify=str(auth.ca)) as browser:
        to_login = browser.get(url)
        to_callback = browser.get(to_login.headers["location"] + f"&user={user}")
        assert browser.get(to_callback.headers["location"]).status_code == 200
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_refresh_trusts_upstream_ca_file_only_and_no_proxy(tmp: Path, tls_auth_server: TlsAuthServer) -> None:
    auth = tls_auth_server
    trap = Trap()
    proxy = f"http://127.0.0.1:{trap.port}"
    env = {"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "ALL_PROXY": proxy, "https_proxy": proxy,
           "http_proxy": proxy, "all_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    try:
        valet = start_valet(tmp, None, config_text=_config(auth, auth.ca), env=env)
        try:
            _login(valet, auth, "alice", env)
            key, _ = valet.new_key("alice", "tls")
            assert subject(call_me(valet, key)) == "subject=alice"
            before = auth.stats()["refresh_token"]
            time.sleep(2.3)  # past the access token's lifetime: the next call refreshes over HTTPS
            assert subject(call_me(valet, key)) == "subject=alice"
            assert auth.stats()["refresh_token"] == before + 1
            assert status(valet)["alice"]["last_refresh"]
            row = valet.rows("rpc_method = 'oauth/refresh' AND decision = 'allow'")[0]
            assert row["user"] == "alice"
        finally:
            assert valet.stop() == 0
        assert trap.hits == 0, "the refresh client must not use proxy variables from the environment"

        # The same Valet without upstream_ca_file (the CA offered only through SSL_CERT_FILE): fails closed.
        (tmp / "valet.yaml").write_text(_config(auth, None) + "\npolicy_files: [policy.yaml]\n")
        before = auth.stats()
        time.sleep(2.3)  # the grant Valet holds has expired: a call needs a refresh
        config_text = (tmp / "valet.yaml").read_text()
        valet = start_valet(tmp, None, config_text=config_text, env={**env, "SSL_CERT_FILE": str(auth.ca)})
        try:
            refused = call_me(valet, key)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["data"]["reason"] == "oauth_unavailable"
            after = auth.stats()
            assert after["token_requests"] == before["token_requests"], "no token request may complete unverified"
            row = valet.rows("rpc_method = 'oauth/refresh' AND decision != 'allow'")[-1]
            assert row["user"] == "alice"
            assert status(valet)["alice"]["needs_login"] == "no", status(valet)["alice"]
        finally:
            assert valet.stop() == 0
        assert trap.hits == 0
    finally:
        trap.close()
