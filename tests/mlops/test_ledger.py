"""The privacy ledger: the budget check (pure), sums per cohort, and append-only entries."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from mlops import ledger
from mlops.models import PrivacySpend

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("spent", "requested", "budget", "remaining"),
    [
        (0.0, 3.0, 10.0, 7.0),
        (7.0, 3.0, 10.0, 0.0),  # exactly at the budget: allowed
        (0.1 + 0.2, 0.7, 1.0, 0.0),  # float rounding (0.30000000000000004) forgiven
        (0.0, 10.0, 10.0, 0.0),
    ],
)
def test_check_when_within_budget_returns_what_remains(
    spent: float, requested: float, budget: float, remaining: float
) -> None:
    assert ledger.check(spent=spent, requested=requested, budget=budget) == pytest.approx(
        remaining, abs=1e-12
    )


@pytest.mark.parametrize(
    ("spent", "requested", "budget", "excess"),
    [
        (8.0, 3.0, 10.0, 1.0),
        (10.0, 0.5, 10.0, 0.5),
        (0.0, 10.01, 10.0, 0.01),
        (12.0, 1.0, 10.0, 3.0),  # already over (a lowered budget): still refused
    ],
)
def test_check_when_over_budget_raises_saying_by_how_much(
    spent: float, requested: float, budget: float, excess: float
) -> None:
    with pytest.raises(ledger.BudgetExceeded) as err:
        ledger.check(spent=spent, requested=requested, budget=budget)
    assert err.value.excess == pytest.approx(excess)
    assert f"by {excess:.4g}" in str(err.value)
    assert f"budget of {budget:.4g}" in str(err.value)


@pytest.mark.parametrize(
    ("spent", "requested", "budget"),
    [(-1.0, 1.0, 10.0), (0.0, 0.0, 10.0), (0.0, math.nan, 10.0), (0.0, 1.0, math.inf)],
)
def test_check_when_values_invalid_refuses(spent: float, requested: float, budget: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        ledger.check(spent=spent, requested=requested, budget=budget)


def _spend(db: Session, cohort: str, epsilon: float, delta: float = 1e-5) -> PrivacySpend:
    return ledger.record(
        db,
        cohort=cohort,
        snapshot_id=None,
        model_name="titration",
        model_version=None,
        epsilon=epsilon,
        delta=delta,
        accountant="rdp",
        details={},
        created_by="test",
        now=NOW,
    )


def test_spent_when_runs_recorded_sums_epsilon_and_delta_per_cohort(db: Session) -> None:
    assert ledger.spent(db, cohort="clinic") == 0.0
    _spend(db, "clinic", 0.1)
    _spend(db, "clinic", 0.2, 2e-5)
    _spend(db, "simulated", 5.0)
    db.commit()
    assert ledger.spent(db, cohort="clinic") == pytest.approx(0.3)
    totals = ledger.totals(db, cohort="clinic")
    assert (totals.runs, totals.delta) == (2, pytest.approx(3e-5))
    assert [e.epsilon for e in ledger.entries(db, cohort="simulated")] == [5.0]
    assert len(ledger.entries(db)) == 3


def test_record_when_epsilon_not_positive_refuses(db: Session) -> None:
    for epsilon in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="positive"):
            _spend(db, "clinic", epsilon)
    with pytest.raises(ValueError, match="delta"):
        _spend(db, "clinic", 1.0, delta=1.5)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE privacy_ledger SET epsilon = 0.0", "DELETE FROM privacy_ledger"],
)
def test_ledger_when_changed_in_the_database_refuses(db: Session, statement: str) -> None:
    _spend(db, "clinic", 3.0)
    db.commit()
    with pytest.raises(DBAPIError, match="append-only"):
        db.execute(text(statement))
    db.rollback()
    assert ledger.spent(db, cohort="clinic") == 3.0
