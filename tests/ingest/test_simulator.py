"""The synthetic cohort simulator: determinism, cohort statistics, physiology, scenarios, FHIR."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from device_ingest.fhir import parse_resource
from device_ingest.formats import ParsedMedicationEvent, ParsedReading, ReadingKind
from device_ingest.rules import quarantine_reasons
from device_ingest.simulator import (
    CUFF_MODELS,
    STEP_EFFECT_DBP,
    STEP_EFFECT_SBP,
    Cohort,
    DayOutput,
    FirmwareDrift,
    Scenario,
    SimPatient,
    SimReading,
    Subgroup,
    generate_patients,
    to_fhir_medication_administration,
    to_fhir_observation,
)

StepPlan = Callable[[int], Mapping[str, int]]


def run(cohort: Cohort, days: int, plan: StepPlan | None = None) -> list[DayOutput]:
    """Simulate `days` days; `plan(day)` gives the steps to set that day."""
    return [cohort.simulate_day(day, plan(day) if plan else None) for day in range(days)]


def responders(n: int, seed: int = 3, adherence: float = 1.0) -> list[SimPatient]:
    """Usual responders on the first ladder step, with the given adherence propensity."""
    return [
        replace(p, adherence=adherence, response_factor=1.0, start_step=0)
        for p in generate_patients(n, seed)
    ]


def parsed_reading(doc: dict[str, Any], index: int, *, fast: bool = True) -> ParsedReading:
    """Parse a document that must be a reading."""
    parsed = parse_resource(doc, index=index, fast=fast)
    assert isinstance(parsed, ParsedReading)
    return parsed


def pressure(reading: SimReading) -> tuple[float, float]:
    """A blood-pressure reading's systolic and diastolic."""
    assert reading.systolic is not None
    assert reading.diastolic is not None
    return reading.systolic, reading.diastolic


def difference(a: SimReading, b: SimReading) -> tuple[float, float]:
    """Systolic and diastolic of `a` minus those of `b`."""
    (sa, da), (sb, db) = pressure(a), pressure(b)
    return sa - sb, da - db


def step_up_on_day_0(patients: list[SimPatient]) -> StepPlan:
    """Move every patient one step up on day 0."""
    return lambda day: {p.pseudonym: p.start_step + 1 for p in patients} if day == 0 else {}


def cuff_bp(out: DayOutput, pseudonym: str) -> list[SimReading]:
    """A patient's plausible validated-cuff blood pressures of one day."""
    return [
        r
        for r in out.patients[pseudonym].readings
        if r.device_kind == "validated_cuff" and not r.artifact
    ]


def paired_cuff_diff(
    control: list[DayOutput], other: list[DayOutput], days: range, names: list[str]
) -> tuple[float, float]:
    """Mean control-minus-other cuff SBP and DBP over reading pairs of the same seed."""
    diffs = []
    for day in days:
        for name in names:
            a, b = cuff_bp(control[day], name), cuff_bp(other[day], name)
            assert [r.time for r in a] == [r.time for r in b]  # same schedule, same noise
            diffs += [difference(x, y) for x, y in zip(a, b, strict=True)]
    mean = np.mean(diffs, axis=0)
    return float(mean[0]), float(mean[1])


# --------------------------------------------------------------------------- determinism


def test_simulate_same_seed_and_steps_gives_identical_output() -> None:
    def plan(day: int) -> dict[str, int]:
        return {"P-0002": 1, "P-0005": 0} if day == 3 else {}

    first = run(Cohort(12, seed=11), 8, plan)
    second = run(Cohort(12, seed=11), 8, plan)
    assert first == second
    assert run(Cohort(12, seed=12), 8, plan) != first


def test_generate_patients_independent_of_cohort_size() -> None:
    small, large = Cohort(4, seed=5), Cohort(40, seed=5)
    assert small.patients == large.patients[:4]
    for day in range(3):
        a, b = small.simulate_day(day), large.simulate_day(day)
        assert all(a.patients[name] == b.patients[name] for name in a.patients)


def test_from_patients_output_independent_of_order() -> None:
    patients = generate_patients(6, seed=2)
    forward = run(Cohort.from_patients(patients, seed=2), 3)
    backward = run(Cohort.from_patients(patients[::-1], seed=2), 3)
    for a, b in zip(forward, backward, strict=True):
        assert dict(a.patients) == dict(b.patients)


def test_simulate_day_refuses_skipped_day() -> None:
    cohort = Cohort(2, seed=1)
    cohort.simulate_day(0)
    with pytest.raises(ValueError, match="expected day 1"):
        cohort.simulate_day(2)


def test_simulate_day_refuses_unknown_patient_or_step_off_ladder() -> None:
    cohort = Cohort(2, seed=1)
    with pytest.raises(ValueError, match="no patient"):
        cohort.simulate_day(0, {"P-9999": 0})
    top = len(cohort.patients[0].ladder_mg)
    with pytest.raises(ValueError, match="not on a"):
        cohort.simulate_day(0, {"P-0001": top})
    assert cohort.next_day == 0


def test_simulate_day_keeps_steps_not_given() -> None:
    cohort = Cohort(3, seed=1)
    cohort.simulate_day(0, {"P-0001": 1})
    out = cohort.simulate_day(1)
    assert out.patients["P-0001"].step == 1
    assert out.patients["P-0002"].step == cohort.patients[1].start_step


def test_from_patients_refuses_duplicate_pseudonyms() -> None:
    patient = generate_patients(1, seed=1)[0]
    with pytest.raises(ValueError, match="unique"):
        Cohort.from_patients([patient, patient], seed=1)


# --------------------------------------------------------------------------- cohort statistics


@pytest.fixture(scope="module")
def cohort_run() -> tuple[Cohort, list[DayOutput]]:
    """200 patients for 28 days, no scenario."""
    cohort = Cohort(200, seed=2024)
    return cohort, run(cohort, 28)


def cuff_sessions(outputs: list[DayOutput]) -> dict[tuple[str, int, bool], list[SimReading]]:
    """Validated-cuff readings by (patient, day, morning?)."""
    sessions: dict[tuple[str, int, bool], list[SimReading]] = defaultdict(list)
    for out in outputs:
        for name, patient_day in out.patients.items():
            for r in patient_day.readings:
                if r.device_kind == "validated_cuff":
                    sessions[(name, out.day, r.time.hour < 12)].append(r)
    return sessions


def test_generate_patients_in_plausible_bands(cohort_run: tuple[Cohort, list[DayOutput]]) -> None:
    patients = cohort_run[0].patients
    sbp = np.array([p.baseline_sbp for p in patients])
    dbp = np.array([p.baseline_dbp for p in patients])
    assert 146 <= sbp.mean() <= 154
    assert sbp.min() >= 125
    assert sbp.max() <= 190
    assert 82 <= dbp.mean() <= 94
    assert (sbp - dbp >= 30).all()
    assert np.corrcoef(sbp, dbp)[0, 1] > 0.3
    poor = np.mean([p.adherence < 0.8 for p in patients])
    assert 0.1 <= poor <= 0.3
    assert {p.cuff_model for p in patients} == set(CUFF_MODELS)
    assert all(p.response_factor == 1.0 for p in patients)


def test_simulate_cuff_mean_in_treated_band(cohort_run: tuple[Cohort, list[DayOutput]]) -> None:
    readings = [r for s in cuff_sessions(cohort_run[1]).values() for r in s if not r.artifact]
    assert 135 <= np.mean([r.systolic for r in readings]) <= 150


def test_simulate_duplicates_on_most_measured_mornings(
    cohort_run: tuple[Cohort, list[DayOutput]],
) -> None:
    mornings = [s for (_, _, morning), s in cuff_sessions(cohort_run[1]).items() if morning]
    duplicated = np.mean([len(s) == 2 for s in mornings])
    assert 0.82 <= duplicated <= 0.88
    # A few days are missed: mornings measured on roughly nine days in ten.
    assert 0.85 <= len(mornings) / (200 * 28) <= 0.96
    pairs = [s for s in mornings if len(s) == 2]
    assert all(s[1].time - s[0].time == timedelta(minutes=1) for s in pairs)


def test_simulate_artifacts_at_half_a_percent(cohort_run: tuple[Cohort, list[DayOutput]]) -> None:
    bp = [
        r for out in cohort_run[1] for r in out.readings() if r.kind is ReadingKind.BLOOD_PRESSURE
    ]
    share = np.mean([r.artifact for r in bp])
    assert 0.004 <= share <= 0.006


def test_simulate_cuff_noise_matches_duplicate_spread(
    cohort_run: tuple[Cohort, list[DayOutput]],
) -> None:
    diffs = np.array(
        [
            difference(s[0], s[1])
            for s in cuff_sessions(cohort_run[1]).values()
            if len(s) == 2 and not (s[0].artifact or s[1].artifact)
        ]
    )
    sd = diffs.std(axis=0)
    assert sd[0] == pytest.approx(5 * np.sqrt(2), abs=0.35)
    assert sd[1] == pytest.approx(4 * np.sqrt(2), abs=0.3)


def test_simulate_morning_surge_raises_morning_readings(
    cohort_run: tuple[Cohort, list[DayOutput]],
) -> None:
    by_time: dict[bool, list[float]] = {True: [], False: []}
    for (_, _, morning), s in cuff_sessions(cohort_run[1]).items():
        by_time[morning] += [pressure(r)[0] for r in s if not r.artifact]
    assert np.mean(by_time[True]) - np.mean(by_time[False]) == pytest.approx(8, abs=1.0)


def test_simulate_doses_taken_at_adherence_propensity(
    cohort_run: tuple[Cohort, list[DayOutput]],
) -> None:
    cohort, outputs = cohort_run
    taken = np.mean([e.taken for out in outputs for e in out.medication_events()])
    assert taken == pytest.approx(np.mean([p.adherence for p in cohort.patients]), abs=0.02)
    poor = {p.pseudonym for p in cohort.patients if p.adherence < 0.8}
    poor_taken = np.mean([out.patients[n].dose_taken for out in outputs for n in poor])
    assert poor_taken < 0.8


def test_simulate_wearable_hourly_while_worn_and_fewer_steps_at_weekends(
    cohort_run: tuple[Cohort, list[DayOutput]],
) -> None:
    per_day: list[int] = []
    steps: dict[bool, list[float]] = defaultdict(list)  # by weekend?
    for out in cohort_run[1]:
        for patient_day in out.patients.values():
            worn = [r for r in patient_day.readings if r.device_kind == "cuffless_wearable"]
            kinds = [r.kind for r in worn]
            if worn:
                per_day.append(kinds.count(ReadingKind.BLOOD_PRESSURE))
                assert kinds.count(ReadingKind.HEART_RATE) == per_day[-1]
                (count,) = [r.value for r in worn if r.kind is ReadingKind.STEP_COUNT]
                assert count is not None
                steps[out.date.weekday() >= 5].append(count)
    assert 15 <= np.mean(per_day) <= 17
    assert np.mean(steps[True]) / np.mean(steps[False]) == pytest.approx(0.85, abs=0.05)


# --------------------------------------------------------------------------- drug effect


def test_titrate_up_lowers_bp_by_one_step_at_steady_state() -> None:
    patients = responders(10)
    names = [p.pseudonym for p in patients]
    control = run(Cohort.from_patients(patients, seed=8), 28)
    titrated = run(Cohort.from_patients(patients, seed=8), 28, step_up_on_day_0(patients))
    sbp, dbp = paired_cuff_diff(control, titrated, range(21, 28), names)
    assert sbp == pytest.approx(STEP_EFFECT_SBP, abs=0.6)
    assert dbp == pytest.approx(STEP_EFFECT_DBP, abs=0.5)
    # Before the change took hold the difference was much smaller.
    early_sbp, _ = paired_cuff_diff(control, titrated, range(2), names)
    assert early_sbp < 0.5 * STEP_EFFECT_SBP


def test_titrate_up_builds_effect_with_five_day_time_constant() -> None:
    patients = responders(1)
    name = patients[0].pseudonym
    control = run(Cohort.from_patients(patients, seed=8), 15)
    titrated = run(Cohort.from_patients(patients, seed=8), 15, step_up_on_day_0(patients))
    for day in (0, 4, 9, 14):
        gained = (
            titrated[day].patients[name].drug_effect_sbp
            - control[day].patients[name].drug_effect_sbp
        )
        assert gained == pytest.approx(STEP_EFFECT_SBP * (1 - np.exp(-(day + 1) / 5)))


def test_titrate_up_scales_effect_by_doses_taken() -> None:
    patients = responders(40, adherence=0.6)
    names = [p.pseudonym for p in patients]
    control = run(Cohort.from_patients(patients, seed=9), 28)
    titrated = run(Cohort.from_patients(patients, seed=9), 28, step_up_on_day_0(patients))
    sbp, dbp = paired_cuff_diff(control, titrated, range(21, 28), names)
    assert sbp == pytest.approx(0.6 * STEP_EFFECT_SBP, abs=1.0)
    assert dbp == pytest.approx(0.6 * STEP_EFFECT_DBP, abs=0.6)


def test_missed_doses_lower_the_effect() -> None:
    patients = responders(40, adherence=0.6)
    outputs = run(Cohort.from_patients(patients, seed=9), 10)
    after_taken: list[float] = []
    after_missed: list[float] = []
    for yesterday, today in pairwise(outputs):
        for name, patient_day in today.patients.items():
            change = patient_day.drug_effect_sbp - yesterday.patients[name].drug_effect_sbp
            (after_taken if patient_day.dose_taken else after_missed).append(change)
    assert min(after_taken) >= 0 > max(after_missed)


# --------------------------------------------------------------------------- scenarios


def test_firmware_drift_adds_ten_to_its_model_from_its_day() -> None:
    drift = FirmwareDrift("A&D UA-651", from_day=6)
    plain = run(Cohort(30, seed=4), 10)
    drifted = run(Cohort(30, seed=4, scenario=Scenario(firmware_drift=drift)), 10)
    shifted: list[tuple[float, float]] = []
    for a, b in zip(plain, drifted, strict=True):
        for x, y in zip(a.readings(), b.readings(), strict=True):
            assert x.time == y.time
            if x.kind is not ReadingKind.BLOOD_PRESSURE or x.artifact:
                assert x == y
            elif x.device_model == drift.device_model and a.day >= drift.from_day:
                shifted.append(difference(y, x))
            else:
                assert x == y
    assert len(shifted) > 100
    assert np.mean(shifted, axis=0) == pytest.approx([10.0, 10.0], abs=0.2)


def test_subgroup_halves_the_effect_for_matching_patients() -> None:
    patients = [replace(p, age=80 if i % 2 else 60) for i, p in enumerate(responders(20, seed=6))]
    old = [p.pseudonym for p in patients if p.age >= 75]
    young = [p.pseudonym for p in patients if p.age < 75]
    scenario = Scenario(subgroup=Subgroup.age_at_least(75, response_factor=0.5))
    control = run(Cohort.from_patients(patients, seed=6, scenario=scenario), 28)
    titrated = run(
        Cohort.from_patients(patients, seed=6, scenario=scenario), 28, step_up_on_day_0(patients)
    )
    old_sbp, old_dbp = paired_cuff_diff(control, titrated, range(21, 28), old)
    young_sbp, _ = paired_cuff_diff(control, titrated, range(21, 28), young)
    assert old_sbp == pytest.approx(0.5 * STEP_EFFECT_SBP, abs=0.5)
    assert old_dbp == pytest.approx(0.5 * STEP_EFFECT_DBP, abs=0.4)
    assert young_sbp == pytest.approx(STEP_EFFECT_SBP, abs=0.6)


def test_subgroup_sets_response_factor_of_generated_patients_only() -> None:
    plain = Cohort(60, seed=3).patients
    grouped = Cohort(60, seed=3, scenario=Scenario(subgroup=Subgroup.with_diabetes())).patients
    assert any(p.diabetes for p in plain)
    for a, b in zip(plain, grouped, strict=True):
        assert b == replace(a, response_factor=0.5 if a.diabetes else 1.0)


def test_seasonal_shift_peaks_in_winter() -> None:
    amplitude = 6.0
    for start, sign in ((date(2025, 1, 15), 1.0), (date(2025, 7, 16), -1.0)):
        scenario = Scenario(seasonal_amplitude_mmhg=amplitude)
        plain = Cohort(3, seed=1, start=start).simulate_day(0)
        seasonal = Cohort(3, seed=1, scenario=scenario, start=start).simulate_day(0)
        for name, patient_day in plain.patients.items():
            shift = seasonal.patients[name].underlying_sbp - patient_day.underlying_sbp
            assert shift == pytest.approx(sign * amplitude, abs=0.01)


# --------------------------------------------------------------------------- FHIR


def test_fhir_resources_all_parse_and_match_records() -> None:
    cohort = Cohort(6, seed=21)
    outputs = run(cohort, 3, lambda day: {"P-0001": 1} if day == 1 else {})
    # A run this small may hold no artifact: add one of each kind the simulator makes.
    readings = [r for out in outputs for r in out.readings()]
    bp = next(r for r in readings if r.kind is ReadingKind.BLOOD_PRESSURE)
    readings += [
        replace(bp, systolic=312.0, diastolic=96.0, artifact=True),
        replace(bp, systolic=74.0, diastolic=101.0, artifact=True),
    ]
    now = datetime(2030, 1, 1, tzinfo=UTC)
    for i, reading in enumerate(readings):
        doc = to_fhir_observation(reading)
        parsed = parsed_reading(doc, i)
        assert parsed_reading(doc, i, fast=False) == parsed  # fhir.resources agrees
        assert parsed.kind is reading.kind
        assert parsed.effective.start == reading.time
        assert (parsed.systolic, parsed.diastolic, parsed.value) == (
            reading.systolic,
            reading.diastolic,
            reading.value,
        )
        assert parsed.context["device"] == reading.device_model
        assert parsed.subject is None  # the device's own patient
        if reading.end is not None:
            assert parsed.effective.end == reading.end
        reasons = quarantine_reasons(parsed, now=now, max_future=timedelta(0), max_age=None)
        assert bool(reasons) is reading.artifact
    events = [e for out in outputs for e in out.medication_events()]
    for i, event in enumerate(events):
        parsed_event = parse_resource(to_fhir_medication_administration(event), index=i)
        assert isinstance(parsed_event, ParsedMedicationEvent)
        assert parsed_event.taken is event.taken
        assert parsed_event.effective.start == event.time
        assert parsed_event.medication.endswith(f"|{event.rxnorm_code}")


def test_fhir_resources_carry_given_subject() -> None:
    out = Cohort(1, seed=1).simulate_day(0)
    reading, event = out.readings()[0], out.medication_events()[0]
    missed = replace(event, taken=False)
    for doc in (
        to_fhir_observation(reading, subject="Patient/abc"),
        to_fhir_medication_administration(event, subject="Patient/abc"),
        to_fhir_medication_administration(missed, subject="Patient/abc"),
    ):
        parsed = parse_resource(doc, index=0)
        assert parsed.subject == "Patient/abc"
    parsed_missed = parse_resource(to_fhir_medication_administration(missed), index=0)
    assert isinstance(parsed_missed, ParsedMedicationEvent)
    assert (parsed_missed.taken, parsed_missed.reason) == (False, "dose missed")


def test_simulated_artifacts_are_quarantined_and_others_not(
    cohort_run: tuple[Cohort, list[DayOutput]],
) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    bp = [
        r for out in cohort_run[1] for r in out.readings() if r.kind is ReadingKind.BLOOD_PRESSURE
    ]
    # Every artifact, and a sample of the rest (parsing all 100,000 would be slow).
    sample = [r for i, r in enumerate(bp) if r.artifact or i % 25 == 0]
    assert sum(r.artifact for r in sample) > 300
    for i, reading in enumerate(sample):
        parsed = parsed_reading(to_fhir_observation(reading), i)
        reasons = quarantine_reasons(parsed, now=now, max_future=timedelta(0), max_age=None)
        assert bool(reasons) is reading.artifact
