"""Model v1 training and registration, serving it safely, and the simulated closed loop."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.simulate import run
from audit.models import AuditEntry
from device_ingest.models import Reading
from loops.models import Evaluation, Proposal
from mlops import registry, serving
from mlops.models import ModelStatus
from mlops.training import InitialTraining, train_initial

SMALL = InitialTraining(n_patients=40, days=42, epochs=10)


@pytest.fixture
def trained(db: Session, tmp_path: Path) -> Session:
    """Version 1 trained on a small simulated cohort and put in production."""
    with warnings.catch_warnings():
        # Opacus warns on every run that secure_mode is off; it is off on purpose (docs).
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        train_initial(db, models_dir=tmp_path / "models", created_by="test", config=SMALL)
    db.commit()
    return db


def test_train_initial_when_done_registers_v1_with_lineage_and_privacy(
    trained: Session,
) -> None:
    version = registry.production(trained)
    assert version is not None
    assert (version.name, version.version, version.status) == (
        "titration",
        1,
        ModelStatus.PRODUCTION,
    )
    assert len(version.data_hash) == 64
    assert len(version.artifact_sha256) == 64
    assert version.privacy["epsilon"] <= SMALL.target_epsilon + 0.05
    assert version.privacy["privacy_unit"] == "row"
    assert version.privacy["delta"] <= 1 / (10 * version.metrics["train_rows"])
    assert {"dp", "non_dp_baseline", "sklearn_baseline"} <= set(version.metrics)


def test_serving_when_artifact_tampered_refuses_the_model(trained: Session) -> None:
    version = registry.production(trained)
    assert version is not None
    assert serving.production(trained) is not None
    serving._cache.clear()
    path = Path(version.artifact_path)
    path.write_text(path.read_text().replace("0", "1", 1))
    assert serving.production(trained) is None  # evaluations then stop short of proposals


def test_simulation_when_loop_runs_feeds_readings_and_evaluations(
    trained: Session, engine: Engine, settings: Settings
) -> None:
    serving._cache.clear()
    report = run(engine, settings, n_patients=4, days=21, seed=5)
    assert report.posted > 0
    assert set(report.status_counts) == {200}
    assert report.evaluations > 0
    s = trained
    assert (s.scalar(select(func.count()).select_from(Reading)) or 0) > 4 * 21 * 2
    assert (s.scalar(select(func.count()).select_from(Evaluation)) or 0) == report.evaluations
    evaluations = (
        s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "loop.evaluate")
        )
        or 0
    )
    assert evaluations == report.evaluations
    proposals = s.scalars(select(Proposal)).all()
    assert all(p.model_version == "titration:v1" for p in proposals)
    s.rollback()


def test_simulation_when_rerun_same_day_stores_nothing_twice(
    engine: Engine, settings: Settings, db: Session
) -> None:
    run(engine, settings, n_patients=2, days=3, seed=9, evaluate=False)
    first = db.scalar(select(func.count()).select_from(Reading))
    db.rollback()
    run(engine, settings, n_patients=2, days=3, seed=9, evaluate=False)
    assert db.scalar(select(func.count()).select_from(Reading)) == first
