"""Change detection with inotify (addon/filewatch.py ``Watcher``): no ``stat`` per request, and still every
change seen by the very next check — a write in place (a revocation commit), a file replaced by a rename,
a file deleted and created again, a new file in a watched policy folder — plus the fallback to ``stat``
where inotify cannot be used."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from addon import filewatch, snapshot


@pytest.fixture
def watcher() -> Iterator[filewatch.Watcher]:
    filewatch.stop_watcher()
    started = filewatch.start_watcher()
    if started is None:
        pytest.skip("inotify is not available here")
    yield started
    filewatch.stop_watcher()


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths whose signature was computed (stat, fstat, pread) rather than remembered."""
    calls: list[Path] = []
    real = filewatch.compute_signature

    def counting(path: Path, sqlite: bool = True) -> tuple[int, ...]:
        calls.append(path)
        return real(path, sqlite)

    monkeypatch.setattr(filewatch, "compute_signature", counting)
    monkeypatch.setattr(filewatch, "FULL_CHECK_SECONDS", 3600.0)  # no safety-net recheck during a test
    return calls


def _keys_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # rollback journal, as the key store
    conn.execute("CREATE TABLE IF NOT EXISTS k (id TEXT PRIMARY KEY, revoked INTEGER)")
    conn.execute("INSERT OR REPLACE INTO k VALUES ('a', 0)")
    return conn


def test_unchanged_files_are_not_looked_at_again(tmp_path: Path, watcher: filewatch.Watcher,
                                                  computed: list[Path]) -> None:
    db = tmp_path / "keys.db"
    _keys_db(db).close()
    first = filewatch.signature(db)
    for _ in range(50):
        assert filewatch.signature(db) == first
    assert computed == [db], "computed once, then remembered while no event came"


def test_a_revocation_written_in_place_is_seen_by_the_next_check(tmp_path: Path, watcher: filewatch.Watcher,
                                                                 computed: list[Path]) -> None:
    db = tmp_path / "keys.db"
    conn = _keys_db(db)
    before = filewatch.signature(db)
    for flag in (1, 0, 1):  # same size, same second: only the change counter tells
        conn.execute("UPDATE k SET revoked = ?", (flag,))
        after = filewatch.signature(db)
        assert after != before, "the commit before this check is seen by it"
        before = after
    conn.close()
    assert filewatch.signature(db) == before
    assert len(computed) <= 5, "computed again only after an event (each commit, and the close)"


def test_a_file_replaced_by_a_rename_is_seen_at_once(tmp_path: Path, watcher: filewatch.Watcher,
                                                      computed: list[Path]) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_bytes(b"a" * 64)
    before = filewatch.signature(key_file)
    fresh = tmp_path / "master.key.tmp"
    fresh.write_bytes(b"b" * 64)
    os.replace(fresh, key_file)
    after = filewatch.signature(key_file)
    assert after != before and after[0] == os.stat(key_file).st_ino, "the new file, not REOPEN_SECONDS later"
    # the new inode is watched in turn: a write in place to it is seen too
    with open(key_file, "r+b") as out:
        out.write(b"c" * 64)
    os.utime(key_file, ns=(1, 1))
    assert filewatch.signature(key_file) != after


def test_a_sqlite_file_replaced_by_a_rename_is_read_from_the_new_file(tmp_path: Path, watcher: filewatch.Watcher,
                                                                       computed: list[Path]) -> None:
    db = tmp_path / "vault.db"
    _keys_db(db).close()
    before = filewatch.signature(db)
    other = tmp_path / "vault.db.new"
    conn = _keys_db(other)
    conn.execute("UPDATE k SET revoked = 1")
    conn.close()
    os.replace(other, db)
    after = filewatch.signature(db)
    assert after[0] == os.stat(db).st_ino != before[0]


def test_a_file_deleted_and_created_again(tmp_path: Path, watcher: filewatch.Watcher, computed: list[Path]) -> None:
    path = tmp_path / "policy.yaml"
    assert filewatch.signature(path, sqlite=False) == (0, 0, 0, 0)
    path.write_text("rules: []\n")
    created = filewatch.signature(path, sqlite=False)
    assert created[0] != 0
    path.unlink()
    assert filewatch.signature(path, sqlite=False) == (0, 0, 0, 0)
    path.write_text("rules: [] # again\n")
    assert filewatch.signature(path, sqlite=False)[0] != 0


def test_a_new_file_in_a_watched_folder_changes_its_signature(tmp_path: Path, watcher: filewatch.Watcher,
                                                              computed: list[Path]) -> None:
    folder = tmp_path / "policies.d"
    folder.mkdir()
    (folder / "00.yaml").write_text("rules: []\n")
    paths = [tmp_path / "valet.yaml", folder, folder / "00.yaml"]
    (tmp_path / "valet.yaml").write_text("servers: {}\n")
    before = snapshot.signature_of(paths)
    assert snapshot.signature_of(paths) == before
    checks = len(computed)
    (folder / "10.yaml").write_text("rules: []\n")  # a new file matching the glob: the folder's mtime
    after = snapshot.signature_of(paths)
    assert after != before
    assert len(computed) == checks + 1, "only the folder was looked at again"
    os.rename(folder / "10.yaml", folder / "20.yaml")
    assert snapshot.signature_of(paths) != after


def test_writes_to_other_files_in_the_folder_are_not_events(tmp_path: Path, watcher: filewatch.Watcher,
                                                            computed: list[Path]) -> None:
    """The data dir holds audit.db too, written on every request: its writes must not be events."""
    db = tmp_path / "keys.db"
    _keys_db(db).close()
    filewatch.signature(db)
    audit = tmp_path / "audit.db"
    audit.write_bytes(b"x")
    filewatch.signature(db)  # reads the creation of audit.db (a name event, not about keys.db)
    events = watcher.events
    with open(audit, "ab") as out:
        for _ in range(20):
            out.write(b"y")
            out.flush()
    filewatch.signature(db)
    assert watcher.events == events
    assert computed == [db]


def test_without_inotify_every_check_computes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              computed: list[Path]) -> None:
    import inotify_simple

    def unavailable(*_a: object, **_k: object) -> None:
        raise OSError(24, "Too many open files")

    filewatch.stop_watcher()
    monkeypatch.setattr(inotify_simple, "INotify", unavailable)
    try:
        assert filewatch.start_watcher() is None
        db = tmp_path / "keys.db"
        conn = _keys_db(db)
        before = filewatch.signature(db)
        conn.execute("UPDATE k SET revoked = 1")
        conn.close()
        assert filewatch.signature(db) != before
        assert computed == [db, db]
    finally:
        filewatch.stop_watcher()


def test_a_lost_event_queue_forgets_everything(tmp_path: Path, watcher: filewatch.Watcher,
                                               computed: list[Path]) -> None:
    db = tmp_path / "keys.db"
    _keys_db(db).close()
    filewatch.signature(db)
    overflow = (-1).to_bytes(4, "little", signed=True) + filewatch.IN_Q_OVERFLOW.to_bytes(4, "little") + bytes(8)
    watcher._handle(overflow)
    filewatch.signature(db)
    assert computed == [db, db]


def test_a_link_re_pointed_is_seen_at_once(tmp_path: Path, watcher: filewatch.Watcher, computed: list[Path]) -> None:
    """As a Kubernetes ConfigMap is updated: valet.yaml -> ..data/valet.yaml, and ..data swapped by a rename."""
    for name in ("v1", "v2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "valet.yaml").write_text(f"# {name}\n")
    (tmp_path / "..data").symlink_to("v1")
    config = tmp_path / "valet.yaml"
    config.symlink_to("..data/valet.yaml")
    before = filewatch.signature(config, sqlite=False)
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert filewatch.signature(config, sqlite=False) != before


def test_checks_from_several_threads_at_once(tmp_path: Path, watcher: filewatch.Watcher) -> None:
    """The event loop and the reload threads check at the same time: one select.poll object shared by two
    threads raised RuntimeError ("concurrent poll() invocation"), an internal error on the request."""
    import threading

    db = tmp_path / "keys.db"
    conn = _keys_db(db)
    errors: list[BaseException] = []
    stop = threading.Event()

    def check() -> None:
        try:
            while not stop.is_set():
                filewatch.signature(db)
                filewatch.signatures([db, tmp_path])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for flag in range(200):
            conn.execute("UPDATE k SET revoked = ?", (flag % 2,))
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        conn.close()
    assert not errors, errors
    assert filewatch.signature(db) == filewatch.compute_signature(db)
