"""Arrangements for the rollout tests: a cohort on a ladder with home readings, a champion
in production and a challenger that passed its gates and was signed off."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select

from app.auth import service as auth_service
from app.auth.models import Role
from app.core import clock
from app.patients import service as patients
from app.patients.models import Sex
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, Reading
from loops import service
from loops.flows import evaluate_many
from loops.models import Evaluation
from mlops import canary, lifecycle, registry, rollout, serving
from mlops.canary import Thresholds
from mlops.features import FEATURE_NAMES, FEATURE_SET_VERSION
from mlops.model import Standardizer, TitrationModel, centred, linear_from
from mlops.models import ModelStatus, ModelVersion, Rollout, RolloutStep, SignoffRole
from policies.envelope import EnvelopeRules, TitrationAction
from tests.conftest import PASSWORD, World
from validation.models import GateResult

STEPS = [2.5, 5.0, 10.0]
# Holds only are delivered automatically: every dose change waits for a clinician, so
# clinicians' decisions are there to compare.
QUEUE_CHANGES = EnvelopeRules(auto_actions=frozenset({TitrationAction.HOLD}), max_dose_step=2)


def titration_model(push: float = 2.0) -> TitrationModel:
    """High home SBP argues for an increase (push > 0) or, wrongly, a decrease (push < 0)."""
    names = list(FEATURE_NAMES)
    mean, scale = np.zeros(len(names)), np.full(len(names), 1000.0)
    weight = np.zeros((3, len(names)))
    i = names.index("cuff_sbp_mean_7d")
    mean[i], scale[i], weight[:, i] = 135.0, 10.0, (-push, 0.0, push)
    weight, bias = centred(weight, np.array([0.0, 1.5, 0.0]))
    return TitrationModel(
        names,
        Standardizer(tuple(mean.tolist()), tuple(scale.tolist())),
        linear=linear_from(weight, bias),
        metadata={"feature_set": FEATURE_SET_VERSION},
    )


def register(
    world: World, model: TitrationModel, directory: Path, status: ModelStatus, now: datetime
) -> ModelVersion:
    """Save the artifact and register it (in production: the champion)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"model-{uuid.uuid4().hex[:8]}.json"
    sha = model.save(path)
    version = registry.register(
        world.session,
        name=registry.TITRATION,
        artifact_path=path,
        artifact_sha256=sha,
        data_hash="0" * 64,
        feature_names=model.feature_names,
        params={},
        metrics={},
        privacy={},
        created_by="test",
        status=status,
        now=now,
    )
    world.session.commit()
    return version


def make_ready(world: World, version: ModelVersion, now: datetime) -> None:
    """Gates passed (one run, every required gate), validated, and both sign-offs."""
    s = world.session
    run_id = str(uuid.uuid4())
    for gate in lifecycle.REQUIRED_GATES:
        s.add(
            GateResult(
                model_name=version.name,
                version=version.version,
                gate=gate,
                passed=True,
                run_id=run_id,
                created_by="test",
                created_at=now,
            )
        )
    s.flush()
    lifecycle.transition(
        session=s,
        name=version.name,
        version=version.version,
        to=ModelStatus.VALIDATED,
        actor="test",
        reason="gates passed",
        now=now,
    )
    lead = world.users.get("lead")
    if lead is None:
        lead = world.users["lead"] = auth_service.create_user(
            s,
            username="lead",
            password=PASSWORD,
            full_name="Clinical Lead",
            role=Role.CLINICIAN,
            settings=world.settings,
            is_clinical_lead=True,
        )
    for signer, role in ((world.users["mleng"], SignoffRole.ML_ENGINEER), (lead, "clinical_lead")):
        lifecycle.signoff(
            session=s,
            name=version.name,
            version=version.version,
            signer=signer,
            role=role,
            meaning=lifecycle.SIGNOFF_MEANINGS[SignoffRole(role)],
            note="",
            now=now,
            password=PASSWORD,
            settings=world.settings,
        )
    s.commit()


@dataclass
class Cohort:
    """Patients on amlodipine at step 0 with two weeks of high home readings."""

    ids: list[str]


def cohort(world: World, n: int, now: datetime, *, sbp: float = 160.0) -> Cohort:
    """`n` patients, each with 7 days of validated-cuff readings twice a day at `sbp`."""
    s = world.session
    ladder = service.create_ladder(s, drug="amlodipine", steps=STEPS)
    author = world.users["clina"].id or 0
    ids = []
    for k in range(n):
        p = patients.register_patient(
            s,
            pseudonym=f"R-{k:03d}",
            given_name="Roll",
            family_name=f"Out{k}",
            birth_date=date(1958, 3, 1),
            sex=Sex.FEMALE if k % 2 else Sex.MALE,
        )
        patients.add_patient(s, team=world.teams["A"], patient=p)
        p.created_at = now - timedelta(days=90)
        regimen = service.start_regimen(s, patient_id=p.id, ladder=ladder, step=0)
        regimen.started_at = regimen.last_changed_at = now - timedelta(days=60)
        service.add_envelope_version(
            s,
            patient_id=p.id,
            rules=QUEUE_CHANGES,
            author_id=author,
            reason="start",
            effective_at=now - timedelta(days=30),
        )
        device, _ = devices.register(s, patient_id=p.id, device_class=DeviceClass.VALIDATED_CUFF)
        batch = IngestBatch(
            device_id=device.id,
            patient_id=p.id,
            received_at=now,
            content_type="x",
            source_format="fhir",
            body_sha256="0" * 64,
            body_bytes=0,
            entries=14,
        )
        s.add(batch)
        s.flush()
        rows = []
        for d in range(7):
            for h in (2, 12):
                t = now - timedelta(days=d, hours=h)
                rows.append(
                    {
                        "patient_id": p.id,
                        "device_id": device.id,
                        "batch_id": batch.id,
                        "device_class": DeviceClass.VALIDATED_CUFF,
                        "kind": "blood_pressure",
                        "code": "85354-9",
                        "effective_start": t,
                        "effective_precision": "second",
                        "effective_raw": t.isoformat(),
                        "systolic": sbp,
                        "diastolic": 95.0,
                        "unit": "mm[Hg]",
                        "status": "accepted",
                        "quarantine_reasons": [],
                        "source_format": "fhir",
                        "payload_sha256": "0" * 64,
                        "received_at": t,
                        "natural_key": f"{device.id}-{d}-{h}",
                    }
                )
        s.add_all(Reading(**row) for row in rows)
        ids.append(p.id)
    s.commit()
    return Cohort(ids)


DWELL = timedelta(minutes=10)
# Small counts: a cohort of 30 patients judges everything; latency is never judged (too
# noisy on a shared machine for a test).
SMALL = Thresholds(
    min_scored=1, min_decided=1, min_proposals=1, min_latency_samples=1000, latency_slack_ms=50.0
)
N = 30


class Rig:
    """A cohort, champion v1 in production and a challenger v2 ready for its rollout."""

    def __init__(self, world: World, tmp_path: Path, challenger_push: float) -> None:
        self.world, self.s = world, world.session
        self.t0 = clock.utcnow().replace(microsecond=0)
        self.ids = cohort(world, N, self.t0).ids
        self.models = tmp_path / "models"
        self.v1 = register(world, titration_model(), self.models, ModelStatus.PRODUCTION, self.t0)
        self.v2 = register(
            world, titration_model(challenger_push), self.models, ModelStatus.CANDIDATE, self.t0
        )
        make_ready(world, self.v2, self.t0)

    @property
    def salt(self) -> str:
        """A salt whose 10% slice of this cohort holds a few patients and whose 50% slice
        leaves some out (patient ids are random: a random salt could give an empty step)."""
        for k in range(1000):
            salt = f"test-salt-{k}"
            if self.in_slice(salt, 10) >= 2 and self.in_slice(salt, 50) < N:
                return salt
        raise AssertionError("no salt fits")

    def in_slice(self, salt: str, percent: int) -> int:
        return sum(canary.in_slice(salt, pid, percent) for pid in self.ids)

    def at(self, minutes: float) -> datetime:
        return self.t0 + timedelta(minutes=minutes)

    def start(self) -> Rollout:
        started = rollout.start(
            session=self.s,
            name="titration",
            version=2,
            actor="cli:test",
            now=self.at(0),
            dwell=DWELL,
        )
        started.salt = self.salt  # a known slice, so the test knows who is in it
        self.s.commit()
        return started

    def evaluate(self, minutes: float, ids: Sequence[str] | None = None) -> None:
        evaluate_many(
            self.s,
            patient_ids=list(ids or self.ids),
            trigger="daily",
            now=self.at(minutes),
            predictor=serving.production(self.s),
        )
        self.s.commit()

    def tick(self, minutes: float) -> list[RolloutStep]:
        done = rollout.tick(session=self.s, now=self.at(minutes), thresholds=SMALL)
        self.s.commit()
        return done

    def rollout(self) -> Rollout:
        found = self.s.scalars(select(Rollout).order_by(Rollout.id.desc())).first()  # type: ignore[union-attr]
        assert found is not None
        self.s.refresh(found)
        return found

    def status(self, version: int) -> str:
        row = self.s.scalars(select(ModelVersion).where(ModelVersion.version == version)).one()
        self.s.refresh(row)
        return row.status

    def alias(self, name: str) -> int | None:
        return lifecycle.aliases(self.s, name="titration").get(name)

    def evaluations(self, minutes: float) -> list[Evaluation]:
        return list(
            self.s.scalars(select(Evaluation).where(Evaluation.created_at == self.at(minutes)))
        )

    def to_canary(self) -> None:
        """Start, evaluate in shadow, and advance to the canary's 10% at minute 11."""
        self.start()
        self.evaluate(1)
        (step,) = self.tick(11)
        assert step.decision == "advance"
        assert self.rollout().percent == 10
        self.s.commit()  # end the read: on SQLite an open transaction holds the writer slot
