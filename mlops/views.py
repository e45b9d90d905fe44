"""The model lifecycle over HTTP: training, the privacy ledger, versions and their lineage,
validation, sign-offs, rollout and rollback (ML engineers; clinical leads sign off)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.core import clock
from app.core.errors import ProblemError
from mlops import ledger as privacy_ledger
from mlops import retrain, snapshots
from mlops.models import TrainingSnapshot

router = APIRouter(prefix="/api/v1", tags=["models"])


# ------------------------------------------------------------------ part A: training, ledger
# Private retraining (mlops/retrain.py), the privacy ledger (mlops/ledger.py) and training
# snapshots (mlops/snapshots.py). Snapshots and the ledger hold aggregates only (counts,
# hashes, check results, epsilons): no patient rows. Training runs in the request; a refused
# run (data checks, budget, nothing new) is answered with its code and kept in the audit
# trail with the snapshot it built.

_COHORT = r"^[a-z][a-z0-9_-]{0,63}$"
_SNAPSHOT_ID = Annotated[int, Path(ge=1, le=2**31 - 1)]


class TrainBody(BaseModel):
    """Train a candidate now: on a cohort (`clinic`: clinician decisions; `simulated`: the
    protocol-labelled simulated cohort), to a target epsilon (default: the setting)."""

    target_epsilon: float | None = Field(default=None, gt=0, le=20)
    cohort: str = Field(default="clinic", pattern=_COHORT)


class LedgerEntryRead(BaseModel):
    """One run's cost."""

    id: int
    model: str
    snapshot_id: int | None
    epsilon: float
    delta: float
    accountant: str
    created_by: str
    created_at: str
    details: dict[str, Any]


class LedgerCohortRead(BaseModel):
    """A cohort's budget and what it has spent (basic composition: sums)."""

    cohort: str
    budget_epsilon: float
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    runs: int
    entries: list[LedgerEntryRead]


class LedgerRead(BaseModel):
    """The privacy ledger, per cohort."""

    composition: str
    cohorts: list[LedgerCohortRead]


class TrainedRead(BaseModel):
    """The candidate a training run registered, its privacy cost and the ledger after it."""

    model: str
    version: int
    status: str
    parent_version: int | None
    data_hash: str
    snapshot_id: int
    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    privacy_unit: str
    charged_epsilon: float
    accuracy: float | None
    baseline_accuracy: float | None
    ledger: LedgerCohortRead


class SnapshotBrief(BaseModel):
    """One training snapshot in a listing."""

    id: int
    content_hash: str
    cohort: str
    source: str
    feature_set: str
    rows: int
    patients: int
    train_patients: int
    holdout_patients: int
    label_counts: dict[str, int]
    status: str
    window_start: str | None
    window_end: str | None
    created_by: str
    created_at: str


class SnapshotPage(BaseModel):
    """Snapshots, newest first; pass `next_before` as `before` for the next page."""

    items: list[SnapshotBrief]
    next_before: int | None


class SnapshotDetail(SnapshotBrief):
    """A snapshot with its data checks (name, passed, measured, threshold, detail)."""

    file_sha256: str
    checks: list[dict[str, Any]]
    failed_checks: list[str]


def _iso(at: datetime | None) -> str | None:
    return clock.iso(at) if at is not None else None


def _snapshot_brief(s: TrainingSnapshot) -> SnapshotBrief:
    return SnapshotBrief(
        id=s.id or 0,
        content_hash=s.content_hash,
        cohort=s.cohort,
        source=s.source,
        feature_set=s.feature_set,
        rows=s.rows,
        patients=s.patients,
        train_patients=s.train_patients,
        holdout_patients=s.holdout_patients,
        label_counts=dict(s.label_counts),
        status=s.status,
        window_start=_iso(s.window_start),
        window_end=_iso(s.window_end),
        created_by=s.created_by,
        created_at=clock.iso(s.created_at),
    )


def _ledger_cohort(session: SessionDep, cohort: str, budget: float) -> LedgerCohortRead:
    totals = privacy_ledger.totals(session, cohort=cohort)
    return LedgerCohortRead(
        cohort=cohort,
        budget_epsilon=budget,
        spent_epsilon=totals.epsilon,
        spent_delta=totals.delta,
        remaining_epsilon=max(budget - totals.epsilon, 0.0),
        runs=totals.runs,
        entries=[
            LedgerEntryRead(
                id=e.id or 0,
                model=f"{e.model_name}:v{e.model_version}" if e.model_version else e.model_name,
                snapshot_id=e.snapshot_id,
                epsilon=e.epsilon,
                delta=e.delta,
                accountant=e.accountant,
                created_by=e.created_by,
                created_at=clock.iso(e.created_at),
                details=dict(e.details),
            )
            for e in privacy_ledger.entries(session, cohort=cohort)
        ],
    )


@router.post("/models/train", response_model=TrainedRead, status_code=201)
def train_model(
    body: TrainBody,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("model", "train")],
) -> TrainedRead:
    """Retrain with DP-SGD on a fresh snapshot of the cohort and register a candidate
    (it then waits for the gates and two sign-offs). 422/409 with the reason when refused."""
    try:
        result = retrain.retrain(
            session=session,
            settings=settings,
            now=clock.utcnow(),
            actor=access.principal.actor,
            actor_role=access.principal.role,
            cohort=body.cohort,
            target_epsilon=body.target_epsilon,
            reason="requested over the API",
            audit_entry=access.entry,
        )
    except retrain.RetrainRefused as exc:
        session.commit()  # the refusal's audit entry, and the snapshot with its checks
        raise ProblemError(exc.status, exc.code, exc.detail) from exc
    session.commit()
    version, privacy = result.version, result.version.privacy
    return TrainedRead(
        model=f"{version.name}:v{version.version}",
        version=version.version,
        status=version.status,
        parent_version=version.parent_version,
        data_hash=version.data_hash,
        snapshot_id=result.snapshot.id or 0,
        epsilon=result.epsilon,
        delta=result.delta,
        accountant=str(privacy["accountant"]),
        noise_multiplier=float(privacy["noise_multiplier"]),
        sample_rate=float(privacy["sample_rate"]),
        steps=int(privacy["steps"]),
        privacy_unit=str(privacy["privacy_unit"]),
        charged_epsilon=result.charged_epsilon,
        accuracy=version.metrics["dp"].get("accuracy"),
        baseline_accuracy=version.metrics["non_dp_baseline"].get("accuracy"),
        ledger=_ledger_cohort(session, body.cohort, result.budget),
    )


@router.get("/privacy-ledger", response_model=LedgerRead)
def read_privacy_ledger(
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("privacy_ledger", "read")],
    cohort: Annotated[str | None, Query(pattern=_COHORT)] = None,
) -> LedgerRead:
    """Each cohort's budget, what its runs spent (epsilon and delta), and every entry."""
    if cohort is not None and cohort not in snapshots.COHORTS:
        raise ProblemError(404, "not_found", f"no cohort {cohort!r}")
    names = [cohort] if cohort else sorted(snapshots.COHORTS)
    cohorts = [_ledger_cohort(session, c, settings.privacy_budget_epsilon) for c in names]
    access.entry.resource_id = cohort
    access.entry.details = {"cohorts": names, "entries": sum(c.runs for c in cohorts)}
    session.commit()
    return LedgerRead(composition=privacy_ledger.COMPOSITION, cohorts=cohorts)


@router.get("/training-snapshots", response_model=SnapshotPage)
def list_training_snapshots(
    session: SessionDep,
    access: Annotated[Access, require("training_snapshot", "list")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    cohort: Annotated[str | None, Query(pattern=_COHORT)] = None,
) -> SnapshotPage:
    """Training snapshots, newest first."""
    found = snapshots.listing(session, limit=limit, before_id=before, cohort=cohort)
    access.entry.details = {"count": len(found)}
    session.commit()
    last = found[-1].id if len(found) == limit else None
    return SnapshotPage(items=[_snapshot_brief(s) for s in found], next_before=last)


@router.get("/training-snapshots/{snapshot_id}", response_model=SnapshotDetail)
def read_training_snapshot(
    snapshot_id: _SNAPSHOT_ID,
    session: SessionDep,
    access: Annotated[Access, require("training_snapshot", "read")],
) -> SnapshotDetail:
    """One snapshot with its data checks (which failed, and by how much)."""
    access.entry.resource_id = str(snapshot_id)
    found = session.get(TrainingSnapshot, snapshot_id)
    if found is None:
        raise ProblemError(404, "not_found", "no such training snapshot")
    session.commit()
    checks = [dict(c) for c in found.checks]
    return SnapshotDetail(
        **_snapshot_brief(found).model_dump(),
        file_sha256=found.file_sha256,
        checks=checks,
        failed_checks=[str(c["name"]) for c in checks if not c.get("passed")],
    )
