"""One set of migrations for SQLite and PostgreSQL, matching the models exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from app.all_models import metadata
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
