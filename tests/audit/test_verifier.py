"""The standalone verifier against a synthetic signed log: clean exports pass, tampering fails."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import merkle
from audit.canonical import canonical_json, entry_leaf_hash, sth_signing_bytes
from audit.verifier import (
    SignedTreeHead,
    VerifyResult,
    log_id_for,
    parse_seq_spec,
    sign_sth,
    verify_entries,
    verify_export,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOG_SIZE = 50
TAMPERED_SEQ = 17


def _entry(seq: int, prev_leaf_hash: str) -> dict[str, object]:
    return {
        "seq": seq,
        "ts": f"2026-11-23T14:21:{seq % 60:02d}.123456Z",
        "actor": "dr.ng",
        "actor_role": "clinician",
        "action": "read",
        "resource_type": "Observation",
        "resource_id": f"obs-{seq}",
        "patient_id": "pat-7",
        "outcome": "success",
        "request_id": f"req-{seq:04d}",
        "details": {"n": seq, "note": "héllo ✓"},
        "prev_leaf_hash": prev_leaf_hash,
    }


def _build_entries(count: int) -> list[dict[str, object]]:
    entries = []
    prev = ""
    for seq in range(1, count + 1):
        entry = _entry(seq, prev)
        prev = entry_leaf_hash(entry).hex()
        entries.append(entry)
    return entries


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class SignedLog:
    key: Ed25519PrivateKey
    entries: list[dict[str, object]]
    tree: merkle.MerkleTree
    sth: SignedTreeHead

    @property
    def pem(self) -> bytes:
        return _pem(self.key)

    def line(self, seq: int, *, with_proof: bool = False) -> str:
        entry = self.entries[seq - 1]
        record: dict[str, object] = {"entry": entry, "leaf_hash": entry_leaf_hash(entry).hex()}
        if with_proof:
            proof = self.tree.inclusion_proof(seq - 1, self.tree.size)
            record["inclusion_proof"] = [h.hex() for h in proof]
        return json.dumps(record, ensure_ascii=False) + "\n"

    def lines(self, seqs: list[int] | None = None, *, with_proof: bool = False) -> list[str]:
        chosen = range(1, len(self.entries) + 1) if seqs is None else seqs
        return [self.line(seq, with_proof=with_proof) for seq in chosen]

    def verify(self, lines: list[str]) -> VerifyResult:
        return verify_export(lines, self.sth, self.pem)


@pytest.fixture(scope="module")
def log() -> SignedLog:
    key = Ed25519PrivateKey.generate()
    entries = _build_entries(LOG_SIZE)
    tree = merkle.MerkleTree([entry_leaf_hash(e) for e in entries])
    sth = sign_sth(
        key, tree_size=LOG_SIZE, root_hash_hex=tree.root().hex(), timestamp="2026-11-23T15:00:00Z"
    )
    return SignedLog(key, entries, tree, sth)


def _write_export(tmp_path: Path, lines: list[str], sth: SignedTreeHead, pem: bytes) -> list[str]:
    (tmp_path / "audit.jsonl").write_text("".join(lines), encoding="utf-8")
    (tmp_path / "sth.json").write_text(json.dumps(sth), encoding="utf-8")
    (tmp_path / "audit_public_key.pem").write_bytes(pem)
    return [
        "--entries",
        str(tmp_path / "audit.jsonl"),
        "--sth",
        str(tmp_path / "sth.json"),
        "--public-key",
        str(tmp_path / "audit_public_key.pem"),
    ]


def _run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit.verifier", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_verify_export_accepts_clean_complete_log(log: SignedLog) -> None:
    result = log.verify(log.lines())
    assert result == VerifyResult(True, LOG_SIZE, LOG_SIZE, None, None, log.sth["root_hash"])


def test_verify_export_accepts_complete_log_with_proofs(log: SignedLog) -> None:
    assert log.verify(log.lines(with_proof=True)).ok


def test_cli_exits_zero_for_clean_export(log: SignedLog, tmp_path: Path) -> None:
    completed = _run_cli(_write_export(tmp_path, log.lines(), log.sth, log.pem))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    expected = f"OK: {LOG_SIZE} entries, tree size {LOG_SIZE}, root {log.sth['root_hash']}"
    assert completed.stdout.strip() == expected


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"actor": "dr.ng"', '"actor": "dr.nh"'),
        ("14:21:17.123456Z", "14:21:17.123457Z"),
        ('"n": 17', '"n": 18'),
        ('"outcome": "success"', '"outcome": "Success"'),
        ('"patient_id": "pat-7"', '"patient_id": "pat-8"'),
    ],
)
def test_verify_export_locates_changed_byte_in_entry(log: SignedLog, old: str, new: str) -> None:
    lines = log.lines()
    tampered = lines[TAMPERED_SEQ - 1].replace(old, new)
    assert len(tampered) == len(lines[TAMPERED_SEQ - 1])
    assert tampered != lines[TAMPERED_SEQ - 1]
    lines[TAMPERED_SEQ - 1] = tampered
    result = log.verify(lines)
    assert not result.ok
    assert result.first_bad_seq == TAMPERED_SEQ
    assert "leaf_hash" in (result.reason or "")


def test_cli_reports_tampered_seq_and_exits_one(log: SignedLog, tmp_path: Path) -> None:
    lines = log.lines()
    lines[TAMPERED_SEQ - 1] = lines[TAMPERED_SEQ - 1].replace("dr.ng", "dr.nh")
    completed = _run_cli(_write_export(tmp_path, lines, log.sth, log.pem))
    assert completed.returncode == 1
    assert completed.stdout.startswith(f"FAIL at seq {TAMPERED_SEQ}: ")


def test_verify_export_detects_rehashed_entry_by_chain_link(log: SignedLog) -> None:
    lines = log.lines()
    entry = dict(log.entries[TAMPERED_SEQ - 1], actor="mallory")
    lines[TAMPERED_SEQ - 1] = (
        json.dumps({"entry": entry, "leaf_hash": entry_leaf_hash(entry).hex()}) + "\n"
    )
    result = log.verify(lines)
    assert (result.ok, result.first_bad_seq) == (False, TAMPERED_SEQ + 1)
    assert "prev_leaf_hash" in (result.reason or "")


def test_verify_export_detects_rehashed_last_entry_by_root(log: SignedLog) -> None:
    lines = log.lines()
    entry = dict(log.entries[-1], outcome="denied")
    lines[-1] = json.dumps({"entry": entry, "leaf_hash": entry_leaf_hash(entry).hex()}) + "\n"
    result = log.verify(lines)
    assert (result.ok, result.first_bad_seq) == (False, None)
    assert "root" in (result.reason or "")


def test_verify_export_rejects_deleted_line(log: SignedLog) -> None:
    lines = log.lines()
    del lines[19]
    result = log.verify(lines)
    assert (result.ok, result.first_bad_seq) == (False, 20)
    assert "missing" in (result.reason or "")


def test_verify_export_rejects_truncated_log(log: SignedLog) -> None:
    result = log.verify(log.lines()[:-1])
    assert (result.ok, result.first_bad_seq) == (False, LOG_SIZE)


def test_verify_export_rejects_reordered_pair(log: SignedLog) -> None:
    lines = log.lines()
    lines[29], lines[30] = lines[30], lines[29]
    result = log.verify(lines)
    assert (result.ok, result.first_bad_seq) == (False, 30)


def test_verify_export_rejects_entries_beyond_sth(log: SignedLog) -> None:
    entries = _build_entries(LOG_SIZE + 1)
    extra = entries[-1]
    lines = [
        *log.lines(),
        json.dumps({"entry": extra, "leaf_hash": entry_leaf_hash(extra).hex()}) + "\n",
    ]
    result = log.verify(lines)
    assert (result.ok, result.first_bad_seq) == (False, LOG_SIZE + 1)


def test_verify_export_reports_unparseable_line_number(log: SignedLog) -> None:
    lines = log.lines()
    lines[4] = lines[4][:-10] + "\n"
    result = log.verify(lines)
    assert not result.ok
    assert (result.reason or "").startswith("line 5: not valid JSON")


def test_verify_export_rejects_duplicate_json_keys(log: SignedLog) -> None:
    lines = log.lines()
    lines[2] = lines[2].replace('{"seq": 3,', '{"seq": 3, "actor": "x",', 1)
    result = log.verify(lines)
    assert not result.ok
    assert "duplicate key" in (result.reason or "")


def test_verify_export_rejects_forged_sth_signature(log: SignedLog) -> None:
    forged = SignedTreeHead(**log.sth)
    forged["tree_size"] = LOG_SIZE - 1
    forged["root_hash"] = log.tree.root(LOG_SIZE - 1).hex()
    result = verify_export(log.lines()[:-1], forged, log.pem)
    assert (result.ok, result.first_bad_seq) == (False, None)
    assert "signature" in (result.reason or "")


def test_verify_export_rejects_corrupted_signature_bytes(log: SignedLog) -> None:
    forged = SignedTreeHead(**log.sth)
    first = forged["signature"][0]
    forged["signature"] = ("B" if first == "A" else "A") + forged["signature"][1:]
    result = verify_export(log.lines(), forged, log.pem)
    assert not result.ok
    assert "signature" in (result.reason or "")


def test_verify_export_rejects_sth_signed_by_other_key(log: SignedLog) -> None:
    other = sign_sth(
        Ed25519PrivateKey.generate(),
        tree_size=LOG_SIZE,
        root_hash_hex=log.sth["root_hash"],
        timestamp=log.sth["timestamp"],
    )
    result = verify_export(log.lines(), other, log.pem)
    assert not result.ok
    assert "log_id" in (result.reason or "")


def test_verify_export_rejects_other_key_claiming_our_log_id(log: SignedLog) -> None:
    other_key = Ed25519PrivateKey.generate()
    impostor = SignedTreeHead(**log.sth)
    impostor["signature"] = sign_sth(
        other_key,
        tree_size=LOG_SIZE,
        root_hash_hex=log.sth["root_hash"],
        timestamp=log.sth["timestamp"],
    )["signature"]
    result = verify_export(log.lines(), impostor, log.pem)
    assert not result.ok
    assert "signature" in (result.reason or "")


def test_cli_exits_one_for_sth_signed_by_other_key(log: SignedLog, tmp_path: Path) -> None:
    completed = _run_cli(
        _write_export(tmp_path, log.lines(), log.sth, _pem(Ed25519PrivateKey.generate()))
    )
    assert completed.returncode == 1
    assert completed.stdout.startswith("FAIL: STH log_id")


SUBSET = [*range(10, 20), 33, 41, 50]


def test_verify_export_accepts_subset_with_proofs(log: SignedLog) -> None:
    result = log.verify(log.lines(SUBSET, with_proof=True))
    assert result == VerifyResult(True, len(SUBSET), LOG_SIZE, None, None, log.sth["root_hash"])


def test_verify_export_accepts_prefix_subset_with_proofs(log: SignedLog) -> None:
    assert log.verify(log.lines(list(range(1, 11)), with_proof=True)).ok


def test_verify_export_rejects_subset_with_one_bad_proof(log: SignedLog) -> None:
    lines = log.lines(SUBSET, with_proof=True)
    bad_seq = 15
    record = json.loads(lines[SUBSET.index(bad_seq)])
    proof = record["inclusion_proof"]
    proof[1] = ("0" if proof[1][0] != "0" else "1") + proof[1][1:]
    lines[SUBSET.index(bad_seq)] = json.dumps(record) + "\n"
    result = log.verify(lines)
    assert (result.ok, result.first_bad_seq) == (False, bad_seq)
    assert "inclusion proof" in (result.reason or "")


def test_verify_export_rejects_subset_line_without_proof(log: SignedLog) -> None:
    lines = log.lines(SUBSET, with_proof=True)
    lines[SUBSET.index(33)] = log.line(33)
    result = log.verify(lines)
    assert (result.ok, result.first_bad_seq) == (False, 33)


def test_verify_export_rejects_subset_out_of_order(log: SignedLog) -> None:
    lines = log.lines(SUBSET, with_proof=True)
    lines[-1], lines[-2] = lines[-2], lines[-1]
    result = log.verify(lines)
    assert (result.ok, result.first_bad_seq) == (False, 41)


def test_verify_module_imports_no_application_code() -> None:
    check = (
        "import audit.verifier, sys; assert not any(m.split('.')[0] in "
        "{'sqlalchemy','fastapi','app','sqlmodel'} for m in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", check], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr


def test_cli_exits_two_for_missing_file(log: SignedLog, tmp_path: Path) -> None:
    args = _write_export(tmp_path, log.lines(), log.sth, log.pem)
    (tmp_path / "audit.jsonl").unlink()
    completed = _run_cli(args)
    assert completed.returncode == 2
    assert completed.stdout == ""


def test_cli_exits_two_for_non_ed25519_key(log: SignedLog, tmp_path: Path) -> None:
    completed = _run_cli(_write_export(tmp_path, log.lines(), log.sth, b"not a pem"))
    assert completed.returncode == 2


def test_verify_entries_returns_root_of_clean_log(log: SignedLog) -> None:
    rows = [dict(e, leaf_hash=entry_leaf_hash(e).hex()) for e in log.entries]
    result = verify_entries(rows)
    assert result == VerifyResult(True, LOG_SIZE, LOG_SIZE, None, None, log.sth["root_hash"])


def test_verify_entries_accepts_bytes_leaf_hash_and_missing_leaf_hash(log: SignedLog) -> None:
    rows: list[dict[str, object]] = [dict(e) for e in log.entries]
    rows[3]["leaf_hash"] = entry_leaf_hash(log.entries[3])
    assert verify_entries(rows).root_hash == log.sth["root_hash"]


def test_verify_entries_locates_tampered_field(log: SignedLog) -> None:
    rows = [dict(e, leaf_hash=entry_leaf_hash(e).hex()) for e in log.entries]
    rows[TAMPERED_SEQ - 1]["resource_id"] = "obs-999"
    result = verify_entries(rows)
    assert (result.ok, result.first_bad_seq, result.root_hash) == (False, TAMPERED_SEQ, None)


def test_verify_entries_locates_gap(log: SignedLog) -> None:
    rows = [dict(e) for e in log.entries]
    del rows[9]
    result = verify_entries(rows)
    assert (result.ok, result.first_bad_seq) == (False, 10)


def test_verify_entries_locates_broken_chain_link(log: SignedLog) -> None:
    rows = [dict(e) for e in log.entries]
    rows[TAMPERED_SEQ - 1]["prev_leaf_hash"] = "00" * 32
    result = verify_entries(rows)
    assert (result.ok, result.first_bad_seq) == (False, TAMPERED_SEQ)
    assert "prev_leaf_hash" in (result.reason or "")


def test_verify_entries_rejects_missing_field(log: SignedLog) -> None:
    rows = [dict(e) for e in log.entries[:5]]
    del rows[2]["details"]
    result = verify_entries(rows)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "details" in (result.reason or "")


def test_verify_entries_accepts_empty_log() -> None:
    assert verify_entries([]) == VerifyResult(True, 0, 0, None, None, merkle.EMPTY_ROOT.hex())


def test_entry_leaf_hash_names_missing_field() -> None:
    entry = _entry(1, "")
    del entry["request_id"]
    with pytest.raises(ValueError, match="request_id"):
        entry_leaf_hash(entry)


def test_sign_sth_formats_aware_datetime_as_utc() -> None:
    key = Ed25519PrivateKey.generate()
    when = datetime(2026, 11, 23, 14, 21, 50, 123456, tzinfo=UTC)
    sth = sign_sth(key, tree_size=0, root_hash_hex=merkle.EMPTY_ROOT.hex(), timestamp=when)
    assert sth["timestamp"] == "2026-11-23T14:21:50.123456Z"
    assert sth["log_id"] == log_id_for(key.public_key())
    assert verify_export([], sth, _pem(key)).ok


def test_sth_signing_bytes_rejects_uppercase_root() -> None:
    sth = {"log_id": "ab" * 32, "tree_size": 1, "root_hash": "AB" * 32, "timestamp": "2026-01-01"}
    with pytest.raises(ValueError, match="root_hash"):
        sth_signing_bytes(sth)


def test_verify_export_when_emptied_fails(tmp_path: Path) -> None:
    """A deleted export must not pass as an empty subset."""
    from audit import verifier
    from audit.keys import public_key_pem

    key = Ed25519PrivateKey.generate()
    sth = verifier.sign_sth(
        key, tree_size=3, root_hash_hex="00" * 32, timestamp="2026-01-01T00:00:00.000000Z"
    )
    result = verifier.verify_export([], sth, public_key_pem(key))
    assert not result.ok
    assert "no entries" in (result.reason or "")


def test_verify_export_names_line_and_check_of_a_changed_entry(log: SignedLog) -> None:
    lines = log.lines(SUBSET, with_proof=True)
    at = SUBSET.index(33)
    lines[at] = lines[at].replace("dr.ng", "dr.nh")
    result = log.verify(lines)
    assert (result.first_bad_seq, result.line, result.check) == (33, at + 1, "leaf-hash")


def test_verify_export_names_line_of_an_unparseable_line(log: SignedLog) -> None:
    lines = log.lines()
    lines[4] = lines[4][:-10] + "\n"
    result = log.verify(lines)
    assert (result.first_bad_seq, result.line, result.check) == (None, 5, "format")


def test_verify_export_strict_refuses_non_canonical_spacing(log: SignedLog) -> None:
    # The fixture's lines use json.dumps' default ", " and ": " separators.
    result = verify_export(log.lines(), log.sth, log.pem, strict=True)
    assert (result.ok, result.line, result.check) == (False, 1, "canonical")
    assert "first difference at byte 10 of the line" in (result.reason or "")


def test_verify_export_strict_accepts_canonical_lines(log: SignedLog) -> None:
    lines = [canonical_json(json.loads(line)).decode() + "\n" for line in log.lines()]
    assert verify_export(lines, log.sth, log.pem, strict=True).ok
    lines[3] = lines[3][:-1] + "\r\n"
    result = verify_export(lines, log.sth, log.pem, strict=True)
    assert (result.ok, result.first_bad_seq, result.line) == (False, 4, 4)


def test_verify_export_expected_seqs_find_a_dropped_proven_line(log: SignedLog) -> None:
    lines = log.lines(SUBSET, with_proof=True)
    del lines[3]  # seq 13
    assert log.verify(lines).ok  # every remaining line is proven on its own
    result = verify_export(lines, log.sth, log.pem, expected_seqs=parse_seq_spec("10-19,33,41,50"))
    assert (result.ok, result.first_bad_seq, result.line, result.check) == (
        False,
        13,
        4,
        "expected-seqs",
    )


def test_verify_export_expected_seqs_refuse_an_extra_line(log: SignedLog) -> None:
    result = verify_export(
        log.lines(SUBSET, with_proof=True), log.sth, log.pem, expected_seqs=[(10, 19), (33, 33)]
    )
    assert (result.ok, result.first_bad_seq, result.line) == (False, 41, 12)
    assert "not expected" in (result.reason or "")


@pytest.mark.parametrize(
    ("spec", "ranges"),
    [("1", [(1, 1)]), ("1-5,9,12-14", [(1, 5), (9, 9), (12, 14)]), (" 3-4\n", [(3, 4)])],
)
def test_parse_seq_spec_reads_ranges(spec: str, ranges: list[tuple[int, int]]) -> None:
    assert parse_seq_spec(spec) == ranges


@pytest.mark.parametrize("spec", ["", "0", "5-3", "1-3,2", "a", "1-", "-2", "2,1"])
def test_parse_seq_spec_refuses_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="seq"):
        parse_seq_spec(spec)


def test_cli_reports_line_and_check_and_reads_expected_seqs_file(
    log: SignedLog, tmp_path: Path
) -> None:
    lines = log.lines(SUBSET, with_proof=True)
    del lines[3]
    args = _write_export(tmp_path, lines, log.sth, log.pem)
    (tmp_path / "seqs.txt").write_text("10-19,33,41,50\n")
    completed = _run_cli([*args, "--expect-seqs-file", str(tmp_path / "seqs.txt")])
    assert completed.returncode == 1
    assert completed.stdout == (
        "FAIL at seq 13: expected seq 13 is missing: line 4 holds seq 14 (a line was removed, "
        "or the lines are out of order) [line 4, check: expected-seqs]\n"
    )


def test_cli_exits_two_for_a_bad_expected_seqs_spec(log: SignedLog, tmp_path: Path) -> None:
    args = _write_export(tmp_path, log.lines(), log.sth, log.pem)
    completed = _run_cli([*args, "--expect-seqs", "9-1"])
    assert completed.returncode == 2
    assert "--expect-seqs" in completed.stderr
