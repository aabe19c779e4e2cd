"""The subject keyring: a keyed identity and data keys per data subject (caller number).

Personal data that names a caller (the number in the recording index and in call records) is
never stored in clear: it is sealed under a key of its own subject, and stored beside the
subject's identity, so one subject's data can be found and erased without reading anyone else's.

Invariants:
- identity = HMAC-SHA256(hashing key, normalised number), hex. The number is normalised first
  (vaultpbx.hooks.phones, with the configured default country), so `02079460000` and
  `+44 20 7946 0000` are one subject, and two numbers that differ are two subjects. The hashing
  key is 32 random bytes made once per keystore and stored only wrapped by the KEK: with the
  database alone nobody can test a guessed number against the identities.
- A subject's data keys (32 random bytes, several after an erasure that had to keep held data)
  are stored only wrapped by the KEK, one row each in `subject_keys`. A sealed value is
  `01 || key id (16) || nonce (12) || AES-256-GCM(value) || tag`, with the subject and the
  value's context (which column) as associated data: a sealed value moved to another subject or
  column does not open.
- `destroy` deletes key rows (the keystore has secure_delete on, and the WAL is truncated after):
  every copy of what was sealed under them, in any database file or backup, is unreadable from
  then on. `open` of such a value answers None; it never raises for an erased subject.
- The keyring never logs, and never returns a number except from `open` to the code that shows
  it through a role's mask policy.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..hooks.phones import DEFAULT_COUNTRY, normalise_number
from .keyring import KekRegistry

SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_keyring (
    name            TEXT PRIMARY KEY,           -- 'identity': the HMAC key of subject ids
    kek_id          TEXT NOT NULL,
    wrapped_key     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS subject_keys (
    key_id          TEXT PRIMARY KEY,           -- 32 hex digits, in every value sealed under it
    subject         TEXT NOT NULL,              -- HMAC-SHA256 of the normalised number, hex
    kek_id          TEXT NOT NULL,
    wrapped_key     BLOB NOT NULL,
    created_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS subject_keys_subject ON subject_keys (subject, created_at);
"""

SEALED_VERSION = 1
_HEADER = 1 + 16 + 12
_AAD_PREFIX = b"vaultpbx-subject-v1\x00"
_CACHE_LIMIT = 4096

Transaction = Callable[[], AbstractContextManager[sqlite3.Connection]]


class SubjectKeyring:
    """Over the keystore's database connection and transactions (`Keystore.subjects`)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        keys: KekRegistry,
        transaction: Transaction,
        *,
        country: str = DEFAULT_COUNTRY,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.keys = keys  # the keystore's register: which KEK is current, and unwrapping
        self._transaction = transaction
        self.country = country
        self._random = random_bytes
        self._clock = clock
        self._keys: dict[str, bytes] = {}  # key id -> unwrapped key (rows are re-read: see open)
        # number as written -> subject id: libphonenumber's parse costs ~100 us, and a CDR
        # batch names the same callers again and again.
        self._subjects: dict[str, str] = {}
        db.executescript(SCHEMA)
        # Keys wrapped here hold their KEK as data keys do: retire refuses it, rewrap moves them.
        keys.count_wrapped_in(
            "SELECT kek_id FROM subject_keys UNION ALL SELECT kek_id FROM subject_keyring")
        # Loaded at first use, not here: a command that opens no KEK (`recordings list`) still
        # opens the keystore, and a first start registers its KEK only when something is wrapped.
        self._identity: bytes | None = None

    def _ready(self) -> None:
        """Check the KEK before a transaction that wraps under it (`ensure` has its own)."""
        if not self.keys.ready:
            self.keys.ensure()

    def _wrap(self, db: sqlite3.Connection, key: bytes) -> tuple[str, bytes]:
        return self.keys.wrap_current(db, key)

    @property
    def _identity_key(self) -> bytes:
        if self._identity is None:
            self._identity = self._load_identity_key()
        return self._identity

    def _load_identity_key(self) -> bytes:
        row = self._db.execute(
            "SELECT kek_id, wrapped_key FROM subject_keyring WHERE name = 'identity'"
        ).fetchone()
        if row is None:
            fresh = self._random(32)
            self._ready()
            with self._transaction() as db:
                # Two processes opening a new keystore at once: the first insert wins.
                db.execute(
                    "INSERT OR IGNORE INTO subject_keyring (name, kek_id, wrapped_key) "
                    "VALUES ('identity', ?, ?)", self._wrap(db, fresh))
            row = self._db.execute(
                "SELECT kek_id, wrapped_key FROM subject_keyring WHERE name = 'identity'"
            ).fetchone()
        kek_id, wrapped = row
        return self.keys.unwrap(str(kek_id), bytes(wrapped))

    # -- identity ---------------------------------------------------------------------------------

    def normalise(self, number: str) -> str:
        return normalise_number(number, self.country)

    def subject_of(self, number: str) -> str:
        """The subject id of `number` in any spelling (module invariants)."""
        subject = self._subjects.get(number)
        if subject is None:
            normal = self.normalise(number).encode("utf-8")
            subject = hmac.new(self._identity_key, normal, hashlib.sha256).hexdigest()
            if len(self._subjects) >= _CACHE_LIMIT:
                self._subjects.clear()
            self._subjects[number] = subject
        return subject

    # -- sealing ----------------------------------------------------------------------------------

    def seal(self, number: str, *, context: str) -> tuple[str, bytes]:
        """(subject id, sealed value) for storing `number` in column `context`."""
        subject = self.subject_of(number)
        return subject, self.seal_for(subject, number, context=context)

    def seal_for(self, subject: str, value: str, *, context: str) -> bytes:
        """`value` sealed under `subject`'s newest key (re-sealing kept data keeps its subject
        even if the default country changed since it was first sealed)."""
        key_id, key = self._current_key(subject)
        nonce = self._random(12)
        aad = _AAD_PREFIX + context.encode() + b"\x00" + subject.encode()
        sealed = AESGCM(key).encrypt(nonce, value.encode("utf-8"), aad)
        return bytes([SEALED_VERSION]) + bytes.fromhex(key_id) + nonce + sealed

    def open(self, subject: str | None, sealed: bytes | None, *, context: str) -> str | None:
        """The value sealed by `seal`, or None when it was erased (its key destroyed)."""
        if subject is None or sealed is None or len(sealed) <= _HEADER:
            return None
        if sealed[0] != SEALED_VERSION:
            raise ValueError(f"sealed value of unknown version {sealed[0]}")
        key = self._key(sealed[1:17].hex())
        if key is None:
            return None
        aad = _AAD_PREFIX + context.encode() + b"\x00" + subject.encode()
        try:
            plain = AESGCM(key).decrypt(sealed[17:_HEADER], sealed[_HEADER:], aad)
        except InvalidTag:
            raise ValueError("sealed value does not authenticate (altered or moved)") from None
        return plain.decode("utf-8")

    def _current_key(self, subject: str) -> tuple[str, bytes]:
        row = self._db.execute(
            "SELECT key_id, kek_id, wrapped_key FROM subject_keys WHERE subject = ? "
            "ORDER BY created_at DESC, rowid DESC LIMIT 1", (subject,)).fetchone()
        if row is None:
            return self.add_key(subject)
        key_id = str(row[0])
        key = self._keys.get(key_id)
        if key is None:
            key = self.keys.unwrap(str(row[1]), bytes(row[2]))
            self._remember(key_id, key)
        return key_id, key

    def add_key(self, subject: str) -> tuple[str, bytes]:
        """A new data key for `subject`; what is sealed for it from now on uses this one."""
        key_id = self._random(16).hex()
        key = self._random(32)
        self._ready()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO subject_keys (key_id, subject, kek_id, wrapped_key, created_at) "
                "VALUES (?, ?, ?, ?, ?)", (key_id, subject, *self._wrap(db, key), self._clock()))
        self._remember(key_id, key)
        return key_id, key

    def _key(self, key_id: str) -> bytes | None:
        # The row is read every time: another process (the erasure CLI) may have destroyed it.
        row = self._db.execute(
            "SELECT kek_id, wrapped_key FROM subject_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        if row is None:
            self._keys.pop(key_id, None)
            return None
        key = self._keys.get(key_id)
        if key is None:
            key = self.keys.unwrap(str(row[0]), bytes(row[1]))
            self._remember(key_id, key)
        return key

    def _remember(self, key_id: str, key: bytes) -> None:
        if len(self._keys) >= _CACHE_LIMIT:
            self._keys.clear()
        self._keys[key_id] = key

    # -- erasure ----------------------------------------------------------------------------------

    def key_ids(self, subject: str) -> list[str]:
        return [str(r[0]) for r in self._db.execute(
            "SELECT key_id FROM subject_keys WHERE subject = ? ORDER BY created_at", (subject,))]

    def destroy(self, subject: str, *, keep: Iterable[str] = ()) -> int:
        """Delete the subject's data keys except `keep`; returns how many were destroyed. The
        caller scrubs the WAL (Keystore._scrub) so the deleted pages leave it too."""
        kept = set(keep)
        doomed = [k for k in self.key_ids(subject) if k not in kept]
        with self._transaction() as db:
            db.executemany("DELETE FROM subject_keys WHERE key_id = ?", [(k,) for k in doomed])
        for key_id in doomed:
            self._keys.pop(key_id, None)
        return len(doomed)

    # -- key-encryption keys ----------------------------------------------------------------------

    def rewrap(self) -> int:
        """Re-wrap the hashing key and every subject key not yet under the current KEK."""
        done = 0
        self._ready()
        with self._transaction() as db:
            current = self.keys.current(db)
            for table, column in (("subject_keyring", "name"), ("subject_keys", "key_id")):
                rows = db.execute(
                    f"SELECT {column}, kek_id, wrapped_key FROM {table} WHERE kek_id != ?",
                    (current,)).fetchall()
                for name, kek_id, wrapped in rows:
                    key = self.keys.unwrap(str(kek_id), bytes(wrapped))
                    db.execute(f"UPDATE {table} SET kek_id = ?, wrapped_key = ? "
                               f"WHERE {column} = ?", (*self._wrap(db, key), name))
                done += len(rows)
        return done
