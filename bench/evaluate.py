"""Evaluation benchmark: the patient-AI loop's daily run over many simulated patients.

Populates a SQLite database with N patients (default 10,000), each on a 3-step ladder with the
demo envelope, 14 days of validated-cuff readings (4 a day) and daily dose events, and a model
v1 trained on a small simulated cohort. Then measures, in this order:

1. The daily run, as `clinaiops loop run --daily` runs it: `loops.dispatch.evaluate_all` with
   the production model, `--chunk` patients per transaction (default `loops.dispatch.CHUNK`,
   200): per chunk one history query, features per patient, one model forward, batched exact
   SHAP, envelope routing, the proposal / alert / notice / evaluation rows, one audit entry
   per evaluation, and one commit; with the CLI's garbage-collector setting. Prints
   evaluations/s over all N patients (the model is loaded before the clock starts).
2. A single evaluation, the path new readings take: `loops.flows.evaluate()` for one patient
   in its own transaction, commit included, for a sample of `--single` patients (default
   500, spread over the cohort), trigger `new_readings`, one hour after the daily run. It is
   measured after the daily run so that the daily figure starts from the same state as the
   earlier runs; the sample patients then carry the daily run's rows (moved regimens,
   proposals to supersede), as a patient sending readings later that day would. Prints
   p50/p99 of one evaluation and the sequential rate of this one-per-transaction path.

Targets (issue 4): at least 500 evaluations/s over 10,000 patients, p99 under 50 ms.
Usage: python bench/evaluate.py [--patients 10000] [--chunk 200] [--single 500]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.auth.models import Role  # noqa: E402
from app.auth.service import create_user  # noqa: E402
from app.core.config import Environment, Settings  # noqa: E402
from app.db import make_engine, session_factory  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.patients.models import Patient, Sex  # noqa: E402
from audit.models import AuditEntry  # noqa: E402
from device_ingest.models import Device, IngestBatch, MedicationEvent, Reading  # noqa: E402
from loops import service  # noqa: E402
from loops.dispatch import CHUNK, evaluate_all  # noqa: E402
from loops.flows import evaluate  # noqa: E402
from loops.models import Evaluation, MedicationRegimen  # noqa: E402
from mlops import serving  # noqa: E402
from mlops.training import InitialTraining, train_initial  # noqa: E402
from policies.envelope import default_rules  # noqa: E402
from policies.models import SafetyEnvelope  # noqa: E402

NOW = datetime.now(UTC).replace(microsecond=0)
TARGET_RATE = 500
TARGET_P99_MS = 50


def populate(url: str, n: int, models: Path, seed: int = 11) -> list[str]:
    """Patients, regimens, envelopes, a device each, 14 days of readings and doses."""
    upgrade(url)
    engine = make_engine(url)
    rng = np.random.default_rng(seed)
    settings = Settings(environment=Environment.DEV, argon2_time_cost=1, argon2_memory_kib=1024)
    factory = session_factory(engine)
    with factory() as s:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            train_initial(
                s,
                models_dir=models,
                created_by="bench",
                config=InitialTraining(n_patients=80, days=56, epochs=10),
            )
        author = create_user(
            s,
            username="benchdoc",
            password="x" * 12,
            full_name="Bench",
            role=Role.CLINICIAN,
            settings=settings,
        )
        ladder = service.create_ladder(s, drug="amlodipine", steps=[2.5, 5.0, 10.0])
        s.commit()
        ids = []
        start = NOW - timedelta(days=60)
        for i in range(n):
            pid = f"00000000-0000-4000-8000-{i:012d}"
            ids.append(pid)
            s.add(
                Patient(
                    id=pid,
                    pseudonym=f"B-{i:06d}",
                    given_name="B",
                    family_name=str(i),
                    birth_date=date(1950 + i % 40, 1, 1),
                    sex=Sex.FEMALE if i % 2 else Sex.MALE,
                    created_at=start,
                )
            )
        s.flush()
        regimens, envelopes, devices, batches = [], [], [], []
        for i, pid in enumerate(ids):
            regimens.append(
                {
                    "id": f"r{i}",
                    "patient_id": pid,
                    "ladder_id": ladder.id,
                    "current_step": i % 2,
                    "status": "active",
                    "started_at": start,
                    "last_changed_at": start,
                }
            )
            envelopes.append(
                {
                    "patient_id": pid,
                    "version": 1,
                    "rules": default_rules(3).model_dump(mode="json"),
                    "author_id": author.id,
                    "reason": "bench",
                    "effective_at": start,
                    "created_at": start,
                }
            )
            devices.append(
                {
                    "id": f"d{i}",
                    "patient_id": pid,
                    "device_class": "validated_cuff",
                    "manufacturer": "",
                    "model": "",
                    "firmware_version": "",
                    "key_prefix": f"{i:016d}",
                    "key_hash": "0" * 64,
                    "created_at": start,
                    "calibration_systolic": 0.0,
                    "calibration_diastolic": 0.0,
                }
            )
            batches.append(
                {
                    "id": i + 1,
                    "device_id": f"d{i}",
                    "patient_id": pid,
                    "received_at": start,
                    "content_type": "x",
                    "source_format": "fhir",
                    "bundle_type": "",
                    "body_sha256": "0" * 64,
                    "body_bytes": 0,
                    "entries": 28,
                    "accepted": 28,
                    "quarantined": 0,
                    "duplicates": 0,
                    "rejected": 0,
                }
            )
        for model, rows in (
            (MedicationRegimen, regimens),
            (SafetyEnvelope, envelopes),
            (Device, devices),
            (IngestBatch, batches),
        ):
            s.execute(insert(model), rows)
        s.commit()
        for chunk in range(0, n, 500):
            readings, doses = [], []
            for i in range(chunk, min(n, chunk + 500)):
                pid = ids[i]
                base = rng.normal(140, 12)
                for d in range(14):
                    day = NOW - timedelta(days=d + 1)
                    doses.append(
                        {
                            "patient_id": pid,
                            "device_id": f"d{i}",
                            "batch_id": i + 1,
                            "medication": "amlodipine",
                            "taken": bool(rng.random() < 0.9),
                            "effective_start": day,
                            "effective_precision": "second",
                            "effective_raw": "",
                            "payload_sha256": "0" * 64,
                            "received_at": day,
                            "natural_key": f"m{i}-{d}",
                        }
                    )
                    for k, hour in enumerate((7, 7, 20, 20)):
                        t = day.replace(hour=hour, minute=k)
                        sbp = float(round(base + rng.normal(0, 6), 1))
                        readings.append(
                            {
                                "patient_id": pid,
                                "device_id": f"d{i}",
                                "batch_id": i + 1,
                                "device_class": "validated_cuff",
                                "kind": "blood_pressure",
                                "code": "85354-9",
                                "effective_start": t,
                                "effective_precision": "second",
                                "effective_raw": "",
                                "systolic": sbp,
                                "diastolic": float(round(sbp * 0.6, 1)),
                                "unit": "mm[Hg]",
                                "status": "accepted",
                                "quarantine_reasons": [],
                                "source_format": "fhir",
                                "payload_sha256": "0" * 64,
                                "received_at": t,
                                "natural_key": f"r{i}-{d}-{k}",
                                "context": {},
                                "calibration_systolic": 0.0,
                                "calibration_diastolic": 0.0,
                            }
                        )
            s.execute(insert(Reading), readings)
            s.execute(insert(MedicationEvent), doses)
            s.commit()
    engine.dispose()
    return ids


def daily(url: str, chunk: int) -> tuple[float, dict[str, int], int]:
    """The daily run as production runs it; returns evaluations/s, outcomes, audit entries."""
    # As `clinaiops loop run --daily` does (app/cli.py): collect as rarely as a server.
    gc.set_threshold(Settings(environment=Environment.DEV).gc_gen0_threshold, 20, 20)
    engine = make_engine(url)
    factory = session_factory(engine)
    with factory() as s:
        serving.production(s)  # load and cache the artifact, as a long-lived process has
        s.rollback()
    t0 = time.perf_counter()
    report = evaluate_all(factory, now=NOW, predictor=serving.production, chunk=chunk)
    elapsed = time.perf_counter() - t0
    if report.failed:
        raise SystemExit(f"{len(report.failed)} evaluations failed")
    with factory() as s:
        outcomes = {
            str(outcome): int(n)
            for outcome, n in s.execute(
                select(Evaluation.outcome, func.count())
                .where(Evaluation.trigger == "daily")
                .group_by(Evaluation.outcome)
            )
        }
        audited = s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "loop.evaluate")
        )
        s.rollback()
    engine.dispose()
    return len(report.evaluated) / elapsed, outcomes, int(audited or 0)


def single(url: str, ids: list[str], n: int) -> tuple[float, float, float]:
    """One evaluation per transaction for a sample of patients; returns p50, p99 (ms), rate."""
    engine = make_engine(url)
    factory = session_factory(engine)
    with factory() as s:
        predictor = serving.production(s)
        s.rollback()
    sample = ids[:: max(1, len(ids) // n)][:n]
    later = NOW + timedelta(hours=1)
    samples: list[float] = []
    t0 = time.perf_counter()
    for pid in sample:
        t = time.perf_counter()
        with factory() as s:
            evaluate(s, patient_id=pid, trigger="new_readings", now=later, predictor=predictor)
            s.commit()
        samples.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - t0
    engine.dispose()
    q = statistics.quantiles(samples, n=100)
    return q[49], q[98], len(sample) / elapsed


def main() -> None:
    """Populate, run the daily run, time single evaluations, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=CHUNK)
    parser.add_argument("--single", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'evaluate.db'}"
        t = time.perf_counter()
        ids = populate(url, args.patients, Path(tmp) / "models")
        print(f"populated {len(ids)} patients in {time.perf_counter() - t:.0f} s")
        rate, outcomes, audited = daily(url, args.chunk)
        p50, p99, single_rate = single(url, ids, args.single)
    print(f"daily run: {len(ids):,} patients, chunks of {args.chunk}")
    print(f"{'database':<9} {'patients':>9} {'evaluations/s':>14} {'p50 ms':>7} {'p99 ms':>7}")
    print(f"{'SQLite':<9} {len(ids):>9,} {rate:>14,.0f} {p50:>7.1f} {p99:>7.1f}")
    print(f"outcomes: {dict(sorted(outcomes.items()))}; loop.evaluate audit entries: {audited:,}")
    print(
        f"single evaluations (one transaction each, {args.single} patients): "
        f"{single_rate:,.0f}/s sequential"
    )
    print(
        f"targets: >= {TARGET_RATE} evaluations/s (ratio {rate / TARGET_RATE:.2f}), "
        f"p99 < {TARGET_P99_MS} ms (ratio {p99 / TARGET_P99_MS:.2f}, below 1 is met)"
    )


if __name__ == "__main__":
    main()
