"""`clinaiops models train` and `clinaiops ledger show`, run as an operator would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlmodel import col

from app.db import session_factory
from audit.models import AuditEntry
from mlops.models import ModelVersion, TrainingSnapshot
from tests.test_cli import Cli, _base_env, _runner

SMALL = {
    "CLINAIOPS_TRAINING_MIN_ROWS": "10",
    "CLINAIOPS_TRAINING_MIN_PATIENTS": "10",
}


@pytest.fixture
def cli(engine: Engine, db_url: str, tmp_path: Path) -> Cli:
    """Run `clinaiops` on this test's database, with small data-check minimums."""
    base = _base_env(tmp_path)
    base["CLINAIOPS_DATABASE_URL"] = db_url
    base.update(SMALL)
    return _runner(base, tmp_path)


def test_ledger_show_when_nothing_spent_lists_every_cohort_with_its_budget(cli: Cli) -> None:
    result = cli("ledger", "show")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["composition"].startswith("basic sequential composition")
    assert [(c["cohort"], c["spent_epsilon"], c["remaining_epsilon"]) for c in out["cohorts"]] == [
        ("clinic", 0.0, 10.0),
        ("simulated", 0.0, 10.0),
    ]


def test_ledger_show_when_cohort_unknown_fails_in_one_line(cli: Cli) -> None:
    result = cli("ledger", "show", "--cohort", "nobody")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: unknown cohort 'nobody'; known: clinic, simulated"


def test_models_train_when_no_decisions_refuses_and_keeps_the_audit_entry(
    cli: Cli, engine: Engine
) -> None:
    result = cli("models", "train")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data_checks_failed: snapshot 1 failed its data checks")
    assert "min_rows: 0 rows, at least 10 needed (10 short)" in last
    with session_factory(engine)() as s:
        entry = s.scalars(select(AuditEntry).where(col(AuditEntry.action) == "model.train")).one()
        assert (entry.outcome, entry.actor_role) == ("failure", "operator")
        assert entry.actor.startswith("cli:")
        assert s.scalars(select(TrainingSnapshot)).one().status == "invalid"


def test_models_train_when_simulated_cohort_registers_a_candidate_and_spends(
    cli: Cli, engine: Engine
) -> None:
    result = cli(
        "models",
        "train",
        "--cohort",
        "simulated",
        "--patients",
        "24",
        "--seed",
        "3",
        "--epsilon",
        "2",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["model"] == "titration:v1"
    assert out["status"] == "candidate"
    assert 0 < out["epsilon"] <= 2.02
    assert "secure_mode is off" in result.stderr
    shown = json.loads(cli("ledger", "show", "--cohort", "simulated").stdout)
    [cohort] = shown["cohorts"]
    assert cohort["spent_epsilon"] == out["epsilon"]
    assert cohort["runs"][0]["model"] == "titration:v1"
    with session_factory(engine)() as s:
        version = s.scalars(select(ModelVersion)).one()
        assert version.privacy["cohort"] == "simulated"
