"""What someone with write access to the data directory can do to the audit log (issue 17,
item 8), done on disk as they would do it: edit or delete records, recompute the sequence
numbers, the hash chain and the Merkle tree, and replace the local checkpoints with ones signed
by the key found under the data directory (or a key of their own). Nothing here uses the
writer: it is the documented file format, redone by hand."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from vaultpbx.security.merkle import CompactRange, leaf_hash

FIELDS = ("seq", "time", "actor", "action", "target", "details", "prev_hash")


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def records(audit_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (audit_dir / "audit.jsonl").read_bytes().splitlines()]


def sign_checkpoint(key: Ed25519PrivateKey, tree: CompactRange, head: str,
                    now: float) -> bytes:
    pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw).hex()
    body = {"type": "checkpoint", "tree_size": tree.size, "root_hash": tree.root().hex(),
            "head_hash": head, "time": now, "public_key": pub}
    body["signature"] = key.sign(b"vaultpbx-audit-v1\n" + _canonical(body)).hex()
    return _canonical(body)


def rewrite_history(
    audit_dir: Path,
    edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    *,
    now: float,
    own_key: Ed25519PrivateKey | None = None,
) -> None:
    """Rewrite audit.jsonl through `edit`, recompute everything, and leave one local checkpoint
    over the new history signed by the key file in `audit_dir` (or `own_key`, also written over
    the key files there)."""
    rows = edit(records(audit_dir))
    prev, tree, out = "0" * 64, CompactRange(), []
    for seq, row in enumerate(rows):
        body = {name: row[name] for name in FIELDS}
        body["seq"], body["prev_hash"] = seq, prev
        body["hash"] = hashlib.sha256(_canonical(body)).hexdigest()
        line = _canonical(body)
        out.append(line + b"\n")
        tree.append(leaf_hash(line))
        prev = body["hash"]
    (audit_dir / "audit.jsonl").write_bytes(b"".join(out))
    if own_key is None:
        loaded = serialization.load_pem_private_key(
            (audit_dir / "audit-ed25519.key").read_bytes(), password=None)
        assert isinstance(loaded, Ed25519PrivateKey)
        key = loaded
    else:
        key = own_key
        (audit_dir / "audit-ed25519.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (audit_dir / "audit-ed25519.pub").write_text(key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex() + "\n")
    (audit_dir / "checkpoints.jsonl").write_bytes(sign_checkpoint(key, tree, prev, now) + b"\n")


def change_actor(index: int, actor: str) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def edit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[index]["actor"] = actor
        return rows
    return edit


def delete_record(index: int) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def edit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        del rows[index]
        return rows
    return edit


def keep_first(count: int) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def edit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return rows[:count]
    return edit
