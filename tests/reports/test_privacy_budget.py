"""The privacy budget statement against the ledger: per cohort the budget, what was spent
before, in and by the end of the period, what remains, each run's cost, a run the retraining
refused for the budget (from its audit entry), and the plain statement of the guarantee."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pypdf
import pytest

from mlops import retrain
from reports import privacy_budget, render
from reports.models import Filters, Report, ReportKind
from tests.conftest import FrozenClock, World
from tests.mlops.cohort import store_decisions
from tests.reports.lifecycle_setup import (
    History,
    arrange,
    at,
    cells,
    facts,
    period,
    rows,
    section,
    spend,
)

NOW = at(40)
V2_EPS, V3_EPS, SIM_EPS = 2.9533, 3.0, 2.5


@pytest.fixture
def history(world: World, tmp_path: Path, frozen_clock: FrozenClock) -> History:
    """The registry's story, a second clinic run on day 10, a simulated-cohort run on day 2,
    and a clinic run refused on day 12 for the budget (the real retraining path: no training
    starts, the refusal is audited)."""
    found = arrange(world, tmp_path)
    spend(world, version=None, snapshot_id=None, epsilon=V3_EPS, delta=1e-3, when=at(10))
    spend(
        world,
        version=None,
        snapshot_id=None,
        epsilon=SIM_EPS,
        delta=2e-4,
        when=at(2),
        cohort="simulated",
    )
    store_decisions(world.session, world.users["clina"], n_patients=48, signed_at=at(11))
    frozen_clock.now = at(12)  # the refusal's audit entry is stamped by the clock
    small = world.settings.model_copy(update={"training_min_rows": 12, "training_min_patients": 12})
    with pytest.raises(retrain.RetrainRefused, match="privacy_budget_exceeded"):
        retrain.retrain(
            session=world.session,
            settings=small,
            now=at(12),
            actor=f"user:{world.users['mleng'].id}",
            target_epsilon=5.0,
        )
    world.session.commit()  # the refusal's audit entry
    return found


def statement(world: World, start: float, end: float, cohort: str | None = None) -> Report:
    return privacy_budget.build(
        world.session,
        period=period(start, end),
        filters=Filters(cohort=cohort),
        generated_by="auditor",
        now=NOW,
        settings=world.settings,
    )


def test_build_states_budget_spent_and_remaining_per_cohort(world: World, history: History) -> None:
    report = statement(world, 0, 30)
    clinic = facts(report, "Cohort clinic")
    spent = V2_EPS + V3_EPS

    assert report.kind is ReportKind.PRIVACY_BUDGET
    assert clinic["total budget (epsilon)"] == "10"
    assert clinic["spent by the end of the period"] == f"{spent:.6g}"
    assert clinic["remaining at the end of the period"] == f"{10 - spent:.6g}"
    assert clinic["delta spent by the end of the period"] == f"{0.00104167 + 1e-3:.6g}"
    assert clinic["runs by the end of the period"] == "2"
    assert clinic["refused runs in the period"] == "1"
    assert clinic["unit of privacy"] == "patient"
    simulated = facts(report, "Cohort simulated")
    assert simulated["spent by the end of the period"] == "2.5"
    assert "no real person" in " ".join(section(report, "Cohort simulated").notes)
    assert dict(report.summary)["cohort clinic"] == (
        f"epsilon {spent:.6g} of 10 spent by the end of the period, {10 - spent:.6g} "
        "remaining (2 runs; 1 refused)"
    )
    assert all(isinstance(c, str) for c in cells(report))


def test_build_lists_each_run_and_the_refused_one_in_order(world: World, history: History) -> None:
    runs = rows(statement(world, 0, 30), "Cohort clinic")

    assert [r["outcome"] for r in runs] == [
        "charged",
        "charged",
        "refused: privacy_budget_exceeded",
    ]
    first, second, refused = runs
    assert first["entry"] == f"#{history.spend.id}"
    assert (first["model version"], first["epsilon"]) == ("titration:v2", "2.9533")
    assert first["delta"] == "0.00104167"
    assert (first["accountant"], first["unit"]) == ("rdp", "patient")
    assert first["rows trained"] == str(history.v2.metrics["train_rows"])
    assert first["snapshot"] == f"#{history.snapshot.id}: 160 rows, 160 patients"
    assert "noise multiplier 0.9124" in first["detail"]
    assert first["by"] == "Mleng (mleng, ml_engineer)"
    assert second["cumulative epsilon"] == f"{V2_EPS + V3_EPS:.6g}"
    assert refused["at"] == "2026-11-14T09:00:00Z"
    assert refused["epsilon"] == "0 (asked 5)"
    spent = V2_EPS + V3_EPS
    assert refused["detail"] == (
        f"spent {spent:.6g}, requested 5, budget 10, excess {spent + 5 - 10:.6g}"
    )


def test_build_splits_spending_at_the_period_edges(world: World, history: History) -> None:
    report = statement(world, 5, 11, cohort="clinic")
    clinic = facts(report, "Cohort clinic")

    assert [s.heading for s in report.sections] == ["Cohort clinic"]
    assert clinic["spent before the period"] == "2.9533"
    assert clinic["spent in the period"] == "3"
    assert clinic["runs in the period"] == "1"
    assert clinic["refused runs in the period"] == "0"  # day 12 is after the period
    assert [r["in period"] for r in rows(report, "Cohort clinic")] == ["no", "yes"]
    early = facts(statement(world, 0, 5, cohort="clinic"), "Cohort clinic")
    assert early["spent by the end of the period"] == "2.9533"
    assert early["runs after the period"] == "1 (epsilon 3; not counted above)"


def test_build_states_what_the_guarantee_means_and_its_limits(
    world: World, history: History
) -> None:
    notes = section(statement(world, 0, 30), "Cohort clinic").notes
    spent = V2_EPS + V3_EPS
    text = " ".join(notes)

    assert notes[0].startswith(
        f"By the end of the period 2 training runs used this cohort's data. Together they are "
        f"({spent:.6g}, {0.00104167 + 1e-3:.6g})-differentially private for one patient"
    )
    assert f"{math.exp(spent):.3g} times more likely" in notes[0]
    assert "never replenished" in text
    assert "basic sequential composition" in text
    assert "secure_mode is off" in text
    assert "whether a run was refused" in text


def test_build_lists_versions_trained_outside_the_ledger(world: World, history: History) -> None:
    (v1,) = rows(statement(world, 0, 30), "Versions trained outside the ledger")

    assert v1["model version"] == "titration:v1"
    assert v1["epsilon"] == f"{history.v1.privacy['epsilon']:.6g}"
    assert v1["labels"] == "protocol v1"


def test_build_for_an_unknown_cohort_says_nothing_was_spent(world: World) -> None:
    report = statement(world, 0, 30, cohort="elsewhere")
    notes = section(report, "Cohort elsewhere").notes

    assert facts(report, "Cohort elsewhere")["spent by the end of the period"] == "0"
    assert "No cohort named 'elsewhere' is defined in this code." in notes
    assert section(report, "Cohort elsewhere").table is None


def test_render_as_csv_and_pdf_carries_the_ledger_figures(world: World, history: History) -> None:
    report = statement(world, 0, 30)

    csv_text = render.to_csv(report)
    lines = csv_text.splitlines()
    assert lines[0].startswith("section,entry,at,in period,outcome,model version,epsilon")
    assert any(
        line.startswith(f"Cohort clinic,#{history.spend.id},2026-11-03T09:00:00Z,yes,charged,")
        and ",2.9533," in line
        for line in lines
    )
    assert any("refused: privacy_budget_exceeded" in line for line in lines)
    assert any(line.startswith("Cohort simulated,") and ",2.5," in line for line in lines)
    pdf = pypdf.PdfReader(io.BytesIO(render.to_pdf(report)))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    spent = V2_EPS + V3_EPS
    assert "Privacy budget statement: every cohort" in text
    assert f"{10 - spent:.6g}" in text
    # Narrow table cells wrap long words: compare without whitespace.
    assert "refused:privacy_budget_exceeded" in re.sub(r"\s+", "", text)
    assert f"page 1 of {len(pdf.pages)}" in text
