"""Bulk inserts through the driver's own executemany, inside the session's transaction.

The ingest hot path writes up to 5,000 rows per request; SQLAlchemy's per-parameter
processing would cost more than the insert itself. Values are converted once here, the way
the column types would store them, so the ORM reads the rows back unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Table
from sqlalchemy.orm import Session

from app.db import UTCDateTime


def _sqlite_time(value: datetime | None) -> str | None:
    # SQLAlchemy's SQLite DATETIME storage format, naive UTC (see app.db.UTCDateTime).
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def insert_new(
    session: Session, table: Table, rows: list[dict[str, Any]], *, batch_id: int
) -> dict[str, int]:
    """Insert rows with new natural keys; return natural_key -> id of those inserted now.

    A natural key already stored (a resend, or a concurrent request that won) is skipped by
    the unique index; the rows of this batch are then read back by their batch id.
    """
    if not rows:
        return {}
    conn = session.connection()
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    postgres = conn.dialect.name == "postgresql"
    columns = list(rows[0])
    json_cols = {c.name for c in table.columns if isinstance(c.type, JSON)}
    time_cols = {c.name for c in table.columns if isinstance(c.type, UTCDateTime)}
    mark = "%s" if postgres else "?"
    marks = ", ".join(
        f"CAST({mark} AS json)" if postgres and c in json_cols else mark for c in columns
    )
    convert: list[Any] = []
    for c in columns:
        if c in json_cols:
            convert.append(lambda v: orjson.dumps(v).decode())
        elif c in time_cols and not postgres:
            convert.append(_sqlite_time)
        else:
            convert.append(None)
    values = [
        tuple(v if f is None else f(v) for f, v in zip(convert, row.values(), strict=True))
        for row in rows
    ]
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
