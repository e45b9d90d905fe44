"""RFC 9162 (RFC 6962) Merkle tree hashing, proofs and verification over SHA-256.

Generation functions raise plain ``ValueError`` for impossible arguments (caller bugs);
verification functions raise :class:`ProofError` for anything that does not verify, so a
caller can treat ``ProofError`` as "the evidence is bad" and everything else as a bug.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleTree",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

# Computes MTH(D[lo:hi]) for the leaves of whatever tree the caller is proving over.
_SubtreeHasher = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A Merkle proof or its parameters failed verification."""


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split_point(width: int) -> int:
    """Return the largest power of two strictly smaller than ``width`` (width >= 2)."""
    return 1 << ((width - 1).bit_length() - 1)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _fold_right(stack: list[bytes]) -> bytes:
    """Combine a frontier of perfect subtrees (largest first) into the tree hash."""
    if not stack:
        return EMPTY_ROOT
    acc = stack[-1]
    for left in reversed(stack[:-1]):
        acc = node_hash(left, acc)
    return acc


def _push(stack: list[bytes], count: int, leaf: bytes) -> None:
    """Append one leaf to a frontier that already covers ``count`` leaves."""
    # Each trailing 1-bit of count is a perfect subtree that now has a right sibling.
    node = leaf
    while count & 1:
        node = node_hash(stack.pop(), node)
        count >>= 1
    stack.append(node)


def _range_hash(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """Return MTH(D[lo:hi]) in O(hi - lo) time and O(log n) memory."""
    stack: list[bytes] = []
    for count, i in enumerate(range(lo, hi)):
        _push(stack, count, leaf_hashes[i])
    return _fold_right(stack)


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash of the given leaf hashes (EMPTY_ROOT for none)."""
    return _range_hash(leaf_hashes, 0, len(leaf_hashes))


def _path(subtree: _SubtreeHasher, index: int, size: int) -> list[bytes]:
    """RFC 9162 PATH(index, D[0:size]) as an iterative walk from the root down."""
    siblings: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split_point(hi - lo)
        if index < lo + k:
            siblings.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            siblings.append(subtree(lo, lo + k))
            lo += k
    # The RFC lists siblings leaf-first; the walk produced them root-first.
    siblings.reverse()
    return siblings


def _subproof(subtree: _SubtreeHasher, first: int, second: int) -> list[bytes]:
    """RFC 9162 SUBPROOF(first, D[0:second], true) as an iterative walk from the root."""
    nodes: list[bytes] = []
    lo, hi = 0, second
    whole_old_subtree = True  # the RFC's boolean flag b
    while first != hi:
        k = _split_point(hi - lo)
        if first - lo <= k:
            nodes.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            nodes.append(subtree(lo, lo + k))
            lo += k
            whole_old_subtree = False
    if not whole_old_subtree:
        nodes.append(subtree(lo, hi))
    nodes.reverse()
    return nodes


def _check_inclusion_args(index: int, tree_size: int, available: int) -> None:
    if not 0 <= tree_size <= available:
        raise ValueError(f"tree_size {tree_size} outside 0..{available}")
    if not 0 <= index < tree_size:
        raise ValueError(f"leaf index {index} outside 0..{tree_size - 1}")


def _check_consistency_args(first: int, second: int, available: int) -> None:
    if not 0 <= first <= second <= available:
        raise ValueError(f"need 0 <= first <= second <= {available}, got {first}, {second}")
    if first == 0 and second != 0:
        raise ValueError("a consistency proof from the empty tree is meaningless")


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, tree_size: int) -> list[bytes]:
    """Return the RFC 9162 inclusion proof for leaf ``index`` in the first ``tree_size`` leaves."""
    _check_inclusion_args(index, tree_size, len(leaf_hashes))
    # Sibling subtrees on one path are disjoint, so total hashing work is O(tree_size).
    return _path(lambda lo, hi: _range_hash(leaf_hashes, lo, hi), index, tree_size)


def consistency_proof(leaf_hashes: Sequence[bytes], first: int, second: int) -> list[bytes]:
    """Return the RFC 9162 consistency proof between tree sizes ``first`` and ``second``."""
    _check_consistency_args(first, second, len(leaf_hashes))
    if first == second:
        return []
    return _subproof(lambda lo, hi: _range_hash(leaf_hashes, lo, hi), first, second)


class MerkleTree:
    """All perfect-subtree hashes of a leaf list, for many O(log n) proofs over one tree."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        """Precompute every aligned power-of-two subtree hash (about 2n hashes of memory)."""
        level = list(leaf_hashes)
        self._levels: list[list[bytes]] = [level]
        while len(level) > 1:
            level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self._levels.append(level)

    @property
    def size(self) -> int:
        """Number of leaves in the tree."""
        return len(self._levels[0])

    def _subtree(self, lo: int, hi: int) -> bytes:
        """Return MTH(D[lo:hi]) for a node range of an RFC 9162 tree in O(log n)."""
        lefts: list[bytes] = []
        while True:
            width = hi - lo
            if _is_power_of_two(width) and lo % width == 0:
                acc = self._levels[width.bit_length() - 1][lo // width]
                break
            # Node ranges split into an aligned perfect left part and a smaller right part.
            k = _split_point(width)
            lefts.append(self._levels[k.bit_length() - 1][lo // k])
            lo += k
        for left in reversed(lefts):
            acc = node_hash(left, acc)
        return acc

    def root(self, tree_size: int | None = None) -> bytes:
        """Return the root hash of the first ``tree_size`` leaves (default: all)."""
        size = self.size if tree_size is None else tree_size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree_size {size} outside 0..{self.size}")
        return EMPTY_ROOT if size == 0 else self._subtree(0, size)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """Return the inclusion proof for leaf ``index`` (see module-level inclusion_proof)."""
        size = self.size if tree_size is None else tree_size
        _check_inclusion_args(index, size, self.size)
        return _path(self._subtree, index, size)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """Return the consistency proof between sizes ``first`` and ``second``."""
        size = self.size if second is None else second
        _check_consistency_args(first, size, self.size)
        return [] if first == size else _subproof(self._subtree, first, size)


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} is {len(value)} bytes, expected {HASH_SIZE}")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, element in enumerate(proof):
        _check_hash(f"proof element {i}", element)


def _shift_while_right_child(fn: int, sn: int) -> tuple[int, int]:
    """Right-shift fn and sn together until fn's low bit is set or fn is zero."""
    while fn != 0 and not fn & 1:
        fn >>= 1
        sn >>= 1
    return fn, sn


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash ``leaf`` is at ``leaf_index`` in the tree with ``root``."""
    if tree_size < 0 or leaf_index < 0:
        raise ProofError(f"negative leaf index {leaf_index} or tree size {tree_size}")
    if leaf_index >= tree_size:
        raise ProofError(f"leaf index {leaf_index} is beyond tree size {tree_size}")
    _check_hash("leaf hash", leaf)
    _check_proof_hashes(proof)
    # RFC 9162 section 2.1.3.2, with the sn == 0 early exit turned into a length error.
    fn, sn = leaf_index, tree_size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof too long: {len(proof)} elements")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                fn, sn = _shift_while_right_child(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof too short: {len(proof)} elements")
    if r != root:
        raise ProofError(
            f"inclusion proof yields root {r.hex()}, expected {root.hex() or '<empty>'}"
        )


def _verify_trivial_consistency(
    size: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """Equal sizes: nothing to prove except that the two roots are the same."""
    if proof:
        raise ProofError(f"tree sizes are equal ({size}) but the proof is not empty")
    if root1 != root2:
        raise ProofError(f"tree sizes are equal ({size}) but the roots differ")
    if size == 0 and root1 != EMPTY_ROOT:
        raise ProofError("tree size is 0 but the root is not the empty-tree hash")


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (size2, root2) is an append-only extension of (size1, root1)."""
    if size1 < 0 or size2 < 0:
        raise ProofError(f"negative tree size {size1} or {size2}")
    if size1 > size2:
        raise ProofError(f"size1 {size1} is greater than size2 {size2}")
    if size1 == size2:
        _verify_trivial_consistency(size1, root1, root2, proof)
        return
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    if not proof:
        raise ProofError(f"empty consistency proof for sizes {size1} < {size2}")
    _check_proof_hashes(proof)
    # RFC 9162 section 2.1.4.2.
    path = list(proof)
    if _is_power_of_two(size1):
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof too long: {len(proof)} elements")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                fn, sn = _shift_while_right_child(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof too short: {len(proof)} elements")
    if fr != root1:
        raise ProofError(f"consistency proof yields first root {fr.hex()}, not root1")
    if sr != root2:
        raise ProofError(f"consistency proof yields second root {sr.hex()}, not root2")


class CompactRange:
    """Merkle frontier: the O(log n) perfect-subtree hashes needed to extend a log's root."""

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        """Start an empty range (size 0, root EMPTY_ROOT)."""
        self._size = 0
        self._stack: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash (not leaf data) to the right edge of the tree."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
        _push(self._stack, self._size, leaf_hash)
        self._size += 1

    def root(self) -> bytes:
        """Return the Merkle tree hash of all leaves appended so far."""
        return _fold_right(self._stack)

    def to_list(self) -> list[str]:
        """Return the frontier hashes, largest subtree first, as lowercase hex."""
        return [h.hex() for h in self._stack]

    @classmethod
    def from_list(cls, size: int, hashes: Sequence[str]) -> CompactRange:
        """Rebuild a range of ``size`` leaves from the output of :meth:`to_list`."""
        if size < 0:
            raise ValueError(f"negative size {size}")
        # One frontier hash per set bit of size: the perfect subtrees it decomposes into.
        expected = size.bit_count()
        if len(hashes) != expected:
            raise ValueError(f"size {size} needs {expected} frontier hashes, got {len(hashes)}")
        stack = [bytes.fromhex(h) for h in hashes]
        if any(len(h) != HASH_SIZE for h in stack):
            raise ValueError(f"frontier hashes must be {HASH_SIZE} bytes")
        compact = cls()
        compact._size = size
        compact._stack = stack
        return compact
