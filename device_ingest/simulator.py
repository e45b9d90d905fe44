"""A deterministic synthetic cohort of hypertensive patients on home monitoring (pure, no I/O).

Each simulated day yields, per patient, validated-cuff blood pressure (morning and evening,
usually in duplicate), hourly cuffless estimates, heart rate and a step count from a
wearable while worn, and one dose event (taken or missed). `to_fhir_observation` and
`to_fhir_medication_administration` turn them into documents `device_ingest.fhir` parses.

Conventions a reader of the output should know:

* Clock: every patient lives on UTC, so "07:00" in the output is their morning.
* Drug effect: ladder step `s` is `s + 1` units of effect (step 0 is the first dose, not no
  drug); one unit lowers home BP by 9/5 mmHg at steady state (Law et al., BMJ 2003), scaled
  by the patient's response factor. The effect follows the doses actually taken through a
  first-order lag with a 5-day time constant: each day it moves 1 - e^(-1/5) ≈ 18% of the
  way to `units x response factor x (1 if today's dose was taken else 0)`. A step change
  therefore reaches ~94% of its effect in two weeks, and the effect is scaled by an
  exponentially weighted share of recent doses taken. Patients enter the simulation on
  their start step at steady state for their adherence propensity.
* Randomness: patient i's attributes come from child i of `SeedSequence(seed).spawn(n)`, so
  they do not depend on the cohort size; each (patient, day) then draws from its own stream
  keyed by the seed, the pseudonym and the day, with a fixed number of draws whatever the
  ladder step. The same seed therefore gives the same noise with and without a titration,
  and the difference between two such runs is the drug effect alone.
* Schedule: cuff sessions fall in 06:30-08:30 (with a morning surge of +8/+4 mmHg) and
  19:30-22:00, a duplicate a minute later in 85% of sessions; about one day in 25 has no
  cuff reading and single sessions are skipped too. The wearable goes on at 06-08 h for
  14-17 h (not at all on ~3% of days): one BP estimate and one heart rate an hour, plus one
  step count for the worn period. Busy hours raise the wearable's BP and heart rate; cuff
  readings are taken at rest. `baseline_sbp` is the untreated resting (evening) home BP.
* Scenarios: firmware drift is added to the blood pressure of every device of the named
  model (cuff or wearable) from its day on; the seasonal shift peaks in mid-January; a
  subgroup replaces the response factor of the patients it matches.
* Artifacts: about 0.5% of blood-pressure readings (cuff and wearable) are replaced by a
  well-formed but implausible value (systolic above 300, or diastolic above systolic) that
  `device_ingest.rules.quarantine_reasons` flags; `SimReading.artifact` marks them. All
  other readings are kept within the plausible ranges.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import numpy as np

from app.seed import LADDERS
from device_ingest.fhir import DIASTOLIC, LOINC, SYSTOLIC, UCUM
from device_ingest.formats import UNIT_MMHG, UNIT_PER_MIN, UNIT_STEPS, ReadingKind

__all__ = [
    "CUFF_MODELS",
    "WEARABLE_MODELS",
    "Cohort",
    "DayOutput",
    "DeviceKind",
    "FirmwareDrift",
    "PatientDay",
    "Scenario",
    "SimMedicationEvent",
    "SimPatient",
    "SimReading",
    "Subgroup",
    "generate_patients",
    "to_fhir_medication_administration",
    "to_fhir_observation",
]

DeviceKind = Literal["validated_cuff", "cuffless_wearable"]  # DeviceClass values
Sex = Literal["female", "male"]

CUFF_MODELS = ("Omron HEM-7361T", "A&D UA-651")
WEARABLE_MODELS = ("Aktiia Bracelet", "Samsung Galaxy Watch6")

# Steady-state lowering per ladder unit (Law et al., BMJ 2003: ~9/5 mmHg per standard dose).
STEP_EFFECT_SBP = 9.0
STEP_EFFECT_DBP = 5.0
EFFECT_TIME_CONSTANT_DAYS = 5.0
_EFFECT_RATE = 1.0 - math.exp(-1.0 / EFFECT_TIME_CONSTANT_DAYS)

MORNING_SURGE = (8.0, 4.0)  # added to morning readings (systolic, diastolic)
CUFF_NOISE_SD = (5.0, 4.0)  # per reading, independent between duplicates
WEARABLE_NOISE_SD = (10.0, 7.0)
DAY_SD = (4.0, 2.5)  # day-to-day biological variation
SESSION_SD = (3.0, 2.0)  # morning vs evening, shared by a duplicate pair
ARTIFACT_RATE = 0.005
DUPLICATE_RATE = 0.85
DAY_MISSED_RATE = 0.04
SESSION_MISSED_RATE = (0.05, 0.10)  # morning, evening
WEARABLE_OFF_RATE = 0.03  # a day on the charger
WEEKEND_ACTIVITY = 0.85
# Acute activity effect on wearable readings, per 1,000 steps in the hour.
ACTIVITY_PER_1000_STEPS = (4.0, 2.0, 10.0)  # systolic, diastolic, heart rate
LAPSE_HAZARD_PER_NONADHERENCE = 0.15  # lapse start rate per day = this x (1 - propensity)
LAPSE_DAYS = (2, 5)  # inclusive

# Readings that are not artifacts stay inside these, so only artifacts are implausible.
_SBP_CLIP = (70.0, 250.0)
_DBP_CLIP = (35.0, 140.0)
_MIN_PULSE_PRESSURE = 15.0

_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_DAY_STREAM = 1  # spawn-key prefix of the per-day streams (patient children are (i,))


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class SimPatient:
    """One synthetic patient: demographics, untreated home BP, regimen and devices."""

    pseudonym: str
    age: int
    sex: Sex
    diabetes: bool
    ckd: bool
    baseline_sbp: float  # untreated seated home BP, mmHg
    baseline_dbp: float
    baseline_hr: float  # resting, /min
    mean_daily_steps: float
    drug: str
    rxnorm_code: str
    ladder_mg: tuple[float, ...]  # dose at each ladder step
    start_step: int
    adherence: float  # propensity to take a dose, lapses included
    response_factor: float  # 1.0 = the usual drug effect
    cuff_model: str
    wearable_model: str
    wearable_bias_sbp: float  # this patient's cuffless estimate error, mmHg
    wearable_bias_dbp: float


@dataclass(frozen=True, slots=True)
class FirmwareDrift:
    """From `from_day` on, readings of `device_model` read high by a fixed amount."""

    device_model: str
    from_day: int
    systolic_mmhg: float = 10.0
    diastolic_mmhg: float = 10.0


@dataclass(frozen=True, slots=True)
class Subgroup:
    """Patients matching `predicate` respond with `response_factor` of the usual effect."""

    name: str
    predicate: Callable[[SimPatient], bool]
    response_factor: float = 0.5

    @classmethod
    def age_at_least(cls, age: int, response_factor: float = 0.5) -> Subgroup:
        """Patients aged `age` or more."""
        return cls(f"age>={age}", lambda p: p.age >= age, response_factor)

    @classmethod
    def with_diabetes(cls, response_factor: float = 0.5) -> Subgroup:
        """Patients with diabetes."""
        return cls("diabetes", lambda p: p.diabetes, response_factor)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Switches for what the monitoring team should notice; the default is none."""

    firmware_drift: FirmwareDrift | None = None
    seasonal_amplitude_mmhg: float = 0.0  # systolic; diastolic moves by half
    subgroup: Subgroup | None = None


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class SimReading:
    """One device reading as a plain record (blood pressure, heart rate or steps)."""

    pseudonym: str
    device_kind: DeviceKind
    device_model: str
    time: datetime  # UTC; for steps the start of the counted period
    kind: ReadingKind
    systolic: float | None = None
    diastolic: float | None = None
    value: float | None = None
    end: datetime | None = None  # steps only: the end of the counted period
    artifact: bool = False


@dataclass(frozen=True, slots=True)
class SimMedicationEvent:
    """A dose taken or missed."""

    pseudonym: str
    time: datetime
    drug: str
    rxnorm_code: str
    dose_mg: float
    taken: bool


@dataclass(frozen=True, slots=True)
class PatientDay:
    """One patient's day: what the devices sent, and the truth behind it."""

    pseudonym: str
    step: int
    dose_taken: bool
    drug_effect_sbp: float  # current lowering, mmHg
    drug_effect_dbp: float
    underlying_sbp: float  # baseline - drug effect + season; no daily variation or noise
    underlying_dbp: float
    readings: tuple[SimReading, ...]
    medication_events: tuple[SimMedicationEvent, ...]


@dataclass(frozen=True, slots=True)
class DayOutput:
    """Everything one simulated day produced, by pseudonym."""

    day: int
    date: date
    patients: Mapping[str, PatientDay]

    def readings(self) -> list[SimReading]:
        """All patients' readings."""
        return [r for p in self.patients.values() for r in p.readings]

    def medication_events(self) -> list[SimMedicationEvent]:
        """All patients' dose events."""
        return [e for p in self.patients.values() for e in p.medication_events]


# --------------------------------------------------------------------------- patients


def generate_patients(
    n_patients: int, seed: int, subgroup: Subgroup | None = None
) -> list[SimPatient]:
    """Patients P-0001... from `seed`; patient i is the same in any cohort size."""
    children = np.random.SeedSequence(seed).spawn(n_patients)
    patients = [
        _make_patient(f"P-{i + 1:04d}", np.random.default_rng(child))
        for i, child in enumerate(children)
    ]
    return [_with_subgroup(p, subgroup) for p in patients]


def _make_patient(pseudonym: str, rng: np.random.Generator) -> SimPatient:
    age = int(np.clip(round(rng.normal(62.0, 11.0)), 35, 90))
    sbp = float(np.clip(rng.normal(150.0, 12.0), 125.0, 190.0))
    # Correlated with systolic; lower with age (isolated systolic hypertension).
    dbp = 88.0 + 0.45 * (sbp - 150.0) - 0.25 * (age - 60) + rng.normal(0.0, 6.0)
    dbp = float(np.clip(dbp, 65.0, min(115.0, sbp - 30.0)))
    ladder = LADDERS[int(rng.integers(len(LADDERS)))]
    doses = tuple(float(d) for d in ladder["steps"])
    start_step = min(int(rng.random() < 0.4), len(doses) - 1)
    poor_adherer = rng.random() < 0.2
    adherence = float(rng.uniform(0.5, 0.8) if poor_adherer else rng.uniform(0.85, 0.98))
    steps_median = max(2500.0, 9000.0 - 80.0 * (age - 45))
    return SimPatient(
        pseudonym=pseudonym,
        age=age,
        sex="female" if rng.random() < 0.5 else "male",
        diabetes=bool(rng.random() < 0.25),
        ckd=bool(rng.random() < 0.12),
        baseline_sbp=round(sbp, 1),
        baseline_dbp=round(dbp, 1),
        baseline_hr=round(float(np.clip(rng.normal(72.0, 8.0), 50.0, 100.0)), 1),
        mean_daily_steps=round(steps_median * float(np.exp(rng.normal(0.0, 0.35)))),
        drug=str(ladder["drug"]),
        rxnorm_code=str(ladder["rxnorm_code"]),
        ladder_mg=doses,
        start_step=start_step,
        adherence=round(adherence, 3),
        response_factor=1.0,
        cuff_model=CUFF_MODELS[int(rng.random() < 0.4)],
        wearable_model=WEARABLE_MODELS[int(rng.random() < 0.5)],
        wearable_bias_sbp=round(float(rng.normal(0.0, 6.0)), 1),
        wearable_bias_dbp=round(float(rng.normal(0.0, 4.0)), 1),
    )


def _with_subgroup(patient: SimPatient, subgroup: Subgroup | None) -> SimPatient:
    if subgroup is None or not subgroup.predicate(patient):
        return patient
    return replace(patient, response_factor=subgroup.response_factor)


# --------------------------------------------------------------------------- cohort


@dataclass(slots=True)
class _State:
    """What carries from one day to the next for a patient."""

    step: int
    effect_units: float  # current lowering in ladder units (before x 9/5 mmHg)
    lapse_left: int  # further days of an ongoing missed-dose lapse


class Cohort:
    """A synthetic cohort simulated one day at a time; the caller sets the ladder steps."""

    def __init__(
        self,
        n_patients: int,
        seed: int,
        scenario: Scenario | None = None,
        start: date = date(2025, 1, 6),
    ) -> None:
        scenario = Scenario() if scenario is None else scenario
        self._setup(generate_patients(n_patients, seed, scenario.subgroup), seed, scenario, start)

    @classmethod
    def from_patients(
        cls,
        patients: Sequence[SimPatient],
        seed: int,
        scenario: Scenario | None = None,
        start: date = date(2025, 1, 6),
    ) -> Cohort:
        """A cohort of given patients (the scenario's subgroup applies to them too)."""
        cohort = cls.__new__(cls)
        scenario = Scenario() if scenario is None else scenario
        cohort._setup(
            [_with_subgroup(p, scenario.subgroup) for p in patients], seed, scenario, start
        )
        return cohort

    def _setup(
        self, patients: list[SimPatient], seed: int, scenario: Scenario, start: date
    ) -> None:
        names = [p.pseudonym for p in patients]
        if len(set(names)) != len(names):
            raise ValueError("pseudonyms must be unique")
        self.patients: tuple[SimPatient, ...] = tuple(patients)
        self.seed = seed
        self.scenario = scenario
        self.start = start
        self._by_name = {p.pseudonym: p for p in patients}
        self._next_day = 0
        self._states = {
            p.pseudonym: _State(
                step=p.start_step,
                effect_units=(p.start_step + 1) * p.response_factor * p.adherence,
                lapse_left=0,
            )
            for p in patients
        }

    @property
    def next_day(self) -> int:
        """The day `simulate_day` expects next (days run 0, 1, 2, ... from `start`)."""
        return self._next_day

    def current_steps(self) -> dict[str, int]:
        """Each patient's ladder step as of the last simulated day."""
        return {name: state.step for name, state in self._states.items()}

    def simulate_day(self, day: int, steps: Mapping[str, int] | None = None) -> DayOutput:
        """Simulate `day`; `steps` sets ladder steps (patients left out keep theirs)."""
        if day != self._next_day:
            raise ValueError(f"days run in order: expected day {self._next_day}, got {day}")
        self._set_steps(steps or {})
        today = self.start + timedelta(days=day)
        out = {
            p.pseudonym: self._patient_day(p, self._states[p.pseudonym], day, today)
            for p in self.patients
        }
        self._next_day += 1
        return DayOutput(day=day, date=today, patients=out)

    def _set_steps(self, steps: Mapping[str, int]) -> None:
        for name, step in steps.items():
            patient = self._by_name.get(name)
            if patient is None:
                raise ValueError(f"no patient {name!r} in this cohort")
            if not 0 <= step < len(patient.ladder_mg):
                raise ValueError(
                    f"{name}: step {step} is not on a {len(patient.ladder_mg)}-step ladder"
                )
        for name, step in steps.items():
            self._states[name].step = step

    def _patient_day(self, p: SimPatient, state: _State, day: int, today: date) -> PatientDay:
        rng = _day_rng(self.seed, p.pseudonym, day)
        midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
        taken = _dose_taken(p, state, rng)
        target = (state.step + 1) * p.response_factor * (1.0 if taken else 0.0)
        state.effect_units += _EFFECT_RATE * (target - state.effect_units)
        effect = (STEP_EFFECT_SBP * state.effect_units, STEP_EFFECT_DBP * state.effect_units)
        season = _seasonal(self.scenario.seasonal_amplitude_mmhg, today)
        underlying = (
            p.baseline_sbp - effect[0] + season[0],
            p.baseline_dbp - effect[1] + season[1],
        )
        today_bp = (
            underlying[0] + rng.normal(0.0, DAY_SD[0]),
            underlying[1] + rng.normal(0.0, DAY_SD[1]),
        )
        drift = self._drift(day)
        readings = _cuff_readings(p, today_bp, midnight, rng, drift)
        readings += _wearable_readings(p, today_bp, midnight, today, rng, drift)
        event = _dose_event(p, state.step, taken, midnight, rng)
        return PatientDay(
            pseudonym=p.pseudonym,
            step=state.step,
            dose_taken=taken,
            drug_effect_sbp=effect[0],
            drug_effect_dbp=effect[1],
            underlying_sbp=underlying[0],
            underlying_dbp=underlying[1],
            readings=tuple(readings),
            medication_events=(event,),
        )

    def _drift(self, day: int) -> FirmwareDrift | None:
        drift = self.scenario.firmware_drift
        return drift if drift is not None and day >= drift.from_day else None


def _day_rng(seed: int, pseudonym: str, day: int) -> np.random.Generator:
    """The stream for one patient-day: random access, whatever ran before."""
    name_key = int.from_bytes(hashlib.sha256(pseudonym.encode()).digest()[:8], "big")
    sequence = np.random.SeedSequence(seed, spawn_key=(_DAY_STREAM, name_key, day))
    return np.random.default_rng(sequence)


def _seasonal(amplitude: float, today: date) -> tuple[float, float]:
    """Home BP peaks in mid-January (northern winter); diastolic moves by half."""
    phase = 2.0 * math.pi * (today.timetuple().tm_yday - 15) / 365.25
    shift = amplitude * math.cos(phase)
    return shift, shift / 2.0


# --------------------------------------------------------------------------- adherence


def _dose_taken(p: SimPatient, state: _State, rng: np.random.Generator) -> bool:
    """Bernoulli doses with occasional 2-5 day lapses; overall share taken ≈ adherence."""
    # Always the same three draws, so later draws never depend on the lapse state.
    u_lapse = rng.random()
    lapse_days = int(rng.integers(LAPSE_DAYS[0], LAPSE_DAYS[1] + 1))
    u_take = rng.random()
    if state.lapse_left > 0:
        state.lapse_left -= 1
        return False
    hazard = LAPSE_HAZARD_PER_NONADHERENCE * (1.0 - p.adherence)
    if u_lapse < hazard:
        state.lapse_left = lapse_days - 1
        return False
    # Raise the daily take rate to make up for the days lost to lapses: per day not already
    # in a lapse, h x L days are missed to lapses and (1 - h) x take doses are taken.
    mean_lapse = (LAPSE_DAYS[0] + LAPSE_DAYS[1]) / 2.0
    take = min(1.0, p.adherence * (1.0 + hazard * (mean_lapse - 1.0)) / (1.0 - hazard))
    return bool(u_take < take)


def _dose_event(
    p: SimPatient, step: int, taken: bool, midnight: datetime, rng: np.random.Generator
) -> SimMedicationEvent:
    minutes = int(rng.integers(0, 75))
    # A missed dose is logged when the dosing window closes at noon.
    when = (
        midnight + timedelta(hours=7, minutes=45 + minutes)
        if taken
        else midnight + timedelta(hours=12)
    )
    return SimMedicationEvent(
        pseudonym=p.pseudonym,
        time=when,
        drug=p.drug,
        rxnorm_code=p.rxnorm_code,
        dose_mg=p.ladder_mg[step],
        taken=taken,
    )


# --------------------------------------------------------------------------- readings


def _cuff_readings(
    p: SimPatient,
    today_bp: tuple[float, float],
    midnight: datetime,
    rng: np.random.Generator,
    drift: FirmwareDrift | None,
) -> list[SimReading]:
    day_missed = rng.random() < DAY_MISSED_RATE
    readings: list[SimReading] = []
    # (earliest minute of the day, window in minutes, surge): 06:30-08:30 and 19:30-22:00
    sessions = ((6 * 60 + 30, 120, MORNING_SURGE), (19 * 60 + 30, 150, (0.0, 0.0)))
    for i, (first_minute, window, surge) in enumerate(sessions):
        # Every session makes the same draws, taken or not: a skipped one shifts no later draw.
        present = rng.random() >= SESSION_MISSED_RATE[i]
        count = 2 if rng.random() < DUPLICATE_RATE else 1
        start = midnight + timedelta(minutes=first_minute + int(rng.integers(window)))
        session_bp = (
            today_bp[0] + surge[0] + rng.normal(0.0, SESSION_SD[0]),
            today_bp[1] + surge[1] + rng.normal(0.0, SESSION_SD[1]),
        )
        noise_s = rng.normal(0.0, CUFF_NOISE_SD[0], 2)
        noise_d = rng.normal(0.0, CUFF_NOISE_SD[1], 2)
        glitches = rng.random((2, 3))
        if day_missed or not present:
            continue
        for k in range(count):
            sbp, dbp = _measured(
                session_bp[0] + noise_s[k], session_bp[1] + noise_d[k], p.cuff_model, drift
            )
            artifact = bool(glitches[k, 0] < ARTIFACT_RATE)
            if artifact:
                sbp, dbp = _artifact(glitches[k, 1], glitches[k, 2])
            readings.append(
                SimReading(
                    pseudonym=p.pseudonym,
                    device_kind="validated_cuff",
                    device_model=p.cuff_model,
                    time=start + timedelta(minutes=k),
                    kind=ReadingKind.BLOOD_PRESSURE,
                    systolic=sbp,
                    diastolic=dbp,
                    artifact=artifact,
                )
            )
    return readings


def _wearable_readings(
    p: SimPatient,
    today_bp: tuple[float, float],
    midnight: datetime,
    today: date,
    rng: np.random.Generator,
    drift: FirmwareDrift | None,
) -> list[SimReading]:
    # All draws come before the not-worn exit, as for the cuff: a day off shifts no draw.
    worn = rng.random() >= WEARABLE_OFF_RATE
    first_hour = 6 + int(rng.integers(3))
    last_hour = min(first_hour + int(rng.integers(14, 18)), 24)  # exclusive
    hours = range(first_hour, last_hour)
    activity = WEEKEND_ACTIVITY if today.weekday() >= 5 else 1.0
    total = p.mean_daily_steps * activity * math.exp(rng.normal(-(0.35**2) / 2, 0.35))  # mean 1
    weights = rng.gamma(2.0, 1.0, len(hours))  # how the day's steps spread over the hours
    steps = rng.multinomial(round(total), weights / weights.sum())
    noise = rng.normal(0.0, 1.0, (len(hours), 3))
    minutes = rng.integers(0, 60, len(hours))
    glitches = rng.random((len(hours), 3))
    if not worn:
        return []

    def reading(at: datetime, kind: ReadingKind, **values: Any) -> SimReading:
        return SimReading(
            pseudonym=p.pseudonym,
            device_kind="cuffless_wearable",
            device_model=p.wearable_model,
            time=at,
            kind=kind,
            **values,
        )

    out: list[SimReading] = []
    for i, hour in enumerate(hours):
        at = midnight + timedelta(hours=hour, minutes=int(minutes[i]))
        load = steps[i] / 1000.0
        surge = MORNING_SURGE if hour < 10 else (0.0, 0.0)
        sbp = today_bp[0] + surge[0] + p.wearable_bias_sbp + ACTIVITY_PER_1000_STEPS[0] * load
        dbp = today_bp[1] + surge[1] + p.wearable_bias_dbp + ACTIVITY_PER_1000_STEPS[1] * load
        sbp, dbp = _measured(
            sbp + WEARABLE_NOISE_SD[0] * noise[i, 0],
            dbp + WEARABLE_NOISE_SD[1] * noise[i, 1],
            p.wearable_model,
            drift,
        )
        artifact = bool(glitches[i, 0] < ARTIFACT_RATE)
        if artifact:
            sbp, dbp = _artifact(glitches[i, 1], glitches[i, 2])
        out.append(
            reading(at, ReadingKind.BLOOD_PRESSURE, systolic=sbp, diastolic=dbp, artifact=artifact)
        )
        rate = p.baseline_hr + ACTIVITY_PER_1000_STEPS[2] * load + 4.0 * noise[i, 2]
        out.append(
            reading(at, ReadingKind.HEART_RATE, value=float(round(np.clip(rate, 40.0, 180.0))))
        )
    start = midnight + timedelta(hours=first_hour)
    out.append(
        reading(
            start,
            ReadingKind.STEP_COUNT,
            value=float(steps.sum()),
            end=midnight + timedelta(hours=last_hour),
        )
    )
    return out


def _measured(
    sbp: float, dbp: float, model: str, drift: FirmwareDrift | None
) -> tuple[float, float]:
    """What a device displays: drift added, kept plausible, whole mmHg."""
    if drift is not None and drift.device_model == model:
        sbp += drift.systolic_mmhg
        dbp += drift.diastolic_mmhg
    sbp = min(max(sbp, _SBP_CLIP[0]), _SBP_CLIP[1])
    dbp = min(max(dbp, _DBP_CLIP[0]), _DBP_CLIP[1], sbp - _MIN_PULSE_PRESSURE)
    return float(round(sbp)), float(round(dbp))


def _artifact(u_kind: float, u_value: float) -> tuple[float, float]:
    """A well-formed implausible reading: systolic over 300, or diastolic above systolic."""
    if u_kind < 0.5:
        return float(301 + int(u_value * 40)), float(60 + int(u_value * 60))
    sbp = 60 + int(u_value * 40)
    return float(sbp), float(sbp + 5 + int(u_value * 30))


# --------------------------------------------------------------------------- FHIR


def to_fhir_observation(reading: SimReading, *, subject: str | None = None) -> dict[str, Any]:
    """A FHIR R4 Observation for a reading; `subject` is a reference like "Patient/<id>"."""
    doc: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [_category(reading.kind)],
        "code": _loinc(*_OBSERVATION_CODE[reading.kind]),
        "subject": _subject(reading.pseudonym, subject),
    }
    if reading.end is None:
        doc["effectiveDateTime"] = _fhir_time(reading.time)
    else:
        doc["effectivePeriod"] = {"start": _fhir_time(reading.time), "end": _fhir_time(reading.end)}
    doc["device"] = {"display": reading.device_model}
    if reading.kind is ReadingKind.BLOOD_PRESSURE:
        if reading.systolic is None or reading.diastolic is None:
            raise ValueError("a blood-pressure reading needs systolic and diastolic")
        doc["component"] = [
            {
                "code": _loinc(SYSTOLIC, "Systolic blood pressure"),
                "valueQuantity": _quantity(reading.systolic, "mmHg", UNIT_MMHG),
            },
            {
                "code": _loinc(DIASTOLIC, "Diastolic blood pressure"),
                "valueQuantity": _quantity(reading.diastolic, "mmHg", UNIT_MMHG),
            },
        ]
        return doc
    if reading.value is None:
        raise ValueError(f"a {reading.kind} reading needs a value")
    if reading.kind is ReadingKind.HEART_RATE:
        doc["valueQuantity"] = _quantity(reading.value, "beats/minute", UNIT_PER_MIN)
    else:
        doc["valueQuantity"] = _quantity(reading.value, "steps", UNIT_STEPS)
    return doc


def to_fhir_medication_administration(
    event: SimMedicationEvent, *, subject: str | None = None
) -> dict[str, Any]:
    """A FHIR R4 MedicationAdministration: completed when taken, not-done when missed."""
    doc: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "status": "completed" if event.taken else "not-done",
        "medicationCodeableConcept": {
            "coding": [{"system": _RXNORM, "code": event.rxnorm_code, "display": event.drug}],
            "text": f"{event.drug} {event.dose_mg:g} mg",
        },
        "subject": _subject(event.pseudonym, subject),
        "effectiveDateTime": _fhir_time(event.time),
        "dosage": {
            "dose": {"value": _number(event.dose_mg), "unit": "mg", "system": UCUM, "code": "mg"}
        },
    }
    if not event.taken:
        doc["statusReason"] = [{"text": "dose missed"}]
    return doc


_OBSERVATION_CODE = {
    ReadingKind.BLOOD_PRESSURE: ("85354-9", "Blood pressure panel with all children optional"),
    ReadingKind.HEART_RATE: ("8867-4", "Heart rate"),
    ReadingKind.STEP_COUNT: ("55423-8", "Number of steps in unspecified time Pedometer"),
}


def _loinc(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}]}


def _category(kind: ReadingKind) -> dict[str, Any]:
    code = "activity" if kind is ReadingKind.STEP_COUNT else "vital-signs"
    return {"coding": [{"system": _CATEGORY, "code": code}]}


def _subject(pseudonym: str, reference: str | None) -> dict[str, str]:
    # Without a reference the parser reads no subject, so the device's own patient applies.
    subject = {"display": pseudonym}
    if reference is not None:
        subject["reference"] = reference
    return subject


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": _number(value), "unit": unit, "system": UCUM, "code": code}


def _number(value: float) -> int | float:
    """Whole values as JSON integers, as devices send them."""
    return int(value) if float(value).is_integer() else float(value)


def _fhir_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
