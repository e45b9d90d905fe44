"""Append audit entries in the same transaction as the act; checkpoint, prove and verify."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import event, insert, select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from app.core.context import current_request_id
from audit import merkle
from audit.canonical import canonical_json, entry_leaf_hash, sth_signing_bytes
from audit.models import AuditEntry, Outcome, SignedTreeHead
from audit.verifier import log_id_for, sign_sth

_PENDING = "clinaiops.audit.pending"
# An arbitrary, fixed 64-bit key naming "the audit append" among advisory locks.
AUDIT_LOCK_KEY = 0x434C4E41554454


@dataclass
class PendingEntry:
    """An audit entry waiting for its transaction to commit; routes may enrich it until then."""

    actor: str
    actor_role: str
    action: str
    resource_type: str
    resource_id: str | None = None
    patient_id: str | None = None
    outcome: Outcome = Outcome.SUCCESS
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    written: bool = False


def record(
    session: Session,
    *,
    actor: str,
    actor_role: str,
    action: str,
    resource_type: str,
    resource_id: str | None = None,
    patient_id: str | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    details: Mapping[str, Any] | None = None,
    request_id: str | None = None,
) -> PendingEntry:
    """Queue an entry; it is written by the session's next commit, or dropped by rollback."""
    entry = PendingEntry(
        actor=actor,
        actor_role=actor_role,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        patient_id=patient_id,
        outcome=outcome,
        request_id=request_id if request_id is not None else current_request_id(),
        details=dict(details or {}),
    )
    session.info.setdefault(_PENDING, []).append(entry)
    return entry


def requeue(session: Session, entry: PendingEntry) -> PendingEntry:
    """Queue an entry again after a rollback dropped it (e.g. to record a refusal)."""
    session.info.setdefault(_PENDING, []).append(entry)
    return entry


def end_read(session: Session) -> None:
    """End the session's transaction without writing, keeping the entries queued on it.

    For long CPU work between the authorization reads and the writes (parsing a large
    body): on SQLite the transaction holds the single writer slot, so it is given back.
    """
    queued = session.info.pop(_PENDING, [])
    session.rollback()
    session.info[_PENDING] = queued


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A SAVEPOINT that leaves the request's queued audit entries alone.

    The audit hooks run at every commit and rollback of the session, nested ones included:
    releasing a savepoint would write the queued entries early (before the route has filled
    them in), and rolling one back would drop them all. Queue nothing inside the savepoint.
    """
    queued = session.info.pop(_PENDING, None)
    try:
        with session.begin_nested():
            yield
    finally:
        if queued is not None:
            session.info[_PENDING] = queued


def _flush_pending(session: Session) -> None:
    entries: list[PendingEntry] = session.info.pop(_PENDING, [])
    if entries:
        append(session, entries)


def _drop_pending(session: Session, *_: object) -> None:
    session.info.pop(_PENDING, None)


# Every Session, whichever factory made it, writes its queued entries at commit. Registered
# once, on the class, when this module is imported: per-factory registration was keyed by
# object id in SQLAlchemy's event registry, and a new factory reusing a collected one's id
# could be taken as already registered, silently losing its sessions' entries.
event.listen(Session, "before_commit", _flush_pending)
event.listen(Session, "after_rollback", _drop_pending)


_AUDIT_TABLE = AuditEntry.__table__  # type: ignore[attr-defined]
# Core statements built once: the append runs on every commit, on the hot path.
_LAST_ENTRY = (
    select(_AUDIT_TABLE.c.seq, _AUDIT_TABLE.c.leaf_hash)
    .order_by(_AUDIT_TABLE.c.seq.desc())
    .limit(1)
)
_INSERT_ENTRY = insert(_AUDIT_TABLE)


def append(session: Session, entries: list[PendingEntry]) -> list[dict[str, Any]]:
    """Write entries with the next gap-free sequence numbers, hash-linked to the last one.

    Returns the stored rows' values (a Core insert: no ORM objects on the commit path).
    """
    if session.get_bind().dialect.name == "postgresql":
        # Serialises appenders until commit, so sequence numbers stay gap-free and in commit
        # order. An advisory lock needs no table privilege: the app's role keeps only
        # SELECT and INSERT on the audit tables (LOCK TABLE would need UPDATE).
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
    # SQLite transactions start with BEGIN IMMEDIATE (app.db), so writers are already serial.
    last = session.execute(_LAST_ENTRY).first()
    seq, prev = (int(last[0]), str(last[1])) if last else (0, "")
    now = clock.utcnow()
    ts = clock.iso(now)
    rows: list[dict[str, Any]] = []
    for item in entries:
        seq += 1
        details = canonical_json(item.details)
        outcome = str(item.outcome)
        fields = {
            "seq": seq,
            "ts": ts,
            "actor": item.actor,
            "actor_role": item.actor_role,
            "action": item.action,
            "resource_type": item.resource_type,
            "resource_id": item.resource_id,
            "patient_id": item.patient_id,
            "outcome": outcome,
            "request_id": item.request_id,
            "details": json.loads(details),
            "prev_leaf_hash": prev,
        }
        leaf = entry_leaf_hash(fields).hex()
        rows.append(
            {
                "seq": seq,
                "ts": now,
                "actor": item.actor,
                "actor_role": item.actor_role,
                "action": item.action,
                "resource_type": item.resource_type,
                "resource_id": item.resource_id,
                "patient_id": item.patient_id,
                "outcome": outcome,
                "request_id": item.request_id,
                "details": details.decode("utf-8"),
                "prev_leaf_hash": prev,
                "leaf_hash": leaf,
            }
        )
        item.written = True
        prev = leaf
    session.execute(_INSERT_ENTRY, rows)
    return rows


def entry_fields(row: AuditEntry) -> dict[str, Any]:
    """The hashed fields of a stored entry, exactly as the verifier recomputes them."""
    return {
        "seq": row.seq,
        "ts": clock.iso(row.ts),
        "actor": row.actor,
        "actor_role": row.actor_role,
        "action": row.action,
        "resource_type": row.resource_type,
        "resource_id": row.resource_id,
        "patient_id": row.patient_id,
        "outcome": row.outcome,
        "request_id": row.request_id,
        "details": json.loads(row.details),
        "prev_leaf_hash": row.prev_leaf_hash,
    }


def tree_size(session: Session) -> int:
    """Number of entries in the log."""
    last = session.execute(
        select(col(AuditEntry.seq)).order_by(col(AuditEntry.seq).desc()).limit(1)
    )
    return int(last.scalar() or 0)


def leaf_hashes(session: Session, size: int | None = None) -> list[bytes]:
    """Stored leaf hashes in order, for the first `size` entries (all by default)."""
    stmt = select(col(AuditEntry.leaf_hash)).order_by(col(AuditEntry.seq))
    if size is not None:
        stmt = stmt.where(col(AuditEntry.seq) <= size)
    return [bytes.fromhex(h) for h in session.scalars(stmt)]


def iter_entries(session: Session, *, after: int = 0, batch: int = 5000) -> Iterator[AuditEntry]:
    """Entries after `after` in sequence order, read in batches so memory stays flat."""
    while True:
        rows = session.scalars(
            select(AuditEntry)
            .where(col(AuditEntry.seq) > after)
            .order_by(col(AuditEntry.seq))
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].seq


def checkpoint(session: Session, *, key: Ed25519PrivateKey) -> SignedTreeHead:
    """Sign a tree head over every entry committed so far."""
    size = tree_size(session)
    root = merkle.root_hash(leaf_hashes(session, size)).hex()
    now = clock.utcnow()
    signed = sign_sth(key, tree_size=size, root_hash_hex=root, timestamp=clock.iso(now))
    sth = SignedTreeHead(
        tree_size=size,
        root_hash=root,
        timestamp=signed["timestamp"],
        log_id=signed["log_id"],
        signature=signed["signature"],
        created_at=now,
    )
    session.add(sth)
    session.flush()
    return sth


def latest_sth(session: Session) -> SignedTreeHead | None:
    """The newest signed tree head, if any."""
    return session.scalars(
        select(SignedTreeHead).order_by(col(SignedTreeHead.id).desc()).limit(1)
    ).first()


def sth_document(sth: SignedTreeHead) -> dict[str, Any]:
    """A tree head in the JSON form the standalone verifier reads."""
    return {
        "log_id": sth.log_id,
        "tree_size": sth.tree_size,
        "root_hash": sth.root_hash,
        "timestamp": sth.timestamp,
        "signature": sth.signature,
    }


class ProofUnavailable(ValueError):
    """Raised when a proof is asked for sizes or indexes the log cannot answer."""


def inclusion(session: Session, *, seq: int, size: int) -> list[str]:
    """Audit path (hex) proving entry `seq` is in the tree of `size` entries."""
    total = tree_size(session)
    if not (1 <= seq <= size <= total):
        raise ProofUnavailable(f"need 1 <= seq <= tree_size <= {total}")
    return [h.hex() for h in merkle.inclusion_proof(leaf_hashes(session, size), seq - 1, size)]


def consistency(session: Session, *, first: int, second: int) -> list[str]:
    """Proof (hex) that the tree of `first` entries is a prefix of the tree of `second`."""
    total = tree_size(session)
    if not (1 <= first <= second <= total):
        raise ProofUnavailable(f"need 1 <= first <= second <= {total}")
    return [h.hex() for h in merkle.consistency_proof(leaf_hashes(session, second), first, second)]


def _sth_problem(doc: Mapping[str, Any], public_key: Ed25519PublicKey) -> str | None:
    try:
        public_key.verify(base64.b64decode(doc["signature"], validate=True), sth_signing_bytes(doc))
    except (InvalidSignature, binascii.Error, ValueError):
        return "signature does not verify"
    return None


@dataclass(frozen=True)
class LogVerification:
    """What `audit verify` found: ok, or the first bad sequence number and why."""

    ok: bool
    entries: int
    tree_heads: int
    root_hash: str
    first_bad_seq: int | None = None
    reason: str | None = None


def verify_log(session: Session, *, public_key: Ed25519PublicKey) -> LogVerification:
    """Recompute every leaf, link, root and tree-head signature from the database."""
    heads = session.scalars(select(SignedTreeHead).order_by(col(SignedTreeHead.tree_size))).all()
    expected_log = log_id_for(public_key)
    for sth in heads:
        problem = _sth_problem(sth_document(sth), public_key)
        if problem is None and sth.log_id != expected_log:
            problem = "signed by a different key"
        if problem:
            return LogVerification(
                False, 0, len(heads), "", None, f"tree head of size {sth.tree_size}: {problem}"
            )
    pending_heads = list(heads)
    compact = merkle.CompactRange()
    count, expected_seq, prev = 0, 1, ""
    for row in iter_entries(session):
        fields = entry_fields(row)
        if row.seq != expected_seq:
            return LogVerification(
                False,
                count,
                len(heads),
                "",
                expected_seq,
                f"sequence gap: expected {expected_seq}, found {row.seq}",
            )
        leaf = entry_leaf_hash(fields)
        if leaf.hex() != row.leaf_hash:
            return LogVerification(
                False, count, len(heads), "", row.seq, "entry content does not match its leaf hash"
            )
        if row.prev_leaf_hash != prev:
            return LogVerification(
                False,
                count,
                len(heads),
                "",
                row.seq,
                f"hash link broken: prev_leaf_hash differs from seq "
                f"{row.seq - 1}'s leaf hash (entry {row.seq - 1} or "
                f"{row.seq} altered)",
            )
        compact.append(leaf)
        count, expected_seq, prev = count + 1, expected_seq + 1, leaf.hex()
        while pending_heads and pending_heads[0].tree_size == count:
            sth = pending_heads.pop(0)
            if compact.root().hex() != sth.root_hash:
                return LogVerification(
                    False,
                    count,
                    len(heads),
                    "",
                    row.seq,
                    f"root of the first {count} entries differs from the signed tree head",
                )
    for sth in pending_heads:
        if sth.tree_size == 0 and sth.root_hash == merkle.EMPTY_ROOT.hex():
            continue
        return LogVerification(
            False,
            count,
            len(heads),
            "",
            None,
            f"tree head of size {sth.tree_size} is larger than the log "
            f"({count} entries): entries were removed",
        )
    return LogVerification(True, count, len(heads), compact.root().hex())


def export_lines(
    session: Session, *, sth: SignedTreeHead, from_seq: int, to_seq: int
) -> Iterator[dict[str, Any]]:
    """Export records for the standalone verifier; proofs are added unless the export is whole."""
    whole = from_seq == 1 and to_seq == sth.tree_size
    hashes = [] if whole else leaf_hashes(session, sth.tree_size)
    for row in iter_entries(session, after=from_seq - 1):
        if row.seq > to_seq:
            return
        line: dict[str, Any] = {"entry": entry_fields(row), "leaf_hash": row.leaf_hash}
        if not whole:
            line["inclusion_proof"] = [
                h.hex() for h in merkle.inclusion_proof(hashes, row.seq - 1, sth.tree_size)
            ]
        yield line
