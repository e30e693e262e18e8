"""Review 3 (observation, method-name variants): a JSON-RPC method that folds, trims or NFKC-normalizes to an MCP
method but is not exactly it is refused (400 ``method_variant``): ``tools/call`` is judged by its tool and
arguments only under its exact name, and an upstream with case-insensitive or trimming dispatch would run it."""

from __future__ import annotations

import pytest

from addon.protocol.errors import Cause, Refusal
from addon.protocol.jsonrpc import MCP_METHODS, _message


def message(method: str) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "danger", "arguments": {}}}


@pytest.mark.parametrize("method", ["TOOLS/CALL", "Tools/Call", "tools/call ", " tools/call", "\ttools/call\n",
                                    "tools/call\u0000", "tools/call\u200b", "\ufefftools/call", "tools/\u00adcall",
                                    "ｔｏｏｌｓ/ｃａｌｌ", "tools / call", "INITIALIZE", "logging/setlevel",
                                    "notifications/Initialized", "tools/call" + " " * 10_000])
def test_variants_of_mcp_methods_are_refused(method: str) -> None:
    with pytest.raises(Refusal) as refused:
        _message(message(method))
    assert refused.value.cause is Cause.METHOD_VARIANT


@pytest.mark.parametrize("method", sorted(MCP_METHODS) + ["x/custom", "tools/call2", "mytools/call", "tools.call"])
def test_exact_and_unrelated_methods_pass(method: str) -> None:
    assert _message(message(method)).method == method
