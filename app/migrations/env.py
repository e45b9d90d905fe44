"""Alembic environment: the URL comes from the caller's config or from settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, pool

from app.all_models import metadata
from app.core.config import get_settings
from app.db import make_engine

config = context.config


def run_migrations() -> None:
    """Run migrations online; batch mode lets SQLite alter tables."""
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(url, pool=False)
    assert engine.pool.__class__ is pool.NullPool
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
