"""Cheap change detection for the files the CLI writes and the proxy reads (keys, vault, master key).

The proxy checks before each request whether a file changed, so that a
revocation or a new secret applies to the very next request. A ``stat`` alone
can miss a write: mtime ticks are coarse and a revocation does not change the
size. For SQLite files we also read the header's file change counter (bytes
24-27), which SQLite increments on every committed write in rollback-journal
mode, the mode Valet's key and vault databases use. A few syscalls, no parsing.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Protocol

_SQLITE_MAGIC = b"SQLite format 3\x00"


def signature(path: Path, sqlite: bool = True) -> tuple[int, ...]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0, 0, 0)
    counter = 0
    if sqlite and st.st_size >= 100:
        try:
            with open(path, "rb", buffering=0) as f:
                header = f.read(28)
            if header.startswith(_SQLITE_MAGIC):
                counter = int.from_bytes(header[24:28], "big")
        except OSError:
            pass
    return (st.st_ino, st.st_mtime_ns, st.st_size, counter)


class Reloadable(Protocol):
    def stale(self) -> bool: ...
    def reload(self) -> None: ...


async def reload_if_stale(store: Reloadable | None) -> None:
    """The check is a few syscalls on the event loop; the reading goes to a worker thread."""
    if store is not None and store.stale():
        await asyncio.to_thread(store.reload)
