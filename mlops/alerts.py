"""The model alerts people see in the portal: automatic rollbacks of a rollout (a breach at a
shadow or canary step, the challenger's artifact unusable or its inference failing) and
evaluations that ended `model_unavailable` (no usable model answered: clinicians decided).

Reads only, aggregates only: a rollback is the rollout's own record (its end reason exactly
as stored, the step that breached), a serving failure a count per model version. The
rollback side reads the small `rollouts` table and is cheap enough for the portal's home
page; the serving-failure count scans recent evaluations and is for the models page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from loops.flows import Outcome
from loops.models import Evaluation
from mlops import lifecycle, rollout
from mlops.models import Rollout, RolloutStatus, RolloutStep

# How far back the portal shows alerts.
WINDOW: Final = timedelta(days=14)


@dataclass(frozen=True)
class RollbackAlert:
    """A rollout rolled back automatically: when, which version, where, and why."""

    rollout_id: int
    model_name: str
    version: int  # the challenger, retired by the rollback
    serving_version: int | None  # the champion, serving every patient since
    at: datetime
    stage: str  # shadow or canary
    percent: int
    reason: str  # the rollout's end reason, exactly as stored
    breaches: tuple[str, ...]  # the checks that breached, e.g. error_rate, artifact_unusable

    @property
    def label(self) -> str:
        """The retired version's label, e.g. `titration:v3`."""
        return lifecycle.label(self.model_name, self.version)


@dataclass(frozen=True)
class ServingFailure:
    """Evaluations of one model version that ended `model_unavailable` in the window."""

    model_version: str | None  # its label; None when no model was usable at all
    evaluations: int
    first: datetime
    last: datetime


def breach_names(reasons: list[str]) -> tuple[str, ...]:
    """The check names leading a rollback step's reasons (`error_rate 0.3 vs ...`) (pure)."""
    return tuple(r.split(" ", 1)[0].rstrip(":") for r in reasons if r.strip())


def rollbacks(session: Session, *, since: datetime, name: str | None = None) -> list[RollbackAlert]:
    """Automatic rollbacks that ended a rollout at or after `since`, newest first."""
    stmt = select(Rollout).where(
        col(Rollout.status) == RolloutStatus.ROLLED_BACK,
        col(Rollout.ended_at) >= since,
        col(Rollout.end_reason).startswith(rollout.AUTOMATIC, autoescape=True),
    )
    if name is not None:
        stmt = stmt.where(col(Rollout.model_name) == name)
    found = list(session.scalars(stmt.order_by(col(Rollout.ended_at).desc(), col(Rollout.id))))
    if not found:
        return []
    breached: dict[int, RolloutStep] = {}
    for step in session.scalars(
        select(RolloutStep)
        .where(
            col(RolloutStep.rollout_id).in_([r.id for r in found]),
            col(RolloutStep.decision) == "rollback",
        )
        .order_by(col(RolloutStep.id))
    ):
        breached[step.rollout_id] = step
    out = []
    for r in found:
        last = breached.get(r.id or 0)
        out.append(
            RollbackAlert(
                rollout_id=r.id or 0,
                model_name=r.model_name,
                version=r.challenger_version,
                serving_version=r.champion_version,
                at=r.ended_at or r.step_started_at,
                stage=last.stage if last else ("shadow" if r.percent == 0 else "canary"),
                percent=last.percent if last else r.percent,
                reason=r.end_reason,
                breaches=breach_names(list(last.reasons)) if last else (),
            )
        )
    return out


def serving_failures(
    session: Session, *, since: datetime, name: str | None = None
) -> list[ServingFailure]:
    """Per model version, evaluations since `since` that ended `model_unavailable`, the
    most recent first (a version of another model is left out when `name` is given)."""
    rows = session.execute(
        select(
            col(Evaluation.model_version),
            func.count(),
            func.min(col(Evaluation.created_at)),
            func.max(col(Evaluation.created_at)),
        )
        .where(
            col(Evaluation.outcome) == Outcome.MODEL_UNAVAILABLE,
            col(Evaluation.created_at) >= since,
        )
        .group_by(col(Evaluation.model_version))
    ).all()
    prefix = None if name is None else f"{name}:v"
    found = [
        ServingFailure(label, int(n), first, last)
        for label, n, first, last in rows
        if prefix is None or label is None or str(label).startswith(prefix)
    ]
    return sorted(found, key=lambda f: f.last, reverse=True)
