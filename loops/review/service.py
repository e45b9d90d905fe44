"""Clinician review: the queue, claims, signed decisions, envelope edits, the alerts inbox and
the panel. Functions take keyword arguments and never commit (routes do)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError
from sqlalchemy import ColumnElement, func, or_, select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth import service as auth_service
from app.auth.models import User
from app.auth.principal import Principal
from app.core import clock
from app.core.config import Settings, get_settings
from app.patients.models import Patient
from audit import keys
from device_ingest.models import DeviceClass, MedicationEvent, Reading, ReadingStatus
from loops import service as loop_service
from loops.alerts import AlertType
from loops.models import (
    PROPOSAL_TRANSITIONS,
    Alert,
    AlertStatus,
    MedicationRegimen,
    Proposal,
    ProposalStatus,
    RegimenStatus,
    SymptomReport,
    TitrationLadder,
)
from loops.protocol import target as bp_target
from loops.review import flows
from loops.review.flows import Rerouted
from loops.review.models import (
    MEANINGS,
    AlertEscalation,
    Decision,
    DecisionKind,
    ModifyReason,
    RejectReason,
    ReviewClaim,
)
from loops.review.signing import sign, verify_signature
from loops.visits.models import Visit, VisitStatus
from mlops.features import FEATURE_DOCS
from policies.envelope import EnvelopeRules, TitrationAction
from policies.envelope_templates import envelope_template as _template
from policies.models import SafetyEnvelope

__all__ = [
    "AdherenceDay",
    "BpPoint",
    "ControlStatus",
    "EnvelopeEdit",
    "InboxAlert",
    "LadderStep",
    "MedicationChange",
    "PanelFilter",
    "PanelRow",
    "PatientResponse",
    "ProposalDetail",
    "QueueItem",
    "ReasonText",
    "Rerouted",
    "ReviewConflict",
    "ReviewInvalid",
    "ReviewNotFound",
    "ShapFactor",
    "SignatureRefused",
    "acknowledge",
    "active_ladder",
    "alerts_inbox",
    "claim",
    "decide",
    "decisions_of",
    "edit_envelope",
    "envelope_history",
    "envelope_template",
    "escalate",
    "panel",
    "proposal_detail",
    "queue",
    "release",
    "risk_score",
    "signing_public_key",
    "user_names",
    "verify_signature",
]

UserLike = User | Principal
# Settings defaults, for callers that pass no settings (one source: app/core/config.py).
_CLAIM_MINUTES: int = Settings.model_fields["review_claim_minutes"].default
_TARGET_HOURS: int = Settings.model_fields["review_target_hours"].default
CHART_WINDOW = timedelta(days=30)
MAX_REASON_TEXT = 2000


# ------------------------------------------------------------------ errors


class ReviewConflict(Exception):
    """The act cannot be done as asked because of someone else's act (409): `code` says
    which, `holder` (a printed name) and `at` say who and when, where known."""

    def __init__(
        self, code: str, holder: str | None = None, at: datetime | None = None, message: str = ""
    ) -> None:
        self.code, self.holder, self.at = code, holder, at
        self.message = message or _conflict_message(code, holder, at)
        super().__init__(self.message)


def _conflict_message(code: str, holder: str | None, at: datetime | None) -> str:
    who = holder or "someone else"
    when = f" at {at.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if at else ""
    return {
        "already_decided": f"already decided by {who}{when}",
        "claimed_by_other": f"claimed by {who}{when}",
        "stale_envelope": f"the envelope was changed by {who}{when}; reload it",
        "already_acknowledged": f"already acknowledged by {who}{when}",
        "regimen_changed": f"the patient's regimen changed{when}; the proposal is out of date",
        "alert_resolved": f"the alert was resolved{when}",
    }.get(code, code.replace("_", " "))


class SignatureRefused(Exception):
    """The electronic signature was refused: the meaning was not confirmed, or the password
    was wrong (or the account throttled or locked). Nothing was decided; the caller audits it
    as a denial and commits, which keeps the failed attempt's count toward lockout."""

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        self.code, self.message, self.retry_after = code, message, retry_after
        super().__init__(message)


class ReviewNotFound(LookupError):
    """No such proposal, alert or patient."""


class ReviewInvalid(ValueError):
    """Input that cannot be accepted (422); `field` names the offending field."""

    def __init__(self, field: str, code: str, message: str) -> None:
        self.field, self.code, self.message = field, code, message
        super().__init__(f"{field}: {message}")


# ------------------------------------------------------------------ helpers


def _user(session: Session, user: UserLike) -> User:
    if isinstance(user, User):
        return user
    found = session.get(User, int(user.id)) if user.id.isdigit() else None
    if found is None:
        raise ReviewNotFound("no such user")
    return found


def user_names(session: Session, ids: Iterable[int | None]) -> dict[int, str]:
    """Printed names (full names) of users, by id, in one query."""
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    rows = session.execute(
        select(col(User.id), col(User.full_name)).where(col(User.id).in_(wanted))
    )
    return {int(uid): str(name) for uid, name in rows}


def _ladder_of(
    session: Session, regimen_id: str
) -> tuple[MedicationRegimen | None, TitrationLadder | None]:
    regimen = session.get(MedicationRegimen, regimen_id)
    ladder = session.get(TitrationLadder, regimen.ladder_id) if regimen else None
    return regimen, ladder


@lru_cache(maxsize=4)
def _signing_key(path: str, mtime_ns: int) -> Ed25519PrivateKey:
    return keys.load_signing_key(Path(path))


def _load_signing_key(settings: Settings) -> Ed25519PrivateKey:
    assert settings.signing_key_path is not None
    path = settings.signing_key_path
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    return _signing_key(str(path), mtime)


def signing_public_key(settings: Settings) -> Ed25519PublicKey:
    """The public half of the key that signs decisions (and audit tree heads)."""
    return _load_signing_key(settings).public_key()


def _target(settings: Settings | None) -> timedelta:
    return timedelta(hours=settings.review_target_hours if settings else _TARGET_HOURS)


def _decision_of(session: Session, proposal_id: str) -> Decision | None:
    return session.scalars(select(Decision).where(col(Decision.proposal_id) == proposal_id)).first()


def _pending(session: Session, proposal_id: str) -> Proposal:
    """The proposal, locked for this transaction, if it still waits for a decision."""
    proposal = session.get(Proposal, proposal_id, with_for_update=True, populate_existing=True)
    if proposal is None:
        raise ReviewNotFound("no such proposal")
    if proposal.status != ProposalStatus.PENDING_REVIEW:
        decision = _decision_of(session, proposal_id)
        if decision is not None:
            raise ReviewConflict(
                "already_decided", decision.signer_printed_name, decision.signed_at
            )
        raise ReviewConflict(
            "not_pending", message=f"the proposal is {proposal.status}, not waiting for review"
        )
    return proposal


def _live_claim(session: Session, proposal_id: str, now: datetime) -> ReviewClaim | None:
    found = session.get(ReviewClaim, proposal_id)
    return found if found is not None and found.expires_at > now else None


# ------------------------------------------------------------------ queue


HIGH_READING_MARGIN = (15.0, 10.0)  # mmHg above the patient's home target (SBP, DBP)


def risk_score(
    *,
    crisis_alert: bool,
    other_alerts: int,
    action: str,
    sbp_mean_7d: float | None,
    dbp_mean_7d: float | None,
    diabetes_or_ckd: bool = False,
) -> int:
    """Queue priority, higher first: 3 an unresolved hypertensive-crisis alert, 2 any other
    unresolved alert, 1 an increase proposed while the 7-day validated-cuff mean is at least
    15/10 mmHg above the patient's home target (150/95, or 145/90 with diabetes or CKD),
    0 anything else. Ties are broken by age in the queue (oldest first)."""
    if crisis_alert:
        return 3
    if other_alerts > 0:
        return 2
    if action == TitrationAction.INCREASE:
        goal_sbp, goal_dbp = bp_target(diabetes_or_ckd)
        high_sbp = sbp_mean_7d is not None and sbp_mean_7d >= goal_sbp + HIGH_READING_MARGIN[0]
        high_dbp = dbp_mean_7d is not None and dbp_mean_7d >= goal_dbp + HIGH_READING_MARGIN[1]
        if high_sbp or high_dbp:
            return 1
    return 0


@dataclass
class QueueItem:
    """One queued proposal as the queue shows it."""

    proposal: Proposal
    patient: Patient
    risk: int
    waiting: timedelta
    target: timedelta
    overdue: bool
    claim: ReviewClaim | None
    claimed_by: str | None
    drug: str = ""
    unit: str = "mg"


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def queue(
    session: Session,
    *,
    patient_filter: ColumnElement[bool],
    now: datetime,
    limit: int = 50,
    offset: int = 0,
    patient_id: str | None = None,
    settings: Settings | None = None,
) -> tuple[list[QueueItem], int]:
    """Proposals waiting for review among the caller's patients, highest risk first, then
    oldest first; one page and the total. A fixed number of queries, whatever the size."""
    pending = col(Proposal.status) == ProposalStatus.PENDING_REVIEW
    stmt = (
        select(
            col(Proposal.id),
            col(Proposal.patient_id),
            col(Proposal.action),
            col(Proposal.created_at),
            col(Proposal.features)["cuff_sbp_mean_7d"].as_float(),
            col(Proposal.features)["cuff_dbp_mean_7d"].as_float(),
            col(Patient.has_diabetes),
            col(Patient.has_ckd),
        )
        .join(Patient, col(Patient.id) == col(Proposal.patient_id))
        .where(pending, patient_filter)
    )
    if patient_id is not None:
        stmt = stmt.where(col(Proposal.patient_id) == patient_id)
    rows = session.execute(stmt).all()
    if not rows:
        return [], 0
    crisis: set[str] = set()
    others: dict[str, int] = defaultdict(int)
    waiting_patients = select(col(Proposal.patient_id)).where(pending).distinct()
    for pid, kind in session.execute(
        select(col(Alert.patient_id), col(Alert.type)).where(
            col(Alert.status) != AlertStatus.RESOLVED,
            col(Alert.patient_id).in_(waiting_patients),
        )
    ):
        if kind == AlertType.CRISIS:
            crisis.add(pid)
        else:
            others[pid] += 1
    scored = sorted(
        (
            (
                -risk_score(
                    crisis_alert=pid in crisis,
                    other_alerts=others.get(pid, 0),
                    action=action,
                    sbp_mean_7d=_num(sbp),
                    dbp_mean_7d=_num(dbp),
                    diabetes_or_ckd=bool(diabetes or ckd),
                ),
                created,
                proposal_id,
            )
            for proposal_id, pid, action, created, sbp, dbp, diabetes, ckd in rows
        ),
    )
    page = scored[offset : offset + limit]
    if not page:
        return [], len(rows)
    ids = [proposal_id for _, _, proposal_id in page]
    proposals = {
        p.id: p for p in session.scalars(select(Proposal).where(col(Proposal.id).in_(ids)))
    }
    patients = {
        p.id: p
        for p in session.scalars(
            select(Patient).where(col(Patient.id).in_({p.patient_id for p in proposals.values()}))
        )
    }
    ladders = {
        regimen_id: (drug, unit)
        for regimen_id, drug, unit in session.execute(
            select(col(MedicationRegimen.id), col(TitrationLadder.drug), col(TitrationLadder.unit))
            .join(TitrationLadder, col(TitrationLadder.id) == col(MedicationRegimen.ladder_id))
            .where(col(MedicationRegimen.id).in_({p.regimen_id for p in proposals.values()}))
        )
    }
    claims = {
        c.proposal_id: (c, name)
        for c, name in session.execute(
            select(ReviewClaim, col(User.full_name))
            .join(User, col(User.id) == col(ReviewClaim.user_id))
            .where(col(ReviewClaim.proposal_id).in_(ids), col(ReviewClaim.expires_at) > now)
        ).tuples()
    }
    target = _target(settings)
    items = []
    for neg_risk, created, proposal_id in page:
        proposal = proposals[proposal_id]
        held, holder = claims.get(proposal_id, (None, None))
        drug, unit = ladders.get(proposal.regimen_id, ("", "mg"))
        items.append(
            QueueItem(
                proposal=proposal,
                patient=patients[proposal.patient_id],
                risk=-neg_risk,
                waiting=now - created,
                target=target,
                overdue=now - created > target,
                claim=held,
                claimed_by=holder,
                drug=drug,
                unit=unit,
            )
        )
    return items, len(rows)


# ------------------------------------------------------------------ claims


def claim(
    session: Session,
    *,
    proposal_id: str,
    user: UserLike,
    now: datetime,
    settings: Settings | None = None,
) -> ReviewClaim:
    """Lock a queued proposal for this user until the claim lapses; claiming again extends
    it. Another user's live claim, or a proposal no longer waiting, is a ReviewConflict."""
    me = _user(session, user)
    _pending(session, proposal_id)
    ttl = timedelta(minutes=settings.review_claim_minutes if settings else _CLAIM_MINUTES)
    held = session.get(ReviewClaim, proposal_id)
    if held is not None and held.user_id != me.id and held.expires_at > now:
        holder = user_names(session, [held.user_id]).get(held.user_id)
        raise ReviewConflict("claimed_by_other", holder, held.claimed_at)
    if held is None:
        held = ReviewClaim(
            proposal_id=proposal_id, user_id=me.id or 0, claimed_at=now, expires_at=now + ttl
        )
    elif held.user_id != me.id or held.expires_at <= now:  # a lapsed claim is taken over
        held.user_id, held.claimed_at, held.expires_at = me.id or 0, now, now + ttl
    else:
        held.expires_at = now + ttl
    session.add(held)
    session.flush()
    return held


def release(session: Session, *, proposal_id: str, user: UserLike) -> bool:
    """Give up this user's claim; True if one was released (releasing nothing is fine)."""
    me = _user(session, user)
    held = session.get(ReviewClaim, proposal_id)
    if held is None or held.user_id != me.id:
        return False
    session.delete(held)
    session.flush()
    return True


# ------------------------------------------------------------------ decisions


def _reason(
    kind: DecisionKind, reason_code: str | None, reason_text: str | None
) -> tuple[str | None, str]:
    code = (reason_code or "").strip() or None
    text = (reason_text or "").strip()
    if len(text) > MAX_REASON_TEXT:
        raise ReviewInvalid("reason_text", "too_long", f"at most {MAX_REASON_TEXT} characters")
    if kind is DecisionKind.APPROVE:
        return None, text
    allowed = RejectReason if kind is DecisionKind.REJECT else ModifyReason
    if code is None:
        if kind is DecisionKind.REJECT:
            raise ReviewInvalid("reason_code", "reason_required", "a rejection needs a reason")
        if not text:
            raise ReviewInvalid("reason_code", "reason_required", "a change needs a reason")
        return None, text
    if code not in {r.value for r in allowed}:
        raise ReviewInvalid(
            "reason_code", "invalid_reason", f"one of {', '.join(r.value for r in allowed)}"
        )
    if code == "other" and not text:
        raise ReviewInvalid("reason_text", "reason_required", "say what the other reason is")
    return code, text


_REFUSALS = {
    auth_service.LoginOutcome.BAD_CREDENTIALS: "the password is wrong: nothing was decided",
    auth_service.LoginOutcome.THROTTLED: "too many wrong passwords: wait, then sign again",
    auth_service.LoginOutcome.LOCKED: "the account is locked after too many wrong passwords",
}


def _label(kind: DecisionKind, proposal: Proposal, decided_step: int) -> str:
    if kind is DecisionKind.APPROVE:
        return proposal.action
    change = decided_step - proposal.from_step
    return str(
        TitrationAction.INCREASE
        if change > 0
        else TitrationAction.DECREASE
        if change < 0
        else TitrationAction.HOLD
    )


def decision_audit_details(decision: Decision) -> dict[str, Any]:
    """What a decision's audit entry records of it (the API and the portal alike)."""
    return {
        "decision_id": decision.id,
        "kind": str(decision.kind),
        "from_step": decision.from_step,
        "proposed_step": decision.proposed_step,
        "decided_step": decision.decided_step,
        "reason_code": decision.reason_code,
        "meaning": decision.meaning,
        "signed_at": clock.iso(decision.signed_at),
        "record_hash": decision.record_hash,
    }


def decide(
    session: Session,
    *,
    proposal_id: str,
    user: UserLike,
    kind: DecisionKind | str,
    password: str,
    meaning_confirmed: bool,
    now: datetime,
    decided_step: int | None = None,
    reason_code: str | None = None,
    reason_text: str | None = None,
    settings: Settings | None = None,
) -> Decision:
    """Decide a queued proposal under an electronic signature (21 CFR Part 11).

    In order: the input is checked (ReviewInvalid), the proposal must still wait and carry
    no other user's live claim (ReviewConflict), the meaning must be confirmed and the
    password re-entered (SignatureRefused; a wrong one counts toward the sign-in lockout).
    Only then does anything change: approve or modify moves the regimen and delivers the
    order to the patient, reject changes nothing for the patient; the signed decision with
    its label snapshot is stored and the claim removed. Pass the app's `settings` (the
    signing key and argon2 settings); without them the process settings are loaded.
    """
    settings = settings or get_settings()
    try:
        kind = DecisionKind(kind)
    except ValueError as exc:
        raise ReviewInvalid("kind", "invalid_kind", "approve, modify or reject") from exc
    code, text = _reason(kind, reason_code, reason_text)
    me = _user(session, user)
    proposal = _pending(session, proposal_id)
    regimen, ladder = _ladder_of(session, proposal.regimen_id)
    if regimen is None or ladder is None:
        raise ReviewNotFound("the proposal's regimen is gone")
    steps = len(ladder.steps)
    if kind is DecisionKind.APPROVE:
        decided = proposal.to_step
        if not 0 <= decided < steps:
            raise ReviewInvalid(
                "kind", "not_on_ladder", "the proposed step is not on the ladder: modify or reject"
            )
    elif kind is DecisionKind.MODIFY:
        if decided_step is None or not 0 <= decided_step < steps:
            raise ReviewInvalid(
                "decided_step", "not_on_ladder", f"pick a ladder step from 0 to {steps - 1}"
            )
        if decided_step == proposal.to_step:
            raise ReviewInvalid(
                "decided_step", "same_as_proposed", "that is the proposed step: approve it"
            )
        decided = decided_step
    else:
        decided = proposal.from_step
    held = _live_claim(session, proposal_id, now)
    if held is not None and held.user_id != me.id:
        holder = user_names(session, [held.user_id]).get(held.user_id)
        raise ReviewConflict("claimed_by_other", holder, held.claimed_at)
    if kind is not DecisionKind.REJECT and (
        regimen.status != RegimenStatus.ACTIVE or regimen.current_step != proposal.from_step
    ):
        raise ReviewConflict("regimen_changed", None, regimen.last_changed_at)
    if not meaning_confirmed:
        raise SignatureRefused(
            "meaning_not_confirmed", f"confirm the meaning of your signature: {MEANINGS[kind]}"
        )
    result = auth_service.authenticate(
        session, username=me.username, password=password, settings=settings
    )
    if result.outcome is not auth_service.LoginOutcome.OK or result.user is None:
        raise SignatureRefused(
            str(result.outcome), _REFUSALS.get(result.outcome, "refused"), result.retry_after
        )
    status = {
        DecisionKind.APPROVE: ProposalStatus.APPROVED,
        DecisionKind.MODIFY: ProposalStatus.MODIFIED,
        DecisionKind.REJECT: ProposalStatus.REJECTED,
    }[kind]
    loop_service.check_transition(PROPOSAL_TRANSITIONS, ProposalStatus(proposal.status), status)
    proposal.status = status
    decided_dose = ladder.steps[decided] if 0 <= decided < steps else proposal.from_dose
    if kind is not DecisionKind.REJECT:
        proposal.delivered_at = now
        if regimen.current_step != decided:
            regimen.current_step, regimen.last_changed_at = decided, now
            session.add(regimen)
        lead = "Approved" if kind is DecisionKind.APPROVE else "Changed"
        loop_service.notify(
            session,
            patient_id=proposal.patient_id,
            kind="recommendation",
            text=f"{lead} by your clinician: {ladder.drug} {decided_dose:g} {ladder.unit} "
            f"{ladder.frequency}.",
        )
    session.add(proposal)
    decision = Decision(
        proposal_id=proposal.id,
        patient_id=proposal.patient_id,
        user_id=me.id or 0,
        kind=str(kind),
        from_step=proposal.from_step,
        proposed_step=proposal.to_step,
        decided_step=decided,
        from_dose=proposal.from_dose,
        proposed_dose=proposal.to_dose,
        decided_dose=decided_dose,
        reason_code=code,
        reason_text=text,
        feature_hash=proposal.feature_hash,
        features=dict(proposal.features),
        model_version=proposal.model_version,
        proposal_action=proposal.action,
        probabilities=dict(proposal.probabilities),
        confidence=proposal.confidence,
        label_action=_label(kind, proposal, decided),
        signer_user_id=me.id or 0,
        signer_printed_name=me.full_name,
        signer_username=me.username,
        meaning=MEANINGS[kind],
        signed_at=now,
        record_hash="",
        signature="",
        key_id="",
    )
    sign(decision, _load_signing_key(settings))
    session.add(decision)
    stale = session.get(ReviewClaim, proposal_id)
    if stale is not None:
        session.delete(stale)
    session.flush()
    return decision


# ------------------------------------------------------------------ proposal detail


@dataclass(frozen=True)
class LadderStep:
    """One step of the patient's ladder, marked where the patient is and what is proposed."""

    step: int
    dose: float
    current: bool
    proposed: bool


@dataclass(frozen=True)
class BpPoint:
    """One blood-pressure reading for the chart."""

    time: datetime
    systolic: float
    diastolic: float


@dataclass(frozen=True)
class AdherenceDay:
    """Doses reported taken and missed on one UTC day."""

    day: date
    taken: int
    missed: int


@dataclass(frozen=True)
class MedicationChange:
    """A dose change that reached the patient: delivered automatically, approved or
    modified (with who signed it)."""

    time: datetime
    proposal_id: str
    source: str  # auto, approve, modify
    from_step: int
    to_step: int
    from_dose: float
    to_dose: float
    by: str | None


@dataclass(frozen=True)
class ShapFactor:
    """One feature's contribution to the proposed action (logit units), with its value."""

    feature: str
    label: str
    value: float | None
    shap: float


@dataclass(frozen=True)
class ReasonText:
    """A routing reason code and what it means for a clinician."""

    code: str
    text: str


@dataclass(frozen=True)
class PatientResponse:
    """The patient's answer to a recommendation."""

    proposal_id: str
    action: str
    to_dose: float
    response: str
    responded_at: datetime | None


REASON_TEXTS: dict[str, str] = {
    "kill_switch": "Automatic delivery is switched off for everyone (kill switch).",
    "no_envelope": "The patient has no safety envelope in force.",
    "inconsistent_proposal": "The proposed step does not match the proposed action.",
    "outside_ladder": "The current or proposed step is not on the dose ladder.",
    "action_not_auto_deliverable": "The envelope does not delegate this action.",
    "step_change_exceeds_envelope": "The step change is larger than the envelope allows.",
    "dose_outside_envelope": "The new dose is outside the envelope's dose range.",
    "confidence_below_envelope": "The model's confidence is below the envelope's minimum.",
    "insufficient_validated_cuff_data": "Too few validated-cuff readings in the last 7 days.",
    "recent_change": "The dose changed too recently.",
    "auto_change_limit_reached": "The limit of automatic changes in 30 days is reached.",
    "open_alert": "The patient has an unacknowledged alert or a pending crisis re-measurement.",
    "poor_adherence": "Adherence over 14 days is below 80%.",
    flows.TOO_OLD: "The envelope now allows it, but it waited over 24 hours: decide it.",
    flows.REGIMEN_CHANGED: "The patient's regimen changed after this proposal was made.",
}


@dataclass
class ProposalDetail:
    """Everything the proposal page shows."""

    proposal: Proposal
    patient: Patient
    regimen: MedicationRegimen | None
    ladder: TitrationLadder | None
    steps: list[LadderStep]
    envelope: SafetyEnvelope | None
    envelope_rules: EnvelopeRules | None
    envelope_author: str | None
    reasons: list[ReasonText]
    shap: list[ShapFactor]
    clinician_text: str
    patient_text: str
    target: tuple[float, float]
    window_start: datetime
    cuff: list[BpPoint]
    cuffless: list[BpPoint]
    adherence: list[AdherenceDay]
    changes: list[MedicationChange]
    alerts: list[Alert]
    responses: list[PatientResponse]
    symptoms: list[SymptomReport]
    past_decisions: list[Decision]
    claim: ReviewClaim | None
    claimed_by: str | None
    decision: Decision | None
    waiting: timedelta
    review_target: timedelta
    overdue: bool


def proposal_detail(
    session: Session, *, proposal_id: str, now: datetime, settings: Settings | None = None
) -> ProposalDetail:
    """The proposal with its patient's context of the last 30 days (chart series, adherence,
    medication changes, alerts, responses and symptoms), explanation, envelope, claim and
    decision. A fixed number of queries."""
    proposal = session.get(Proposal, proposal_id)
    if proposal is None:
        raise ReviewNotFound("no such proposal")
    patient = session.get(Patient, proposal.patient_id)
    if patient is None:
        raise ReviewNotFound("no such patient")
    pid = patient.id
    since = now - CHART_WINDOW
    regimen, ladder = _ladder_of(session, proposal.regimen_id)
    steps = [
        LadderStep(
            i,
            dose,
            current=regimen is not None and i == regimen.current_step,
            proposed=i == proposal.to_step,
        )
        for i, dose in enumerate(ladder.steps if ladder else [])
    ]
    envelope = loop_service.envelope_in_force(session, patient_id=pid, at=now)
    cuff: list[BpPoint] = []
    cuffless: list[BpPoint] = []
    for when, dclass, sbp, dbp in session.execute(
        select(
            col(Reading.effective_start),
            col(Reading.device_class),
            col(Reading.systolic),
            col(Reading.diastolic),
        )
        .where(
            col(Reading.patient_id) == pid,
            col(Reading.effective_start) >= since,
            col(Reading.effective_start) <= now,
            col(Reading.kind) == "blood_pressure",
            col(Reading.status) == ReadingStatus.ACCEPTED,
            col(Reading.statistic).is_(None),
        )
        .order_by(col(Reading.effective_start))
    ):
        if sbp is None or dbp is None:
            continue
        point = BpPoint(when, sbp, dbp)
        if dclass == DeviceClass.VALIDATED_CUFF:
            cuff.append(point)
        elif dclass == DeviceClass.CUFFLESS_WEARABLE:
            cuffless.append(point)
    doses: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for when, taken in session.execute(
        select(col(MedicationEvent.effective_start), col(MedicationEvent.taken)).where(
            col(MedicationEvent.patient_id) == pid,
            col(MedicationEvent.effective_start) >= since,
            col(MedicationEvent.effective_start) <= now,
        )
    ):
        doses[when.astimezone(UTC).date()][0 if taken else 1] += 1
    recent = session.execute(
        select(Proposal, Decision)
        .outerjoin(Decision, col(Decision.proposal_id) == col(Proposal.id))
        .where(
            col(Proposal.patient_id) == pid,
            or_(
                col(Proposal.delivered_at) >= since,
                col(Proposal.responded_at) >= since,
            ),
        )
        .order_by(col(Proposal.created_at))
    ).tuples()
    changes: list[MedicationChange] = []
    responses: list[PatientResponse] = []
    for p, d in recent:
        if p.delivered_at is not None and p.delivered_at >= since:
            source = str(d.kind) if d is not None else "auto"
            to_step = d.decided_step if d is not None else p.to_step
            to_dose = d.decided_dose if d is not None else p.to_dose
            if to_step != p.from_step:
                changes.append(
                    MedicationChange(
                        p.delivered_at,
                        p.id,
                        source,
                        p.from_step,
                        to_step,
                        p.from_dose,
                        to_dose,
                        d.signer_printed_name if d is not None else None,
                    )
                )
        if p.patient_response is not None and p.responded_at is not None:
            responses.append(
                PatientResponse(
                    p.id,
                    p.action,
                    d.decided_dose if d is not None else p.to_dose,
                    p.patient_response,
                    p.responded_at,
                )
            )
    alerts = list(
        session.scalars(
            select(Alert)
            .where(
                col(Alert.patient_id) == pid,
                or_(col(Alert.status) != AlertStatus.RESOLVED, col(Alert.raised_at) >= since),
            )
            .order_by(col(Alert.raised_at).desc())
        )
    )
    symptoms = list(
        session.scalars(
            select(SymptomReport)
            .where(col(SymptomReport.patient_id) == pid, col(SymptomReport.reported_at) >= since)
            .order_by(col(SymptomReport.reported_at).desc())
        )
    )
    past = list(
        session.scalars(
            select(Decision)
            .where(col(Decision.patient_id) == pid)
            .order_by(col(Decision.signed_at).desc())
            .limit(10)
        )
    )
    decision = next((d for d in past if d.proposal_id == proposal.id), None) or _decision_of(
        session, proposal.id
    )
    held = _live_claim(session, proposal.id, now)
    names = user_names(
        session, [held.user_id if held else None, envelope.author_id if envelope else None]
    )
    explanation = proposal.explanation or {}
    shap_values = explanation.get("shap") or {}
    factors = sorted(
        (
            ShapFactor(
                name,
                FEATURE_DOCS.get(name, name),
                _num(proposal.features.get(name)),
                float(value),
            )
            for name, value in shap_values.items()
            if _num(value) is not None
        ),
        key=lambda f: -abs(f.shap),
    )
    review_target = _target(settings)
    waiting = now - proposal.created_at
    return ProposalDetail(
        proposal=proposal,
        patient=patient,
        regimen=regimen,
        ladder=ladder,
        steps=steps,
        envelope=envelope,
        envelope_rules=EnvelopeRules.model_validate(envelope.rules) if envelope else None,
        envelope_author=names.get(envelope.author_id) if envelope else None,
        reasons=[ReasonText(r, REASON_TEXTS.get(r, r.replace("_", " "))) for r in proposal.reasons],
        shap=factors,
        clinician_text=str(explanation.get("clinician_text", "")),
        patient_text=str(explanation.get("patient_text", "")),
        target=bp_target(patient.has_diabetes or patient.has_ckd),
        window_start=since,
        cuff=cuff,
        cuffless=cuffless,
        adherence=[AdherenceDay(day, n[0], n[1]) for day, n in sorted(doses.items())],
        changes=changes,
        alerts=alerts,
        responses=responses,
        symptoms=symptoms,
        past_decisions=past,
        claim=held,
        claimed_by=names.get(held.user_id) if held else None,
        decision=decision,
        waiting=waiting,
        review_target=review_target,
        overdue=proposal.status == ProposalStatus.PENDING_REVIEW and waiting > review_target,
    )


# ------------------------------------------------------------------ envelopes


@dataclass
class EnvelopeEdit:
    """A new envelope version (in force at once) and what its re-check did to the queue."""

    envelope: SafetyEnvelope
    rerouted: list[Rerouted]


def envelope_history(session: Session, *, patient_id: str) -> list[SafetyEnvelope]:
    """Every envelope version of the patient, newest first."""
    return list(
        session.scalars(
            select(SafetyEnvelope)
            .where(col(SafetyEnvelope.patient_id) == patient_id)
            .order_by(col(SafetyEnvelope.version).desc())
        )
    )


def envelope_template(drug: str, *, ladder_steps: int | None = None) -> EnvelopeRules:
    """The editor's starting rules for a drug (policies/envelope_templates.py)."""
    return _template(drug, ladder_steps=ladder_steps)


def active_ladder(session: Session, *, patient_id: str) -> TitrationLadder | None:
    """The ladder of the patient's newest active regimen, if any."""
    return session.scalars(
        select(TitrationLadder)
        .join(MedicationRegimen, col(MedicationRegimen.ladder_id) == col(TitrationLadder.id))
        .where(
            col(MedicationRegimen.patient_id) == patient_id,
            col(MedicationRegimen.status) == RegimenStatus.ACTIVE,
        )
        .order_by(col(MedicationRegimen.started_at).desc())
        .limit(1)
    ).first()


def _validated_rules(rules: dict[str, Any], ladder: TitrationLadder | None) -> EnvelopeRules:
    try:
        checked = EnvelopeRules.model_validate(rules)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(part) for part in error.get("loc", ()))
        # The only model-level rule compares the dose bounds.
        raise ReviewInvalid(loc or "max_dose_step", "invalid_rules", error["msg"]) from exc
    if ladder is not None:
        top = len(ladder.steps) - 1
        for name in ("min_dose_step", "max_dose_step"):
            value = getattr(checked, name)
            if value is not None and value > top:
                raise ReviewInvalid(
                    name, "invalid_rules", f"the patient's ladder has steps 0 to {top}"
                )
    return checked


# Advisory-lock class of envelope edits (two-key form: its own key space, no table privilege
# needed; the application role may not lock `patients` rows FOR UPDATE).
_ENVELOPE_LOCK_CLASS = 0x454E56


def _lock_envelopes(session: Session, patient_id: str) -> None:
    """Serialise envelope edits of one patient until the transaction ends (PostgreSQL; SQLite
    writers are serial already), so a stale edit is a conflict, not a duplicate version."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:kind, hashtext(:patient))"),
            {"kind": _ENVELOPE_LOCK_CLASS, "patient": patient_id},
        )


def edit_envelope(
    session: Session,
    *,
    patient_id: str,
    user: UserLike,
    rules: dict[str, Any],
    reason: str,
    expected_version: int | None,
    now: datetime,
) -> EnvelopeEdit:
    """Write a new envelope version, in force at once, then re-check the patient's queued
    proposals against it. `expected_version` is the newest version the editor loaded (None
    or 0 when there was none); if someone has written another since, ReviewConflict
    'stale_envelope' names them. Invalid rules raise ReviewInvalid naming the field."""
    me = _user(session, user)
    if not reason or not reason.strip():
        raise ReviewInvalid("reason", "reason_required", "say why the envelope changes")
    if len(reason) > 500:
        raise ReviewInvalid("reason", "too_long", "at most 500 characters")
    if session.get(Patient, patient_id) is None:
        raise ReviewNotFound("no such patient")
    _lock_envelopes(session, patient_id)
    latest = session.scalars(
        select(SafetyEnvelope)
        .where(col(SafetyEnvelope.patient_id) == patient_id)
        .order_by(col(SafetyEnvelope.version).desc())
        .limit(1)
    ).first()
    if (latest.version if latest else 0) != (expected_version or 0):
        if latest is None:
            raise ReviewConflict("stale_envelope", message="the patient has no envelope yet")
        author = user_names(session, [latest.author_id]).get(latest.author_id)
        raise ReviewConflict("stale_envelope", author, latest.created_at)
    checked = _validated_rules(rules, active_ladder(session, patient_id=patient_id))
    envelope = loop_service.add_envelope_version(
        session,
        patient_id=patient_id,
        rules=checked,
        author_id=me.id or 0,
        reason=reason.strip(),
        effective_at=now,
    )
    rerouted = flows.reroute_pending(session, patient_id=patient_id, envelope=envelope, now=now)
    return EnvelopeEdit(envelope, rerouted)


# ------------------------------------------------------------------ alerts inbox

_SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
_STATUS_RANK = {AlertStatus.OPEN: 0, AlertStatus.ACKNOWLEDGED: 1, AlertStatus.RESOLVED: 2}
RESOLVED_SHOWN = timedelta(days=7)


@dataclass
class InboxAlert:
    """An alert in the clinician's inbox."""

    alert: Alert
    patient: Patient
    pinned: bool  # an unresolved hypertensive crisis stays on top
    waiting: timedelta  # since raised
    acknowledged_by: str | None
    escalations: int  # manual escalations by clinicians


def alerts_inbox(
    session: Session,
    *,
    patient_filter: ColumnElement[bool],
    now: datetime,
    include_resolved: bool = False,
    limit: int = 200,
) -> list[InboxAlert]:
    """Alerts of the caller's patients: unresolved crises pinned first, then unacknowledged
    before acknowledged (and resolved, if included: those of the last 7 days), each by
    severity, oldest first."""
    shown = col(Alert.status) != AlertStatus.RESOLVED
    if include_resolved:
        shown = or_(shown, col(Alert.resolved_at) >= now - RESOLVED_SHOWN)
    rows = session.execute(
        select(Alert, Patient)
        .join(Patient, col(Patient.id) == col(Alert.patient_id))
        .where(shown, patient_filter)
    ).tuples()
    found = [(a, p) for a, p in rows]
    found.sort(
        key=lambda ap: (
            not _pinned(ap[0]),
            _STATUS_RANK.get(AlertStatus(ap[0].status), 3),
            _SEVERITY_RANK.get(ap[0].severity, 9),
            ap[0].raised_at,
            ap[0].id,
        )
    )
    found = found[:limit]
    names = user_names(session, [a.acknowledged_by for a, _ in found])
    counts: dict[str, int] = {}
    if found:
        counts = {
            alert_id: int(n)
            for alert_id, n in session.execute(
                select(col(AlertEscalation.alert_id), func.count())
                .where(col(AlertEscalation.alert_id).in_([a.id for a, _ in found]))
                .group_by(col(AlertEscalation.alert_id))
            )
        }
    return [
        InboxAlert(
            alert=a,
            patient=p,
            pinned=_pinned(a),
            waiting=now - a.raised_at,
            acknowledged_by=names.get(a.acknowledged_by) if a.acknowledged_by else None,
            escalations=counts.get(a.id, 0),
        )
        for a, p in found
    ]


def _pinned(alert: Alert) -> bool:
    return alert.type == AlertType.CRISIS and alert.status != AlertStatus.RESOLVED


def _alert(session: Session, alert_id: str) -> Alert:
    alert = session.get(Alert, alert_id, with_for_update=True, populate_existing=True)
    if alert is None:
        raise ReviewNotFound("no such alert")
    return alert


def acknowledge(
    session: Session, *, alert_id: str, user: UserLike, note: str, now: datetime
) -> Alert:
    """Acknowledge an alert with a note (the time is kept for time-to-acknowledge reports);
    an alert already acknowledged or resolved is a ReviewConflict naming who and when."""
    me = _user(session, user)
    if len(note) > 1000:
        raise ReviewInvalid("note", "too_long", "at most 1000 characters")
    alert = _alert(session, alert_id)
    try:
        return loop_service.acknowledge(
            session, alert=alert, user_id=me.id or 0, note=note.strip(), now=now
        )
    except loop_service.TransitionError as exc:
        who = user_names(session, [alert.acknowledged_by]).get(alert.acknowledged_by or 0)
        raise ReviewConflict(
            "already_acknowledged", who, alert.acknowledged_at or alert.resolved_at
        ) from exc


def escalate(session: Session, *, alert_id: str, user: UserLike, note: str, now: datetime) -> Alert:
    """Escalate an unresolved alert by hand: the level rises, the time is kept (it also
    restarts the automatic escalation interval) and the note says to whom and why."""
    me = _user(session, user)
    note = note.strip()
    if not note:
        raise ReviewInvalid("note", "note_required", "say to whom and why you escalate")
    if len(note) > 1000:
        raise ReviewInvalid("note", "too_long", "at most 1000 characters")
    alert = _alert(session, alert_id)
    if alert.status == AlertStatus.RESOLVED:
        raise ReviewConflict("alert_resolved", None, alert.resolved_at)
    alert.escalation_level += 1
    alert.last_escalated_at = now
    session.add(alert)
    session.add(
        AlertEscalation(
            alert_id=alert.id,
            user_id=me.id or 0,
            note=note,
            level=alert.escalation_level,
            escalated_at=now,
        )
    )
    session.flush()
    return alert


# ------------------------------------------------------------------ panel


class ControlStatus(StrEnum):
    """Blood-pressure control over the last 7 days (validated-cuff mean vs home target)."""

    CONTROLLED = "controlled"
    UNCONTROLLED = "uncontrolled"
    NO_DATA = "no_data"


class PanelFilter(StrEnum):
    """Panel filters."""

    CONTROLLED = "controlled"
    UNCONTROLLED = "uncontrolled"
    NO_DATA = "no_data"
    OPEN_ALERTS = "open_alerts"
    PENDING_REVIEW = "pending_review"


@dataclass
class PanelRow:
    """One patient on the clinician's panel."""

    patient: Patient
    control: ControlStatus
    cuff_sbp_mean_7d: float | None
    cuff_dbp_mean_7d: float | None
    cuff_readings_7d: int
    target: tuple[float, float]
    last_reading_at: datetime | None
    open_alerts: int
    crisis_alert: bool
    pending_proposals: int
    next_review_due: datetime | None
    review_overdue: bool
    # The patient's due visit (the visit cadence, or a clinician's override); None if none.
    next_visit_due: datetime | None = None
    next_visit_kind: str | None = None
    next_visit_overridden: bool = False


LAST_READING_LOOKBACK = timedelta(days=90)


def panel(
    session: Session,
    *,
    patient_filter: ColumnElement[bool],
    now: datetime,
    search: str | None = None,
    status_filter: PanelFilter | str | None = None,
    limit: int = 100,
    settings: Settings | None = None,
) -> list[PanelRow]:
    """The caller's patients (by family, then given name) with control status, last reading
    (within 90 days), open alerts, pending proposals and next review due: one aggregate
    query per fact, whatever the number of patients. `search` matches pseudonym or name."""
    wanted = PanelFilter(status_filter) if status_filter else None
    stmt = select(Patient).where(patient_filter)
    if search and search.strip():
        term = search.strip()
        stmt = stmt.where(
            or_(
                col(Patient.pseudonym).icontains(term, autoescape=True),
                col(Patient.given_name).icontains(term, autoescape=True),
                col(Patient.family_name).icontains(term, autoescape=True),
            )
        )
    patients = list(
        session.scalars(
            stmt.order_by(col(Patient.family_name), col(Patient.given_name), col(Patient.id))
        )
    )
    if not patients:
        return []
    scope = select(col(Patient.id)).where(patient_filter)
    cuff = {
        pid: (sbp, dbp, int(n))
        for pid, sbp, dbp, n in session.execute(
            select(
                col(Reading.patient_id),
                func.avg(col(Reading.systolic)),
                func.avg(col(Reading.diastolic)),
                func.count(),
            )
            .where(
                col(Reading.patient_id).in_(scope),
                col(Reading.effective_start) >= now - timedelta(days=7),
                col(Reading.effective_start) <= now,
                col(Reading.kind) == "blood_pressure",
                col(Reading.device_class) == DeviceClass.VALIDATED_CUFF,
                col(Reading.status) == ReadingStatus.ACCEPTED,
                col(Reading.statistic).is_(None),
                col(Reading.systolic).is_not(None),
                col(Reading.diastolic).is_not(None),
            )
            .group_by(col(Reading.patient_id))
        )
    }
    # (A Result has .keys(): dict() would take it for a mapping, so build dicts by hand.)
    last_reading = {
        pid: when
        for pid, when in session.execute(
            select(col(Reading.patient_id), func.max(col(Reading.effective_start)))
            .where(
                col(Reading.patient_id).in_(scope),
                col(Reading.effective_start) >= now - LAST_READING_LOOKBACK,
                col(Reading.effective_start) <= now,
            )
            .group_by(col(Reading.patient_id))
        )
    }
    alerts: dict[str, list[str]] = defaultdict(list)
    for pid, kind in session.execute(
        select(col(Alert.patient_id), col(Alert.type)).where(
            col(Alert.patient_id).in_(scope), col(Alert.status) != AlertStatus.RESOLVED
        )
    ):
        alerts[pid].append(kind)
    pending = {
        pid: (int(n), oldest)
        for pid, n, oldest in session.execute(
            select(col(Proposal.patient_id), func.count(), func.min(col(Proposal.created_at)))
            .where(
                col(Proposal.patient_id).in_(scope),
                col(Proposal.status) == ProposalStatus.PENDING_REVIEW,
            )
            .group_by(col(Proposal.patient_id))
        )
    }
    visits = {
        v.patient_id: v
        for v in session.scalars(
            select(Visit).where(
                col(Visit.patient_id).in_(scope), col(Visit.status) == VisitStatus.DUE
            )
        )
    }
    target = _target(settings)
    rows: list[PanelRow] = []
    for patient in patients:
        goal = bp_target(patient.has_diabetes or patient.has_ckd)
        sbp, dbp, n = cuff.get(patient.id, (None, None, 0))
        if not n or sbp is None or dbp is None:
            control = ControlStatus.NO_DATA
        elif float(sbp) < goal[0] and float(dbp) < goal[1]:
            control = ControlStatus.CONTROLLED
        else:
            control = ControlStatus.UNCONTROLLED
        count, oldest = pending.get(patient.id, (0, None))
        visit = visits.get(patient.id)
        visit_due = _aware(visit.due_by) if visit is not None else None
        # A proposal waiting for review is due within the review target; otherwise the next
        # review is the patient's due visit (loops/visits: cadence rule or override).
        due = _aware(oldest) + target if oldest is not None else visit_due
        kinds = alerts.get(patient.id, [])
        row = PanelRow(
            patient=patient,
            control=control,
            cuff_sbp_mean_7d=round(float(sbp), 1) if n and sbp is not None else None,
            cuff_dbp_mean_7d=round(float(dbp), 1) if n and dbp is not None else None,
            cuff_readings_7d=n,
            target=goal,
            last_reading_at=_aware(last_reading[patient.id])
            if last_reading.get(patient.id) is not None
            else None,
            open_alerts=len(kinds),
            crisis_alert=AlertType.CRISIS in kinds,
            pending_proposals=count,
            next_review_due=due,
            review_overdue=due is not None and due < now,
            next_visit_due=visit_due,
            next_visit_kind=visit.kind if visit is not None else None,
            next_visit_overridden=visit is not None and visit.override_due_by is not None,
        )
        if _matches(row, wanted):
            rows.append(row)
        if len(rows) >= limit:
            break
    return rows


def _aware(value: datetime | str) -> datetime:
    """An aggregate's timestamp as UTC-aware (SQLite returns MAX()/MIN() as naive text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _matches(row: PanelRow, wanted: PanelFilter | None) -> bool:
    if wanted is None:
        return True
    if wanted is PanelFilter.OPEN_ALERTS:
        return row.open_alerts > 0
    if wanted is PanelFilter.PENDING_REVIEW:
        return row.pending_proposals > 0
    return row.control == wanted.value


def decisions_of(session: Session, ids: Sequence[str]) -> dict[str, Decision]:
    """Decisions by proposal id, in one query."""
    if not ids:
        return {}
    rows = session.scalars(select(Decision).where(col(Decision.proposal_id).in_(list(ids))))
    return {d.proposal_id: d for d in rows}
