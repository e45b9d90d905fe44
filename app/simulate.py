"""`clinaiops simulate`: a synthetic cohort sent day by day through the real ingest API, with
the patient-AI loop evaluating between days (so delivered changes act on the physiology).
Simulated symptom reports (`mlops.symptoms`) go through the loop's symptom service, the
path the patient API takes: stored, audited, and handed to the loop for evaluation."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.models import Role, User
from app.core import clock
from app.core.config import Settings
from app.db import session_factory
from app.main import create_app
from app.patients import service as patients
from app.patients.models import CareTeam, CareTeamMember, Patient, Sex
from audit import service as audit
from device_ingest import service as devices
from device_ingest.models import DeviceClass
from device_ingest.simulator import (
    Cohort,
    Scenario,
    SimPatient,
    to_fhir_medication_administration,
    to_fhir_observation,
)
from loops import service as loops
from loops.dispatch import CHUNK, drain
from loops.models import MedicationRegimen, RegimenStatus, SymptomReport, TitrationLadder
from mlops import serving
from mlops.symptoms import SimSymptomReport, day_reports
from policies.envelope import default_rules

FHIR = "application/fhir+json"


@dataclass
class Enrolled:
    """A simulated patient's record and device keys."""

    sim: SimPatient
    patient_id: str
    regimen_id: str
    cuff_key: str
    wearable_key: str


@dataclass
class SimulationReport:
    """What a run produced, for the CLI to print."""

    patients: int = 0
    days: int = 0
    posted: int = 0
    symptom_reports: int = 0
    evaluations: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)


def _ladder(session: Session, sim: SimPatient) -> TitrationLadder:
    steps = [float(d) for d in sim.ladder_mg]
    for ladder in session.scalars(
        select(TitrationLadder).where(col(TitrationLadder.drug) == sim.drug)
    ):
        if [float(x) for x in ladder.steps] == steps:
            return ladder
    return loops.create_ladder(session, drug=sim.drug, steps=steps, rxnorm_code=sim.rxnorm_code)


def _team_author(session: Session, team: CareTeam) -> int | None:
    member = session.scalars(
        select(col(CareTeamMember.user_id)).where(col(CareTeamMember.care_team_id) == team.id)
    ).first()
    if member is not None:
        return int(member)
    admin = session.scalars(select(col(User.id)).where(col(User.role) == Role.CLINICIAN)).first()
    return int(admin) if admin is not None else None


def _device_key(
    session: Session,
    keys: dict[str, dict[str, str]],
    patient_id: str,
    kind: DeviceClass,
    model_name: str,
) -> str:
    """The simulation's key for a patient's device: kept from an earlier run if still valid."""
    known = keys.setdefault(patient_id, {}).get(str(kind))
    if known and devices.authenticate_key(session, key=known) is not None:
        return known
    maker, _, model = model_name.partition(" ")
    _, key = devices.register(
        session, patient_id=patient_id, device_class=kind, manufacturer=maker, model=model
    )
    keys[patient_id][str(kind)] = key
    return key


def _load_keys(path: Path) -> dict[str, dict[str, str]]:
    return dict(orjson.loads(path.read_bytes())) if path.exists() else {}


def _save_keys(path: Path, keys: dict[str, dict[str, str]]) -> None:
    # Device keys are credentials: an owner-only file, never printed.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(keys, option=orjson.OPT_INDENT_2))


def enrol(
    session: Session, cohort: Cohort, *, start: datetime, keys: dict[str, dict[str, str]]
) -> list[Enrolled]:
    """Create (or find, by pseudonym) each simulated patient with a regimen, envelope and
    two devices; returns their ids and fresh device keys. The caller commits."""
    teams = list(session.scalars(select(CareTeam).order_by(col(CareTeam.id))))
    if not teams:
        teams = [patients.create_care_team(session, name="Simulated cohort")]
    enrolled = []
    for i, sim in enumerate(cohort.patients):
        patient = session.scalars(
            select(Patient).where(col(Patient.pseudonym) == sim.pseudonym)
        ).first()
        team = teams[i % len(teams)]
        if patient is None:
            patient = patients.register_patient(
                session,
                pseudonym=sim.pseudonym,
                given_name="Simulated",
                family_name=sim.pseudonym,
                birth_date=date(start.year - sim.age, 6, 15),
                sex=Sex(sim.sex),
                has_diabetes=sim.diabetes,
                has_ckd=sim.ckd,
            )
            patients.add_patient(session, team=team, patient=patient)
        regimen = session.scalars(
            select(MedicationRegimen).where(
                col(MedicationRegimen.patient_id) == patient.id,
                col(MedicationRegimen.status) == RegimenStatus.ACTIVE,
            )
        ).first()
        if regimen is None:
            ladder = _ladder(session, sim)
            regimen = loops.start_regimen(
                session,
                patient_id=patient.id,
                ladder=ladder,
                step=min(sim.start_step, len(ladder.steps) - 1),
            )
            regimen.started_at = regimen.last_changed_at = start
        else:
            ladder = session.get(TitrationLadder, regimen.ladder_id)  # type: ignore[assignment]
            untouched = abs(regimen.last_changed_at - regimen.started_at) < timedelta(seconds=1)
            if regimen.started_at > start and untouched:
                # An untouched regimen from the seed has been in force for the whole simulated
                # period, so "days since the last change" counts from the period's start.
                regimen.started_at = regimen.last_changed_at = start
        if loops.envelope_in_force(session, patient_id=patient.id, at=start) is None:
            author = _team_author(session, team)
            if author is not None:
                loops.add_envelope_version(
                    session,
                    patient_id=patient.id,
                    rules=default_rules(len(ladder.steps)),
                    author_id=author,
                    effective_at=start,
                    reason="simulation: envelope from the template",
                )
        cuff_key = _device_key(
            session, keys, patient.id, DeviceClass.VALIDATED_CUFF, sim.cuff_model
        )
        wear_key = _device_key(
            session, keys, patient.id, DeviceClass.CUFFLESS_WEARABLE, sim.wearable_model
        )
        enrolled.append(Enrolled(sim, patient.id, regimen.id, cuff_key, wear_key))
    session.flush()
    return enrolled


def _post(
    client: TestClient, key: str, resources: list[dict[str, Any]], idempotency_key: str
) -> int:
    body = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for r in resources
        ],
    }
    response = client.post(
        "/api/v1/device/observations",
        content=orjson.dumps(body),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": FHIR,
            "Idempotency-Key": idempotency_key,
        },
    )
    return response.status_code


SIMULATOR = "system:simulator"


def _report_symptoms(
    session: Session, reports: list[tuple[Enrolled, SimSymptomReport]], *, now: datetime
) -> int:
    """Store the day's simulated symptom reports as the patient API would (the loop is
    handed each patient, the act audited with codes only); a report already stored by an
    earlier run is skipped. Returns how many were stored. The caller commits."""
    stored = 0
    for person, sim in reports:
        exists = session.scalars(
            select(col(SymptomReport.id)).where(
                col(SymptomReport.patient_id) == person.patient_id,
                col(SymptomReport.reported_at) == sim.time,
            )
        ).first()
        if exists is not None:
            continue
        report = loops.report_symptoms(
            session,
            patient_id=person.patient_id,
            symptoms=sim.symptoms,
            note=sim.note,
            reported_at=sim.time,
            now=now,
        )
        audit.record(
            session,
            actor=SIMULATOR,
            actor_role="system",
            action="symptom.report",
            resource_type="symptom_report",
            resource_id=str(report.id),
            patient_id=person.patient_id,
            details={"symptoms": list(report.symptoms), "count": len(report.symptoms)},
        )
        stored += 1
    return stored


def _step(session: Session, person: Enrolled) -> int:
    regimen = session.get(MedicationRegimen, person.regimen_id)
    return regimen.current_step if regimen is not None else person.sim.start_step


def run(
    engine: Engine,
    settings: Settings,
    *,
    n_patients: int,
    days: int,
    seed: int,
    scenario: Scenario | None = None,
    evaluate: bool = True,
    progress: Callable[[int], None] | None = None,
) -> SimulationReport:
    """Simulate `days` days ending today, posting each day and evaluating after it."""
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=days)
    cohort = Cohort(n_patients, seed, scenario, start=first_day)
    start = datetime.combine(first_day, time(), UTC)
    factory = session_factory(engine)
    keys_path = settings.data_dir / "simulation_device_keys.json"
    keys = _load_keys(keys_path)
    with factory() as session:
        people = enrol(session, cohort, start=start, keys=keys)
        session.commit()
    _save_keys(keys_path, keys)
    report = SimulationReport(patients=len(people), days=days)
    # The run drives the loop itself, at simulated time: no background worker on real time.
    app = create_app(settings.model_copy(update={"loop_worker_seconds": 0}), engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        for day in range(days):
            with factory() as session:
                steps = {p.sim.pseudonym: _step(session, p) for p in people}
                session.rollback()
            out = cohort.simulate_day(day, steps)
            refused: set[str] = set()  # patients whose day the ingest API did not take
            for person in people:
                today_out = out.patients[person.sim.pseudonym]
                subject = f"Patient/{person.patient_id}"
                cuff = [
                    to_fhir_observation(r, subject=subject)
                    for r in today_out.readings
                    if r.device_kind == "validated_cuff"
                ]
                cuff += [
                    to_fhir_medication_administration(e, subject=subject)
                    for e in today_out.medication_events
                ]
                worn = [
                    to_fhir_observation(r, subject=subject)
                    for r in today_out.readings
                    if r.device_kind == "cuffless_wearable"
                ]
                for key, resources, kind in (
                    (person.cuff_key, cuff, "cuff"),
                    (person.wearable_key, worn, "wearable"),
                ):
                    if not resources:
                        continue
                    code = _post(
                        client,
                        key,
                        resources,
                        f"sim-{seed}-{person.sim.pseudonym}-{out.date}-{kind}",
                    )
                    report.posted += 1
                    report.status_counts[code] = report.status_counts.get(code, 0) + 1
                    if kind == "cuff" and code != 200:
                        refused.add(person.sim.pseudonym)
            # A day the ingest refused (a re-run on a later date reuses its keys: 409) has no
            # symptom reports either, so a re-run never adds a second, re-dated set.
            felt = {
                name: sim
                for name, sim in day_reports(out, cohort.patients, seed=seed).items()
                if name not in refused
            }
            if felt:
                with factory() as session:
                    report.symptom_reports += _report_symptoms(
                        session,
                        [(p, felt[p.sim.pseudonym]) for p in people if p.sim.pseudonym in felt],
                        now=clock.utcnow(),
                    )
                    session.commit()
            if evaluate:
                end_of_day = datetime.combine(out.date + timedelta(days=1), time(), UTC)
                done = drain(
                    factory,
                    now=datetime.now(UTC),
                    as_of=min(end_of_day, datetime.now(UTC)),
                    predictor=serving.production,
                    debounce=timedelta(0),
                    limit=10_000,
                    chunk=CHUNK,  # the day's evaluations in batches, as the daily run does
                )
                report.evaluations += len(done.evaluated)
            if progress is not None:
                progress(day)
    return report
