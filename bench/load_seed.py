"""Seed a load-test database: care teams, clinicians, patients with devices and proposals.

Run in the load test's own process against a freshly migrated database (bench/load.py).
Each patient gets one validated cuff (its key is returned, never written to disk), a regimen
on the demo ladder of its drug, the demo envelope and one proposal waiting for review, so
that 20 clinicians have a queue to work from the first second. Patients with a login get
their username in the result; everyone shares one random password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from app.auth import service as auth_service
from app.auth.models import Role
from app.core.config import Settings
from app.db import make_engine, session_factory
from app.patients import service as patients
from app.patients.models import Sex
from app.seed import LADDERS
from device_ingest import service as devices
from device_ingest.models import DeviceClass
from loops import service as loops
from loops.models import Proposal, ProposalStatus
from policies.envelope import default_rules


@dataclass
class Seeded:
    """What the load drivers need: logins, device keys and the proposals made."""

    password: str
    clinicians: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)  # usernames of patients who log in
    device_keys: list[str] = field(default_factory=list)
    proposals: int = 0


def seed(
    settings: Settings, *, n_devices: int, n_clinicians: int, n_patient_logins: int, password: str
) -> Seeded:
    """One patient per device, spread over care teams of five clinicians each."""
    engine = make_engine(settings.database_url)
    out = Seeded(password=password)
    with session_factory(engine)() as s:
        n_teams = max(1, n_clinicians // 5)
        teams = [patients.create_care_team(s, name=f"Load team {t + 1}") for t in range(n_teams)]
        clinician_ids: list[int] = []
        for c in range(n_clinicians):
            user = auth_service.create_user(
                s,
                username=f"loadclin{c + 1}",
                password=password,
                full_name=f"Dr. Load {c + 1}",
                role=Role.CLINICIAN,
                settings=settings,
                is_clinical_lead=c < n_teams,
            )
            patients.add_member(s, team=teams[c % n_teams], user=user)
            out.clinicians.append(user.username)
            clinician_ids.append(user.id or 0)
        ladders = [loops.create_ladder(s, **spec) for spec in LADDERS]
        for n in range(n_devices):
            team = n % n_teams
            patient = patients.register_patient(
                s,
                pseudonym=f"L-{n:05d}",
                given_name="Load",
                family_name=f"Patient{n}",
                birth_date=date(1960 + n % 30, 1 + n % 12, 1 + n % 28),
                sex=Sex.FEMALE if n % 2 else Sex.MALE,
            )
            patients.add_patient(s, team=teams[team], patient=patient)
            ladder = ladders[n % len(ladders)]
            regimen = loops.start_regimen(s, patient_id=patient.id, ladder=ladder, step=0)
            loops.add_envelope_version(
                s,
                patient_id=patient.id,
                rules=default_rules(len(ladder.steps)),
                author_id=clinician_ids[team],
                reason="load test envelope",
            )
            _, key = devices.register(
                s,
                patient_id=patient.id,
                device_class=DeviceClass.VALIDATED_CUFF,
                manufacturer="Omron",
                model="HEM-7361T",
                firmware_version="1.0",
            )
            out.device_keys.append(key)
            if n < n_patient_logins:
                user = auth_service.create_user(
                    s,
                    username=f"loadpat{n + 1}",
                    password=password,
                    full_name=f"Load Patient{n}",
                    role=Role.PATIENT,
                    settings=settings,
                    patient_id=patient.id,
                )
                out.patients.append(user.username)
            s.flush()
            doses = [float(step) for step in ladder.steps]
            s.add(
                Proposal(
                    patient_id=patient.id,
                    regimen_id=regimen.id,
                    model_version="load-1",
                    feature_hash="0" * 64,
                    features={},
                    action="increase",
                    from_step=0,
                    to_step=1,
                    from_dose=doses[0],
                    to_dose=doses[1],
                    probabilities={"decrease": 0.05, "hold": 0.15, "increase": 0.8},
                    confidence=0.8,
                    explanation={"patient_text": "Your home readings are above target."},
                    envelope_version=1,
                    route="clinician_review",
                    reasons=["action_not_auto_deliverable"],
                    status=ProposalStatus.PENDING_REVIEW,
                )
            )
            out.proposals += 1
        s.commit()
    engine.dispose()
    return out
