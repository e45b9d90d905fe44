"""One set of migrations for SQLite and PostgreSQL, matching the models exactly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from app.all_models import metadata
from app.core import clock
from app.migrate import current_revision, head_revision, upgrade
from tests.conftest import World


def test_schema_when_migrated_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_database_when_migrated_is_at_head(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()


def test_migrations_when_downgraded_and_upgraded_round_trip(engine: Engine, db_url: str) -> None:
    from alembic import command

    from app.migrate import alembic_config

    command.downgrade(alembic_config(db_url), "base")
    engine.dispose()
    assert "audit_entries" not in inspect(engine).get_table_names()
    engine.dispose()
    upgrade(db_url)
    assert current_revision(engine) == head_revision()


def test_upgrade_when_already_at_head_keeps_data(engine: Engine, db_url: str, world: World) -> None:
    upgrade(db_url)
    assert len(inspect(engine).get_table_names()) >= 13
    world.session.rollback()
    assert world.session.get(type(world.users["clina"]), world.users["clina"].id) is not None


CHANGE_CONTROL = {
    "privacy_ledger": (
        "INSERT INTO privacy_ledger (cohort, model_name, epsilon, delta, accountant, details, "
        "created_by, created_at) VALUES ('c', 'm', 1.0, 1e-6, 'rdp', '{}', 'x', :now)"
    ),
    "model_transitions": (
        "INSERT INTO model_transitions (model_name, version, to_status, actor, reason, details, "
        "at) VALUES ('m', 1, 'candidate', 'x', '', '{}', :now)"
    ),
    "gate_results": (
        "INSERT INTO gate_results (model_name, version, gate, passed, measured, threshold, "
        "detail, run_id, created_by, created_at) "
        "VALUES ('m', 1, 'g', true, '{}', '{}', '', 'r', 'x', :now)"
    ),
}


@pytest.mark.parametrize("table", sorted(CHANGE_CONTROL))
def test_change_control_table_when_row_changed_or_deleted_refuses(
    engine: Engine, table: str
) -> None:
    # The model lifecycle's record (issue 7) is append-only in the database itself.
    with engine.begin() as conn:
        conn.execute(text(CHANGE_CONTROL[table]), {"now": clock.utcnow()})
    for statement in (f"UPDATE {table} SET id = id", f"DELETE FROM {table}"):
        with engine.begin() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(statement))
