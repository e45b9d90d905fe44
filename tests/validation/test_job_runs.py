"""Job leases: one holder per job and period; lapsed and failed runs are taken over."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from app.db import session_factory
from loops.service import TransitionError
from validation import service
from validation.models import JobStatus

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
LEASE = timedelta(hours=1)


def _claim(engine: Engine, holder: str, now: datetime = NOW) -> int | None:
    with session_factory(engine)() as s:
        run = service.claim(
            s, job="daily", period="2026-11-23", holder=holder, now=now, lease=LEASE
        )
        return None if run is None else run.attempts


def _finish(engine: Engine, status: JobStatus) -> None:
    with session_factory(engine)() as s:
        run = service.latest_runs(s, job="daily")[0]
        service.finish(s, run=run, status=status, now=NOW, details={"evaluated": 3})
        s.commit()


def test_claim_when_free_takes_the_run_and_audits_it(
    engine: Engine, count_audit: Callable[..., int]
) -> None:
    assert _claim(engine, "a") == 1
    assert count_audit(action="job.start", actor="system:scheduler") == 1


def test_claim_when_held_by_another_replica_returns_none(engine: Engine) -> None:
    assert _claim(engine, "a") == 1
    assert _claim(engine, "b") is None


def test_claim_when_lease_lapsed_takes_over(engine: Engine) -> None:
    assert _claim(engine, "a") == 1
    assert _claim(engine, "b", NOW + LEASE + timedelta(seconds=1)) == 2
    with session_factory(engine)() as s:
        assert service.latest_runs(s, job="daily")[0].holder == "b"


def test_claim_when_succeeded_never_runs_again(engine: Engine) -> None:
    _claim(engine, "a")
    _finish(engine, JobStatus.SUCCEEDED)
    assert _claim(engine, "b", NOW + timedelta(days=0, hours=5)) is None


def test_claim_when_failed_retries_up_to_the_limit(engine: Engine) -> None:
    for attempt in range(1, service.MAX_ATTEMPTS + 1):
        assert _claim(engine, "a") == attempt
        _finish(engine, JobStatus.FAILED)
    assert _claim(engine, "a") is None


def test_finish_when_already_succeeded_is_refused(
    engine: Engine, count_audit: Callable[..., int]
) -> None:
    _claim(engine, "a")
    _finish(engine, JobStatus.SUCCEEDED)
    with pytest.raises(TransitionError):
        _finish(engine, JobStatus.FAILED)
    assert count_audit(action="job.finish") == 1
