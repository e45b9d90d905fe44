"""The in-process worker evaluates new readings on its own, once per burst."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from app.core import clock
from app.core.config import Settings
from app.db import session_factory
from app.main import create_app
from loops.models import Evaluation, MedicationRegimen
from tests.conftest import World
from tests.ingest.conftest import FHIR, at, bp, bundle
from validation import jobs, scheduler
from validation.scheduler import RunResult


def test_worker_when_readings_arrive_evaluates_the_patient(
    engine: Engine,
    settings: Settings,
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
) -> None:
    pid, _ = patient
    readings(130, 80)
    _, key = world.device("pa1")
    app = create_app(
        settings.model_copy(
            update={
                "loop_worker_seconds": 0.1,
                "loop_debounce_seconds": 0.0,
                "scheduler_in_process": False,  # the worker alone
            }
        ),
        engine,
    )
    with TestClient(app) as client:
        r = client.post(
            "/api/v1/device/observations",
            content=json.dumps(bundle("batch", [bp(when=at(2))])),
            headers={"Authorization": f"Bearer {key}", "Content-Type": FHIR},
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 15
        count = 0
        while time.monotonic() < deadline and count == 0:
            time.sleep(0.1)
            with session_factory(engine)() as s:
                count = (
                    s.scalar(
                        select(func.count())
                        .select_from(Evaluation)
                        .where(Evaluation.patient_id == pid)
                    )
                    or 0
                )
    assert count == 1


def _daily(settings: Settings, engine: Engine, now: datetime, holder: str) -> RunResult | None:
    """A firing of the scheduled daily evaluation (from 06:00 UTC) at `now`."""
    job = jobs.registry(settings.model_copy(update={"daily_evaluation_hour_utc": 6}))[
        "daily_evaluation"
    ]
    assert job.schedule is not None
    if not job.schedule.due(now):
        return None
    return scheduler.run_job(
        session_factory(engine),
        job,
        settings=settings,
        now=now,
        period=job.schedule.period_of(now),
        holder=holder,
    )


def test_daily_run_when_due_evaluates_everyone_once_per_day(
    engine: Engine,
    settings: Settings,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    count_audit: Callable[..., int],
) -> None:
    readings(150, 95, days=7, per_day=2)
    now = clock.utcnow().replace(hour=7, minute=0)
    report = _daily(settings, engine, now, "a")
    assert report is not None
    assert report.status == "succeeded"
    assert report.details == {"evaluated": 1, "failed": 0}
    # Another replica (or the same one later that day) finds the day's run done.
    later = _daily(settings, engine, now + timedelta(hours=1), "b")
    assert later is not None
    assert (later.status, later.reason) == ("skipped", "done")
    assert count_audit(action="job.start") == 1
    assert count_audit(action="job.finish") == 1
    with session_factory(engine)() as s:
        evaluations = s.scalar(
            select(func.count()).select_from(Evaluation).where(Evaluation.patient_id == patient[0])
        )
    assert evaluations == 1


def test_daily_run_when_before_its_hour_does_nothing(
    engine: Engine, settings: Settings, patient: tuple[str, MedicationRegimen]
) -> None:
    now = clock.utcnow().replace(hour=5, minute=59)
    assert _daily(settings, engine, now, "a") is None
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Evaluation)) == 0
