"""The batched evaluation (`evaluate_many`, the daily run) against one evaluation per patient.

The differential tests arrange a mixed cohort, copy the database, evaluate every patient once
per transaction with `evaluate()` on one copy and in batches with `evaluate_many()` on the
other, and compare every row the loop writes, audit entries included.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, event, make_url, select, text
from sqlalchemy.orm import Session

from app.core import clock
from app.db import make_engine, session_factory
from app.patients import service as patients
from app.patients.models import Sex
from audit.models import AuditEntry
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, MedicationEvent, Reading
from loops import flows, service
from loops.alerts import AlertType, Finding, Severity
from loops.dispatch import evaluate_all
from loops.flows import Outcome, Predictor, evaluate, evaluate_many
from loops.models import (
    Alert,
    Evaluation,
    MedicationRegimen,
    PatientNotice,
    Proposal,
    ProposalStatus,
)
from mlops.features import FEATURE_NAMES
from mlops.model import Standardizer, TitrationModel, centred, linear_from
from mlops.serving import ServedModel
from policies.envelope import default_rules
from tests.conftest import FrozenClock, World

LOOP_TABLES = (Evaluation, Proposal, Alert, PatientNotice, MedicationRegimen, AuditEntry)


def _served_model() -> ServedModel:
    """A real served model (row-stable scoring, exact SHAP, texts) with made-up weights:
    high home SBP argues for an increase, low for a decrease, the rest is small noise."""
    names = list(FEATURE_NAMES)
    mean, scale = np.zeros(len(names)), np.full(len(names), 1000.0)
    weight = np.random.default_rng(3).normal(0.0, 0.05, size=(3, len(names)))
    for name, centre, spread, push in (
        ("cuff_sbp_mean_7d", 135.0, 10.0, 2.0),
        ("cuff_dbp_mean_7d", 85.0, 10.0, 0.5),
        ("adherence_14d", 0.9, 0.1, 0.3),
        ("days_since_change", 90.0, 90.0, 0.2),
    ):
        i = names.index(name)
        mean[i], scale[i], weight[:, i] = centre, spread, (-push, 0.0, push)
    weight, bias = centred(weight, np.array([0.0, 1.5, 0.0]))
    model = TitrationModel(
        names,
        Standardizer(tuple(mean.tolist()), tuple(scale.tolist())),
        linear=linear_from(weight, bias),
    )
    return ServedModel("synthetic:v1", model)


@dataclass
class Cohort:
    """Patients by scenario name, in evaluation order."""

    ids: dict[str, str]

    def order(self) -> list[str]:
        return list(self.ids.values())


class _Arranger:
    """Writes a scenario's records (readings, doses, alerts, proposals) for one patient."""

    def __init__(self, world: World, now: datetime) -> None:
        self.s = world.session
        self.now = now
        self.author = world.users["clina"].id or 0
        self.ladder = service.create_ladder(self.s, drug="amlodipine", steps=[2.5, 5.0, 10.0])

    def patient(self, name: str, *, step: int | None = 0, changed_days_ago: int = 60) -> str:
        p = patients.register_patient(
            self.s,
            pseudonym=f"B-{name}",
            given_name="Batch",
            family_name=name,
            birth_date=date(1958, 3, 1),
            sex=Sex.MALE,
        )
        p.created_at = self.now - timedelta(days=90)
        if step is not None:
            regimen = service.start_regimen(self.s, patient_id=p.id, ladder=self.ladder, step=step)
            regimen.started_at = self.now - timedelta(days=60)
            regimen.last_changed_at = self.now - timedelta(days=changed_days_ago)
            service.add_envelope_version(
                self.s,
                patient_id=p.id,
                rules=default_rules(3),
                author_id=self.author,
                reason="start",
                effective_at=self.now - timedelta(days=30),
            )
        self.s.flush()
        return p.id

    def readings(
        self,
        pid: str,
        sbp: float,
        dbp: float,
        *,
        days: int = 7,
        per_day: int = 4,
        device_class: DeviceClass = DeviceClass.VALIDATED_CUFF,
        times: list[datetime] | None = None,
    ) -> None:
        device, _ = devices.register(self.s, patient_id=pid, device_class=device_class)
        batch = IngestBatch(
            device_id=device.id,
            patient_id=pid,
            received_at=self.now,
            content_type="x",
            source_format="fhir",
            body_sha256="0" * 64,
            body_bytes=0,
            entries=1,
        )
        self.s.add(batch)
        self.s.flush()
        if times is None:
            times = [
                self.now - timedelta(days=d, hours=1 + 5 * k, minutes=d)
                for d in range(days)
                for k in range(per_day)
            ]
        for i, t in enumerate(times):
            self.s.add(
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
                    systolic=sbp + (i % 3),
                    diastolic=dbp,
                    unit="mm[Hg]",
                    status="accepted",
                    quarantine_reasons=[],
                    source_format="fhir",
                    payload_sha256="0" * 64,
                    received_at=t,
                    natural_key=f"{device.id}-{i}",
                )
            )
        self.s.flush()

    def doses(self, pid: str, *, taken_every: int = 1, days: int = 14) -> None:
        device, _ = devices.register(self.s, patient_id=pid, device_class=DeviceClass.OTHER)
        batch = IngestBatch(
            device_id=device.id,
            patient_id=pid,
            received_at=self.now,
            content_type="x",
            source_format="fhir",
            body_sha256="0" * 64,
            body_bytes=0,
            entries=days,
        )
        self.s.add(batch)
        self.s.flush()
        for d in range(days):
            t = self.now - timedelta(days=d, hours=3)
            self.s.add(
                MedicationEvent(
                    patient_id=pid,
                    device_id=device.id,
                    batch_id=batch.id or 0,
                    medication="amlodipine",
                    taken=d % taken_every == 0,
                    effective_start=t,
                    effective_precision="second",
                    effective_raw=t.isoformat(),
                    payload_sha256="0" * 64,
                    received_at=t,
                    natural_key=f"{device.id}-dose-{d}",
                )
            )
        self.s.flush()

    def alert(self, pid: str, kind: AlertType, *, acknowledged: bool = False) -> None:
        severity = {AlertType.ADHERENCE_DROP: Severity.MEDIUM, AlertType.LOW_BP: Severity.HIGH}
        finding = Finding(kind, severity.get(kind, Severity.LOW), f"{pid}:{kind}", "earlier")
        (raised,) = service.raise_alerts(
            self.s, patient_id=pid, found=[finding], now=self.now - timedelta(days=2)
        )
        if acknowledged:
            service.acknowledge(self.s, alert=raised, user_id=self.author, note="", now=self.now)

    def pending_proposal(self, pid: str) -> None:
        regimen = self.s.scalars(
            select(MedicationRegimen).where(MedicationRegimen.patient_id == pid)
        ).one()
        self.s.add(
            Proposal(
                patient_id=pid,
                regimen_id=regimen.id,
                model_version="synthetic:v0",
                feature_hash="0" * 64,
                features={},
                action="increase",
                from_step=0,
                to_step=1,
                from_dose=2.5,
                to_dose=5.0,
                probabilities={"decrease": 0.05, "hold": 0.15, "increase": 0.8},
                confidence=0.8,
                explanation={},
                route="clinician_review",
                reasons=["kill_switch"],
                status=ProposalStatus.PENDING_REVIEW,
                created_at=self.now - timedelta(days=1),
            )
        )
        self.s.flush()


def _arrange(world: World, now: datetime, *, kill_switch: bool) -> Cohort:
    a = _Arranger(world, now)
    ids: dict[str, str] = {}

    def add(name: str, **kw: Any) -> str:
        ids[name] = a.patient(name, **kw)
        return ids[name]

    a.readings(add("steady"), 133, 82)
    a.doses(ids["steady"])
    a.readings(add("high"), 156, 94)
    a.doses(ids["high"])
    a.readings(add("insufficient"), 150, 90, days=3, per_day=2)
    pid = add("nudged_today")
    a.readings(pid, 150, 90, days=2, per_day=2)
    a.s.add(PatientNotice(patient_id=pid, kind="measure", text="earlier", created_at=now))
    pid = add("crisis_pending")
    a.readings(pid, 150, 90)
    a.readings(pid, 192, 104, times=[now - timedelta(minutes=2)])
    pid = add("crisis_confirmed")
    a.readings(pid, 150, 90)
    a.readings(pid, 190, 100, times=[now - timedelta(minutes=30), now - timedelta(minutes=28)])
    a.readings(add("low_bp", step=1), 94, 60)
    add("no_regimen", step=None)  # no readings either: a data gap
    pid = add("open_alert")
    a.readings(pid, 156, 94)
    a.alert(pid, AlertType.ADHERENCE_DROP)  # unacknowledged: stays open, blocks delivery
    a.alert(pid, AlertType.LOW_BP, acknowledged=True)  # cleared since: resolves
    pid = add("gap_closed")
    a.readings(pid, 150, 90)
    a.alert(pid, AlertType.DATA_GAP)  # readings again: resolves at once
    pid = add("pending")
    a.readings(pid, 156, 94)
    a.pending_proposal(pid)
    pid = add("pending_now_hold")
    a.readings(pid, 133, 82)
    a.pending_proposal(pid)
    a.readings(add("top_of_ladder", step=2), 160, 96)
    a.readings(add("cuffless_only"), 160, 96, device_class=DeviceClass.CUFFLESS_WEARABLE)
    pid = add("poor_adherence")
    a.readings(pid, 156, 94)
    a.doses(pid, taken_every=2)
    a.readings(add("recent_change", changed_days_ago=3), 156, 94)
    if kill_switch:
        service.set_kill_switch(a.s, enabled=True, reason="test", user_id=None)
    a.s.commit()
    return Cohort(ids)


def _dump(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    with session_factory(engine)() as s:
        tables = {
            model.__tablename__: [
                dict(row) for row in s.execute(select(model.__table__)).mappings()
            ]  # type: ignore[attr-defined]
            for model in LOOP_TABLES
        }
        s.rollback()
    return tables


def _normalised(
    tables: dict[str, list[dict[str, Any]]], before: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """Rows with the random ids of rows the loop created replaced by stable names (one new
    proposal per patient, one unresolved alert per key), without the hash chain (it covers
    those ids), the wall-clock time of new notices (`created_at`, by design not the
    evaluation's `now`) and the model's measured scoring time (`model_ms`); each table
    sorted."""
    known = {row["id"] for name in ("proposals", "alerts") for row in before[name]}
    old_notices = {row["id"] for row in before["patient_notices"]}
    names: dict[str, str] = {}
    for row in tables["proposals"]:
        if row["id"] not in known:
            names[row["id"]] = f"new proposal of {row['patient_id']}"
    for row in tables["alerts"]:
        if row["id"] not in known:
            names[row["id"]] = f"new alert {row['key']}"
    out: dict[str, list[dict[str, Any]]] = {}
    for table, rows in tables.items():
        fixed = []
        for row in rows:
            row = dict(row)
            for column in ("id", "proposal_id"):
                if column in row and row[column] in names:
                    row[column] = names[row[column]]
            if table == "patient_notices" and row["id"] not in old_notices:
                del row["created_at"]
            if table == "audit_entries":
                del row["leaf_hash"], row["prev_leaf_hash"]
                details = json.loads(row["details"])
                details["proposal_id"] = names.get(details["proposal_id"], details["proposal_id"])
                row["details"] = details
            if table == "evaluations":
                row["model_ms"] = row["model_ms"] is not None  # a time: only whether measured
            fixed.append(row)
        out[table] = sorted(fixed, key=repr)
    return out


@pytest.fixture
def clone(
    db: Session, db_url: str, tmp_path: Any, engine: Engine
) -> Iterator[Callable[[], Engine]]:
    """Engines on copies of this test's database as committed so far."""
    made: list[tuple[Engine, str]] = []
    url = make_url(db_url)

    def copy() -> Engine:
        db.rollback()
        if url.get_backend_name() == "sqlite":
            target = tmp_path / f"copy{len(made)}.db"
            src, dst = sqlite3.connect(str(url.database)), sqlite3.connect(target)
            with dst:
                src.backup(dst)
            src.close()
            dst.close()
            copied = f"sqlite:///{target}"
        else:
            engine.dispose()  # CREATE DATABASE ... TEMPLATE needs the source unused
            copied = url.set(database=f"{url.database}_copy{len(made)}").render_as_string(
                hide_password=False
            )
            admin = make_engine(url.set(database="postgres").render_as_string(False), pool=False)
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(
                    text(f'CREATE DATABASE "{make_url(copied).database}" TEMPLATE "{url.database}"')
                )
            admin.dispose()
        made.append((make_engine(copied), copied))
        return made[-1][0]

    yield copy
    for eng, copied in made:
        eng.dispose()
        if not copied.startswith("sqlite"):
            admin = make_engine(url.set(database="postgres").render_as_string(False), pool=False)
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(copied).database}"'))
            admin.dispose()


def _one_by_one(engine: Engine, ids: list[str], now: datetime, predictor: Predictor | None) -> None:
    factory = session_factory(engine)
    for pid in ids:
        with factory() as s:
            evaluate(s, patient_id=pid, trigger="daily", now=now, predictor=predictor)
            s.commit()


def _batched(
    engine: Engine, ids: list[str], now: datetime, predictor: Predictor | None, chunk: int
) -> None:
    factory = session_factory(engine)
    for start in range(0, len(ids), chunk):
        with factory() as s:
            results = evaluate_many(
                s,
                patient_ids=ids[start : start + chunk],
                trigger="daily",
                now=now,
                predictor=predictor,
            )
            assert [r.evaluation.patient_id for r in results] == ids[start : start + chunk]
            s.commit()


@pytest.mark.parametrize(
    ("kill_switch", "with_model", "chunk"),
    [(False, True, 100), (True, True, 4), (False, False, 100)],
)
def test_evaluate_many_when_cohort_mixed_matches_one_by_one(
    world: World,
    engine: Engine,
    frozen_clock: FrozenClock,
    clone: Callable[[], Engine],
    kill_switch: bool,
    with_model: bool,
    chunk: int,
) -> None:
    now = frozen_clock.now
    cohort = _arrange(world, now, kill_switch=kill_switch)
    predictor = _served_model() if with_model else None
    before = _dump(engine)
    single, batched = engine, clone()
    _one_by_one(single, cohort.order(), now, predictor)
    _batched(batched, cohort.order(), now, predictor, chunk)
    expected, got = _normalised(_dump(single), before), _normalised(_dump(batched), before)
    for table in expected:
        assert got[table] == expected[table], table
    # The cohort covers what it claims to, so the comparison is not vacuous.
    evaluations = {row["patient_id"]: row for row in expected["evaluations"]}
    outcome = {name: evaluations[pid]["outcome"] for name, pid in cohort.ids.items()}
    assert outcome["no_regimen"] == Outcome.NO_REGIMEN
    assert outcome["insufficient"] == outcome["cuffless_only"] == Outcome.INSUFFICIENT_DATA
    notices = {(n["patient_id"], n["kind"]) for n in expected["patient_notices"]}
    assert (cohort.ids["crisis_pending"], "remeasure_now") in notices
    assert (cohort.ids["insufficient"], "measure") in notices
    raised = {a["key"] for a in expected["alerts"] if a["id"].startswith("new alert")}
    assert f"{cohort.ids['crisis_confirmed']}:hypertensive_crisis" in raised
    assert f"{cohort.ids['low_bp']}:persistent_low_bp" in raised
    assert f"{cohort.ids['no_regimen']}:data_gap" in raised
    resolved = {a["key"] for a in expected["alerts"] if a["status"] == "resolved"}
    assert f"{cohort.ids['gap_closed']}:data_gap" in resolved
    assert f"{cohort.ids['open_alert']}:persistent_low_bp" in resolved
    statuses = {(p["patient_id"], p["status"]) for p in expected["proposals"]}
    entries = [e for e in expected["audit_entries"] if e["action"] == "loop.evaluate"]
    assert sorted(e["patient_id"] for e in entries) == sorted(cohort.order())
    if not with_model:
        assert outcome["high"] == Outcome.MODEL_UNAVAILABLE
        return
    assert outcome["steady"] == outcome["pending_now_hold"] == Outcome.HOLD
    assert (cohort.ids["pending"], "superseded") in statuses
    assert (cohort.ids["pending_now_hold"], "superseded") in statuses
    reasons = {name: set(evaluations[pid]["reasons"]) for name, pid in cohort.ids.items()}
    assert {"outside_ladder", "dose_outside_envelope"} <= reasons["top_of_ladder"]
    assert "open_alert" in reasons["open_alert"]
    assert "open_alert" in reasons["crisis_pending"]
    assert "poor_adherence" in reasons["poor_adherence"]
    assert "recent_change" in reasons["recent_change"]
    assert outcome["low_bp"] == Outcome.PROPOSAL
    if kill_switch:
        assert all("kill_switch" in r for n, r in reasons.items() if outcome[n] == "proposal")
    else:
        assert (cohort.ids["high"], "delivered") in statuses
        assert (cohort.ids["high"], "recommendation") in notices


def _counts(engine: Engine, pid: str) -> tuple[int, int, int, int]:
    with session_factory(engine)() as s:
        counts = (
            len(s.scalars(select(Evaluation.id).where(Evaluation.patient_id == pid)).all()),
            len(s.scalars(select(Alert.id).where(Alert.patient_id == pid)).all()),
            len(s.scalars(select(PatientNotice.id).where(PatientNotice.patient_id == pid)).all()),
            len(
                s.scalars(
                    select(AuditEntry.seq).where(
                        AuditEntry.patient_id == pid, AuditEntry.action == "loop.evaluate"
                    )
                ).all()
            ),
        )
        s.rollback()
    return counts


def test_evaluate_many_when_failing_mid_chunk_leaves_nothing_written(
    world: World, engine: Engine, frozen_clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = frozen_clock.now
    cohort = _arrange(world, now, kill_switch=False)
    before = _dump(engine)
    model = _served_model()
    factory = session_factory(engine)
    s = factory()

    def fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("proposal store down")

    # After routing has decided and older proposals were superseded. (A model that fails
    # to score or explain no longer fails the chunk: see tests/mlops/test_rollout.py.)
    monkeypatch.setattr(flows, "_propose", fails)
    with pytest.raises(RuntimeError, match="proposal store down"):
        evaluate_many(s, patient_ids=cohort.order(), trigger="daily", now=now, predictor=model)
    s.rollback()  # what the daily run does with a failed chunk
    s.close()
    assert _dump(engine) == before  # resolved alerts, superseded proposals: all undone


def test_daily_run_when_one_patient_fails_keeps_the_others_and_writes_nothing_for_it(
    world: World, engine: Engine, frozen_clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = frozen_clock.now
    cohort = _arrange(world, now, kill_switch=False)
    bad = cohort.ids["low_bp"]
    model = _served_model()
    features = flows._features

    def fails_for_one(case: Any, *args: Any) -> Any:
        if case.patient.id == bad:
            raise RuntimeError("cannot read this patient's features")
        return features(case, *args)

    monkeypatch.setattr(flows, "_features", fails_for_one)
    report = evaluate_all(session_factory(engine), now=now, predictor=lambda s: model, chunk=5)
    on_regimen = sorted(pid for name, pid in cohort.ids.items() if name != "no_regimen")
    assert report.failed == [bad]
    assert sorted(report.evaluated) == sorted(set(on_regimen) - {bad})
    assert _counts(engine, bad) == (0, 0, 0, 0)  # not even its low-BP alert
    for pid in report.evaluated:
        evaluations, _, _, entries = _counts(engine, pid)
        assert (evaluations, entries) == (1, 1)


def test_daily_run_when_chunk_fails_at_commit_rolls_it_back_then_evaluates_each_once(
    world: World, engine: Engine, frozen_clock: FrozenClock
) -> None:
    now = frozen_clock.now
    cohort = _arrange(world, now, kill_switch=False)
    real = session_factory(engine)
    failed: list[int] = []

    def fail_first_commit(session: Session) -> None:
        if not failed:
            failed.append(1)
            raise RuntimeError("disk full")

    def factory() -> Session:
        session = real()
        event.listen(session, "before_commit", fail_first_commit)
        return session

    report = evaluate_all(
        factory,  # type: ignore[arg-type]
        now=now,
        predictor=lambda s: _served_model(),
        chunk=100,
    )
    assert failed == [1]
    assert report.failed == []
    on_regimen = [pid for name, pid in cohort.ids.items() if name != "no_regimen"]
    assert sorted(report.evaluated) == sorted(on_regimen)
    for pid in on_regimen:
        evaluations, _, _, entries = _counts(engine, pid)
        assert (evaluations, entries) == (1, 1)
    with real() as s:
        seqs = list(s.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq)))
        assert seqs == list(range(1, len(seqs) + 1))  # gap-free: the failed chunk left none


def test_evaluate_many_when_patient_repeated_refuses(world: World, db: Session) -> None:
    pid = world.patients["pa1"].id
    with pytest.raises(ValueError, match="once"):
        evaluate_many(
            db, patient_ids=[pid, pid], trigger="daily", now=clock.utcnow(), predictor=None
        )
    db.rollback()


def test_evaluate_many_when_patient_unknown_refuses(world: World, db: Session) -> None:
    with pytest.raises(LookupError):
        evaluate_many(
            db,
            patient_ids=[world.patients["pa1"].id, "no-such-patient"],
            trigger="daily",
            now=clock.utcnow(),
            predictor=None,
        )
    db.rollback()
