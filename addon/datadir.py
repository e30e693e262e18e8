"""The data dir is private: created 0700, its databases and key files 0600, whatever the umask.

It holds every tool argument (audit.db), key hashes (keys.db), encrypted
secrets and their metadata (vault.db), the master key and mitmproxy's CA key.
Under the usual umask 022 SQLite and mkdir would make them world-readable, so
every ``valet`` command and the proxy set the process umask to 077 first, and
the proxy (and the vault commands) tighten files an older Valet or a copy left
open. Only files this user owns are touched; symlinks are never followed.

The master key file is the exception: one that group or others could read is
not quietly fixed but refused by the vault (``chmod 600`` is the operator's
call, after deciding whether the key must be rotated because it was exposed).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
_REFUSED_NOT_FIXED = {"master.key"}


def lock_down(data_dir: Path) -> None:
    """Umask 077 for this process, then make the data dir and everything in it owner-only."""
    os.umask(PRIVATE_UMASK)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _tighten(data_dir, depth=2)


def _tighten(path: Path, depth: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_uid != os.getuid() or stat.S_ISLNK(st.st_mode) or path.name in _REFUSED_NOT_FIXED:
        return
    if stat.S_ISDIR(st.st_mode):
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
        if depth > 0:
            for child in os.scandir(path):
                _tighten(Path(child.path), depth - 1)
    elif stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
