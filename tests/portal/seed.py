"""Review-portal data for tests, browser tests and `bench/portal.py`: patients on ladders with
envelopes, four weeks of home readings (validated cuff and cuffless), dose events, a dose
change, alerts and proposals waiting for a clinician. Deterministic for a given seed."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.db import new_id
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, MedicationEvent, Reading
from loops import service as loops
from loops.models import (
    Alert,
    AlertStatus,
    MedicationRegimen,
    Proposal,
    ProposalStatus,
    TitrationLadder,
)
from policies.envelope import default_rules

LADDERS: dict[str, list[float]] = {
    "amlodipine": [2.5, 5.0, 10.0],
    "lisinopril": [5.0, 10.0, 20.0, 40.0],
}
# A plausible explanation of an increase: SHAP values in log-odds of the proposed action.
SHAP: dict[str, float] = {
    "cuff_sbp_mean_7d": 0.92,
    "cuff_at_target_share_14d": 0.41,
    "cuff_sbp_slope_14d": 0.18,
    "adherence_14d": 0.15,
    "days_since_change": 0.22,
    "ladder_position": -0.31,
    "age_band": -0.06,
}
CLINICIAN_TEXT = (
    "Increase proposed mainly because the 7-day home SBP mean is 148 mmHg (above the 135 "
    "target) and only 14% of 14-day home readings were at target; adherence is 93%. The "
    "dose-ladder position (0.00) weighs against a change."
)
PATIENT_TEXT = (
    "Your home blood pressure has averaged 148/91 this week, above your target, and you have "
    "taken your doses regularly (93% of them)."
)


@dataclass
class ReviewCast:
    """What `seed_review` made, by short name."""

    ladders: dict[str, TitrationLadder] = field(default_factory=dict)
    regimens: dict[str, MedicationRegimen] = field(default_factory=dict)
    proposals: dict[str, Proposal] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)


def features(sbp: float, dbp: float, adherence: float) -> dict[str, Any]:
    """A feature snapshot consistent with a patient averaging sbp/dbp at home."""
    return {
        "cuff_sbp_mean_7d": sbp,
        "cuff_dbp_mean_7d": dbp,
        "cuff_sbp_mean_14d": sbp + 1.5,
        "cuff_dbp_mean_14d": dbp + 1.0,
        "cuff_sbp_slope_14d": 0.25,
        "cuff_at_target_share_14d": 0.14,
        "cuff_readings_7d": 14,
        "cuff_days_7d": 7,
        "cuffless_sbp_mean_7d": sbp - 6,
        "adherence_14d": adherence,
        "ladder_position": 0.0,
        "days_since_change": 45,
        "never_changed": 0,
        "age_band": 3,
    }


def put_on_ladder(
    session: Session,
    *,
    patient_id: str,
    ladder: TitrationLadder,
    author_id: int,
    now: datetime,
    step: int = 0,
) -> MedicationRegimen:
    """A regimen started 60 days ago, last changed 45 days ago, with envelope v1."""
    regimen = loops.start_regimen(session, patient_id=patient_id, ladder=ladder, step=step)
    regimen.started_at = now - timedelta(days=60)
    regimen.last_changed_at = now - timedelta(days=45)
    loops.add_envelope_version(
        session,
        patient_id=patient_id,
        rules=default_rules(len(ladder.steps)),
        author_id=author_id,
        reason="Initial envelope at enrolment",
        effective_at=now - timedelta(days=60),
    )
    session.flush()
    return regimen


def add_history(
    session: Session,
    *,
    patient_id: str,
    now: datetime,
    days: int = 28,
    sbp: float = 148.0,
    dbp: float = 91.0,
    seed: int = 1,
) -> None:
    """Home readings twice a day from a validated cuff, once a day from a cuffless wearable,
    and daily dose events (a few missed), for `days` days up to `now`."""
    rng = random.Random(seed)
    cuff, _ = devices.register(
        session, patient_id=patient_id, device_class=DeviceClass.VALIDATED_CUFF, model="Cuff A1"
    )
    band, _ = devices.register(
        session,
        patient_id=patient_id,
        device_class=DeviceClass.CUFFLESS_WEARABLE,
        model="Band W2",
    )
    rows: list[dict[str, Any]] = []
    doses: list[dict[str, Any]] = []
    batch = IngestBatch(
        device_id=cuff.id,
        patient_id=patient_id,
        received_at=now,
        content_type="application/fhir+json",
        source_format="fhir",
        body_sha256="0" * 64,
        body_bytes=0,
        entries=0,
    )
    session.add(batch)
    session.flush()
    for d in range(days, 0, -1):
        day = now - timedelta(days=d)
        drift = (days - d) * 0.12  # rising slowly
        for hour, device, cls in ((7, cuff, "validated_cuff"), (20, cuff, "validated_cuff")):
            at = day.replace(hour=hour, minute=rng.randint(0, 40), second=0, microsecond=0)
            s = round(sbp - 3 + drift + rng.gauss(0, 6))
            di = round(dbp - 2 + drift / 2 + rng.gauss(0, 4))
            rows.append(_reading(patient_id, device.id, batch.id or 0, cls, at, s, di))
        at = day.replace(hour=13, minute=rng.randint(0, 50), second=0, microsecond=0)
        s = round(sbp - 8 + drift + rng.gauss(0, 9))
        di = round(dbp - 5 + rng.gauss(0, 6))
        rows.append(_reading(patient_id, band.id, batch.id or 0, "cuffless_wearable", at, s, di))
        taken = rng.random() > 0.08
        dose_at = day.replace(hour=8, minute=0, second=0, microsecond=0)
        doses.append(
            {
                "patient_id": patient_id,
                "device_id": cuff.id,
                "batch_id": batch.id or 0,
                "medication": "amlodipine",
                "taken": taken,
                "reason": None if taken else "forgot",
                "effective_start": dose_at,
                "effective_precision": "second",
                "effective_raw": dose_at.isoformat(),
                "payload_sha256": "0" * 64,
                "received_at": dose_at,
                "natural_key": _key(patient_id, "dose", dose_at),
            }
        )
    session.execute(insert(Reading), rows)
    session.execute(insert(MedicationEvent), doses)
    session.flush()


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _reading(
    patient_id: str, device_id: str, batch_id: int, cls: str, at: datetime, s: float, d: float
) -> dict[str, Any]:
    return {
        "patient_id": patient_id,
        "device_id": device_id,
        "batch_id": batch_id,
        "device_class": cls,
        "kind": "blood_pressure",
        "code": "85354-9",
        "effective_start": at,
        "effective_precision": "second",
        "effective_raw": at.isoformat(),
        "systolic": float(s),
        "diastolic": float(d),
        "unit": "mm[Hg]",
        "status": "accepted",
        "quarantine_reasons": [],
        "source_format": "fhir",
        "payload_sha256": "0" * 64,
        "received_at": at,
        "natural_key": _key(device_id, at, s, d),
        "context": {},
        "calibration_systolic": 0.0,
        "calibration_diastolic": 0.0,
    }


def proposal_row(
    *,
    patient_id: str,
    regimen: MedicationRegimen,
    ladder: TitrationLadder,
    created_at: datetime,
    action: str = "increase",
    confidence: float = 0.71,
    reasons: list[str] | None = None,
    sbp: float = 148.0,
    dbp: float = 91.0,
) -> dict[str, Any]:
    """Column values of a proposal waiting for a clinician."""
    step = regimen.current_step
    to_step = step + {"increase": 1, "decrease": -1, "hold": 0}[action]
    to_step = max(0, min(to_step, len(ladder.steps) - 1))
    feats = features(sbp, dbp, 0.93)
    return {
        "id": new_id(),
        "patient_id": patient_id,
        "regimen_id": regimen.id,
        "model_version": "titration-v1",
        "feature_hash": _key(patient_id, created_at, sorted(feats.items())),
        "features": feats,
        "action": action,
        "from_step": step,
        "to_step": to_step,
        "from_dose": ladder.steps[step],
        "to_dose": ladder.steps[to_step],
        "probabilities": {
            "decrease": round((1 - confidence) / 3, 4),
            "hold": round(2 * (1 - confidence) / 3, 4),
            "increase": confidence,
        },
        "confidence": confidence,
        "explanation": {
            "shap": dict(SHAP),
            "clinician_text": CLINICIAN_TEXT,
            "patient_text": PATIENT_TEXT,
        },
        "envelope_version": 1,
        "route": "clinician_review",
        "reasons": reasons if reasons is not None else ["confidence_below_envelope"],
        "status": ProposalStatus.PENDING_REVIEW,
        "created_at": created_at,
        "delivered_at": None,
    }


def add_proposal(session: Session, **kw: Any) -> Proposal:
    """Insert one waiting proposal (see `proposal_row`)."""
    row = proposal_row(**kw)
    session.execute(insert(Proposal), [row])
    session.flush()
    proposal = session.get(Proposal, row["id"])
    assert proposal is not None
    return proposal


def add_alert(
    session: Session,
    *,
    patient_id: str,
    type: str,
    severity: str,
    raised_at: datetime,
    detail: str,
) -> Alert:
    """An open alert."""
    alert = Alert(
        patient_id=patient_id,
        type=type,
        severity=severity,
        key=f"{patient_id}:{type}",
        status=AlertStatus.OPEN,
        detail=detail,
        raised_at=raised_at,
    )
    session.add(alert)
    session.flush()
    return alert


def seed_review(
    session: Session,
    *,
    patients: dict[str, str],
    author_id: int,
    now: datetime,
) -> ReviewCast:
    """The review scene for patients named by short key (`pa1`, `pa2`, `pb1`, ... -> id):
    each on a ladder with an envelope and four weeks of history, one proposal waiting for
    each (the first one's overdue), a crisis alert for the first and a data gap for the
    second."""
    cast = ReviewCast()
    for drug, steps in LADDERS.items():
        cast.ladders[drug] = loops.create_ladder(session, drug=drug, steps=steps)
    for n, (name, patient_id) in enumerate(patients.items()):
        ladder = cast.ladders["amlodipine" if n % 2 == 0 else "lisinopril"]
        regimen = put_on_ladder(
            session, patient_id=patient_id, ladder=ladder, author_id=author_id, now=now
        )
        cast.regimens[name] = regimen
        add_history(session, patient_id=patient_id, now=now, seed=n + 1, sbp=148.0 - 2 * n)
        cast.proposals[name] = add_proposal(
            session,
            patient_id=patient_id,
            regimen=regimen,
            ladder=ladder,
            created_at=now - timedelta(hours=30 if n == 0 else 3 + n),
            confidence=0.71 if n == 0 else 0.78,
            reasons=["confidence_below_envelope", "open_alert"]
            if n == 0
            else ["confidence_below_envelope"],
            sbp=148.0 - 2 * n,
        )
        if n == 0:
            cast.alerts[name] = add_alert(
                session,
                patient_id=patient_id,
                type="hypertensive_crisis",
                severity="critical",
                raised_at=now - timedelta(hours=2),
                detail="Home reading 184/112 mmHg; re-measurement requested in 5 minutes.",
            )
        elif n == 1:
            cast.alerts[name] = add_alert(
                session,
                patient_id=patient_id,
                type="data_gap",
                severity="medium",
                raised_at=now - timedelta(hours=20),
                detail="No validated-cuff reading for 3 days.",
            )
    session.flush()
    return cast
