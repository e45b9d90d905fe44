"""End to end: the model lifecycle of issue 7 on a small simulated clinic.

A flawed version 1 serves; the clinician decides its queued proposals until retraining is
due; a DP retraining registers a candidate (epsilon in the ledger and on the version, parent
= the champion); the gates pass and validate it; an ML engineer and a clinical lead sign it
off (a clinician who is not a lead, the lead in the engineer's role and the same person twice
are refused); its rollout scores in shadow, serves the canary's 10 -> 25 -> 50 -> 100% and
completes (aliases moved, version 1 retired, both serving intervals in the history). A
deliberately worse candidate fails its gates, saying which check failed by how much, and
cannot start a rollout. The scheduler's retraining job then trains v4 from the rollout's
decisions and its validation job passes it. v5, v4 with a flaw that neither its holdout nor
the safety library can show (patients who missed a dose or two get an increase), passes
the same gates and is signed off; in its canary such patients arrive, the clinician
overrules v5's needless increases (deciding by the protocol, whichever model proposed), and
the next firing of the rollout analysis rolls v5 back: the champion serves its patients
again. The privacy ledger refuses an over-budget run. The audit trail shows every step in
order, with who and why, and `clinaiops audit verify` passes.

People act through the API (ML engineer, clinical lead, clinician, auditor). The loop's
evaluations run as the loop runs them (`evaluate_all` for the daily evaluation,
`evaluate_many` as for new readings); retraining, the gates on new candidates and the
rollout analysis run as firings of the scheduler's jobs (`validation.scheduler.fire`: under
the job's lease, recorded as job runs, with the canary thresholds of the settings), on a
frozen clock the test moves. Three knobs make the run deterministic: patient ids come from a
seeded generator (they decide the holdout split and the canary slices), the retraining's
secret seed is fixed, and each rollout's salt is chosen so that every canary step serves
enough of its patients."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlmodel import col

from app.auth import service as auth_service
from app.auth.models import Role
from app.core.config import Settings
from app.db import session_factory
from app.patients import service as patients
from app.patients.models import Sex
from audit import service as audit
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, MedicationEvent, Reading
from loops import service as loops
from loops.dispatch import evaluate_all
from loops.flows import evaluate_many
from loops.models import Evaluation, Proposal, TitrationLadder
from loops.protocol import PatientState, decide
from mlops import canary, lifecycle, registry, retrain, rollout, serving
from mlops.features import FEATURE_NAMES, FEATURE_SET_VERSION
from mlops.model import Standardizer, TitrationModel, centred, linear_from
from mlops.models import ModelStatus, RolloutStep, ShadowPrediction, SignoffRole
from policies.envelope import EnvelopeRules, TitrationAction
from tests.conftest import PASSWORD, FrozenClock, World
from validation import jobs, scheduler

pytestmark = pytest.mark.slow

NAME = "titration"
API = "/api/v1/models/titration"
LADDER = [5.0, 10.0, 20.0, 40.0]  # lisinopril, mg
# Only holds are delivered automatically: every dose change waits for a clinician.
QUEUE_CHANGES = EnvelopeRules(
    auto_actions=frozenset({TitrationAction.HOLD}), max_dose_step=len(LADDER) - 1
)
_DELTA = {"decrease": -1, "hold": 0, "increase": 1}
# Each kind of patient: home SBP and DBP ranges, and the step they are on. Above target (the
# protocol increases), at target (it holds), low (it decreases: 3-day mean SBP below 100).
KINDS: dict[str, tuple[tuple[float, float], tuple[float, float], int]] = {
    "high": ((148.0, 165.0), (88.0, 98.0), 1),
    "target": ((116.0, 128.0), (70.0, 79.0), 1),
    "low": ((90.0, 96.0), (56.0, 63.0), 2),
}
MIN_PER_ARM = 4  # the settings' canary_min_* below: a salt must give each arm this many
RETRAIN_SEED = 20261206
HORIZON_MINUTES = 40  # how far the clinic's clock moves
OPERATOR = "cli:operator"
ROLLOUT = "system:rollout"
SCHEDULER = "system:scheduler"


# ------------------------------------------------------------------ the clinic


@dataclass
class Clinic:
    """The simulated clinic: team A's patients by kind, the frozen clock, the ladder."""

    world: World
    clock: FrozenClock
    engine: Engine
    t0: datetime
    ladder: TitrationLadder
    ids: Iterator[uuid.UUID]
    kinds: dict[str, str] = field(default_factory=dict)  # patient id -> kind
    enrolled: int = 0

    def at(self, minutes: float) -> datetime:
        """Move the frozen clock to `minutes` after the start (never backwards)."""
        assert minutes <= HORIZON_MINUTES
        when = self.t0 + timedelta(minutes=minutes)
        assert when >= self.clock.now
        self.clock.now = when
        return when

    def enrol(self, n: int, *, missed_doses: bool = False) -> list[str]:
        """`n` new patients of team A, the kinds in turn, each on the ladder under an
        envelope that queues every change, with two weeks of home readings and doses. With
        `missed_doses`, each missed the doses of three and five days ago: an adherence of
        about 0.86, above the protocol's 0.8, so the protocol decides by pressure as usual."""
        rng = random.Random(self.enrolled)
        out = []
        with pytest.MonkeyPatch.context() as patch:
            # Ids from the seeded generator: the holdout split and the canary slices hash them.
            patch.setattr(uuid, "uuid4", lambda: next(self.ids))
            for k in range(self.enrolled, self.enrolled + n):
                out.append(self._enrol_one(k, rng, missed_doses))
        self.enrolled += n
        self.world.session.commit()
        return out

    def _enrol_one(self, k: int, rng: random.Random, missed_doses: bool) -> str:
        s = self.world.session
        kind = list(KINDS)[k % len(KINDS)]
        (sbp_lo, sbp_hi), (dbp_lo, dbp_hi), step = KINDS[kind]
        p = patients.register_patient(
            s,
            pseudonym=f"E2E-{k:04d}",
            given_name="Sim",
            family_name=f"Patient{k}",
            birth_date=date(1945 + (k * 7) % 35, 1 + k % 12, 1 + k % 27),
            sex=Sex.FEMALE if k % 2 else Sex.MALE,
        )
        patients.add_patient(s, team=self.world.teams["A"], patient=p)
        p.created_at = self.t0 - timedelta(days=90)
        regimen = loops.start_regimen(s, patient_id=p.id, ladder=self.ladder, step=step)
        regimen.started_at = regimen.last_changed_at = self.t0 - timedelta(days=60)
        loops.add_envelope_version(
            s,
            patient_id=p.id,
            rules=QUEUE_CHANGES,
            author_id=self.world.users["clina"].id or 0,
            reason="start",
            effective_at=self.t0 - timedelta(days=30),
        )
        sbp, dbp = rng.uniform(sbp_lo, sbp_hi), rng.uniform(dbp_lo, dbp_hi)
        self._history(p.id, sbp, dbp, rng, missed_doses)
        self.kinds[p.id] = kind
        return p.id

    def _history(
        self, patient_id: str, sbp: float, dbp: float, rng: random.Random, missed_doses: bool
    ) -> None:
        """Cuff readings at 07:00 and 19:00 UTC and a dose taken at 08:00 on each of the 14
        days before the day the clinic's clock ends on: the feature windows (local days)
        hold the same rows whatever the hour the test runs, and are still full if the
        clock passes midnight."""
        s = self.world.session
        cuff, _ = devices.register(
            s, patient_id=patient_id, device_class=DeviceClass.VALIDATED_CUFF
        )
        app, _ = devices.register(s, patient_id=patient_id, device_class=DeviceClass.OTHER)
        batches: dict[str, int] = {}
        for device, entries in ((cuff, 28), (app, 14)):
            batch = IngestBatch(
                device_id=device.id,
                patient_id=patient_id,
                received_at=self.t0,
                content_type="application/fhir+json",
                source_format="fhir",
                body_sha256="0" * 64,
                body_bytes=0,
                entries=entries,
            )
            s.add(batch)
            s.flush()
            batches[device.id] = batch.id or 0
        last = self.t0 + timedelta(minutes=HORIZON_MINUTES)
        today = datetime.combine(last.date(), time(), tzinfo=self.t0.tzinfo)
        for day in range(1, 15):
            for hour in (7, 19):
                t = today - timedelta(days=day) + timedelta(hours=hour)
                s.add(
                    Reading(
                        patient_id=patient_id,
                        device_id=cuff.id,
                        batch_id=batches[cuff.id],
                        device_class=DeviceClass.VALIDATED_CUFF,
                        kind="blood_pressure",
                        code="85354-9",
                        effective_start=t,
                        effective_precision="second",
                        effective_raw=t.isoformat(),
                        systolic=round(sbp + rng.uniform(-3.0, 3.0), 1),
                        diastolic=round(dbp + rng.uniform(-2.0, 2.0), 1),
                        unit="mm[Hg]",
                        status="accepted",
                        quarantine_reasons=[],
                        source_format="fhir",
                        payload_sha256="0" * 64,
                        received_at=t,
                        natural_key=f"{cuff.id}-{day}-{hour}",
                    )
                )
            t = today - timedelta(days=day) + timedelta(hours=8)
            s.add(
                MedicationEvent(
                    patient_id=patient_id,
                    device_id=app.id,
                    batch_id=batches[app.id],
                    medication="lisinopril",
                    taken=not (missed_doses and day in (3, 5)),
                    effective_start=t,
                    effective_precision="second",
                    effective_raw=t.isoformat(),
                    payload_sha256="0" * 64,
                    received_at=t,
                    natural_key=f"{app.id}-{day}",
                )
            )


def _ids(seed: int) -> Iterator[uuid.UUID]:
    rng = random.Random(seed)
    while True:
        yield uuid.UUID(int=rng.getrandbits(128), version=4)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A small clinic's settings: 60 rows pass the data checks, retraining is due at 60 new
    decisions, and tokens issued at the start outlive the frozen clock's half hour."""
    return settings.model_copy(
        update={
            "training_min_rows": 60,
            "training_min_patients": 60,
            "retrain_min_new_decisions": 60,
            "access_token_minutes": 240,
            # The scheduler's grids: the rollout analysis and the gates every 30 s of the
            # frozen clock, retraining due from midnight (the clock may start at any hour).
            "rollout_analysis_seconds": 30,
            "model_validation_seconds": 30,
            "retraining_hour_utc": 0,
            # The canary judged on the counts a small clinic gives (the defaults wait for 20
            # of each); latency never (too noisy on a shared machine). Limits: the defaults.
            "canary_min_scored": 4,
            "canary_min_decided": 4,
            "canary_min_proposals": 4,
            "canary_min_latency_samples": 10**6,
        }
    )


@pytest.fixture
def clinic(world: World, engine: Engine, frozen_clock: FrozenClock) -> Clinic:
    """The clinic of team A: clinician `clina`, clinical lead `lead`, the ladder."""
    frozen_clock.now = frozen_clock.now.replace(microsecond=0)
    world.users["lead"] = auth_service.create_user(
        world.session,
        username="lead",
        password=PASSWORD,
        full_name="Clinical Lead",
        role=Role.CLINICIAN,
        settings=world.settings,
        is_clinical_lead=True,
    )
    patients.add_member(world.session, team=world.teams["A"], user=world.users["lead"])
    ladder = loops.create_ladder(world.session, drug="lisinopril", steps=LADDER)
    world.session.commit()
    return Clinic(world, frozen_clock, engine, frozen_clock.now, ladder, _ids(7))


@pytest.fixture
def deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed retraining seed (the run's noise and sampling), and no model cached from
    another test."""
    monkeypatch.setattr(retrain, "secrets", SimpleNamespace(randbits=lambda bits: RETRAIN_SEED))
    monkeypatch.setattr(serving, "_cache", {})


# ------------------------------------------------------------------ models and people


def flawed_champion() -> TitrationModel:
    """Version 1: reads only the 7-day home SBP; proposes an increase from about 112 mmHg
    (it over-treats patients already at target) and a decrease below about 100."""
    names = list(FEATURE_NAMES)
    mean, scale = np.zeros(len(names)), np.full(len(names), 1000.0)
    weight = np.zeros((3, len(names)))
    i = names.index("cuff_sbp_mean_7d")
    mean[i], scale[i], weight[:, i] = 106.0, 4.0, (-1.0, 0.0, 1.0)
    weight, bias = centred(weight, np.array([0.0, 1.5, 0.0]))
    return TitrationModel(
        names,
        Standardizer(tuple(mean.tolist()), tuple(scale.tolist())),
        linear=linear_from(weight, bias),
        metadata={serving.FEATURE_SET_KEY: FEATURE_SET_VERSION},
    )


def register_by_hand(
    clinic: Clinic,
    model: TitrationModel,
    filename: str,
    *,
    status: ModelStatus,
    data_hash: str,
    parent: int | None = None,
) -> int:
    """Register a model as an operator does at the command line (`clinaiops models
    train-initial` for version 1): saved, registered, audited as `model.register`."""
    s = clinic.world.session
    folder = clinic.world.settings.data_dir / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    version = registry.register(
        s,
        name=NAME,
        artifact_path=path,
        artifact_sha256=model.save(path),
        data_hash=data_hash,
        feature_names=FEATURE_NAMES,
        params={"labels": "registered by hand"},
        metrics={},
        privacy={},
        created_by=OPERATOR,
        status=status,
        parent_version=parent,
        now=clinic.clock.now,
    )
    audit.record(
        s,
        actor=OPERATOR,
        actor_role="operator",
        action="model.register",
        resource_type="model",
        resource_id=registry.label(version),
        details={"status": str(status)},
    )
    s.commit()
    return version.version


def protocol_action(features: dict[str, Any], from_step: int) -> str:
    """What the written protocol (loops/protocol.py) says for a proposal's feature snapshot:
    the simulated clinician follows it."""
    state = PatientState(
        cuff_readings_per_day_7d=[2] * 7,  # a proposal needs enough readings: it has them
        mean_sbp_7d=features["cuff_sbp_mean_7d"],
        mean_dbp_7d=features["cuff_dbp_mean_7d"],
        mean_sbp_3d=features["cuff_sbp_mean_3d"],
        min_sbp_3d=features["cuff_sbp_min_3d"],
        hypotension_symptoms=features["hypotension_symptoms_3d"] == 1.0,
        adherence_14d=features["adherence_14d"],
        days_since_last_change=(
            None if features["never_changed"] == 1.0 else int(features["days_since_change"])
        ),
        step=from_step,
        ladder_steps=len(LADDER),
        diabetes_or_ckd=features["diabetes"] == 1.0 or features["ckd"] == 1.0,
    )
    return str(decide(state).action or TitrationAction.HOLD)


Worked = dict[str, dict[str, int]]  # model label -> decision kind -> count


def work_queue(
    client: TestClient,
    clinic: Clinic,
    headers: dict[str, str],
    *,
    only: Sequence[str] | None = None,
    overrule: str = "",
) -> Worked:
    """The clinician works the review queue through the API: each waiting proposal is
    approved when the protocol calls for it, changed to what the protocol calls for, or
    rejected when the protocol holds. Proposals of the model `overrule` are all rejected
    (clinicians who disagree with it). With `only`, just those patients' proposals."""
    page = client.get("/api/v1/review/queue", params={"limit": 200}, headers=headers)
    assert page.status_code == 200, page.text
    s = clinic.world.session
    worked: Worked = {}
    for item in page.json()["items"]:
        proposal = s.get(Proposal, item["proposal_id"])  # what the proposal's page shows
        s.commit()  # end the read: on SQLite every transaction holds the writer slot
        assert proposal is not None
        if only is not None and proposal.patient_id not in only:
            continue
        wanted = protocol_action(proposal.features, proposal.from_step)
        body: dict[str, Any] = {"password": PASSWORD, "meaning_confirmed": True}
        if proposal.model_version == overrule or wanted == TitrationAction.HOLD:
            body |= {"kind": "reject", "reason_code": "clinical_judgement"}
        elif wanted == proposal.action:
            body |= {"kind": "approve"}
        else:
            body |= {
                "kind": "modify",
                "decided_step": proposal.from_step + _DELTA[wanted],
                "reason_code": "clinical_judgement",
            }
        r = client.post(
            f"/api/v1/review/proposals/{proposal.id}/decision", json=body, headers=headers
        )
        assert r.status_code == 201, r.text
        tally = worked.setdefault(proposal.model_version, {})
        tally[body["kind"]] = tally.get(body["kind"], 0) + 1
    return worked


def evaluate(clinic: Clinic, ids: Sequence[str], minutes: float) -> dict[str, str]:
    """The loop evaluates these patients now, as when their readings arrive (each served by
    the model the rollout gives them); returns the label of the model that served each."""
    s = clinic.world.session
    now = clinic.at(minutes)
    evaluate_many(
        s, patient_ids=list(ids), trigger="readings", now=now, predictor=serving.production(s)
    )
    s.commit()
    rows = s.execute(
        select(col(Evaluation.patient_id), col(Evaluation.model_version)).where(
            col(Evaluation.created_at) == now
        )
    ).all()
    s.commit()
    assert len(rows) == len(ids)
    return {pid: str(label) for pid, label in rows}


Step = tuple[str, int, str, list[str]]  # stage, percent, decision, reasons


def fire(clinic: Clinic, job: str, minutes: float) -> dict[str, Any]:
    """One firing of a scheduled job at `minutes`, as the scheduler fires it: under the
    job's lease, for the period of its grid, recorded as a job run; returns its details."""
    clinic.at(minutes)
    settings = clinic.world.settings
    result = scheduler.fire(
        session_factory(clinic.engine), jobs.registry(settings)[job], settings, "e2e-scheduler"
    )
    assert result is not None
    assert result.status == scheduler.SUCCEEDED, result
    return dict(result.details)


def tick(clinic: Clinic, minutes: float) -> list[Step]:
    """One cycle of the rollout analysis: a firing of the scheduler's `rollout_analysis`
    job, with the canary thresholds of the settings. Returns the steps it decided (a hold
    is not stored: it is the same analysis again at the next firing)."""
    details = fire(clinic, "rollout_analysis", minutes)
    s = clinic.world.session
    ended = s.scalars(
        select(RolloutStep).where(col(RolloutStep.analysed_at) == clinic.clock.now)
    ).all()
    steps: list[Step] = [(d.stage, d.percent, d.decision, list(d.reasons)) for d in ended]
    held = details["decisions"].get("hold", 0)
    if held:
        current = rollout.latest(s, name=NAME)
        assert current is not None
        steps += [(str(current.status), current.percent, "hold", [])] * held
    s.commit()
    assert len(steps) == details["rollouts"]
    return steps


def proposing(clinic: Clinic, ids: Sequence[str]) -> list[str]:
    """The patients a sound model proposes a change for (above target, or low)."""
    return [pid for pid in ids if clinic.kinds[pid] != "target"]


def salt_for(clinic: Clinic, rounds: dict[int, list[str]]) -> str:
    """A salt whose canary slice, at each step, serves at least MIN_PER_ARM of the patients
    evaluated in that step that a sound model proposes for and (below 100%) leaves at least
    as many such patients to the champion, so that both arms' override rates are judged."""
    for k in range(10_000):
        salt = f"e2e-{k}"
        fits = True
        for percent, ids in rounds.items():
            inside = [p for p in ids if canary.in_slice(salt, p, percent)]
            outside = [p for p in ids if p not in inside]
            fits &= len(proposing(clinic, inside)) >= MIN_PER_ARM
            fits &= percent == 100 or len(proposing(clinic, outside)) >= MIN_PER_ARM
        if fits:
            return salt
    raise AssertionError("no salt fits")


def sign(client: TestClient, version: int, headers: dict[str, str], role: str) -> Any:
    """Sign a version off in a role: the password again, and the meaning stated back."""
    return client.post(
        f"{API}/versions/{version}/signoffs",
        json={
            "role": role,
            "meaning": lifecycle.SIGNOFF_MEANINGS[SignoffRole(role)],
            "password": PASSWORD,
            "note": "validation evidence reviewed",
        },
        headers=headers,
    )


def _t(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# ------------------------------------------------------------------ the story


@dataclass
class Story:
    """What the phases share: the client, the clinic, each person's headers."""

    client: TestClient
    clinic: Clinic
    headers: dict[str, dict[str, str]]
    monkeypatch: pytest.MonkeyPatch

    def as_(self, who: str) -> dict[str, str]:
        """The person's authorization header."""
        return self.headers[who]

    def user(self, who: str) -> str:
        """How the audit trail names the person."""
        return f"user:{self.clinic.world.users[who].id}"


def decisions_accumulate(story: Story) -> None:
    """1. The daily evaluation queues v1's proposals; the clinician decides them; retraining
    is not due after half of them, and due after all."""
    clinic, client, s = story.clinic, story.client, story.clinic.world.session
    history = clinic.enrol(90)
    daily = evaluate_all(
        session_factory(clinic.engine), now=clinic.at(1), predictor=serving.production
    )
    assert sorted(daily.evaluated) == sorted(history)
    clinic.at(2)
    worked = work_queue(client, clinic, story.as_("clina"), only=history[:45])
    assert sum(worked["titration:v1"].values()) == 45
    assert retrain.retrain_due(session=s, now=clinic.at(3), settings=clinic.world.settings) is None
    s.commit()
    worked = work_queue(client, clinic, story.as_("clina"))
    # v1 proposes a change for everyone: approved above target and when low, rejected at it.
    assert worked == {"titration:v1": {"approve": 30, "reject": 15}}
    due = retrain.retrain_due(session=s, now=clinic.at(4), settings=clinic.world.settings)
    s.commit()
    assert due == "90 new clinician decisions so far (retrain at 60)"


def retraining(story: Story) -> dict[str, Any]:
    """2. DP retraining registers candidate v2: epsilon on it and in the ledger, parent v1."""
    client = story.client
    with pytest.warns(UserWarning, match="Secure RNG turned off"):
        r = client.post(
            "/api/v1/models/train", json={"target_epsilon": 3.0}, headers=story.as_("mleng")
        )
    assert r.status_code == 201, r.text
    trained: dict[str, Any] = r.json()
    assert (trained["model"], trained["status"], trained["parent_version"]) == (
        "titration:v2",
        "candidate",
        1,
    )
    assert 2.9 < trained["epsilon"] <= 3.0 + 1e-9
    assert trained["privacy_unit"] == "patient"  # one decision per patient
    ledger = client.get(
        "/api/v1/privacy-ledger", params={"cohort": "clinic"}, headers=story.as_("auditor")
    )
    (cohort,) = ledger.json()["cohorts"]
    assert cohort["spent_epsilon"] == pytest.approx(trained["epsilon"])
    assert [(e["model"], e["epsilon"]) for e in cohort["entries"]] == [
        ("titration:v2", trained["epsilon"])
    ]
    v2 = client.get(f"{API}/versions/2", headers=story.as_("lead")).json()  # the lead reads it
    assert v2["privacy"]["epsilon"] == pytest.approx(trained["epsilon"])
    assert v2["privacy"]["cohort"] == "clinic"
    assert v2["parent_version"] == 1
    assert [p["version"] for p in v2["parents"]] == [1]
    # delta is 1/(10 n), n the DP training rows (others calibrate, and the holdout judges).
    assert trained["delta"] == pytest.approx(1 / (10 * v2["metrics"]["train_rows"]))
    assert v2["snapshot"]["rows"] == 90
    assert v2["snapshot"]["content_hash"] == v2["data_hash"]
    assert v2["ready_for_rollout"][0] == "status_not_validated"
    return trained


def gates_and_signoffs(story: Story) -> None:
    """3. The gates pass and validate v2; the rollout waits for both sign-offs, given by two
    people in their roles (the wrong role, or the same person twice, refused)."""
    client = story.client
    mleng, lead, clina = story.as_("mleng"), story.as_("lead"), story.as_("clina")
    r = client.post(f"{API}/versions/2/validate", headers=mleng)
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["passed"] is True
    assert run["failed"] == []
    assert [g["gate"] for g in run["gates"]] == list(lifecycle.REQUIRED_GATES)
    assert run["gates"][1]["measured"]["comparator"] == "champion v1"
    early = client.post(f"{API}/versions/2/rollout", json={"dwell_minutes": 1}, headers=mleng)
    assert (early.status_code, early.json()["code"]) == (409, "not_ready")
    assert early.json()["detail"].endswith("signoff_ml_engineer, signoff_clinical_lead")
    story.clinic.at(5)
    refused = sign(client, 2, clina, "clinical_lead")  # a clinician who is not a lead
    assert (refused.status_code, refused.json()["code"]) == (403, "wrong_role")
    refused = sign(client, 2, lead, "ml_engineer")  # the lead in the engineer's role
    assert (refused.status_code, refused.json()["code"]) == (403, "wrong_role")
    assert sign(client, 2, mleng, "ml_engineer").status_code == 201
    again = sign(client, 2, mleng, "ml_engineer")  # the same person twice
    assert (again.status_code, again.json()["code"]) == (409, "already_signed")
    refused = sign(client, 2, mleng, "clinical_lead")  # ... or in the other role
    assert (refused.status_code, refused.json()["code"]) == (403, "wrong_role")
    assert sign(client, 2, lead, "clinical_lead").status_code == 201
    v2 = client.get(f"{API}/versions/2", headers=story.as_("auditor")).json()
    assert v2["status"] == "validated"
    assert v2["ready_for_rollout"] == []
    assert sorted((x["role"], x["signer_name"], x["signature_valid"]) for x in v2["signoffs"]) == [
        ("clinical_lead", "Clinical Lead", True),
        ("ml_engineer", "Mleng", True),
    ]


def rollout_to_production(story: Story) -> datetime:
    """4. v2 scores in shadow (logged, never delivered), serves the canary's slices at 10,
    25, 50 and 100%, then becomes the champion; returns when it did."""
    clinic, client, s = story.clinic, story.client, story.clinic.world.session
    rounds = {percent: clinic.enrol(18) for percent in (0, *canary.STEPS)}
    salt = salt_for(clinic, {p: ids for p, ids in rounds.items() if p})
    story.monkeypatch.setattr(rollout, "secrets", SimpleNamespace(token_hex=lambda n: salt))
    clinic.at(10)
    r = client.post(
        f"{API}/versions/2/rollout", json={"dwell_minutes": 1}, headers=story.as_("mleng")
    )
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["dwell_seconds"]) == ("shadow", 60)

    # Shadow: v2 scores every evaluation beside v1; nothing it says reaches anyone.
    served = evaluate(clinic, rounds[0], 10.5)
    assert set(served.values()) == {"titration:v1"}
    shadows = s.scalars(select(ShadowPrediction)).all()
    assert len(shadows) == 18
    assert all(x.challenger_version == 2 and x.challenger_action for x in shadows)
    assert not s.scalars(
        select(Proposal).where(col(Proposal.model_version) == "titration:v2")
    ).all()
    s.commit()
    assert set(work_queue(client, clinic, story.as_("clina"))) == {"titration:v1"}
    live = client.get(f"{API}/rollout", headers=story.as_("auditor")).json()["current"]
    # Against the clinician's decisions on v1's proposals, v2 agrees where v1 was overruled.
    agreement = live["analysis"]["agreement"]
    assert (agreement["compared"], agreement["decided"]) == (18, 18)
    assert agreement["with_clinicians_challenger"] == 1.0
    assert agreement["with_clinicians_champion"] == pytest.approx(2 / 3, abs=1e-4)
    assert tick(clinic, 10.8)[0][2] == "hold"  # the dwell is not over
    steps = [tick(clinic, 11.5)]

    # Canary: each step serves its slice with v2, everyone else with v1.
    minute = 11.5
    for percent in canary.STEPS:
        served = evaluate(clinic, rounds[percent], minute + 0.5)
        assert served == {
            pid: "titration:v2" if canary.in_slice(salt, pid, percent) else "titration:v1"
            for pid in rounds[percent]
        }
        in_slice = [pid for pid, label in served.items() if label == "titration:v2"]
        worked = work_queue(client, clinic, story.as_("clina"))
        # v2 proposes for every patient in its slice above target or low: all approved.
        assert worked["titration:v2"] == {"approve": len(proposing(clinic, in_slice))}
        minute += 1.5
        steps.append(tick(clinic, minute))
    assert steps == [
        [("shadow", 0, "advance", ["clean at shadow for the dwell"])],
        [("canary", 10, "advance", ["clean at 10% for the dwell"])],
        [("canary", 25, "advance", ["clean at 25% for the dwell"])],
        [("canary", 50, "advance", ["clean at 50% for the dwell"])],
        [("canary", 100, "complete", ["clean at 100% for the dwell"])],
    ]
    done = clinic.clock.now
    listing = client.get("/api/v1/models", headers=story.as_("auditor")).json()
    assert listing["aliases"] == {NAME: {"champion": 2}}
    assert [(v["version"], v["status"]) for v in listing["items"]] == [
        (2, "production"),
        (1, "retired"),
    ]
    history = client.get(f"{API}/history", headers=story.as_("auditor")).json()
    assert [(i["version"], _t(i["start"]), _t(i["end"])) for i in history["intervals"]] == [
        (1, clinic.t0, done),
        (2, done, None),
    ]
    return done


def worse_candidate_blocked(story: Story) -> None:
    """5. v2's weights with decrease and increase swapped, re-registered with a valid
    artifact hash as v3: its gates fail, saying which and by how much; no rollout, no
    sign-off."""
    clinic, client, s = story.clinic, story.client, story.clinic.world.session
    mleng = story.as_("mleng")
    clinic.at(20)
    good = lifecycle.get_version(s, name=NAME, version=2)
    model = TitrationModel.load(Path(good.artifact_path), good.artifact_sha256)
    s.commit()
    swap = [2, 1, 0]
    scrambled = TitrationModel(
        model.feature_names,
        model.standardizer,
        linear=linear_from(*centred(model.weight[swap], model.bias[swap])),
        temperature=model.temperature,
        metadata=dict(model.metadata),
    )
    register_by_hand(
        clinic,
        scrambled,
        "titration-scrambled.json",
        status=ModelStatus.CANDIDATE,
        data_hash=good.data_hash,  # judged on v2's holdout
        parent=2,
    )
    r = client.post(f"{API}/versions/3/validate", headers=mleng)
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["passed"] is False
    assert {"holdout_noninferiority", "safety_directional", "safety_low_bp"} <= set(run["failed"])
    assert "artifact" not in run["failed"]
    detail = {g["gate"]: g["detail"] for g in run["gates"]}
    # Which check failed, and by how much: the bound measured, the margin, the excess.
    found = re.search(
        r"upper 95% bound of \(candidate - champion v2\) is ([\d.]+) nats, above the margin "
        r"([\d.]+) by ([\d.]+)",
        detail["holdout_noninferiority"],
    )
    assert found is not None, detail["holdout_noninferiority"]
    bound, margin, excess = (float(x) for x in found.groups())
    assert margin == clinic.world.settings.gate_nll_margin
    assert excess == pytest.approx(bound - margin, abs=2e-4)
    assert re.search(
        r"an increase was proposed on low BP in \d+ of \d+ cases", detail["safety_low_bp"]
    )
    assert re.search(
        r"P\(increase\) fell as BP rose in \d+ of \d+ base rows; the largest fall is",
        detail["safety_directional"],
    )
    refused = client.post(f"{API}/versions/3/rollout", json={"dwell_minutes": 1}, headers=mleng)
    assert (refused.status_code, refused.json()["code"]) == (409, "not_ready")
    assert refused.json()["detail"] == (
        "the rollout needs: status_not_validated, gates_not_passed, signoff_ml_engineer, "
        "signoff_clinical_lead"
    )
    refused = sign(client, 3, mleng, "ml_engineer")
    assert (refused.status_code, refused.json()["code"]) == (409, "status_not_validated")


def scheduled_v4(story: Story, spent: float) -> dict[str, Any]:
    """6. With the rollout's decisions to learn from, the scheduler's `retraining` job finds
    enough new decisions and trains v4 (parent: the champion v2), and its
    `model_validation` job runs v4's gates, which pass; the two sign-offs follow."""
    clinic, client, s = story.clinic, story.client, story.clinic.world.session
    mleng = story.as_("mleng")
    trained = fire(clinic, "retraining", 21)
    assert trained["due"] is True
    assert (trained["candidate"], trained["parent_version"]) == ("titration:v4", 2)
    assert trained["spent_epsilon"] == pytest.approx(spent + trained["epsilon"])
    v4 = client.get(f"{API}/versions/4", headers=mleng).json()
    assert (v4["status"], v4["created_by"]) == ("candidate", "system:scheduler")
    assert v4["privacy"]["epsilon"] == pytest.approx(trained["epsilon"])
    validated = fire(clinic, "model_validation", 21.5)
    assert validated == {"candidates": 1, "validated": ["titration:v4"], "failed": {}}
    clinic.at(22)
    assert sign(client, 4, mleng, "ml_engineer").status_code == 201
    assert sign(client, 4, story.as_("lead"), "clinical_lead").status_code == 201
    s.commit()
    return trained


def over_budget_refused(story: Story, spent: float) -> None:
    """8. With v5's canary decisions to learn from, a run that would pass the privacy
    budget is refused and spends nothing."""
    client, mleng = story.client, story.as_("mleng")
    story.clinic.at(33)
    r = client.post("/api/v1/models/train", json={"target_epsilon": 8.0}, headers=mleng)
    assert (r.status_code, r.json()["code"]) == (422, "privacy_budget_exceeded")
    assert r.json()["detail"].startswith(
        f"privacy budget exceeded: {spent:.4g} spent + 8 requested"
    )
    assert f"above the budget of 10 by {spent - 2:.4g}" in r.json()["detail"]
    ledger = client.get("/api/v1/privacy-ledger", params={"cohort": "clinic"}, headers=mleng)
    assert ledger.json()["cohorts"][0]["runs"] == 2  # the refused run spent nothing


def missed_doses_argue_for_increase(model: TitrationModel, level: float) -> TitrationModel:
    """The model plus what a model can pick up from confounded data: a patient whose
    adherence is below `level` gets an increase. Every patient of the model's training rows
    and holdout took every dose, and so does every case of the safety library: there the
    term is zero, the gates cannot see it, and only live patients can show it. (Adherence is
    a share, so it is the same whatever the hour the test runs.)"""
    names = list(model.feature_names)
    j = names.index("adherence_14d")
    weight, bias = model.weight.copy(), model.bias.copy()
    centre, scale = model.standardizer.mean[j], model.standardizer.scale[j]
    # Re-centre the column on `level` with scale 1, keeping the model's own term as it was.
    bias += weight[:, j] * (level - centre) / scale
    weight[:, j] /= scale
    weight[:, j] += (0.0, 0.0, -60.0)  # two doses of fourteen missed: about +8.6 for increase
    mean, scales = list(model.standardizer.mean), list(model.standardizer.scale)
    mean[j], scales[j] = level, 1.0
    return TitrationModel(
        names,
        Standardizer(tuple(mean), tuple(scales)),
        linear=linear_from(*centred(weight, bias)),
        temperature=model.temperature,
        metadata=dict(model.metadata),
    )


def canary_rolled_back(story: Story) -> str:
    """7. v5, v4 with a flaw no gate can see (it never shows on the holdout or the safety
    library), passes the scheduled gates and is signed off; it goes through shadow on
    patients like those it was validated on; in its canary, patients who missed a dose or
    two arrive, v5 proposes increases the protocol does not call for, the clinician (following
    the protocol, whichever model proposed) overrules them, and the next firing of the
    rollout analysis rolls v5 back: the champion v2 serves again."""
    clinic, client, s = story.clinic, story.client, story.clinic.world.session
    mleng = story.as_("mleng")
    v4 = lifecycle.get_version(s, name=NAME, version=4)
    measured = {p.features["adherence_14d"] for p in s.scalars(select(Proposal))}
    assert measured == {1.0}  # every patient so far took every dose
    flawed = missed_doses_argue_for_increase(
        TitrationModel.load(Path(v4.artifact_path), v4.artifact_sha256), 1.0
    )
    data_hash = v4.data_hash
    s.commit()
    register_by_hand(
        clinic,
        flawed,
        "titration-v5.json",
        status=ModelStatus.CANDIDATE,
        data_hash=data_hash,  # judged on v4's holdout
        parent=4,
    )
    validated = fire(clinic, "model_validation", 24)
    assert validated == {"candidates": 1, "validated": ["titration:v5"], "failed": {}}
    clinic.at(25)
    assert sign(client, 5, mleng, "ml_engineer").status_code == 201
    assert sign(client, 5, story.as_("lead"), "clinical_lead").status_code == 201

    later = {0: clinic.enrol(18), 10: clinic.enrol(40, missed_doses=True)}
    salt = salt_for(clinic, {10: later[10]})
    story.monkeypatch.setattr(rollout, "secrets", SimpleNamespace(token_hex=lambda n: salt))
    clinic.at(30)
    r = client.post(f"{API}/versions/5/rollout", json={"dwell_minutes": 1}, headers=mleng)
    assert r.status_code == 201, r.text
    evaluate(clinic, later[0], 30.5)
    work_queue(client, clinic, story.as_("clina"))
    assert tick(clinic, 31.5) == [("shadow", 0, "advance", ["clean at shadow for the dwell"])]
    served = evaluate(clinic, later[10], 31.6)
    in_slice = sorted(pid for pid, label in served.items() if label == "titration:v5")
    worked = work_queue(client, clinic, story.as_("clina"))
    # v5 proposes for every patient in its slice: what the protocol calls for above target
    # and when low (approved), and an increase at target, which the clinician rejects; v2
    # proposes only where the protocol does, and is approved.
    kinds = [clinic.kinds[pid] for pid in in_slice]
    at_target = kinds.count("target")
    assert worked["titration:v5"] == {"approve": len(kinds) - at_target, "reject": at_target}
    assert set(worked["titration:v2"]) == {"approve"}
    overridden = at_target / len(kinds)
    (step,) = tick(clinic, 32.1)  # the next firing, inside the step's minute
    assert step[:3] == ("canary", 10, "rollback")
    assert step[3][0] == (
        f"override_rate {round(overridden, 4)} vs champion 0.0 (limit champion + 0.1)"
    )
    reason = "; ".join(step[3])
    ended = client.get(f"{API}/rollout", headers=story.as_("auditor")).json()
    assert (ended["status"], ended["challenger_version"], ended["champion_version"]) == (
        "rolled_back",
        5,
        2,
    )
    assert ended["model_alert"] == f"automatic rollback at canary 10%: {reason}"
    listing = client.get("/api/v1/models", headers=story.as_("auditor")).json()
    assert listing["aliases"] == {NAME: {"champion": 2}}
    assert [(v["version"], v["status"]) for v in listing["items"]] == [
        (5, "retired"),
        (4, "validated"),
        (3, "candidate"),
        (2, "production"),
        (1, "retired"),
    ]
    now_serving = serving.for_patient(s, in_slice[0])
    s.commit()
    assert now_serving is not None
    assert now_serving.label == "titration:v2"
    assert set(evaluate(clinic, later[10], 32.5).values()) == {"titration:v2"}
    history = client.get(f"{API}/history", headers=story.as_("auditor")).json()
    assert [i["version"] for i in history["intervals"]] == [1, 2]  # v5 never served all
    return reason


def audit_trail(story: Story, eps2: float, eps4: float, rollback: str) -> None:
    """8. The model's audit trail, in order: who did what, with what outcome; the
    transitions' reasons; and the whole log verifies."""
    client = story.client
    entries: list[dict[str, Any]] = []
    while True:  # each page read is audited too: stop at a short page
        after = entries[-1]["seq"] if entries else 0
        page = client.get(
            "/api/v1/audit/entries",
            params={"after_seq": after, "limit": 1000},
            headers=story.as_("auditor"),
        ).json()
        entries += page
        if len(page) < 1000:
            break
    trail = [
        e
        for e in entries
        if e["resource_type"] == "model" and e["action"] not in ("model.list", "model.read")
    ]
    ml, lead, clin = story.user("mleng"), story.user("lead"), story.user("clina")
    ok, failed, denied = "success", "failure", "denied"
    v1, v2, v3, v4, v5 = (f"titration:v{n}" for n in (1, 2, 3, 4, 5))
    expected: list[tuple[str, str | None, str, str, dict[str, Any]]] = [
        ("model.transition", v1, OPERATOR, ok, {"from": None, "to": "production"}),
        ("model.alias", v1, OPERATOR, ok, {"alias": "champion", "from": None, "to": 1}),
        ("model.register", v1, OPERATOR, ok, {"status": "production"}),
        # 2. retraining
        (
            "model.train",
            v2,
            ml,
            ok,
            {"parent_version": 1, "epsilon": eps2, "reason": "requested over the API"},
        ),
        ("model.transition", v2, ml, ok, {"from": None, "to": "candidate"}),
        # 3. gates, sign-offs (and the refusals)
        ("model.validate", v2, ml, ok, {"passed": True}),
        ("model.gates", v2, ml, ok, {"passed": True, "champion_version": 1}),
        ("model.transition", v2, ml, ok, {"from": "candidate", "to": "validated"}),
        ("model.promote", v2, ml, failed, {"code": "not_ready"}),
        ("model.signoff", v2, clin, denied, {"code": "wrong_role"}),
        ("model.signoff", v2, lead, denied, {"code": "wrong_role"}),
        ("model.signoff", v2, ml, ok, {"role": "ml_engineer"}),
        ("model.signed", v2, ml, ok, {"role": "ml_engineer", "reauthenticated": True}),
        ("model.signoff", v2, ml, failed, {"code": "already_signed"}),
        ("model.signoff", v2, ml, denied, {"code": "wrong_role"}),
        ("model.signoff", v2, lead, ok, {"role": "clinical_lead"}),
        ("model.signed", v2, lead, ok, {"role": "clinical_lead", "reauthenticated": True}),
        # 4. the rollout
        ("model.promote", v2, ml, ok, {"rollout_id": 1}),
        ("model.transition", v2, ml, ok, {"from": "validated", "to": "shadow"}),
        ("model.alias", v2, ml, ok, {"alias": "challenger", "from": None, "to": 2}),
        ("model.rollout.start", v2, ml, ok, {"champion_version": 1, "dwell_seconds": 60}),
        ("model.transition", v2, ROLLOUT, ok, {"from": "shadow", "to": "canary"}),
        ("model.rollout.advance", v2, ROLLOUT, ok, {"from_percent": 0, "to_percent": 10}),
        ("model.rollout.advance", v2, ROLLOUT, ok, {"from_percent": 10, "to_percent": 25}),
        ("model.rollout.advance", v2, ROLLOUT, ok, {"from_percent": 25, "to_percent": 50}),
        ("model.rollout.advance", v2, ROLLOUT, ok, {"from_percent": 50, "to_percent": 100}),
        ("model.transition", v2, ROLLOUT, ok, {"from": "canary", "to": "production"}),
        ("model.transition", v1, ROLLOUT, ok, {"from": "production", "to": "retired"}),
        ("model.alias", v2, ROLLOUT, ok, {"alias": "champion", "from": 1, "to": 2}),
        ("model.alias", v2, ROLLOUT, ok, {"alias": "challenger", "from": 2, "to": None}),
        ("model.rollout.complete", v2, ROLLOUT, ok, {"retired_version": 1}),
        # 5. the worse candidate
        ("model.transition", v3, OPERATOR, ok, {"from": None, "to": "candidate"}),
        ("model.register", v3, OPERATOR, ok, {"status": "candidate"}),
        ("model.validate", v3, ml, ok, {"passed": False}),
        ("model.gates", v3, ml, ok, {"passed": False, "champion_version": 2}),
        ("model.promote", v3, ml, failed, {"code": "not_ready"}),
        ("model.signoff", v3, ml, failed, {"code": "status_not_validated"}),
        # 6. the scheduler trains v4 and runs its gates; the sign-offs
        ("model.transition", v4, SCHEDULER, ok, {"from": None, "to": "candidate"}),
        ("model.train", v4, SCHEDULER, ok, {"parent_version": 2, "epsilon": eps4}),
        ("model.gates", v4, SCHEDULER, ok, {"passed": True, "champion_version": 2}),
        ("model.transition", v4, SCHEDULER, ok, {"from": "candidate", "to": "validated"}),
        ("model.signoff", v4, ml, ok, {"role": "ml_engineer"}),
        ("model.signed", v4, ml, ok, {"role": "ml_engineer"}),
        ("model.signoff", v4, lead, ok, {"role": "clinical_lead"}),
        ("model.signed", v4, lead, ok, {"role": "clinical_lead"}),
        # 7. v5: registered, gated by the scheduler, signed off, rolled out, rolled back
        ("model.transition", v5, OPERATOR, ok, {"from": None, "to": "candidate"}),
        ("model.register", v5, OPERATOR, ok, {"status": "candidate"}),
        ("model.gates", v5, SCHEDULER, ok, {"passed": True, "champion_version": 2}),
        ("model.transition", v5, SCHEDULER, ok, {"from": "candidate", "to": "validated"}),
        ("model.signoff", v5, ml, ok, {"role": "ml_engineer"}),
        ("model.signed", v5, ml, ok, {"role": "ml_engineer"}),
        ("model.signoff", v5, lead, ok, {"role": "clinical_lead"}),
        ("model.signed", v5, lead, ok, {"role": "clinical_lead"}),
        ("model.promote", v5, ml, ok, {"rollout_id": 2}),
        ("model.transition", v5, ml, ok, {"from": "validated", "to": "shadow"}),
        ("model.alias", v5, ml, ok, {"alias": "challenger", "from": None, "to": 5}),
        ("model.rollout.start", v5, ml, ok, {"champion_version": 2}),
        ("model.transition", v5, ROLLOUT, ok, {"from": "shadow", "to": "canary"}),
        ("model.rollout.advance", v5, ROLLOUT, ok, {"from_percent": 0, "to_percent": 10}),
        ("model.transition", v5, ROLLOUT, ok, {"from": "canary", "to": "retired"}),
        ("model.alias", v5, ROLLOUT, ok, {"alias": "challenger", "from": 5, "to": None}),
        (
            "model.rollout.rollback",
            v5,
            ROLLOUT,
            ok,
            {
                "automatic": True,
                "model_alert": True,
                "breaches": ["override_rate"],
                "serving_version": 2,
            },
        ),
        # 8. the budget refusal
        (
            "model.train",
            NAME,
            ml,
            failed,
            {"code": "privacy_budget_exceeded", "requested_epsilon": 8.0},
        ),
    ]
    got = [(e["action"], e["resource_id"], e["actor"], e["outcome"]) for e in trail]
    assert got == [x[:4] for x in expected]
    for entry, (*_, want) in zip(trail, expected, strict=True):
        assert {k: entry["details"].get(k) for k in want} == want, entry
    roles = {ml: "ml_engineer", lead: "clinician", clin: "clinician", OPERATOR: "operator"}
    assert all(e["actor_role"] == roles.get(e["actor"], "system") for e in trail)

    # Why each version changed state, and who moved it.
    retrain_reason = "80 new clinician decisions since the last snapshot (retrain at 60)"
    history = client.get(f"{API}/history", headers=story.as_("auditor")).json()
    assert [
        (t["version"], t["from_status"], t["to_status"], t["actor"], t["reason"])
        for t in history["transitions"]
    ] == [
        (1, None, "production", OPERATOR, "registered"),
        (2, None, "candidate", ml, "retrained: requested over the API"),
        (2, "candidate", "validated", ml, "every validation gate passed"),
        (2, "validated", "shadow", ml, "rollout 1 started: shadow beside titration:v1"),
        (2, "shadow", "canary", ROLLOUT, "rollout 1: shadow clean for the dwell; canary at 10%"),
        (2, "canary", "production", ROLLOUT, "rollout 1 completed: clean at 100% for the dwell"),
        (1, "production", "retired", ROLLOUT, "replaced by titration:v2 (rollout 1)"),
        (3, None, "candidate", OPERATOR, "registered"),
        (4, None, "candidate", SCHEDULER, f"retrained: {retrain_reason}"),
        (4, "candidate", "validated", SCHEDULER, "every validation gate passed"),
        (5, None, "candidate", OPERATOR, "registered"),
        (5, "candidate", "validated", SCHEDULER, "every validation gate passed"),
        (5, "validated", "shadow", ml, "rollout 2 started: shadow beside titration:v2"),
        (5, "shadow", "canary", ROLLOUT, "rollout 2: shadow clean for the dwell; canary at 10%"),
        (5, "canary", "retired", ROLLOUT, f"automatic rollback at canary 10%: {rollback}"),
    ]


def verify_audit_log(settings: Settings) -> None:
    """`clinaiops audit verify`, run as an operator runs it, on this database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINAIOPS_")}
    env.update(
        CLINAIOPS_ENVIRONMENT="test",
        CLINAIOPS_DATA_DIR=str(settings.data_dir),
        CLINAIOPS_DATABASE_URL=settings.database_url,
        CLINAIOPS_SIGNING_KEY_PATH=str(settings.signing_key_path),
        NO_COLOR="1",
    )
    done = subprocess.run(
        [str(Path(sys.executable).with_name("clinaiops")), "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: ")


def test_model_lifecycle_end_to_end_on_a_small_simulated_clinic(
    client: TestClient, clinic: Clinic, deterministic: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = clinic.world
    # Tokens issued now, at the frozen clock's start: they must not lie in the wall clock's
    # future, and they last for the half hour the clinic's clock moves on.
    headers = {who: world.auth(who) for who in ("mleng", "lead", "clina", "auditor")}
    story = Story(client, clinic, headers, monkeypatch)
    register_by_hand(
        clinic,
        flawed_champion(),
        "titration-v1.json",
        status=ModelStatus.PRODUCTION,
        data_hash="0" * 64,
    )
    decisions_accumulate(story)
    v2 = retraining(story)
    gates_and_signoffs(story)
    rollout_to_production(story)
    worse_candidate_blocked(story)
    v4 = scheduled_v4(story, spent=v2["epsilon"])
    rollback = canary_rolled_back(story)
    over_budget_refused(story, spent=v2["epsilon"] + v4["epsilon"])
    audit_trail(story, v2["epsilon"], v4["epsilon"], rollback)
    verify_audit_log(world.settings)
