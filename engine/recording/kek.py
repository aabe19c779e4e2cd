"""Key-encryption keys: the plug-in interface and two providers (local key file, PKCS#11 token).

Invariants:
- A provider wraps data keys under its *current* KEK and unwraps under any KEK it still holds,
  named by `key_id`. Rotation adds a new current KEK; old ones stay until retired, which is what
  makes `Keystore.rewrap` possible without touching audio files.
- Wrapping is RFC 3394 AES key wrap (`cryptography`'s keywrap locally, CKM_AES_KEY_WRAP through
  C_WrapKey on a token). An altered wrapped key fails to unwrap; it never yields a wrong key.
- The local key file is created 0600 with O_EXCL and refused if group or others may read it.
  Rewrites go through a 0600 sibling and an atomic rename, then a directory fsync.
- On a token the KEKs are sensitive and non-extractable; only data keys cross the boundary.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from .errors import RecordingKeyError, UnknownKekError


@runtime_checkable
class KekProvider(Protocol):
    @property
    def key_id(self) -> str:
        """The id of the KEK that `wrap` uses now."""
        ...

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes: ...


class KekFileError(RecordingKeyError):
    pass


_FILE_HEADER = "# vaultpbx key-encryption keys v1: <key id> <hex key>; the last line is current\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, text: str) -> None:
    """Create `path` 0600 with `text`, replacing it atomically if it exists."""
    tmp = path.with_name(path.name + f".{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class LocalFileKek:
    """KEKs kept in a local file (var/kek.key). Suitable for development and single hosts whose
    disk is not where the recordings are; use `Pkcs11Kek` where an HSM is available."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise KekFileError(f"{self.path}: no key file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._keys = {self._new_id(1): secrets.token_bytes(32)}
            self._save()
        self._load()

    @staticmethod
    def _new_id(serial: int) -> str:
        return f"local-{serial:04d}-{secrets.token_hex(4)}"

    def _load(self) -> None:
        mode = os.stat(self.path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KekFileError(f"{self.path}: mode {stat.filemode(mode)}; must be readable by "
                               "its owner only (chmod 600)")
        keys: dict[str, bytes] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or len(parts[1]) != 64:
                raise KekFileError(f"{self.path}:{number}: expected '<key id> <64 hex digits>'")
            keys[parts[0]] = bytes.fromhex(parts[1])
        if not keys:
            raise KekFileError(f"{self.path}: no key")
        self._keys = keys

    def _save(self) -> None:
        lines = "".join(f"{kid} {key.hex()}\n" for kid, key in self._keys.items())
        _write_private(self.path, _FILE_HEADER + lines)

    @property
    def key_id(self) -> str:
        return next(reversed(self._keys))

    def key_ids(self) -> list[str]:
        return list(self._keys)

    def wrap(self, data_key: bytes) -> bytes:
        return aes_key_wrap(self._keys[self.key_id], data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        kek = self._keys.get(key_id)
        if kek is None:
            raise UnknownKekError(key_id)
        try:
            return aes_key_unwrap(kek, wrapped)
        except InvalidUnwrap:
            raise RecordingKeyError(f"wrapped data key does not unwrap under {key_id}") from None

    def rotate(self) -> str:
        serial = len(self._keys) + 1
        while True:
            new_id = self._new_id(serial)
            if new_id not in self._keys:
                break
        self._keys[new_id] = secrets.token_bytes(32)
        self._save()
        return new_id

    def retire(self, key_id: str) -> None:
        """Destroy an old KEK (after `rewrap`): keystore backups wrapped under it die with it."""
        if key_id == self.key_id:
            raise KekFileError("cannot retire the current key-encryption key")
        if key_id not in self._keys:
            raise UnknownKekError(key_id)
        del self._keys[key_id]
        self._save()


class Pkcs11Kek:
    """KEKs held on a PKCS#11 token (HSM, or SoftHSM2 in development and tests).

    KEKs are AES-256 token objects labelled `<label_prefix>-NNNN`; the highest number is current.
    A data key is wrapped by importing it as a short-lived session object and calling C_WrapKey
    with CKM_AES_KEY_WRAP, and unwrapped with C_UnwrapKey into an extractable session object whose
    value is read and which is then destroyed.
    """

    _LABEL = re.compile(r"^(?P<prefix>.+)-(?P<serial>\d{4,})$")

    def __init__(
        self,
        *,
        module_path: str,
        token_label: str,
        user_pin: str,
        label_prefix: str = "vaultpbx-kek",
        create: bool = True,
    ) -> None:
        import pkcs11  # imported here so a deployment without a token never loads the module

        self._pkcs11: Any = pkcs11
        self.label_prefix = label_prefix
        lib = pkcs11.lib(module_path)
        token = lib.get_token(token_label=token_label)
        self._session: Any = token.open(user_pin=user_pin, rw=True)
        self._serials = self._find_serials()
        if not self._serials:
            if not create:
                raise UnknownKekError(f"{label_prefix}-*")
            self.rotate()

    def _find_serials(self) -> list[int]:
        p = self._pkcs11
        serials = []
        for obj in self._session.get_objects({p.Attribute.CLASS: p.ObjectClass.SECRET_KEY}):
            match = self._LABEL.match(obj.label or "")
            if match and match["prefix"] == self.label_prefix:
                serials.append(int(match["serial"]))
        return sorted(serials)

    def _label(self, serial: int) -> str:
        return f"{self.label_prefix}-{serial:04d}"

    def _key(self, key_id: str) -> Any:
        p = self._pkcs11
        try:
            return self._session.get_key(label=key_id, object_class=p.ObjectClass.SECRET_KEY)
        except (p.NoSuchKey, p.MultipleObjectsReturned):
            raise UnknownKekError(key_id) from None

    @property
    def key_id(self) -> str:
        return self._label(self._serials[-1])

    def key_ids(self) -> list[str]:
        return [self._label(s) for s in self._serials]

    def wrap(self, data_key: bytes) -> bytes:
        p = self._pkcs11
        kek = self._key(self.key_id)
        session_key = self._session.create_object({
            p.Attribute.CLASS: p.ObjectClass.SECRET_KEY,
            p.Attribute.KEY_TYPE: p.KeyType.AES,
            p.Attribute.VALUE: data_key,
            p.Attribute.TOKEN: False,
            p.Attribute.SENSITIVE: False,
            p.Attribute.EXTRACTABLE: True,
        })
        try:
            return bytes(kek.wrap_key(session_key, mechanism=p.Mechanism.AES_KEY_WRAP))
        finally:
            session_key.destroy()

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        p = self._pkcs11
        kek = self._key(key_id)
        try:
            session_key = kek.unwrap_key(
                p.ObjectClass.SECRET_KEY,
                p.KeyType.AES,
                wrapped,
                mechanism=p.Mechanism.AES_KEY_WRAP,
                store=False,
                template={p.Attribute.SENSITIVE: False, p.Attribute.EXTRACTABLE: True},
            )
        except p.PKCS11Error as exc:
            raise RecordingKeyError(
                f"wrapped data key does not unwrap under {key_id} ({type(exc).__name__})"
            ) from None
        try:
            return bytes(session_key[p.Attribute.VALUE])
        finally:
            session_key.destroy()

    def rotate(self) -> str:
        p = self._pkcs11
        serial = (self._serials[-1] + 1) if self._serials else 1
        label = self._label(serial)
        self._session.generate_key(
            p.KeyType.AES,
            256,
            label=label,
            store=True,
            capabilities=p.MechanismFlag.WRAP | p.MechanismFlag.UNWRAP,
            template={p.Attribute.SENSITIVE: True, p.Attribute.EXTRACTABLE: False},
        )
        self._serials.append(serial)
        return label

    def retire(self, key_id: str) -> None:
        if key_id == self.key_id:
            raise RecordingKeyError("cannot retire the current key-encryption key")
        self._key(key_id).destroy()
        self._serials = self._find_serials()

    def close(self) -> None:
        self._session.close()
