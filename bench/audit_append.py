"""How many audit appends per second one PostgreSQL database takes (docs/scaling.md).

Each transaction queues one audit entry and commits: the append takes the audit advisory
lock, reads the last leaf hash, inserts and commits, so appends are serial whatever the
number of writers. Runs in a throw-away database created (and dropped) on the server.

    .venv/bin/python bench/audit_append.py --url postgresql+psycopg://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db import make_engine, session_factory
from app.migrate import upgrade
from audit import service as audit


def _run(url: str, writers: int, per_writer: int) -> tuple[float, float, float]:
    engine = make_engine(url)
    factory = session_factory(engine)
    latencies: list[float] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        mine = []
        for i in range(per_writer):
            started = time.perf_counter()
            with factory() as session:
                audit.record(
                    session,
                    actor=f"bench:{n}",
                    actor_role="operator",
                    action="bench.append",
                    resource_type="bench",
                    details={"i": i},
                )
                session.commit()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    engine.dispose()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000


def main() -> None:
    """Create a database, migrate it, append with 1..N writers, drop it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="a PostgreSQL URL (its server is used)")
    parser.add_argument("--per-writer", type=int, default=500)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    base = make_url(args.url)
    name = f"clinaiops_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(base.set(database="postgres").render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        for writers in args.writers:
            rate, median, p99 = _run(url, writers, args.per_writer)
            print(
                f"writers={writers:3d}  appends/s={rate:7.0f}  "
                f"commit median={median:6.2f} ms  p99={p99:6.2f} ms"
            )
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
