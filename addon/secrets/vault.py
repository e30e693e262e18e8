"""The encrypted secret store: real credentials, per user or shared per server.

Each secret is one row of ``<data-dir>/vault.db``, encrypted with AES-256-GCM
under a master key, with a fresh random 96-bit nonce per write and associated
data binding the ciphertext to its place: scope, user, server, name and key
version. A ciphertext copied to another row (another user, server or name)
fails to decrypt instead of handing one user's credential to another.

Master keys are versioned. They come from ``VALET_MASTER_KEY`` (one or more
``VERSION:BASE64`` separated by commas, or a bare base64 key meaning version 1)
or from ``<data-dir>/master.key``, created on first use with mode 0600; a key
file readable by anyone but its owner is refused. The newest version encrypts;
older ones still decrypt, so a rotation can re-encrypt row by row inside one
transaction while a running proxy keeps reading. Each version stores a check
value, so a wrong key is reported when the vault opens, not mid-request.

The master key is never logged, never in an exception message, never in argv,
and removed from the process environment once read, so no child inherits it.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag

from addon import filewatch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENV_VAR = "VALET_MASTER_KEY"
KEY_FILE = "master.key"
VAULT_FILE = "vault.db"
LOCK_FILE = "vault.lock"
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MIN_SECRET_CHARS = 8
_CHECK_PLAINTEXT = b"valet vault check value"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS secrets (
    server      TEXT NOT NULL,
    user        TEXT NOT NULL,          -- '' for a shared (team) secret
    name        TEXT NOT NULL,
    key_version INTEGER NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (server, user, name)
);
CREATE TABLE IF NOT EXISTS fingerprint_key (   -- one row: the HMAC key for fingerprints, itself encrypted
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    key_version INTEGER NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS key_checks (
    key_version INTEGER PRIMARY KEY,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL
);
"""


class VaultError(Exception):
    """The vault cannot be used as configured. Messages name files and versions, never key material."""


@dataclass(frozen=True, slots=True)
class SecretRow:
    server: str
    user: str  # '' = shared
    name: str
    key_version: int
    nonce: bytes
    ciphertext: bytes
    fingerprint: str
    created_at: str
    updated_at: str

    @property
    def scope(self) -> str:
        return "user" if self.user else "shared"


def _aad(server: str, user: str, name: str, version: int) -> bytes:
    # JSON of a list: unambiguous, whatever the fields contain.
    return json.dumps(["valet-secret/1", "user" if user else "shared", user, server, name, version]).encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(name: str) -> None:
    if not SECRET_NAME.match(name):
        raise VaultError(f"secret names must match {SECRET_NAME.pattern}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_value(value: str, what: str = "secret values") -> None:
    """Refuse values that cannot be injected or scrubbed safely.

    Control characters (CR, LF, NUL, any other C0, DEL): a CR/LF in a value
    injected into a header would add headers of its own upstream. Surrounding
    whitespace: HTTP strips it from a header value, so the upstream would hold
    (and could echo) a value the scrubber does not know. Shorter than
    8 characters: the scrubber could not remove the value from responses
    without mangling unrelated text (and 5 characters or fewer would never be
    scrubbed at all). The message never contains the value.
    """
    if _CONTROL.search(value):
        raise VaultError(f"{what} must not contain control characters (CR, LF, NUL, other C0 or DEL)")
    if value != value.strip():
        # HTTP strips a header value's surrounding whitespace: the upstream would see (and echo) another value
        # than the one stored, which the scrubber would then not know (review 4, H9)
        raise VaultError(f"{what} must not start or end with whitespace (a pasted value with a trailing space?); "
                         "HTTP strips it, so the upstream would see a different value")
    if len(value) < MIN_SECRET_CHARS:
        raise VaultError(f"{what} must be at least {MIN_SECRET_CHARS} characters "
                         "(shorter ones cannot be redacted reliably)")


@contextmanager
def exclusive(data_dir: Path, shared: bool = False) -> Iterator[None]:
    """``flock`` on ``<data-dir>/vault.lock``: exclusive for rotate/reencrypt, shared for single writes.

    A rotation reads the keys, writes the key file and re-encrypts every row;
    two at once (or one and a write with keys read before it) could leave rows
    under a version the key file no longer holds. The lock is released by the
    kernel if the process dies.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ---------------------------------------------------------------- master keys


class MasterKeys:
    """The versions of the master key this process can use; the newest encrypts."""

    def __init__(self, keys: dict[int, bytes], source: str) -> None:
        if not keys:
            raise VaultError(f"{source} holds no master key")
        for version, key in keys.items():
            if len(key) != 32:
                raise VaultError(f"{source}: master key version {version} is not 32 bytes (AES-256)")
        self._keys = dict(keys)
        self.source = source

    @property
    def current(self) -> int:
        return max(self._keys)

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    def aead(self, version: int) -> AESGCM:
        try:
            return AESGCM(self._keys[version])
        except KeyError:
            raise VaultError(f"no master key version {version} in {self.source}") from None

    def derive(self, version: int, purpose: bytes) -> bytes:
        """A 32-byte key for another purpose (e.g. the audit log's MAC chain), derived with HKDF-SHA256:
        it needs no key file of its own and works with ``VALET_MASTER_KEY`` too."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        try:
            key = self._keys[version]
        except KeyError:
            raise VaultError(f"no master key version {version} in {self.source}") from None
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(key)

    def with_new_version(self) -> MasterKeys:
        return MasterKeys({**self._keys, self.current + 1: secrets.token_bytes(32)}, self.source)

    def without(self, versions: set[int]) -> MasterKeys:
        return MasterKeys({v: k for v, k in self._keys.items() if v not in versions}, self.source)

    def dump(self) -> bytes:
        """The key file's content (JSON, base64 keys)."""
        keys = {str(v): base64.b64encode(k).decode() for v, k in sorted(self._keys.items())}
        return (json.dumps({"format": "valet-master-key/1", "keys": keys}, indent=2) + "\n").encode()

    def __repr__(self) -> str:  # never show key bytes, even in a debugger or traceback
        return f"MasterKeys(versions={self.versions}, source={self.source!r})"


def _decode_key(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(f"{where}: a master key is not valid base64") from None


def parse_env_keys(value: str) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    for i, part in enumerate(p for p in value.split(",") if p.strip()):
        version_text, sep, key_text = part.strip().rpartition(":")
        if not sep:
            version_text, key_text = "1", part
        if not version_text.isdigit() or int(version_text) < 1:
            raise VaultError(f"{ENV_VAR}: entry {i + 1} must be VERSION:BASE64 with VERSION >= 1")
        if int(version_text) in keys:
            raise VaultError(f"{ENV_VAR}: version {version_text} is given twice")
        keys[int(version_text)] = _decode_key(key_text, ENV_VAR)
    return keys


def _check_key_file_mode(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VaultError(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )


def read_key_file(path: Path) -> MasterKeys:
    _check_key_file_mode(path)
    try:
        doc = json.loads(path.read_text())
        keys = {int(v): _decode_key(k, str(path)) for v, k in doc["keys"].items()}
    except VaultError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise VaultError(f"{path} is not a valet master key file") from None
    return MasterKeys(keys, str(path))


def write_key_file(path: Path, keys: MasterKeys, exclusive: bool = False) -> None:
    """Atomically replace the key file; it is never readable by anyone but its owner.

    ``exclusive``: create it only if there is none (two first starts at once
    must not each make a different version 1); the loser keeps the winner's."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(keys.dump())
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            tmp.unlink()
        else:
            os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_master_keys(data_dir: Path, create: bool = True) -> MasterKeys:
    """From VALET_MASTER_KEY (removed from the environment once read) or the key file."""
    env_value = os.environ.pop(ENV_VAR, None)
    if env_value is not None:
        keys = MasterKeys(parse_env_keys(env_value), ENV_VAR)
        _ENV_CACHE[str(data_dir)] = keys
        return keys
    if str(data_dir) in _ENV_CACHE:
        return _ENV_CACHE[str(data_dir)]
    path = data_dir / KEY_FILE
    if not path.exists():
        if not create:
            raise VaultError(f"no master key: set {ENV_VAR} or create {path} (any vault command does)")
        write_key_file(path, MasterKeys({1: secrets.token_bytes(32)}, str(path)), exclusive=True)
    return read_key_file(path)


# Keys read from the environment are kept for this process only (the variable itself is gone).
_ENV_CACHE: dict[str, MasterKeys] = {}


# ---------------------------------------------------------------- the store


class Vault:
    """``vault.db``: what the CLI writes; the proxy reads it through :class:`SecretCache`."""

    def __init__(self, data_dir: Path, keys: MasterKeys) -> None:
        self.data_dir = data_dir
        self.path = data_dir / VAULT_FILE
        self.keys = keys

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _encrypt(self, server: str, user: str, name: str, value: bytes, version: int) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(12)
        return nonce, self.keys.aead(version).encrypt(nonce, value, _aad(server, user, name, version))

    def _ensure_check(self, conn: sqlite3.Connection, version: int) -> None:
        if conn.execute("SELECT 1 FROM key_checks WHERE key_version = ?", (version,)).fetchone() is None:
            nonce = secrets.token_bytes(12)
            ct = self.keys.aead(version).encrypt(nonce, _CHECK_PLAINTEXT, _check_aad(version))
            conn.execute("INSERT INTO key_checks VALUES (?, ?, ?)", (version, nonce, ct))

    def _fingerprint(self, conn: sqlite3.Connection, value: bytes) -> str:
        """A short keyed fingerprint: tells values apart, stays the same across key rotations, and
        cannot be brute-forced from a stolen vault.db alone (its key is encrypted under the master key)."""
        row = conn.execute("SELECT key_version, nonce, ciphertext FROM fingerprint_key").fetchone()
        if row is None:
            key = secrets.token_bytes(32)
            self._store_fingerprint_key(conn, key)
        else:
            version, nonce, ct = row
            try:
                key = self.keys.aead(version).decrypt(nonce, ct, _fingerprint_aad(version))
            except InvalidTag:
                raise VaultError("the fingerprint key does not decrypt: wrong master key or tampered vault") from None
        return hmac.new(key, value, hashlib.sha256).hexdigest()[:12]

    def _store_fingerprint_key(self, conn: sqlite3.Connection, key: bytes) -> None:
        version = self.keys.current
        nonce = secrets.token_bytes(12)
        ct = self.keys.aead(version).encrypt(nonce, key, _fingerprint_aad(version))
        conn.execute("INSERT OR REPLACE INTO fingerprint_key VALUES (1, ?, ?, ?)", (version, nonce, ct))

    def verify_keys(self) -> None:
        """Fail now, with a clear message, if a version the vault uses is missing or wrong."""
        if not self.path.exists():
            return
        with self._connect() as conn:
            checks = conn.execute("SELECT key_version, nonce, ciphertext FROM key_checks").fetchall()
            used = {v for (v,) in conn.execute(
                "SELECT key_version FROM secrets UNION SELECT key_version FROM fingerprint_key")}
        by_version = {v: (n, c) for v, n, c in checks}
        for version in sorted(used | set(by_version)):
            if version not in self.keys.versions:
                if version in used:
                    raise VaultError(f"secrets are encrypted with master key version {version}, "
                                     f"which {self.keys.source} does not have")
                continue
            if version in by_version:
                nonce, ct = by_version[version]
                try:
                    self.keys.aead(version).decrypt(nonce, ct, _check_aad(version))
                except InvalidTag:
                    raise VaultError(f"master key version {version} from {self.keys.source} does not open "
                                     f"{self.path}: wrong key") from None

    def set(self, server: str, user: str | None, name: str, value: str,
            expect: Callable[[str | None], bool] | None = None) -> SecretRow | None:
        """Store a secret. With ``expect``: only if it accepts the current value (None when absent),
        read and replaced in one transaction (compare-and-save); returns None when it refused."""
        check_name(name)
        check_value(value)
        raw = value.encode("utf-8")
        owner = user or ""
        with exclusive(self.data_dir, shared=True):
            self._follow_key_file()
            version = self.keys.current
            nonce, ct = self._encrypt(server, owner, name, raw, version)
            now = _now()
            with self._connect() as conn:
                self._ensure_check(conn, version)
                found = conn.execute(
                    "SELECT * FROM secrets WHERE server = ? AND user = ? AND name = ?", (server, owner, name)
                ).fetchone()
                if expect is not None and not expect(self.decrypt(SecretRow(*found)) if found else None):
                    return None
                row = SecretRow(server, owner, name, version, nonce, ct, self._fingerprint(conn, raw),
                                found[7] if found else now, now)
                conn.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (row.server, row.user, row.name, row.key_version, row.nonce, row.ciphertext,
                              row.fingerprint, row.created_at, row.updated_at))
        return row

    put = set  # the name the issue uses

    def _follow_key_file(self) -> None:
        """Under the vault lock: pick up versions a rotation added since these keys were read.

        Keys read before a rotation (a long-running proxy, a CLI that waited for
        the lock) would otherwise write a row under a version the rotation has
        just pruned from the key file. Versions already known are kept, so rows
        this process can read stay readable."""
        if self.keys.source == ENV_VAR:
            return
        path = self.data_dir / KEY_FILE
        if not path.exists():
            return
        on_disk = read_key_file(path)
        if on_disk.versions != self.keys.versions:
            self.keys = MasterKeys({**self.keys._keys, **on_disk._keys}, self.keys.source)

    def delete(self, server: str, user: str | None, name: str) -> bool:
        with self._connect() as conn:
            cur = conn.execute("DELETE FROM secrets WHERE server = ? AND user = ? AND name = ?",
                               (server, user or "", name))
            return cur.rowcount == 1

    def rows(self, server: str | None = None, user: str | None = None) -> list[SecretRow]:
        return read_rows(self.path, server, user)

    def decrypt(self, row: SecretRow) -> str:
        try:
            plain = self.keys.aead(row.key_version).decrypt(
                row.nonce, row.ciphertext, _aad(row.server, row.user, row.name, row.key_version)
            )
        except InvalidTag:
            raise VaultError(f"secret {row.name!r} ({row.scope}, server {row.server!r}) does not decrypt: "
                             "it was tampered with or moved from another row") from None
        return plain.decode("utf-8")

    def reencrypt(self, prune: bool = False) -> tuple[int, MasterKeys]:
        """:meth:`_reencrypt` under the vault's exclusive lock."""
        with exclusive(self.data_dir):
            self._follow_key_file()
            return self._reencrypt(prune)

    def _reencrypt(self, prune: bool = False) -> tuple[int, MasterKeys]:
        """Re-encrypt every secret under the newest key version, in one transaction (caller holds the lock).

        Readers see either all old rows or all new rows. Returns the count and the
        keys still needed (without unused old versions when ``prune``).
        """
        version = self.keys.current
        with self._connect() as conn:
            self._ensure_check(conn, version)
            rows = [SecretRow(*r) for r in conn.execute("SELECT * FROM secrets")]
            fp = conn.execute("SELECT key_version, nonce, ciphertext FROM fingerprint_key").fetchone()
            if fp is not None:
                fp_version, fp_nonce, fp_ct = fp
                try:
                    fp_key = self.keys.aead(fp_version).decrypt(fp_nonce, fp_ct, _fingerprint_aad(fp_version))
                except InvalidTag:
                    raise VaultError("the fingerprint key does not decrypt: wrong master key or tampered vault") from None
                self._store_fingerprint_key(conn, fp_key)
            for row in rows:
                value = self.decrypt(row).encode("utf-8")
                nonce, ct = self._encrypt(row.server, row.user, row.name, value, version)
                conn.execute(
                    "UPDATE secrets SET key_version = ?, nonce = ?, ciphertext = ? "
                    "WHERE server = ? AND user = ? AND name = ?",
                    (version, nonce, ct, row.server, row.user, row.name),
                )
            if prune:
                conn.execute("DELETE FROM key_checks WHERE key_version != ?", (version,))
        keys = self.keys.without({v for v in self.keys.versions if v != version}) if prune else self.keys
        return len(rows), keys


def read_rows(path: Path, server: str | None = None, user: str | None = None) -> list[SecretRow]:
    """Ciphertext rows; needs no key (listing never decrypts)."""
    if not path.exists():
        return []
    query, params = "SELECT * FROM secrets WHERE 1=1", []
    if server is not None:
        query += " AND server = ?"
        params.append(server)
    if user is not None:
        query += " AND user = ?"
        params.append(user)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [SecretRow(*r) for r in conn.execute(query + " ORDER BY server, user, name", params)]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def _fingerprint_aad(version: int) -> bytes:
    return json.dumps(["valet-fingerprint-key/1", version]).encode()


def _check_aad(version: int) -> bytes:
    return json.dumps(["valet-key-check/1", version]).encode()


def rotate(data_dir: Path, prune: bool = False) -> tuple[int, int]:
    """Make a new master key version and re-encrypt every secret under it. Returns (version, count).

    Order matters for a running proxy: the key file gains the new version
    before any row uses it, and loses old versions only after no row does.
    """
    with exclusive(data_dir):  # across reading the keys, writing the key file and re-encrypting
        keys = load_master_keys(data_dir)
        if keys.source == ENV_VAR:
            raise VaultError(
                f"the master key comes from {ENV_VAR}: put a new key first, as "
                f"'{keys.current + 1}:NEWKEY,{keys.current}:OLDKEY', then run 'valet vault reencrypt'"
            )
        Vault(data_dir, keys).verify_keys()  # never rotate a vault the current keys cannot open
        path = data_dir / KEY_FILE
        new_keys = keys.with_new_version()
        write_key_file(path, new_keys)
        vault = Vault(data_dir, new_keys)
        vault.verify_keys()
        count, kept = vault._reencrypt(prune=prune)
        if prune:
            write_key_file(path, kept)
        return new_keys.current, count


def reencrypt(data_dir: Path) -> tuple[int, int]:
    """``valet vault reencrypt``: every row under the newest version, under the same lock. Returns (version, count)."""
    with exclusive(data_dir):
        keys = load_master_keys(data_dir)
        vault = Vault(data_dir, keys)
        vault.verify_keys()
        count, _ = vault._reencrypt()
        return keys.current, count


# ---------------------------------------------------------------- the proxy's view


CANARY_SERVER = "@canary"  # canaries (valet secret set --canary): no server may have this name, so never injected


class SecretCache:
    """The proxy's in-memory copy of the vault, reloaded when ``vault.db`` or the key file changes.

    Rows are loaded in a worker thread; decryption happens on first use and is
    cached. Lookups never touch the disk.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._rows: dict[tuple[str, str, str], SecretRow] = {}
        self._plain: dict[tuple[str, str, str], str] = {}
        self._vault: Vault | None = None
        self._signature: tuple[int, ...] | None = None
        self.generation = 0
        # built once: checked on every request, and a new Path per check costs more than the syscalls
        self._files = (data_dir / VAULT_FILE, data_dir / KEY_FILE)

    def signature(self) -> tuple[int, ...]:
        vault_file, key_file = self._files
        return filewatch.signature(vault_file) + filewatch.signature(key_file)

    def stale(self) -> bool:
        return self.signature() != self._signature

    def reload(self) -> None:
        """Blocking. Rows first, then keys: a key version a row uses is always in the key file by then.

        Under the vault's shared lock, so a rotation (which holds it exclusively)
        is never seen half done: rows and keys come from the same side of it."""
        with exclusive(self.data_dir, shared=True):
            signature = self.signature()
            rows = {(r.server, r.user, r.name): r for r in read_rows(self.data_dir / VAULT_FILE)}
            keys = load_master_keys(self.data_dir)
            vault = Vault(self.data_dir, keys)
            vault.verify_keys()
        self._vault, self._rows, self._plain = vault, rows, {}
        self._signature = signature
        self.generation += 1

    def lookup_exact(self, server: str, owner: str, name: str) -> str | None:
        """This owner's secret only ('' for shared): no fallback. Raises VaultError if it does not decrypt."""
        key = (server, owner, name)
        if key in self._plain:
            return self._plain[key]
        row = self._rows.get(key)
        if row is None:
            return None
        assert self._vault is not None
        value = self._plain[key] = self._vault.decrypt(row)
        return value

    @property
    def vault(self) -> Vault:
        assert self._vault is not None
        return self._vault

    def lookup(self, server: str, user: str, name: str) -> str | None:
        """The user's own secret, else the shared one, else None. Raises VaultError if it does not decrypt."""
        for owner in (user, ""):
            value = self.lookup_exact(server, owner, name)
            if value is not None:
                return value
        return None

    def canaries(self) -> list[tuple[str, str]]:
        """(name, value) of every canary: the decoys Valet refuses to see in a request (addon/secrets/canary.py)."""
        return self.values_of(CANARY_SERVER, {name for server, _, name in list(self._rows) if server == CANARY_SERVER})

    def values_of(self, server: str, names: frozenset[str] | set[str]) -> list[tuple[str, str]]:
        """Every owner's value (every user's and the shared one) of these secret names of ``server``:
        what the egress scrubber of that server must know. A row that does not decrypt is skipped: it
        can never have been injected, so it cannot come back (its own user's request fails on it)."""
        out: list[tuple[str, str]] = []
        for row_server, owner, name in list(self._rows):
            if row_server == server and name in names:
                try:
                    value = self.lookup_exact(row_server, owner, name)
                except VaultError:
                    continue
                if value is not None:
                    out.append((name, value))
        return out
