"""Cheap change detection for the files the CLI writes and the proxy reads (keys, vault, master key,
configuration and policy files).

The proxy checks before each request whether a file changed, so that a
revocation or a new secret applies to the very next request. A ``stat`` alone
can miss a write: mtime ticks are coarse and a revocation does not change the
size. For SQLite files we also read the header's file change counter (bytes
24-27), which SQLite increments on every committed write in rollback-journal
mode, the mode Valet's key and vault databases use. A few syscalls, no parsing.

Where Linux inotify is available, the proxy does not even do that per request
(:class:`Watcher`): each watched path's signature is remembered and computed
again only after an inotify event about it (its inode written, its attributes
changed, deleted or moved; or its name created, deleted or moved in its folder,
so a file replaced by a rename is seen at once), or after ``FULL_CHECK_SECONDS``
(a safety net for file systems that report nothing, such as network mounts).
The check is one non-blocking ``read`` of the inotify descriptor. The kernel
queues an event when the writing syscall happens, so a revocation committed
before a request was sent is in the queue when that request is checked: it
still applies to the very next request. If inotify cannot be used (not Linux,
the per-user instance or watch limit reached, a path whose folder does not
exist, a path that is a symbolic link: a link can be re-pointed without any event
naming it), those paths are checked as before, on every call. A folder above a
watched path that is itself a link re-pointed elsewhere is caught by the
safety net, within ``FULL_CHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import threading
import time
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("valet.filewatch")

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
    """(inode, mtime, size, SQLite change counter). With the proxy's :class:`Watcher` running, the one
    remembered since the last inotify event about ``path``; else computed (:func:`compute_signature`)."""
    watcher = _WATCHER
    if watcher is not None:
        return watcher.signature(path, sqlite)
    return compute_signature(path, sqlite)


def compute_signature(path: Path, sqlite: bool = True) -> tuple[int, ...]:
    """(inode, mtime, size, SQLite change counter). For SQLite files the file is kept open: an ``fstat``
    and a ``pread`` of the header per call instead of ``stat``, ``open``, ``read``, ``close``. A write in
    place (what SQLite and the CLI do) is seen at once; a file replaced by another at the same path is
    seen within ``REOPEN_SECONDS``, when the path is looked up again (at once with the :class:`Watcher`,
    which calls :func:`forget` on it)."""
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


def forget(path: Path) -> None:
    """The path now names another file (replaced, deleted): look it up again on the next signature."""
    entry = _OPEN.get(path)
    if entry is not None:
        _close(path, entry)


def signatures(paths: list[Path], sqlite: bool = False) -> tuple[int, ...]:
    """The signatures of ``paths``, concatenated (the snapshot's files and folders)."""
    watcher = _WATCHER
    if watcher is not None:
        return watcher.signatures(paths, sqlite)
    return tuple(v for p in paths for v in compute_signature(p, sqlite))


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
    """The check is a few syscalls on the event loop (one, with the :class:`Watcher`, which the first call
    starts: only the proxy calls this); the reading goes to a worker thread.

    ``exchange``: checked once per exchange. Several stages of one request use the same store (the
    canary trap and the injector both read the vault); a change between two stages of one request is
    a change after that request arrived, so the first check stands for the whole request, and the
    very next request checks again.
    """
    if store is None:
        return
    if not _STARTED:
        start_watcher()
    if exchange is not None:
        if _CHECKED_FOR.get(id(store)) is exchange:
            return
        _CHECKED_FOR[id(store)] = exchange
    if store.stale():
        await asyncio.to_thread(store.reload)


# ------------------------------------------------------------------ inotify

# inotify event bits (linux/inotify.h)
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR, IN_MASK_ADD = 0x01000000, 0x20000000

# On the watched file or folder itself: its content or attributes changed, or it is gone from its name.
# (A folder's own mtime changes when a name in it is created, deleted or moved: those are its content.)
SELF_EVENTS = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF
               | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)
# On the folder holding it: its name now points to another file, or to none. Not IN_MODIFY: the data dir
# also holds audit.db, written on every request, and a folder watch would report each of its writes.
NAME_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
# On a watched folder itself (a policy folder): a name in it created, deleted or moved (its mtime), its own
# attributes, or the folder gone. (IN_MODIFY on a folder would report every write to every file in it.)
FOLDER_EVENTS = NAME_EVENTS | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED

FULL_CHECK_SECONDS = 1.0  # every remembered signature is computed again at least this often (safety net)


class Watcher:
    """Remembered signatures, forgotten on inotify events about their path (thread safe: the snapshot, key
    ring and vault reloads compute signatures in worker threads too)."""

    def __init__(self, inotify: Any) -> None:
        self._inotify = inotify
        self._fd: int = inotify.fileno()
        self._local = threading.local()  # a poll object per thread: poll() on one from two threads raises
        self._lock = threading.Lock()
        self._known: dict[tuple[Path, bool], tuple[int, ...]] = {}
        self._itself: dict[int, set[Path]] = {}  # watch descriptor -> the paths it is the inode of
        self._named: dict[int, dict[str, set[Path]]] = {}  # folder's watch descriptor -> child name -> paths
        self._watched: dict[Path, tuple[int | None, int | None]] = {}  # path -> (its own wd, its folder's wd)
        self._full_at = time.monotonic()
        self.events = 0  # inotify events read so far (for tests and benchmarks)

    def _poll(self) -> list[Any]:
        """Whether events are waiting (``poll`` with a zero timeout). A ``select.poll`` object is not thread
        safe (two threads polling it at once get RuntimeError), and signatures are computed in worker
        threads too (the snapshot, key ring and vault reloads): one per thread."""
        poll = getattr(self._local, "poll", None)
        if poll is None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poll = self._local.poll = poller.poll
        return poll(0)

    def signature(self, path: Path, sqlite: bool) -> tuple[int, ...]:
        """The remembered signature unless an event about ``path`` arrived (one ``poll`` of the inotify
        descriptor when none did: no lock, no exception, no ``stat``)."""
        # Events are read only under the lock. So if poll says none are waiting and the lock is free, every
        # event queued before this call has been handled (its signatures forgotten) by whoever read it.
        if self._poll() or self._lock.locked():
            with self._lock:
                self._drain()
        known = self._known.get((path, sqlite))
        if known is not None and time.monotonic() - self._full_at <= FULL_CHECK_SECONDS:
            return known
        with self._lock:
            now = time.monotonic()
            if now - self._full_at > FULL_CHECK_SECONDS:
                self._known.clear()
                self._full_at = now
            self._drain()
            watched = self._watch(path)
            computed = compute_signature(path, sqlite)
            if watched:  # a path that cannot be watched is computed on every call, as without inotify
                self._known[(path, sqlite)] = computed
            return computed

    def signatures(self, paths: list[Path], sqlite: bool) -> tuple[int, ...]:
        if self._poll() or self._lock.locked():
            with self._lock:
                self._drain()
        known = self._known
        if time.monotonic() - self._full_at <= FULL_CHECK_SECONDS:
            found = [known.get((p, sqlite)) for p in paths]
            if None not in found:
                return tuple(v for signature in found for v in signature)  # type: ignore[union-attr]
        return tuple(v for p in paths for v in self.signature(p, sqlite))

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                self._known.clear()
                return
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        pos, size = 0, len(data)
        dirty: set[Path] = set()
        while pos + 16 <= size:
            wd = int.from_bytes(data[pos:pos + 4], "little", signed=True)
            mask = int.from_bytes(data[pos + 4:pos + 8], "little")
            length = int.from_bytes(data[pos + 12:pos + 16], "little")
            name = os.fsdecode(data[pos + 16:pos + 16 + length].split(b"\0", 1)[0])
            pos += 16 + length
            self.events += 1
            if mask & IN_Q_OVERFLOW:  # events were lost: nothing remembered can be trusted
                self._reset()
                return
            dirty |= self._itself.get(wd, set())
            if name:
                named = self._named.get(wd, {}).get(name)
                if named:
                    dirty |= named
                    if mask & NAME_EVENTS:  # the name points to another file now, or to none
                        for path in list(named):
                            forget(path)
                            self._unwatch(path)
            if mask & GONE:
                for path in list(self._itself.get(wd, ())):
                    forget(path)
                    self._unwatch(path)
        if dirty:
            for key in [key for key in self._known if key[0] in dirty]:
                del self._known[key]

    def _reset(self) -> None:
        """Forget every signature and which watch stands for which path: all are looked up afresh (the
        kernel's watches stay; adding one again returns the same descriptor)."""
        for path in self._watched:
            forget(path)
        self._known.clear()
        self._itself.clear()
        self._named.clear()
        self._watched.clear()

    def _watch(self, path: Path) -> bool:
        """Watch the path's inode and its name in its folder; False if either cannot be watched."""
        if path in self._watched:
            own, folder = self._watched[path]
            return own is not None and folder is not None
        if path.is_symlink():
            # A link can be re-pointed (Kubernetes swaps a ConfigMap's "..data" link in the folder above the
            # files' links): no event names this path, so it is computed on every call, as without inotify.
            self._watched[path] = (None, None)
            return False
        folder_wd = own_wd = None
        try:
            folder_wd = self._inotify.add_watch(path.parent, NAME_EVENTS | IN_ONLYDIR | IN_MASK_ADD)
            self._named.setdefault(folder_wd, {}).setdefault(path.name, set()).add(path)
        except OSError as exc:
            _limit_reached(exc)
        try:
            own_wd = self._inotify.add_watch(path, (FOLDER_EVENTS if path.is_dir() else SELF_EVENTS) | IN_MASK_ADD)
            self._itself.setdefault(own_wd, set()).add(path)
        except FileNotFoundError:
            own_wd = -1  # nothing to watch yet: its folder watch reports its creation
        except OSError as exc:
            _limit_reached(exc)
        self._watched[path] = (own_wd, folder_wd)
        return own_wd is not None and folder_wd is not None

    def _unwatch(self, path: Path) -> None:
        """The path's inode watch no longer describes the path: watch it afresh when it is next computed.
        (The old inode's watch stays: it may be shared with another path; the kernel drops it with the inode.)"""
        own, folder = self._watched.pop(path, (None, None))
        if own is not None and own >= 0:
            paths = self._itself.get(own)
            if paths is not None:
                paths.discard(path)
        if folder is not None:
            names = self._named.get(folder, {}).get(path.name)
            if names is not None:
                names.discard(path)

    def close(self) -> None:
        with self._lock:
            self._inotify.close()
            self._known.clear()


def _limit_reached(exc: OSError) -> None:
    if exc.errno == errno.ENOSPC:
        log.warning("inotify watch limit reached (fs.inotify.max_user_watches): some files are checked with "
                    "stat on every request instead")


_WATCHER: Watcher | None = None
_STARTED = False


def start_watcher() -> Watcher | None:
    """Start remembering signatures with inotify (the proxy, on its first check); None where unavailable."""
    global _WATCHER, _STARTED
    _STARTED = True
    if _WATCHER is not None:
        return _WATCHER
    try:
        from inotify_simple import INotify

        _WATCHER = Watcher(INotify(nonblocking=True))
    except (ImportError, OSError, AttributeError) as exc:  # not Linux, or the per-user instance limit
        log.info("inotify unavailable (%s): configuration, key and vault files are checked with stat on "
                 "every request", exc.__class__.__name__)
        _WATCHER = None
    return _WATCHER


def stop_watcher() -> None:
    """Back to computing every signature (tests)."""
    global _WATCHER, _STARTED
    if _WATCHER is not None:
        _WATCHER.close()
    _WATCHER, _STARTED = None, False
