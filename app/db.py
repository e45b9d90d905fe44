"""Engine, sessions and column types shared by every domain."""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import BigInteger, DateTime, Engine, Integer, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from app.core.config import get_settings

READONLY_OPTION = "clinaiops_readonly"
# SQLite only makes INTEGER PRIMARY KEY an auto-incrementing rowid; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")
WRITER_WAIT_SECONDS = 30.0
SQLITE_CACHE_KIB = 32 * 1024  # per connection
_HOLDS_WRITER = "clinaiops_holds_writer"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    SQLite keeps no offset, so values are normalised to naive UTC on the way in and tagged as
    UTC on the way out; PostgreSQL stores timestamptz.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use app.core.clock.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def new_id() -> str:
    """A random, unguessable identifier (UUID4) for rows that are named in URLs."""
    return str(uuid.uuid4())


class WriterLockTimeout(OperationalError):
    """No write transaction could start in time (SQLite allows one writer at a time)."""


class WriterLock:
    """SQLite's single writer, queued fairly: threads on a lock, processes on flock(2).

    SQLite's own busy handler polls with sleeps that grow to 100 ms, which wrecks tail
    latency under contention. Here waiters block in the kernel instead and wake at once.
    The flock is held on a file beside the database; the kernel drops it if a process dies.
    """

    def __init__(self, db_path: str | None) -> None:
        self._thread = threading.Lock()
        self._fd = (
            os.open(f"{db_path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600) if db_path else None
        )

    def acquire(self, timeout: float) -> bool:
        """Take the writer slot; False if the threads' queue did not move within `timeout`."""
        if not self._thread.acquire(timeout=timeout):
            return False
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # flock is per open file: threads first
        return True

    def release(self) -> None:
        """Give the writer slot to the next waiter."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread.release()


def _configure_sqlite(engine: Engine, synchronous: str, db_path: str | None) -> None:
    writer = WriterLock(db_path)

    # pysqlite's own transaction handling defers BEGIN; take over so every transaction starts
    # with BEGIN IMMEDIATE. Almost every request writes an audit entry, and a deferred
    # transaction that upgrades to a writer late fails with SQLITE_BUSY instead of waiting.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        # The readings' unique natural-key index takes inserts at random places (keys are
        # SHA-256); SQLite's default 2 MiB page cache evicts it within a few batches.
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Read-only work (verification, exports) takes a WAL snapshot and blocks no writer.
        if conn.get_execution_options().get(READONLY_OPTION, False):
            conn.exec_driver_sql("BEGIN DEFERRED")
            return
        if not writer.acquire(timeout=WRITER_WAIT_SECONDS):
            raise WriterLockTimeout("BEGIN IMMEDIATE", None, Exception("database is locked"))
        conn.info[_HOLDS_WRITER] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(conn.info)
            raise

    def _release(info: dict[Any, Any]) -> None:
        if info.pop(_HOLDS_WRITER, False):
            writer.release()

    # Released as the transaction ends; the pool check-in is a backstop for connections
    # returned without an explicit commit or rollback.
    event.listen(engine, "commit", lambda conn: _release(conn.info))
    event.listen(engine, "rollback", lambda conn: _release(conn.info))
    event.listen(engine.pool, "checkin", lambda _dbapi, record: _release(record.info))


def _json_dumps(value: Any) -> str:
    # JSON columns sit on the ingest hot path; orjson is several times faster than json.
    return orjson.dumps(value).decode()


def make_engine(url: str, *, synchronous: str = "FULL", pool: bool = True) -> Engine:
    """Create an engine with the project's connection settings for SQLite or PostgreSQL."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=None if pool else NullPool,
            json_serializer=_json_dumps,
            # The most recently used connection first: its page cache is the warm one.
            **({"pool_use_lifo": True} if pool else {}),
        )
        _configure_sqlite(
            engine, synchronous.upper(), path if path and path != ":memory:" else None
        )
        return engine
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": _json_dumps}
    if pool:
        kwargs.update(pool_size=10, max_overflow=20)
    else:
        kwargs["poolclass"] = NullPool
    return create_engine(url, **kwargs)


@lru_cache(maxsize=4)
def _engine_for(url: str, synchronous: str) -> Engine:
    return make_engine(url, synchronous=synchronous)


def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    settings = get_settings()
    return _engine_for(settings.database_url, settings.sqlite_synchronous)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose sessions write their queued audit entries at every commit."""
    # Importing audit.service registers, once, the commit hook that writes queued audit
    # entries (late import: audit's models import this module).
    import audit.service  # noqa: F401

    factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)
    return factory


@contextmanager
def session_scope(engine: Engine | None = None, *, readonly: bool = False) -> Iterator[Session]:
    """A session for jobs and the CLI: the caller commits; anything uncommitted rolls back.

    `readonly` sessions must not write: on SQLite they read a snapshot without taking the
    write lock, so a long verification does not stall requests.
    """
    engine = engine or get_engine()
    if readonly:
        engine = engine.execution_options(**{READONLY_OPTION: True})
    factory = session_factory(engine)
    with factory() as session:
        try:
            yield session
        finally:
            if session.in_transaction():
                session.rollback()
