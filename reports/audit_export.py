"""The audit trail as evidence an auditor checks offline, without the server.

For a period (optionally narrowed to one patient or actor) `export` returns, as files in
memory (name -> bytes, for the API to zip or the monthly pack to write to a folder):

- `entries.jsonl`: the period's entries, one canonical JSON line each (`audit.canonical`:
  sorted keys, no spaces, UTF-8), shaped as `audit.service.export_lines` shapes them, with an
  inclusion proof per line unless the export is the whole log;
- `sth.json`: the signed tree head the proofs lead to; it covers the period's last entry;
- `public_key.pem`: the log's Ed25519 public key (the auditor should use a pinned copy);
- `expected-seqs.txt`: the sequence numbers the file holds, for `--expect-seqs-file`;
- `README.txt`: what the export is and the exact verifier command.

Reads only, unless the caller passes a signing key and the newest tree head does not cover
the period: then a new head is signed (flushed, not committed). The caller audits the export.
"""

from __future__ import annotations

import io
import json
import textwrap
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session
from sqlmodel import Session as SQLModelSession
from sqlmodel import col

from app.core import clock
from audit import keys, merkle
from audit import service as audit
from audit.canonical import canonical_json
from audit.models import AuditEntry, SignedTreeHead
from audit.verifier import VerifyResult, log_id_for, parse_seq_spec, verify_export
from reports.models import Filters, Period
from reports.trail_cells import actor_keys, names_patient, patient_of

ENTRIES_FILE: Final = "entries.jsonl"
STH_FILE: Final = "sth.json"
KEY_FILE: Final = "public_key.pem"
SEQS_FILE: Final = "expected-seqs.txt"
README_FILE: Final = "README.txt"
GUIDE: Final = "docs/auditor-guide.md"
# The command an auditor runs in the export's folder (the guide says where the verifier comes
# from); tests run exactly this.
VERIFY_ARGS: Final = (
    "--entries",
    ENTRIES_FILE,
    "--sth",
    STH_FILE,
    "--public-key",
    KEY_FILE,
    "--strict",
    "--expect-seqs-file",
    SEQS_FILE,
)
VERIFY_COMMAND: Final = "python -m audit.verifier " + " ".join(VERIFY_ARGS)


class NothingToExport(LookupError):
    """No audit entry of the period matches the filters: there is nothing to prove."""


class TreeHeadDoesNotCover(LookupError):
    """The newest signed tree head does not commit to the period's last entry."""

    def __init__(self, *, last_seq: int, tree_size: int | None) -> None:
        self.last_seq = last_seq
        self.tree_size = tree_size
        head = (
            "no tree head has been signed"
            if tree_size is None
            else (f"the newest signed tree head commits to {tree_size} entries")
        )
        super().__init__(
            f"{head}, but the period's entries run to seq {last_seq}: sign a new tree head "
            f"(`clinaiops audit checkpoint`, or the hourly audit_checkpoint job) first"
        )


class KeyMismatch(ValueError):
    """The public key given is not the key that signed the log's tree heads."""


@dataclass(frozen=True)
class Coverage:
    """Where the period's entries sit in the log, and whether the newest tree head covers them."""

    first_seq: int | None  # None: the period has no entries at all
    last_seq: int | None
    sth: SignedTreeHead | None  # the newest tree head, if any

    @property
    def covered(self) -> bool:
        """True when the newest tree head commits to every entry of the period."""
        if self.last_seq is None:
            return self.sth is not None
        return self.sth is not None and self.sth.tree_size >= self.last_seq


@dataclass(frozen=True)
class AuditExport:
    """A built export: its files and what they hold."""

    files: dict[str, bytes]
    period: Period
    filters: Filters
    seq_ranges: tuple[tuple[int, int], ...]  # ascending, disjoint (first, last) seq ranges
    count: int
    whole_log: bool  # every entry of the log: no proofs, the verifier recomputes the root
    filtered: bool  # narrowed by patient or actor: proves inclusion, not completeness
    sth: dict[str, Any]  # the tree head document, as in sth.json
    checkpointed: bool  # a new tree head was signed for this export

    @property
    def open_period(self) -> bool:
        """True when the tree head was signed before the period ended (later entries absent)."""
        signed = datetime.fromisoformat(str(self.sth["timestamp"]))
        return signed < self.period.end

    @property
    def seq_spec(self) -> str:
        """The seqs as the verifier's `--expect-seqs` reads them, e.g. "17-42,50"."""
        return seq_spec(self.seq_ranges)

    def audit_details(self) -> dict[str, Any]:
        """What the export's own audit entry records of it (no patient data beyond the id)."""
        return {
            "period_start": clock.iso(self.period.start),
            "period_end": clock.iso(self.period.end),
            "filters": dict(self.filters.describe()),
            "count": self.count,
            "seqs": self.seq_spec,
            "tree_size": self.sth["tree_size"],
            "root_hash": self.sth["root_hash"],
            "checkpointed": self.checkpointed,
        }


def seq_spec(ranges: Sequence[tuple[int, int]]) -> str:
    """Ranges as "1-5,9,12-14" (the verifier's `parse_seq_spec` reads it back)."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _ranges(seqs: Sequence[int]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for seq in seqs:
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return tuple(out)


def _in_period(period: Period) -> list[ColumnElement[bool]]:
    return [col(AuditEntry.ts) >= period.start, col(AuditEntry.ts) < period.end]


def coverage(session: Session, *, period: Period) -> Coverage:
    """The period's first and last seq (whatever the filters) and the newest tree head."""
    first, last = session.execute(
        select(func.min(col(AuditEntry.seq)), func.max(col(AuditEntry.seq))).where(
            *_in_period(period)
        )
    ).one()
    return Coverage(
        None if first is None else int(first),
        None if last is None else int(last),
        audit.latest_sth(session),
    )


def entry_conditions(
    session: Session, period: Period, filters: Filters
) -> list[ColumnElement[bool]]:
    """The period's entries under the filters: the same narrowing as the audit-trail report
    (reports.audit_trail), so an export holds exactly the rows that report lists."""
    where = _in_period(period)
    # The report helpers are annotated with sqlmodel's Session; they only call scalars().
    reader = cast(SQLModelSession, session)
    patient_id = patient_of(reader, filters.patient_id)
    if patient_id is not None:
        where.append(names_patient(patient_id))
    actors = actor_keys(reader, filters.actor)
    if actors is not None:
        where.append(col(AuditEntry.actor).in_(actors))
    return where


def _rows(
    session: Session, where: list[ColumnElement[bool]], *, batch: int = 5000
) -> Iterator[AuditEntry]:
    """Matching entries in seq order, read in batches."""
    after = 0
    while True:
        rows = session.scalars(
            select(AuditEntry)
            .where(*where, col(AuditEntry.seq) > after)
            .order_by(col(AuditEntry.seq))
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].seq


def _covering_head(
    session: Session,
    cover: Coverage,
    signing_key: Ed25519PrivateKey | None,
) -> tuple[SignedTreeHead, bool]:
    if cover.covered and cover.sth is not None:
        return cover.sth, False
    last = cover.last_seq or 0
    if signing_key is None:
        raise TreeHeadDoesNotCover(
            last_seq=last, tree_size=None if cover.sth is None else cover.sth.tree_size
        )
    sth = audit.checkpoint(session, key=signing_key)
    if sth.tree_size < last:  # cannot happen: the checkpoint reads the same log
        raise TreeHeadDoesNotCover(last_seq=last, tree_size=sth.tree_size)
    return sth, True


def _check_keys(
    sth: SignedTreeHead, public_key: Ed25519PublicKey, signing_key: Ed25519PrivateKey | None
) -> None:
    log_id = log_id_for(public_key)
    if signing_key is not None and log_id_for(signing_key.public_key()) != log_id:
        raise KeyMismatch("the signing key is not the public key's private half")
    if sth.log_id != log_id:
        raise KeyMismatch(
            f"the tree head was signed by log {sth.log_id}, not by the key given ({log_id})"
        )


def _line(row: AuditEntry, proof: list[bytes] | None) -> bytes:
    record: dict[str, Any] = {"entry": audit.entry_fields(row), "leaf_hash": row.leaf_hash}
    if proof is not None:
        record["inclusion_proof"] = [h.hex() for h in proof]
    return canonical_json(record) + b"\n"


def export(
    session: Session,
    *,
    period: Period,
    filters: Filters,
    public_key: Ed25519PublicKey,
    now: datetime,
    generated_by: str,
    signing_key: Ed25519PrivateKey | None = None,
) -> AuditExport:
    """Build the verifiable export of the period's entries (see the module docstring).

    Raises NothingToExport when no entry matches, TreeHeadDoesNotCover when the newest
    tree head ends before the period's last entry and no `signing_key` was given (with one,
    a new head is signed on the session), KeyMismatch when `public_key` did not sign it.
    `filters.model_version` and `filters.cohort` do not apply to the audit log.
    """
    cover = coverage(session, period=period)
    if cover.last_seq is None:
        raise NothingToExport("the audit log has no entries in the period")
    filtered = filters.patient_id is not None or filters.actor is not None
    # Bounded by the last seq seen above: an entry committed meanwhile (an open period on
    # PostgreSQL) would lie beyond the tree head.
    where = [*entry_conditions(session, period, filters), col(AuditEntry.seq) <= cover.last_seq]
    rows = list(_rows(session, where))
    if not rows:
        raise NothingToExport("no audit entry of the period matches the filters")
    sth, checkpointed = _covering_head(session, cover, signing_key)
    _check_keys(sth, public_key, signing_key)
    seqs = [row.seq for row in rows]
    whole = seqs[0] == 1 and seqs[-1] == sth.tree_size and len(seqs) == sth.tree_size
    # All perfect subtrees once, then O(log n) per proof (module-level proofs are O(n) each).
    tree = None if whole else merkle.MerkleTree(audit.leaf_hashes(session, sth.tree_size))
    entries = b"".join(
        _line(row, None if tree is None else tree.inclusion_proof(row.seq - 1, sth.tree_size))
        for row in rows
    )
    document = audit.sth_document(sth)
    ranges = _ranges(seqs)
    built = AuditExport(
        files={},
        period=period,
        filters=filters,
        seq_ranges=ranges,
        count=len(rows),
        whole_log=whole,
        filtered=filtered,
        sth=document,
        checkpointed=checkpointed,
    )
    built.files.update(
        {
            ENTRIES_FILE: entries,
            STH_FILE: (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8"),
            KEY_FILE: keys.public_key_pem(public_key),
            SEQS_FILE: (seq_spec(ranges) + "\n").encode("ascii"),
            README_FILE: readme(built, now=now, generated_by=generated_by).encode("utf-8"),
        }
    )
    return built


def _scope(built: AuditExport) -> str:
    if built.filtered:
        return (
            "only the period's entries that match the filters above. Each one is proven to be "
            "in the signed log at its sequence number; the file cannot prove that no other "
            "entry matches the filters (that is the server's claim)."
        )
    if built.whole_log:
        return (
            "every entry of the log, which equals the period's entries. The verifier "
            "recomputes the Merkle root from them and compares it with the signed one."
        )
    return (
        "every entry written in the period, in sequence. Each one is proven to be in the "
        "signed log at its sequence number, and --expect-seqs-file makes the verifier refuse the "
        "file if any of these sequence numbers is missing."
    )


def _field(label: str, text: str) -> str:
    """A README field whose value wraps under itself."""
    return textwrap.fill(text, width=92, initial_indent=f"{label:<19}", subsequent_indent=" " * 19)


def _open_note(built: AuditExport) -> str:
    if not built.open_period:
        return ""
    return (
        "\nNote: the tree head was signed before the period ended. Entries written after it\n"
        "are not in this export; a later export (after the next tree head) includes them.\n"
    )


def readme(built: AuditExport, *, now: datetime, generated_by: str) -> str:
    """The README.txt of an export: what it holds and the exact command that checks it."""
    sth = built.sth
    filters = ", ".join(f"{k} {v}" for k, v in built.filters.describe()) or "none"
    spec = built.seq_spec
    shown = spec if len(spec) <= 200 else f"{spec[:200]}... (see {SEQS_FILE})"
    expected = (
        f"OK: {built.count} entries, tree size {sth['tree_size']}, root {sth['root_hash']}; "
        "exactly the expected seqs; every line canonical"
    )
    return f"""ClinAIOps audit trail export
============================

Period:            {built.period.label()}
Filters:           {filters}
Entries:           {built.count}
Sequence numbers:  {shown}
{_field("Contents:", _scope(built))}

Signed tree head:  size {sth["tree_size"]}, signed at {sth["timestamp"]}
Root hash:         {sth["root_hash"]}
Log id (key):      {sth["log_id"]}
Generated:         {clock.iso(now)} by {generated_by}
{_open_note(built)}
Files
-----
{ENTRIES_FILE:<18} one audit entry per line (canonical JSON) with its leaf hash{
        "" if built.whole_log else " and inclusion proof"
    }
{STH_FILE:<18} the signed tree head (Ed25519) the entries are checked against
{KEY_FILE:<18} the log's public key as this server hands it out
{SEQS_FILE:<18} the sequence numbers {ENTRIES_FILE} must hold, no more and no fewer
{README_FILE:<18} this file

Verify offline
--------------
In this folder, with the standalone verifier importable (PYTHONPATH set to the folder that
holds its audit/ package; Python 3.11+ and the `cryptography` package; {GUIDE}
says how to set it up), run:

    {VERIFY_COMMAND}

Use the public key you pinned out of band in place of {KEY_FILE} if you have one; its log id
must be {sth["log_id"]}.
On success it prints, and exits with 0:

    {expected}

On failure it prints "FAIL ..." with the sequence number, the line of {ENTRIES_FILE} and the
check that failed, and exits with 1. Any changed byte of {ENTRIES_FILE}, a removed or
re-ordered line, an altered tree head or another key fails.

The check proves that these entries are in the signed log, unaltered, at these sequence
numbers. It does not prove that every act was recorded, and the tree head's time is the
server's own claim. See {GUIDE}, "Verifying an exported audit trail offline".
"""


def entries_lines(data: bytes) -> Iterator[str]:
    """Split an entries file into lines exactly as the verifier's CLI reads it from disk."""
    yield from io.TextIOWrapper(
        io.BytesIO(data), encoding="utf-8", errors="surrogateescape", newline=""
    )


def verify(built: AuditExport) -> VerifyResult:
    """Run the standalone verifier on the export in memory, as the README's command does."""
    return verify_export(
        entries_lines(built.files[ENTRIES_FILE]),
        json.loads(built.files[STH_FILE]),
        built.files[KEY_FILE],
        strict=True,
        expected_seqs=parse_seq_spec(built.files[SEQS_FILE].decode("ascii")),
    )


def write_folder(built: AuditExport, folder: Path) -> list[Path]:
    """Write the export's files into `folder` (created if missing); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in built.files.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def zip_bytes(built: AuditExport) -> bytes:
    """The export's files as one ZIP archive, dated at the tree head's signing time."""
    signed = datetime.fromisoformat(str(built.sth["timestamp"])).astimezone(UTC)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(built.files.items()):
            info = zipfile.ZipInfo(name, date_time=signed.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()
