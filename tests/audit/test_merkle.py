"""Property tests: generated proofs verify, tampered proofs do not, frontiers track the root."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import merkle

MAX_SIZE = 300
LEAVES = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_SIZE)]
FULL_TREE = merkle.MerkleTree(LEAVES)

# Deadlines measure wall time, which this suite must not depend on.
no_deadline = settings(deadline=None)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX_SIZE))
    return size, draw(st.integers(0, size - 1))


@st.composite
def size_pair(draw: st.DrawFn) -> tuple[int, int]:
    second = draw(st.integers(1, MAX_SIZE))
    return draw(st.integers(1, second)), second


def _flip(proof: list[bytes], element: int, bit: int) -> list[bytes]:
    tampered = list(proof)
    value = bytearray(tampered[element])
    value[bit // 8] ^= 1 << (bit % 8)
    tampered[element] = bytes(value)
    return tampered


@no_deadline
@given(tree_and_index())
def test_inclusion_proof_verifies_for_random_leaf(case: tuple[int, int]) -> None:
    size, index = case
    proof = merkle.inclusion_proof(LEAVES, index, size)
    assert proof == FULL_TREE.inclusion_proof(index, size)
    merkle.verify_inclusion(index, size, LEAVES[index], proof, merkle.root_hash(LEAVES[:size]))


@no_deadline
@given(st.integers(1, MAX_SIZE))
def test_inclusion_proof_verifies_for_every_leaf(size: int) -> None:
    root = FULL_TREE.root(size)
    for index in range(size):
        proof = FULL_TREE.inclusion_proof(index, size)
        merkle.verify_inclusion(index, size, LEAVES[index], proof, root)


@no_deadline
@given(size_pair())
def test_consistency_proof_verifies_for_random_sizes(sizes: tuple[int, int]) -> None:
    first, second = sizes
    proof = merkle.consistency_proof(LEAVES, first, second)
    assert proof == FULL_TREE.consistency_proof(first, second)
    merkle.verify_consistency(
        first, second, merkle.root_hash(LEAVES[:first]), merkle.root_hash(LEAVES[:second]), proof
    )


@no_deadline
@given(st.integers(1, MAX_SIZE))
def test_consistency_proof_verifies_for_every_earlier_size(second: int) -> None:
    root2 = FULL_TREE.root(second)
    for first in range(1, second + 1):
        proof = FULL_TREE.consistency_proof(first, second)
        merkle.verify_consistency(first, second, FULL_TREE.root(first), root2, proof)


@no_deadline
@given(tree_and_index(), st.data())
def test_verify_inclusion_rejects_flipped_bit(case: tuple[int, int], data: st.DataObject) -> None:
    size, index = case
    proof = FULL_TREE.inclusion_proof(index, size)
    if not proof:
        return  # a one-leaf tree has no proof elements to corrupt
    element = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, merkle.HASH_SIZE * 8 - 1))
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(
            index, size, LEAVES[index], _flip(proof, element, bit), FULL_TREE.root(size)
        )


@no_deadline
@given(size_pair(), st.data())
def test_verify_consistency_rejects_flipped_bit(
    sizes: tuple[int, int], data: st.DataObject
) -> None:
    first, second = sizes
    proof = FULL_TREE.consistency_proof(first, second)
    if not proof:
        return  # equal sizes: nothing to corrupt
    element = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, merkle.HASH_SIZE * 8 - 1))
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(
            first,
            second,
            FULL_TREE.root(first),
            FULL_TREE.root(second),
            _flip(proof, element, bit),
        )


@no_deadline
@given(tree_and_index(), st.integers(1, MAX_SIZE))
def test_verify_inclusion_rejects_proof_for_other_index(case: tuple[int, int], other: int) -> None:
    size, index = case
    other_index = other % size
    proof = FULL_TREE.inclusion_proof(index, size)
    if other_index == index:
        return
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(other_index, size, LEAVES[index], proof, FULL_TREE.root(size))


def test_compact_range_matches_root_hash_at_every_size() -> None:
    compact = merkle.CompactRange()
    assert compact.root() == merkle.EMPTY_ROOT == merkle.root_hash([])
    for size, leaf in enumerate(LEAVES, start=1):
        compact.append(leaf)
        assert compact.size == size
        assert compact.root() == merkle.root_hash(LEAVES[:size]) == FULL_TREE.root(size)


@no_deadline
@given(st.integers(0, MAX_SIZE))
def test_compact_range_round_trips_through_hex_list(size: int) -> None:
    compact = merkle.CompactRange()
    for leaf in LEAVES[:size]:
        compact.append(leaf)
    restored = merkle.CompactRange.from_list(size, compact.to_list())
    assert restored.size == size
    assert restored.root() == compact.root()
    if size < MAX_SIZE:
        restored.append(LEAVES[size])
        assert restored.root() == FULL_TREE.root(size + 1)


def test_compact_range_from_list_rejects_wrong_hash_count() -> None:
    with pytest.raises(ValueError, match="frontier hashes"):
        merkle.CompactRange.from_list(3, [merkle.EMPTY_ROOT.hex()])


def test_compact_range_append_rejects_short_hash() -> None:
    with pytest.raises(ValueError, match="32"):
        merkle.CompactRange().append(b"short")


def test_root_hash_handles_large_tree_without_recursion() -> None:
    size = (1 << 17) + 3
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    compact = merkle.CompactRange()
    for leaf in leaves:
        compact.append(leaf)
    assert merkle.root_hash(leaves) == compact.root() == merkle.MerkleTree(leaves).root()
    proof = merkle.inclusion_proof(leaves, size - 2, size)
    merkle.verify_inclusion(size - 2, size, leaves[size - 2], proof, compact.root())


@pytest.mark.parametrize(("index", "size"), [(0, 0), (-1, 5), (5, 5), (0, MAX_SIZE + 1)])
def test_inclusion_proof_rejects_out_of_range_arguments(index: int, size: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        merkle.inclusion_proof(LEAVES, index, size)


@pytest.mark.parametrize(("first", "second"), [(0, 3), (4, 3), (-1, 2), (1, MAX_SIZE + 1)])
def test_consistency_proof_rejects_invalid_sizes(first: int, second: int) -> None:
    with pytest.raises(ValueError, match=r"first|empty"):
        merkle.consistency_proof(LEAVES, first, second)


def test_consistency_proof_returns_empty_for_equal_sizes() -> None:
    assert merkle.consistency_proof(LEAVES, 7, 7) == []
    assert merkle.consistency_proof(LEAVES, 0, 0) == []


def test_verify_consistency_accepts_empty_trees_with_empty_root() -> None:
    merkle.verify_consistency(0, 0, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [])


def test_verify_inclusion_reports_root_mismatch() -> None:
    proof = FULL_TREE.inclusion_proof(3, 10)
    with pytest.raises(merkle.ProofError, match="root"):
        merkle.verify_inclusion(3, 10, LEAVES[3], proof, FULL_TREE.root(11))
