"""The privacy ledger: what each training run cost a data cohort, against its total budget.

Composition is **basic sequential composition**: a person in a cohort whose data fed k runs,
run i being (epsilon_i, delta_i)-differentially private, is protected by
(sum of epsilon_i, sum of delta_i). Both add up: the epsilons against the budget
(`privacy_budget_epsilon`, per cohort), and the deltas too (reported beside them; each is at
most 1/(10 n) of its run). Basic composition is loose (advanced composition or composing the
runs' RDP curves would give a smaller total), but it holds for any mix of mechanisms and
accountants, and it is what the budget is checked against. A run that would take the total
past the budget is refused before it trains; the ledger itself is append-only (the database
refuses UPDATE and DELETE on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from mlops.models import PrivacySpend

COMPOSITION = "basic sequential composition: the epsilons and the deltas of all runs add up"
# Float sums of a few epsilons carry rounding of ~1e-15; the check forgives that, no more.
_TOLERANCE = 1e-9


class BudgetExceeded(Exception):
    """A run would take a cohort's total epsilon past its budget."""

    def __init__(self, *, spent: float, requested: float, budget: float) -> None:
        self.spent, self.requested, self.budget = spent, requested, budget
        self.excess = spent + requested - budget
        super().__init__(
            f"privacy budget exceeded: {spent:.4g} spent + {requested:.4g} requested = "
            f"{spent + requested:.4g}, above the budget of {budget:.4g} by {self.excess:.4g} "
            f"(at most {max(budget - spent, 0.0):.4g} remains)"
        )


def check(*, spent: float, requested: float, budget: float) -> float:
    """Allow a run of `requested` epsilon after `spent`, within `budget`; returns what would
    remain after it, or raises BudgetExceeded (pure)."""
    for name, value in (("spent", spent), ("requested", requested), ("budget", budget)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and not negative, got {value}")
    if requested <= 0:
        raise ValueError("requested must be positive")
    if spent + requested > budget + _TOLERANCE:
        raise BudgetExceeded(spent=spent, requested=requested, budget=budget)
    return max(budget - spent - requested, 0.0)


@dataclass(frozen=True)
class Totals:
    """A cohort's spending so far."""

    cohort: str
    epsilon: float
    delta: float
    runs: int


def entries(session: Session, *, cohort: str | None = None) -> list[PrivacySpend]:
    """Ledger entries, oldest first (of one cohort, or all)."""
    stmt = select(PrivacySpend).order_by(col(PrivacySpend.id))
    if cohort is not None:
        stmt = stmt.where(col(PrivacySpend.cohort) == cohort)
    return list(session.scalars(stmt).all())


def totals(session: Session, *, cohort: str) -> Totals:
    """Epsilon and delta spent on a cohort so far, summed exactly (math.fsum)."""
    rows = session.execute(
        select(col(PrivacySpend.epsilon), col(PrivacySpend.delta)).where(
            col(PrivacySpend.cohort) == cohort
        )
    ).all()
    return Totals(
        cohort=cohort,
        epsilon=math.fsum(float(e) for e, _ in rows),
        delta=math.fsum(float(d) for _, d in rows),
        runs=len(rows),
    )


def spent(session: Session, *, cohort: str) -> float:
    """Epsilon spent on a cohort so far."""
    return totals(session, cohort=cohort).epsilon


def record(
    session: Session,
    *,
    cohort: str,
    snapshot_id: int | None,
    model_name: str,
    model_version: int | None,
    epsilon: float,
    delta: float,
    accountant: str,
    details: dict[str, Any],
    created_by: str,
    now: datetime,
) -> PrivacySpend:
    """Append one run's cost to the ledger (never updated). Flushes; the caller commits."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError("a ledger entry needs a finite, positive epsilon")
    if not (0.0 <= delta <= 1.0):
        raise ValueError("delta must lie in [0, 1] (1: no delta guarantee left)")
    spend = PrivacySpend(
        cohort=cohort,
        snapshot_id=snapshot_id,
        model_name=model_name,
        model_version=model_version,
        epsilon=epsilon,
        delta=delta,
        accountant=accountant,
        details=details,
        created_by=created_by,
        created_at=now,
    )
    session.add(spend)
    session.flush()
    return spend
