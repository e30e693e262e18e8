"""What Valet keeps of a relayed tool schema: the ``x-mcp-header`` annotations, and nothing else.

Valet remembers the schema of every tool it relays in a tools/list answer, so that it can rebuild the
``Mcp-Param-*`` headers a 2026-07-28 server checks against the body. Only the annotated positions
matter for that, and a whole schema, parsed, takes about ten times its wire size (the review measured
+333 MiB kept for 22 MiB of tools/list answers). So Valet keeps a *skeleton*: nested ``properties``
down to each annotated property and its ``x-mcp-header`` token. The SDK reads the same header map
from the skeleton as from the schema (:func:`mcp.shared.inbound.x_mcp_header_map`), so the code that
rebuilds headers does not change.
"""

from __future__ import annotations

from typing import Any

from mcp.shared.inbound import x_mcp_header_map

# A skeleton larger than this (thousands of annotated properties: no real tool) is not kept; the tool's
# Mcp-Param-* headers are then refused as unverified, which is where an unknown tool already stands.
MAX_SKELETON_BYTES = 64 * 1024
_ENTRY_OVERHEAD = 64  # a rough per-entry cost in memory beyond its characters (dicts, tuples)


def header_skeleton(schema: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
    """(skeleton, its approximate size in bytes), or None when the annotations alone exceed the bound."""
    header_map = x_mcp_header_map(schema)
    size = _ENTRY_OVERHEAD
    for path, token in header_map.items():
        size += _ENTRY_OVERHEAD + len(token) + sum(len(part) + _ENTRY_OVERHEAD for part in path)
        if size > MAX_SKELETON_BYTES:
            return None
    skeleton: dict[str, Any] = {}
    for path, token in header_map.items():
        node = skeleton
        for part in path:
            node = node.setdefault("properties", {}).setdefault(part, {})
        node["x-mcp-header"] = token
    return skeleton, size


__all__ = ["MAX_SKELETON_BYTES", "header_skeleton"]
