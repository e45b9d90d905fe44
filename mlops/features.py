"""The titration model's features: one pure function for training and serving alike.

Training (simulator records, replayed history) and serving (database rows) both call
`compute_features` on the same plain dataclasses, so there is no second implementation to
drift from this one (no train/serve skew). Pure: no I/O and no clock; `as_of` is an argument
and only what happened strictly before it counts.

Windows are the patient's local calendar days (`tz`): "7 days" means today (up to `as_of`)
and the 6 days before it, so "readings on 4 of the last 7 days" has exactly 7 day buckets,
as `loops.protocol.sufficient` expects. Quarantined readings and descriptive statistics
(OMH `descriptive_statistic`: a summary, not a measurement) never count. Only validated-cuff
blood pressure feeds the blood-pressure features (2025 AHA/ACC: no cuffless BP for
management); cuffless systolic appears only as its own trend features. Symptom reports
(patient-reported outcomes) count in the same local-day windows.

Missing values, one rule: a feature that cannot be computed from the data in its window is
NaN, never imputed here, and each such feature `x` has an indicator `x_missing` (1.0 when
`x` is NaN, else 0.0) at the end of the vector. Every other feature is always defined.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from device_ingest.formats import ReadingKind
from loops.protocol import HYPOTENSION_SYMPTOMS, sufficient, target
from policies.routing import Evidence

# Bump when any definition below changes meaning: it is part of the hash, so an evaluation
# recorded under one definition never matches a vector computed under another.
FEATURE_SET_VERSION: Final = "clinaiops-features/2"

VALIDATED_CUFF: Final = "validated_cuff"
CUFFLESS_WEARABLE: Final = "cuffless_wearable"
DEVICE_CLASSES: Final = frozenset({VALIDATED_CUFF, CUFFLESS_WEARABLE, "other"})
KINDS: Final = frozenset(kind.value for kind in ReadingKind)
_BLOOD_PRESSURE: Final = ReadingKind.BLOOD_PRESSURE.value
SEXES: Final = frozenset({"female", "male", "other", "unknown"})

DAYS_SINCE_CHANGE_CAP: Final = 365
# Lower bounds of age bands 1..5; band 0 is under 40.
AGE_BAND_BOUNDS: Final = (40, 50, 60, 70, 80)
MORNING_BEFORE_HOUR: Final = 12
_SECONDS_PER_DAY: Final = 86_400.0

# Every feature, in vector order, with its definition (windows: local days, see above).
_BASE_DOCS: Final[dict[str, str]] = {
    "cuff_sbp_mean_7d": "mean validated-cuff SBP, last 7 days (mmHg)",
    "cuff_dbp_mean_7d": "mean validated-cuff DBP, last 7 days (mmHg)",
    "cuff_sbp_mean_14d": "mean validated-cuff SBP, last 14 days (mmHg)",
    "cuff_dbp_mean_14d": "mean validated-cuff DBP, last 14 days (mmHg)",
    "cuff_sbp_mean_am_7d": "mean validated-cuff SBP before local noon, last 7 days (mmHg)",
    "cuff_dbp_mean_am_7d": "mean validated-cuff DBP before local noon, last 7 days (mmHg)",
    "cuff_sbp_mean_pm_7d": "mean validated-cuff SBP from local noon on, last 7 days (mmHg)",
    "cuff_dbp_mean_pm_7d": "mean validated-cuff DBP from local noon on, last 7 days (mmHg)",
    "cuff_sbp_mean_3d": "mean validated-cuff SBP, last 3 days (mmHg; protocol low-BP rule)",
    "cuff_sbp_min_3d": "lowest validated-cuff SBP, last 3 days (mmHg; protocol low-BP rule)",
    "cuff_sbp_sd_14d": "sample SD (n - 1) of validated-cuff SBP, last 14 days; needs 2 readings",
    "cuff_sbp_slope_14d": "least-squares slope of validated-cuff SBP on time, last 14 days "
    "(mmHg/day); needs 2 distinct times",
    "cuff_at_target_share_14d": "share of validated-cuff readings, last 14 days, with SBP and "
    "DBP both below the patient's target (135/85; 130/80 with diabetes or CKD)",
    "cuff_readings_7d": "validated-cuff readings, last 7 days",
    "cuff_days_7d": "distinct local days with a validated-cuff reading, last 7 days",
    "cuffless_sbp_mean_7d": "mean cuffless-wearable SBP, last 7 days (mmHg; trend only)",
    "cuffless_sbp_slope_14d": "least-squares slope of cuffless-wearable SBP on time, last 14 "
    "days (mmHg/day; trend only); needs 2 distinct times",
    "heart_rate_mean_7d": "mean heart rate from any device class, last 7 days (/min)",
    "steps_daily_mean_7d": "steps summed per local day, averaged over the days of the last 7 "
    "that have step data (a count belongs to the day its interval starts)",
    "adherence_14d": "share of dose events reported in the last 14 days that were taken",
    "hypotension_symptoms_3d": "1 when a symptom report of the last 3 days names dizziness or "
    "fainting (the protocol's low-BP symptoms), else 0",
    "symptom_reports_14d": "symptom reports in the last 14 days (any symptom, or a note only)",
    "ladder_position": "step / (ladder_steps - 1); 0 on a single-step ladder",
    "days_since_change": f"whole days since the last dose change, capped at "
    f"{DAYS_SINCE_CHANGE_CAP}; the cap when never changed",
    "never_changed": "1 when the regimen has never changed dose, else 0",
    "age_band": "age at as_of's local date: 0 <40, 1 40-49, 2 50-59, 3 60-69, 4 70-79, 5 >=80",
    "sex_female": "1 when sex is female, else 0",
    "sex_male": "1 when sex is male, else 0 (other and unknown: both sex features 0)",
    "diabetes": "1 with diabetes, else 0",
    "ckd": "1 with chronic kidney disease, else 0",
}
# The features that are NaN when their window holds too little data (or, for age_band, the
# patient facts give no age); each has a `<name>_missing` indicator after the base features.
NULLABLE_FEATURES: Final[tuple[str, ...]] = (
    "cuff_sbp_mean_7d",
    "cuff_dbp_mean_7d",
    "cuff_sbp_mean_14d",
    "cuff_dbp_mean_14d",
    "cuff_sbp_mean_am_7d",
    "cuff_dbp_mean_am_7d",
    "cuff_sbp_mean_pm_7d",
    "cuff_dbp_mean_pm_7d",
    "cuff_sbp_mean_3d",
    "cuff_sbp_min_3d",
    "cuff_sbp_sd_14d",
    "cuff_sbp_slope_14d",
    "cuff_at_target_share_14d",
    "cuffless_sbp_mean_7d",
    "cuffless_sbp_slope_14d",
    "heart_rate_mean_7d",
    "steps_daily_mean_7d",
    "adherence_14d",
    "age_band",
)
FEATURE_DOCS: Final[Mapping[str, str]] = MappingProxyType(
    _BASE_DOCS | {f"{n}_missing": f"1 when {n} is missing (NaN), else 0" for n in NULLABLE_FEATURES}
)
FEATURE_NAMES: Final[tuple[str, ...]] = tuple(FEATURE_DOCS)


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def _require_finite(value: float | None, what: str) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{what} must be finite")


@dataclass(frozen=True, slots=True)
class ReadingPoint:
    """One stored reading, as a database row or a simulator record provides it."""

    time: datetime  # aware; effective start
    kind: str  # a ReadingKind value
    device_class: str  # validated_cuff | cuffless_wearable | other
    systolic: float | None = None
    diastolic: float | None = None
    value: float | None = None
    statistic: str | None = None  # set: a summary of an interval, never counted
    quarantined: bool = False

    def __post_init__(self) -> None:
        # Runs for every reading of every evaluation: the checks are written out, not looped.
        _require_aware(self.time, "reading time")
        kind, systolic, diastolic, value = self.kind, self.systolic, self.diastolic, self.value
        if kind not in KINDS:
            raise ValueError(f"unknown reading kind: {kind!r}")
        if self.device_class not in DEVICE_CLASSES:
            raise ValueError(f"unknown device class: {self.device_class!r}")
        if systolic is not None and not math.isfinite(systolic):
            raise ValueError("systolic must be finite")
        if diastolic is not None and not math.isfinite(diastolic):
            raise ValueError("diastolic must be finite")
        if value is not None and not math.isfinite(value):
            raise ValueError("value must be finite")
        # A measurement lacking its values is an adapter bug; fail rather than skip it
        # silently (statistics are ignored anyway, so they may be partial).
        if self.statistic is None:
            if kind == _BLOOD_PRESSURE:
                if systolic is None or diastolic is None:
                    raise ValueError("a blood-pressure reading needs systolic and diastolic")
            elif value is None:
                raise ValueError(f"a {kind} reading needs a value")


@dataclass(frozen=True, slots=True)
class DoseEvent:
    """A dose reported taken or missed."""

    time: datetime  # aware
    taken: bool

    def __post_init__(self) -> None:
        _require_aware(self.time, "dose time")


@dataclass(frozen=True, slots=True)
class SymptomPoint:
    """One symptom report: when the patient felt it, and the symptom codes it names."""

    time: datetime  # aware
    symptoms: frozenset[str] = frozenset()  # codes; empty for a note-only report

    def __post_init__(self) -> None:
        _require_aware(self.time, "symptom report time")

    @property
    def hypotensive(self) -> bool:
        """True when it names a symptom the protocol's low-BP rule counts."""
        return not self.symptoms.isdisjoint(HYPOTENSION_SYMPTOMS)


@dataclass(frozen=True, slots=True)
class PatientFacts:
    """Who the patient is; `birth_date` wins over `age` when both are given."""

    sex: str = "unknown"  # female | male | other | unknown (app.patients.models.Sex values)
    diabetes: bool = False
    ckd: bool = False
    birth_date: date | None = None
    age: int | None = None  # whole years, for records that carry no birth date

    def __post_init__(self) -> None:
        if self.sex not in SEXES:
            raise ValueError(f"unknown sex: {self.sex!r}")
        if self.age is not None and self.age < 0:
            raise ValueError("age must not be negative")


@dataclass(frozen=True, slots=True)
class RegimenFacts:
    """Where the patient is on the ladder, as of the evaluation time."""

    step: int
    ladder_steps: int
    last_change: datetime | None = None  # None: never changed

    def __post_init__(self) -> None:
        if self.ladder_steps < 1 or not 0 <= self.step < self.ladder_steps:
            raise ValueError("step must lie on a ladder of at least one step")
        if self.last_change is not None:
            _require_aware(self.last_change, "last_change")


def _canonical_float(value: float) -> str:
    # repr is Python's shortest round-trip form: exact, so any change to a value changes it.
    if math.isnan(value):
        return "nan"
    if value == 0.0:
        return "0.0"  # -0.0 and 0.0 are the same feature value
    return repr(float(value))


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """Named feature values, with the raw counts the protocol and routing need."""

    values: tuple[float, ...]
    cuff_readings_per_day_7d: tuple[int, ...]  # oldest day first, today last
    days_since_last_change: int | None  # whole days, uncapped; None: never changed
    names: tuple[str, ...] = FEATURE_NAMES

    def __post_init__(self) -> None:
        if len(self.names) != len(self.values):
            raise ValueError("names and values differ in length")
        if len(self.cuff_readings_per_day_7d) != 7:
            raise ValueError("cuff_readings_per_day_7d needs 7 days")

    @property
    def cuff_readings_7d(self) -> int:
        """Validated-cuff readings in the last 7 days."""
        return sum(self.cuff_readings_per_day_7d)

    @property
    def cuff_days_7d(self) -> int:
        """Days of the last 7 with a validated-cuff reading."""
        return sum(1 for n in self.cuff_readings_per_day_7d if n > 0)

    @property
    def sufficient(self) -> bool:
        """The protocol's data-sufficiency rule (12 readings on 4 of the last 7 days)."""
        return sufficient(self.cuff_readings_per_day_7d)

    @property
    def adherence_14d(self) -> float | None:
        """Share of doses taken in the last 14 days; None when no dose was reported."""
        value = self.as_dict().get("adherence_14d", math.nan)
        return None if math.isnan(value) else value

    def as_dict(self) -> dict[str, float]:
        """Feature name to value, in feature order."""
        return dict(zip(self.names, self.values, strict=True))

    def to_array(self) -> NDArray[np.float64]:
        """The values as a new float64 array, in feature order."""
        return np.array(self.values, dtype=np.float64)

    def canonical(self) -> str:
        """The serialization the hash covers: version line, then `name=value` lines."""
        lines = [FEATURE_SET_VERSION]
        lines += [
            f"{n}={_canonical_float(v)}" for n, v in zip(self.names, self.values, strict=True)
        ]
        return "\n".join(lines) + "\n"

    def hash(self) -> str:
        """SHA-256 hex of the canonical serialization: which features an evaluation saw."""
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    def to_evidence(self, *, auto_changes_30d: int, open_alerts: int) -> Evidence:
        """The routing function's evidence; the counts only the caller knows are arguments."""
        return Evidence(
            cuff_readings_7d=self.cuff_readings_7d,
            cuff_days_7d=self.cuff_days_7d,
            days_since_last_change=self.days_since_last_change,
            auto_changes_30d=auto_changes_30d,
            open_alerts=open_alerts,
            adherence_14d=self.adherence_14d,
        )


def feature_matrix(vectors: Sequence[FeatureVector]) -> NDArray[np.float64]:
    """Stack vectors into an (n, features) float64 matrix; all must share one feature order."""
    if any(v.names != FEATURE_NAMES for v in vectors):
        raise ValueError("every vector must use FEATURE_NAMES")
    matrix = np.array([v.values for v in vectors], dtype=np.float64)
    return matrix.reshape(len(vectors), len(FEATURE_NAMES))


def mean(xs: Sequence[float]) -> float:
    """Arithmetic mean (exactly rounded sum); NaN when empty."""
    return math.fsum(xs) / len(xs) if xs else math.nan


def sample_sd(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); NaN with fewer than two values."""
    if len(xs) < 2:
        return math.nan
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def ls_slope(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys on ts; NaN unless ts holds two distinct values."""
    if len(ts) != len(ys):
        raise ValueError("ts and ys differ in length")
    if len(set(ts)) < 2:
        return math.nan
    tm, ym = mean(ts), mean(ys)
    sxx = math.fsum((t - tm) ** 2 for t in ts)
    sxy = math.fsum((t - tm) * (y - ym) for t, y in zip(ts, ys, strict=True))
    return sxy / sxx


def age_years(birth_date: date, on: date) -> int:
    """Whole years of age on a date."""
    return on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))


def age_band(age: int) -> int:
    """The encoded age band: 0 under 40, then one per decade, 5 from 80 on."""
    return bisect_right(AGE_BAND_BOUNDS, age)


@dataclass(frozen=True, slots=True)
class _Timed:
    days_back: int  # local calendar days before as_of's day: 0 today
    t_days: float  # (time - as_of) in days, negative
    morning: bool
    reading: ReadingPoint


def compute_features(
    *,
    readings: Iterable[ReadingPoint],
    doses: Iterable[DoseEvent],
    symptoms: Iterable[SymptomPoint],
    patient: PatientFacts,
    regimen: RegimenFacts,
    as_of: datetime,
    tz: str = "UTC",
) -> FeatureVector:
    """The feature vector as of `as_of`, from history strictly before it, days in `tz`.

    `symptoms` is required, never defaulted: a caller that forgot the symptom reports would
    silently compute another feature set than training did."""
    _require_aware(as_of, "as_of")
    zone = ZoneInfo(tz)
    today = as_of.astimezone(zone).date()

    def timed(r: ReadingPoint) -> _Timed:
        local = r.time.astimezone(zone)
        return _Timed(
            (today - local.date()).days,
            (r.time - as_of).total_seconds() / _SECONDS_PER_DAY,
            local.hour < MORNING_BEFORE_HOUR,
            r,
        )

    # 15 days of elapsed time hold any 14 local days (DST included): a cheap first cut on a
    # long history before the per-reading time-zone conversion.
    horizon = as_of - timedelta(days=15)
    usable = [
        timed(r)
        for r in readings
        if horizon <= r.time < as_of and not r.quarantined and r.statistic is None
    ]
    usable = [u for u in usable if u.days_back < 14]  # no feature looks further back
    bp = [u for u in usable if u.reading.kind == ReadingKind.BLOOD_PRESSURE]
    cuff = [u for u in bp if u.reading.device_class == VALIDATED_CUFF]
    cuffless = [u for u in bp if u.reading.device_class == CUFFLESS_WEARABLE]

    f: dict[str, float] = {}
    f.update(_cuff_features(cuff, target(patient.diabetes or patient.ckd)))
    per_day = [0] * 7
    for u in cuff:
        if u.days_back < 7:
            per_day[6 - u.days_back] += 1
    f["cuff_readings_7d"] = float(sum(per_day))
    f["cuff_days_7d"] = float(sum(1 for n in per_day if n > 0))
    f["cuffless_sbp_mean_7d"] = mean([_sbp(u) for u in cuffless if u.days_back < 7])
    f["cuffless_sbp_slope_14d"] = ls_slope(
        [u.t_days for u in cuffless], [_sbp(u) for u in cuffless]
    )
    f.update(_activity_features(usable))
    f["adherence_14d"] = _adherence(doses, as_of, zone, today)
    f.update(_symptom_features(symptoms, as_of, zone, today))
    days_since = _days_since_change(regimen, as_of)
    f.update(_regimen_features(regimen, days_since))
    f.update(_patient_features(patient, today))
    for name in NULLABLE_FEATURES:
        f[f"{name}_missing"] = 1.0 if math.isnan(f[name]) else 0.0
    return FeatureVector(
        values=tuple(f[n] for n in FEATURE_NAMES),
        cuff_readings_per_day_7d=tuple(per_day),
        days_since_last_change=days_since,
    )


def _sbp(u: _Timed) -> float:
    assert u.reading.systolic is not None  # guaranteed for measurements by ReadingPoint
    return u.reading.systolic


def _dbp(u: _Timed) -> float:
    assert u.reading.diastolic is not None
    return u.reading.diastolic


def _value(u: _Timed) -> float:
    assert u.reading.value is not None
    return u.reading.value


def _cuff_features(cuff: Sequence[_Timed], goal: tuple[float, float]) -> dict[str, float]:
    week = [u for u in cuff if u.days_back < 7]
    am = [u for u in week if u.morning]
    pm = [u for u in week if not u.morning]
    last3 = [_sbp(u) for u in cuff if u.days_back < 3]
    at_target = [_sbp(u) < goal[0] and _dbp(u) < goal[1] for u in cuff]
    return {
        "cuff_sbp_mean_7d": mean([_sbp(u) for u in week]),
        "cuff_dbp_mean_7d": mean([_dbp(u) for u in week]),
        "cuff_sbp_mean_14d": mean([_sbp(u) for u in cuff]),
        "cuff_dbp_mean_14d": mean([_dbp(u) for u in cuff]),
        "cuff_sbp_mean_am_7d": mean([_sbp(u) for u in am]),
        "cuff_dbp_mean_am_7d": mean([_dbp(u) for u in am]),
        "cuff_sbp_mean_pm_7d": mean([_sbp(u) for u in pm]),
        "cuff_dbp_mean_pm_7d": mean([_dbp(u) for u in pm]),
        "cuff_sbp_mean_3d": mean(last3),
        "cuff_sbp_min_3d": min(last3) if last3 else math.nan,
        "cuff_sbp_sd_14d": sample_sd([_sbp(u) for u in cuff]),
        "cuff_sbp_slope_14d": ls_slope([u.t_days for u in cuff], [_sbp(u) for u in cuff]),
        "cuff_at_target_share_14d": mean([1.0 if ok else 0.0 for ok in at_target]),
    }


def _activity_features(usable: Sequence[_Timed]) -> dict[str, float]:
    week = [u for u in usable if u.days_back < 7]
    steps_by_day: dict[int, list[float]] = {}
    for u in week:
        if u.reading.kind == ReadingKind.STEP_COUNT:
            steps_by_day.setdefault(u.days_back, []).append(_value(u))
    return {
        "heart_rate_mean_7d": mean(
            [_value(u) for u in week if u.reading.kind == ReadingKind.HEART_RATE]
        ),
        # Days without step data are unknown (device not worn), not zero-step days.
        "steps_daily_mean_7d": mean([math.fsum(day) for day in steps_by_day.values()]),
    }


def _adherence(doses: Iterable[DoseEvent], as_of: datetime, zone: ZoneInfo, today: date) -> float:
    window = [
        d.taken
        for d in doses
        if d.time < as_of and (today - d.time.astimezone(zone).date()).days < 14
    ]
    return mean([1.0 if taken else 0.0 for taken in window])


def _symptom_features(
    symptoms: Iterable[SymptomPoint], as_of: datetime, zone: ZoneInfo, today: date
) -> dict[str, float]:
    # No report is "nothing reported" (0), not missing: absence is what most days look like.
    days_back = [
        ((today - s.time.astimezone(zone).date()).days, s) for s in symptoms if s.time < as_of
    ]
    recent = [s for back, s in days_back if back < 14]
    return {
        "hypotension_symptoms_3d": 1.0
        if any(s.hypotensive for back, s in days_back if back < 3)
        else 0.0,
        "symptom_reports_14d": float(len(recent)),
    }


def _days_since_change(regimen: RegimenFacts, as_of: datetime) -> int | None:
    if regimen.last_change is None:
        return None
    if regimen.last_change > as_of:
        # Regimen facts from after as_of would leak the future into a training example.
        raise ValueError("regimen.last_change is after as_of")
    return (as_of - regimen.last_change) // timedelta(days=1)


def _regimen_features(regimen: RegimenFacts, days_since: int | None) -> dict[str, float]:
    top = regimen.ladder_steps - 1
    return {
        "ladder_position": regimen.step / top if top > 0 else 0.0,
        "days_since_change": float(
            DAYS_SINCE_CHANGE_CAP if days_since is None else min(days_since, DAYS_SINCE_CHANGE_CAP)
        ),
        "never_changed": 1.0 if days_since is None else 0.0,
    }


def _patient_features(patient: PatientFacts, today: date) -> dict[str, float]:
    years = patient.age if patient.birth_date is None else age_years(patient.birth_date, today)
    if years is not None and years < 0:
        raise ValueError("birth_date is after as_of")
    return {
        "age_band": math.nan if years is None else float(age_band(years)),
        "sex_female": 1.0 if patient.sex == "female" else 0.0,
        "sex_male": 1.0 if patient.sex == "male" else 0.0,
        "diabetes": 1.0 if patient.diabetes else 0.0,
        "ckd": 1.0 if patient.ckd else 0.0,
    }
