"""Canary secrets: decoys an operator plants where only a compromised agent would pick them up.

A canary is stored in the vault like a secret (``valet secret set NAME --canary``) but
under :data:`~addon.secrets.vault.CANARY_SERVER`, a name no configured server can
have, so Valet never injects it anywhere. Its only use is recognition: an agent that
sends one — in a header, the query or the body, in any form the egress scrubber knows
(raw, percent/JSON/HTML-escaped, hex, base64) — has read something it should only have
*seen*, and was steered to use it (prompt injection, a leaked sandbox). Valet refuses
that request (``canary_tripped``) and can revoke the key that sent it.

Matching reuses :class:`~addon.secrets.scrubber.Scrubber` (the same forms, the same
linear-time Hyperscan search), built once per vault generation, never per request.
"""

from __future__ import annotations

from collections.abc import Iterable

from addon.secrets.scrubber import Scrubber


class Canaries:
    """The canaries of one vault generation, and where in a request one appears."""

    def __init__(self, values: Iterable[tuple[str, str]]) -> None:
        self.values = list(values)
        self.scrubber = Scrubber(self.values, key_shape=False)

    def __bool__(self) -> bool:
        return bool(self.values)

    def found(self, data: bytes) -> str | None:
        """The name of the first canary in ``data`` (any known form), or None."""
        if not self.values or not data:
            return None
        spans = self.scrubber.spans(data)
        return spans[0][2] if spans else None

    def in_request(self, target: str, headers: Iterable[tuple[str, str]], body: bytes) -> tuple[str, str] | None:
        """(canary name, where: path | header NAME | body) for the first canary the request carries."""
        name = self.found(target.encode("utf-8", "surrogateescape"))
        if name is not None:
            return name, "path"
        for header, value in headers:
            name = self.found(value.encode("utf-8", "surrogateescape"))
            if name is not None:
                return name, f"header {header.lower()}"
        name = self.found(body)
        if name is not None:
            return name, "body"
        return None

    def redact(self, text: str) -> str:
        """A path or value with any canary replaced by its marker (so the audit row does not carry it)."""
        return self.scrubber.text(text) if self.values else text


__all__ = ["Canaries"]
