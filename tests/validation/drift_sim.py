"""Simulated feature frames for the drift tests: a cohort's features as of the day after its
last simulated day, one row per patient, with the model of the cuff that measured them."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pandas as pd

from device_ingest.simulator import Cohort, DayOutput, Scenario
from mlops import dataset
from mlops.features import (
    FEATURE_NAMES,
    DoseEvent,
    PatientFacts,
    ReadingPoint,
    RegimenFacts,
    SymptomPoint,
    compute_features,
)
from mlops.symptoms import day_reports

A_AND_D = "A&D UA-651"
OMRON = "Omron HEM-7361T"


def simulate(
    n: int, seed: int, *, days: int = 21, scenario: Scenario | None = None
) -> tuple[Cohort, list[DayOutput]]:
    """Run a cohort for `days` days on its start steps."""
    cohort = Cohort(n, seed, scenario)
    return cohort, [cohort.simulate_day(day) for day in range(days)]


def as_of(outputs: list[DayOutput]) -> datetime:
    """Midnight UTC after the last simulated day."""
    return datetime.combine(outputs[-1].date + timedelta(days=1), time(), UTC)


def frame(
    cohort: Cohort,
    outputs: list[DayOutput],
    *,
    cuff_only: bool = False,
    symptoms: bool = True,
) -> pd.DataFrame:
    """Each patient's features as of the day after the last output, with `device_model`.

    `cuff_only` keeps validated-cuff readings and doses only (what the database tests store)."""
    readings: dict[str, list[ReadingPoint]] = {p.pseudonym: [] for p in cohort.patients}
    doses: dict[str, list[DoseEvent]] = {p.pseudonym: [] for p in cohort.patients}
    reports: dict[str, list[SymptomPoint]] = {p.pseudonym: [] for p in cohort.patients}
    for out in outputs:
        for r in out.readings():
            if cuff_only and r.device_kind != "validated_cuff":
                continue
            readings[r.pseudonym].append(dataset.reading_point(r))
        for e in out.medication_events():
            doses[e.pseudonym].append(DoseEvent(time=e.time, taken=e.taken))
        if symptoms:
            for name, report in day_reports(out, cohort.patients, seed=cohort.seed).items():
                reports[name].append(report.point())
    when = as_of(outputs)
    rows, kept = [], []
    for p in cohort.patients:
        vector = compute_features(
            readings=readings[p.pseudonym],
            doses=doses[p.pseudonym],
            symptoms=reports[p.pseudonym],
            patient=PatientFacts(sex=p.sex, diabetes=p.diabetes, ckd=p.ckd, age=p.age),
            regimen=RegimenFacts(step=p.start_step, ladder_steps=len(p.ladder_mg)),
            as_of=when,
        )
        if vector.sufficient:  # the model scores only these
            rows.append(vector.values)
            kept.append(p)
    out_frame = pd.DataFrame(rows, columns=list(FEATURE_NAMES), index=[p.pseudonym for p in kept])
    out_frame["device_model"] = [p.cuff_model for p in kept]
    return out_frame
