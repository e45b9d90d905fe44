"""Fixtures for the clinician review tests: patients on a ladder with an envelope, queued
proposals, alerts, validated-cuff readings, and a second clinician on team A."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth.models import Role, User
from app.core import clock
from app.db import session_factory
from app.patients import service as patients
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, Reading
from loops import service
from loops.models import Alert, AlertStatus, MedicationRegimen, Proposal, ProposalStatus
from policies.envelope import EnvelopeRules, TitrationAction
from tests.conftest import PASSWORD, World

STEPS = [5.0, 10.0, 20.0, 40.0]  # lisinopril, mg


@pytest.fixture
def short(engine: Engine) -> Callable[[], Session]:
    """Open a short-lived session (SQLite: an open transaction blocks the app's writer)."""
    factory = session_factory(engine)
    return factory


@pytest.fixture
def regimens(world: World) -> dict[str, MedicationRegimen]:
    """Lisinopril 5/10/20/40 mg for every patient at step 1 (60 days), and envelope v1 by
    clina (team B's by clinb): holds only, so changes are queued."""
    s = world.session
    ladder = service.create_ladder(s, drug="lisinopril", steps=STEPS, rxnorm_code="29046")
    long_ago = clock.utcnow() - timedelta(days=60)
    out: dict[str, MedicationRegimen] = {}
    for key, p in world.patients.items():
        regimen = service.start_regimen(s, patient_id=p.id, ladder=ladder, step=1)
        regimen.started_at = regimen.last_changed_at = long_ago
        p.created_at = long_ago
        author = world.users["clina" if key.startswith("pa") else "clinb"]
        service.add_envelope_version(
            s,
            patient_id=p.id,
            rules=EnvelopeRules(
                auto_actions=frozenset({TitrationAction.HOLD}), max_dose_step=len(STEPS) - 1
            ),
            author_id=author.id or 0,
            reason="start",
            effective_at=clock.utcnow() - timedelta(days=30),
        )
        out[key] = regimen
    s.commit()
    return out


@pytest.fixture
def propose(world: World, regimens: dict[str, MedicationRegimen]) -> Callable[..., Proposal]:
    """Store a queued proposal for a patient (from step 1)."""

    def make(
        patient: str,
        action: str = "increase",
        *,
        age: timedelta = timedelta(hours=1),
        sbp: float = 145.0,
        dbp: float = 88.0,
        confidence: float = 0.9,
        status: ProposalStatus = ProposalStatus.PENDING_REVIEW,
    ) -> Proposal:
        to_step = 1 + {"increase": 1, "hold": 0, "decrease": -1}[action]
        p = Proposal(
            patient_id=world.patients[patient].id,
            regimen_id=regimens[patient].id,
            model_version="titration:v1",
            feature_hash="a" * 64,
            features={"cuff_sbp_mean_7d": sbp, "cuff_dbp_mean_7d": dbp, "adherence_14d": None},
            action=action,
            from_step=1,
            to_step=to_step,
            from_dose=STEPS[1],
            to_dose=STEPS[to_step],
            probabilities={"decrease": 0.05, "hold": 1 - confidence - 0.05, "increase": confidence},
            confidence=confidence,
            explanation={
                "shap": {"cuff_sbp_mean_7d": 1.2, "adherence_14d": 0.0, "cuff_days_7d": -0.3},
                "clinician_text": "Proposed: increase one step.",
                "patient_text": "Your readings are above your target.",
            },
            envelope_version=1,
            route="clinician_review",
            reasons=["action_not_auto_deliverable"],
            status=status,
            created_at=clock.utcnow() - age,
            delivered_at=clock.utcnow() - age if status == ProposalStatus.DELIVERED else None,
        )
        world.session.add(p)
        world.session.commit()
        return p

    return make


@pytest.fixture
def raise_alert(world: World) -> Callable[..., Alert]:
    """Store an alert for a patient."""

    def make(
        patient: str,
        type_: str = "hypertensive_crisis",
        severity: str = "critical",
        *,
        age: timedelta = timedelta(hours=1),
        status: AlertStatus = AlertStatus.OPEN,
    ) -> Alert:
        pid = world.patients[patient].id
        alert = Alert(
            patient_id=pid,
            type=type_,
            severity=severity,
            key=f"{pid}:{type_}",
            status=status,
            detail="186/104 mmHg, confirmed" if type_ == "hypertensive_crisis" else "x",
            raised_at=clock.utcnow() - age,
            resolved_at=clock.utcnow() if status == AlertStatus.RESOLVED else None,
        )
        world.session.add(alert)
        world.session.commit()
        return alert

    return make


@pytest.fixture
def add_readings(world: World) -> Callable[..., None]:
    """Store validated-cuff readings for a patient, twice a day for `days` days up to now."""

    def add(
        patient: str,
        sbp: float,
        dbp: float,
        *,
        days: int = 7,
        per_day: int = 2,
        device_class: DeviceClass = DeviceClass.VALIDATED_CUFF,
        now: datetime | None = None,
    ) -> None:
        s = world.session
        pid = world.patients[patient].id
        device, _ = devices.register(s, patient_id=pid, device_class=device_class)
        now = now or clock.utcnow()
        batch = IngestBatch(
            device_id=device.id,
            patient_id=pid,
            received_at=now,
            content_type="x",
            source_format="fhir",
            body_sha256="0" * 64,
            body_bytes=0,
            entries=days * per_day,
        )
        s.add(batch)
        s.flush()
        for d in range(days):
            for k in range(per_day):
                t = now - timedelta(days=d, hours=1 + 10 * k)
                s.add(
                    Reading(
                        patient_id=pid,
                        device_id=device.id,
                        batch_id=batch.id or 0,
                        device_class=device_class,
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
                        natural_key=f"{device.id}-{d}-{k}",
                    )
                )
        s.commit()

    return add


@pytest.fixture
def clina2(world: World) -> User:
    """A second clinician on team A (for claim races)."""
    user = auth_service.create_user(
        world.session,
        username="clina2",
        password=PASSWORD,
        full_name="Second Clinician",
        role=Role.CLINICIAN,
        settings=world.settings,
    )
    patients.add_member(world.session, team=world.teams["A"], user=user)
    world.session.commit()
    world.users["clina2"] = user
    return user


def decision_body(kind: str = "approve", **extra: Any) -> dict[str, Any]:
    """A decision request with the right password and the meaning confirmed."""
    return {"kind": kind, "password": PASSWORD, "meaning_confirmed": True, **extra}
