"""The job registry and one run of a job: schedules and periods (pure), the lease around a
run (done, held, busy, retried, lapsed, lost), its record and audit entries, and the real
jobs' bodies (audit checkpoint and verification, alert escalation, drift report)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlmodel import col

from app.core import clock
from app.core.config import Settings
from app.db import session_factory
from audit import service as audit
from audit.models import SignedTreeHead
from loops.models import Alert
from tests.conftest import World
from validation import jobs, scheduler, service
from validation.jobs import Job, JobBody, JobContext, JobFailed, Schedule
from validation.models import DriftReport, JobRun

NOW = datetime(2026, 12, 6, 7, 30, 15, tzinfo=UTC)
LEASE = timedelta(minutes=5)


# ------------------------------------------------------------------------ schedules (pure)


def test_interval_schedule_when_firing_late_in_its_step_names_the_step_start() -> None:
    every_minute = Schedule.interval(60)
    assert every_minute.period_of(NOW) == "2026-12-06T07:30:00Z"
    assert every_minute.period_of(NOW + timedelta(seconds=44)) == "2026-12-06T07:30:00Z"
    assert every_minute.period_of(NOW + timedelta(seconds=45)) == "2026-12-06T07:31:00Z"
    assert every_minute.due(NOW)


def test_daily_schedule_when_before_its_hour_is_not_due_and_one_period_per_day() -> None:
    daily = Schedule.daily(6, recheck_seconds=600)
    assert not daily.due(NOW.replace(hour=5, minute=59))
    assert daily.due(NOW.replace(hour=6, minute=0, second=0))
    assert daily.period_of(NOW) == daily.period_of(NOW.replace(hour=23, minute=59)) == "2026-12-06"
    assert daily.every == timedelta(minutes=10)


def test_schedule_when_period_shorter_than_its_step_is_refused() -> None:
    with pytest.raises(ValueError, match="once per period"):
        Schedule(every=timedelta(minutes=2), period=timedelta(minutes=1))
    with pytest.raises(ValueError, match="once per period"):
        Schedule.interval(0)


def test_schedule_describe_when_daily_or_interval_says_when() -> None:
    assert Schedule.interval(3600).describe() == "every 1 h"
    assert Schedule.interval(2).describe() == "every 2 s"
    assert Schedule.daily(3, recheck_seconds=600).describe() == (
        "daily from 03:00 UTC (looked at every 10 min until midnight)"
    )


def test_manual_period_when_made_is_never_a_scheduled_period() -> None:
    period = jobs.manual_period(NOW)
    assert period == "manual:2026-12-06T07:30:15Z"
    assert len(period) <= 32  # job_runs.period
    assert period > Schedule.interval(1).period_of(NOW)  # sorts after every scheduled one


def test_registry_when_a_schedule_setting_is_none_keeps_the_job_unscheduled(
    settings: Settings,
) -> None:
    found = jobs.registry(settings.model_copy(update={"alert_escalation_seconds": None}))
    assert set(found) >= {
        "daily_evaluation",
        "visit_cadence",
        "drift_report",
        "audit_checkpoint",
        "audit_verify",
        "alert_escalation",
        "retraining",
        "model_validation",
        "rollout_analysis",
    }
    assert found["alert_escalation"].schedule is None
    assert found["audit_checkpoint"].schedule == Schedule.interval(3600)
    assert found["daily_evaluation"].lease == timedelta(seconds=settings.job_lease_seconds)


# ------------------------------------------------------------------------- the run and lease


def _job(body: JobBody, lease: timedelta = LEASE) -> Job:
    return Job("probe", "a test job", Schedule.interval(60), lease, body)


def _effect(ctx: JobContext) -> dict[str, Any]:
    """Work on the run's session: an audit entry, committed with the run's record or not."""
    audit.record(
        ctx.session, actor="test", actor_role="system", action="test.effect", resource_type="x"
    )
    return {"done": 1}


def _run(
    engine: Engine,
    settings: Settings,
    job: Job,
    *,
    period: str = "p1",
    holder: str = "a",
    now: datetime = NOW,
) -> scheduler.RunResult:
    return scheduler.run_job(
        session_factory(engine), job, settings=settings, now=now, period=period, holder=holder
    )


def _runs(engine: Engine) -> list[JobRun]:
    with session_factory(engine)() as s:
        return list(s.scalars(select(JobRun).order_by(col(JobRun.id))))


def _claim(engine: Engine, *, period: str, holder: str, now: datetime) -> JobRun:
    with session_factory(engine)() as s:
        run = service.claim(s, job="probe", period=period, holder=holder, now=now, lease=LEASE)
    assert run is not None
    return run


def test_run_job_when_body_succeeds_commits_its_work_with_the_run_record(
    engine: Engine, settings: Settings, count_audit: Callable[..., int]
) -> None:
    result = _run(engine, settings, _job(_effect))
    assert (result.status, result.details) == ("succeeded", {"done": 1})
    [run] = _runs(engine)
    assert (run.job, run.period, run.status, run.holder, run.attempts) == (
        "probe",
        "p1",
        "succeeded",
        "a",
        1,
    )
    assert run.details == {"done": 1}
    assert count_audit(action="test.effect") == 1
    assert count_audit(action="job.start", resource_id="probe/p1") == 1
    assert count_audit(action="job.finish", resource_id="probe/p1") == 1


def test_run_job_when_body_raises_rolls_back_its_work_and_records_the_failure(
    engine: Engine,
    settings: Settings,
    count_audit: Callable[..., int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(ctx: JobContext) -> dict[str, Any]:
        _effect(ctx)
        raise ValueError("patient 123 has no regimen")  # a message that must not be logged

    with caplog.at_level(logging.ERROR, logger="clinaiops.scheduler"):
        result = _run(engine, settings, _job(broken))
    assert (result.status, result.reason) == ("failed", "ValueError")
    [run] = _runs(engine)
    assert (run.status, run.details) == ("failed", {"error": "ValueError"})
    assert count_audit(action="test.effect") == 0
    assert count_audit(action="job.finish") == 1
    assert "job probe p1 failed: ValueError" in caplog.text
    assert "patient 123" not in caplog.text


def test_run_job_when_body_says_failed_records_its_code_and_details(
    engine: Engine, settings: Settings
) -> None:
    def refuses(ctx: JobContext) -> dict[str, Any]:
        raise JobFailed("nothing_to_do", {"checked": 4})

    result = _run(engine, settings, _job(refuses))
    assert (result.status, result.reason) == ("failed", "nothing_to_do")
    assert _runs(engine)[0].details == {"checked": 4, "error": "nothing_to_do"}


def test_run_job_when_it_keeps_failing_retries_up_to_the_limit_then_skips(
    engine: Engine, settings: Settings
) -> None:
    calls: list[int] = []

    def broken(ctx: JobContext) -> dict[str, Any]:
        calls.append(1)
        raise RuntimeError

    for attempt in range(1, service.MAX_ATTEMPTS + 1):
        assert _run(engine, settings, _job(broken)).status == "failed"
        assert _runs(engine)[0].attempts == attempt
    last = _run(engine, settings, _job(broken))
    assert (last.status, last.reason) == ("skipped", "exhausted")
    assert len(calls) == service.MAX_ATTEMPTS


def test_run_job_when_period_done_or_held_skips_without_running(
    engine: Engine, settings: Settings
) -> None:
    calls: list[str] = []

    def body(ctx: JobContext) -> dict[str, Any]:
        calls.append(ctx.period)
        return {}

    assert _run(engine, settings, _job(body)).status == "succeeded"
    done = _run(engine, settings, _job(body), holder="b")
    assert (done.status, done.reason) == ("skipped", "done")
    _claim(engine, period="p2", holder="x", now=NOW)
    held = _run(engine, settings, _job(body), period="p2", holder="b")
    assert (held.status, held.reason, held.holder) == ("skipped", "held", "x")
    assert calls == ["p1"]


def test_run_job_when_another_period_is_running_skips_as_busy(
    engine: Engine, settings: Settings
) -> None:
    _claim(engine, period="2026-12-06T07:29:00Z", holder="x", now=NOW - timedelta(minutes=1))
    busy = _run(engine, settings, _job(_effect), period="2026-12-06T07:30:00Z", holder="b")
    assert (busy.status, busy.reason, busy.holder) == ("skipped", "busy", "x")
    manual = _run(engine, settings, _job(_effect), period=jobs.manual_period(NOW), holder="b")
    assert manual.reason == "busy"  # runs by hand never overlap scheduled ones either
    assert len(_runs(engine)) == 1


def test_run_job_when_a_past_period_lapsed_records_it_failed_and_runs(
    engine: Engine, settings: Settings, count_audit: Callable[..., int]
) -> None:
    _claim(engine, period="2026-12-06T07:00:00Z", holder="dead", now=NOW - 2 * LEASE)
    result = _run(engine, settings, _job(_effect), period="2026-12-06T07:30:00Z", holder="b")
    assert result.status == "succeeded"
    dead, ran = _runs(engine)
    assert (dead.status, dead.details) == ("failed", {"error": "lease_lapsed", "holder": "dead"})
    assert ran.holder == "b"
    assert count_audit(action="job.finish") == 2


def test_run_job_when_holder_died_mid_run_is_taken_over_after_the_lease_lapses(
    engine: Engine, settings: Settings
) -> None:
    _claim(engine, period="p1", holder="dead", now=NOW)
    early = _run(engine, settings, _job(_effect), holder="b", now=NOW + LEASE)
    assert (early.status, early.reason) == ("skipped", "held")
    late = _run(engine, settings, _job(_effect), holder="b", now=NOW + LEASE + timedelta(seconds=1))
    assert late.status == "succeeded"
    [run] = _runs(engine)
    assert (run.status, run.holder, run.attempts) == ("succeeded", "b", 2)


def test_run_job_when_lease_is_lost_mid_run_commits_nothing(
    engine: Engine, settings: Settings, count_audit: Callable[..., int]
) -> None:
    def overtaken(ctx: JobContext) -> dict[str, Any]:
        _effect(ctx)
        # Meanwhile another holder took the run over (this one's lease lapsed).
        with ctx.factory() as s:
            s.execute(update(JobRun).values(holder="thief", attempts=JobRun.attempts + 1))
            s.commit()
        return {"done": 1}

    result = _run(engine, settings, _job(overtaken))
    assert (result.status, result.reason) == ("lost", "lease_lost")
    [run] = _runs(engine)
    assert (run.status, run.holder, run.attempts) == ("running", "thief", 2)
    assert count_audit(action="test.effect") == 0
    assert count_audit(action="job.finish") == 0


def test_run_job_when_body_outlasts_its_lease_renews_it_and_keeps_others_out(
    engine: Engine, settings: Settings
) -> None:
    others: list[scheduler.RunResult] = []
    lease = timedelta(seconds=1)

    def long(ctx: JobContext) -> dict[str, Any]:
        time.sleep(1.8)  # past the first lease: renewed every third of a second meanwhile
        other = Job("probe", "", None, lease, _effect)
        others.append(
            scheduler.run_job(
                ctx.factory,
                other,
                settings=ctx.settings,
                now=clock.utcnow(),
                period=ctx.period,
                holder="b",
            )
        )
        return {}

    result = _run(engine, settings, _job(long, lease), now=clock.utcnow())
    assert result.status == "succeeded"
    assert [(o.status, o.reason) for o in others] == [("skipped", "held")]
    [run] = _runs(engine)
    assert (run.holder, run.attempts) == ("a", 1)


# ----------------------------------------------------------------------------- the real jobs


def _real(settings: Settings, name: str) -> Job:
    return jobs.registry(settings)[name]


def test_audit_checkpoint_job_when_run_signs_a_tree_head_and_audits_it(
    engine: Engine, settings: Settings, count_audit: Callable[..., int]
) -> None:
    result = _run(engine, settings, _real(settings, "audit_checkpoint"), now=clock.utcnow())
    assert result.status == "succeeded"
    with session_factory(engine)() as s:
        [sth] = s.scalars(select(SignedTreeHead)).all()
    assert result.details == {"tree_size": sth.tree_size, "root_hash": sth.root_hash}
    assert count_audit(action="audit.checkpoint", actor="system:scheduler") == 1


def _tamper(engine: Engine, stmt: str) -> None:
    """Change an audit row behind the app's back, as a superuser or file owner could."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only")
            )
            conn.execute(text(stmt))
            conn.execute(text("ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_append_only"))
        else:
            conn.execute(text("DROP TRIGGER audit_entries_no_update"))
            conn.execute(text(stmt))


def test_audit_verify_job_when_log_intact_succeeds_and_audits_it(
    engine: Engine, settings: Settings, count_audit: Callable[..., int]
) -> None:
    _run(engine, settings, _real(settings, "audit_checkpoint"), now=clock.utcnow())
    result = _run(engine, settings, _real(settings, "audit_verify"), period="p2")
    assert result.status == "succeeded"
    assert result.details["ok"] is True
    assert result.details["tree_heads"] == 1
    assert count_audit(action="audit.verify", outcome="success") == 1


def test_audit_verify_job_when_log_tampered_fails_logs_and_audits_where(
    engine: Engine,
    settings: Settings,
    count_audit: Callable[..., int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _run(engine, settings, _real(settings, "audit_checkpoint"), now=clock.utcnow())
    _tamper(engine, "UPDATE audit_entries SET outcome = 'denied' WHERE seq = 2")
    with caplog.at_level(logging.ERROR, logger="clinaiops.scheduler"):
        result = _run(engine, settings, _real(settings, "audit_verify"), period="p2")
    assert (result.status, result.reason) == ("failed", "audit_verification_failed")
    assert result.details["first_bad_seq"] == 2
    assert "audit verification FAILED at seq 2" in caplog.text
    assert count_audit(action="audit.verify", outcome="failure") == 1
    [run] = [r for r in _runs(engine) if r.period == "p2"]
    assert (run.status, run.details["ok"]) == ("failed", False)


def test_alert_escalation_job_when_crisis_unacknowledged_escalates_once_per_interval(
    world: World, engine: Engine, settings: Settings, count_audit: Callable[..., int]
) -> None:
    pid = world.patients["pa1"].id
    world.session.add(
        Alert(
            patient_id=pid,
            type="hypertensive_crisis",
            severity="critical",
            key=f"{pid}:crisis",
            detail="x",
            raised_at=NOW - timedelta(minutes=16),
        )
    )
    world.session.commit()
    job = _real(settings, "alert_escalation")
    first = _run(engine, settings, job, period="m1", now=NOW)
    again = _run(engine, settings, job, period="m2", now=NOW + timedelta(minutes=1))
    assert (first.details, again.details) == ({"escalated": 1}, {"escalated": 0})
    world.session.expire_all()
    assert world.session.scalars(select(Alert)).one().escalation_level == 1
    world.session.rollback()
    assert count_audit(action="alert.escalate", actor="system:loop", patient_id=pid) == 1


@pytest.mark.slow
def test_drift_report_job_when_run_stores_a_report_named_in_its_run(
    engine: Engine, settings: Settings, count_audit: Callable[..., int]
) -> None:
    result = _run(engine, settings, _real(settings, "drift_report"), now=clock.utcnow())
    assert result.status == "succeeded"
    with session_factory(engine)() as s:
        [report] = s.scalars(select(DriftReport)).all()
        assert s.scalar(select(func.count()).select_from(JobRun)) == 1
    assert result.details["report_id"] == report.id
    assert result.details["status"] == report.status  # no production model: no reference
    assert count_audit(action="drift_report.create", actor="system:scheduler") == 1


def test_retraining_job_when_not_due_trains_nothing(engine: Engine, settings: Settings) -> None:
    result = _run(engine, settings, _real(settings, "retraining"), now=clock.utcnow())
    assert (result.status, result.details) == ("succeeded", {"due": False})


def test_retraining_job_when_due_but_refused_keeps_the_refusal_and_succeeds(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    count_audit: Callable[..., int],
) -> None:
    from mlops import retrain

    monkeypatch.setattr(retrain, "retrain_due", lambda **_: "200 new clinician decisions")
    result = _run(engine, settings, _real(settings, "retraining"), now=clock.utcnow())
    assert result.status == "succeeded"  # retrying today would be refused the same way
    assert result.details["due"] is True
    assert result.details["refused"]  # no clinician decisions to learn from
    assert count_audit(action="model.train", actor="system:scheduler", outcome="failure") == 1


@pytest.mark.slow
def test_model_validation_job_when_candidates_wait_runs_their_gates_once(
    world: World, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    from mlops.models import ModelStatus, ModelVersion
    from tests.mlops import gate_models

    models = gate_models.trained().models
    gate_models.register(
        world.session, models["champion"], tmp_path / "m", status=ModelStatus.PRODUCTION
    )
    gate_models.register(world.session, models["good"], tmp_path / "m")
    gate_models.register(world.session, models["flipped"], tmp_path / "m")
    world.session.commit()
    job = _real(settings, "model_validation")
    first = _run(engine, settings, job, period="p1", now=clock.utcnow())
    assert first.status == "succeeded"
    assert first.details["candidates"] == 2
    assert first.details["validated"] == ["titration:v2"]
    assert "holdout_noninferiority" in first.details["failed"]["titration:v3"]
    again = _run(engine, settings, job, period="p2", now=clock.utcnow())
    assert again.details == {"candidates": 0, "validated": [], "failed": {}}
    world.session.expire_all()
    statuses = world.session.scalars(select(ModelVersion.status).order_by(ModelVersion.id))
    assert list(statuses) == ["production", "validated", "candidate"]
    world.session.rollback()


def test_rollout_analysis_job_when_no_rollout_runs_records_an_empty_cycle(
    engine: Engine, settings: Settings
) -> None:
    result = _run(engine, settings, _real(settings, "rollout_analysis"), now=clock.utcnow())
    assert (result.status, result.details) == ("succeeded", {"rollouts": 0, "decisions": {}})
