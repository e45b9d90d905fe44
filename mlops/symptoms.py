"""Simulated patient-reported symptoms for the synthetic cohort (pure, deterministic).

The device simulator (`device_ingest.simulator`) yields readings and doses; this module adds
what a patient would report through the app on the same simulated day, so that training
data, the usual-care comparison and `clinaiops simulate` all carry symptom reports and the
model's symptom features (`mlops.features`) have something to learn from.

The model, per patient and day (probabilities per day, each symptom drawn independently;
a day with at least one symptom gives one report in the evening, 18:00-21:00 UTC):

* `dizziness`: 0.5% a day, plus up to 50% the lower the day's blood pressure, on a logistic
  curve centred at 95 mmHg systolic (scale 5 mmHg): about 37% at 90, 13% at 100, 2% at 110.
* `fainting`: up to 10% on a logistic curve centred at 82 mmHg (scale 4): rare above 90.
* `fatigue`: 1%, plus up to 10% at low pressure (the dizziness curve).
* `headache`: 1%, plus up to 15% on a logistic curve centred at 170 mmHg (scale 8).
* `swelling`: 0.2%, plus 1% per ladder unit (step + 1) on amlodipine (ankle oedema).
* `cough`: 0.2%, plus 1.5% on lisinopril (ACE-inhibitor cough).
* `other`: 0.2%, with the note "Felt unwell." (simulated notes hold no other text).

"The day's blood pressure" is the lowest validated-cuff systolic reading of the day
(artifacts excluded), or the patient's underlying systolic pressure on a day without one.

Randomness: each (patient, day) draws from its own stream keyed by the seed, the pseudonym
and the day, separate from the device simulator's streams, with a fixed number of draws: the
same seed gives the same reports, and adding symptoms changes no reading.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np

from device_ingest.simulator import DayOutput, PatientDay, SimPatient
from mlops.features import SymptomPoint

# Bump when the model above changes: training data built with another model differ.
SYMPTOM_MODEL_VERSION: Final = "clinaiops-sim-symptoms/1"
SYMPTOM_CODES: Final = (
    "dizziness",
    "fainting",
    "fatigue",
    "headache",
    "swelling",
    "cough",
    "other",
)
OTHER_NOTE: Final = "Felt unwell."
_STREAM: Final = 2  # spawn-key prefix; the device simulator's day streams use 1
_REPORT_HOUR: Final = 18
_REPORT_WINDOW_MINUTES: Final = 180


@dataclass(frozen=True, slots=True)
class SimSymptomReport:
    """A symptom report as the patient's app would send it."""

    pseudonym: str
    time: datetime  # UTC
    symptoms: tuple[str, ...]
    note: str = ""

    def point(self) -> SymptomPoint:
        """The report as the feature module sees a stored one."""
        return SymptomPoint(time=self.time, symptoms=frozenset(self.symptoms))


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def day_sbp(day: PatientDay) -> float:
    """The day's lowest validated-cuff SBP (artifacts excluded), else the underlying SBP."""
    cuff = [
        r.systolic
        for r in day.readings
        if r.device_kind == "validated_cuff" and not r.artifact and r.systolic is not None
    ]
    return min(cuff) if cuff else day.underlying_sbp


def probabilities(patient: SimPatient, *, sbp: float, step: int) -> dict[str, float]:
    """Each symptom's probability on a day with this systolic pressure and ladder step."""
    low = _logistic((95.0 - sbp) / 5.0)
    return {
        "dizziness": 0.005 + 0.5 * low,
        "fainting": 0.1 * _logistic((82.0 - sbp) / 4.0),
        "fatigue": 0.01 + 0.1 * low,
        "headache": 0.01 + 0.15 * _logistic((sbp - 170.0) / 8.0),
        "swelling": 0.002 + (0.01 * (step + 1) if patient.drug == "amlodipine" else 0.0),
        "cough": 0.002 + (0.015 if patient.drug == "lisinopril" else 0.0),
        "other": 0.002,
    }


def _rng(seed: int, pseudonym: str, day: int) -> np.random.Generator:
    name_key = int.from_bytes(hashlib.sha256(pseudonym.encode()).digest()[:8], "big")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM, name_key, day)))


def patient_day_report(
    patient: SimPatient, day: PatientDay, *, seed: int, day_index: int, date_midnight: datetime
) -> SimSymptomReport | None:
    """The patient's report for one simulated day, or None when nothing was felt."""
    rng = _rng(seed, patient.pseudonym, day_index)
    draws = rng.random(len(SYMPTOM_CODES))  # always the same number of draws
    minute = int(rng.integers(_REPORT_WINDOW_MINUTES))
    p = probabilities(patient, sbp=day_sbp(day), step=day.step)
    felt = tuple(code for code, u in zip(SYMPTOM_CODES, draws, strict=True) if u < p[code])
    if not felt:
        return None
    return SimSymptomReport(
        pseudonym=patient.pseudonym,
        time=date_midnight + timedelta(hours=_REPORT_HOUR, minutes=minute),
        symptoms=felt,
        note=OTHER_NOTE if "other" in felt else "",
    )


def day_reports(
    out: DayOutput, patients: tuple[SimPatient, ...] | list[SimPatient], *, seed: int
) -> dict[str, SimSymptomReport]:
    """Every patient's report for a simulated day, by pseudonym (patients without one absent)."""
    midnight = datetime(out.date.year, out.date.month, out.date.day, tzinfo=UTC)
    reports = {}
    for patient in patients:
        report = patient_day_report(
            patient,
            out.patients[patient.pseudonym],
            seed=seed,
            day_index=out.day,
            date_midnight=midnight,
        )
        if report is not None:
            reports[patient.pseudonym] = report
    return reports
