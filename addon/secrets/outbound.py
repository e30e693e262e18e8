"""What goes back to the agent: injected arguments hidden from tools/list, secrets scrubbed.

Pure: works on response bodies, SSE events and header values. The hooks decide
which exchange needs what; this module never sees mitmproxy. The scrubber is
not held but looked up (``scrubber()``) each time bytes pass, so an answer that
arrives after an OAuth refresh or a vault change is scrubbed with the values of
that moment (and the previous ones, which the scrubber keeps too).

Only tools/list answers are parsed and re-serialized (they must be rewritten,
and are small); every other body is scrubbed as bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from addon.protocol.sse import join_event, split_event
from addon.secrets import compressed
from addon.secrets.scrubber import Scrubber

ToolFilter = Callable[[dict[str, Any]], bool]
DEFAULT_CAP = 64 * 1024 * 1024

# Stream events are scrubbed inside mitmproxy's event loop (its stream callable is synchronous), and the
# decoded view of escapes costs Python work per escape (about 4 µs): 7 MiB of ``%61`` stalled every agent
# for seconds. So an event on the loop over INLINE_EVENT_BYTES with more than MAX_INLINE_ESCAPES escape
# characters (about 0.25 s of work at most) is refused, ending its stream; counted with bytes.count (C).
# Buffered bodies are scrubbed in a worker thread by the relay and are not bounded here.
INLINE_EVENT_BYTES = 256 * 1024
MAX_INLINE_ESCAPES = 65536


class TooCostly(compressed.TooLarge):
    """An SSE event that would hold the event loop too long to scrub (refused like an over-sized one)."""


def escapes_in(data: bytes) -> int:
    """How many encoded characters ``data`` may hold at most, as the scrubber decodes them (C speed)."""
    return data.count(b"%") + data.count(b"&") + data.count(b"\\u") + data.count(b"\\U") + \
        data.count(b"\\/") + data.count(b"\\\\")


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False  # a worker thread (asyncio.to_thread): it may take its time
    return True


class Outbound:
    """The transformation for one exchange's response.

    ``tools_list_ids`` are the JSON-RPC ids of the exchange's tools/list
    requests: when there is one, every result with a ``tools`` list is rewritten. ``visible`` drops the tools the
    caller may not call; ``hide`` removes injected arguments from one tool
    entry; ``remember`` sees each remaining tool's schema first, as the upstream
    sent it (Valet needs it to mirror ``Mcp-Param-*`` headers).

    ``mcp``: the answer comes from an MCP server, so a tools list may arrive on ANY of its answers, not only
    the one to the tools/list request: a hostile upstream can send ``{"id": 5, "result": {"tools": [...]}}``
    as an event of another call's SSE answer or of the standing GET stream before it answers id 5, and the
    agent's SDK takes the first answer (review 3, observations). So every JSON-RPC result with a ``tools``
    array is filtered, whatever its id and whichever answer carries it. Bodies and events that cannot hold a
    ``tools`` member (no ``tools`` bytes, no ``\\u`` escape, not compressed) are not parsed.
    """

    def __init__(
        self,
        scrubber: Scrubber | Callable[[], Scrubber],
        tools_list_ids: frozenset[Any] = frozenset(),
        hide: ToolFilter | None = None,
        remember: Callable[[dict[str, Any]], None] | None = None,
        visible: Callable[[str], bool] | None = None,
        cap: int = DEFAULT_CAP,
        mcp: bool = False,
    ) -> None:
        self._scrubber = scrubber if callable(scrubber) and not isinstance(scrubber, Scrubber) else (
            lambda: scrubber)  # type: ignore[assignment,return-value]
        self.tools_list_ids = tools_list_ids
        self.hide = hide
        self.remember = remember
        self.visible = visible
        self.cap = cap
        self.mcp = mcp

    @property
    def scrubber(self) -> Scrubber:
        return self._scrubber()  # type: ignore[operator]

    @property
    def active(self) -> bool:
        return True  # every response is scrubbed: valet keys at least are always looked for

    def header(self, value: str) -> str:
        return self.scrubber.text(value)

    def header_name(self, value: str) -> str:
        return self.scrubber.token(value)

    def _filtering(self, data: bytes | None) -> bool:
        """Whether ``data`` must be parsed for tools lists: always on a tools/list exchange; on any other
        answer of an MCP server when it may hold a ``tools`` member (spelt out, escaped, or compressed)."""
        if self.tools_list_ids:
            return True
        return self.mcp and data is not None and (
            b"tools" in data or b"\\u" in data or compressed.sniff(data) is not None)

    def body(self, data: bytes) -> bytes:
        """A JSON (or unknown) body, compressed or not. Raises compressed.TooLarge past the cap."""
        if self.tools_list_ids:
            # Always parsed: a byte pre-check for ``"tools"`` missed ``"\u0074ools"`` and compressed answers.
            plain = _decompressed(data, self.cap)
            rewritten = self._tools_list(plain)
            if rewritten is not None:
                data = rewritten  # not JSON (an error page, say): scrubbed as bytes below
        elif self._filtering(data):
            try:
                plain = _decompressed(data, self.cap)
            except compressed.Unreadable:
                plain = None  # scrubbed (or refused) as bytes below, as any answer is
            rewritten = self._tools_list(plain) if plain is not None else None
            if rewritten is not None and rewritten is not plain:
                data = rewritten  # a tools list was filtered: forwarded as rewritten; otherwise left as sent
        scrubber = self.scrubber
        return compressed.scrub(data, scrubber.bytes, self.cap)

    def event(self, event: bytes) -> bytes:
        """One complete SSE event. Raises :class:`TooCostly` for an escape-dense event on the event loop."""
        if len(event) > INLINE_EVENT_BYTES and _on_event_loop() and escapes_in(event) > MAX_INLINE_ESCAPES:
            raise TooCostly("an event too dense in escapes to scrub without stalling every other agent")
        others, data, eol = split_event(event)
        scrubber = self.scrubber
        if (not self._filtering(data) and (data is None or (b"\n" not in data and compressed.sniff(data) is None))
                and not scrubber.spans(event)):
            # Every part scrubbed below (each other line; the data of a single data line, not compressed)
            # is a contiguous piece of the event: no match in the whole event, none in any part. One scan
            # instead of one per line (perf). A multi-line payload is scrubbed joined, as below.
            return event
        new_others = [scrubber.bytes(line) for line in others]
        new_data = self.body(data) if data is not None else None
        if new_data is data and all(a is b for a, b in zip(new_others, others)):
            return event
        return join_event(new_others, new_data, eol)

    def _tools_list(self, data: bytes) -> bytes | None:
        """The answer with its tools lists filtered (``data`` itself when nothing changed); None if not JSON."""
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
        if not touched:
            return data
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _decompressed(data: bytes, cap: int) -> bytes:
    """A tools/list answer without unlabelled compression, so that it can be filtered (review 2, F12).

    gzip and zstd must decode or the answer is refused (:class:`compressed.Unreadable`); the guessed
    formats (zlib, brotli, raw deflate) that do not decode are text after all, as in ``compressed.scrub``.
    """
    for _ in range(compressed.MAX_DEPTH):
        refused = compressed.refused_format(data)
        if refused is not None:
            raise compressed.Unreadable(f"a {refused} tools/list answer: Valet does not decode it")
        codec = compressed.sniff(data)
        if codec is None:
            return data
        plain = None
        for guess in (["br", "raw-deflate"] if codec == "br" else [codec]):
            try:
                plain = compressed.decode(guess, data, cap)
                break
            except compressed.Unreadable:
                if guess in ("gzip", "zstd"):
                    raise
            except compressed.TooLarge:
                raise
            except Exception:  # noqa: BLE001 - corrupt, or a guess that was wrong
                if guess in ("gzip", "zstd"):
                    raise compressed.Unreadable(f"a {guess} tools/list answer that does not decode") from None
        if plain is None:
            return data
        data = plain
    return data
