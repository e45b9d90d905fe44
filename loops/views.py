"""The patient-AI loop over HTTP: the patient's recommendations, alerts, trends and symptom
reports; the kill switch; alert acknowledgement; proposals as FHIR MedicationRequest."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.api.deps import Access, SessionDep, query_patient, require
from app.auth.principal import Principal
from app.core import clock
from app.core.errors import ProblemError
from device_ingest.service import DaySummary, daily_summaries, summary_window
from loops import service
from loops.models import (
    Alert,
    MedicationRegimen,
    PatientNotice,
    Proposal,
    ProposalStatus,
    SymptomReport,
    SystemFlag,
    TitrationLadder,
)
from loops.review.models import Decision

router = APIRouter(prefix="/api/v1", tags=["patient-ai loop"])
fhir_router = APIRouter(prefix="/fhir/R4", tags=["fhir"])
SymptomCode = Literal["dizziness", "headache", "swelling", "cough", "fatigue", "fainting", "other"]
SYMPTOMS: tuple[str, ...] = get_args(SymptomCode)
assert SYMPTOMS == service.SYMPTOMS  # one list of codes: the API's and the service's
# What a patient sees of each status: plain words, never internal codes.
_PATIENT_STATUS = {
    ProposalStatus.DELIVERED: "recommended",
    ProposalStatus.PENDING_REVIEW: "being reviewed by your care team",
    ProposalStatus.APPROVED: "approved by your clinician",
    ProposalStatus.MODIFIED: "changed by your clinician",
    ProposalStatus.REJECTED: "not recommended by your care team",
    ProposalStatus.SUPERSEDED: "replaced by a newer recommendation",
}
_VISIBLE = (
    ProposalStatus.DELIVERED,
    ProposalStatus.PENDING_REVIEW,
    ProposalStatus.APPROVED,
    ProposalStatus.MODIFIED,
    ProposalStatus.REJECTED,
)


def _own_patient(session: Session, request: Request, principal: Principal) -> str | None:
    return principal.patient_id


def _alert_patient(session: Session, request: Request, principal: Principal) -> str | None:
    alert = session.get(Alert, request.path_params.get("alert_id", ""))
    return None if alert is None else alert.patient_id


class Recommendation(BaseModel):
    """A titration recommendation as the patient sees it."""

    id: str
    created_at: datetime
    status: str
    text: str
    explanation: str
    drug: str
    dose_from: float
    dose_to: float
    unit: str
    response: str | None


def decisions_for(session: Session, proposals: list[Proposal]) -> dict[str, Decision]:
    """The clinicians' decisions on these proposals (one query), by proposal id."""
    decided = [
        p.id
        for p in proposals
        if p.status in (ProposalStatus.APPROVED, ProposalStatus.MODIFIED, ProposalStatus.REJECTED)
    ]
    if not decided:
        return {}
    rows = session.scalars(select(Decision).where(col(Decision.proposal_id).in_(decided)))
    return {d.proposal_id: d for d in rows}


def ordered_dose(p: Proposal, decision: Decision | None) -> float:
    """The dose a proposal leaves the patient on: the clinician's choice if they modified
    it, else the proposed dose."""
    if p.status == ProposalStatus.MODIFIED and decision is not None:
        return decision.decided_dose
    return p.to_dose


def _recommendation(
    session: Session, p: Proposal, decision: Decision | None = None
) -> Recommendation:
    regimen = session.get(MedicationRegimen, p.regimen_id)
    ladder = session.get(TitrationLadder, regimen.ladder_id) if regimen else None
    drug = ladder.drug if ladder else ""
    unit = ladder.unit if ladder else "mg"
    dose = ordered_dose(p, decision)
    change = (
        f"keep taking {drug} {p.from_dose:g} {unit}"
        if dose == p.from_dose
        else f"take {drug} {dose:g} {unit} instead of {p.from_dose:g} {unit}"
    )
    status = ProposalStatus(p.status)
    text = {
        ProposalStatus.PENDING_REVIEW: f"Your care team is reviewing a possible change: "
        f"{change}. Keep your current dose until they confirm.",
        ProposalStatus.APPROVED: f"Approved by your clinician: {change}.",
        ProposalStatus.MODIFIED: f"Changed by your clinician: {change}.",
        ProposalStatus.REJECTED: f"No change: your care team decided you should keep taking "
        f"{drug} {p.from_dose:g} {unit}.",
    }.get(status, f"Your care plan suggests you {change}.")
    # The model's reasons explain its own proposal, not a clinician's different choice.
    explains = status not in (ProposalStatus.MODIFIED, ProposalStatus.REJECTED)
    return Recommendation(
        id=p.id,
        created_at=p.created_at,
        status=_PATIENT_STATUS[status],
        text=text,
        explanation=str(p.explanation.get("patient_text", "")) if explains else "",
        drug=drug,
        dose_from=p.from_dose,
        dose_to=dose,
        unit=unit,
        response=p.patient_response,
    )


@router.get("/me/recommendations", response_model=list[Recommendation])
def my_recommendations(
    session: SessionDep,
    access: Annotated[
        Access,
        require(
            "recommendation", "read", patient_from=_own_patient, audit_as="recommendation.read"
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[Recommendation]:
    """The patient's recommendations, newest first, in plain language."""
    rows = session.scalars(
        select(Proposal)
        .where(col(Proposal.patient_id) == access.patient_id, col(Proposal.status).in_(_VISIBLE))
        .order_by(col(Proposal.created_at).desc())
        .limit(limit)
    ).all()
    decided = decisions_for(session, list(rows))
    out = [_recommendation(session, p, decided.get(p.id)) for p in rows]
    access.entry.details = {"count": len(out)}
    session.commit()
    return out


class RecommendationResponse(BaseModel):
    """The patient's answer to a recommendation, with any symptoms."""

    response: Literal["took_it", "declined"]
    symptoms: list[SymptomCode] = Field(default_factory=list, max_length=len(SYMPTOMS))
    note: str = Field(default="", max_length=2000)


@router.post("/me/recommendations/{proposal_id}/response", response_model=Recommendation)
def respond(
    proposal_id: Annotated[str, Path(max_length=36)],
    body: RecommendationResponse,
    session: SessionDep,
    access: Annotated[
        Access,
        require(
            "recommendation",
            "respond",
            patient_from=_own_patient,
            audit_as="recommendation.respond",
        ),
    ],
) -> Recommendation:
    """Record whether the patient followed a recommendation, and how they feel."""
    proposal = session.get(Proposal, proposal_id)
    if proposal is None or proposal.patient_id != access.patient_id:
        raise ProblemError(404, "not_found", "no such recommendation")
    if proposal.status not in (
        ProposalStatus.DELIVERED,
        ProposalStatus.APPROVED,
        ProposalStatus.MODIFIED,
    ):
        raise ProblemError(
            409, "not_answerable", "only a recommendation made to you can be answered"
        )
    now = clock.utcnow()
    proposal.patient_response, proposal.responded_at = body.response, now
    session.add(proposal)
    if body.symptoms or body.note:
        # The same path as a report on its own: stored, and the patient evaluated again.
        service.report_symptoms(
            session,
            patient_id=proposal.patient_id,
            symptoms=body.symptoms,
            note=body.note,
            reported_at=now,
            now=now,
            proposal_id=proposal.id,
        )
    access.entry.resource_type, access.entry.resource_id = "proposal", proposal.id
    access.entry.details = {"response": body.response, "symptoms": list(body.symptoms)}
    session.commit()
    return _recommendation(session, proposal, decisions_for(session, [proposal]).get(proposal.id))


class SymptomReportIn(BaseModel):
    """Symptoms the patient reports from the app: codes, a note, or both."""

    # An unknown field is refused, not dropped: clinical information must not vanish.
    model_config = ConfigDict(extra="forbid")

    symptoms: list[SymptomCode] = Field(default_factory=list, max_length=len(SYMPTOMS))
    note: str = Field(default="", max_length=2000)
    reported_at: AwareDatetime | None = None  # when the symptoms were felt; default now


class SymptomReportRead(BaseModel):
    """A stored symptom report."""

    id: int
    reported_at: datetime
    symptoms: list[str]
    note: str
    proposal_id: str | None


def _symptom_report(r: SymptomReport) -> SymptomReportRead:
    return SymptomReportRead(
        id=r.id or 0,
        reported_at=r.reported_at,
        symptoms=list(r.symptoms),
        note=r.note,
        proposal_id=r.proposal_id,
    )


def _invalid(code: str, path: str, message: str) -> ProblemError:
    return ProblemError(
        422,
        code,
        f"{path.rsplit('/', 1)[-1]}: {message}",
        extra={"errors": [{"path": path, "message": message, "type": code}]},
    )


@router.post("/me/symptoms", response_model=SymptomReportRead, status_code=201)
def report_symptoms(
    body: SymptomReportIn,
    session: SessionDep,
    access: Annotated[
        Access,
        require("symptom", "report", patient_from=_own_patient, audit_as="symptom.report"),
    ],
) -> SymptomReportRead:
    """Record the patient's symptoms and have the loop evaluate them (the low-BP alert)."""
    assert access.patient_id is not None
    if not body.symptoms and not body.note.strip():
        raise _invalid(
            "symptom_required", "body/symptoms", "name at least one symptom, or write a note"
        )
    now = clock.utcnow()
    reported_at = (body.reported_at or now).astimezone(UTC)
    problem = service.symptom_time_problem(reported_at, now=now)
    if problem is not None:
        raise _invalid("invalid_reported_at", "body/reported_at", problem)
    report = service.report_symptoms(
        session,
        patient_id=access.patient_id,
        symptoms=body.symptoms,
        note=body.note,
        reported_at=reported_at,
        now=now,
    )
    access.entry.resource_type, access.entry.resource_id = "symptom_report", str(report.id)
    # Codes and a count only: the note is the patient's own words and never leaves the row.
    access.entry.details = {"symptoms": list(report.symptoms), "count": len(report.symptoms)}
    session.commit()
    return _symptom_report(report)


def _symptom_listing(
    session: Session,
    access: Access,
    patient_id: str,
    from_: date | None,
    to: date | None,
    limit: int,
) -> list[SymptomReportRead]:
    _, first, last = summary_window(from_, to, "UTC")
    rows = service.symptom_reports(
        session, patient_id=patient_id, first=first, last=last, limit=limit
    )
    access.entry.details = {"from": first.isoformat(), "to": last.isoformat(), "count": len(rows)}
    session.commit()
    return [_symptom_report(r) for r in rows]


@router.get("/me/symptoms", response_model=list[SymptomReportRead])
def my_symptoms(
    session: SessionDep,
    access: Annotated[
        Access, require("symptom", "read", patient_from=_own_patient, audit_as="symptom.read")
    ],
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: Annotated[date | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[SymptomReportRead]:
    """The patient's own symptom reports on UTC days from..to (default the last 30), newest
    first."""
    assert access.patient_id is not None
    return _symptom_listing(session, access, access.patient_id, from_, to, limit)


@router.get("/patients/{patient_id}/symptoms", response_model=list[SymptomReportRead])
def patient_symptoms(
    patient_id: Annotated[str, Path(max_length=36)],
    session: SessionDep,
    access: Annotated[
        Access, require("symptom", "read", patient_param="patient_id", audit_as="symptom.read")
    ],
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: Annotated[date | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[SymptomReportRead]:
    """A patient's symptom reports, notes included, newest first (care team)."""
    return _symptom_listing(session, access, patient_id, from_, to, limit)


class AlertRead(BaseModel):
    """An alert about a patient."""

    id: str
    type: str
    severity: str
    status: str
    detail: str
    raised_at: datetime
    acknowledged_at: datetime | None
    escalation_level: int


def _alert(a: Alert) -> AlertRead:
    return AlertRead(
        id=a.id,
        type=a.type,
        severity=a.severity,
        status=a.status,
        detail=a.detail,
        raised_at=a.raised_at,
        acknowledged_at=a.acknowledged_at,
        escalation_level=a.escalation_level,
    )


class NoticeRead(BaseModel):
    """Something the patient has been asked or told."""

    kind: str
    text: str
    created_at: datetime
    due_at: datetime | None


class MyAlerts(BaseModel):
    """The patient's open alerts and recent notices (e.g. please measure again now)."""

    alerts: list[AlertRead]
    notices: list[NoticeRead]


@router.get("/me/alerts", response_model=MyAlerts)
def my_alerts(
    session: SessionDep,
    access: Annotated[
        Access, require("alert", "read", patient_from=_own_patient, audit_as="alert.read")
    ],
) -> MyAlerts:
    """Open alerts and the latest notices for the signed-in patient."""
    assert access.patient_id is not None
    alerts = service.open_alerts(session, patient_id=access.patient_id)
    notices = session.scalars(
        select(PatientNotice)
        .where(col(PatientNotice.patient_id) == access.patient_id)
        .order_by(col(PatientNotice.created_at).desc())
        .limit(20)
    ).all()
    access.entry.details = {"alerts": len(alerts), "notices": len(notices)}
    session.commit()
    return MyAlerts(
        alerts=[_alert(a) for a in alerts],
        notices=[
            NoticeRead(kind=n.kind, text=n.text, created_at=n.created_at, due_at=n.due_at)
            for n in notices
        ],
    )


@router.get("/me/trends", response_model=list[DaySummary])
def my_trends(
    session: SessionDep,
    access: Annotated[
        Access, require("trends", "read", patient_from=_own_patient, audit_as="trends.read")
    ],
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: Annotated[date | None, Query()] = None,
    tz: Annotated[str, Query(max_length=64)] = "UTC",
) -> list[DaySummary]:
    """The patient's own daily blood-pressure summaries."""
    assert access.patient_id is not None
    zone, first, last = summary_window(from_, to, tz)
    out = daily_summaries(session, patient_id=access.patient_id, first=first, last=last, zone=zone)
    access.entry.details = {"from": first.isoformat(), "to": last.isoformat(), "days": len(out)}
    session.commit()
    return out


@router.get("/patients/{patient_id}/alerts", response_model=list[AlertRead])
def patient_alerts(
    patient_id: Annotated[str, Path(max_length=36)],
    session: SessionDep,
    access: Annotated[
        Access, require("alert", "read", patient_param="patient_id", audit_as="alert.read")
    ],
) -> list[AlertRead]:
    """A patient's unresolved alerts, most severe first (care team)."""
    alerts = service.open_alerts(session, patient_id=patient_id)
    access.entry.details = {"count": len(alerts)}
    session.commit()
    return [_alert(a) for a in alerts]


class Acknowledgement(BaseModel):
    """A clinician's acknowledgement of an alert."""

    note: str = Field(default="", max_length=1000)


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertRead)
def acknowledge_alert(
    alert_id: Annotated[str, Path(max_length=36)],
    body: Acknowledgement,
    session: SessionDep,
    access: Annotated[
        Access,
        require("alert", "acknowledge", patient_from=_alert_patient, audit_as="alert.acknowledge"),
    ],
) -> AlertRead:
    """Acknowledge an alert; the time is recorded for time-to-acknowledge reports."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise ProblemError(404, "not_found", "no such alert in your scope")
    try:
        service.acknowledge(
            session,
            alert=alert,
            user_id=int(access.principal.id),
            note=body.note,
            now=clock.utcnow(),
        )
    except service.TransitionError as exc:
        raise ProblemError(
            409,
            "already_acknowledged",
            f"alert is {alert.status} since {alert.acknowledged_at or alert.resolved_at}",
        ) from exc
    access.entry.resource_type, access.entry.resource_id = "alert", alert.id
    access.entry.details = {
        "type": alert.type,
        "severity": alert.severity,
        "seconds_to_acknowledge": int((alert.acknowledged_at - alert.raised_at).total_seconds())
        if alert.acknowledged_at
        else None,
    }
    session.commit()
    return _alert(alert)


class KillSwitch(BaseModel):
    """Whether automatic delivery is switched off for everyone."""

    enabled: bool
    reason: str = Field(default="", max_length=500)


@router.get("/admin/kill-switch", response_model=KillSwitch)
def read_kill_switch(
    session: SessionDep, access: Annotated[Access, require("kill_switch", "read")]
) -> KillSwitch:
    """The kill switch's state."""
    flag = session.get(SystemFlag, service.KILL_SWITCH)
    session.commit()
    return KillSwitch(enabled=bool(flag and flag.enabled), reason=flag.reason if flag else "")


@router.put("/admin/kill-switch", response_model=KillSwitch)
def set_kill_switch(
    body: KillSwitch,
    session: SessionDep,
    access: Annotated[Access, require("kill_switch", "manage", audit_as="kill_switch.set")],
) -> KillSwitch:
    """Send every proposal to clinicians (on), or allow delivery within envelopes (off)."""
    if not body.reason.strip():
        raise ProblemError(422, "reason_required", "say why the kill switch changes")
    flag = service.set_kill_switch(
        session, enabled=body.enabled, reason=body.reason, user_id=int(access.principal.id)
    )
    access.entry.details = {"enabled": flag.enabled, "reason": flag.reason}
    session.commit()
    return KillSwitch(enabled=flag.enabled, reason=flag.reason)


def medication_request(
    session: Session, p: Proposal, decision: Decision | None = None
) -> dict[str, Any]:
    """A proposal as FHIR MedicationRequest: a proposal/draft until ordered (delivered
    within the envelope, or approved or modified by a clinician: `intent=order`, active)."""
    ordered = p.status in (
        ProposalStatus.APPROVED,
        ProposalStatus.MODIFIED,
        ProposalStatus.DELIVERED,
    )
    regimen = session.get(MedicationRegimen, p.regimen_id)
    ladder = session.get(TitrationLadder, regimen.ladder_id) if regimen else None
    drug = ladder.drug if ladder else "unknown"
    unit = ladder.unit if ladder else "mg"
    concept: dict[str, Any] = {"text": drug}
    if ladder and ladder.rxnorm_code:
        concept["coding"] = [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": ladder.rxnorm_code,
                "display": drug,
            }
        ]
    status = {ProposalStatus.REJECTED: "cancelled", ProposalStatus.SUPERSEDED: "stopped"}.get(
        ProposalStatus(p.status), "active" if ordered else "draft"
    )
    dose = ordered_dose(p, decision)
    note = (
        f"titration {p.action} (step {p.from_step} -> {p.to_step}); "
        f"route {p.route}; model {p.model_version}"
    )
    if decision is not None:
        note += (
            f"; {decision.meaning} by {decision.signer_printed_name} "
            f"at {clock.iso(decision.signed_at)} (step {decision.decided_step})"
        )
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": p.id,
        "status": status,
        "intent": "order" if ordered else "proposal",
        "medicationCodeableConcept": concept,
        "subject": {"reference": f"Patient/{p.patient_id}"},
        "authoredOn": clock.iso(p.created_at),
        "dosageInstruction": [
            {
                "text": f"{drug} {dose:g} {unit} {ladder.frequency if ladder else ''}".strip(),
                "doseAndRate": [
                    {
                        "doseQuantity": {
                            "value": dose,
                            "unit": unit,
                            "system": "http://unitsofmeasure.org",
                            "code": unit,
                        }
                    }
                ],
            }
        ],
        "note": [{"text": note}],
    }
    if decision is not None and ordered:
        resource["requester"] = {"display": decision.signer_printed_name}
    return resource


@fhir_router.get("/MedicationRequest")
def search_medication_requests(
    session: SessionDep,
    access: Annotated[
        Access,
        require(
            "medication_request",
            "search",
            patient_from=query_patient,
            audit_as="medication_request.search",
        ),
    ],
    count: Annotated[int, Query(alias="_count", ge=1, le=200)] = 50,
) -> JSONResponse:
    """Proposals and orders for a patient, as a FHIR searchset Bundle."""
    rows = session.scalars(
        select(Proposal)
        .where(col(Proposal.patient_id) == access.patient_id)
        .order_by(col(Proposal.created_at).desc())
        .limit(count)
    ).all()
    decided = decisions_for(session, list(rows))
    entries = [
        {
            "fullUrl": f"MedicationRequest/{p.id}",
            "resource": medication_request(session, p, decided.get(p.id)),
            "search": {"mode": "match"},
        }
        for p in rows
    ]
    access.entry.details = {"count": len(entries)}
    session.commit()
    return JSONResponse(
        {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries},
        media_type="application/fhir+json",
    )
