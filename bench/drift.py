"""Drift benchmark: the drift job's analysis on 100,000 current rows against 100,000 reference
rows of the model's real feature columns, with its peak memory.

The frames are synthetic but shaped like the real ones: a small simulated cohort (the device
simulator and `mlops.features.compute_features`, as the drift tests use) is resampled to the
requested size with jitter on the continuous features; each row gets one of four cuff models;
in the current frame one model reads 10/10 mmHg high on the blood-pressure features (the
firmware-drift scenario), so attribution has work to do. Then, timed:

1. `validation.monitoring.analyse`: the Evidently report over every feature with its HTML
   (Wasserstein / Jensen-Shannon at this size), per-segment tests for each device model, sex,
   age band and diabetes/CKD, and the attribution.
2. Writing the report's JSON (Evidently's snapshot with the summary) and HTML, as the job does.

Peak memory is the process's maximum resident set size (getrusage), printed with the resident
size before the run. Bounded: at most 1,000,000 rows per frame, and an alarm ends the run
after --limit seconds (default 900).

Usage: python bench/drift.py [--rows 100000] [--reference-rows 100000] [--limit 900]
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_ingest.simulator import Cohort  # noqa: E402
from mlops import dataset  # noqa: E402
from mlops.features import (  # noqa: E402
    FEATURE_NAMES,
    NULLABLE_FEATURES,
    DoseEvent,
    PatientFacts,
    RegimenFacts,
    compute_features,
)
from validation import monitoring  # noqa: E402

MAX_ROWS = 1_000_000
MODELS = ("Omron HEM-7361T", "A&D UA-651", "Withings BPM Connect", "Microlife B6")
DRIFTING = "A&D UA-651"
SEED_PATIENTS = 150
SEED_DAYS = 21


def seed_frame() -> pd.DataFrame:
    """Features of a small simulated cohort, one row per patient with enough readings."""
    cohort = Cohort(SEED_PATIENTS, 17)
    readings: dict[str, list] = {p.pseudonym: [] for p in cohort.patients}  # type: ignore[type-arg]
    doses: dict[str, list[DoseEvent]] = {p.pseudonym: [] for p in cohort.patients}
    last = None
    for day in range(SEED_DAYS):
        last = cohort.simulate_day(day)
        for r in last.readings():
            readings[r.pseudonym].append(dataset.reading_point(r))
        for e in last.medication_events():
            doses[e.pseudonym].append(DoseEvent(time=e.time, taken=e.taken))
    assert last is not None
    as_of = datetime.combine(last.date + timedelta(days=1), datetime.min.time(), UTC)
    rows = []
    for p in cohort.patients:
        vector = compute_features(
            readings=readings[p.pseudonym],
            doses=doses[p.pseudonym],
            symptoms=[],
            patient=PatientFacts(sex=p.sex, diabetes=p.diabetes, ckd=p.ckd, age=p.age),
            regimen=RegimenFacts(step=p.start_step, ladder_steps=len(p.ladder_mg)),
            as_of=as_of,
        )
        if vector.sufficient:
            rows.append(vector.values)
    return pd.DataFrame(rows, columns=list(FEATURE_NAMES))


def synthetic(seed: pd.DataFrame, rows: int, rng: np.random.Generator, drift: bool) -> pd.DataFrame:
    """`rows` rows resampled from `seed`, continuous features jittered, a cuff model each."""
    frame = seed.iloc[rng.integers(0, len(seed), rows)].reset_index(drop=True)
    continuous = [
        n
        for n in FEATURE_NAMES
        if n in NULLABLE_FEATURES and n != "age_band" and seed[n].nunique() > 10
    ]
    for name in continuous:
        spread = float(np.nanstd(seed[name])) or 1.0
        frame[name] = frame[name] + rng.normal(0.0, 0.2 * spread, rows)
    frame["device_model"] = rng.choice(MODELS, rows, p=(0.4, 0.3, 0.2, 0.1))
    if drift:
        hit = frame["device_model"] == DRIFTING
        bp = [
            n
            for n in FEATURE_NAMES
            if n.startswith(("cuff_sbp_mean", "cuff_dbp_mean", "cuff_sbp_min"))
            and not n.endswith("_missing")
        ]
        frame.loc[hit, bp] = frame.loc[hit, bp] + 10.0
    return frame


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reference-rows", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=900, help="seconds before the run is ended")
    args = parser.parse_args()
    if not (1 <= args.rows <= MAX_ROWS and 1 <= args.reference_rows <= MAX_ROWS):
        parser.error(f"rows must lie in 1..{MAX_ROWS}")
    signal.alarm(args.limit)

    started = time.perf_counter()
    seed = seed_frame()
    rng = np.random.default_rng(2026)
    reference = synthetic(seed, args.reference_rows, rng, drift=False)
    current = synthetic(seed, args.rows, rng, drift=True)
    monitoring._evidently()  # the import (seconds) is not the job's work
    prepared = time.perf_counter() - started
    before = rss_mib()
    print(
        f"frames: {len(current):,} current x {len(reference):,} reference rows, "
        f"{len(FEATURE_NAMES)} features ({prepared:.1f} s to build; RSS {before:.0f} MiB)"
    )

    t0 = time.perf_counter()
    analysis = monitoring.analyse(current, reference)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        document = {"summary": {"segments": len(analysis.segments)}, **analysis.evidently}
        (Path(tmp) / "report.json").write_text(json.dumps(document, default=str))
        assert analysis.html is not None
        (Path(tmp) / "report.html").write_text(analysis.html)
        html_mib = len(analysis.html.encode()) / 2**20
    t2 = time.perf_counter()

    tested = len(analysis.features)
    segment_tests = sum(len(s.columns) for s in analysis.segments)
    print(
        f"analyse: {t1 - t0:.1f} s ({tested} features overall, {len(analysis.segments)} "
        f"segments, {segment_tests} segment tests)"
    )
    print(f"write JSON + HTML: {t2 - t1:.1f} s (HTML {html_mib:.1f} MiB)")
    print(
        f"drift job total: {t2 - t0:.1f} s; peak RSS {rss_mib():.0f} MiB (before the run "
        f"{before:.0f} MiB)"
    )
    located = [f"{a.dimension}={a.value}" for a in analysis.attributions]
    print(f"drifted features overall: {len(analysis.drifted_features)}; located: {located}")


if __name__ == "__main__":
    main()
