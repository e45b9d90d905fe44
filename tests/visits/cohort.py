"""A fixed, hand-computed cohort for the pre-visit summary: one patient whose last visit was
28 days ago, with readings, doses, proposals and decisions, an envelope change, alerts, a
question, symptom reports and an agreed goal. `EXPECTED` holds the figures worked out by hand;
the unit, API, PDF and browser tests all check against it.

Times count from `start = now - 28 days` (the last visit): day d's two readings are taken at
start + d days + 1 and + 2 minutes (the same UTC date unless a test starts within two minutes
of midnight), its dose at + 3 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.db import new_id
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, MedicationEvent, Reading
from loops import service as loops
from loops.care.models import Goal, GoalKind, GoalStatus
from loops.messages.models import Message, MessageThread, SenderSide
from loops.models import Alert, AlertStatus, Proposal, ProposalStatus, SymptomReport
from loops.review.models import Decision
from loops.visits.models import Visit, VisitStatus
from policies.envelope import EnvelopeRules, TitrationAction
from policies.models import SafetyEnvelope

# Weekly home means, in order: four weeks of the period, then today (no readings yet).
WEEKS = [(150.0, 94.0), (140.0, 88.0), (132.0, 82.0), (128.0, 80.0)]
QUESTION = "Can I skip the evening dose?"
QUESTION_BODY = "I feel dizzy after the evening dose. Can I skip it before my visit?"
EXPECTED = {
    "sbp_7d": 128.0,  # the last 7 days: week 4 only, 14 readings
    "dbp_7d": 80.0,
    "readings_7d": 14,
    "control": "controlled",  # below 135/85 (no agreed BP goal: the usual home target)
    "readings": 56,  # 28 days x 2
    "days_with_readings": 28,
    "days_in_range": 14,  # weeks 3 and 4 are below 135/85 (and above 100 systolic)
    "time_in_range": 0.5,
    "doses_taken": 25,
    "doses_total": 28,
    "adherence": 0.893,  # 25 / 28
    "decision_counts": {
        "delivered": 1,
        "approved": 1,
        "modified": 0,
        "rejected": 1,
        "pending_review": 1,
    },
    "alerts_raised": 1,  # the crisis; the data gap was raised before the period
    "alerts_acknowledged": 1,
    "alerts_listed": 2,  # plus the data gap, still open
    "symptom_counts": {"dizziness": 1, "fatigue": 1, "headache": 1},
    "envelope_versions": [2],
}


@dataclass
class Cohort:
    """What was made, for assertions."""

    patient_id: str
    start: datetime
    now: datetime


def seed_cohort(
    session: Session, *, patient_id: str, clinician_id: int, patient_user_id: int, now: datetime
) -> Cohort:
    """Write the cohort for one patient (the caller commits)."""
    start = now - timedelta(days=28)
    minute = timedelta(minutes=1)
    session.add(
        Visit(
            patient_id=patient_id,
            status=VisitStatus.COMPLETED,
            kind="visit",
            due_by=start,
            rule_kind="visit",
            rule_due_by=start,
            computed_at=start - timedelta(days=20),
            completed_at=start,
            completed_by=clinician_id,
            outcome_note="Started lisinopril 10 mg; home readings twice a day.",
            created_at=start - timedelta(days=20),
        )
    )
    device, _ = devices.register(
        session, patient_id=patient_id, device_class=DeviceClass.VALIDATED_CUFF
    )
    batch = IngestBatch(
        device_id=device.id,
        patient_id=patient_id,
        received_at=now,
        content_type="x",
        source_format="fhir",
        body_sha256="0" * 64,
        body_bytes=0,
        entries=0,
    )
    session.add(batch)
    session.flush()
    for d in range(28):
        sbp, dbp = WEEKS[d // 7]
        day = start + timedelta(days=d)
        for k in (1, 2):
            t = day + k * minute
            session.add(
                Reading(
                    patient_id=patient_id,
                    device_id=device.id,
                    batch_id=batch.id or 0,
                    device_class=DeviceClass.VALIDATED_CUFF,
                    kind="blood_pressure",
                    code="85354-9",
                    effective_start=t,
                    effective_precision="second",
                    effective_raw=t.isoformat(),
                    systolic=sbp,
                    diastolic=dbp,
                    unit="mm[Hg]",
                    status="accepted",
                    quarantine_reasons=[],
                    source_format="fhir",
                    payload_sha256="0" * 64,
                    received_at=t,
                    natural_key=f"cohort-{patient_id}-{d}-{k}",
                )
            )
        t = day + 3 * minute
        session.add(
            MedicationEvent(
                patient_id=patient_id,
                device_id=device.id,
                batch_id=batch.id or 0,
                medication="lisinopril",
                taken=d < 25,
                effective_start=t,
                effective_precision="second",
                effective_raw=t.isoformat(),
                payload_sha256="0" * 64,
                received_at=t,
                natural_key=f"cohort-dose-{patient_id}-{d}",
            )
        )
    ladder = loops.create_ladder(session, drug="lisinopril", steps=[5.0, 10.0, 20.0, 40.0])
    regimen = loops.start_regimen(session, patient_id=patient_id, ladder=ladder, step=2)
    regimen.started_at = start - timedelta(days=60)
    regimen.last_changed_at = start + timedelta(days=3)
    # Envelopes are append-only: written with their times, never updated.
    for version, actions, reason, at in (
        (1, {TitrationAction.HOLD}, "start", start - timedelta(days=60)),
        (
            2,
            {TitrationAction.HOLD, TitrationAction.INCREASE},
            "Allow one-step increases",
            start + timedelta(days=5),
        ),
    ):
        session.add(
            SafetyEnvelope(
                patient_id=patient_id,
                version=version,
                rules=EnvelopeRules(auto_actions=frozenset(actions)).model_dump(mode="json"),
                author_id=clinician_id,
                reason=reason,
                effective_at=at,
                created_at=at,
            )
        )
    session.flush()

    def proposal(day: int, status: ProposalStatus, *, delivered: bool = False) -> Proposal:
        at = start + timedelta(days=day)
        p = Proposal(
            patient_id=patient_id,
            regimen_id=regimen.id,
            model_version="titration:v1",
            feature_hash="a" * 64,
            features={},
            action="increase",
            from_step=1,
            to_step=2,
            from_dose=10.0,
            to_dose=20.0,
            probabilities={"decrease": 0.05, "hold": 0.15, "increase": 0.8},
            confidence=0.8,
            explanation={},
            envelope_version=2,
            route="clinician_review" if not delivered else "auto_deliver",
            reasons=[],
            status=status,
            created_at=at,
            delivered_at=at if delivered else None,
        )
        session.add(p)
        session.flush()
        return p

    proposal(3, ProposalStatus.DELIVERED, delivered=True)
    for day, kind, status in (
        (10, "approve", ProposalStatus.APPROVED),
        (17, "reject", ProposalStatus.REJECTED),
    ):
        p = proposal(day - 1, status, delivered=kind == "approve")
        session.add(
            Decision(
                id=new_id(),
                proposal_id=p.id,
                patient_id=patient_id,
                user_id=clinician_id,
                kind=kind,
                from_step=1,
                proposed_step=2,
                decided_step=2 if kind == "approve" else 1,
                from_dose=10.0,
                proposed_dose=20.0,
                decided_dose=20.0 if kind == "approve" else 10.0,
                reason_code=None if kind == "approve" else "recent_change",
                reason_text="",
                feature_hash="a" * 64,
                features={},
                model_version="titration:v1",
                proposal_action="increase",
                probabilities={},
                confidence=0.8,
                label_action="increase" if kind == "approve" else "hold",
                signer_user_id=clinician_id,
                signer_printed_name="Dr. Test Signer",
                signer_username="signer",
                meaning="approval" if kind == "approve" else "rejection",
                signed_at=start + timedelta(days=day),
                record_hash="0" * 64,
                signature="0" * 88,
                key_id="0" * 64,
            )
        )
    proposal(27, ProposalStatus.PENDING_REVIEW)
    session.add(
        Alert(
            patient_id=patient_id,
            type="hypertensive_crisis",
            severity="critical",
            key=f"{patient_id}:crisis:cohort",
            status=AlertStatus.RESOLVED,
            detail="186/104 mmHg, confirmed",
            raised_at=start + timedelta(days=2),
            acknowledged_at=start + timedelta(days=2, minutes=20),
            acknowledged_by=clinician_id,
            resolved_at=start + timedelta(days=3),
        )
    )
    session.add(
        Alert(
            patient_id=patient_id,
            type="data_gap",
            severity="low",
            key=f"{patient_id}:gap:cohort",
            status=AlertStatus.OPEN,
            detail="no readings",
            raised_at=start - timedelta(days=5),
        )
    )
    question = MessageThread(
        patient_id=patient_id,
        subject=QUESTION,
        is_question=True,
        created_by=patient_user_id,
        created_at=start + timedelta(days=20),
        last_message_at=start + timedelta(days=20),
    )
    chat = MessageThread(
        patient_id=patient_id,
        subject="Thanks for the call",
        is_question=False,
        created_by=patient_user_id,
        created_at=start + timedelta(days=21),
        last_message_at=start + timedelta(days=21),
    )
    session.add_all([question, chat])
    session.flush()
    session.add(
        Message(
            thread_id=question.id,
            patient_id=patient_id,
            sender_id=patient_user_id,
            sender_side=SenderSide.PATIENT,
            body=QUESTION_BODY,
            sent_at=start + timedelta(days=20),
        )
    )
    session.add(
        Message(
            thread_id=question.id,
            patient_id=patient_id,
            sender_id=clinician_id,
            sender_side=SenderSide.CARE_TEAM,
            body="Please keep taking it; we will talk at the visit.",
            sent_at=start + timedelta(days=20, hours=2),
        )
    )
    session.add(
        SymptomReport(
            patient_id=patient_id, reported_at=start + timedelta(days=8), symptoms=["dizziness"]
        )
    )
    session.add(
        SymptomReport(
            patient_id=patient_id,
            reported_at=start + timedelta(days=21),
            symptoms=["headache", "fatigue"],
            note="After a long day",
        )
    )
    session.add(
        Goal(
            patient_id=patient_id,
            kind=GoalKind.ADHERENCE,
            status=GoalStatus.AGREED,
            target_value=0.9,
            proposed_by=clinician_id,
            proposed_by_role="clinician",
            proposed_at=start - timedelta(days=1),
            patient_agreed_at=start,
            clinician_agreed_at=start - timedelta(days=1),
            clinician_agreed_by=clinician_id,
        )
    )
    session.flush()
    return Cohort(patient_id=patient_id, start=start, now=now)
