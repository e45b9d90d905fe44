"""Ingest benchmark: end-to-end readings/s through HTTP against the raw insert rate.

For each database (SQLite always; PostgreSQL when --postgres URL is given) it prints:
- readings/s end to end: batches of 1,000 FHIR Observations, 4 concurrent clients, through
  the real server process (`clinaiops serve`) over loopback;
- the raw insert rate of the same rows with the same driver (SQLAlchemy Core executemany,
  batches of 1,000) on the same machine, and the ratio of the two;
- single-reading latency p50/p99 with 50 concurrent devices.

Targets (issue 3): >= 15,000 readings/s on SQLite, ratio >= 0.25, p99 < 30 ms.
Usage: python bench/ingest.py [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
       [--batches 40] [--workers 2]
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import orjson
from sqlalchemy import make_url, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.db import make_engine, session_factory  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.patients import service as patients  # noqa: E402
from app.patients.models import Sex  # noqa: E402
from device_ingest import service as devices  # noqa: E402
from device_ingest.models import DeviceClass  # noqa: E402
from tests.live_server import LiveServer, clean_env  # noqa: E402

FHIR = "application/fhir+json"
START = datetime(2025, 1, 1, tzinfo=UTC)


def observation(i: int, device: int) -> dict[str, Any]:
    """A typical home-cuff blood-pressure Observation, unique per (device, i)."""
    when = (START + timedelta(seconds=i * 7 + device)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "effectiveDateTime": when,
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {
                    "value": 110 + i % 50,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {
                    "value": 70 + i % 20,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
        ],
    }


def setup(url: str, n_devices: int) -> list[str]:
    """Migrate and register one validated cuff per simulated patient; returns device keys."""
    upgrade(url)
    engine = make_engine(url)
    keys = []
    with session_factory(engine)() as s:
        for n in range(n_devices):
            p = patients.register_patient(
                s,
                pseudonym=f"B-{n:05d}",
                given_name="Bench",
                family_name=f"P{n}",
                birth_date=START.date(),
                sex=Sex.FEMALE,
            )
            _, key = devices.register(s, patient_id=p.id, device_class=DeviceClass.VALIDATED_CUFF)
            keys.append(key)
        s.commit()
    engine.dispose()
    return keys


def throughput(
    base: str, keys: list[str], batches: int, clients: int = 4, size: int = 1000
) -> tuple[float, int]:
    """End-to-end readings/s: `clients` threads posting `batches` bundles of `size`."""
    bodies = [
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [
                    {
                        "resource": observation(b * size + i, 0),
                        "request": {"method": "POST", "url": "Observation"},
                    }
                    for i in range(size)
                ],
            }
        ).encode()
        for b in range(batches)
    ]
    work = list(enumerate(bodies))
    lock = threading.Lock()
    stored = 0
    errors: list[str] = []

    host, port = base.removeprefix("http://").split(":")

    def client(c: int) -> None:
        nonlocal stored
        # http.client: the leanest keep-alive client, so the harness is not what is measured.
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        headers = {"Authorization": f"Bearer {keys[c]}", "Content-Type": FHIR}
        while True:
            with lock:
                if not work:
                    conn.close()
                    return
                _, body = work.pop()
            conn.request("POST", "/api/v1/device/observations", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            with lock:
                if response.status != 200:
                    errors.append(f"{response.status}: {payload[:200]!r}")
                else:
                    stored += payload.count(b'"201 Created"')

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"ingest errors: {errors[:3]}")
    return stored / elapsed, stored


def raw_insert_rate(
    url: str, rows: int = 40_000, size: int = 1000, *, sequential_keys: bool = False
) -> float:
    """The same reading rows through the driver's own executemany, batches of `size`.

    `sequential_keys` gives the rows ascending natural keys instead (a reference figure:
    appending to the unique index is cheaper than the real rows' random SHA-256 keys).

    This is the ceiling: prepared tuples, no validation, no ORM, one commit per batch.
    """
    engine = make_engine(url, pool=False)
    cols = [
        "patient_id",
        "device_id",
        "batch_id",
        "device_class",
        "device_model",
        "firmware_version",
        "kind",
        "code",
        "effective_start",
        "effective_end",
        "effective_precision",
        "effective_raw",
        "systolic",
        "diastolic",
        "value",
        "unit",
        "statistic",
        "calibration_systolic",
        "calibration_diastolic",
        "status",
        "quarantine_reasons",
        "source_format",
        "payload_sha256",
        "received_at",
        "natural_key",
        "context",
    ]
    pg = url.startswith("postgresql")
    marks = ", ".join(["%s" if pg else "?"] * len(cols))
    sql = f"INSERT INTO readings ({', '.join(cols)}) VALUES ({marks})"  # noqa: S608 - fixed names
    with engine.connect() as conn:
        patient, device = conn.execute(text("SELECT patient_id, id FROM devices LIMIT 1")).one()
        batch = int(
            conn.execute(text("SELECT coalesce(max(id), 0) FROM ingest_batches")).scalar() or 0
        )
        conn.rollback()
        dbapi = conn.connection.driver_connection
        assert dbapi is not None
        now = datetime.now(UTC)
        stamp = now if pg else now.strftime("%Y-%m-%d %H:%M:%S.%f")
        run = time.time_ns()
        # Prepared before the clock starts. Natural keys are SHA-256 hex, as the ingest path
        # makes them: sequential keys would append to the unique index instead of inserting
        # at random places in it, and would not be the same rows.
        batches = [
            [
                (
                    patient,
                    device,
                    batch,
                    "validated_cuff",
                    "",
                    "",
                    "blood_pressure",
                    "85354-9",
                    stamp,
                    None,
                    "second",
                    "2025-01-01T00:00:00Z",
                    120.0,
                    80.0,
                    None,
                    "mm[Hg]",
                    None,
                    0.0,
                    0.0,
                    "accepted",
                    "[]",
                    "fhir",
                    "0" * 64,
                    stamp,
                    f"raw-{run}-{b:06d}-{i:06d}"
                    if sequential_keys
                    else hashlib.sha256(f"raw|{run}|{b}|{i}".encode()).hexdigest(),
                    "{}",
                )
                for i in range(size)
            ]
            for b in range(rows // size)
        ]
        t0 = time.perf_counter()
        for values in batches:
            cur = dbapi.cursor()
            if not pg:
                cur.execute("BEGIN IMMEDIATE")
            cur.executemany(sql, values)
            dbapi.commit() if pg else cur.execute("COMMIT")
            cur.close()
        elapsed = time.perf_counter() - t0
    engine.dispose()
    return rows / elapsed


def latency(
    base: str, keys: list[str], devices_n: int = 50, per_device: int = 20, interval: float = 0.5
) -> tuple[float, float]:
    """Single-reading p50/p99 (ms): `devices_n` devices, each posting every `interval` s.

    An open-loop schedule (each device keeps its own clock), so a slow answer shows up as
    latency rather than as a lower offered rate.
    """
    samples: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    # Clients are built and connected before the clock starts: building one costs the
    # client process milliseconds of CPU that would otherwise land on early samples.
    clients = [httpx2.Client(base_url=base, timeout=60.0) for _ in range(devices_n)]
    for warm in clients:
        warm.get("/healthz")
    t_zero = time.perf_counter() + 0.2

    def device(d: int) -> None:
        session = clients[d]
        start = t_zero + interval * d / devices_n  # spread the first sends
        for i in range(per_device):
            due = start + i * interval
            time.sleep(max(0.0, due - time.perf_counter()))
            body = orjson.dumps(observation(10_000_000 + i, d))
            t0 = time.perf_counter()
            r = session.post(
                "/api/v1/device/observations",
                content=body,
                headers={"Authorization": f"Bearer {keys[d]}", "Content-Type": FHIR},
            )
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                samples.append(dt)
                if r.status_code != 201:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=device, args=(d,)) for d in range(devices_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for done in clients:
        done.close()
    if failures:
        raise SystemExit(f"latency run: {failures[:3]}")
    q = statistics.quantiles(samples, n=100)
    return q[49], q[98]


def run(
    label: str, url: str, workdir: Path, batches: int, workers: int, admit: int
) -> dict[str, Any]:
    """Benchmark one database."""
    keys = setup(url, 50)
    env = clean_env(
        CLINAIOPS_ENVIRONMENT="dev",
        CLINAIOPS_DATABASE_URL=url,
        CLINAIOPS_DATA_DIR=str(workdir),
        CLINAIOPS_MAX_CONCURRENT_REQUESTS=str(admit),
        CLINAIOPS_LOOP_WORKER_SECONDS="0",  # ingest alone is measured
    )
    server = LiveServer(["serve", "--workers", str(workers)], env, workdir).start()
    try:
        throughput(server.base_url, keys, 2)  # warm-up: imports, caches, pools
        rate, stored = throughput(server.base_url, keys, batches)
        p50, p99 = latency(server.base_url, keys)
    finally:
        server.stop()
    raw = raw_insert_rate(url)
    raw_sequential = raw_insert_rate(url, sequential_keys=True)
    return {
        "db": label,
        "e2e_readings_per_s": rate,
        "stored": stored,
        "raw_insert_per_s": raw,
        "ratio": rate / raw,
        "raw_sequential_per_s": raw_sequential,
        "ratio_sequential": rate / raw_sequential,
        "p50_ms": p50,
        "p99_ms": p99,
    }


def fresh_postgres_database(server_url: str) -> str:
    """Create an empty database on the server named by `server_url` (dropped at exit)."""
    base = make_url(server_url)
    name = f"clinaiops_bench_{int(time.time())}"
    admin = make_engine(
        base.set(database="postgres").render_as_string(hide_password=False), pool=False
    )
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    atexit.register(drop)
    return base.set(database=name).render_as_string(hide_password=False)


def main() -> None:
    """Run and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--postgres",
        help="a PostgreSQL server URL; a fresh database is "
        "created on it for the run and dropped after",
    )
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--admit", type=int, default=32, help="CLINAIOPS_MAX_CONCURRENT_REQUESTS per server process"
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results.append(
            run(
                "SQLite",
                f"sqlite:///{work / 'bench.db'}",
                work,
                args.batches,
                args.workers,
                args.admit,
            )
        )
        if args.postgres:
            url = fresh_postgres_database(args.postgres)
            results.append(run("PostgreSQL", url, work, args.batches, args.workers, args.admit))
    print(
        f"{'database':<11} {'e2e readings/s':>15} {'raw inserts/s':>14} {'ratio':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'raw seq-keys/s':>15} {'ratio':>6}"
    )
    for r in results:
        print(
            f"{r['db']:<11} {r['e2e_readings_per_s']:>15,.0f} {r['raw_insert_per_s']:>14,.0f} "
            f"{r['ratio']:>6.2f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
            f"{r['raw_sequential_per_s']:>15,.0f} {r['ratio_sequential']:>6.2f}"
        )
    print(
        "throughput: batches of 1,000 FHIR Observations, 4 concurrent clients; latency: "
        "50 devices each posting one reading every 500 ms (100 readings/s offered)"
    )
    print(
        "raw inserts/s: the same rows (SHA-256 natural keys, as ingest makes them); raw "
        "seq-keys/s: the same rows with ascending keys, for reference"
    )
    print("targets: SQLite >= 15,000 readings/s, ratio >= 0.25, p99 < 30 ms")


if __name__ == "__main__":
    main()
