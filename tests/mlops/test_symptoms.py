"""Symptom features on hand-built data, and the simulated symptoms that train them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from device_ingest.simulator import Cohort, generate_patients
from mlops.dataset import build, protocol_state
from mlops.explain import describe, top_factors
from mlops.features import (
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    PatientFacts,
    ReadingPoint,
    RegimenFacts,
    SymptomPoint,
    compute_features,
)
from mlops.model import Standardizer, TitrationModel, centred, linear_from
from mlops.symptoms import (
    OTHER_NOTE,
    SYMPTOM_CODES,
    day_reports,
    day_sbp,
    probabilities,
)
from mlops.training import NEVER_TOWARDS_INCREASE, never_towards_increase
from policies.envelope import TitrationAction

NY = ZoneInfo("America/New_York")
AS_OF = datetime(2025, 6, 10, 22, 0, tzinfo=NY)  # 2025-06-11T02:00Z


def at(day: int, hour: int) -> datetime:
    """Local New York time on 2025-06-<day>."""
    return datetime(2025, 6, day, hour, tzinfo=NY)


def symptom_features(
    reports: list[SymptomPoint], *, tz: str = "America/New_York", as_of: datetime = AS_OF
) -> tuple[float, float]:
    f = compute_features(
        readings=[],
        doses=[],
        symptoms=reports,
        patient=PatientFacts(),
        regimen=RegimenFacts(step=0, ladder_steps=3),
        as_of=as_of,
        tz=tz,
    ).as_dict()
    return f["hypotension_symptoms_3d"], f["symptom_reports_14d"]


def report(when: datetime, *codes: str) -> SymptomPoint:
    return SymptomPoint(when, frozenset(codes))


# --- the features ------------------------------------------------------------------------


def test_symptom_features_when_nothing_reported_are_zero_not_missing() -> None:
    assert symptom_features([]) == (0.0, 0.0)
    assert "hypotension_symptoms_3d_missing" not in FEATURE_NAMES
    assert "symptom_reports_14d_missing" not in FEATURE_NAMES


@pytest.mark.parametrize(
    ("codes", "flag"),
    [
        (("dizziness",), 1.0),
        (("fainting",), 1.0),
        (("headache", "dizziness"), 1.0),
        (("cough",), 0.0),
        (("fatigue", "headache", "swelling", "other"), 0.0),
        ((), 0.0),  # a note only
    ],
)
def test_hypotension_flag_counts_dizziness_and_fainting_only(
    codes: tuple[str, ...], flag: float
) -> None:
    assert symptom_features([report(at(10, 9), *codes)]) == (flag, 1.0)


def test_hypotension_flag_uses_three_local_days() -> None:
    # as_of is 22:00 on 06-10 in New York: local days 06-08..06-10 count.
    assert symptom_features([report(at(8, 0), "dizziness")])[0] == 1.0
    assert symptom_features([report(at(7, 23), "dizziness")])[0] == 0.0
    # In UTC days as_of falls on 06-11, so 06-09..06-11 count: 06-07 21:00 New York is
    # 06-08 01:00 UTC (out), 06-08 21:00 New York is 06-09 01:00 UTC (in).
    assert symptom_features([report(at(7, 21), "dizziness")], tz="UTC")[0] == 0.0
    assert symptom_features([report(at(8, 21), "dizziness")], tz="UTC")[0] == 1.0


def test_report_count_uses_fourteen_local_days_and_only_the_past() -> None:
    reports = [
        report(at(10, 21), "cough"),
        report(at(10, 21), "cough"),  # two reports at once count twice
        report(at(5, 9)),  # a note only
        report(datetime(2025, 5, 28, 0, 0, tzinfo=NY), "headache"),  # 13 days back
        report(datetime(2025, 5, 27, 23, 59, tzinfo=NY), "headache"),  # 14 days back
        report(at(10, 22), "dizziness"),  # at as_of: not strictly before
        report(at(11, 9), "dizziness"),  # after as_of
    ]
    assert symptom_features(reports) == (0.0, 4.0)


def test_symptom_point_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SymptomPoint(datetime(2025, 6, 1, 9), frozenset({"cough"}))  # noqa: DTZ001


def test_feature_set_version_is_two() -> None:
    assert FEATURE_SET_VERSION == "clinaiops-features/2"
    assert FEATURE_NAMES.index("symptom_reports_14d") == FEATURE_NAMES.index("adherence_14d") + 2


def test_protocol_state_reads_symptoms_from_the_feature() -> None:
    patient = generate_patients(1, 3)[0]
    cuff = [
        ReadingPoint(AS_OF - timedelta(hours=h), "blood_pressure", "validated_cuff", s, 60.0)
        for h, s in ((2, 86.0), (12, 112.0), (26, 112.0), (36, 112.0))
    ]

    def state(*codes: str) -> bool:
        fv = compute_features(
            readings=cuff,
            doses=[],
            symptoms=[report(AS_OF - timedelta(hours=1), *codes)],
            patient=PatientFacts(),
            regimen=RegimenFacts(step=1, ladder_steps=len(patient.ladder_mg)),
            as_of=AS_OF,
        )
        return protocol_state(fv, patient, 1).hypotension_symptoms

    assert state("dizziness") is True
    assert state("cough") is False


# --- the simulated symptoms --------------------------------------------------------------


def _reports(seed: int, days: int = 28, n: int = 30) -> list[tuple[int, str, tuple[str, ...]]]:
    cohort = Cohort(n, seed)
    out = []
    for day in range(days):
        for name, r in day_reports(cohort.simulate_day(day), cohort.patients, seed=seed).items():
            out.append((day, name, r.symptoms))
    return out


def test_simulated_symptoms_are_deterministic_by_seed() -> None:
    first = _reports(5)
    assert first
    assert first == _reports(5)
    assert first != _reports(6)


def test_simulated_symptoms_leave_the_readings_unchanged() -> None:
    # Their own random streams: the device simulator's output is the same as before.
    a, b = Cohort(5, 9), Cohort(5, 9)
    for day in range(5):
        out_a = a.simulate_day(day)
        day_reports(out_a, a.patients, seed=9)
        assert out_a == b.simulate_day(day)


def test_simulated_report_fields() -> None:
    cohort = Cohort(40, 2)
    seen: list[tuple[datetime, tuple[str, ...], str]] = []
    for day in range(14):
        out = cohort.simulate_day(day)
        for r in day_reports(out, cohort.patients, seed=2).values():
            assert r.symptoms
            assert set(r.symptoms) <= set(SYMPTOM_CODES)
            assert r.time.date() == out.date
            assert 18 <= r.time.hour < 21
            assert r.note == (OTHER_NOTE if "other" in r.symptoms else "")
            assert r.point().symptoms == frozenset(r.symptoms)
            seen.append((r.time, r.symptoms, r.note))
    assert seen


def test_dizziness_is_more_likely_the_lower_the_pressure() -> None:
    patient = generate_patients(1, 1)[0]
    dizzy = [probabilities(patient, sbp=s, step=0)["dizziness"] for s in (85, 90, 100, 110, 140)]
    assert dizzy == sorted(dizzy, reverse=True)
    assert dizzy[1] > 0.3
    assert dizzy[-1] < 0.01
    headache = [probabilities(patient, sbp=s, step=0)["headache"] for s in (120, 170, 190)]
    assert headache == sorted(headache)


def test_simulated_dizziness_follows_low_readings_in_a_cohort() -> None:
    # The over-treated patients of the training set have low pressure: compare day rates.
    cohort = Cohort(60, 4)
    low, high = Counter[str](), Counter[str]()
    for day in range(42):
        out = cohort.simulate_day(day, {p.pseudonym: len(p.ladder_mg) - 1 for p in cohort.patients})
        reports = day_reports(out, cohort.patients, seed=4)
        for p in cohort.patients:
            bucket = low if day_sbp(out.patients[p.pseudonym]) < 105 else high
            bucket["days"] += 1
            felt = reports.get(p.pseudonym)
            bucket["dizzy"] += int(felt is not None and "dizziness" in felt.symptoms)
    assert low["days"] > 20
    assert low["dizzy"] / low["days"] > 5 * high["dizzy"] / high["days"]


def test_training_set_symptom_features_carry_signal_for_decreases() -> None:
    data = build(n_patients=60, days=56, seed=7)
    flag = data.X[:, FEATURE_NAMES.index("hypotension_symptoms_3d")]
    count = data.X[:, FEATURE_NAMES.index("symptom_reports_14d")]
    decrease = data.y == 0
    assert decrease.any()
    assert flag[decrease].mean() > 3 * flag[~decrease].mean()
    assert count[decrease].mean() > count[~decrease].mean()
    assert data.params["symptoms"] == "clinaiops-sim-symptoms/1"
    assert np.isfinite(count).all()


# --- explanations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "clinician", "patient"),
    [
        (
            "hypotension_symptoms_3d",
            1.0,
            "dizziness or fainting reported in 3 days: yes",
            "you reported feeling dizzy or faint in the last three days",
        ),
        (
            "hypotension_symptoms_3d",
            0.0,
            "dizziness or fainting reported in 3 days: no",
            "you have not reported feeling dizzy or faint in the last three days",
        ),
        (
            "symptom_reports_14d",
            3.0,
            "symptom reports in 14 days 3",
            "you reported symptoms 3 times in the last two weeks",
        ),
        (
            "symptom_reports_14d",
            1.0,
            "symptom reports in 14 days 1",
            "you reported symptoms 1 time in the last two weeks",
        ),
        (
            "symptom_reports_14d",
            0.0,
            "symptom reports in 14 days 0",
            "you have not reported any symptoms in the last two weeks",
        ),
    ],
)
def test_symptom_features_explain_in_plain_language(
    name: str, value: float, clinician: str, patient: str
) -> None:
    factors = top_factors({name: 0.7}, {name: value}, k=3)
    assert clinician in describe(factors, TitrationAction.DECREASE, "clinician")
    assert describe(factors, TitrationAction.DECREASE, "patient") == (
        f"{patient[0].upper()}{patient[1:]}, so a step down in your dose is suggested."
    )


# --- the direction constraint ------------------------------------------------------------


def _noisy_model(seed: int) -> TitrationModel:
    rng = np.random.default_rng(seed)
    d = len(FEATURE_NAMES)
    weight = rng.normal(0.0, 0.5, size=(3, d))
    i = FEATURE_NAMES.index("hypotension_symptoms_3d")
    weight[:, i] = (0.1, -0.4, 0.3)  # as DP noise left it: dizziness argues for an increase
    return TitrationModel(
        FEATURE_NAMES,
        Standardizer((0.0,) * d, (1.0,) * d),
        linear=linear_from(*centred(weight, rng.normal(0.0, 0.5, 3))),
    )


@pytest.mark.parametrize("seed", range(5))
def test_never_towards_increase_makes_dizziness_never_raise_an_increase(seed: int) -> None:
    model = _noisy_model(seed)
    i = FEATURE_NAMES.index("hypotension_symptoms_3d")
    rows = np.random.default_rng(seed + 100).normal(0.0, 1.0, size=(200, len(FEATURE_NAMES)))
    without, with_flag = rows.copy(), rows.copy()
    without[:, i], with_flag[:, i] = 0.0, 1.0
    before = model.predict_proba(with_flag)[:, 2] - model.predict_proba(without)[:, 2]
    assert (before > 0).any()

    assert never_towards_increase(model, NEVER_TOWARDS_INCREASE) == ["hypotension_symptoms_3d"]

    after = model.predict_proba(with_flag)[:, 2] - model.predict_proba(without)[:, 2]
    assert (after <= 1e-12).all()
    assert np.allclose(model.weight.sum(axis=0), 0.0)  # still centred
    assert model.metadata["never_towards_increase"] == "hypotension_symptoms_3d"
    # Explained, the flag lowers the case for an increase.
    factors = top_factors(
        dict(zip(FEATURE_NAMES, model.weight[2] * with_flag[0], strict=True)),
        dict(zip(FEATURE_NAMES, with_flag[0], strict=True)),
        k=len(FEATURE_NAMES),
    )
    (flag,) = [f for f in factors if f.feature == "hypotension_symptoms_3d"]
    assert flag.contribution <= 0


def test_never_towards_increase_leaves_a_model_that_already_complies() -> None:
    model = _noisy_model(1)
    i = FEATURE_NAMES.index("hypotension_symptoms_3d")
    weight = model.weight
    weight[:, i] = (0.3, 0.0, -0.3)
    model.linear = linear_from(weight, model.bias)
    before = model.weight.copy()
    assert never_towards_increase(model, NEVER_TOWARDS_INCREASE) == []
    assert np.array_equal(model.weight, before)
