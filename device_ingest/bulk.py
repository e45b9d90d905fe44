"""Bulk inserts through the driver's own executemany, inside the session's transaction.

The ingest hot path writes up to 5,000 rows per request; SQLAlchemy's per-parameter
processing would cost more than the insert itself. Callers build driver-ready tuples with a
`Values` converter (once per value, the way the column types would store them), so the ORM
reads the rows back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Table
from sqlalchemy.orm import Session

_EMPTY_LIST = orjson.dumps([]).decode()
_EMPTY_DICT = orjson.dumps({}).decode()


class Values:
    """Python values as this connection's driver stores them for our column types."""

    def __init__(self, *, postgres: bool) -> None:
        self.postgres = postgres

    def time(self, value: datetime | None) -> datetime | str | None:
        """A UTCDateTime value: as is for psycopg, naive-UTC text for SQLite (app.db)."""
        if value is None or self.postgres:
            return value
        if value.utcoffset():
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")

    @staticmethod
    def json(value: object) -> str:
        """A JSON column value as text (both drivers take text; PostgreSQL casts it)."""
        if value == [] and type(value) is list:
            return _EMPTY_LIST
        if value == {} and type(value) is dict:
            return _EMPTY_DICT
        return orjson.dumps(value).decode()


def insert_new(
    session: Session,
    table: Table,
    columns: Sequence[str],
    values: Sequence[Sequence[Any]],
    *,
    batch_id: int,
) -> dict[str, int]:
    """Insert rows with new natural keys; return natural_key -> id of those inserted now.

    `values` are driver-ready rows in `columns` order (see Values). A natural key already
    stored (a resend, or a concurrent request that won) is skipped by the unique index; the
    rows of this batch are then read back by their batch id.
    """
    if not values:
        return {}
    conn = session.connection()
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    postgres = conn.dialect.name == "postgresql"
    json_cols = {c.name for c in table.columns if isinstance(c.type, JSON)}
    mark = "%s" if postgres else "?"
    marks = ", ".join(
        f"CAST({mark} AS json)" if postgres and c in json_cols else mark for c in columns
    )
    # Table and column names come from our own metadata, never from input.
    insert = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks}) "  # noqa: S608
        "ON CONFLICT (natural_key) DO NOTHING"
    )
    select = f"SELECT natural_key, id FROM {table.name} WHERE batch_id = {mark}"  # noqa: S608
    cursor = dbapi.cursor()
    try:
        cursor.executemany(insert, values)
        cursor.execute(select, (batch_id,))
        return {str(key): int(ident) for key, ident in cursor.fetchall()}
    finally:
        cursor.close()
