"""Data checks before training (pure): schema, ranges, missingness, label balance, size.

Each check returns a `CheckResult`: its name, whether it passed, what was measured, the
threshold it was held to, and a sentence that says, on a failure, which values failed and by
how much. `run_checks` runs them all; a snapshot whose checks do not all pass is refused for
training (mlops/retrain.py answers 422 naming the failing checks).

The ranges come from the feature definitions (mlops/features.py) and the plausibility rules
readings pass at ingest (device_ingest/rules.py): a mean of plausible readings is plausible.
They catch broken extraction (a unit error, a swapped column), not clinical oddities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from device_ingest.rules import DBP_RANGE, HR_RANGE, SBP_RANGE, STEPS_MAX_PER_DAY
from mlops.features import (
    AGE_BAND_BOUNDS,
    DAYS_SINCE_CHANGE_CAP,
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    NULLABLE_FEATURES,
)
from mlops.model import CLASSES


@dataclass(frozen=True)
class Range:
    """The values a feature may take: [lo, hi], whole numbers only when `integer`."""

    lo: float
    hi: float
    integer: bool = False

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Mask of the values inside the range (NaN counts as inside: missingness is its own
        check)."""
        inside: np.ndarray = np.isnan(values) | ((values >= self.lo) & (values <= self.hi))
        if self.integer:
            inside &= np.isnan(values) | (values == np.round(values))
        return inside

    def describe(self) -> str:
        """The range as text, e.g. `[50, 300]` or `{0, 1}`."""
        if self.integer and (self.lo, self.hi) == (0, 1):
            return "{0, 1}"
        kind = " whole" if self.integer else ""
        return f"[{self.lo:g}, {self.hi:g}]{kind}"


BINARY: Final = Range(0, 1, integer=True)
_SBP: Final = Range(*SBP_RANGE)
_DBP: Final = Range(*DBP_RANGE)
_SHARE: Final = Range(0, 1)
# A least-squares slope over readings that span days (a proposal needs readings on 4 of the
# last 7 days); +-100 mmHg/day is far beyond any real trend and catches a time-unit error.
_SLOPE: Final = Range(-100, 100)

# Every base feature's range (mlops.features._BASE_DOCS defines them); indicators are binary.
_BASE_RANGES: Final[dict[str, Range]] = {
    "cuff_sbp_mean_7d": _SBP,
    "cuff_dbp_mean_7d": _DBP,
    "cuff_sbp_mean_14d": _SBP,
    "cuff_dbp_mean_14d": _DBP,
    "cuff_sbp_mean_am_7d": _SBP,
    "cuff_dbp_mean_am_7d": _DBP,
    "cuff_sbp_mean_pm_7d": _SBP,
    "cuff_dbp_mean_pm_7d": _DBP,
    "cuff_sbp_mean_3d": _SBP,
    "cuff_sbp_min_3d": _SBP,
    # The SD of values in [50, 300] is at most half the width.
    "cuff_sbp_sd_14d": Range(0, (SBP_RANGE[1] - SBP_RANGE[0]) / 2),
    "cuff_sbp_slope_14d": _SLOPE,
    "cuff_at_target_share_14d": _SHARE,
    # Counts of readings: whole and not negative; a week of readings every minute is 10,080.
    "cuff_readings_7d": Range(0, 7 * 24 * 60, integer=True),
    "cuff_days_7d": Range(0, 7, integer=True),
    "cuffless_sbp_mean_7d": _SBP,
    "cuffless_sbp_slope_14d": _SLOPE,
    "heart_rate_mean_7d": Range(*HR_RANGE),
    "steps_daily_mean_7d": Range(0, STEPS_MAX_PER_DAY),
    "adherence_14d": _SHARE,
    "hypotension_symptoms_3d": BINARY,
    "symptom_reports_14d": Range(0, 14 * 24, integer=True),
    "ladder_position": _SHARE,
    "days_since_change": Range(0, DAYS_SINCE_CHANGE_CAP, integer=True),
    "never_changed": BINARY,
    "age_band": Range(0, len(AGE_BAND_BOUNDS), integer=True),
    "sex_female": BINARY,
    "sex_male": BINARY,
    "diabetes": BINARY,
    "ckd": BINARY,
}
RANGES: Final[Mapping[str, Range]] = MappingProxyType(
    _BASE_RANGES | {f"{n}_missing": BINARY for n in NULLABLE_FEATURES}
)

# The largest share of rows in which a feature may be missing (NaN). Features that are always
# defined may never be. A proposal (hence a clinician decision) needs 12 validated-cuff
# readings on 4 of the last 7 days, so the weekly and fortnightly cuff means are present on
# every labelled row: more than a few percent missing means the extraction broke. Wearable
# features (cuffless, heart rate, steps) are optional devices: no limit.
_MAX_MISSING: Final[dict[str, float]] = {
    "cuff_sbp_mean_7d": 0.05,
    "cuff_dbp_mean_7d": 0.05,
    "cuff_sbp_mean_14d": 0.05,
    "cuff_dbp_mean_14d": 0.05,
    "cuff_sbp_mean_am_7d": 0.5,  # a patient may measure mornings only
    "cuff_dbp_mean_am_7d": 0.5,
    "cuff_sbp_mean_pm_7d": 0.5,
    "cuff_dbp_mean_pm_7d": 0.5,
    "cuff_sbp_mean_3d": 0.25,
    "cuff_sbp_min_3d": 0.25,
    "cuff_sbp_sd_14d": 0.05,
    "cuff_sbp_slope_14d": 0.05,
    "cuff_at_target_share_14d": 0.05,
    "cuffless_sbp_mean_7d": 1.0,
    "cuffless_sbp_slope_14d": 1.0,
    "heart_rate_mean_7d": 1.0,
    "steps_daily_mean_7d": 1.0,
    "adherence_14d": 0.5,  # dose reports come from a connected pill bottle or the app
    "age_band": 0.05,  # registered patients have a birth date
}
MAX_MISSING: Final[Mapping[str, float]] = MappingProxyType(
    {name: _MAX_MISSING.get(name, 0.0) for name in FEATURE_NAMES}
)
# Every action must make up at least this share of the rows: a model cannot learn (and its
# holdout metrics cannot judge) a class it has barely seen. Stated low on purpose: decreases
# are rare in practice (about 1.5% of the simulated protocol labels).
CLASS_SHARE_FLOOR: Final = 0.01


@dataclass(frozen=True)
class Thresholds:
    """What the checks hold a snapshot to (settings give the sizes; see app/core/config.py)."""

    min_rows: int = 100
    min_patients: int = 100
    min_holdout_patients: int = 10
    class_share_floor: float = CLASS_SHARE_FLOOR
    max_missing: Mapping[str, float] = field(default_factory=lambda: MAX_MISSING)


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: passed or not, what was measured, against what, and why."""

    name: str
    passed: bool
    measured: Any
    threshold: Any
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (stored in the snapshot's `checks`)."""
        return asdict(self)


@dataclass(frozen=True)
class Table:
    """The data under check: features, labels, patients, and the patient-level split."""

    feature_names: tuple[str, ...]
    feature_set: str
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    holdout: np.ndarray


def check_schema(table: Table) -> CheckResult:
    """The feature set and names (and their order) are this code's; labels are actions."""
    expected, got = list(FEATURE_NAMES), list(table.feature_names)
    missing = [n for n in expected if n not in got]
    unexpected = [n for n in got if n not in expected]
    order_ok = got == expected
    shape_ok = (
        table.X.ndim == 2 and table.X.shape[1] == len(got) and table.X.shape[0] == len(table.y)
    )
    labels = np.asarray(table.y)
    bad_labels = (
        int(np.count_nonzero((labels < 0) | (labels >= len(CLASSES)))) if labels.size else 0
    )
    same_set = table.feature_set == FEATURE_SET_VERSION
    passed = same_set and order_ok and shape_ok and bad_labels == 0
    problems = []
    if not same_set:
        problems.append(f"feature set {table.feature_set!r}, this code has {FEATURE_SET_VERSION!r}")
    if missing:
        problems.append(f"{len(missing)} features missing ({', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown features ({', '.join(unexpected[:5])})")
    if not missing and not unexpected and not order_ok:
        problems.append("features in another order")
    if not shape_ok:
        problems.append(f"matrix shape {table.X.shape} does not match the names and labels")
    if bad_labels:
        problems.append(f"{bad_labels} labels outside 0..{len(CLASSES) - 1}")
    return CheckResult(
        name="schema",
        passed=passed,
        measured={
            "feature_set": table.feature_set,
            "features": len(got),
            "missing": missing,
            "unexpected": unexpected,
            "order_matches": order_ok,
            "bad_labels": bad_labels,
        },
        threshold={"feature_set": FEATURE_SET_VERSION, "features": len(expected)},
        detail="; ".join(problems) if problems else f"{len(got)} features of {FEATURE_SET_VERSION}",
    )


def check_ranges(table: Table, ranges: Mapping[str, Range] = RANGES) -> CheckResult:
    """Every value lies in its feature's range (NaN aside); none may fall outside."""
    outside: dict[str, int] = {}
    notes = []
    for j, name in enumerate(table.feature_names):
        rng = ranges[name]
        column = table.X[:, j]
        bad = ~rng.contains(column)
        if bad.any():
            outside[name] = int(bad.sum())
            worst = column[bad]
            notes.append(
                f"{name}: {outside[name]} values outside {rng.describe()} "
                f"(from {np.min(worst):g} to {np.max(worst):g})"
            )
    return CheckResult(
        name="ranges",
        passed=not outside,
        measured={"out_of_range": outside},
        threshold={"max_out_of_range": 0},
        detail="; ".join(notes) if notes else "every value within its feature's range",
    )


def check_consistency(table: Table) -> CheckResult:
    """Each `<x>_missing` indicator is 1 exactly where x is NaN; sexes are exclusive."""
    index = {n: j for j, n in enumerate(table.feature_names)}
    mismatched: dict[str, int] = {}
    for name in NULLABLE_FEATURES:
        value, flag = table.X[:, index[name]], table.X[:, index[f"{name}_missing"]]
        wrong = np.isnan(value) != (flag == 1.0)
        if wrong.any():
            mismatched[f"{name}_missing"] = int(wrong.sum())
    both = int(
        np.count_nonzero(
            (table.X[:, index["sex_female"]] == 1.0) & (table.X[:, index["sex_male"]] == 1.0)
        )
    )
    if both:
        mismatched["sex_female+sex_male"] = both
    notes = [f"{name}: {n} rows inconsistent" for name, n in mismatched.items()]
    return CheckResult(
        name="consistency",
        passed=not mismatched,
        measured={"inconsistent_rows": mismatched},
        threshold={"max_inconsistent_rows": 0},
        detail="; ".join(notes) if notes else "missing indicators and sex flags consistent",
    )


def check_missingness(table: Table, max_missing: Mapping[str, float] = MAX_MISSING) -> CheckResult:
    """No feature is missing in more than its allowed share of rows."""
    n = table.X.shape[0]
    shares: dict[str, float] = {}
    over: dict[str, float] = {}
    for j, name in enumerate(table.feature_names):
        share = float(np.isnan(table.X[:, j]).mean()) if n else 0.0
        if share > 0:
            shares[name] = round(share, 4)
        if share > max_missing.get(name, 0.0):
            over[name] = share
    notes = [
        f"{name} missing in {share:.1%} of rows, at most {max_missing.get(name, 0.0):.0%} allowed "
        f"({share - max_missing.get(name, 0.0):.1%} over)"
        for name, share in over.items()
    ]
    return CheckResult(
        name="missingness",
        passed=not over,
        measured={"missing_share": shares},
        threshold={"max_missing_share": {k: v for k, v in max_missing.items() if v < 1.0}},
        detail="; ".join(notes) if notes else "missingness within limits",
    )


def check_label_balance(table: Table, floor: float = CLASS_SHARE_FLOOR) -> CheckResult:
    """Every action makes up at least `floor` of the rows."""
    labels = np.asarray(table.y, dtype=np.int64)
    n = labels.size
    counts = {str(a): int(np.count_nonzero(labels == i)) for i, a in enumerate(CLASSES)}
    shares = {a: (c / n if n else 0.0) for a, c in counts.items()}
    low = {a: s for a, s in shares.items() if s < floor}
    notes = [
        f"{a}: {counts[a]} of {n} rows ({s:.1%}), below the {floor:.0%} floor by "
        f"{floor - s:.1%} (needs {_rows(math.ceil(floor * n))})"
        for a, s in low.items()
    ]
    if n == 0:
        notes = ["no rows"]
    return CheckResult(
        name="label_balance",
        passed=not low and n > 0,
        measured={"counts": counts, "shares": {a: round(s, 4) for a, s in shares.items()}},
        threshold={"min_class_share": floor},
        detail="; ".join(notes) if notes else "every action at or above the floor",
    )


def _rows(k: int) -> str:
    return f"{k} row" if k == 1 else f"{k} rows"


def _at_least(name: str, measured: int, minimum: int, what: str) -> CheckResult:
    passed = measured >= minimum
    detail = (
        f"{measured} {what}, at least {minimum} needed"
        if passed
        else f"{measured} {what}, at least {minimum} needed ({minimum - measured} short)"
    )
    return CheckResult(
        name=name, passed=passed, measured=measured, threshold={"min": minimum}, detail=detail
    )


def check_size(table: Table, thresholds: Thresholds) -> list[CheckResult]:
    """Enough rows, patients, and holdout patients to train and to judge the result."""
    groups = np.asarray(table.groups)
    holdout = np.asarray(table.holdout, dtype=bool)
    return [
        _at_least("min_rows", len(table.y), thresholds.min_rows, "rows"),
        _at_least("min_patients", len(set(groups.tolist())), thresholds.min_patients, "patients"),
        _at_least(
            "min_holdout_patients",
            len(set(groups[holdout].tolist())),
            thresholds.min_holdout_patients,
            "holdout patients",
        ),
    ]


def run_checks(table: Table, thresholds: Thresholds = Thresholds()) -> list[CheckResult]:
    """Every check, in order; the column checks run only when the schema is this code's."""
    schema = check_schema(table)
    results = [schema]
    if schema.passed:
        results += [
            check_ranges(table),
            check_consistency(table),
            check_missingness(table, thresholds.max_missing),
        ]
    results.append(check_label_balance(table, thresholds.class_share_floor))
    results += check_size(table, thresholds)
    return results


def failed(results: Sequence[CheckResult]) -> list[CheckResult]:
    """The checks that did not pass."""
    return [r for r in results if not r.passed]


def refusal(results: Sequence[CheckResult]) -> str:
    """One sentence naming each failed check and by how much; empty when all passed."""
    return "; ".join(f"{r.name}: {r.detail}" for r in failed(results))
