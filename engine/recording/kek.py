"""Key-encryption keys: the plug-in interface and two providers (local key file, PKCS#11 token).

Invariants:
- A provider *holds* KEKs, named by id; it does not decide which one is current. The keystore
  is the one authority on that (`keyring.KekRegistry`): it wraps under the KEK its registry says
  is current, and rotation registers a new one there after the provider made it.
- A provider never makes a KEK on its own. `new_key` is called by the keystore: at the first
  start of an empty keystore, and by rotation. A missing key file is "holds no key", never
  "make one": a new KEK beside wrapped data keys would make every recording under the old one
  unreadable, and every recording made meanwhile unreadable once the old one is restored.
- `refresh` re-reads what the provider holds (another process rotated or retired). A local
  file that has gone missing keeps the keys already in memory, so a running engine never loses
  the KEK it wraps under because someone moved the file.
- Wrapping is RFC 3394 AES key wrap (`cryptography`'s keywrap locally, CKM_AES_KEY_WRAP through
  C_WrapKey on a token). An altered wrapped key fails to unwrap; it never yields a wrong key.
- The local key file is created 0600 with O_EXCL and refused if group or others may read it.
  Rewrites go through a 0600 sibling and an atomic rename, then a directory fsync.
- On a token the KEKs are sensitive and non-extractable; only data keys cross the boundary.
  The PIN comes from a 0600 file or an environment variable, never from the YAML itself.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from .errors import RecordingKeyError, UnknownKekError

if TYPE_CHECKING:
    from .config import KekConfig


@runtime_checkable
class KekProvider(Protocol):
    @property
    def where(self) -> str:
        """Where the KEKs live, for operators ("key file /etc/vaultpbx/kek.key")."""
        ...

    def key_ids(self) -> list[str]:
        """The KEKs held now, oldest first."""
        ...

    def wrap(self, key_id: str, data_key: bytes) -> bytes: ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes: ...

    def new_key(self) -> str:
        """Make a new KEK and return its id (the keystore decides whether it is current)."""
        ...

    def destroy_key(self, key_id: str) -> None: ...

    def refresh(self) -> None:
        """Re-read what is held (another process may have made or destroyed a KEK)."""
        ...

    def close(self) -> None: ...


class KekFileError(RecordingKeyError):
    pass


_FILE_HEADER = "# vaultpbx key-encryption keys v1: <key id> <hex key>; the last line is newest\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write `path` 0600 with `text`, replacing it atomically if it exists; with `exclusive`,
    fail (FileExistsError) instead of replacing."""
    tmp = path.with_name(path.name + f".{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if exclusive:
            os.link(tmp, path)  # fails if a key file appeared meanwhile: never replace one
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def read_private_file(path: Path, what: str) -> str:
    """A secret file's text, refused when group or others may read it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise KekFileError(f"{path}: no {what} file") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KekFileError(f"{path}: mode {stat.filemode(mode)}; must be readable by "
                           "its owner only (chmod 600)")
    return path.read_text()


class LocalFileKek:
    """KEKs kept in a local file. It belongs outside the data directory (a copy of the data
    directory must not carry the key that opens it): `recording.kek.file` in the YAML."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._keys: dict[str, bytes] = {}
        self.missing = True
        self.refresh()

    @staticmethod
    def _new_id(serial: int) -> str:
        return f"local-{serial:04d}-{secrets.token_hex(4)}"

    @property
    def where(self) -> str:
        return f"key file {self.path}" + (" (missing)" if self.missing else "")

    def refresh(self) -> None:
        if not self.path.exists():
            self.missing = True  # keep what memory holds: see the module invariants
            return
        keys: dict[str, bytes] = {}
        text = read_private_file(self.path, "key")
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or len(parts[1]) != 64:
                raise KekFileError(f"{self.path}:{number}: expected '<key id> <64 hex digits>'")
            keys[parts[0]] = bytes.fromhex(parts[1])
        if not keys:
            raise KekFileError(f"{self.path}: no key")
        self._keys = keys
        self.missing = False

    def _save(self, *, exclusive: bool = False) -> None:
        lines = "".join(f"{kid} {key.hex()}\n" for kid, key in self._keys.items())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(self.path, _FILE_HEADER + lines, exclusive=exclusive)
        self.missing = False

    def key_ids(self) -> list[str]:
        return list(self._keys)

    def _kek(self, key_id: str) -> bytes:
        kek = self._keys.get(key_id)
        if kek is None:
            raise UnknownKekError(key_id)
        return kek

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        return aes_key_wrap(self._kek(key_id), data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        kek = self._kek(key_id)
        try:
            return aes_key_unwrap(kek, wrapped)
        except InvalidUnwrap:
            raise RecordingKeyError(f"wrapped data key does not unwrap under {key_id}") from None

    def new_key(self) -> str:
        if self.missing and self._keys:
            # The file went away under us: writing our copy back would silently drop keys
            # another process added. The operator restores it (docs/keys.md).
            raise KekFileError(f"{self.path}: key file missing; restore it before rotating")
        first = self.missing
        if not first:
            self.refresh()  # another process may have rotated since we read it
        serial = len(self._keys) + 1
        while True:
            new_id = self._new_id(serial)
            if new_id not in self._keys:
                break
        self._keys[new_id] = secrets.token_bytes(32)
        try:
            self._save(exclusive=first)
        except FileExistsError:
            del self._keys[new_id]
            raise KekFileError(f"{self.path}: appeared while a first key was being made; "
                               "nothing was replaced") from None
        return new_id

    def destroy_key(self, key_id: str) -> None:
        """Destroy an old KEK (after rewrap): keystore backups wrapped under it die with it."""
        self.refresh()
        if key_id not in self._keys:
            raise UnknownKekError(key_id)
        if self.missing:
            raise KekFileError(f"{self.path}: key file missing; nothing destroyed")
        del self._keys[key_id]
        self._save()

    def close(self) -> None:
        pass


class Pkcs11Kek:
    """KEKs held on a PKCS#11 token (HSM, or SoftHSM2 in development and tests).

    KEKs are AES-256 token objects labelled `<label_prefix>-NNNN`. A data key is wrapped by
    importing it as a short-lived session object and calling C_WrapKey with CKM_AES_KEY_WRAP,
    and unwrapped with C_UnwrapKey into an extractable session object whose value is read and
    which is then destroyed. Keys are looked up by label at each use, so a key another process
    made (rotation by the CLI) is found without reopening the session.
    """

    _LABEL = re.compile(r"^(?P<prefix>.+)-(?P<serial>\d{4,})$")

    def __init__(
        self,
        *,
        module_path: str,
        token_label: str,
        user_pin: str,
        label_prefix: str = "vaultpbx-kek",
    ) -> None:
        import pkcs11  # imported here so a deployment without a token never loads the module

        self._pkcs11: Any = pkcs11
        self.label_prefix = label_prefix
        self.token_label = token_label
        self.module_path = module_path
        lib = pkcs11.lib(module_path)
        try:
            token = lib.get_token(token_label=token_label)
        except (pkcs11.NoSuchToken, pkcs11.MultipleTokensReturned) as exc:
            raise RecordingKeyError(f"PKCS#11 token {token_label!r} in {module_path}: "
                                    f"{type(exc).__name__}") from None
        try:
            self._session: Any = token.open(user_pin=user_pin, rw=True)
        except pkcs11.PKCS11Error as exc:
            raise RecordingKeyError(f"PKCS#11 token {token_label!r}: login failed "
                                    f"({type(exc).__name__})") from None
        self._serials = self._find_serials()

    @property
    def where(self) -> str:
        return (f"PKCS#11 token {self.token_label!r} ({self.module_path}), keys labelled "
                f"{self.label_prefix}-NNNN")

    def _find_serials(self) -> list[int]:
        p = self._pkcs11
        serials = []
        for obj in self._session.get_objects({p.Attribute.CLASS: p.ObjectClass.SECRET_KEY}):
            match = self._LABEL.match(obj.label or "")
            if match and match["prefix"] == self.label_prefix:
                serials.append(int(match["serial"]))
        return sorted(serials)

    def refresh(self) -> None:
        self._serials = self._find_serials()

    def _label(self, serial: int) -> str:
        return f"{self.label_prefix}-{serial:04d}"

    def _key(self, key_id: str) -> Any:
        p = self._pkcs11
        try:
            return self._session.get_key(label=key_id, object_class=p.ObjectClass.SECRET_KEY)
        except (p.NoSuchKey, p.MultipleObjectsReturned):
            raise UnknownKekError(key_id) from None

    def key_ids(self) -> list[str]:
        return [self._label(s) for s in self._serials]

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        p = self._pkcs11
        kek = self._key(key_id)
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

    def new_key(self) -> str:
        p = self._pkcs11
        self.refresh()
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

    def destroy_key(self, key_id: str) -> None:
        self._key(key_id).destroy()
        self.refresh()

    def close(self) -> None:
        self._session.close()


class NoKek:
    """A provider that holds nothing and opens nothing: for commands that only read the index
    (`recordings list`), so that they neither need the KEK nor could ever make one."""

    where = "no key-encryption key (not opened for this command)"

    def key_ids(self) -> list[str]:
        return []

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        raise UnknownKekError(key_id)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        raise UnknownKekError(key_id)

    def new_key(self) -> str:
        raise RecordingKeyError("this command opened no key-encryption key")

    def destroy_key(self, key_id: str) -> None:
        raise UnknownKekError(key_id)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_pin(*, pin_file: str | None, pin_env: str | None) -> str:
    """The token PIN from a 0600 file (trailing newline dropped) or an environment variable."""
    if pin_file:
        pin = read_private_file(Path(pin_file).expanduser(), "PIN").rstrip("\r\n")
    elif pin_env:
        value = os.environ.get(pin_env)
        if value is None:
            raise KekFileError(f"environment variable {pin_env} (recording.kek.pkcs11.pin_env) "
                               "is not set")
        pin = value
    else:
        raise KekFileError("recording.kek.pkcs11 needs pin_file or pin_env")
    if not pin:
        raise KekFileError("the PKCS#11 PIN is empty")
    return pin


def open_kek(config: KekConfig, data_dir: str | os.PathLike[str]) -> KekProvider:
    """The provider `recording.kek` selects. Nothing is created here (see the invariants)."""
    from .config import data_path

    if config.provider == "pkcs11":
        token = config.pkcs11
        assert token is not None  # KekConfig.validate
        pin_file = str(data_path(token.pin_file, data_dir)) if token.pin_file else None
        return Pkcs11Kek(module_path=token.module, token_label=token.token,
                         user_pin=read_pin(pin_file=pin_file, pin_env=token.pin_env),
                         label_prefix=token.label)
    return LocalFileKek(config.file_path(data_dir))
