"""What goes back to the agent: injected arguments hidden from tools/list, secrets redacted.

Pure: works on response bodies, SSE events and header values. The hooks decide
which exchange needs what; this module never sees mitmproxy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from addon.secrets.redact import Redactor
from addon.protocol.sse import join_event, split_event

ToolFilter = Callable[[dict[str, Any]], bool]


class Outbound:
    """The transformation for one exchange's response.

    ``tools_list_ids`` are the JSON-RPC ids of the exchange's tools/list
    requests: when there is one, every result with a ``tools`` list is rewritten. ``visible`` drops the tools the
    caller may not call; ``hide`` removes injected arguments from one tool
    entry; ``remember`` sees each remaining tool's schema first, as the upstream
    sent it (Valet needs it to mirror ``Mcp-Param-*`` headers).
    """

    def __init__(
        self,
        redactor: Redactor,
        tools_list_ids: frozenset[Any] = frozenset(),
        hide: ToolFilter | None = None,
        remember: Callable[[dict[str, Any]], None] | None = None,
        visible: Callable[[str], bool] | None = None,
    ) -> None:
        self.redactor = redactor
        self.tools_list_ids = tools_list_ids
        self.hide = hide
        self.remember = remember
        self.visible = visible

    @property
    def active(self) -> bool:
        return bool(self.redactor) or bool(self.tools_list_ids and (self.hide or self.remember or self.visible))

    def header(self, value: str) -> str:
        return self.redactor.text(value)

    def body(self, data: bytes) -> bytes:
        """A JSON (or unknown) body."""
        if self.tools_list_ids and b'"tools"' in data:
            rewritten = self._tools_list(data)
            if rewritten is not None:
                return rewritten
        return self.redactor.json_or_raw(data)

    def event(self, event: bytes) -> bytes:
        """One complete SSE event."""
        if not self.active:
            return event
        others, data, eol = split_event(event)
        new_others = [self.redactor.raw(line) for line in others]
        new_data = self.body(data) if data is not None else None
        if new_data == data and new_others == others:
            return event
        return join_event(new_others, new_data, eol)

    def _tools_list(self, data: bytes) -> bytes | None:
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        messages = doc if isinstance(doc, list) else [doc]
        touched = False
        for message in messages:
            # every result carrying a tools list, whatever its id says: an upstream may renumber
            # (a large integer id through a JavaScript server, say)
            if not isinstance(message, dict):
                continue
            result = message.get("result")
            tools = result.get("tools") if isinstance(result, dict) else None
            if not isinstance(tools, list):
                continue
            if self.visible is not None:
                kept = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)
                        and self.visible(t["name"])]
                if len(kept) != len(tools):
                    result["tools"] = tools = kept
                    touched = True
            for tool in tools:
                if not isinstance(tool, dict):
                    continue
                if self.remember:
                    self.remember(tool)
                if self.hide and self.hide(tool):
                    touched = True
        if not touched and not self.redactor:
            return data
        return json.dumps(self.redactor.value(doc), ensure_ascii=False, separators=(",", ":")).encode()
