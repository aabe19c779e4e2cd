"""The life of key-encryption keys (issue 17, "Keys"): the keystore says which KEK is current,
other processes follow, a KEK is never made where wrapped keys exist, and retiring is refused
while a data key or a running engine needs the KEK. Real files, real child processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from vaultpbx.recording.cli import open_store
from vaultpbx.recording.config import RecordingConfig, kek_warnings
from vaultpbx.recording.errors import KekInUseError, KekMissingError, RecordingKeyError
from vaultpbx.recording.export import export_wav, verify_all
from vaultpbx.recording.kek import KekFileError, LocalFileKek, open_kek, read_pin
from vaultpbx.recording.keystore import Keystore
from vaultpbx.runtime.cli import main
from vaultpbx.runtime.config import ConfigError, load_config

from .recording_helpers import write_recording

ROOT = Path(__file__).resolve().parents[2]


def _store(root: Path, kek_file: Path | None = None, **options: object) -> Keystore:
    return Keystore(root / "keystore.db", LocalFileKek(kek_file or root / "kek.key"),
                    **options)  # type: ignore[arg-type]


def _exports(store: Keystore, rid: str, out: Path) -> bool:
    return export_wav(store, rid, out, actor="test").complete


# -- the keystore is the authority; other processes follow ----------------------------------------

def test_a_rotation_elsewhere_applies_to_the_next_recording_and_old_keys_still_unwrap(
        tmp_path: Path) -> None:
    """Two keystores with their own providers, as the engine and the CLI are: the engine's
    next data key is wrapped under the CLI's new KEK, and after rewrap + retire the engine
    reads everything, old and new, without reopening anything."""
    engine = _store(tmp_path, sync_commits=False)
    engine.check_kek()
    old, _, _, _ = write_recording(engine, tmp_path / "rec", seed=1)
    first = engine.current_kek_id()
    with _store(tmp_path) as cli:
        previous, second = cli.rotate_kek()
    assert previous == first != second
    after_rotate, _, _, _ = write_recording(engine, tmp_path / "rec", seed=2)
    assert engine.get(after_rotate).kek_id == second  # no restart, no reload call
    with _store(tmp_path) as cli:
        _, third = cli.rotate_kek()
        assert cli.rewrap().rewrapped == 2
        cli.retire_kek(first)  # type: ignore[arg-type]
        cli.retire_kek(second)
        assert cli.kek.key_ids() == [third]
    # Re-wrapped under a KEK the engine's provider has never seen: it still exports them.
    assert _exports(engine, old, tmp_path / "old.wav")
    assert _exports(engine, after_rotate, tmp_path / "after-rotate.wav")
    after_retire, _, _, _ = write_recording(engine, tmp_path / "rec", seed=3)
    assert engine.get(after_retire).kek_id == third
    assert _exports(engine, after_retire, tmp_path / "after-retire.wav")
    assert verify_all(engine, actor="auditor").ok
    engine.close()


def test_retire_is_refused_while_a_data_key_needs_the_kek(tmp_path: Path) -> None:
    # One recording with a caller is three keys under the KEK: the recording's data key, the
    # caller's own key (its number is sealed) and the keyed hash's key (recording.subjects).
    with _store(tmp_path) as store:
        rid, _, _, _ = write_recording(store, tmp_path / "rec")
        old = store.current_kek_id()
        assert old is not None
        with pytest.raises(KekInUseError, match="current key-encryption key"):
            store.retire_kek(old)
        store.rotate_kek()
        with pytest.raises(KekInUseError, match=r"3 data key\(s\) are still wrapped under it"):
            store.retire_kek(old)
        assert old in LocalFileKek(tmp_path / "kek.key").key_ids()  # nothing destroyed
        assert _exports(store, rid, tmp_path / "a.wav")
        store.rewrap()
        store.retire_kek(old)
        assert old not in LocalFileKek(tmp_path / "kek.key").key_ids()
        assert store.keys.states()[old] == "retired"
        assert _exports(store, rid, tmp_path / "b.wav")


_ENGINE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vaultpbx.recording.kek import LocalFileKek
    from vaultpbx.recording.keystore import Keystore
    root = Path(sys.argv[1])
    store = Keystore(root / 'keystore.db', LocalFileKek(root / 'kek.key'), sync_commits=False)
    store.check_kek()
    engine_id = store.keys.register_engine(store.current_kek_id())
    print('registered', flush=True)
    for line in sys.stdin:  # each line: follow the current KEK now (a housekeeping tick)
        store.keys.provider.refresh()
        store.keys.engine_heartbeat(engine_id, store.current_kek_id())
        print('followed', flush=True)
""")


def _engine_process(root: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _ENGINE, str(root)], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline().strip() == "registered"
    return child


def test_retire_is_refused_while_a_running_engine_wraps_under_the_kek(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        store.check_kek()
        old = store.current_kek_id()
        assert old is not None
        engine = _engine_process(tmp_path)
        try:
            store.rotate_kek()
            with pytest.raises(KekInUseError, match=f"pid {engine.pid}") as refused:
                store.retire_kek(old)  # no data key needs it, but the engine still names it
            assert refused.value.engines
            assert old in LocalFileKek(tmp_path / "kek.key").key_ids()
            assert engine.stdin is not None and engine.stdout is not None
            engine.stdin.write("tick\n")
            engine.stdin.flush()
            assert engine.stdout.readline().strip() == "followed"
            store.retire_kek(old)  # the engine follows the new KEK now
            assert old not in LocalFileKek(tmp_path / "kek.key").key_ids()

            # An engine that was SIGKILLed while naming a KEK holds nothing back.
            _, newer = store.rotate_kek()
            current_before = store.keys.states()
            assert current_before[newer] == "current"
        finally:
            engine.send_signal(signal.SIGKILL)
            engine.wait(10)
        held_back = [k for k, s in current_before.items() if s == "previous"]
        assert held_back
        for kek_id in held_back:
            store.retire_kek(kek_id)
        assert store.keys.live_engines() == []
        # The next engine to register clears the dead one's row.
        mine = store.keys.register_engine(newer)
        assert [e for (e,) in store.db.execute("SELECT engine_id FROM engines")] == [mine]


# -- a KEK is never created where wrapped keys exist ----------------------------------------------

def test_a_moved_kek_file_is_refused_and_never_replaced(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        rid, _, _, _ = write_recording(store, tmp_path / "rec")
        kek_id = store.current_kek_id()
    aside = tmp_path / "elsewhere.key"
    (tmp_path / "kek.key").rename(aside)
    with _store(tmp_path) as store:
        assert [row.recording_id for row in store.rows()] == [rid]  # the index needs no key
        with pytest.raises(KekMissingError) as missing:
            store.check_kek()
        message = str(missing.value)
        assert f"{kek_id} (current, 3 data key(s) wrapped under it)" in message
        assert f"key file {tmp_path / 'kek.key'} (missing)" in message
        assert "Restore it there from your KEK backup" in message
        with pytest.raises(KekMissingError):
            store.create_recording(tmp_path / "rec")
        with pytest.raises(KekMissingError):
            store.rotate_kek()
        with pytest.raises(RecordingKeyError):
            store.data_key(rid)
    assert not (tmp_path / "kek.key").exists()
    assert len(_store(tmp_path).rows()) == 1  # no row was added by the refused attempts
    aside.rename(tmp_path / "kek.key")
    with _store(tmp_path) as store:
        store.check_kek()
        assert _exports(store, rid, tmp_path / "a.wav")


def test_listing_opens_no_kek(tmp_path: Path, capsys) -> None:
    """`recordings list` reads the index only: a KEK file that is unreadable, or on a token
    whose PIN is not at hand, does not stop it, and it can never make a KEK."""
    config = _config(tmp_path, {"file": str(tmp_path / "keys" / "kek.key")})
    data_dir = tmp_path / "data"
    with open_store(data_dir, kek=LocalFileKek(tmp_path / "keys" / "kek.key")) as store:
        rid, _, _, _ = write_recording(store, data_dir / "recordings")
    (tmp_path / "keys" / "kek.key").chmod(0o644)  # refused by anything that opens it
    assert main(["recordings", "list", "--json", "-c", str(config)]) == 0
    assert rid in capsys.readouterr().out
    assert main(["recordings", "export", rid, "-o", str(tmp_path / "a.wav"), "-c",
                 str(config)]) == 1
    assert "chmod 600" in capsys.readouterr().err
    (tmp_path / "keys" / "kek.key").rename(tmp_path / "aside.key")
    assert main(["recordings", "list", "-c", str(config)]) == 0
    assert not (tmp_path / "keys" / "kek.key").exists()


def test_a_kek_file_restored_from_an_older_backup_names_the_key_it_lacks(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        store.check_kek()
        backup = (tmp_path / "kek.key").read_bytes()
        _, newer = store.rotate_kek()
        rid, _, _, _ = write_recording(store, tmp_path / "rec")
    (tmp_path / "kek.key").write_bytes(backup)  # the mode stays 0600
    with _store(tmp_path) as store, pytest.raises(KekMissingError,
                                                  match=f"{newer} \\(current, 3 data key"):
        store.check_kek()
    with _store(tmp_path) as store, pytest.raises(KekMissingError):
        store.create_recording(tmp_path / "rec")  # never a row under an old or a new KEK
    assert [row.recording_id for row in _store(tmp_path).rows()] == [rid]


def test_first_start_makes_one_kek_and_an_older_keystore_adopts_its_file(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        assert not (tmp_path / "kek.key").exists()  # opening makes nothing
        store.check_kek()
        assert len(store.kek.key_ids()) == 1
        rid, _, _, _ = write_recording(store, tmp_path / "rec")
        # A keystore written before the register existed: rows with kek ids, no register.
        store.db.execute("DELETE FROM keks")
    with _store(tmp_path) as store:
        store.check_kek()
        assert store.current_kek_id() == store.get(rid).kek_id
        assert _exports(store, rid, tmp_path / "a.wav")


def test_rewrap_reports_a_key_it_cannot_unwrap_and_rewraps_the_rest(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        good, _, _, _ = write_recording(store, tmp_path / "rec", seed=1)
        bad, _, _, _ = write_recording(store, tmp_path / "rec", seed=2)
        wrapped = store.db.execute("SELECT wrapped_key FROM recordings WHERE recording_id = ?",
                                   (bad,)).fetchone()[0]
        store.db.execute("UPDATE recordings SET wrapped_key = ? WHERE recording_id = ?",
                         (bytes([wrapped[0] ^ 1]) + wrapped[1:], bad))
        _, new = store.rotate_kek()
        report = store.rewrap()
        assert report.rewrapped == 1 and [f[0] for f in report.failed] == [bad]
        assert store.get(good).kek_id == new
        assert store.rewrap().rewrapped == 0  # a second pass does not trip either


# -- configuration: where the KEK lives ----------------------------------------------------------

def _config(tmp_path: Path, kek: dict | None) -> Path:
    data_dir = tmp_path / "data"
    doc: dict = {"data_dir": str(data_dir), "media": {"anchor": False},
                 "admin": {"port": 0}, "recording": {"enabled": True}}
    if kek is not None:
        doc["recording"]["kek"] = kek
    path = tmp_path / "vaultpbx.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_check_config_warns_when_the_kek_sits_with_the_data(tmp_path: Path, capsys) -> None:
    assert main(["check-config", "-c", str(_config(tmp_path, None))]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "recording.kek.file" in err and "inside data_dir" in err
    outside = tmp_path / "keys" / "kek.key"
    assert main(["check-config", "-c", str(_config(tmp_path, {"file": str(outside)}))]) == 0
    assert "warning" not in capsys.readouterr().err
    # A relative path that climbs out of var/ is still judged by where it really is.
    sneaky = {"file": str(tmp_path / "data" / ".." / "data" / "k.key")}
    assert main(["check-config", "-c", str(_config(tmp_path, sneaky))]) == 0
    assert "inside data_dir" in capsys.readouterr().err


def test_the_shipped_demo_config_is_warned_about(capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["check-config", "-c", "configs/default.yaml"]) == 0
    err = capsys.readouterr().err
    assert "recording.kek.file" in err and "docs/keys.md" in err


@pytest.mark.parametrize(("kek", "path", "message"), [
    ({"provider": "pkcs11"}, "recording.kek", "needs a pkcs11: section"),
    ({"provider": "hsm"}, "recording.kek.provider", "must be one of"),
    ({"provider": "pkcs11", "pkcs11": {"module": "/x.so", "token": "t"}},
     "recording.kek.pkcs11", "exactly one of pin_file and pin_env"),
    ({"provider": "pkcs11", "pkcs11": {"module": "/x.so", "token": "t", "pin": "1234"}},
     "recording.kek.pkcs11.pin", "unknown key"),
])
def test_bad_kek_settings_name_their_yaml_path_and_line(tmp_path: Path, kek: dict, path: str,
                                                        message: str) -> None:
    config = _config(tmp_path, kek)
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert error.value.path == path and message in str(error.value)
    assert error.value.line is not None and error.value.line > 1


def test_the_cli_uses_the_configured_kek_file_and_makes_none_in_var(tmp_path: Path,
                                                                    capsys) -> None:
    outside = tmp_path / "keys" / "kek.key"
    config = _config(tmp_path, {"file": str(outside)})
    data_dir = tmp_path / "data"
    settings = RecordingConfig.from_dict(load_config(config).config.recording)
    assert kek_warnings(settings, data_dir) == []
    with open_store(data_dir, kek=open_kek(settings.kek, data_dir)) as store:
        rid, _, _, _ = write_recording(store, data_dir / "recordings")
    assert outside.exists() and not (data_dir / "kek.key").exists()
    assert main(["recordings", "export", rid, "-o", str(tmp_path / "a.wav"), "-c",
                 str(config)]) == 0
    assert main(["keys", "rotate", "--rewrap", "--retire", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "re-wrapped 1 data key(s)" in out and "retired local-0001" in out
    assert not (data_dir / "kek.key").exists()
    assert len(LocalFileKek(outside).key_ids()) == 1


def test_pin_comes_from_a_private_file_or_the_environment(tmp_path: Path, monkeypatch) -> None:
    pin = tmp_path / "pin"
    pin.write_text("9876\n")
    pin.chmod(0o640)
    with pytest.raises(KekFileError, match="chmod 600"):
        read_pin(pin_file=str(pin), pin_env=None)
    pin.chmod(0o600)
    assert read_pin(pin_file=str(pin), pin_env=None) == "9876"
    monkeypatch.delenv("VAULTPBX_TEST_PIN", raising=False)
    with pytest.raises(KekFileError, match="VAULTPBX_TEST_PIN .* is not set"):
        read_pin(pin_file=None, pin_env="VAULTPBX_TEST_PIN")
    monkeypatch.setenv("VAULTPBX_TEST_PIN", "5555")
    assert read_pin(pin_file=None, pin_env="VAULTPBX_TEST_PIN") == "5555"


_SEAL_ONE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vaultpbx.recording.cli import open_store
    from vaultpbx.recording.config import RecordingConfig
    from vaultpbx.recording.kek import open_kek
    from vaultpbx.runtime.config import load_config
    from tests.recording.recording_helpers import write_recording
    config = load_config(sys.argv[1]).config
    data_dir = Path(config.data_dir)
    kek = open_kek(RecordingConfig.from_dict(config.recording).kek, data_dir)
    with open_store(data_dir, kek=kek) as store:
        print(write_recording(store, data_dir / 'recordings')[0], store.current_kek_id())
    kek.close()
""")


def test_the_yaml_selects_a_pkcs11_token(tmp_path: Path) -> None:
    """Separate processes, as in production (SoftHSM2 reads its configuration once per
    process): one seals a recording through the provider the YAML names, the real CLI exports,
    rotates, re-wraps and retires on the token, and a wrong PIN is refused."""
    module = "/usr/lib/softhsm/libsofthsm2.so"
    assert os.path.exists(module) and shutil.which("softhsm2-util")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf), VAULTPBX_TEST_PIN="1357")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "yaml-token",
                    "--pin", "1357", "--so-pin", "24682468"], check=True, capture_output=True,
                   env=env)
    config = _config(tmp_path, {"provider": "pkcs11", "pkcs11": {
        "module": module, "token": "yaml-token", "label": "yaml-kek",
        "pin_env": "VAULTPBX_TEST_PIN"}})

    def run(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                              cwd=ROOT, env={**env, **extra})

    cli = (sys.executable, "-m", "vaultpbx.runtime.cli")
    sealed = run(sys.executable, "-c", _SEAL_ONE, str(config))
    assert sealed.returncode == 0, sealed.stderr
    rid, first = sealed.stdout.split()
    assert first == "yaml-kek-0001"
    done = run(*cli, "check-config", "-c", str(config))
    assert done.returncode == 0 and "warning" not in done.stderr
    done = run(*cli, "recordings", "export", rid, "-o", str(tmp_path / "a.wav"), "-c",
               str(config))
    assert done.returncode == 0, done.stderr
    done = run(*cli, "keys", "rotate", "--rewrap", "--retire", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert "new key-encryption key: yaml-kek-0002" in done.stdout
    assert "re-wrapped 1 data key(s)" in done.stdout and "retired yaml-kek-0001" in done.stdout
    status = yaml.safe_load(run(*cli, "keys", "status", "--json", "-c", str(config)).stdout)
    assert "PKCS#11 token 'yaml-token'" in status["where"]
    assert [(k["id"], k["state"], k["data_keys"]) for k in status["keks"]] == [
        ("yaml-kek-0001", "retired", 0), ("yaml-kek-0002", "current", 3)]
    done = run(*cli, "recordings", "verify", "-c", str(config))
    assert done.returncode == 0 and "1 checked, 0 failed" in done.stdout, done.stdout
    assert not list(tmp_path.rglob("kek.key"))
    done = run(*cli, "recordings", "export", rid, "-o", str(tmp_path / "b.wav"), "-c",
               str(config), VAULTPBX_TEST_PIN="0000")
    assert done.returncode == 1 and "login failed" in done.stderr
