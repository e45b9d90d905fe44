"""RFC 9162 conformance: the transparency-dev/merkle probe vectors in ../shared/conformance."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from audit import merkle

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "merkle-vectors"

# The RFC 6962 reference test leaves (transparency-dev/certificate-transparency); the vector
# files carry leaf hashes only, so test_build_leaves_match_vector_leaf_hashes checks these.
RFC6962_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
LEAF_HASHES = [merkle.leaf_hash(leaf) for leaf in RFC6962_LEAVES]

# Roots of the first n reference leaves, as published with the same reference test data.
REFERENCE_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _vector_files(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _params(kind: str, *, want_err: bool | None = None, happy_only: bool = False) -> list[Any]:
    params = []
    for path in _vector_files(kind):
        vector = _load(path)
        if want_err is not None and vector["wantErr"] is not want_err:
            continue
        if happy_only and path.name != "happy-path.json":
            continue
        params.append(pytest.param(vector, id=str(path.relative_to(VECTORS))))
    return params


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(vector: dict[str, Any]) -> list[bytes]:
    # The Go generator serialises an empty proof as either [] or null.
    return [_b64(p) for p in vector["proof"] or []]


def _verify_inclusion(vector: dict[str, Any]) -> None:
    merkle.verify_inclusion(
        vector["leafIdx"],
        vector["treeSize"],
        _b64(vector["leafHash"]),
        _proof(vector),
        _b64(vector["root"]),
    )


def _verify_consistency(vector: dict[str, Any]) -> None:
    merkle.verify_consistency(
        vector["size1"],
        vector["size2"],
        _b64(vector["root1"]),
        _b64(vector["root2"]),
        _proof(vector),
    )


def test_load_vectors_finds_every_family() -> None:
    assert VECTORS.is_dir(), f"conformance vectors not found at {VECTORS}"
    inclusion = {p.relative_to(VECTORS / "inclusion").parts[0] for p in _vector_files("inclusion")}
    consistency = {
        p.relative_to(VECTORS / "consistency").parts[0] for p in _vector_files("consistency")
    }
    assert {"0", "1", "2", "3", "4", "additional", "single-entry"} <= inclusion
    assert {"0", "1", "2", "3", "4", "additional"} <= consistency


@pytest.mark.parametrize(("size", "expected"), list(enumerate(REFERENCE_ROOTS)))
def test_root_hash_matches_reference_root(size: int, expected: str) -> None:
    assert merkle.root_hash(LEAF_HASHES[:size]).hex() == expected


@pytest.mark.parametrize("vector", _params("inclusion", want_err=False))
def test_verify_inclusion_accepts_valid_vector(vector: dict[str, Any]) -> None:
    _verify_inclusion(vector)


@pytest.mark.parametrize("vector", _params("inclusion", want_err=True))
def test_verify_inclusion_rejects_invalid_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(merkle.ProofError):
        _verify_inclusion(vector)


@pytest.mark.parametrize("vector", _params("consistency", want_err=False))
def test_verify_consistency_accepts_valid_vector(vector: dict[str, Any]) -> None:
    _verify_consistency(vector)


@pytest.mark.parametrize("vector", _params("consistency", want_err=True))
def test_verify_consistency_rejects_invalid_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(merkle.ProofError):
        _verify_consistency(vector)


@pytest.mark.parametrize("vector", _params("inclusion", happy_only=True))
def test_build_leaves_match_vector_leaf_hashes(vector: dict[str, Any]) -> None:
    assert LEAF_HASHES[vector["leafIdx"]] == _b64(vector["leafHash"])


@pytest.mark.parametrize("vector", _params("inclusion", happy_only=True))
def test_root_hash_reproduces_vector_root(vector: dict[str, Any]) -> None:
    assert merkle.root_hash(LEAF_HASHES[: vector["treeSize"]]) == _b64(vector["root"])


@pytest.mark.parametrize("vector", _params("inclusion", happy_only=True))
def test_inclusion_proof_reproduces_vector_proof(vector: dict[str, Any]) -> None:
    index, size = vector["leafIdx"], vector["treeSize"]
    assert merkle.inclusion_proof(LEAF_HASHES, index, size) == _proof(vector)
    assert merkle.MerkleTree(LEAF_HASHES).inclusion_proof(index, size) == _proof(vector)


@pytest.mark.parametrize("vector", _params("consistency", happy_only=True))
def test_consistency_proof_reproduces_vector_proof(vector: dict[str, Any]) -> None:
    first, second = vector["size1"], vector["size2"]
    assert merkle.root_hash(LEAF_HASHES[:first]) == _b64(vector["root1"])
    assert merkle.root_hash(LEAF_HASHES[:second]) == _b64(vector["root2"])
    assert merkle.consistency_proof(LEAF_HASHES, first, second) == _proof(vector)
    assert merkle.MerkleTree(LEAF_HASHES).consistency_proof(first, second) == _proof(vector)
