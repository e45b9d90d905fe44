"""The verifiable audit-trail export: its files against the database, the documented verifier
command run as a subprocess, and tampering (any single byte, the tree head, the key, dropped
and re-ordered lines) detected and located."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from audit import keys
from audit import service as audit
from audit.models import AuditEntry, Outcome
from audit.verifier import VerifyResult, verify_export
from reports import audit_export
from reports.audit_export import (
    ENTRIES_FILE,
    KEY_FILE,
    README_FILE,
    SEQS_FILE,
    STH_FILE,
    VERIFY_ARGS,
    VERIFY_COMMAND,
    AuditExport,
    KeyMismatch,
    NothingToExport,
    TreeHeadDoesNotCover,
)
from reports.models import Filters, Period
from tests.conftest import FrozenClock, World

ROOT = Path(__file__).resolve().parents[2]
# The four files the auditor's guide says to copy: the verifier needs nothing else.
VERIFIER_FILES = ("__init__.py", "merkle.py", "canonical.py", "verifier.py")


@dataclass
class Trail:
    """Audit entries before, in and after a period, and a tree head signed after them all."""

    world: World
    key: Ed25519PrivateKey
    period: Period
    before: list[int]
    inside: list[int]
    after: list[int]
    now: datetime

    @property
    def pa1(self) -> str:
        return self.world.patients["pa1"].id

    def export(self, session: Session, filters: Filters | None = None, **kw: Any) -> AuditExport:
        args: dict[str, Any] = {
            "period": self.period,
            "filters": filters or Filters(),
            "public_key": self.key.public_key(),
            "now": self.now,
            "generated_by": "auditor",
        }
        return audit_export.export(session, **(args | kw))


def _key_path(world: World) -> Path:
    path = world.settings.signing_key_path
    assert path is not None
    return path


def _record(s: Session, fc: FrozenClock, n: int, **fields: Any) -> list[int]:
    """Commit `n` entries one minute apart; returns their seqs."""
    seqs = []
    for i in range(n):
        fc.advance(minutes=1)
        audit.record(s, **fields, details={"i": i, "note": "café ✓", "eps": 1e-05})
        s.commit()
        seqs.append(audit.tree_size(s))
    return seqs


@pytest.fixture
def trail(world: World, frozen_clock: FrozenClock) -> Trail:
    """3 entries before the period, 9 in it (4 about patient pa1, 3 by clina), 2 after."""
    s = world.session
    key = keys.load_signing_key(_key_path(world))
    clina = f"user:{world.users['clina'].id}"
    pa1 = world.patients["pa1"].id
    base = {"actor_role": "clinician", "request_id": "req-00000001"}
    frozen_clock.advance(hours=1)
    before = _record(
        s, frozen_clock, 3, actor="user:99", action="x.read", resource_type="x", **base
    )
    start = frozen_clock.now + timedelta(seconds=30)
    inside = _record(
        s,
        frozen_clock,
        4,
        actor="user:98",
        action="patient.read",
        resource_type="patient",
        resource_id=pa1,
        patient_id=pa1,
        **base,
    )
    inside += _record(
        s, frozen_clock, 3, actor=clina, action="review.list", resource_type="q", **base
    )
    inside += _record(
        s,
        frozen_clock,
        2,
        actor="anonymous",
        action="auth.denied",
        resource_type="auth",
        outcome=Outcome.DENIED,
        **{**base, "actor_role": "anonymous"},
    )
    end = frozen_clock.now + timedelta(seconds=30)
    after = _record(s, frozen_clock, 2, actor="user:97", action="y.read", resource_type="y", **base)
    frozen_clock.advance(minutes=5)
    audit.checkpoint(s, key=key)
    s.commit()
    return Trail(world, key, Period(start, end), before, inside, after, frozen_clock.now)


def _rows(s: Session, seqs: list[int]) -> list[AuditEntry]:
    return list(
        s.scalars(
            select(AuditEntry).where(col(AuditEntry.seq).in_(seqs)).order_by(col(AuditEntry.seq))
        )
    )


def _records(built: AuditExport) -> list[dict[str, Any]]:
    return [json.loads(line) for line in built.files[ENTRIES_FILE].splitlines()]


def _verify(data: bytes, built: AuditExport, **kw: Any) -> VerifyResult:
    """The verifier on a changed entries file, with the export's own checks (strict, seqs)."""
    args: dict[str, Any] = {
        "strict": True,
        "expected_seqs": list(built.seq_ranges),
    }
    return verify_export(
        audit_export.entries_lines(data),
        json.loads(built.files[STH_FILE]),
        built.files[KEY_FILE],
        **(args | kw),
    )


def _line_of(data: bytes, position: int) -> int:
    """The 1-based line a byte offset is on (a line's newline belongs to it)."""
    return data.count(b"\n", 0, position) + 1


def _verifier_copy(tmp_path: Path) -> Path:
    """The verifier as the guide says to set it up: four files, nothing else of the project."""
    folder = tmp_path / "verifier"
    (folder / "audit").mkdir(parents=True)
    for name in VERIFIER_FILES:
        shutil.copyfile(ROOT / "audit" / name, folder / "audit" / name)
    return folder


def _run_verifier(
    export_dir: Path, verifier: Path, args: tuple[str, ...] = VERIFY_ARGS
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(verifier)}
    return subprocess.run(
        [sys.executable, "-m", "audit.verifier", *args],
        cwd=export_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


# --- what the export holds ---------------------------------------------------------------


def test_export_holds_the_period_entries_as_in_the_database(trail: Trail, db: Session) -> None:
    built = trail.export(db)
    rows = _rows(db, trail.inside)
    records = _records(built)
    assert [r["entry"]["seq"] for r in records] == trail.inside
    for record, row in zip(records, rows, strict=True):
        assert record["entry"] == audit.entry_fields(row)
        assert record["leaf_hash"] == row.leaf_hash
        assert record["inclusion_proof"] == audit.inclusion(
            db, seq=row.seq, size=audit.tree_size(db)
        )
    sth = audit.latest_sth(db)
    assert sth is not None
    assert json.loads(built.files[STH_FILE]) == audit.sth_document(sth)
    assert built.files[KEY_FILE] == keys.public_key_pem(trail.key)
    assert built.files[SEQS_FILE] == f"{trail.inside[0]}-{trail.inside[-1]}\n".encode()
    assert (built.count, built.filtered, built.whole_log, built.checkpointed) == (
        len(trail.inside),
        False,
        False,
        False,
    )
    assert set(built.files) == {ENTRIES_FILE, STH_FILE, KEY_FILE, SEQS_FILE, README_FILE}


def test_export_lines_are_canonical_and_match_export_lines(trail: Trail, db: Session) -> None:
    built = trail.export(db)
    sth = audit.latest_sth(db)
    assert sth is not None
    expected = list(
        audit.export_lines(db, sth=sth, from_seq=trail.inside[0], to_seq=trail.inside[-1])
    )
    assert _records(built) == expected
    assert b": " not in built.files[ENTRIES_FILE]
    assert "café ✓".encode() in built.files[ENTRIES_FILE]  # UTF-8, not \\u escapes


def test_export_by_patient_holds_only_that_patients_entries(trail: Trail, db: Session) -> None:
    built = trail.export(db, Filters(patient_id=trail.world.patients["pa1"].pseudonym))
    expected = db.scalars(
        select(col(AuditEntry.seq))
        .where(
            col(AuditEntry.patient_id) == trail.pa1,
            col(AuditEntry.ts) >= trail.period.start,
            col(AuditEntry.ts) < trail.period.end,
        )
        .order_by(col(AuditEntry.seq))
    ).all()
    assert [r["entry"]["seq"] for r in _records(built)] == expected == trail.inside[:4]
    assert all(r["inclusion_proof"] for r in _records(built))
    assert built.filtered
    readme = " ".join(built.files[README_FILE].decode().split())
    assert "cannot prove that no other entry matches" in readme
    assert audit_export.verify(built).ok


def test_export_by_actor_username_holds_only_that_actors_entries(trail: Trail, db: Session) -> None:
    built = trail.export(db, Filters(actor="clina"))
    records = _records(built)
    assert [r["entry"]["seq"] for r in records] == trail.inside[4:7]
    assert {r["entry"]["actor"] for r in records} == {f"user:{trail.world.users['clina'].id}"}
    assert audit_export.verify(built).ok


def test_export_of_the_whole_log_carries_no_proofs_and_verifies(trail: Trail, db: Session) -> None:
    everything = Period(trail.period.start - timedelta(days=30), trail.now + timedelta(days=1))
    built = trail.export(db, period=everything)
    records = _records(built)
    assert built.whole_log
    assert [r["entry"]["seq"] for r in records] == list(range(1, audit.tree_size(db) + 1))
    assert all("inclusion_proof" not in r for r in records)
    assert audit_export.verify(built).ok


def test_export_audit_details_name_range_and_tree_head(trail: Trail, db: Session) -> None:
    built = trail.export(db, Filters(actor="clina"))
    details = built.audit_details()
    assert details["seqs"] == f"{trail.inside[4]}-{trail.inside[6]}"
    assert details["count"] == 3
    assert details["filters"] == {"actor": "clina"}
    assert details["tree_size"] == audit.tree_size(db)


def test_zip_holds_the_same_files(trail: Trail, db: Session) -> None:
    built = trail.export(db)
    with zipfile.ZipFile(BytesIO(audit_export.zip_bytes(built))) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == built.files


def test_readme_names_the_exact_command_and_expected_output(trail: Trail, db: Session) -> None:
    built = trail.export(db)
    text = built.files[README_FILE].decode()
    sth = built.sth
    assert VERIFY_COMMAND in text
    assert VERIFY_COMMAND == (
        "python -m audit.verifier --entries entries.jsonl --sth sth.json "
        "--public-key public_key.pem --strict --expect-seqs-file expected-seqs.txt"
    )
    assert f"OK: {len(trail.inside)} entries, tree size {sth['tree_size']}" in text
    assert trail.period.label() in text
    assert sth["log_id"] in text
    assert "docs/auditor-guide.md" in text


# --- the tree head must cover the period ---------------------------------------------------


def test_export_refuses_when_the_newest_head_ends_before_the_period(
    trail: Trail, db: Session, frozen_clock: FrozenClock
) -> None:
    size = audit.tree_size(db)
    _record(db, frozen_clock, 1, actor="user:1", actor_role="admin", action="z", resource_type="z")
    later = Period(trail.period.start, frozen_clock.now + timedelta(minutes=1))
    with pytest.raises(TreeHeadDoesNotCover) as caught:
        trail.export(db, period=later)
    assert (caught.value.last_seq, caught.value.tree_size) == (size + 1, size)
    assert "checkpoint" in str(caught.value)


def test_export_signs_a_new_head_when_given_the_signing_key(
    trail: Trail, db: Session, frozen_clock: FrozenClock
) -> None:
    _record(db, frozen_clock, 1, actor="user:1", actor_role="admin", action="z", resource_type="z")
    later = Period(trail.period.start, frozen_clock.now + timedelta(minutes=1))
    built = trail.export(db, period=later, signing_key=trail.key)
    db.commit()
    assert built.checkpointed
    assert built.sth["tree_size"] == audit.tree_size(db)
    newest = audit.latest_sth(db)
    assert newest is not None
    assert newest.tree_size == built.sth["tree_size"]
    assert audit_export.verify(built).ok


def test_export_without_any_tree_head_says_so(world: World, db: Session) -> None:
    audit.record(db, actor="user:1", actor_role="admin", action="z", resource_type="z")
    db.commit()
    row = db.get(AuditEntry, 1)
    assert row is not None
    period = Period(row.ts - timedelta(minutes=1), row.ts + timedelta(minutes=1))
    key = keys.load_signing_key(_key_path(world))
    with pytest.raises(TreeHeadDoesNotCover) as caught:
        audit_export.export(
            db,
            period=period,
            filters=Filters(),
            public_key=key.public_key(),
            now=row.ts,
            generated_by="auditor",
        )
    assert caught.value.tree_size is None
    assert "no tree head" in str(caught.value)


def test_export_of_an_empty_period_or_unmatched_filter_refuses(trail: Trail, db: Session) -> None:
    empty = Period(trail.now + timedelta(days=1), trail.now + timedelta(days=2))
    with pytest.raises(NothingToExport):
        trail.export(db, period=empty)
    with pytest.raises(NothingToExport):
        trail.export(db, Filters(patient_id="P-NOBODY"))


def test_export_refuses_a_public_key_that_did_not_sign_the_head(trail: Trail, db: Session) -> None:
    with pytest.raises(KeyMismatch):
        trail.export(db, public_key=Ed25519PrivateKey.generate().public_key())


def test_readme_notes_a_head_signed_before_the_period_ended(trail: Trail, db: Session) -> None:
    still_open = Period(trail.period.start, trail.now + timedelta(days=1))
    text = trail.export(db, period=still_open).files[README_FILE].decode()
    assert "signed before the period ended" in text


# --- the documented command, run as the auditor runs it ------------------------------------


def test_documented_command_verifies_the_export_offline(
    trail: Trail, db: Session, tmp_path: Path
) -> None:
    built = trail.export(db, Filters(patient_id=trail.world.patients["pa1"].pseudonym))
    folder = tmp_path / "export"
    audit_export.write_folder(built, folder)
    verifier = _verifier_copy(tmp_path)
    which = subprocess.run(
        [sys.executable, "-c", "import audit.verifier as v; print(v.__file__)"],
        cwd=folder,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(verifier)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(which.stdout.strip()).is_relative_to(verifier)  # the copy, not the project
    done = _run_verifier(folder, verifier)
    assert done.returncode == 0, done.stdout + done.stderr
    sth = built.sth
    assert done.stdout == (
        f"OK: 4 entries, tree size {sth['tree_size']}, root {sth['root_hash']}; "
        "exactly the expected seqs; every line canonical\n"
    )
    assert done.stdout.strip() in built.files[README_FILE].decode()


def test_documented_command_locates_a_changed_byte(
    trail: Trail, db: Session, tmp_path: Path
) -> None:
    built = trail.export(db)
    folder = tmp_path / "export"
    audit_export.write_folder(built, folder)
    data = bytearray(built.files[ENTRIES_FILE])
    third = data.index(b"\n", data.index(b"\n") + 1) + 1  # start of line 3
    at = data.index(b'"actor":"user:98"', third) + len('"actor":"user:9')
    data[at : at + 1] = b"7"
    (folder / ENTRIES_FILE).write_bytes(bytes(data))
    done = _run_verifier(folder, _verifier_copy(tmp_path))
    assert done.returncode == 1
    assert done.stdout == (
        f"FAIL at seq {trail.inside[2]}: leaf_hash does not match the entry content "
        "(entry was altered) [line 3, check: leaf-hash]\n"
    )


def test_documented_command_rejects_a_tampered_tree_head(
    trail: Trail, db: Session, tmp_path: Path
) -> None:
    built = trail.export(db)
    folder = tmp_path / "export"
    audit_export.write_folder(built, folder)
    sth = json.loads(built.files[STH_FILE])
    sth["tree_size"] -= 1
    (folder / STH_FILE).write_text(json.dumps(sth))
    done = _run_verifier(folder, _verifier_copy(tmp_path))
    assert done.returncode == 1
    assert done.stdout == ("FAIL: STH signature does not verify with the public key [check: sth]\n")


def test_documented_command_rejects_another_key(trail: Trail, db: Session, tmp_path: Path) -> None:
    built = trail.export(db)
    folder = tmp_path / "export"
    audit_export.write_folder(built, folder)
    (folder / KEY_FILE).write_bytes(keys.public_key_pem(Ed25519PrivateKey.generate()))
    done = _run_verifier(folder, _verifier_copy(tmp_path))
    assert done.returncode == 1
    assert done.stdout.startswith(f"FAIL: STH log_id {built.sth['log_id']} does not match")
    assert done.stdout.endswith(") [check: sth]\n")


# --- tampering with the entries, in memory ---------------------------------------------------


@pytest.fixture
def small(trail: Trail, db: Session) -> AuditExport:
    """A small filtered export (4 lines, with proofs): small enough to flip every byte."""
    built = trail.export(db, Filters(patient_id=trail.world.patients["pa1"].pseudonym))
    db.commit()
    return built


@pytest.fixture
def whole(trail: Trail, db: Session) -> AuditExport:
    """The whole log (no proofs: the root is recomputed)."""
    everything = Period(trail.period.start - timedelta(days=30), trail.now + timedelta(days=1))
    built = trail.export(db, period=everything)
    db.commit()
    return built


def _assert_located(built: AuditExport, data: bytes, position: int) -> None:
    result = _verify(data, built)
    assert not result.ok, f"byte {position} changed, not detected"
    assert result.line == _line_of(data, position), (position, result)
    assert result.check is not None
    assert result.reason


@pytest.mark.parametrize("kind", ["small", "whole"])
def test_every_single_byte_change_is_detected_and_located(
    kind: str, request: pytest.FixtureRequest
) -> None:
    built: AuditExport = request.getfixturevalue(kind)
    original = built.files[ENTRIES_FILE]
    assert _verify(original, built).ok
    for position in range(len(original)):
        data = bytearray(original)
        data[position] ^= 0x01  # '0'<->'1', 'a'<->'`', '"'<->'#', ':'<->';', '\n'<->'\x0b'
        _assert_located(built, bytes(data), position)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(where=st.floats(min_value=0, max_value=1, exclude_max=True), value=st.integers(0, 255))
def test_any_byte_value_at_any_position_is_detected_and_located(
    small: AuditExport, where: float, value: int
) -> None:
    original = small.files[ENTRIES_FILE]
    position = int(where * len(original))
    if original[position] == value:
        value = (value + 1) % 256
    data = bytearray(original)
    data[position] = value
    _assert_located(small, bytes(data), position)


@pytest.mark.parametrize("value", [b" ", b"\t", b"\r", b"\n"])
def test_whitespace_in_place_of_any_byte_is_detected_and_located(
    small: AuditExport, value: bytes
) -> None:
    original = small.files[ENTRIES_FILE]
    for position in range(len(original)):
        if original[position : position + 1] == value:
            continue
        data = original[:position] + value + original[position + 1 :]
        _assert_located(small, data, position)


def test_strict_catches_a_trailing_space_the_content_checks_allow(small: AuditExport) -> None:
    data = small.files[ENTRIES_FILE][:-1] + b" "
    assert _verify(data, small, strict=False).ok  # the same JSON content
    result = _verify(data, small)
    assert (result.ok, result.line, result.check) == (False, 4, "canonical")


def test_dropped_line_is_located(small: AuditExport) -> None:
    lines = small.files[ENTRIES_FILE].splitlines(keepends=True)
    seqs = [json.loads(line)["entry"]["seq"] for line in lines]
    for gone in range(len(lines)):
        data = b"".join(lines[:gone] + lines[gone + 1 :])
        result = _verify(data, small)
        assert (result.ok, result.first_bad_seq, result.check) == (
            False,
            seqs[gone],
            "expected-seqs",
        )
        assert result.line == (gone + 1 if gone < len(lines) - 1 else None)
        assert f"expected seq {seqs[gone]} is missing" in (result.reason or "")


def test_dropped_line_passes_proofs_alone(small: AuditExport) -> None:
    """Why the command names the seqs: each proof holds on its own, so only the list of
    expected seqs reveals a removed line of a partial export."""
    lines = small.files[ENTRIES_FILE].splitlines(keepends=True)
    data = b"".join(lines[:1] + lines[2:])
    assert _verify(data, small, strict=False, expected_seqs=None).ok
    assert not _verify(data, small).ok


def test_reordered_lines_are_located(small: AuditExport) -> None:
    lines = small.files[ENTRIES_FILE].splitlines(keepends=True)
    seqs = [json.loads(line)["entry"]["seq"] for line in lines]
    lines[1], lines[2] = lines[2], lines[1]
    result = _verify(b"".join(lines), small)
    assert (result.ok, result.line, result.first_bad_seq) == (False, 2, seqs[1])
    assert result.check == "expected-seqs"
    # Without the expected seqs, the order check finds it one line later.
    result = _verify(b"".join(lines), small, expected_seqs=None)
    assert (result.ok, result.line, result.check) == (False, 3, "order")


def test_dropped_and_reordered_lines_of_the_whole_log_are_located(whole: AuditExport) -> None:
    lines = whole.files[ENTRIES_FILE].splitlines(keepends=True)
    dropped = _verify(b"".join(lines[:4] + lines[5:]), whole, expected_seqs=None, strict=False)
    assert (dropped.ok, dropped.line, dropped.first_bad_seq, dropped.check) == (
        False,
        5,
        5,
        "order",
    )
    lines[6], lines[7] = lines[7], lines[6]
    swapped = _verify(b"".join(lines), whole, expected_seqs=None, strict=False)
    assert (swapped.ok, swapped.line, swapped.first_bad_seq, swapped.check) == (
        False,
        7,
        7,
        "order",
    )
