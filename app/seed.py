"""The demo seed: staff, two care teams, patients with logins, regimens, envelopes, devices."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth import service as auth_service
from app.auth.models import Role, User
from app.core import clock
from app.core.config import Settings
from app.patients import service as patients
from app.patients.models import Sex
from device_ingest import service as devices
from device_ingest.models import DeviceClass
from loops import service as loops
from loops.messages import service as messages
from loops.messages.models import SenderSide
from policies.envelope import default_rules

DEMO_SEED = 20261123
LADDERS: list[dict[str, Any]] = [
    {"drug": "amlodipine", "rxnorm_code": "17767", "steps": [2.5, 5.0, 10.0]},
    {"drug": "lisinopril", "rxnorm_code": "29046", "steps": [5.0, 10.0, 20.0, 40.0]},
    {"drug": "losartan", "rxnorm_code": "52175", "steps": [25.0, 50.0, 100.0]},
    {"drug": "chlorthalidone", "rxnorm_code": "2409", "steps": [12.5, 25.0]},
]
_GIVEN = [
    "Ada",
    "Bela",
    "Chidi",
    "Dana",
    "Emil",
    "Farah",
    "Goran",
    "Hana",
    "Ivo",
    "Jun",
    "Kemal",
    "Lena",
    "Mira",
    "Nils",
    "Olu",
    "Pia",
    "Quinn",
    "Rafa",
    "Sana",
    "Teo",
]
_FAMILY = [
    "Abbott",
    "Brandt",
    "Castro",
    "Dimitrov",
    "Eze",
    "Fischer",
    "Garcia",
    "Hoang",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Larsen",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quist",
    "Rossi",
    "Silva",
    "Tanaka",
]


@dataclass
class DemoSeed:
    """What the seed created, for printing."""

    password: str
    password_generated: bool
    logins: list[tuple[str, str]] = field(default_factory=list)
    patients: int = 0
    device_keys_file: Path | None = None
    already_seeded: bool = False


def demo_password(data_dir: Path) -> tuple[str, bool]:
    """For a fresh seed: CLINAIOPS_DEMO_PASSWORD if set, else a generated one kept on disk.

    Keeping a generated password (owner-only) lets a re-run of `make demo` show it again.
    """
    stored = data_dir / "demo_password"
    env = os.environ.get("CLINAIOPS_DEMO_PASSWORD")
    if env:
        stored.unlink(missing_ok=True)  # a stale file would name the wrong password later
        return env, False
    password = secrets.token_urlsafe(12)
    stored.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password, True


def seed_demo(session: Session, *, settings: Settings, n_patients: int = 12) -> DemoSeed:
    """Create the demo cohort (does nothing if `admin` exists). The caller commits."""
    stored = settings.data_dir / "demo_password"
    if (
        session.scalars(select(col(User.id)).where(col(User.username) == "admin")).first()
        is not None
    ):
        # Report the password the cohort was seeded with, whatever the environment says now.
        result = DemoSeed(
            password=stored.read_text().strip() if stored.exists() else "",
            password_generated=stored.exists(),
            already_seeded=True,
        )
        users = session.execute(select(col(User.username), col(User.role)).order_by(col(User.id)))
        result.logins = [(str(u), str(r)) for u, r in users]
        return result
    password, generated = demo_password(settings.data_dir)
    result = DemoSeed(password=password, password_generated=generated)

    def user(username: str, full_name: str, role: Role, **kw: Any) -> User:
        result.logins.append((username, str(role)))
        return auth_service.create_user(
            session,
            username=username,
            password=password,
            full_name=full_name,
            role=role,
            settings=settings,
            **kw,
        )

    user("admin", "Avery Admin", Role.ADMIN)
    clinicians = [
        user("clinician1", "Dr. Casey Morgan", Role.CLINICIAN, is_clinical_lead=True),
        user("clinician2", "Dr. Riley Chen", Role.CLINICIAN),
    ]
    user("auditor1", "Jordan Auditor", Role.AUDITOR)
    user("mlops1", "Sam Engineer", Role.ML_ENGINEER)
    teams = [
        patients.create_care_team(session, name="Hypertension Team A"),
        patients.create_care_team(session, name="Hypertension Team B"),
    ]
    for team, clinician in zip(teams, clinicians, strict=True):
        patients.add_member(session, team=team, user=clinician)
    ladders = [loops.create_ladder(session, **spec) for spec in LADDERS]
    patient_users: list[User] = []
    keys: dict[str, dict[str, str]] = {}
    # Clinical attributes come from the simulator's patients of the same pseudonym, so that
    # `clinaiops simulate --seed DEMO_SEED` continues these records consistently.
    from device_ingest.simulator import generate_patients  # it reads LADDERS from here

    sims = generate_patients(n_patients, DEMO_SEED)
    today = clock.utcnow().date()
    for i, sim in enumerate(sims):
        team_index = i % 2
        patient = patients.register_patient(
            session,
            pseudonym=sim.pseudonym,
            given_name=_GIVEN[i % len(_GIVEN)],
            family_name=_FAMILY[(i * 7) % len(_FAMILY)],
            birth_date=date(today.year - sim.age, 1 + i % 12, 1 + (i * 5) % 28),
            sex=Sex(sim.sex),
            has_diabetes=sim.diabetes,
            has_ckd=sim.ckd,
        )
        patients.add_patient(session, team=teams[team_index], patient=patient)
        patient_users.append(
            user(
                f"patient{i + 1}",
                f"{patient.given_name} {patient.family_name}",
                Role.PATIENT,
                patient_id=patient.id,
            )
        )
        ladder = next(ld for ld in ladders if ld.drug == sim.drug)
        loops.start_regimen(session, patient_id=patient.id, ladder=ladder, step=sim.start_step)
        loops.add_envelope_version(
            session,
            patient_id=patient.id,
            rules=default_rules(len(ladder.steps)),
            author_id=clinicians[team_index].id or 0,
            reason="initial envelope from the demo template",
        )
        device, key = devices.register(
            session,
            patient_id=patient.id,
            device_class=DeviceClass.VALIDATED_CUFF,
            manufacturer="Omron",
            model="HEM-7361T",
            firmware_version="1.0",
        )
        keys[patient.id] = {"device_id": device.id, "api_key": key}
    _demo_messages(session, patient_users, clinicians)
    result.patients = n_patients
    keys_file = settings.data_dir / "demo_device_keys.json"
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    # Device keys are credentials: owner-only file, never printed.
    fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keys, fh, indent=2)
    result.device_keys_file = keys_file
    return result


def _demo_messages(session: Session, patient_users: list[User], clinicians: list[User]) -> None:
    """Two conversations: patient1 asks a question for the next visit and clinician1 answers;
    clinician2 writes to patient2, who has not read it yet (a `message_waiting` notice)."""
    now = clock.utcnow()
    first = patient_users[0] if patient_users else None
    if first is not None and first.patient_id is not None:
        thread, _ = messages.start_thread(
            session,
            patient_id=first.patient_id,
            sender_id=first.id or 0,
            side=SenderSide.PATIENT,
            subject="Dizzy when I stand up",
            body="Since I started my tablets I feel light-headed when I get out of bed. "
            "Can we talk about it at my next visit?",
            is_question=True,
            now=now - timedelta(days=1, hours=3),
        )
        messages.open_thread(
            session,
            thread_id=thread.id,
            side=SenderSide.CARE_TEAM,
            reader_id=clinicians[0].id or 0,
            now=now - timedelta(days=1, hours=2),
        )
        messages.reply(
            session,
            thread_id=thread.id,
            sender_id=clinicians[0].id or 0,
            side=SenderSide.CARE_TEAM,
            body="Thank you for telling us. Stand up slowly, and measure sitting and then "
            "standing tomorrow morning. We will go through it at your visit.",
            now=now - timedelta(days=1, hours=2),
        )
    second = patient_users[1] if len(patient_users) > 1 else None
    if second is not None and second.patient_id is not None:
        messages.start_thread(
            session,
            patient_id=second.patient_id,
            sender_id=clinicians[1].id or 0,
            side=SenderSide.CARE_TEAM,
            subject="Your home readings",
            body="Your morning readings have come down nicely this month. Keep measuring "
            "twice in the morning and twice in the evening.",
            now=now - timedelta(hours=5),
        )
