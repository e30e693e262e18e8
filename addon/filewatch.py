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
import time
from pathlib import Path
from typing import Protocol

_SQLITE_MAGIC = b"SQLite format 3\x00"


REOPEN_SECONDS = 0.1  # how soon a file *replaced* (a new inode at the path) is noticed


class _Open:
    __slots__ = ("fd", "ino", "checked", "plain")

    def __init__(self, fd: int, ino: int, checked: float) -> None:
        self.fd, self.ino, self.checked = fd, ino, checked
        # (mtime_ns, size) at which the file was last seen NOT to be SQLite: while both stay the same it
        # still is not (its signature is then ino, mtime, size, 0), and its header is not read again
        self.plain: tuple[int, int] | None = None


_OPEN: dict[Path, _Open] = {}


def signature(path: Path, sqlite: bool = True) -> tuple[int, ...]:
    """(inode, mtime, size, SQLite change counter). For SQLite files the file is kept open: an ``fstat``
    and a ``pread`` of the header per call instead of ``stat``, ``open``, ``read``, ``close``. A write in
    place (what SQLite and the CLI do) is seen at once; a file replaced by another at the same path is
    seen within ``REOPEN_SECONDS``, when the path is looked up again."""
    if not sqlite:
        return _stat_signature(path)
    now = time.monotonic()
    entry = _OPEN.get(path)
    if entry is not None and now - entry.checked > REOPEN_SECONDS:
        try:
            replaced = os.stat(path).st_ino != entry.ino
        except OSError:
            replaced = True
        if replaced:
            _close(path, entry)
            entry = None
        else:
            entry.checked = now
    if entry is None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return _stat_signature(path)
        entry = _OPEN[path] = _Open(fd, os.fstat(fd).st_ino, now)
    try:
        st = os.fstat(entry.fd)
        if entry.plain == (st.st_mtime_ns, st.st_size):
            return (st.st_ino, st.st_mtime_ns, st.st_size, 0)  # unchanged, and not SQLite (a key file)
        header = os.pread(entry.fd, 28, 0) if st.st_size >= 100 else b""
    except OSError:
        _close(path, entry)
        return _stat_signature(path)
    if header.startswith(_SQLITE_MAGIC):
        entry.plain = None
        counter = int.from_bytes(header[24:28], "big")
    else:
        entry.plain = (st.st_mtime_ns, st.st_size) if len(header) == 28 else None
        counter = 0
    return (st.st_ino, st.st_mtime_ns, st.st_size, counter)


def _close(path: Path, entry: _Open) -> None:
    _OPEN.pop(path, None)
    try:
        os.close(entry.fd)
    except OSError:
        pass


def _stat_signature(path: Path) -> tuple[int, ...]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size, 0)


class Reloadable(Protocol):
    def stale(self) -> bool: ...
    def reload(self) -> None: ...


_CHECKED_FOR: dict[int, object] = {}  # id(store) -> the exchange it was last checked for (held: ids stay unique)


async def reload_if_stale(store: Reloadable | None, exchange: object = None) -> None:
    """The check is a few syscalls on the event loop; the reading goes to a worker thread.

    ``exchange``: checked once per exchange. Several stages of one request use the same store (the
    canary trap and the injector both read the vault); a change between two stages of one request is
    a change after that request arrived, so the first check stands for the whole request, and the
    very next request checks again.
    """
    if store is None:
        return
    if exchange is not None:
        if _CHECKED_FOR.get(id(store)) is exchange:
            return
        _CHECKED_FOR[id(store)] = exchange
    if store.stale():
        await asyncio.to_thread(store.reload)
