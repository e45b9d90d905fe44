"""A small cohort of stored clinician decisions whose feature snapshots are real feature
vectors (from the simulated protocol-labelled set) and whose labels are balanced."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

import numpy as np
from sqlalchemy.orm import Session

from app.auth.models import User
from app.patients import service as patients
from app.patients.models import Sex
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, Reading
from loops import service as loops
from loops.models import Proposal, ProposalStatus
from loops.review.models import Decision
from mlops import dataset
from mlops.features import FEATURE_NAMES, FeatureVector
from mlops.model import CLASSES
from tests.conftest import World

STEPS = [5.0, 10.0, 20.0, 40.0]


@lru_cache(maxsize=1)
def pool() -> dataset.TrainingSet:
    """Simulated feature rows with protocol labels (built once per test run)."""
    return dataset.build(n_patients=60, days=56, seed=3)


@dataclass
class Stored:
    """What `store_decisions` wrote: patient ids and each decision's label index."""

    patient_ids: list[str]
    labels: list[int]


def feature_dict(row: np.ndarray) -> dict[str, float | None]:
    """A feature vector as a proposal stores it (NaN as null)."""
    values = row.tolist()
    return {
        n: (None if math.isnan(v) else float(v)) for n, v in zip(FEATURE_NAMES, values, strict=True)
    }


def rows_by_class(per_class: int) -> list[tuple[np.ndarray, int]]:
    """Alternating decrease/hold/increase rows, `per_class` of each."""
    data = pool()
    chosen: list[list[int]] = [list(np.flatnonzero(data.y == k)) for k in range(len(CLASSES))]
    out = []
    for i in range(per_class):
        for k in range(len(CLASSES)):
            rows = chosen[k]
            out.append((data.X[rows[i % len(rows)]], k))
    return out


def store_decisions(
    session: Session,
    clinician: User,
    *,
    n_patients: int,
    signed_at: datetime,
    per_patient: int = 1,
    prefix: str = "D",
    label_override: int | None = None,
    spoil: str | None = None,
) -> Stored:
    """Register patients on a ladder, each with `per_patient` signed decisions a week apart
    (newest at `signed_at`); labels cycle through the three actions. `spoil` stores features
    of the old feature set ("old_set") or a feature hash that does not match ("bad_hash")."""
    ladder = loops.create_ladder(session, drug="lisinopril", steps=STEPS)
    rows = rows_by_class(math.ceil(n_patients * per_patient / 3) + 1)
    stored = Stored([], [])
    r = 0
    for i in range(n_patients):
        patient = patients.register_patient(
            session,
            pseudonym=f"{prefix}-{i:04d}",
            given_name="Sim",
            family_name=f"{prefix}{i}",
            birth_date=date(1955, 1, 1),
            sex=Sex.FEMALE,
        )
        regimen = loops.start_regimen(session, patient_id=patient.id, ladder=ladder, step=1)
        stored.patient_ids.append(patient.id)
        for j in range(per_patient):
            x, label = rows[r]
            r += 1
            if label_override is not None:
                label = label_override
            vector = FeatureVector(
                values=tuple(float(v) for v in x.tolist()),
                cuff_readings_per_day_7d=(0,) * 7,
                days_since_last_change=None,
            )
            when = signed_at - timedelta(days=7 * (per_patient - 1 - j))
            action = str(CLASSES[label])
            proposal = Proposal(
                patient_id=patient.id,
                regimen_id=regimen.id,
                model_version="titration:v1",
                feature_hash="b" * 64 if spoil == "bad_hash" else vector.hash(),
                features={"mean_sbp_7d": 150.0} if spoil == "old_set" else feature_dict(x),
                action=action,
                from_step=1,
                to_step=1 + (label - 1),
                from_dose=STEPS[1],
                to_dose=STEPS[1 + (label - 1)],
                probabilities={"decrease": 0.2, "hold": 0.5, "increase": 0.3},
                confidence=0.5,
                explanation={},
                route="clinician_review",
                reasons=[],
                status=ProposalStatus.APPROVED,
                created_at=when - timedelta(hours=1),
            )
            session.add(proposal)
            session.flush()
            session.add(
                Decision(
                    proposal_id=proposal.id,
                    patient_id=patient.id,
                    user_id=clinician.id or 0,
                    kind="approve",
                    from_step=1,
                    proposed_step=proposal.to_step,
                    decided_step=proposal.to_step,
                    from_dose=proposal.from_dose,
                    proposed_dose=proposal.to_dose,
                    decided_dose=proposal.to_dose,
                    feature_hash=proposal.feature_hash,
                    features=proposal.features,
                    model_version="titration:v1",
                    proposal_action=action,
                    probabilities=proposal.probabilities,
                    confidence=0.5,
                    label_action=action,
                    signer_user_id=clinician.id or 0,
                    signer_printed_name=clinician.full_name,
                    signer_username=clinician.username,
                    meaning="approved as prescriber",
                    signed_at=when,
                    record_hash="0" * 64,
                    signature="x",
                    key_id="0" * 64,
                )
            )
            stored.labels.append(label)
    session.commit()
    return stored


def add_cuff_readings(
    world: World,
    patient_id: str,
    *,
    start: datetime,
    days: int,
    sbp: float = 120.0,
    dbp: float = 75.0,
) -> None:
    """Accepted validated-cuff readings, twice a day for `days` days from `start`."""
    s = world.session
    device, _ = devices.register(s, patient_id=patient_id, device_class=DeviceClass.VALIDATED_CUFF)
    batch = IngestBatch(
        device_id=device.id,
        patient_id=patient_id,
        received_at=start,
        content_type="x",
        source_format="fhir",
        body_sha256="0" * 64,
        body_bytes=0,
        entries=2 * days,
    )
    s.add(batch)
    s.flush()
    for d in range(days):
        for k in range(2):
            t = start + timedelta(days=d, hours=7 + 12 * k)
            s.add(
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
                    natural_key=f"{device.id}-{d}-{k}",
                )
            )
    s.commit()
