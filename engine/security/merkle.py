"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Invariants:
- leaf hash = SHA-256(0x00 || entry), node hash = SHA-256(0x01 || left || right) (RFC 9162 §2.1.1);
  the root of the empty tree is SHA-256("").
- Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by step and
  fails closed: every malformed input (index beyond the tree, proof too long or too short, proof
  element not 32 bytes, sizes out of order, consistency from the empty tree) is a failure.
- `CompactRange` keeps only the O(log n) roots of the perfect subtrees on the right edge, so the
  audit log can append and compute its root without holding every leaf, and can start again from
  a saved frontier after old records are pruned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof did not verify; the message says which check failed."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """k < n with k a power of two and n <= 2k (RFC 9162 §2.1.1), for n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 §2.1.1, given the leaf hashes."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _largest_power_of_two_below(n)
    return node_hash(root_from_leaf_hashes(leaves[:k]), root_from_leaf_hashes(leaves[k:]))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1."""
    n = len(leaves)
    if not 0 <= index < n:
        raise IndexError(f"leaf {index} not in a tree of size {n}")
    if n == 1:
        return []
    k = _largest_power_of_two_below(n)
    if index < k:
        return inclusion_proof(leaves[:k], index) + [root_from_leaf_hashes(leaves[k:])]
    return inclusion_proof(leaves[k:], index - k) + [root_from_leaf_hashes(leaves[:k])]


def consistency_proof(leaves: Sequence[bytes], size1: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1 for 0 < size1 <= n."""
    n = len(leaves)
    if not 0 < size1 <= n:
        raise IndexError(f"no consistency proof from size {size1} to size {n}")
    return _subproof(size1, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root_from_leaf_hashes(leaves)]
    k = _largest_power_of_two_below(n)
    if m <= k:
        return _subproof(m, leaves[:k], complete) + [root_from_leaf_hashes(leaves[k:])]
    return _subproof(m - k, leaves[k:], False) + [root_from_leaf_hashes(leaves[:k])]


def _check_path(proof: Sequence[bytes]) -> None:
    for i, element in enumerate(proof):
        if len(element) != HASH_SIZE:
            raise ProofError(f"proof element {i} is {len(element)} bytes, not {HASH_SIZE}")


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `proof` shows leaf hash `leaf` at `index` in the tree `root`."""
    if index < 0 or index >= tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of size {tree_size}")
    if len(leaf) != HASH_SIZE or len(root) != HASH_SIZE:
        raise ProofError("leaf hash and root must be 32 bytes")
    _check_path(proof)
    fn, sn, r = index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("computed root does not match")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise ProofError unless `proof` shows tree (size1, root1) is a prefix of (size2, root2)."""
    if size1 < 0 or size2 < size1:
        raise ProofError(f"size2 ({size2}) is smaller than size1 ({size1})")
    if size1 == 0:
        # Everything is consistent with the empty tree; a proof of it proves nothing.
        raise ProofError("consistency from the empty tree is not a proof")
    if size1 == size2:
        if proof:
            raise ProofError("sizes are equal but the proof is not empty")
        if root1 != root2:
            raise ProofError("sizes are equal but the roots differ")
        return
    if not proof:
        raise ProofError("empty proof")
    _check_path(proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is a node of the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than needed")
    if fr != root1:
        raise ProofError("first root does not match")
    if sr != root2:
        raise ProofError("second root does not match")


class CompactRange:
    """The right edge of a growing tree: roots of its perfect subtrees, largest first."""

    __slots__ = ("size", "_nodes")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if len(nodes) != bin(size).count("1"):
            raise ValueError(f"a compact range of size {size} has {bin(size).count('1')} nodes")
        self.size = size
        self._nodes = list(nodes)

    @property
    def nodes(self) -> list[bytes]:
        return list(self._nodes)

    def append(self, leaf: bytes) -> None:
        nodes = self._nodes
        nodes.append(leaf)
        size = self.size
        # Each trailing 1 bit of the old size is a perfect subtree the new leaf completes.
        while size & 1:
            right = nodes.pop()
            nodes[-1] = node_hash(nodes[-1], right)
            size >>= 1
        self.size += 1

    def root(self) -> bytes:
        nodes = self._nodes
        if not nodes:
            return EMPTY_ROOT
        r = nodes[-1]
        for left in reversed(nodes[:-1]):
            r = node_hash(left, r)
        return r

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._nodes)
