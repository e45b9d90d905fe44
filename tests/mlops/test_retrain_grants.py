"""Retraining as the application role of docs/postgresql.md (PostgreSQL): snapshot, ledger
entry, candidate and audit entries need only the grants that page gives, and a rebuilt
snapshot is never updated (the role may only insert snapshots)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.auth import service as auth_service
from app.auth.models import Role
from app.core import clock
from app.db import make_engine, session_factory
from mlops import ledger, retrain
from mlops.models import TrainingSnapshot
from tests.mlops.cohort import store_decisions
from tests.test_postgres_grants import Roles, _settings, roles  # noqa: F401 - the fixture

pytestmark = pytest.mark.postgres


def test_retrain_when_run_as_app_role_needs_only_its_grants(
    roles: Roles,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    settings = _settings(roles, tmp_path).model_copy(
        update={"training_min_rows": 12, "training_min_patients": 12}
    )
    engine = make_engine(roles.app_url)
    factory = session_factory(engine)
    now = clock.utcnow()
    try:
        with factory() as s:
            clinician = auth_service.create_user(
                s,
                username="clin",
                password="grants-password-1",
                full_name="Clin",
                role=Role.CLINICIAN,
                settings=settings,
            )
            s.commit()
            store_decisions(s, clinician, n_patients=36, signed_at=now - timedelta(days=1))
        with factory() as s:
            with pytest.warns(UserWarning, match="Secure RNG turned off"):
                result = retrain.retrain(
                    session=s,
                    settings=settings,
                    now=now,
                    actor="user:1",
                    config=retrain.RetrainConfig(epochs=2, batch_size=16),
                )
            s.commit()
            assert result.version.status == "candidate"
        with factory() as s:
            assert ledger.spent(s, cohort="clinic") == pytest.approx(result.epsilon)
            # The same rows again: the stored snapshot is found, not updated, and refused.
            with pytest.raises(retrain.RetrainRefused, match="no_new_data"):
                retrain.retrain(session=s, settings=settings, now=now, actor="user:1")
            s.commit()
            assert s.scalar(select(func.count()).select_from(TrainingSnapshot)) == 1
    finally:
        engine.dispose()
