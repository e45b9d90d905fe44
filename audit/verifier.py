"""Standalone verifier for exported audit logs and signed tree heads (STHs).

An external auditor runs this with only the export, the STH and the log's public key::

    python -m audit.verifier --entries audit.jsonl --sth sth.json --public-key key.pem

``--strict`` also requires every line to be byte-for-byte the canonical encoding of what it
holds (so a change to any byte, whitespace included, fails), and ``--expect-seqs`` names the
sequence numbers the export must hold, no more and no fewer (so a dropped line of a partial
export fails; ``--expect-seqs-file`` reads them from a file). A failure names the line of the
entries file, the seq and the check.

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
from audit.canonical import canonical_json, entry_leaf_hash, sth_signing_bytes

__all__ = [
    "SignedTreeHead",
    "VerifyResult",
    "load_public_key",
    "log_id_for",
    "main",
    "parse_seq_spec",
    "read_lines",
    "sign_sth",
    "verify_entries",
    "verify_export",
]

_HEX_HASH = re.compile(r"[0-9a-f]{64}")

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

# The checks a failure can come from; `VerifyResult.check` holds one of these.
CHECK_STH = "sth"  # the tree head's form, key or signature
CHECK_FORMAT = "format"  # a line is not a well-formed export record
CHECK_ORDER = "order"  # seqs out of order, repeated, missing, or beyond the tree head
CHECK_LEAF = "leaf-hash"  # the entry does not hash to its leaf_hash
CHECK_CHAIN = "chain"  # prev_leaf_hash does not link to the previous entry
CHECK_PROOF = "inclusion-proof"  # the entry is not in the signed tree at its seq
CHECK_ROOT = "root"  # the complete log does not hash to the signed root
CHECK_COMPLETE = "completeness"  # the export stops short of what the tree head covers
CHECK_CANONICAL = "canonical"  # --strict: the line is not the canonical encoding
CHECK_EXPECTED = "expected-seqs"  # --expect-seqs: a seq is missing or not expected


class SignedTreeHead(TypedDict):
    """JSON shape of an STH file."""

    log_id: str
    tree_size: int
    root_hash: str
    timestamp: str
    signature: str


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a verification; on failure only the first problem is reported.

    `line` is the 1-based line of the entries file the failure is on (None when it concerns
    no single line, e.g. the tree head or a truncated export), `check` the check that failed.
    """

    ok: bool
    entries_checked: int
    tree_size: int
    first_bad_seq: int | None
    reason: str | None
    root_hash: str | None = None
    line: int | None = None
    check: str | None = None


class _Failure(Exception):
    """Internal control flow: the first verification failure found."""

    def __init__(self, seq: int | None, reason: str, *, check: str, line: int | None = None):
        super().__init__(reason)
        self.seq = seq
        self.reason = reason
        self.check = check
        self.line = line


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
        raise _Failure(
            None, f"{where}: entry has no valid seq (positive integer)", check=CHECK_FORMAT
        )
    return seq


def _checked_leaf(seq: int, entry: Mapping[str, object], stored: object) -> bytes:
    """Recompute the entry's leaf hash and compare it with the stored one, if any."""
    try:
        leaf = entry_leaf_hash(entry)
    except (TypeError, ValueError) as exc:
        raise _Failure(
            seq, f"entry cannot be canonically hashed: {exc}", check=CHECK_LEAF
        ) from None
    if stored is None:
        return leaf
    stored_hex = stored.hex() if isinstance(stored, bytes | bytearray) else stored
    if not isinstance(stored_hex, str) or not _HEX_HASH.fullmatch(stored_hex):
        raise _Failure(seq, "leaf_hash is not 64 lowercase hex characters", check=CHECK_LEAF)
    if stored_hex != leaf.hex():
        raise _Failure(
            seq, "leaf_hash does not match the entry content (entry was altered)", check=CHECK_LEAF
        )
    return leaf


def _check_link(seq: int, entry: Mapping[str, object], prev_leaf_hex: str | None) -> None:
    """Check prev_leaf_hash; ``prev_leaf_hex`` is None when entry seq-1 is not at hand."""
    link = entry.get("prev_leaf_hash")
    if not isinstance(link, str):
        raise _Failure(seq, "prev_leaf_hash is not a string", check=CHECK_CHAIN)
    if seq == 1:
        if link != "":
            raise _Failure(
                seq, "prev_leaf_hash of the first entry must be empty", check=CHECK_CHAIN
            )
    elif prev_leaf_hex is None:
        if not _HEX_HASH.fullmatch(link):
            raise _Failure(
                seq, "prev_leaf_hash is not 64 lowercase hex characters", check=CHECK_CHAIN
            )
    elif link != prev_leaf_hex:
        raise _Failure(
            seq, f"prev_leaf_hash does not match the leaf hash of seq {seq - 1}", check=CHECK_CHAIN
        )


def verify_entries(entries: Iterable[Mapping[str, object]]) -> VerifyResult:
    """Check a complete in-order log (seq gaps, leaf hashes, chain links) and compute its root."""
    frontier = merkle.CompactRange()
    prev_leaf_hex = ""
    try:
        for position, entry in enumerate(entries, start=1):
            try:
                seq = _seq_of(entry, f"entry #{position}")
                if seq > position:
                    raise _Failure(
                        position,
                        f"entry seq {position} is missing (found seq {seq})",
                        check=CHECK_ORDER,
                    )
                if seq < position:
                    raise _Failure(
                        seq,
                        f"seq {seq} is out of order or duplicated at #{position}",
                        check=CHECK_ORDER,
                    )
                leaf = _checked_leaf(seq, entry, entry.get("leaf_hash"))
                _check_link(seq, entry, prev_leaf_hex)
            except _Failure as failure:
                failure.line = position
                raise
            frontier.append(leaf)
            prev_leaf_hex = leaf.hex()
    except _Failure as failure:
        return _failed(failure, frontier.size, frontier.size)
    root = frontier.root().hex()
    return VerifyResult(True, frontier.size, frontier.size, None, None, root)


def _failed(failure: _Failure, checked: int, tree_size: int) -> VerifyResult:
    return VerifyResult(
        False,
        checked,
        tree_size,
        failure.seq,
        failure.reason,
        line=failure.line,
        check=failure.check,
    )


@dataclass(frozen=True)
class _TrustedHead:
    tree_size: int
    root: bytes


def _check_sth(sth: Mapping[str, object], key: Ed25519PublicKey) -> _TrustedHead:
    """Validate the STH's shape, log id and signature; return what it commits to."""
    try:
        signed = sth_signing_bytes(sth)
    except ValueError as exc:
        raise _Failure(None, f"STH is malformed: {exc}", check=CHECK_STH) from None
    expected_log_id = log_id_for(key)
    if sth["log_id"] != expected_log_id:
        raise _Failure(
            None,
            f"STH log_id {sth['log_id']} does not match the public key ({expected_log_id})",
            check=CHECK_STH,
        )
    signature = sth.get("signature")
    if not isinstance(signature, str):
        raise _Failure(None, "STH signature is missing", check=CHECK_STH)
    try:
        key.verify(base64.b64decode(signature, validate=True), signed)
    except (binascii.Error, InvalidSignature):
        raise _Failure(
            None, "STH signature does not verify with the public key", check=CHECK_STH
        ) from None
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
    record: Mapping[str, object]


def _parse_proof(seq: int, raw: object) -> list[bytes] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(h, str) and _HEX_HASH.fullmatch(h) for h in raw
    ):
        raise _Failure(
            seq,
            "inclusion_proof must be a list of 64-character lowercase hex hashes",
            check=CHECK_FORMAT,
        )
    return [bytes.fromhex(h) for h in raw]


def _parse_line(line_no: int, line: str) -> _ExportLine:
    where = f"line {line_no}"
    try:
        record = json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except ValueError as exc:
        raise _Failure(None, f"{where}: not valid JSON ({exc})", check=CHECK_FORMAT) from None
    if not isinstance(record, dict) or not isinstance(record.get("entry"), dict):
        raise _Failure(
            None, f'{where}: expected an object with an "entry" object', check=CHECK_FORMAT
        )
    entry: dict[str, object] = record["entry"]
    seq = _seq_of(entry, where)
    leaf_hash = record.get("leaf_hash")
    if not isinstance(leaf_hash, str):
        raise _Failure(seq, "line has no leaf_hash string", check=CHECK_FORMAT)
    proof = _parse_proof(seq, record.get("inclusion_proof"))
    return _ExportLine(seq, entry, leaf_hash, proof, record)


def _check_canonical(seq: int, line: str, record: Mapping[str, object]) -> None:
    """--strict: the line must be exactly the canonical JSON of its record and a newline."""
    raw = line.encode("utf-8", "surrogateescape")
    try:
        expected = canonical_json(record) + b"\n"
    except ValueError as exc:  # e.g. a lone surrogate from an invalid UTF-8 byte
        raise _Failure(
            seq, f"line is not in canonical form: {exc}", check=CHECK_CANONICAL
        ) from None
    if raw == expected:
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(raw, expected, strict=False)) if a != b),
        min(len(raw), len(expected)),
    )
    raise _Failure(
        seq,
        f"line is not in canonical form (sorted keys, no spaces, UTF-8, one newline): "
        f"first difference at byte {at + 1} of the line",
        check=CHECK_CANONICAL,
    )


def parse_seq_spec(spec: str) -> list[tuple[int, int]]:
    """Parse "1-5,9,12-14" into ascending, disjoint (first, last) ranges; ValueError if bad."""
    ranges: list[tuple[int, int]] = []
    for part in spec.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        first_text, dash, last_text = part.partition("-")
        if not first_text.isdigit() or (dash and not last_text.isdigit()):
            raise ValueError(f"bad seq range {part!r}: use N or N-M with positive integers")
        first = int(first_text)
        last = int(last_text) if dash else first
        if first < 1 or last < first:
            raise ValueError(f"bad seq range {part!r}: need 1 <= N <= M")
        if ranges and first <= ranges[-1][1]:
            raise ValueError(f"seq range {part!r} is not after the previous one")
        ranges.append((first, last))
    if not ranges:
        raise ValueError("no seqs given")
    return ranges


class _Expected:
    """The seqs an export must hold, consumed in order as lines arrive."""

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        self._seqs = (s for first, last in ranges for s in range(first, last + 1))
        self.next: int | None = next(self._seqs, None)

    def take(self, seq: int, line_no: int) -> None:
        want = self.next
        if want is None:
            raise _Failure(
                seq,
                f"seq {seq} is not expected: the expected seqs ended before line {line_no}",
                check=CHECK_EXPECTED,
            )
        if seq > want:
            raise _Failure(
                want,
                f"expected seq {want} is missing: line {line_no} holds seq {seq} "
                f"(a line was removed, or the lines are out of order)",
                check=CHECK_EXPECTED,
            )
        if seq < want:
            raise _Failure(
                seq,
                f"seq {seq} is not among the expected seqs (next expected: {want})",
                check=CHECK_EXPECTED,
            )
        self.next = next(self._seqs, None)

    def finish(self, last_seq: int) -> None:
        if self.next is not None:
            after = f"after seq {last_seq}" if last_seq else "without any entry"
            raise _Failure(
                self.next,
                f"expected seq {self.next} is missing: the export ends {after}",
                check=CHECK_EXPECTED,
            )


class _ExportWalk:
    """Streams export lines, deciding at the end whether they were the complete log."""

    def __init__(self, head: _TrustedHead, expected: _Expected | None = None) -> None:
        self.head = head
        self.expected = expected
        self.count = 0
        self.prev_seq = 0
        self.prev_leaf_hex = ""
        # While seqs run 1, 2, 3, ... the file may still turn out to be the whole log.
        self.frontier: merkle.CompactRange | None = merkle.CompactRange()
        self.first_unproven: int | None = None

    def accept(self, line: _ExportLine, line_no: int) -> None:
        seq = line.seq
        if seq <= self.prev_seq:
            raise _Failure(
                seq,
                f"seq {seq} follows seq {self.prev_seq}: out of order or repeated",
                check=CHECK_ORDER,
            )
        if seq > self.head.tree_size:
            raise _Failure(
                seq,
                f"seq {seq} is beyond the STH tree size {self.head.tree_size}",
                check=CHECK_ORDER,
            )
        if self.expected is not None:
            self.expected.take(seq, line_no)
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
                check=CHECK_ORDER,
            )
        self.frontier = None

    def _check_proof(self, seq: int, leaf: bytes, proof: list[bytes] | None) -> None:
        if proof is None:
            if self.frontier is None:
                raise _Failure(
                    seq,
                    "no inclusion_proof, which a partial export needs on every line",
                    check=CHECK_PROOF,
                )
            if self.first_unproven is None:
                self.first_unproven = seq
            return
        try:
            merkle.verify_inclusion(seq - 1, self.head.tree_size, leaf, proof, self.head.root)
        except merkle.ProofError as exc:
            raise _Failure(
                seq, f"inclusion proof does not verify against the STH: {exc}", check=CHECK_PROOF
            ) from None

    def finish(self) -> None:
        tree_size = self.head.tree_size
        if self.expected is not None:
            self.expected.finish(self.prev_seq)
        if self.count == 0 and tree_size > 0:
            # An emptied export must not pass: it proves nothing about the signed tree.
            raise _Failure(
                1,
                f"export has no entries but the tree head covers {tree_size}",
                check=CHECK_COMPLETE,
            )
        if self.frontier is None:
            return  # partial export: every line was proven against the STH root
        if self.count == tree_size:
            root = self.frontier.root()
            if root != self.head.root:
                raise _Failure(
                    None,
                    f"recomputed root {root.hex()} does not match STH root {self.head.root.hex()}",
                    check=CHECK_ROOT,
                )
            return
        if self.first_unproven is not None:
            raise _Failure(
                self.count + 1,
                f"export ends at seq {self.count} but the STH covers {tree_size} entries; lines "
                f"without inclusion proofs (first at seq {self.first_unproven}) need the whole log",
                check=CHECK_COMPLETE,
            )


def verify_export(
    entries_lines: Iterable[str],
    sth: Mapping[str, object],
    public_key_pem: bytes,
    *,
    strict: bool = False,
    expected_seqs: Sequence[tuple[int, int]] | None = None,
) -> VerifyResult:
    """Verify an exported JSONL log (complete or partial) against a signed tree head.

    `strict` also requires each line to be byte-for-byte canonical JSON ending in one
    newline (lines as read with ``newline=""``, so line endings are kept); `expected_seqs`
    (ranges from `parse_seq_spec`) are the seqs the export must hold, exactly. Raises
    ValueError if ``public_key_pem`` is not an Ed25519 public key; every problem with the
    STH or the entries is reported in the result instead.
    """
    key = load_public_key(public_key_pem)
    claimed_size = sth.get("tree_size")
    size_hint = claimed_size if isinstance(claimed_size, int) else 0
    try:
        head = _check_sth(sth, key)
    except _Failure as failure:
        return _failed(failure, 0, size_hint)
    walk = _ExportWalk(head, None if expected_seqs is None else _Expected(expected_seqs))
    try:
        for line_no, line in enumerate(entries_lines, start=1):
            try:
                if not line.strip():
                    if strict:
                        raise _Failure(None, "blank line", check=CHECK_CANONICAL)
                    continue
                parsed = _parse_line(line_no, line)
                walk.accept(parsed, line_no)
                if strict:
                    _check_canonical(parsed.seq, line, parsed.record)
            except _Failure as failure:
                failure.line = line_no
                raise
        walk.finish()
    except _Failure as failure:
        return _failed(failure, walk.count, head.tree_size)
    return VerifyResult(True, walk.count, head.tree_size, None, None, head.root.hex())


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m audit.verifier",
        description="Verify an exported audit log against a signed tree head.",
    )
    parser.add_argument("--entries", required=True, help="JSON Lines export of audit entries")
    parser.add_argument("--sth", required=True, help="signed tree head JSON file")
    parser.add_argument("--public-key", required=True, help="log's Ed25519 public key (PEM)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also require every line to be byte-for-byte canonical JSON (any changed byte fails)",
    )
    expect = parser.add_mutually_exclusive_group()
    expect.add_argument(
        "--expect-seqs",
        metavar="SPEC",
        help='the seqs the export must hold, no more and no fewer, e.g. "1-5,9,12-14"',
    )
    expect.add_argument(
        "--expect-seqs-file", metavar="PATH", help="read the --expect-seqs SPEC from a file"
    )
    return parser.parse_args(argv)


def read_lines(path: str) -> Iterator[str]:
    """The entries file's lines as the CLI reads them: endings kept, bad UTF-8 escaped."""
    # surrogateescape: a corrupted byte becomes a located FAIL, not a decode crash.
    # newline="": a changed line ending stays visible to --strict.
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        yield from handle


def _expected_seqs(spec: str | None, path: str | None) -> list[tuple[int, int]] | None:
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            spec = handle.read()
    return None if spec is None else parse_seq_spec(spec)


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


def _report(result: VerifyResult, *, strict: bool = False, expected: bool = False) -> str:
    if result.ok:
        extras = "".join(
            (
                "; exactly the expected seqs" if expected else "",
                "; every line canonical" if strict else "",
            )
        )
        return (
            f"OK: {result.entries_checked} entries, tree size {result.tree_size}, "
            f"root {result.root_hash}{extras}"
        )
    head = "FAIL" if result.first_bad_seq is None else f"FAIL at seq {result.first_bad_seq}"
    where = [f"line {result.line}"] if result.line is not None else []
    if result.check:
        where.append(f"check: {result.check}")
    located = f" [{', '.join(where)}]" if where else ""
    return f"{head}: {result.reason}{located}"


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
        expected = _expected_seqs(args.expect_seqs, args.expect_seqs_file)
    except (OSError, ValueError) as exc:
        print(f"ERROR: unusable --expect-seqs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sth = _load_sth(args.sth)
        if isinstance(sth, str):
            print(f"FAIL: {sth} [check: {CHECK_STH}]")
            return EXIT_FAIL
        result = verify_export(
            read_lines(args.entries), sth, pem, strict=args.strict, expected_seqs=expected
        )
    except OSError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(_report(result, strict=args.strict, expected=expected is not None))
    return EXIT_OK if result.ok else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
