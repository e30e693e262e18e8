from __future__ import annotations

from pathlib import Path

import pytest

from addon.config import ConfigError, load_config, parse_config


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "valet.yaml")
    return str(info.value)


def test_valid_config_and_defaults() -> None:
    cfg = parse_config("servers:\n  notes:\n    url: http://127.0.0.1:9001/mcp\n")
    assert cfg.servers["notes"].url == "http://127.0.0.1:9001/mcp"
    assert cfg.limits.max_body_bytes == 4 * 1024 * 1024 and cfg.passthrough == []
    assert parse_config("").servers == {}


def test_unknown_key_names_file_line_and_field() -> None:
    message = error_of("servers:\n  notes:\n    url: http://x/mcp\n    ulr: typo\n")
    assert message.startswith("valet.yaml:4: servers.notes.ulr: unknown key")


def test_bad_url_names_its_line() -> None:
    message = error_of("servers:\n  a:\n    url: http://a/\n  b:\n    url: ftp://b/\n")
    assert "valet.yaml:5: servers.b.url" in message and "http://" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("servers:\n  a: {url: 'http://u:p@h/'}\n", "credentials"),
        ("servers:\n  a: {url: 'http://h/?x=1'}\n", "query"),
        ("servers:\n  'bad name': {url: 'http://h/'}\n", "server name"),
        ("servers:\n  a: {}\n", "servers.a.url: Field required"),
        ("limits:\n  max_body_bytes: -1\n", "limits.max_body_bytes"),
        ("limits:\n  max_body_bytes: '10'\n", "limits.max_body_bytes"),
        ("servers: [1, 2]\n", "servers"),
        ("- a\n", "top level must be a mapping"),
        ("servers:\n  a: {url: 'http://h/'}\n  a: {url: 'http://i/'}\n", "valet.yaml:3: key 'a' appears twice"),
        ("servers: {a: [\n", "invalid YAML"),
    ],
)
def test_errors(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "v.yaml"
    path.write_text("bogus: 1\n")
    with pytest.raises(ConfigError, match=f"{path}:1: bogus: unknown key"):
        load_config(path)


@pytest.mark.repo_tree  # policies/, which test_walkthrough.py edits while it runs
def test_shipped_default_config_is_valid() -> None:
    load_config(Path(__file__).resolve().parent.parent / "policies" / "valet.yaml")
