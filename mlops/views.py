"""The model lifecycle over HTTP: training, the privacy ledger, versions and their lineage,
validation, sign-offs, rollout and rollback (ML engineers; clinical leads sign off)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.auth.models import User
from app.core import clock
from app.core.errors import ProblemError
from audit.models import Outcome
from mlops import ledger as privacy_ledger
from mlops import lifecycle, lineage, retrain, rollout, snapshots
from mlops.canary import Thresholds
from mlops.models import ModelVersion, Rollout, RolloutStep, SignoffRole, TrainingSnapshot
from validation import gates

router = APIRouter(prefix="/api/v1", tags=["models"])


# ------------------------------------------------------------------ part B: registry lifecycle
# Versions and their lineage, validation, sign-offs and the serving history. Model names are
# short identifiers; versions are positive. Every call is audited (the route's entry names
# the version; the services add `model.gates`, `model.transition` and `model.signed`).

_MODEL_NAME = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
_VERSION = Annotated[int, Path(ge=1, le=2**31 - 1)]


class SignoffBody(BaseModel):
    """An electronic signature on a version: the role signed in, its meaning stated back
    (see `signoff_meanings` on the version), the password again, and an optional note."""

    role: SignoffRole
    meaning: str = Field(min_length=1, max_length=300)
    password: str = Field(max_length=1024)
    note: str = Field(default="", max_length=1000)


def _refusal(exc: lifecycle.LifecycleRefused) -> ProblemError:
    return ProblemError(exc.status, exc.code, exc.detail)


def _version_of(session: SessionDep, access: Access, name: str, version: int) -> ModelVersion:
    """The version, named on the audit entry; 404 when there is none."""
    access.entry.resource_type, access.entry.resource_id = "model", lifecycle.label(name, version)
    try:
        return lifecycle.get_version(session, name=name, version=version)
    except lifecycle.ModelNotFound as exc:
        raise ProblemError(404, "not_found", "no such model version") from exc


@router.get("/models", response_model=lineage.ModelListing)
def list_models(
    session: SessionDep,
    access: Annotated[Access, require("model", "list")],
    name: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_-]{0,63}$")] = None,
) -> lineage.ModelListing:
    """Registered model versions, newest first, with status and aliases."""
    found = lineage.listing(session, name=name)
    access.entry.resource_type = "model"
    access.entry.details = {"count": len(found.items)}
    session.commit()
    return found


@router.get("/models/{name}/versions/{version}", response_model=lineage.Lineage)
def read_model_version(
    name: _MODEL_NAME,
    version: _VERSION,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("model", "read")],
) -> lineage.Lineage:
    """A version's lineage: parents, snapshot, code, parameters, metrics, privacy, gate runs
    with evidence, sign-offs (signatures verified), transitions, and what it still lacks."""
    found = _version_of(session, access, name, version)
    shown = lineage.lineage(session, found, public_key=lifecycle.signing_public_key(settings))
    session.commit()
    return shown


@router.post("/models/{name}/versions/{version}/validate", response_model=lineage.GateRunRead)
def validate_model_version(
    name: _MODEL_NAME,
    version: _VERSION,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("model", "validate")],
) -> lineage.GateRunRead:
    """Run every validation gate on a candidate; a passing run makes it validated. A failed
    gate is not an error: the run is answered with `passed: false` and what failed."""
    _version_of(session, access, name, version)
    try:
        run = gates.run_gates(
            session=session,
            name=name,
            version=version,
            actor=access.principal.actor,
            now=clock.utcnow(),
            data_dir=settings.data_dir,
            settings=settings,
        )
    except lifecycle.LifecycleRefused as exc:
        raise _refusal(exc) from exc
    access.entry.details = {"run_id": run.run_id, "passed": run.passed, "failed": run.failed}
    session.commit()
    return lineage.gate_run(run.run_id, run.results)


@router.post(
    "/models/{name}/versions/{version}/signoffs",
    response_model=lineage.SignoffRead,
    status_code=201,
)
def sign_off_model_version(
    name: _MODEL_NAME,
    version: _VERSION,
    body: SignoffBody,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("model", "signoff")],
) -> lineage.SignoffRead:
    """Sign a validated version off for production (ML engineer or clinical lead) under an
    electronic signature: password re-entered and meaning stated. A wrong password or a
    signer without the role is 403, audited as a denial; nothing is signed."""
    found = _version_of(session, access, name, version)
    signer = session.get(User, int(access.principal.id))
    if signer is None:
        raise ProblemError(403, "forbidden", "no such signer")
    try:
        row = lifecycle.signoff(
            session=session,
            name=name,
            version=version,
            signer=signer,
            role=body.role,
            meaning=body.meaning,
            note=body.note,
            now=clock.utcnow(),
            password=body.password,
            settings=settings,
        )
    except lifecycle.SignoffRefused as exc:
        if exc.status == 403:
            # Only the failed attempt's count (toward lockout) and this denial are written.
            access.entry.outcome = Outcome.DENIED
            access.entry.details = {"code": exc.code, "role": str(body.role)}
            session.commit()
            raise ProblemError(
                403, exc.code, exc.detail, extra={"retry_after": exc.retry_after}
            ) from exc
        raise _refusal(exc) from exc
    access.entry.details = {"role": str(body.role), "record_sha256": row.record_sha256}
    session.commit()
    return lineage.signoff_read(row, found, lifecycle.signing_public_key(settings))


@router.get("/models/{name}/history", response_model=lineage.ServingHistory)
def model_history(
    name: _MODEL_NAME,
    session: SessionDep,
    access: Annotated[Access, require("model", "read")],
) -> lineage.ServingHistory:
    """Which version served when (production intervals), the aliases, every transition."""
    access.entry.resource_type, access.entry.resource_id = "model", name
    shown = lineage.history(session, name=name)
    if not shown.transitions and not shown.intervals:
        raise ProblemError(404, "not_found", "no such model")
    session.commit()
    return shown


# ------------------------------------------------------------------ part C: rollout
# Start a signed-off version's rollout (shadow, then the canary's steps), read the running or
# latest rollout with its steps and the live analysis of its current step, and roll back by
# hand. The services add `model.transition`, `model.alias` and `model.rollout.*` entries.


class RolloutStart(BaseModel):
    """How long each step runs before its analysis may advance it (default: the setting
    `canary_dwell_minutes`)."""

    dwell_minutes: int | None = Field(default=None, ge=1, le=43_200)


class RollbackBody(BaseModel):
    """Why the model is rolled back (kept on the transitions and the rollout)."""

    reason: str = Field(min_length=1, max_length=500)


class RolloutStepRead(BaseModel):
    """One analysis of a step: what it measured and decided (a live one has no id)."""

    id: int | None
    stage: str
    percent: int
    started_at: str
    analysed_at: str
    decision: str
    reasons: list[str]
    analysis: dict[str, Any]


class RolloutRead(BaseModel):
    """A rollout: where it stands, the steps it went through, and, while it runs, the live
    analysis of its current step. `model_alert` is set when it was rolled back on a breach."""

    id: int
    model: str
    challenger_version: int
    champion_version: int | None
    status: str
    percent: int
    dwell_seconds: int
    started_by: str
    started_at: str
    step_started_at: str
    ended_at: str | None
    end_reason: str
    model_alert: str | None
    steps: list[RolloutStepRead]
    current: RolloutStepRead | None


class RollbackRead(BaseModel):
    """What a rollback did: the version retired and the one serving now."""

    retired_version: int
    serving_version: int | None
    rollout_id: int | None
    artifact_problem: str | None


def _step_read(step: RolloutStep) -> RolloutStepRead:
    return RolloutStepRead(
        id=step.id,
        stage=step.stage,
        percent=step.percent,
        started_at=clock.iso(step.started_at),
        analysed_at=clock.iso(step.analysed_at),
        decision=step.decision,
        reasons=list(step.reasons),
        analysis=step.analysis,
    )


def _rollout_read(
    session: SessionDep, found: Rollout, now: datetime, thresholds: Thresholds
) -> RolloutRead:
    current = None
    if found.status in rollout.ACTIVE:
        live = rollout.analyse(session, rollout=found, now=now, thresholds=thresholds)
        current = RolloutStepRead(
            id=None,
            stage=found.status,
            percent=found.percent,
            started_at=clock.iso(found.step_started_at),
            analysed_at=clock.iso(now),
            decision=str(live.analysis.verdict),
            reasons=list(live.analysis.reasons),
            analysis=live.document(),
        )
    automatic = found.end_reason.startswith(rollout.AUTOMATIC)
    return RolloutRead(
        id=found.id or 0,
        model=found.model_name,
        challenger_version=found.challenger_version,
        champion_version=found.champion_version,
        status=found.status,
        percent=found.percent,
        dwell_seconds=found.dwell_seconds,
        started_by=found.started_by,
        started_at=clock.iso(found.started_at),
        step_started_at=clock.iso(found.step_started_at),
        ended_at=clock.iso(found.ended_at) if found.ended_at else None,
        end_reason=found.end_reason,
        model_alert=found.end_reason if automatic else None,
        steps=[_step_read(s) for s in rollout.steps(session, rollout_id=found.id or 0)],
        current=current,
    )


def _rollout_refusal(exc: rollout.RolloutRefused | lifecycle.LifecycleRefused) -> ProblemError:
    return ProblemError(exc.status, exc.code, exc.detail)


@router.post(
    "/models/{name}/versions/{version}/rollout", response_model=RolloutRead, status_code=201
)
def start_rollout(
    name: _MODEL_NAME,
    version: _VERSION,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("model", "promote")],
    body: RolloutStart | None = None,
) -> RolloutRead:
    """Start the rollout of a validated version with its gates passed and both sign-offs: it
    scores in shadow beside the champion, then serves a growing canary slice (`clinaiops
    models tick` or the scheduler analyses each step); 409 with what is missing otherwise."""
    _version_of(session, access, name, version)
    minutes = body.dwell_minutes if body is not None else None
    now = clock.utcnow()
    try:
        started = rollout.start(
            session=session,
            name=name,
            version=version,
            actor=access.principal.actor,
            now=now,
            dwell=timedelta(minutes=minutes or settings.canary_dwell_minutes),
        )
    except (rollout.RolloutRefused, lifecycle.LifecycleRefused) as exc:
        raise _rollout_refusal(exc) from exc
    access.entry.details = {"rollout_id": started.id, "dwell_seconds": started.dwell_seconds}
    shown = _rollout_read(session, started, now, Thresholds.from_settings(settings))
    session.commit()
    return shown


@router.get("/models/{name}/rollout", response_model=RolloutRead)
def read_rollout(
    name: _MODEL_NAME,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("model", "read")],
) -> RolloutRead:
    """The running rollout (else the latest one) with its steps and, while it runs, the live
    analysis of its current step: error rate, override rate, routing mix, latency."""
    access.entry.resource_type, access.entry.resource_id = "model", name
    found = rollout.latest(session, name=name)
    if found is None:
        raise ProblemError(404, "not_found", "this model has had no rollout")
    shown = _rollout_read(session, found, clock.utcnow(), Thresholds.from_settings(settings))
    access.entry.details = {"rollout_id": found.id, "status": found.status}
    session.commit()
    return shown


@router.post("/models/{name}/rollback", response_model=RollbackRead)
def rollback_model(
    name: _MODEL_NAME,
    body: RollbackBody,
    session: SessionDep,
    access: Annotated[Access, require("model", "rollback")],
) -> RollbackRead:
    """Roll back by hand: a running rollout ends (its challenger retired, the champion serves
    everyone); otherwise the production version is retired and the previous one restored."""
    access.entry.resource_type, access.entry.resource_id = "model", name
    try:
        result = rollout.rollback(
            session=session,
            name=name,
            actor=access.principal.actor,
            reason=body.reason,
            now=clock.utcnow(),
        )
    except (rollout.RolloutRefused, lifecycle.LifecycleRefused) as exc:
        raise _rollout_refusal(exc) from exc
    access.entry.details = {
        "retired_version": result.retired,
        "serving_version": result.serving,
        "rollout_id": result.rollout_id,
    }
    session.commit()
    return RollbackRead(
        retired_version=result.retired,
        serving_version=result.serving,
        rollout_id=result.rollout_id,
        artifact_problem=result.artifact_problem,
    )


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
