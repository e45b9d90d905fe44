"""Standalone verifier for exported audit logs and signed tree heads (STHs).

An external auditor runs this with only the export, the STH and the log's public key::

    python -m audit.verifier --entries audit.jsonl --sth sth.json --public-key key.pem

It must stay importable without the application: stdlib, ``cryptography``,
``audit.merkle`` and ``audit.canonical`` only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit import merkle
from audit.canonical import entry_leaf_hash, sth_signing_bytes

__all__ = [
    "SignedTreeHead",
    "VerifyResult",
    "load_public_key",
    "log_id_for",
    "main",
    "sign_sth",
    "verify_entries",
    "verify_export",
]

_HEX_HASH = re.compile(r"[0-9a-f]{64}")

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class SignedTreeHead(TypedDict):
    """JSON shape of an STH file."""

    log_id: str
    tree_size: int
    root_hash: str
    timestamp: str
    signature: str


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a verification; on failure only the first problem is reported."""

    ok: bool
    entries_checked: int
    tree_size: int
    first_bad_seq: int | None
    reason: str | None
    root_hash: str | None = None


class _Failure(Exception):
    """Internal control flow: the first verification failure found."""

    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


def log_id_for(public_key: Ed25519PublicKey) -> str:
    """Return the log id: lowercase hex SHA-256 of the raw 32-byte Ed25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _format_timestamp(timestamp: str | datetime) -> str:
    if isinstance(timestamp, str):
        return timestamp
    if timestamp.tzinfo is None:
        raise ValueError("STH timestamp datetime must be timezone-aware")
    return f"{timestamp.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}Z"


def sign_sth(
    private_key: Ed25519PrivateKey,
    *,
    tree_size: int,
    root_hash_hex: str,
    timestamp: str | datetime,
) -> SignedTreeHead:
    """Build and sign an STH; an aware datetime is rendered as UTC ``...%fZ``."""
    sth: SignedTreeHead = {
        "log_id": log_id_for(private_key.public_key()),
        "tree_size": tree_size,
        "root_hash": root_hash_hex,
        "timestamp": _format_timestamp(timestamp),
        "signature": "",
    }
    signature = private_key.sign(sth_signing_bytes(sth))
    sth["signature"] = base64.b64encode(signature).decode("ascii")
    return sth


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM; raise ValueError for anything else."""
    try:
        key = serialization.load_pem_public_key(pem)
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unsupported public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"public key is {type(key).__name__}, expected Ed25519")
    return key


def _seq_of(entry: Mapping[str, object], where: str) -> int:
    seq = entry.get("seq")
    # bool is an int subclass and would canonicalise as true/false, never as a seq.
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise _Failure(None, f"{where}: entry has no valid seq (positive integer)")
    return seq


def _checked_leaf(seq: int, entry: Mapping[str, object], stored: object) -> bytes:
    """Recompute the entry's leaf hash and compare it with the stored one, if any."""
    try:
        leaf = entry_leaf_hash(entry)
    except (TypeError, ValueError) as exc:
        raise _Failure(seq, f"entry cannot be canonically hashed: {exc}") from None
    if stored is None:
        return leaf
    stored_hex = stored.hex() if isinstance(stored, bytes | bytearray) else stored
    if not isinstance(stored_hex, str) or not _HEX_HASH.fullmatch(stored_hex):
        raise _Failure(seq, "leaf_hash is not 64 lowercase hex characters")
    if stored_hex != leaf.hex():
        raise _Failure(seq, "leaf_hash does not match the entry content (entry was altered)")
    return leaf


def _check_link(seq: int, entry: Mapping[str, object], prev_leaf_hex: str | None) -> None:
    """Check prev_leaf_hash; ``prev_leaf_hex`` is None when entry seq-1 is not at hand."""
    link = entry.get("prev_leaf_hash")
    if not isinstance(link, str):
        raise _Failure(seq, "prev_leaf_hash is not a string")
    if seq == 1:
        if link != "":
            raise _Failure(seq, "prev_leaf_hash of the first entry must be empty")
    elif prev_leaf_hex is None:
        if not _HEX_HASH.fullmatch(link):
            raise _Failure(seq, "prev_leaf_hash is not 64 lowercase hex characters")
    elif link != prev_leaf_hex:
        raise _Failure(seq, f"prev_leaf_hash does not match the leaf hash of seq {seq - 1}")


def verify_entries(entries: Iterable[Mapping[str, object]]) -> VerifyResult:
    """Check a complete in-order log (seq gaps, leaf hashes, chain links) and compute its root."""
    frontier = merkle.CompactRange()
    prev_leaf_hex = ""
    try:
        for position, entry in enumerate(entries, start=1):
            seq = _seq_of(entry, f"entry #{position}")
            if seq > position:
                raise _Failure(position, f"entry seq {position} is missing (found seq {seq})")
            if seq < position:
                raise _Failure(seq, f"seq {seq} is out of order or duplicated at #{position}")
            leaf = _checked_leaf(seq, entry, entry.get("leaf_hash"))
            _check_link(seq, entry, prev_leaf_hex)
            frontier.append(leaf)
            prev_leaf_hex = leaf.hex()
    except _Failure as failure:
        return VerifyResult(False, frontier.size, frontier.size, failure.seq, failure.reason)
    root = frontier.root().hex()
    return VerifyResult(True, frontier.size, frontier.size, None, None, root)


@dataclass(frozen=True)
class _TrustedHead:
    tree_size: int
    root: bytes


def _check_sth(sth: Mapping[str, object], key: Ed25519PublicKey) -> _TrustedHead:
    """Validate the STH's shape, log id and signature; return what it commits to."""
    try:
        signed = sth_signing_bytes(sth)
    except ValueError as exc:
        raise _Failure(None, f"STH is malformed: {exc}") from None
    expected_log_id = log_id_for(key)
    if sth["log_id"] != expected_log_id:
        raise _Failure(
            None, f"STH log_id {sth['log_id']} does not match the public key ({expected_log_id})"
        )
    signature = sth.get("signature")
    if not isinstance(signature, str):
        raise _Failure(None, "STH signature is missing")
    try:
        key.verify(base64.b64decode(signature, validate=True), signed)
    except (binascii.Error, InvalidSignature):
        raise _Failure(None, "STH signature does not verify with the public key") from None
    # sth_signing_bytes accepted the fields, so their types are known here.
    root = sth["root_hash"]
    tree_size = sth["tree_size"]
    assert isinstance(tree_size, int)
    root_bytes = bytes(root) if isinstance(root, bytes | bytearray) else bytes.fromhex(str(root))
    return _TrustedHead(tree_size, root_bytes)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Duplicate keys would let a reader and the verifier see different values.
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


@dataclass(frozen=True)
class _ExportLine:
    seq: int
    entry: Mapping[str, object]
    leaf_hash: str
    proof: list[bytes] | None


def _parse_proof(seq: int, raw: object) -> list[bytes] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(h, str) and _HEX_HASH.fullmatch(h) for h in raw
    ):
        raise _Failure(seq, "inclusion_proof must be a list of 64-character lowercase hex hashes")
    return [bytes.fromhex(h) for h in raw]


def _parse_line(line_no: int, line: str) -> _ExportLine:
    where = f"line {line_no}"
    try:
        record = json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except ValueError as exc:
        raise _Failure(None, f"{where}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("entry"), dict):
        raise _Failure(None, f'{where}: expected an object with an "entry" object')
    entry: dict[str, object] = record["entry"]
    seq = _seq_of(entry, where)
    leaf_hash = record.get("leaf_hash")
    if not isinstance(leaf_hash, str):
        raise _Failure(seq, "line has no leaf_hash string")
    return _ExportLine(seq, entry, leaf_hash, _parse_proof(seq, record.get("inclusion_proof")))


class _ExportWalk:
    """Streams export lines, deciding at the end whether they were the complete log."""

    def __init__(self, head: _TrustedHead) -> None:
        self.head = head
        self.count = 0
        self.prev_seq = 0
        self.prev_leaf_hex = ""
        # While seqs run 1, 2, 3, ... the file may still turn out to be the whole log.
        self.frontier: merkle.CompactRange | None = merkle.CompactRange()
        self.first_unproven: int | None = None

    def accept(self, line: _ExportLine) -> None:
        seq = line.seq
        if seq <= self.prev_seq:
            raise _Failure(seq, f"seq {seq} follows seq {self.prev_seq}: out of order or repeated")
        if seq > self.head.tree_size:
            raise _Failure(seq, f"seq {seq} is beyond the STH tree size {self.head.tree_size}")
        adjacent = seq == self.prev_seq + 1
        if not adjacent:
            self._leave_complete_mode(seq)
        leaf = _checked_leaf(seq, line.entry, line.leaf_hash)
        _check_link(seq, line.entry, self.prev_leaf_hex if adjacent else None)
        self._check_proof(seq, leaf, line.proof)
        if self.frontier is not None:
            self.frontier.append(leaf)
        self.count += 1
        self.prev_seq = seq
        self.prev_leaf_hex = leaf.hex()

    def _leave_complete_mode(self, seq: int) -> None:
        missing = self.prev_seq + 1
        if self.frontier is not None and self.first_unproven is not None:
            raise _Failure(
                missing,
                f"entry seq {missing} is missing (next line has seq {seq}); lines without "
                f"inclusion proofs (first at seq {self.first_unproven}) need the complete log",
            )
        self.frontier = None

    def _check_proof(self, seq: int, leaf: bytes, proof: list[bytes] | None) -> None:
        if proof is None:
            if self.frontier is None:
                raise _Failure(
                    seq, "no inclusion_proof, which a partial export needs on every line"
                )
            if self.first_unproven is None:
                self.first_unproven = seq
            return
        try:
            merkle.verify_inclusion(seq - 1, self.head.tree_size, leaf, proof, self.head.root)
        except merkle.ProofError as exc:
            raise _Failure(seq, f"inclusion proof does not verify against the STH: {exc}") from None

    def finish(self) -> None:
        tree_size = self.head.tree_size
        if self.count == 0 and tree_size > 0:
            # An emptied export must not pass: it proves nothing about the signed tree.
            raise _Failure(1, f"export has no entries but the tree head covers {tree_size}")
        if self.frontier is None:
            return  # partial export: every line was proven against the STH root
        if self.count == tree_size:
            root = self.frontier.root()
            if root != self.head.root:
                raise _Failure(
                    None,
                    f"recomputed root {root.hex()} does not match STH root {self.head.root.hex()}",
                )
            return
        if self.first_unproven is not None:
            raise _Failure(
                self.count + 1,
                f"export ends at seq {self.count} but the STH covers {tree_size} entries; lines "
                f"without inclusion proofs (first at seq {self.first_unproven}) need the whole log",
            )


def verify_export(
    entries_lines: Iterable[str], sth: Mapping[str, object], public_key_pem: bytes
) -> VerifyResult:
    """Verify an exported JSONL log (complete or partial) against a signed tree head.

    Raises ValueError if ``public_key_pem`` is not an Ed25519 public key; every problem
    with the STH or the entries is reported in the result instead.
    """
    key = load_public_key(public_key_pem)
    claimed_size = sth.get("tree_size")
    size_hint = claimed_size if isinstance(claimed_size, int) else 0
    try:
        head = _check_sth(sth, key)
    except _Failure as failure:
        return VerifyResult(False, 0, size_hint, failure.seq, failure.reason)
    walk = _ExportWalk(head)
    try:
        for line_no, line in enumerate(entries_lines, start=1):
            if line.strip():
                walk.accept(_parse_line(line_no, line))
        walk.finish()
    except _Failure as failure:
        return VerifyResult(False, walk.count, head.tree_size, failure.seq, failure.reason)
    return VerifyResult(True, walk.count, head.tree_size, None, None, head.root.hex())


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m audit.verifier",
        description="Verify an exported audit log against a signed tree head.",
    )
    parser.add_argument("--entries", required=True, help="JSON Lines export of audit entries")
    parser.add_argument("--sth", required=True, help="signed tree head JSON file")
    parser.add_argument("--public-key", required=True, help="log's Ed25519 public key (PEM)")
    return parser.parse_args(argv)


def _read_lines(path: str) -> Iterator[str]:
    # surrogateescape: a corrupted byte becomes a located FAIL, not a decode crash.
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        yield from handle


def _load_sth(path: str) -> Mapping[str, object] | str:
    """Return the parsed STH, or a failure reason if the file is not a JSON object."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        sth = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except ValueError as exc:
        return f"STH file is not valid JSON ({exc})"
    if not isinstance(sth, dict):
        return "STH file is not a JSON object"
    return sth


def _report(result: VerifyResult) -> str:
    if result.ok:
        return (
            f"OK: {result.entries_checked} entries, tree size {result.tree_size}, "
            f"root {result.root_hash}"
        )
    if result.first_bad_seq is None:
        return f"FAIL: {result.reason}"
    return f"FAIL at seq {result.first_bad_seq}: {result.reason}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return 0 if verified, 1 on a verification failure, 2 on usage/IO errors."""
    args = _parse_args(argv)
    try:
        with open(args.public_key, "rb") as handle:
            pem = handle.read()
        load_public_key(pem)
    except (OSError, ValueError) as exc:
        print(f"ERROR: unusable public key {args.public_key}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sth = _load_sth(args.sth)
        if isinstance(sth, str):
            print(f"FAIL: {sth}")
            return EXIT_FAIL
        result = verify_export(_read_lines(args.entries), sth, pem)
    except OSError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(_report(result))
    return EXIT_OK if result.ok else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
