"""Review 4 (H9): a secret with surrounding whitespace is refused by the vault, and one an older vault holds
is scrubbed in the form an upstream sees (HTTP strips a header value's whitespace)."""

from __future__ import annotations

from pathlib import Path

import pytest

from addon.secrets.scrubber import Scrubber
from addon.secrets.vault import VaultError, check_value

from .test_files_vault import cli

VALUE = "fake-ws-token-5e6f7a8b9c"  # obviously fake


@pytest.mark.parametrize("value", [VALUE + " ", " " + VALUE, VALUE + "\u00a0", "\u3000" + VALUE])
def test_the_vault_refuses_values_with_surrounding_whitespace(value: str) -> None:
    with pytest.raises(VaultError, match="whitespace") as err:
        check_value(value)
    assert VALUE not in str(err.value)


def test_inner_spaces_stay_allowed() -> None:
    check_value("fake pass phrase with spaces")


def test_the_cli_says_why_and_stores_nothing(tmp_path: Path) -> None:
    done = cli(tmp_path / "data", "secret", "set", "API_TOKEN", "--server", "notes", stdin=VALUE + " \n")
    assert done.returncode != 0
    assert "whitespace" in done.stderr + done.stdout and VALUE not in done.stderr + done.stdout


def test_a_stored_value_with_whitespace_is_scrubbed_as_the_upstream_sees_it() -> None:
    scrubber = Scrubber([("API_TOKEN", VALUE + " ")])
    echoed = b'{"got": "Bearer ' + VALUE.encode() + b'"}'
    assert VALUE.encode() not in scrubber.bytes(echoed)
