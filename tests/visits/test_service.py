"""Visits in the database: one due visit per patient, overrides kept beside the rule,
completion computes the next, urgent alerts pull a visit forward, the daily job runs once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from app.db import session_factory
from loops import worker
from loops.models import Alert, AlertStatus
from loops.visits import service
from loops.visits.models import Visit, VisitStatus
from tests.conftest import World
from tests.visits.conftest import NOW
from validation import jobs, scheduler
from validation.jobs import Job
from validation.models import JobRun

pytestmark = pytest.mark.usefixtures("clock_at")
D = timedelta(days=1)


def _due(world: World, patient: str) -> list[Visit]:
    world.session.expire_all()
    return list(
        world.session.scalars(
            select(Visit).where(
                col(Visit.patient_id) == world.patients[patient].id,
                col(Visit.status) == VisitStatus.DUE,
            )
        )
    )


def test_recompute_when_run_twice_keeps_one_due_visit_with_the_same_date(world: World) -> None:
    pid = world.patients["pa1"].id
    first = service.recompute(world.session, patient_id=pid, now=NOW)
    world.session.commit()
    again = service.recompute(world.session, patient_id=pid, now=NOW + D)
    world.session.commit()
    assert first.change == "created"
    assert again.change == "unchanged"
    [visit] = _due(world, "pa1")
    # No data: 4 weeks from enrolment (10 days before NOW), not from each computation.
    assert visit.due_by == NOW - 10 * D + 28 * D
    assert visit.reasons == ["insufficient_data"]


def test_recompute_when_patient_controlled_and_stable_sets_six_months(
    world: World,
    readings: Callable[..., None],
    regimen: Callable[..., object],
    doses: Callable[..., None],
) -> None:
    regimen("pa1", changed=timedelta(days=200))
    readings("pa1", 124.0, 76.0, days=100)
    doses("pa1", 27, 1)
    done = service.recompute(world.session, patient_id=world.patients["pa1"].id, now=NOW)
    world.session.commit()
    assert done.visit.kind == "visit"
    assert done.visit.reasons == ["controlled_stable"]
    assert done.visit.due_by == NOW - 10 * D + 182 * D


def test_recompute_when_crisis_alert_opens_pulls_visit_within_48_hours(
    world: World, readings: Callable[..., None], alert: Callable[..., Alert]
) -> None:
    pid = world.patients["pa1"].id
    readings("pa1", 128.0, 80.0, days=7)
    service.recompute(world.session, patient_id=pid, now=NOW)
    world.session.commit()
    raised = alert("pa1", age=timedelta(hours=3))
    done = service.recompute(world.session, patient_id=pid, now=NOW)
    world.session.commit()
    assert done.change == "updated"
    assert done.visit.due_by == raised.raised_at + timedelta(hours=48)
    assert done.visit.reasons[0] == "crisis_alert"
    assert len(_due(world, "pa1")) == 1


def test_due_visit_when_second_inserted_is_refused_by_the_index(world: World) -> None:
    pid = world.patients["pa1"].id
    service.recompute(world.session, patient_id=pid, now=NOW)
    world.session.commit()
    world.session.add(
        Visit(
            patient_id=pid,
            kind="visit",
            due_by=NOW,
            rule_kind="visit",
            rule_due_by=NOW,
            computed_at=NOW,
        )
    )
    with pytest.raises(IntegrityError):
        world.session.commit()
    world.session.rollback()


def test_override_when_rule_recomputes_keeps_override_and_updates_rule_date(
    world: World, alert: Callable[..., Alert]
) -> None:
    pid = world.patients["pa1"].id
    user = world.users["clina"].id or 0
    service.recompute(world.session, patient_id=pid, now=NOW)
    visit = service.override(
        world.session,
        patient_id=pid,
        due_by=NOW + 60 * D,
        kind="call",
        reason="Travelling until February",
        user_id=user,
        now=NOW,
    )
    world.session.commit()
    assert (visit.kind, visit.due_by) == ("call", NOW + 60 * D)
    raised = alert("pa1", "persistent_low_bp")
    done = service.recompute(world.session, patient_id=pid, now=NOW + D)
    world.session.commit()
    # The override stays in force; the rule's own date moves beside it.
    assert (done.visit.kind, done.visit.due_by) == ("call", NOW + 60 * D)
    assert done.visit.rule_due_by == raised.raised_at + timedelta(hours=48)
    assert done.visit.rule_kind == "visit"
    assert done.visit.override_reason == "Travelling until February"


@pytest.mark.parametrize(
    ("due", "reason", "code"),
    [
        pytest.param(NOW + D, "  ", "reason_required", id="blank_reason"),
        pytest.param(NOW - timedelta(minutes=1), "why", "date_in_past", id="past_date"),
    ],
)
def test_override_when_input_invalid_is_refused(
    world: World, due: datetime, reason: str, code: str
) -> None:
    with pytest.raises(service.VisitError) as caught:
        service.override(
            world.session,
            patient_id=world.patients["pa1"].id,
            due_by=due,
            kind="visit",
            reason=reason,
            user_id=world.users["clina"].id or 0,
            now=NOW,
        )
    assert caught.value.code == code


def test_complete_when_due_records_outcome_and_computes_next_from_completion(
    world: World, readings: Callable[..., None]
) -> None:
    pid = world.patients["pa1"].id
    readings("pa1", 145.0, 90.0, days=7)
    service.recompute(world.session, patient_id=pid, now=NOW)
    service.override(
        world.session,
        patient_id=pid,
        due_by=NOW + D,
        kind="visit",
        reason="seen early",
        user_id=world.users["clina"].id or 0,
        now=NOW,
    )
    done, nxt = service.complete(
        world.session, patient_id=pid, user_id=world.users["clina"].id or 0, note="ok", now=NOW
    )
    world.session.commit()
    assert done.status == VisitStatus.COMPLETED
    assert (done.completed_at, done.outcome_note) == (NOW, "ok")
    assert nxt.id != done.id
    assert nxt.override_due_by is None  # an override ends with its visit
    assert nxt.reasons == ["uncontrolled"]
    assert nxt.due_by == NOW + 28 * D  # counted from this completed review
    assert [v.id for v in _due(world, "pa1")] == [nxt.id]
    with pytest.raises(service.VisitError):
        service.cancel(
            world.session, patient_id=world.patients["pa2"].id, user_id=1, note="", now=NOW
        )


def test_recompute_many_when_patients_vary_counts_created_and_unchanged(world: World) -> None:
    ids = [p.id for p in world.patients.values()]
    first = service.counts(service.recompute_many(world.session, patient_ids=ids, now=NOW))
    world.session.commit()
    second = service.recompute_all(world.session, now=NOW)
    world.session.commit()
    assert first == {"patients": 4, "created": 4, "updated": 0, "unchanged": 0}
    assert second == {"patients": 4, "created": 0, "updated": 0, "unchanged": 4}


def test_pull_forward_urgent_when_alert_open_recomputes_once_and_audits(
    world: World,
    engine: Engine,
    alert: Callable[..., Alert],
    count_audit: Callable[..., int],
) -> None:
    factory = session_factory(engine)
    with factory() as s:
        service.recompute_all(s, now=NOW)
        s.commit()
    pb1 = world.patients["pb1"].id
    raised_at = alert("pb1", "persistent_low_bp").raised_at
    alert("pa2", status=AlertStatus.RESOLVED)  # resolved: not urgent
    world.session.rollback()  # end the read that holds SQLite's writer slot
    assert worker.pull_forward_urgent(factory, now=NOW) == [pb1]
    assert worker.pull_forward_urgent(factory, now=NOW + timedelta(minutes=1)) == []
    [visit] = _due(world, "pb1")
    assert visit.due_by == raised_at + timedelta(hours=48)
    world.session.rollback()
    assert count_audit(action="visit.recompute", patient_id=pb1) == 1


def _cadence_job(world: World, hour: int | None) -> Job:
    return jobs.registry(world.settings.model_copy(update={"visit_cadence_hour_utc": hour}))[
        "visit_cadence"
    ]


def test_visit_cadence_job_when_two_replicas_fire_runs_once(
    world: World, engine: Engine, count_audit: Callable[..., int]
) -> None:
    factory = session_factory(engine)
    world.session.rollback()
    job = _cadence_job(world, 5)
    assert job.schedule is not None
    assert not job.schedule.due(NOW.replace(hour=4))
    first = scheduler.run_job(
        factory, job, settings=world.settings, now=NOW, period="2026-12-06", holder="a"
    )
    second = scheduler.fire(factory, job, world.settings, "b")  # the same day: done
    # Every patient's first care plan version is written by the same job.
    assert first.status == "succeeded"
    assert first.details == {
        "patients": 4,
        "created": 4,
        "updated": 0,
        "unchanged": 0,
        "care_plan_versions": 4,
    }
    assert second is not None
    assert (second.status, second.reason) == ("skipped", "done")
    with factory() as s:
        [run] = s.scalars(select(JobRun).where(col(JobRun.job) == "visit_cadence")).all()
        assert (run.status, run.period, run.holder) == ("succeeded", "2026-12-06", "a")
        assert run.details["created"] == 4
    assert count_audit(action="visit.recompute", actor="system:scheduler") == 1
    assert count_audit(action="job.start") == 1
    assert count_audit(action="job.finish") == 1
    assert len(_due(world, "pa1")) == 1


def test_visit_cadence_job_when_hour_off_is_not_scheduled(world: World, engine: Engine) -> None:
    world.session.rollback()
    factory = session_factory(engine)
    assert scheduler.fire(factory, _cadence_job(world, None), world.settings, "a") is None
    assert scheduler.fire(factory, _cadence_job(world, 5), world.settings, "a") is not None
    with factory() as s:
        assert len(s.scalars(select(JobRun)).all()) == 1
    assert len(_due(world, "pb2")) == 1
