"""Regimens, ladders and safety-envelope versions."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from loops.models import MedicationRegimen, TitrationLadder
from policies.envelope import EnvelopeRules
from policies.models import SafetyEnvelope


def create_ladder(
    session: Session,
    *,
    drug: str,
    steps: list[float],
    unit: str = "mg",
    rxnorm_code: str = "",
    frequency: str = "once daily",
) -> TitrationLadder:
    """Create a titration ladder; steps must rise strictly."""
    if not steps or any(b <= a for a, b in pairwise(steps)) or steps[0] <= 0:
        raise ValueError("ladder steps must be positive and strictly increasing")
    ladder = TitrationLadder(
        drug=drug, steps=steps, unit=unit, rxnorm_code=rxnorm_code, frequency=frequency
    )
    session.add(ladder)
    session.flush()
    return ladder


def start_regimen(
    session: Session, *, patient_id: str, ladder: TitrationLadder, step: int = 0
) -> MedicationRegimen:
    """Put a patient on a ladder at a step."""
    if not 0 <= step < len(ladder.steps):
        raise ValueError("step outside the ladder")
    regimen = MedicationRegimen(patient_id=patient_id, ladder_id=ladder.id or 0, current_step=step)
    session.add(regimen)
    session.flush()
    return regimen


def add_envelope_version(
    session: Session,
    *,
    patient_id: str,
    rules: EnvelopeRules,
    author_id: int,
    reason: str,
    effective_at: datetime | None = None,
) -> SafetyEnvelope:
    """Append a new envelope version; old versions stay as they were."""
    latest = session.scalar(
        select(func.max(col(SafetyEnvelope.version))).where(
            col(SafetyEnvelope.patient_id) == patient_id
        )
    )
    envelope = SafetyEnvelope(
        patient_id=patient_id,
        version=(latest or 0) + 1,
        rules=rules.model_dump(mode="json"),
        author_id=author_id,
        reason=reason,
        effective_at=effective_at or clock.utcnow(),
    )
    session.add(envelope)
    session.flush()
    return envelope


def envelope_in_force(
    session: Session, *, patient_id: str, at: datetime | None = None
) -> SafetyEnvelope | None:
    """The newest version already effective at `at` (now by default)."""
    at = at or clock.utcnow()
    stmt = (
        select(SafetyEnvelope)
        .where(col(SafetyEnvelope.patient_id) == patient_id, col(SafetyEnvelope.effective_at) <= at)
        .order_by(col(SafetyEnvelope.version).desc())
        .limit(1)
    )
    return session.scalars(stmt).first()
