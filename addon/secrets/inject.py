"""What Valet adds to a request on the user's behalf: headers, query parameters, tool arguments.

Pure functions over the server's config and a resolver that maps a secret name
to its value for the calling user. Every placeholder of a request is resolved
before anything is changed; if any secret is missing the whole request is
refused naming the missing secrets (never a value), so nothing ever goes
upstream with an empty or literal placeholder.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from addon.secrets import templates
from addon.config import ServerConfig
from addon.protocol.errors import Cause, Refusal

Resolver = Callable[[str], str | None]


@dataclass
class Resolution:
    """Resolves placeholders, remembering what was used (to redact) and what was missing (to refuse)."""

    resolver: Resolver
    used: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def __call__(self, name: str) -> str:
        value = self.resolver(name)
        if value is None:
            if name not in self.missing:
                self.missing.append(name)
            return ""
        self.used[name] = value
        return value

    def render(self, template: str) -> str:
        return templates.render(template, self)

    def check(self, rpc_id: Any = None) -> None:
        if self.missing:
            names = ", ".join(sorted(self.missing))
            raise Refusal(Cause.MISSING_SECRET,
                          f"this request needs secret(s) {names}, which the vault has neither for this user "
                          "nor as a shared secret of this server", rpc_id)


def upstream_headers(server: ServerConfig, resolution: Resolution) -> dict[str, str]:
    headers = {name: resolution.render(t) for name, t in server.headers.items()}
    if server.basic_auth is not None:
        user = resolution.render(server.basic_auth.username)
        password = resolution.render(server.basic_auth.password)
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return headers


def upstream_query(server: ServerConfig, resolution: Resolution) -> dict[str, str]:
    return {name: resolution.render(t) for name, t in server.query.items()}


def inject_arguments(
    server: ServerConfig, tool: str, arguments: dict[str, Any] | None, resolution: Resolution
) -> tuple[dict[str, Any] | None, list[str]]:
    """(arguments to forward, names of injected arguments the agent had set itself)."""
    wanted = server.arguments_for(tool)
    if not wanted:
        return arguments, []
    result = dict(arguments or {})
    overridden = sorted(name for name in wanted if name in result)
    for name, template in wanted.items():
        result[name] = resolution.render(template)
    return result, overridden


def hide_injected(server: ServerConfig, tool: dict[str, Any]) -> bool:
    """Remove injected arguments from one tools/list entry's inputSchema; True if it changed."""
    name = tool.get("name")
    schema = tool.get("inputSchema")
    if not isinstance(name, str) or not isinstance(schema, dict):
        return False
    hidden = server.arguments_for(name).keys()
    if not hidden:
        return False
    changed = False
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for arg in hidden:
            if arg in properties:
                del properties[arg]
                changed = True
    required = schema.get("required")
    if isinstance(required, list):
        kept = [r for r in required if r not in hidden]
        if len(kept) != len(required):
            schema["required"] = kept
            changed = True
    return changed
