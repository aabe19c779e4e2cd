"""RFC 6962/9162 Merkle proofs: every conformance vector, and our own proofs round-trip."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vaultpbx.security.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parent.parent / "data" / "merkle"


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _proof(values: list[str] | None) -> list[bytes]:
    return [_b64(v) for v in values or []]


def _vectors(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json"))


def test_all_vectors_present() -> None:
    assert len(_vectors("inclusion")) == 98 and len(_vectors("consistency")) == 98


@pytest.mark.parametrize(
    "path", _vectors("inclusion"), ids=lambda p: str(p.relative_to(VECTORS))
)
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize(
    "path", _vectors("consistency"), ids=lambda p: str(p.relative_to(VECTORS))
)
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (v["size1"], v["size2"], _proof(v["proof"]), _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_rfc6962_reference_roots() -> None:
    # The eight-leaf reference tree of RFC 6962 / certificate-transparency-go.
    data = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57", b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a"
            b"\x6b\x6c\x6d\x6e\x6f"]
    leaves = [leaf_hash(d) for d in data]
    assert root_from_leaf_hashes(leaves).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )
    assert root_from_leaf_hashes([]) == EMPTY_ROOT


@given(st.integers(min_value=1, max_value=70), st.data())
def test_generated_proofs_verify(n: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    root = root_from_leaf_hashes(leaves)
    index = data.draw(st.integers(0, n - 1))
    verify_inclusion(leaves[index], index, n, inclusion_proof(leaves, index), root)
    m = data.draw(st.integers(1, n))
    root1 = root_from_leaf_hashes(leaves[:m])
    verify_consistency(m, n, consistency_proof(leaves, m), root1, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(b"other"), index, n, inclusion_proof(leaves, index), root)


def _frontier(leaves: list[bytes]) -> CompactRange:
    cr = CompactRange()
    for leaf in leaves:
        cr.append(leaf)
    return cr


def test_compact_range_matches_full_root_and_resumes() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(40)]
    cr = CompactRange()
    for i, leaf in enumerate(leaves):
        cr.append(leaf)
        assert cr.root() == root_from_leaf_hashes(leaves[: i + 1])
    resumed = CompactRange(21, _frontier(leaves[:21]).nodes)
    for leaf in leaves[21:]:
        resumed.append(leaf)
    assert resumed.root() == cr.root()
    with pytest.raises(ValueError):
        CompactRange(3, [leaves[0]])
