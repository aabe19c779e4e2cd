"""The CLI glue, driven through argparse as the main CLI will."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from vaultpbx.recording.cli import add_recording_commands, open_store

from .recording_helpers import flip_bit, frame_offsets, write_recording


def run(data_dir: Path, *argv: str, **options) -> tuple[int, str]:
    out = io.StringIO()
    parser = argparse.ArgumentParser(prog="vaultpbx")
    add_recording_commands(parser.add_subparsers(dest="command", required=True), out=out,
                           **options)
    args = parser.parse_args(argv)
    return args.handler(args, data_dir), out.getvalue()


def populate(data_dir: Path, n: int = 2) -> list[str]:
    with open_store(data_dir) as store:
        return [
            write_recording(store, data_dir / "recordings", seed=i, caller=f"+1 555 010{i}")[0]
            for i in range(n)
        ]


def test_list_export_verify(tmp_path: Path) -> None:
    a, b = populate(tmp_path)
    status, text = run(tmp_path, "recordings", "list", "--json", "--actor", "ops",
                       "--role", "supervisor")
    docs = json.loads(text)
    assert status == 0 and [d["id"] for d in docs] == [a, b]
    # Supervisors see numbers in clear (docs/admin-api.md), as the caller sent them.
    assert docs[0]["caller"] == "+1 555 0100" and docs[0]["state"] == "closed"
    status, text = run(tmp_path, "recordings", "list", "--json", "--role", "agent")
    assert [d["caller"] for d in json.loads(text)] == ["+1 55* 0100", "+1 55* 0101"]

    status, text = run(tmp_path, "recordings", "export", a, "-o", str(tmp_path / "a.wav"))
    assert status == 0 and "4.20 s, 5 chunks" in text and (tmp_path / "a.wav").exists()

    status, text = run(tmp_path, "recordings", "verify")
    assert status == 0 and "2 checked, 0 failed" in text

    path = tmp_path / "recordings" / f"{b}.vrec"
    offset, length = frame_offsets(path)[2]
    flip_bit(path, offset + length - 1)
    status, text = run(tmp_path, "recordings", "verify")
    assert status == 1
    assert f"{b}  FAILED" in text and "chunk 2: authentication failed" in text
    status, text = run(tmp_path, "recordings", "verify", a)
    assert status == 0


def test_denied_and_errors_exit_non_zero(tmp_path: Path) -> None:
    (a,) = populate(tmp_path, 1)
    deny = {"authorize": lambda actor, action, rid: False}
    status, text = run(tmp_path, "recordings", "export", a, "-o", str(tmp_path / "x.wav"), **deny)
    assert status == 1 and "may not export" in text and not (tmp_path / "x.wav").exists()
    status, text = run(tmp_path, "recordings", "verify", **deny)
    assert status == 1 and "DENIED" in text
    status, text = run(tmp_path, "recordings", "export", "00" * 16, "-o", str(tmp_path / "y.wav"))
    assert status == 1 and "unknown recording" in text


def test_keys_rotate_rewrap_retire(tmp_path: Path) -> None:
    (a,) = populate(tmp_path, 1)
    status, text = run(tmp_path, "keys", "rotate")
    assert status == 0 and "new key-encryption key: local-0002" in text
    status, text = run(tmp_path, "keys", "rotate", "--rewrap", "--retire")
    assert status == 0 and "re-wrapped 1 data key(s)" in text
    assert text.count("retired local-") == 2
    with open_store(tmp_path) as store:
        assert store.kek.key_ids() == [store.current_kek_id()]
        assert store.get(a).kek_id == store.current_kek_id()
    assert run(tmp_path, "recordings", "verify")[0] == 0
