"""The scheduled jobs: for each a name, a schedule, a lease and a body. `validation/scheduler.py`
fires them; every firing runs under a database lease, so it runs once across all scheduler
and server processes (docs/scheduler.md).

A body takes a `JobContext` and returns its details (counts and codes only: they go into the
run's record and its audit entry). What it leaves uncommitted on `ctx.session` commits in one
transaction with the run's record, so a run that dies before its end leaves no half-done
effect for the next holder to repeat; bodies that work in many transactions (the daily
evaluation) open their own sessions from `ctx.factory` and must be safe to run again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from app.core.config import Settings
from app.db import session_scope
from audit import keys as audit_keys
from audit import service as audit
from audit.models import Outcome

log = logging.getLogger("clinaiops.scheduler")

# Every grid of firings and periods starts here, so all processes share the same instants.
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
MANUAL = "manual:"  # the period prefix of a run started by hand (CLI or API)
ACTOR = "system:scheduler"


@dataclass(frozen=True)
class Schedule:
    """When a job fires and which period a firing runs for.

    It fires every `every` on a UTC grid; all firings within one `period` (same grid) share
    one run: the first claims it, the later ones find it done, held or failed (and retry a
    failed or lapsed one). A daily job (`period` one day) is not due before `from_hour` UTC.
    """

    every: timedelta
    period: timedelta
    from_hour: int = 0

    def __post_init__(self) -> None:
        if self.every <= timedelta(0) or self.period < self.every:
            raise ValueError("a schedule fires at least once per period")
        if not 0 <= self.from_hour < 24:
            raise ValueError("from_hour is a UTC hour")

    @classmethod
    def interval(cls, seconds: float) -> Schedule:
        """Fire every `seconds`; each firing is its own period."""
        step = timedelta(seconds=seconds)
        return cls(every=step, period=step)

    @classmethod
    def daily(cls, hour: int, *, recheck_seconds: float) -> Schedule:
        """Once per UTC day from `hour`, looked at again every `recheck_seconds` until
        midnight (catch-up after a late start, retries, take-over of a lapsed lease)."""
        return cls(every=timedelta(seconds=recheck_seconds), period=DAY, from_hour=hour)

    def period_start(self, now: datetime) -> datetime:
        """The start of the period `now` falls in."""
        return EPOCH + ((now - EPOCH) // self.period) * self.period

    def period_of(self, now: datetime) -> str:
        """The period a firing at `now` runs for: an ISO date for daily periods, else the
        period's start to the second."""
        start = self.period_start(now)
        if self.period % DAY == timedelta(0):
            return start.date().isoformat()
        return start.strftime("%Y-%m-%dT%H:%M:%SZ")

    def due(self, now: datetime) -> bool:
        """Whether a firing at `now` should run (a daily job waits for its hour)."""
        return now - self.period_start(now) >= timedelta(hours=self.from_hour)

    def describe(self) -> str:
        """In words, for listings."""
        if self.period == DAY:
            return (
                f"daily from {self.from_hour:02d}:00 UTC "
                f"(looked at every {_span(self.every)} until midnight)"
            )
        if self.period == self.every:
            return f"every {_span(self.every)}"
        return f"every {_span(self.every)}, once per {_span(self.period)}"


@dataclass(frozen=True)
class MonthlySchedule(Schedule):
    """Once per calendar month (UTC) from `day` at `from_hour`, looked at every `every` until
    the month ends (catch-up after a late start, retries, take-over of a lapsed lease)."""

    day: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.day <= 28:
            raise ValueError("a monthly job's day is 1-28, so every month has it")

    @classmethod
    def monthly(cls, day: int, hour: int, *, recheck_seconds: float) -> MonthlySchedule:
        """From `day` at `hour` UTC, once per month."""
        return cls(
            every=timedelta(seconds=recheck_seconds),
            period=timedelta(days=28),  # the shortest month; periods are calendar months
            from_hour=hour,
            day=day,
        )

    def period_start(self, now: datetime) -> datetime:
        """The first instant of the month `now` falls in."""
        utc = now.astimezone(UTC)
        return datetime(utc.year, utc.month, 1, tzinfo=UTC)

    def period_of(self, now: datetime) -> str:
        """The month a firing at `now` runs for: `YYYY-MM`."""
        return self.period_start(now).strftime("%Y-%m")

    def due(self, now: datetime) -> bool:
        """Whether the month has reached the job's day and hour."""
        utc = now.astimezone(UTC)
        return (utc.day, utc.hour) >= (self.day, self.from_hour)

    def describe(self) -> str:
        """In words, for listings."""
        return (
            f"monthly from day {self.day} at {self.from_hour:02d}:00 UTC "
            f"(looked at every {_span(self.every)} until the month ends)"
        )


def _span(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{step.total_seconds():g} s"


def manual_period(now: datetime) -> str:
    """The period of a run started by hand at `now` (never one the schedule fires)."""
    return MANUAL + now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class JobContext:
    """What a job's body gets: sessions, its instant and period, the settings."""

    factory: sessionmaker[Session]
    # Work left uncommitted here commits with the run's record (or rolls back with a failure).
    session: Session
    now: datetime
    period: str
    settings: Settings


class JobFailed(Exception):
    """A body's own verdict that its run failed (e.g. the audit log does not verify), with a
    machine code and details for the run's record."""

    def __init__(self, code: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.details = dict(details or {})


JobBody = Callable[[JobContext], dict[str, Any]]


@dataclass(frozen=True)
class Job:
    """A scheduled job; `schedule` None: not scheduled (it still runs by hand)."""

    name: str
    summary: str
    schedule: Schedule | None
    lease: timedelta
    run: JobBody


# ------------------------------------------------------------------------------------- bodies

DAILY_CHUNK = 25  # patients per transaction in the daily run (about 60 ms each on SQLite)


def daily_evaluation(ctx: JobContext) -> dict[str, Any]:
    """Evaluate every patient on an active regimen (loops.dispatch.evaluate_all)."""
    from loops.dispatch import evaluate_all
    from mlops import serving

    # Small chunks: on SQLite each chunk's transaction holds the single writer slot, and
    # devices keep sending while the daily run goes on.
    report = evaluate_all(ctx.factory, now=ctx.now, predictor=serving.production, chunk=DAILY_CHUNK)
    details = {"evaluated": len(report.evaluated), "failed": len(report.failed)}
    if report.failed and not report.evaluated:
        raise JobFailed("every_evaluation_failed", details)
    return details


def visit_cadence(ctx: JobContext) -> dict[str, Any]:
    """Recompute every patient's due visit, and version every care plan that changed."""
    from loops.care import service as care
    from loops.worker import recompute_visits

    totals: dict[str, Any] = dict(recompute_visits(ctx.factory, now=ctx.now))
    # The care plan shows the envelope, doses and goals in force: version the plans that
    # changed since yesterday even if nobody opened them.
    totals["care_plan_versions"] = len(care.snapshot_all(session=ctx.session, now=ctx.now))
    return totals


def drift_report(ctx: JobContext) -> dict[str, Any]:
    """Drift report of the last 7 days against the training reference (validation.service)."""
    from validation import service

    report = service.run_drift_job(session=ctx.session, now=ctx.now, settings=ctx.settings)
    return {"report_id": report.id, **service.drift_audit_details(report)}


def _signing_key(settings: Settings) -> Any:
    assert settings.signing_key_path is not None
    try:
        return audit_keys.load_signing_key(settings.signing_key_path)
    except audit_keys.SigningKeyMissing as exc:
        raise JobFailed("signing_key_missing") from exc


def audit_checkpoint(ctx: JobContext) -> dict[str, Any]:
    """Sign a tree head over the audit log as it stands."""
    sth = audit.checkpoint(ctx.session, key=_signing_key(ctx.settings))
    details = {"tree_size": sth.tree_size, "root_hash": sth.root_hash}
    audit.record(
        ctx.session,
        actor=ACTOR,
        actor_role="system",
        action="audit.checkpoint",
        resource_type="audit",
        details=details,
    )
    return details


def audit_verify(ctx: JobContext) -> dict[str, Any]:
    """Recompute every leaf, link, root and signature of the audit log; a failure is a failed
    run, an error in the log and an `audit.verify` entry saying where."""
    key = _signing_key(ctx.settings)
    # A read-only snapshot: on SQLite a long verification must not hold the writer slot.
    with session_scope(ctx.factory.kw["bind"], readonly=True) as reader:
        result = audit.verify_log(reader, public_key=key.public_key())
    details: dict[str, Any] = {
        "ok": result.ok,
        "entries": result.entries,
        "tree_heads": result.tree_heads,
    }
    if result.ok:
        audit.record(
            ctx.session,
            actor=ACTOR,
            actor_role="system",
            action="audit.verify",
            resource_type="audit",
            details=details,
        )
        return details
    details["first_bad_seq"] = result.first_bad_seq
    details["reason"] = (result.reason or "")[:200]  # generated by the verifier: no record content
    log.error("audit verification FAILED at seq %s: %s", result.first_bad_seq, details["reason"])
    # Its own transaction: the failed run rolls back the body's session.
    with ctx.factory() as session:
        audit.record(
            session,
            actor=ACTOR,
            actor_role="system",
            action="audit.verify",
            resource_type="audit",
            outcome=Outcome.FAILURE,
            details=details,
        )
        session.commit()
    raise JobFailed("audit_verification_failed", details)


def alert_escalation(ctx: JobContext) -> dict[str, Any]:
    """Escalate every open alert left unacknowledged past its severity's limit."""
    from loops.worker import escalate_overdue

    return {"escalated": len(escalate_overdue(ctx.session, now=ctx.now))}


def retraining(ctx: JobContext) -> dict[str, Any]:
    """Retrain with DP when mlops.retrain.retrain_due says so (an open drift alert with new
    decisions, or enough new decisions); the candidate then waits for gates and sign-offs.
    A refusal (data checks, privacy budget, nothing new) is the run's answer, not a failure:
    it is audited and kept, and retrying the same day would be refused the same way."""
    from mlops import retrain

    why = retrain.retrain_due(session=ctx.session, now=ctx.now, settings=ctx.settings)
    if why is None:
        return {"due": False}
    retrain.quiet_secure_rng_warning()
    try:
        result = retrain.retrain(
            session=ctx.session,
            settings=ctx.settings,
            now=ctx.now,
            actor=ACTOR,
            actor_role="system",
            reason=why,
        )
    except retrain.RetrainRefused as exc:
        log.warning("retraining refused: %s", exc.code)
        return {"due": True, "refused": exc.code}
    version = result.version
    return {
        "due": True,
        "candidate": f"{version.name}:v{version.version}",
        "parent_version": result.parent_version,
        "snapshot": result.snapshot.id,
        "epsilon": result.epsilon,
        "charged_epsilon": result.charged_epsilon,
        "spent_epsilon": result.spent_after,
        "budget_epsilon": result.budget,
    }


def model_validation(ctx: JobContext) -> dict[str, Any]:
    """Run the validation gates (validation.gates.run_gates) on every candidate that has no
    gate run yet, each in its own transaction; a passing one becomes validated and waits for
    its two sign-offs. A candidate that failed keeps its results (run again by hand)."""
    from mlops import lifecycle
    from mlops.models import ModelStatus, ModelVersion
    from validation import gates
    from validation.models import GateResult

    with ctx.factory() as session:
        waiting = session.execute(
            select(col(ModelVersion.name), col(ModelVersion.version))
            .where(
                col(ModelVersion.status) == ModelStatus.CANDIDATE,
                ~exists().where(
                    col(GateResult.model_name) == col(ModelVersion.name),
                    col(GateResult.version) == col(ModelVersion.version),
                ),
            )
            .order_by(col(ModelVersion.id))
        ).all()
        session.rollback()
    passed: list[str] = []
    failed: dict[str, list[str]] = {}
    for name, version in waiting:
        with ctx.factory() as session:
            try:
                run = gates.run_gates(
                    session=session,
                    name=name,
                    version=version,
                    actor=ACTOR,
                    now=ctx.now,
                    data_dir=ctx.settings.data_dir,
                    settings=ctx.settings,
                )
            except lifecycle.TransitionRefused:
                continue  # no longer a candidate (validated by hand meanwhile)
            session.commit()
        label = lifecycle.label(name, version)
        if run.passed:
            passed.append(label)
        else:
            failed[label] = run.failed
    return {"candidates": len(waiting), "validated": passed, "failed": failed}


def rollout_analysis(ctx: JobContext) -> dict[str, Any]:
    """One evaluation cycle of every running rollout (mlops.rollout.tick): advance, complete,
    roll back on a breach, or hold."""
    from mlops import rollout
    from mlops.canary import Thresholds

    steps = rollout.tick(
        session=ctx.session, now=ctx.now, thresholds=Thresholds.from_settings(ctx.settings)
    )
    decisions: dict[str, int] = {}
    for step in steps:
        decisions[step.decision] = decisions.get(step.decision, 0) + 1
    return {"rollouts": len(steps), "decisions": decisions}


def compliance_pack(ctx: JobContext) -> dict[str, Any]:
    """The previous calendar month's compliance pack (reports.pack) in
    `<data_dir>/compliance/<YYYY-MM>/`, its manifest signed, audited as `report.pack`; a
    month whose pack is already there and audited is left alone (one without an audit entry,
    from a run whose commit failed, is set aside and written again)."""
    from reports import pack
    from reports.periods import previous_month

    period = previous_month(ctx.now)
    month = pack.month_label(period)
    base = pack.default_base(ctx.settings.data_dir)
    if (base / month).exists():
        if pack.audited(ctx.session, base / month):
            return {"month": month, "exists": True}
        # Written by a run whose commit failed: never released as evidence; write it again.
        aside = pack.set_aside(base / month, now=ctx.now)
        log.warning("compliance pack %s had no audit entry; moved to %s", month, aside.name)
    key = _signing_key(ctx.settings)
    # Reports read a snapshot: on SQLite rendering every PDF must not hold the writer slot.
    with session_scope(ctx.factory.kw["bind"], readonly=True) as reader:
        built = pack.write_pack(
            ctx.session,
            reader=reader,
            period=period,
            base=base,
            signing_key=key,
            generated_by=ACTOR,
            now=ctx.now,
            settings=ctx.settings,
        )
    details = built.audit_details(month)
    audit.record(
        ctx.session,
        actor=ACTOR,
        actor_role="system",
        action="report.pack",
        resource_type="report",
        resource_id=month,
        details=details,
    )
    return details


# ----------------------------------------------------------------------------------- registry


def registry(settings: Settings) -> dict[str, Job]:
    """Every job, by name, with its schedule from the settings (None: off)."""
    lease = timedelta(seconds=settings.job_lease_seconds)
    recheck = settings.daily_job_recheck_seconds

    def daily(hour: int | None) -> Schedule | None:
        return None if hour is None else Schedule.daily(hour, recheck_seconds=recheck)

    def every(seconds: int | None) -> Schedule | None:
        return None if seconds is None else Schedule.interval(seconds)

    def monthly(day: int | None, hour: int | None) -> Schedule | None:
        if day is None or hour is None:
            return None
        return MonthlySchedule.monthly(day, hour, recheck_seconds=recheck)

    jobs = [
        Job(
            "daily_evaluation",
            "Evaluate every patient on an active regimen",
            daily(settings.daily_evaluation_hour_utc),
            lease,
            daily_evaluation,
        ),
        Job(
            "visit_cadence",
            "Recompute every patient's next visit; version changed care plans",
            daily(settings.visit_cadence_hour_utc),
            lease,
            visit_cadence,
        ),
        Job(
            "drift_report",
            "Drift report of the last 7 days against the training reference",
            daily(settings.drift_report_hour_utc),
            lease,
            drift_report,
        ),
        Job(
            "audit_checkpoint",
            "Sign a tree head over the audit log",
            every(settings.audit_checkpoint_seconds),
            lease,
            audit_checkpoint,
        ),
        Job(
            "audit_verify",
            "Verify the whole audit log: leaves, links, roots, signatures",
            daily(settings.audit_verify_hour_utc),
            lease,
            audit_verify,
        ),
        Job(
            "retraining",
            "Retrain with DP when drift or enough new decisions call for it",
            daily(settings.retraining_hour_utc),
            lease,
            retraining,
        ),
        Job(
            "model_validation",
            "Run the validation gates on candidates that have none yet",
            every(settings.model_validation_seconds),
            lease,
            model_validation,
        ),
        Job(
            "rollout_analysis",
            "Analyse each running rollout's step: advance, complete or roll back",
            every(settings.rollout_analysis_seconds),
            lease,
            rollout_analysis,
        ),
        Job(
            "alert_escalation",
            "Escalate alerts left unacknowledged past their severity's limit",
            every(settings.alert_escalation_seconds),
            lease,
            alert_escalation,
        ),
        Job(
            "compliance_pack",
            "Write and sign the previous month's compliance pack",
            monthly(settings.compliance_pack_day, settings.compliance_pack_hour_utc),
            lease,
            compliance_pack,
        ),
    ]
    return {job.name: job for job in jobs}
