"""KEKs on a PKCS#11 token (SoftHSM2 in a temporary directory): seal, export, rotate, rewrap."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from vaultpbx.recording.errors import RecordingKeyError, UnknownKekError
from vaultpbx.recording.export import export_wav, verify_all
from vaultpbx.recording.kek import KekProvider, Pkcs11Kek
from vaultpbx.recording.keystore import Keystore

from .recording_helpers import write_recording

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "4321"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(MODULE) and shutil.which("softhsm2-util")), reason="SoftHSM2 not installed"
)


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "vaultpbx-test",
         "--pin", PIN, "--so-pin", "876543"],
        check=True, capture_output=True,
    )
    yield "vaultpbx-test"
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


def test_seal_export_rotate_rewrap_retire_on_a_token(token: str, tmp_path: Path) -> None:
    kek = Pkcs11Kek(module_path=MODULE, token_label=token, user_pin=PIN, label_prefix="t1-kek")
    assert isinstance(kek, KekProvider)
    store = Keystore(tmp_path / "keystore.db", kek)
    try:
        old_rid, old_path, _, _ = write_recording(store, tmp_path / "rec", seed=1)
        first = store.current_kek_id()
        assert first == "t1-kek-0001"
        assert store.get(old_rid).kek_id == first
        assert export_wav(store, old_rid, tmp_path / "a.wav", actor="admin").complete

        _, second = store.rotate_kek()
        assert second == "t1-kek-0002" == store.current_kek_id()
        new_rid, _, _, _ = write_recording(store, tmp_path / "rec", seed=2)
        assert store.get(new_rid).kek_id == second
        before = old_path.read_bytes()

        assert store.rewrap().rewrapped == 1
        assert store.kek_ids_in_use() == {second}
        assert old_path.read_bytes() == before  # audio untouched
        store.retire_kek(first)
        with pytest.raises(UnknownKekError):
            kek.unwrap(first, b"\x00" * 40)
        assert export_wav(store, old_rid, tmp_path / "b.wav", actor="admin").complete
        assert verify_all(store, actor="auditor").ok
        with pytest.raises(RecordingKeyError, match="does not unwrap"):
            kek.unwrap(second, bytes(40))
    finally:
        store.close()
        kek.close()

    # a new session finds the current KEK on the token again
    again = Pkcs11Kek(module_path=MODULE, token_label=token, user_pin=PIN, label_prefix="t1-kek")
    try:
        reopened = Keystore(tmp_path / "keystore.db", again)
        reopened.check_kek()
        assert again.key_ids() == [second] and reopened.current_kek_id() == second
        assert reopened.data_key(old_rid) == reopened.data_key(old_rid)
        reopened.close()
    finally:
        again.close()


def test_kek_never_leaves_the_token(token: str) -> None:
    import pkcs11

    kek = Pkcs11Kek(module_path=MODULE, token_label=token, user_pin=PIN, label_prefix="t2-kek")
    try:
        key = kek._key(kek.new_key())
        assert key[pkcs11.Attribute.SENSITIVE] and not key[pkcs11.Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.PKCS11Error):
            key[pkcs11.Attribute.VALUE]
    finally:
        kek.close()
