"""The clinician review API: the portal's actions as JSON under /api/v1, with the same
access rules (queue, claims, signed decisions, envelopes, the alerts inbox, the panel)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.api.deps import MAX_DB_INT, Access, SessionDep, SettingsDep, require
from app.auth.principal import Principal
from app.core import clock
from app.core.errors import ProblemError
from app.patients.models import Patient
from audit.models import Outcome
from loops.models import Alert, Proposal
from loops.review import service
from loops.review.models import Decision, DecisionKind, ReviewClaim
from loops.review.signing import ALGORITHM, record_document
from policies.models import SafetyEnvelope

router = APIRouter(prefix="/api/v1", tags=["clinician review"])
_ID = Annotated[str, Path(max_length=36)]


def _proposal_patient(session: Session, request: Request, principal: Principal) -> str | None:
    proposal = session.get(Proposal, request.path_params.get("proposal_id", ""))
    return None if proposal is None else proposal.patient_id


def _alert_patient(session: Session, request: Request, principal: Principal) -> str | None:
    alert = session.get(Alert, request.path_params.get("alert_id", ""))
    return None if alert is None else alert.patient_id


def _decision_patient(session: Session, request: Request, principal: Principal) -> str | None:
    decision = session.get(Decision, request.path_params.get("decision_id", ""))
    return None if decision is None else decision.patient_id


def _problem(exc: Exception) -> ProblemError:
    """The problem answer for a review service error."""
    if isinstance(exc, service.ReviewConflict):
        return ProblemError(
            409,
            exc.code,
            exc.message,
            extra={"holder": exc.holder, "at": clock.iso(exc.at) if exc.at else None},
        )
    if isinstance(exc, service.ReviewInvalid):
        return ProblemError(422, exc.code, exc.message, extra={"field": exc.field})
    return ProblemError(404, "not_found", str(exc) or "not found")


_ERRORS = (service.ReviewConflict, service.ReviewInvalid, service.ReviewNotFound)


# ------------------------------------------------------------------ shapes


class PatientBrief(BaseModel):
    """Who the item is about (clinicians of the care team see names)."""

    id: str
    pseudonym: str
    given_name: str
    family_name: str
    birth_date: date
    sex: str
    has_diabetes: bool
    has_ckd: bool


def _patient(p: Patient) -> PatientBrief:
    return PatientBrief(
        id=p.id,
        pseudonym=p.pseudonym,
        given_name=p.given_name,
        family_name=p.family_name,
        birth_date=p.birth_date,
        sex=str(p.sex),
        has_diabetes=p.has_diabetes,
        has_ckd=p.has_ckd,
    )


class ClaimRead(BaseModel):
    """A clinician's lock on a queued proposal."""

    proposal_id: str
    user_id: int
    claimed_by: str | None
    claimed_at: datetime
    expires_at: datetime


def _claim(c: ReviewClaim, name: str | None) -> ClaimRead:
    return ClaimRead(
        proposal_id=c.proposal_id,
        user_id=c.user_id,
        claimed_by=name,
        claimed_at=c.claimed_at,
        expires_at=c.expires_at,
    )


class QueueEntry(BaseModel):
    """A queued proposal in the review queue."""

    proposal_id: str
    patient: PatientBrief
    drug: str
    unit: str
    action: str
    from_step: int
    to_step: int
    from_dose: float
    to_dose: float
    confidence: float
    model_version: str
    reasons: list[str]
    created_at: datetime
    risk: int
    waiting_seconds: int
    target_seconds: int
    overdue: bool
    claim: ClaimRead | None


class QueuePage(BaseModel):
    """One page of the queue, and how many items wait in all."""

    total: int
    limit: int
    offset: int
    items: list[QueueEntry]


class SignatureRead(BaseModel):
    """The electronic signature's manifestation (21 CFR 11.50) and its binding (11.70)."""

    signer_user_id: int
    printed_name: str
    username: str
    meaning: str
    signed_at: datetime
    record_hash: str
    signature: str
    algorithm: str
    key_id: str


class DecisionRead(BaseModel):
    """A signed decision, the record its signature covers, and (on read) whether it
    verifies."""

    id: str
    proposal_id: str
    patient_id: str
    kind: str
    from_step: int
    proposed_step: int
    decided_step: int
    from_dose: float
    proposed_dose: float
    decided_dose: float
    reason_code: str | None
    reason_text: str
    proposal_action: str
    label_action: str
    model_version: str
    feature_hash: str
    signature: SignatureRead
    record: dict[str, Any]
    signature_valid: bool | None = None


def _decision(d: Decision, *, valid: bool | None = None) -> DecisionRead:
    return DecisionRead(
        id=d.id,
        proposal_id=d.proposal_id,
        patient_id=d.patient_id,
        kind=str(d.kind),
        from_step=d.from_step,
        proposed_step=d.proposed_step,
        decided_step=d.decided_step,
        from_dose=d.from_dose,
        proposed_dose=d.proposed_dose,
        decided_dose=d.decided_dose,
        reason_code=d.reason_code,
        reason_text=d.reason_text,
        proposal_action=d.proposal_action,
        label_action=d.label_action,
        model_version=d.model_version,
        feature_hash=d.feature_hash,
        signature=SignatureRead(
            signer_user_id=d.signer_user_id,
            printed_name=d.signer_printed_name,
            username=d.signer_username,
            meaning=d.meaning,
            signed_at=d.signed_at,
            record_hash=d.record_hash,
            signature=d.signature,
            algorithm=ALGORITHM,
            key_id=d.key_id,
        ),
        record=record_document(d),
        signature_valid=valid,
    )


class DecisionBody(BaseModel):
    """A decision with its electronic signature: the password again and the meaning."""

    kind: DecisionKind
    password: str = Field(max_length=1024)
    meaning_confirmed: bool = False
    decided_step: int | None = Field(default=None, ge=0, le=100)
    reason_code: str | None = Field(default=None, max_length=32)
    reason_text: str | None = Field(default=None, max_length=2000)


class EnvelopeRead(BaseModel):
    """One envelope version."""

    version: int
    rules: dict[str, Any]
    author_id: int
    author: str | None
    reason: str
    effective_at: datetime
    created_at: datetime


def _envelope(e: SafetyEnvelope, names: dict[int, str]) -> EnvelopeRead:
    return EnvelopeRead(
        version=e.version,
        rules=e.rules,
        author_id=e.author_id,
        author=names.get(e.author_id),
        reason=e.reason,
        effective_at=e.effective_at,
        created_at=e.created_at,
    )


class AlertBrief(BaseModel):
    """An alert as the review pages show it."""

    id: str
    type: str
    severity: str
    status: str
    detail: str
    raised_at: datetime
    acknowledged_at: datetime | None
    acknowledgement_note: str | None
    escalation_level: int
    last_escalated_at: datetime | None
    resolved_at: datetime | None


def _alert(a: Alert) -> AlertBrief:
    return AlertBrief(
        id=a.id,
        type=a.type,
        severity=a.severity,
        status=a.status,
        detail=a.detail,
        raised_at=a.raised_at,
        acknowledged_at=a.acknowledged_at,
        acknowledgement_note=a.acknowledgement_note,
        escalation_level=a.escalation_level,
        last_escalated_at=a.last_escalated_at,
        resolved_at=a.resolved_at,
    )


# ------------------------------------------------------------------ queue and claims


@router.get("/review/queue", response_model=QueuePage)
def review_queue(
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("proposal", "review", listing=True, audit_as="review.queue")],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
) -> QueuePage:
    """Proposals waiting for review among the caller's patients, by risk, then age."""
    items, total = service.queue(
        session,
        patient_filter=access.patient_filter(),
        now=clock.utcnow(),
        limit=limit,
        offset=offset,
        settings=settings,
    )
    access.entry.details = {"count": len(items), "total": total}
    session.commit()
    return QueuePage(
        total=total,
        limit=limit,
        offset=offset,
        items=[
            QueueEntry(
                proposal_id=i.proposal.id,
                patient=_patient(i.patient),
                drug=i.drug,
                unit=i.unit,
                action=i.proposal.action,
                from_step=i.proposal.from_step,
                to_step=i.proposal.to_step,
                from_dose=i.proposal.from_dose,
                to_dose=i.proposal.to_dose,
                confidence=i.proposal.confidence,
                model_version=i.proposal.model_version,
                reasons=list(i.proposal.reasons),
                created_at=i.proposal.created_at,
                risk=i.risk,
                waiting_seconds=int(i.waiting.total_seconds()),
                target_seconds=int(i.target.total_seconds()),
                overdue=i.overdue,
                claim=_claim(i.claim, i.claimed_by) if i.claim else None,
            )
            for i in items
        ],
    )


@router.post("/review/proposals/{proposal_id}/claim", response_model=ClaimRead)
def claim_proposal(
    proposal_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("proposal", "claim", patient_from=_proposal_patient, audit_as="proposal.claim"),
    ],
) -> ClaimRead:
    """Claim a queued proposal (a lock that lapses); again to extend it. 409 with who and
    when if another clinician holds it or it is decided."""
    access.entry.resource_id = proposal_id
    try:
        held = service.claim(
            session,
            proposal_id=proposal_id,
            user=access.principal,
            now=clock.utcnow(),
            settings=settings,
        )
    except _ERRORS as exc:
        raise _problem(exc) from exc
    access.entry.details = {"expires_at": clock.iso(held.expires_at)}
    session.commit()
    return _claim(held, access.principal.full_name)


@router.delete("/review/proposals/{proposal_id}/claim", status_code=204)
def release_claim(
    proposal_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access,
        require("proposal", "claim", patient_from=_proposal_patient, audit_as="proposal.release"),
    ],
) -> Response:
    """Release the caller's claim (nothing to release is fine)."""
    access.entry.resource_id = proposal_id
    released = service.release(session, proposal_id=proposal_id, user=access.principal)
    access.entry.details = {"released": released}
    session.commit()
    return Response(status_code=204)


# ------------------------------------------------------------------ proposal and decision


class LadderStepRead(BaseModel):
    """A ladder step."""

    step: int
    dose: float
    current: bool
    proposed: bool


class ShapRead(BaseModel):
    """One explanation factor."""

    feature: str
    label: str
    value: float | None
    shap: float


class ExplanationRead(BaseModel):
    """Why the model proposed it."""

    clinician_text: str
    patient_text: str
    factors: list[ShapRead]


class ReasonRead(BaseModel):
    """A routing reason."""

    code: str
    text: str


class BpRead(BaseModel):
    """A blood-pressure point."""

    time: datetime
    systolic: float
    diastolic: float


class SeriesRead(BaseModel):
    """Validated-cuff and cuffless readings, kept apart (only the cuff drives titration)."""

    validated_cuff: list[BpRead]
    cuffless: list[BpRead]


class AdherenceRead(BaseModel):
    """Doses taken and missed on a UTC day."""

    day: date
    taken: int
    missed: int


class ChangeRead(BaseModel):
    """A dose change that reached the patient."""

    time: datetime
    proposal_id: str
    source: str
    from_step: int
    to_step: int
    from_dose: float
    to_dose: float
    by: str | None


class ResponseRead(BaseModel):
    """The patient's answer to a recommendation."""

    proposal_id: str
    action: str
    to_dose: float
    response: str
    responded_at: datetime | None


class SymptomRead(BaseModel):
    """A symptom report."""

    reported_at: datetime
    symptoms: list[str]
    note: str
    proposal_id: str | None


class ProposalRead(BaseModel):
    """The proposal itself."""

    id: str
    status: str
    action: str
    from_step: int
    to_step: int
    from_dose: float
    to_dose: float
    confidence: float
    probabilities: dict[str, float]
    model_version: str
    feature_hash: str
    route: str
    envelope_version: int | None
    created_at: datetime
    delivered_at: datetime | None


class ProposalDetailRead(BaseModel):
    """Everything a clinician needs to decide a proposal."""

    proposal: ProposalRead
    patient: PatientBrief
    drug: str
    unit: str
    frequency: str
    steps: list[LadderStepRead]
    target_systolic: float
    target_diastolic: float
    envelope: EnvelopeRead | None
    reasons: list[ReasonRead]
    explanation: ExplanationRead
    readings: SeriesRead
    window_start: datetime
    adherence: list[AdherenceRead]
    medication_changes: list[ChangeRead]
    alerts: list[AlertBrief]
    responses: list[ResponseRead]
    symptoms: list[SymptomRead]
    claim: ClaimRead | None
    decision: DecisionRead | None
    waiting_seconds: int
    target_seconds: int
    overdue: bool


@router.get("/review/proposals/{proposal_id}", response_model=ProposalDetailRead)
def read_proposal(
    proposal_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("proposal", "review", patient_from=_proposal_patient, audit_as="proposal.read"),
    ],
) -> ProposalDetailRead:
    """A proposal with its explanation, the envelope in force, and the patient's last 30 days."""
    access.entry.resource_id = proposal_id
    try:
        d = service.proposal_detail(
            session, proposal_id=proposal_id, now=clock.utcnow(), settings=settings
        )
    except _ERRORS as exc:
        raise _problem(exc) from exc
    session.commit()
    p = d.proposal
    names = {d.envelope.author_id: d.envelope_author} if d.envelope and d.envelope_author else {}
    return ProposalDetailRead(
        proposal=ProposalRead(
            id=p.id,
            status=p.status,
            action=p.action,
            from_step=p.from_step,
            to_step=p.to_step,
            from_dose=p.from_dose,
            to_dose=p.to_dose,
            confidence=p.confidence,
            probabilities=p.probabilities,
            model_version=p.model_version,
            feature_hash=p.feature_hash,
            route=p.route,
            envelope_version=p.envelope_version,
            created_at=p.created_at,
            delivered_at=p.delivered_at,
        ),
        patient=_patient(d.patient),
        drug=d.ladder.drug if d.ladder else "",
        unit=d.ladder.unit if d.ladder else "mg",
        frequency=d.ladder.frequency if d.ladder else "",
        steps=[
            LadderStepRead(step=s.step, dose=s.dose, current=s.current, proposed=s.proposed)
            for s in d.steps
        ],
        target_systolic=d.target[0],
        target_diastolic=d.target[1],
        envelope=_envelope(d.envelope, names) if d.envelope else None,
        reasons=[ReasonRead(code=r.code, text=r.text) for r in d.reasons],
        explanation=ExplanationRead(
            clinician_text=d.clinician_text,
            patient_text=d.patient_text,
            factors=[
                ShapRead(feature=f.feature, label=f.label, value=f.value, shap=f.shap)
                for f in d.shap
            ],
        ),
        readings=SeriesRead(
            validated_cuff=[
                BpRead(time=x.time, systolic=x.systolic, diastolic=x.diastolic) for x in d.cuff
            ],
            cuffless=[
                BpRead(time=x.time, systolic=x.systolic, diastolic=x.diastolic) for x in d.cuffless
            ],
        ),
        window_start=d.window_start,
        adherence=[AdherenceRead(day=a.day, taken=a.taken, missed=a.missed) for a in d.adherence],
        medication_changes=[
            ChangeRead(
                time=c.time,
                proposal_id=c.proposal_id,
                source=c.source,
                from_step=c.from_step,
                to_step=c.to_step,
                from_dose=c.from_dose,
                to_dose=c.to_dose,
                by=c.by,
            )
            for c in d.changes
        ],
        alerts=[_alert(a) for a in d.alerts],
        responses=[
            ResponseRead(
                proposal_id=r.proposal_id,
                action=r.action,
                to_dose=r.to_dose,
                response=r.response,
                responded_at=r.responded_at,
            )
            for r in d.responses
        ],
        symptoms=[
            SymptomRead(
                reported_at=s.reported_at,
                symptoms=list(s.symptoms),
                note=s.note,
                proposal_id=s.proposal_id,
            )
            for s in d.symptoms
        ],
        claim=_claim(d.claim, d.claimed_by) if d.claim else None,
        decision=_decision(d.decision) if d.decision else None,
        waiting_seconds=int(d.waiting.total_seconds()),
        target_seconds=int(d.review_target.total_seconds()),
        overdue=d.overdue,
    )


@router.post(
    "/review/proposals/{proposal_id}/decision", response_model=DecisionRead, status_code=201
)
def decide_proposal(
    proposal_id: _ID,
    body: DecisionBody,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("proposal", "decide", patient_from=_proposal_patient, audit_as="proposal.decide"),
    ],
) -> DecisionRead:
    """Approve, modify or reject under an electronic signature (password and meaning). A
    wrong password is 403 `signature_invalid`, audited as a denial; nothing is decided."""
    access.entry.resource_id = proposal_id
    try:
        decision = service.decide(
            session,
            proposal_id=proposal_id,
            user=access.principal,
            kind=body.kind,
            password=body.password,
            meaning_confirmed=body.meaning_confirmed,
            now=clock.utcnow(),
            decided_step=body.decided_step,
            reason_code=body.reason_code,
            reason_text=body.reason_text,
            settings=settings,
        )
    except service.SignatureRefused as exc:
        # Only the failed attempt's count (toward lockout) and this denial are written.
        access.entry.outcome = Outcome.DENIED
        access.entry.details = {
            "code": "signature_invalid",
            "reason": exc.code,
            "kind": str(body.kind),
        }
        session.commit()
        raise ProblemError(
            403,
            "signature_invalid",
            exc.message,
            extra={"reason": exc.code, "retry_after": exc.retry_after},
        ) from exc
    except _ERRORS as exc:
        raise _problem(exc) from exc
    access.entry.details = service.decision_audit_details(decision)
    session.commit()
    return _decision(decision)


@router.get("/decisions/{decision_id}", response_model=DecisionRead)
def read_decision(
    decision_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("decision", "read", patient_from=_decision_patient, audit_as="decision.read"),
    ],
) -> DecisionRead:
    """A signed decision with the record its signature covers and whether it verifies
    against the audit public key (an auditor should also verify it independently)."""
    decision = session.get(Decision, decision_id)
    if decision is None:
        raise ProblemError(404, "not_found", "no such decision")
    access.entry.resource_type, access.entry.resource_id = "decision", decision.id
    valid = service.verify_signature(decision, public_key=service.signing_public_key(settings))
    access.entry.details = {"signature_valid": valid}
    session.commit()
    return _decision(decision, valid=valid)


# ------------------------------------------------------------------ envelopes


class EnvelopeHistory(BaseModel):
    """A patient's envelope versions, newest first, and the editor's template."""

    patient_id: str
    drug: str | None
    ladder_steps: list[float]
    in_force_version: int | None
    template: dict[str, Any] | None
    versions: list[EnvelopeRead]


@router.get("/patients/{patient_id}/envelopes", response_model=EnvelopeHistory)
def read_envelopes(
    patient_id: _ID,
    session: SessionDep,
    access: Annotated[Access, require("envelope", "read", patient_param="patient_id")],
) -> EnvelopeHistory:
    """Every envelope version of the patient, and defaults from the drug's template."""
    now = clock.utcnow()
    versions = service.envelope_history(session, patient_id=patient_id)
    in_force = next((e.version for e in versions if e.effective_at <= now), None)
    ladder = service.active_ladder(session, patient_id=patient_id)
    names = service.user_names(session, [e.author_id for e in versions])
    template = (
        service.envelope_template(ladder.drug, ladder_steps=len(ladder.steps)).model_dump(
            mode="json"
        )
        if ladder
        else None
    )
    access.entry.details = {"versions": len(versions)}
    session.commit()
    return EnvelopeHistory(
        patient_id=patient_id,
        drug=ladder.drug if ladder else None,
        ladder_steps=list(ladder.steps) if ladder else [],
        in_force_version=in_force,
        template=template,
        versions=[_envelope(e, names) for e in versions],
    )


class EnvelopeBody(BaseModel):
    """A new envelope version: the rules, why, and the version the editor started from."""

    rules: dict[str, Any]
    reason: str = Field(max_length=500)
    expected_version: int | None = Field(default=None, ge=0)


class ReroutedRead(BaseModel):
    """A queued proposal re-checked against the new envelope."""

    proposal_id: str
    old_route: str
    new_route: str
    old_reasons: list[str]
    reasons: list[str]
    delivered: bool


class EnvelopeEditRead(BaseModel):
    """The new version and the re-check of the patient's queue."""

    envelope: EnvelopeRead
    rerouted: list[ReroutedRead]


@router.put("/patients/{patient_id}/envelope", response_model=EnvelopeEditRead)
def write_envelope(
    patient_id: _ID,
    body: EnvelopeBody,
    session: SessionDep,
    access: Annotated[
        Access, require("envelope", "write", patient_param="patient_id", audit_as="envelope.write")
    ],
) -> EnvelopeEditRead:
    """Write a new envelope version, in force at once; queued proposals are re-routed. 409
    `stale_envelope` if someone edited since `expected_version`; 422 naming a bad field."""
    try:
        edit = service.edit_envelope(
            session,
            patient_id=patient_id,
            user=access.principal,
            rules=body.rules,
            reason=body.reason,
            expected_version=body.expected_version,
            now=clock.utcnow(),
        )
    except _ERRORS as exc:
        raise _problem(exc) from exc
    envelope = edit.envelope
    access.entry.resource_type, access.entry.resource_id = "envelope", str(envelope.version)
    access.entry.details = {
        "version": envelope.version,
        "rules": envelope.rules,
        "rerouted": [
            {"proposal_id": r.proposal.id, "route": r.new_route, "delivered": r.delivered}
            for r in edit.rerouted
        ],
    }
    session.commit()
    names = {envelope.author_id: access.principal.full_name or ""}
    return EnvelopeEditRead(
        envelope=_envelope(envelope, names),
        rerouted=[
            ReroutedRead(
                proposal_id=r.proposal.id,
                old_route=r.old_route,
                new_route=r.new_route,
                old_reasons=r.old_reasons,
                reasons=r.reasons,
                delivered=r.delivered,
            )
            for r in edit.rerouted
        ],
    )


# ------------------------------------------------------------------ alerts


class InboxEntry(BaseModel):
    """An alert in the clinician's inbox."""

    alert: AlertBrief
    patient: PatientBrief
    pinned: bool
    waiting_seconds: int
    acknowledged_by: str | None
    escalations: int


@router.get("/review/alerts", response_model=list[InboxEntry])
def alerts_inbox(
    session: SessionDep,
    access: Annotated[Access, require("alert", "review", listing=True, audit_as="alert.inbox")],
    include_resolved: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[InboxEntry]:
    """Alerts of the caller's patients: unresolved crises pinned, then by status, severity
    and age."""
    rows = service.alerts_inbox(
        session,
        patient_filter=access.patient_filter(),
        now=clock.utcnow(),
        include_resolved=include_resolved,
        limit=limit,
    )
    access.entry.details = {"count": len(rows), "include_resolved": include_resolved}
    session.commit()
    return [
        InboxEntry(
            alert=_alert(r.alert),
            patient=_patient(r.patient),
            pinned=r.pinned,
            waiting_seconds=int(r.waiting.total_seconds()),
            acknowledged_by=r.acknowledged_by,
            escalations=r.escalations,
        )
        for r in rows
    ]


class EscalationBody(BaseModel):
    """To whom and why an alert is escalated."""

    note: str = Field(min_length=1, max_length=1000)


@router.post("/alerts/{alert_id}/escalate", response_model=AlertBrief)
def escalate_alert(
    alert_id: _ID,
    body: EscalationBody,
    session: SessionDep,
    access: Annotated[
        Access,
        require("alert", "escalate", patient_from=_alert_patient, audit_as="alert.escalate"),
    ],
) -> AlertBrief:
    """Escalate an unresolved alert by hand, with a note; 409 `alert_resolved` otherwise."""
    access.entry.resource_type, access.entry.resource_id = "alert", alert_id
    try:
        alert = service.escalate(
            session, alert_id=alert_id, user=access.principal, note=body.note, now=clock.utcnow()
        )
    except _ERRORS as exc:
        raise _problem(exc) from exc
    access.entry.details = {
        "manual": True,
        "type": alert.type,
        "severity": alert.severity,
        "level": alert.escalation_level,
    }
    session.commit()
    return _alert(alert)


# ------------------------------------------------------------------ panel


class PanelEntry(BaseModel):
    """A patient on the clinician's panel."""

    patient: PatientBrief
    control: str
    cuff_sbp_mean_7d: float | None
    cuff_dbp_mean_7d: float | None
    cuff_readings_7d: int
    target_systolic: float
    target_diastolic: float
    last_reading_at: datetime | None
    open_alerts: int
    crisis_alert: bool
    pending_proposals: int
    next_review_due: datetime | None
    review_overdue: bool
    next_visit_due: datetime | None
    next_visit_kind: str | None
    next_visit_overridden: bool


@router.get("/review/panel", response_model=list[PanelEntry])
def review_panel(
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("patient", "panel", listing=True, audit_as="review.panel")],
    search: Annotated[str | None, Query(max_length=100)] = None,
    status: Annotated[service.PanelFilter | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[PanelEntry]:
    """The caller's patients with control status, last reading, alerts and pending work."""
    rows = service.panel(
        session,
        patient_filter=access.patient_filter(),
        now=clock.utcnow(),
        search=search,
        status_filter=status,
        limit=limit,
        settings=settings,
    )
    access.entry.details = {"count": len(rows)}
    session.commit()
    return [
        PanelEntry(
            patient=_patient(r.patient),
            control=str(r.control),
            cuff_sbp_mean_7d=r.cuff_sbp_mean_7d,
            cuff_dbp_mean_7d=r.cuff_dbp_mean_7d,
            cuff_readings_7d=r.cuff_readings_7d,
            target_systolic=r.target[0],
            target_diastolic=r.target[1],
            last_reading_at=r.last_reading_at,
            open_alerts=r.open_alerts,
            crisis_alert=r.crisis_alert,
            pending_proposals=r.pending_proposals,
            next_review_due=r.next_review_due,
            review_overdue=r.review_overdue,
            next_visit_due=r.next_visit_due,
            next_visit_kind=r.next_visit_kind,
            next_visit_overridden=r.next_visit_overridden,
        )
        for r in rows
    ]
