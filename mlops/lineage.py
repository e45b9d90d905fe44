"""What the registry says about a model version, as the API and the CLI show it: the listing,
the lineage (parent chain, training snapshot, code, parameters, metrics, privacy), the
validation runs with their evidence, the sign-offs with their signatures checked, the
transitions, and the serving history. Reads only; aggregates only, no patient rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from mlops import lifecycle
from mlops.models import ModelSignoff, ModelTransition, ModelVersion, TrainingSnapshot
from validation.models import GateResult

_MAX_PARENTS = 50  # a parent chain longer than this is cut (and says so)


class VersionBrief(BaseModel):
    """One version in a listing."""

    name: str
    version: int
    label: str
    status: str
    aliases: list[str]
    parent_version: int | None
    data_hash: str
    artifact_sha256: str
    code_version: str
    epsilon: float | None
    created_by: str
    created_at: datetime


class ModelListing(BaseModel):
    """Versions, newest first, with the aliases of each model."""

    items: list[VersionBrief]
    aliases: dict[str, dict[str, int]]


class GateRead(BaseModel):
    """One gate's verdict in a validation run."""

    gate: str
    passed: bool
    champion_version: int | None
    measured: dict[str, Any]
    threshold: dict[str, Any]
    detail: str
    evidence_path: str | None
    evidence_sha256: str | None


class GateRunRead(BaseModel):
    """One validation run: every gate, and whether all passed."""

    run_id: str
    passed: bool
    created_by: str
    created_at: datetime
    failed: list[str]
    gates: list[GateRead]


class SignoffRead(BaseModel):
    """A sign-off: the signature's manifestation (printed name, meaning, UTC time), the
    signed record's hash, the signature, and whether it verifies now."""

    role: str
    signer_id: int
    signer_name: str
    meaning: str
    note: str
    signed_at: datetime
    record_sha256: str
    signature: str
    signature_valid: bool


class TransitionRead(BaseModel):
    """One lifecycle change: from, to, who, why, when."""

    version: int
    from_status: str | None
    to_status: str
    actor: str
    reason: str
    details: dict[str, Any]
    at: datetime


class SnapshotRead(BaseModel):
    """The training snapshot a version was trained on (when it was one)."""

    id: int
    content_hash: str
    cohort: str
    source: str
    feature_set: str
    rows: int
    patients: int
    train_patients: int
    holdout_patients: int
    status: str
    created_at: datetime


class Lineage(VersionBrief):
    """A version in full: where it came from, how it was made, how it was judged."""

    parents: list[VersionBrief]
    parents_truncated: bool
    snapshot: SnapshotRead | None
    feature_names: list[str]
    params: dict[str, Any]
    metrics: dict[str, Any]
    privacy: dict[str, Any]
    validation_runs: list[GateRunRead]
    signoffs: list[SignoffRead]
    signoff_meanings: dict[str, str]
    transitions: list[TransitionRead]
    ready_for_rollout: list[str]


class IntervalRead(BaseModel):
    """One stretch of time a version served in production (`end` null: it still does)."""

    version: int
    label: str
    start: datetime
    end: datetime | None
    started_by: str
    start_reason: str
    ended_by: str | None
    end_reason: str | None


class ServingHistory(BaseModel):
    """Which version served when, the aliases now, and every transition of the model."""

    name: str
    champion: int | None
    aliases: dict[str, int]
    intervals: list[IntervalRead]
    transitions: list[TransitionRead]


def brief(version: ModelVersion, aliases: dict[str, int]) -> VersionBrief:
    """The listing form of a version, with the aliases pointing at it."""
    epsilon = version.privacy.get("epsilon")
    return VersionBrief(
        name=version.name,
        version=version.version,
        label=lifecycle.label(version.name, version.version),
        status=version.status,
        aliases=sorted(a for a, v in aliases.items() if v == version.version),
        parent_version=version.parent_version,
        data_hash=version.data_hash,
        artifact_sha256=version.artifact_sha256,
        code_version=version.code_version,
        epsilon=float(epsilon) if isinstance(epsilon, int | float) else None,
        created_by=version.created_by,
        created_at=version.created_at,
    )


def listing(session: Session, *, name: str | None = None, limit: int = 200) -> ModelListing:
    """Registered versions, newest first (of one model when `name` is given)."""
    stmt = select(ModelVersion).order_by(
        col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc()
    )
    if name is not None:
        stmt = stmt.where(col(ModelVersion.name) == name)
    versions = list(session.scalars(stmt.limit(limit)))
    names = sorted({v.name for v in versions})
    aliases = {n: lifecycle.aliases(session, name=n) for n in names}
    return ModelListing(items=[brief(v, aliases[v.name]) for v in versions], aliases=aliases)


def _transition(row: ModelTransition) -> TransitionRead:
    return TransitionRead(
        version=row.version,
        from_status=row.from_status,
        to_status=row.to_status,
        actor=row.actor,
        reason=row.reason,
        details=row.details,
        at=row.at,
    )


def gate_run(run_id: str, results: list[GateResult]) -> GateRunRead:
    """A validation run's results as shown."""
    first = results[0]
    return GateRunRead(
        run_id=run_id,
        passed=lifecycle.run_passed(results),
        created_by=first.created_by,
        created_at=first.created_at,
        failed=[r.gate for r in results if not r.passed],
        gates=[
            GateRead(
                gate=r.gate,
                passed=r.passed,
                champion_version=r.champion_version,
                measured=r.measured,
                threshold=r.threshold,
                detail=r.detail,
                evidence_path=r.evidence_path,
                evidence_sha256=r.evidence_sha256,
            )
            for r in results
        ],
    )


def signoff_read(
    row: ModelSignoff, version: ModelVersion, public_key: Ed25519PublicKey
) -> SignoffRead:
    """A sign-off as shown, its signature verified against the audit public key."""
    return SignoffRead(
        role=row.signoff_role,
        signer_id=row.signer_id,
        signer_name=row.signer_name,
        meaning=row.meaning,
        note=row.note,
        signed_at=row.signed_at,
        record_sha256=row.record_sha256,
        signature=row.signature,
        signature_valid=lifecycle.verify_signoff(row, version, public_key=public_key),
    )


def _parents(session: Session, version: ModelVersion) -> tuple[list[ModelVersion], bool]:
    chain: list[ModelVersion] = []
    seen = {version.version}
    parent = version.parent_version
    while parent is not None and parent not in seen:
        if len(chain) >= _MAX_PARENTS:
            return chain, True
        try:
            found = lifecycle.get_version(session, name=version.name, version=parent)
        except lifecycle.ModelNotFound:
            break
        chain.append(found)
        seen.add(parent)
        parent = found.parent_version
    return chain, False


def lineage(session: Session, version: ModelVersion, *, public_key: Ed25519PublicKey) -> Lineage:
    """Everything the registry knows about a version."""
    aliases = lifecycle.aliases(session, name=version.name)
    parents, truncated = _parents(session, version)
    snapshot = session.scalars(
        select(TrainingSnapshot).where(col(TrainingSnapshot.content_hash) == version.data_hash)
    ).first()
    runs = lifecycle.gate_runs(session, name=version.name, version=version.version)
    return Lineage(
        **brief(version, aliases).model_dump(),
        parents=[brief(p, aliases) for p in parents],
        parents_truncated=truncated,
        snapshot=None
        if snapshot is None
        else SnapshotRead(
            id=snapshot.id or 0,
            content_hash=snapshot.content_hash,
            cohort=snapshot.cohort,
            source=snapshot.source,
            feature_set=snapshot.feature_set,
            rows=snapshot.rows,
            patients=snapshot.patients,
            train_patients=snapshot.train_patients,
            holdout_patients=snapshot.holdout_patients,
            status=snapshot.status,
            created_at=snapshot.created_at,
        ),
        feature_names=list(version.feature_names),
        params=version.params,
        metrics=version.metrics,
        privacy=version.privacy,
        validation_runs=[gate_run(run_id, results) for run_id, results in runs.items()],
        signoffs=[
            signoff_read(s, version, public_key)
            for s in lifecycle.signoffs(session, name=version.name, version=version.version)
        ],
        signoff_meanings={str(k): v for k, v in lifecycle.SIGNOFF_MEANINGS.items()},
        transitions=[
            _transition(t)
            for t in lifecycle.transitions(session, name=version.name, version=version.version)
        ],
        ready_for_rollout=lifecycle.ready_for_rollout(
            session, name=version.name, version=version.version
        ),
    )


def history(session: Session, *, name: str) -> ServingHistory:
    """The serving history of a model, its aliases and its transitions."""
    champ = lifecycle.champion(session, name=name)
    return ServingHistory(
        name=name,
        champion=champ.version if champ is not None else None,
        aliases=lifecycle.aliases(session, name=name),
        intervals=[
            IntervalRead(
                version=i.version,
                label=lifecycle.label(name, i.version),
                start=i.start,
                end=i.end,
                started_by=i.started_by,
                start_reason=i.start_reason,
                ended_by=i.ended_by,
                end_reason=i.end_reason,
            )
            for i in lifecycle.serving_history(session, name=name)
        ],
        transitions=[_transition(t) for t in lifecycle.transitions(session, name=name)],
    )
