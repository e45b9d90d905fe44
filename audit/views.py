"""The audit log over HTTP: entries, tree heads, proofs, exports and checkpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlmodel import col

from app.api.deps import MAX_DB_INT, Access, SessionDep, require
from app.core.errors import ProblemError
from audit import keys, service
from audit.models import AuditEntry

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class EntryRead(BaseModel):
    """One audit entry with its leaf hash."""

    seq: int
    ts: str
    actor: str
    actor_role: str
    action: str
    resource_type: str
    resource_id: str | None
    patient_id: str | None
    outcome: str
    request_id: str | None
    details: dict[str, Any]
    prev_leaf_hash: str
    leaf_hash: str


class TreeHead(BaseModel):
    """A signed tree head, as the standalone verifier reads it."""

    log_id: str
    tree_size: int
    root_hash: str
    timestamp: str
    signature: str


class Proof(BaseModel):
    """A Merkle proof (hex hashes, RFC 9162)."""

    tree_size: int
    leaf_index: int | None = None
    first: int | None = None
    second: int | None = None
    leaf_hash: str | None = None
    proof: list[str]


@router.get("/entries", response_model=list[EntryRead])
def list_entries(
    session: SessionDep,
    access: Annotated[Access, require("audit", "read")],
    after_seq: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    patient_id: Annotated[str | None, Query(max_length=36)] = None,
    actor: Annotated[str | None, Query(max_length=100)] = None,
) -> list[EntryRead]:
    """Entries after a sequence number, optionally for one patient or actor."""
    stmt = select(AuditEntry).where(col(AuditEntry.seq) > after_seq)
    if patient_id:
        stmt = stmt.where(col(AuditEntry.patient_id) == patient_id)
    if actor:
        stmt = stmt.where(col(AuditEntry.actor) == actor)
    rows = session.scalars(stmt.order_by(col(AuditEntry.seq)).limit(limit)).all()
    access.entry.details = {
        "after_seq": after_seq,
        "count": len(rows),
        "patient_filter": patient_id,
        "actor_filter": actor,
    }
    session.commit()
    return [EntryRead(**{**service.entry_fields(r), "leaf_hash": r.leaf_hash}) for r in rows]


@router.get("/sth", response_model=TreeHead)
def read_latest_sth(
    session: SessionDep, access: Annotated[Access, require("audit_sth", "read")]
) -> TreeHead:
    """The newest signed tree head."""
    sth = service.latest_sth(session)
    if sth is None:
        raise ProblemError(404, "no_checkpoint", "no tree head has been signed yet")
    session.commit()
    return TreeHead(**service.sth_document(sth))


@router.get("/public-key", response_class=PlainTextResponse)
def read_public_key(
    request: Request, session: SessionDep, access: Annotated[Access, require("audit_sth", "read")]
) -> str:
    """The tree-head signing key (PEM); auditors should also pin it out of band."""
    session.commit()
    key = keys.load_signing_key(request.app.state.settings.signing_key_path)
    return keys.public_key_pem(key).decode()


@router.post("/checkpoints", response_model=TreeHead, status_code=201)
def create_checkpoint(
    request: Request, session: SessionDep, access: Annotated[Access, require("audit", "checkpoint")]
) -> TreeHead:
    """Sign a tree head over the log as it stands."""
    key = keys.load_signing_key(request.app.state.settings.signing_key_path)
    sth = service.checkpoint(session, key=key)
    access.entry.details = {"tree_size": sth.tree_size, "root_hash": sth.root_hash}
    session.commit()
    return TreeHead(**service.sth_document(sth))


@router.get("/proofs/inclusion", response_model=Proof)
def inclusion_proof(
    session: SessionDep,
    access: Annotated[Access, require("audit_proof", "read")],
    seq: Annotated[int, Query(ge=1, le=MAX_DB_INT)],
    tree_size: Annotated[int, Query(ge=1, le=MAX_DB_INT)],
) -> Proof:
    """Prove entry `seq` is in the tree of `tree_size` entries."""
    try:
        path = service.inclusion(session, seq=seq, size=tree_size)
    except service.ProofUnavailable as exc:
        raise ProblemError(422, "proof_unavailable", str(exc)) from exc
    entry = session.get(AuditEntry, seq)
    access.entry.details = {"seq": seq, "tree_size": tree_size}
    session.commit()
    return Proof(
        tree_size=tree_size,
        leaf_index=seq - 1,
        leaf_hash=entry.leaf_hash if entry else None,
        proof=path,
    )


@router.get("/proofs/consistency", response_model=Proof)
def consistency_proof(
    session: SessionDep,
    access: Annotated[Access, require("audit_proof", "read")],
    first: Annotated[int, Query(ge=1, le=MAX_DB_INT)],
    second: Annotated[int, Query(ge=1, le=MAX_DB_INT)],
) -> Proof:
    """Prove the tree of `first` entries is a prefix of the tree of `second`."""
    try:
        path = service.consistency(session, first=first, second=second)
    except service.ProofUnavailable as exc:
        raise ProblemError(422, "proof_unavailable", str(exc)) from exc
    access.entry.details = {"first": first, "second": second}
    session.commit()
    return Proof(tree_size=second, first=first, second=second, proof=path)


@router.get("/export")
def export_entries(
    session: SessionDep,
    access: Annotated[Access, require("audit_export", "read")],
    from_seq: Annotated[int, Query(ge=1, le=MAX_DB_INT)] = 1,
    to_seq: Annotated[int | None, Query(ge=1, le=MAX_DB_INT)] = None,
) -> StreamingResponse:
    """Entries covered by the latest tree head, as JSON Lines with inclusion proofs.

    Save it with the tree head (`GET /sth`) and run the standalone verifier on both.
    """
    sth = service.latest_sth(session)
    if sth is None:
        raise ProblemError(409, "no_checkpoint", "sign a tree head first")
    last = min(to_seq or sth.tree_size, sth.tree_size)
    lines = list(service.export_lines(session, sth=sth, from_seq=from_seq, to_seq=last))
    access.entry.details = {
        "from_seq": from_seq,
        "to_seq": last,
        "tree_size": sth.tree_size,
        "count": len(lines),
    }
    session.commit()

    def body() -> Iterator[str]:
        for line in lines:
            yield json.dumps(line, sort_keys=True) + "\n"

    return StreamingResponse(
        body(), media_type="application/x-ndjson", headers={"x-tree-size": str(sth.tree_size)}
    )
