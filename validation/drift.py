"""Drift monitoring rules: which test each column gets, when a result counts as drift, where
the drift sits (device model, subgroup), and when a report raises an alert. Pure: no I/O.

The tests themselves run in Evidently (`validation.monitoring`); these functions choose them,
read their scores and decide. Test choice follows Evidently's own defaults (Kolmogorov-Smirnov,
chi-square or Z-test on small samples, normed Wasserstein or Jensen-Shannon distance on large
ones, by how many distinct values a column takes), but on the smaller of the two samples, not
the reference alone: a large reference against a handful of current rows is a small sample.
(Columns of 3-5 values get K-S rather than chi-square: see `choose_test`.)
P-value tests are Bonferroni-corrected over every test of the report, so one report has at
most a `family_alpha` chance of a false drift finding among its p-value tests; distance tests
compare an effect size with a fixed threshold and need no correction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class Stattest(StrEnum):
    """The Evidently stattests the monitor uses, by their Evidently registry names."""

    KS = "ks"
    CHI_SQUARE = "chisquare"
    Z = "z"
    WASSERSTEIN = "wasserstein"
    JENSEN_SHANNON = "jensenshannon"


# How Evidently names each test in its reports.
DISPLAY_NAMES: Final[Mapping[Stattest, str]] = {
    Stattest.KS: "K-S p_value",
    Stattest.CHI_SQUARE: "chi-square p_value",
    Stattest.Z: "Z-test p_value",
    Stattest.WASSERSTEIN: "Wasserstein distance (normed)",
    Stattest.JENSEN_SHANNON: "Jensen-Shannon distance",
}
# A p-value test finds drift below its threshold; a distance test at or above it.
P_VALUE_TESTS: Final = frozenset({Stattest.KS, Stattest.CHI_SQUARE, Stattest.Z})


class Status(StrEnum):
    """What a drift report concluded."""

    OK = "ok"
    ALERT = "alert"
    INSUFFICIENT_DATA = "insufficient_data"
    NO_REFERENCE = "no_reference"


class Reason(StrEnum):
    """Why a report alerts."""

    FEATURE_DRIFT = "feature_drift"  # a model feature moved across the whole window
    SEGMENT_DRIFT = "segment_drift"  # it moved for one device model or subgroup
    PREDICTION_DRIFT = "prediction_drift"  # the model's outputs moved
    OVERRIDE_RATE = "override_rate"  # clinicians override the model more (concept drift)


@dataclass(frozen=True)
class Thresholds:
    """Every tunable of the drift monitor (docs/monitoring.md explains each)."""

    # Chance of any false finding among one report's p-value tests (Bonferroni-split).
    family_alpha: float = 0.05
    # From this many rows in the smaller sample on, distances replace p-values.
    large_sample: int = 1000
    wasserstein: float = 0.1  # normed by the reference's standard deviation
    jensen_shannon: float = 0.1
    # Up to this many distinct values a column is tested as categorical.
    max_categories: int = 5
    # Fewer current rows than this: the window is too thin to test at all.
    min_rows: int = 30
    # A device model or subgroup is tested only with this many rows on both sides.
    min_segment_rows: int = 30
    # Concept drift: clinicians' override rate (modified + rejected) / decided.
    min_decisions: int = 20
    override_increase: float = 0.10  # absolute rise against the previous window
    override_alpha: float = 0.05  # one-sided two-proportion z-test
    override_ceiling: float = 0.5  # at or above this rate, alert whatever came before

    def __post_init__(self) -> None:
        if not 0 < self.family_alpha < 1 or not 0 < self.override_alpha < 1:
            raise ValueError("alphas lie strictly between 0 and 1")
        if min(self.min_rows, self.min_segment_rows, self.min_decisions, self.large_sample) < 2:
            raise ValueError("minimum sizes must be at least 2")
        if self.wasserstein <= 0 or self.jensen_shannon <= 0 or self.max_categories < 2:
            raise ValueError("distance thresholds must be positive, categories at least 2")
        if not 0 < self.override_increase < 1 or not 0 < self.override_ceiling <= 1:
            raise ValueError("override thresholds are shares")


@dataclass(frozen=True)
class TestChoice:
    """The test a column gets and its threshold."""

    method: Stattest
    threshold: float
    categorical: bool


def bonferroni(family_alpha: float, tests: int) -> float:
    """The per-test alpha that keeps `tests` tests' family-wise error at `family_alpha`."""
    if tests < 1:
        raise ValueError("at least one test")
    return family_alpha / tests


def choose_test(
    *, n_reference: int, n_current: int, distinct: int, alpha: float, thresholds: Thresholds
) -> TestChoice:
    """Evidently's default test for a column, chosen on the smaller sample, with our threshold.

    `distinct` counts the column's distinct non-missing values over both samples."""
    if distinct < 2:
        raise ValueError("a constant column has no distribution to compare")
    if min(n_reference, n_current) >= thresholds.large_sample:
        if distinct <= thresholds.max_categories:
            return TestChoice(Stattest.JENSEN_SHANNON, thresholds.jensen_shannon, True)
        return TestChoice(Stattest.WASSERSTEIN, thresholds.wasserstein, False)
    if distinct == 2:
        return TestChoice(Stattest.Z, alpha, True)
    # Evidently would take chi-square for 3-5 values; its expected counts come from the
    # reference, so a value rare there but present now scores p = 0. Our few-valued columns
    # are ordinal (days with readings, age band, ladder position): K-S suits them, and is
    # conservative on discrete data.
    return TestChoice(Stattest.KS, alpha, False)


def is_drift(method: Stattest, score: float, threshold: float) -> bool:
    """Whether a test's score means drift (p-value below, distance at or above threshold)."""
    if math.isnan(score):
        return False  # Evidently could not score it: reported, never an alert by itself
    if method in P_VALUE_TESTS:
        return score < threshold
    return score >= threshold


@dataclass(frozen=True)
class ColumnDrift:
    """One column's test: what ran, its score, and the verdict."""

    column: str
    method: Stattest
    score: float
    threshold: float
    n_reference: int
    n_current: int

    @property
    def drifted(self) -> bool:
        """True when the score crosses the threshold."""
        return is_drift(self.method, self.score, self.threshold)

    @property
    def test_name(self) -> str:
        """The test as Evidently names it, e.g. 'K-S p_value'."""
        return DISPLAY_NAMES[self.method]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "column": self.column,
            "stattest": str(self.method),
            "test": self.test_name,
            "score": None if math.isnan(self.score) else self.score,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
        }


# The regimen-history features: set by the loop's own decisions (and by how long each patient
# has been treated), not measured on the patient. A training cohort that followed the protocol
# at once, every week from enrolment, and a clinic whose clinicians titrate at their own pace
# differ in them from the first day; that pace is what the override rate and the canary
# watch. They are tested and reported, but raise no alert and are located in no segment.
PROCESS_FEATURES: Final = ("ladder_position", "days_since_change", "never_changed")

# ------------------------------------------------------------------------------ segments

# The dimensions drift is broken down by: the device that measured the blood pressure, and the
# subgroups the validation gates also check.
DEVICE_MODEL: Final = "device_model"
SEX: Final = "sex"
AGE_BAND: Final = "age_band"
DIABETES_OR_CKD: Final = "diabetes_or_ckd"
DIMENSIONS: Final = (DEVICE_MODEL, SEX, AGE_BAND, DIABETES_OR_CKD)
UNKNOWN: Final = "unknown"
AGE_BAND_LABELS: Final = ("<40", "40-49", "50-59", "60-69", "70-79", ">=80")


def sex_label(female: float, male: float) -> str:
    """The sex segment from the two sex features."""
    if female >= 0.5:
        return "female"
    if male >= 0.5:
        return "male"
    return "other or unknown"


def age_band_label(band: float) -> str:
    """The age-band segment from the encoded `age_band` feature (NaN: unknown)."""
    if math.isnan(band):
        return UNKNOWN
    index = int(band)
    if not 0 <= index < len(AGE_BAND_LABELS) or index != band:
        raise ValueError(f"not an age band: {band!r}")
    return AGE_BAND_LABELS[index]


def diabetes_or_ckd_label(diabetes: float, ckd: float) -> str:
    """'yes' with diabetes or chronic kidney disease (the lower BP target), else 'no'."""
    return "yes" if diabetes >= 0.5 or ckd >= 0.5 else "no"


def device_name(manufacturer: str, model: str) -> str:
    """A device model's full name, "A&D UA-651": readings store the model alone ("UA-651"),
    the simulator and the training reference the maker and model; a model already named
    with its maker is left as it is."""
    maker, model = manufacturer.strip(), model.strip()
    if not maker or model.casefold().startswith(maker.casefold()):
        return model
    return f"{maker} {model}".strip()


def device_label(model: str | None) -> str:
    """The device-model segment; an unrecorded model is 'unknown'."""
    return model.strip() if model and model.strip() else UNKNOWN


@dataclass(frozen=True)
class SegmentDrift:
    """The drift tests of one segment (e.g. device_model = 'A&D UA-651')."""

    dimension: str
    value: str
    n_current: int
    n_reference: int
    reference_scope: str  # "segment": the same segment of the reference; "all": all of it
    columns: tuple[ColumnDrift, ...]

    @property
    def drifted_columns(self) -> tuple[ColumnDrift, ...]:
        """The columns whose test found drift, strongest first."""
        return tuple(sorted((c for c in self.columns if c.drifted), key=_strength, reverse=True))

    @property
    def label(self) -> str:
        """e.g. 'device_model=A&D UA-651'."""
        return f"{self.dimension}={self.value}"


def _strength(column: ColumnDrift) -> float:
    # Larger is stronger for both kinds: a smaller p-value, a larger distance.
    if math.isnan(column.score):
        return -math.inf
    if column.method in P_VALUE_TESTS:
        return -math.log10(max(column.score, 1e-300))
    return column.score / column.threshold


def strongest_first(columns: Iterable[ColumnDrift]) -> list[ColumnDrift]:
    """Drifted columns ordered strongest first."""
    return sorted((c for c in columns if c.drifted), key=_strength, reverse=True)


@dataclass(frozen=True)
class Attribution:
    """Drift located in one segment: it moved there and not in a sibling of its dimension."""

    dimension: str
    value: str
    columns: tuple[ColumnDrift, ...]  # the features that moved there, strongest first
    steady_siblings: tuple[str, ...]  # values of the same dimension where they did not

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "dimension": self.dimension,
            "value": self.value,
            "features": [c.as_dict() for c in self.columns],
            "steady_siblings": list(self.steady_siblings),
        }


def attribute(segments: Sequence[SegmentDrift]) -> list[Attribution]:
    """The segments drift is located in: a segment's drifted feature counts when a sibling
    segment (same dimension, tested on that feature) did not drift on it. Ordered device
    models first, then subgroups, strongest first within each.

    Drift everywhere in a dimension (a seasonal shift, a new population) is attributed to no
    segment of it; drift in one device model's readings is attributed to that model alone."""
    by_dimension: dict[str, list[SegmentDrift]] = {}
    for segment in segments:
        by_dimension.setdefault(segment.dimension, []).append(segment)
    found: list[Attribution] = []
    for dimension, members in by_dimension.items():
        for segment in members:
            located: list[ColumnDrift] = []
            steady: set[str] = set()
            for column in segment.drifted_columns:
                calm = [
                    other.value
                    for other in members
                    if other is not segment
                    and any(c.column == column.column and not c.drifted for c in other.columns)
                ]
                if calm:
                    located.append(column)
                    steady.update(calm)
            if located:
                found.append(
                    Attribution(dimension, segment.value, tuple(located), tuple(sorted(steady)))
                )
    # Device models first, then the subgroups (in DIMENSIONS order), each strongest first:
    # a device reading high shifts every subgroup its users belong to, so a device model is
    # the first explanation to try (see `validation.monitoring`'s explaining away).
    found.sort(key=lambda a: (_rank(a.dimension), -max(_strength(c) for c in a.columns)))
    return found


def _rank(dimension: str) -> int:
    return DIMENSIONS.index(dimension) if dimension in DIMENSIONS else len(DIMENSIONS)


# ------------------------------------------------------------------------------ concept drift


@dataclass(frozen=True)
class OverrideSignal:
    """Clinicians' override rate in this window against the previous one."""

    current_overridden: int
    current_decided: int
    previous_overridden: int
    previous_decided: int
    p_value: float | None
    alert: bool
    reason: str

    @property
    def current_rate(self) -> float | None:
        """Overridden share of decisions in this window."""
        return _rate(self.current_overridden, self.current_decided)

    @property
    def previous_rate(self) -> float | None:
        """Overridden share of decisions in the previous window."""
        return _rate(self.previous_overridden, self.previous_decided)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "current_overridden": self.current_overridden,
            "current_decided": self.current_decided,
            "current_rate": self.current_rate,
            "previous_overridden": self.previous_overridden,
            "previous_decided": self.previous_decided,
            "previous_rate": self.previous_rate,
            "p_value": self.p_value,
            "alert": self.alert,
            "reason": self.reason,
        }


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def one_sided_two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """P-value that proportion 1 exceeds proportion 2 by chance (pooled z-test)."""
    if n1 < 1 or n2 < 1 or not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError("counts must satisfy 0 <= x <= n, n >= 1")
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = x1 / n1 - x2 / n2
    if se == 0:
        return 0.0 if diff > 0 else 1.0
    return 0.5 * math.erfc(diff / se / math.sqrt(2))


def override_signal(
    *,
    current_overridden: int,
    current_decided: int,
    previous_overridden: int,
    previous_decided: int,
    thresholds: Thresholds,
) -> OverrideSignal:
    """Alert when clinicians override markedly more than in the previous window, or more
    often than not: the model no longer matches their practice (concept drift)."""
    counts = (current_overridden, current_decided, previous_overridden, previous_decided)
    if current_overridden > current_decided or previous_overridden > previous_decided:
        raise ValueError("more overrides than decisions")
    if min(counts) < 0:
        raise ValueError("counts must not be negative")

    def signal(p: float | None, alert: bool, reason: str) -> OverrideSignal:
        return OverrideSignal(*counts, p, alert, reason)

    if current_decided < thresholds.min_decisions:
        return signal(None, False, "too_few_decisions")
    rate = current_overridden / current_decided
    if rate >= thresholds.override_ceiling:
        return signal(None, True, "above_ceiling")
    if previous_decided < thresholds.min_decisions:
        return signal(None, False, "no_baseline")
    p = one_sided_two_proportion_p(
        current_overridden, current_decided, previous_overridden, previous_decided
    )
    rise = rate - previous_overridden / previous_decided
    if rise >= thresholds.override_increase and p < thresholds.override_alpha:
        return signal(p, True, "increase")
    return signal(p, False, "steady")


# ------------------------------------------------------------------------------ verdict


@dataclass(frozen=True)
class Verdict:
    """A report's status and, for an alert, every reason."""

    status: Status
    reasons: tuple[Reason, ...] = field(default_factory=tuple)


def verdict(
    *,
    reference_available: bool,
    n_current: int,
    drifted_features: Sequence[str],
    attributions: Sequence[Attribution],
    drifted_predictions: Sequence[str],
    override: OverrideSignal | None,
    thresholds: Thresholds,
) -> Verdict:
    """Alert on any drift finding; otherwise say why nothing could be tested, or ok."""
    reasons: list[Reason] = []
    if drifted_features:
        reasons.append(Reason.FEATURE_DRIFT)
    if attributions:
        reasons.append(Reason.SEGMENT_DRIFT)
    if drifted_predictions:
        reasons.append(Reason.PREDICTION_DRIFT)
    if override is not None and override.alert:
        reasons.append(Reason.OVERRIDE_RATE)
    if reasons:
        return Verdict(Status.ALERT, tuple(reasons))
    if not reference_available:
        return Verdict(Status.NO_REFERENCE)
    if n_current < thresholds.min_rows:
        return Verdict(Status.INSUFFICIENT_DATA)
    return Verdict(Status.OK)


def headline(
    status: Status,
    *,
    drifted_features: Sequence[ColumnDrift],
    attributions: Sequence[Attribution],
    override: OverrideSignal | None,
    drifted_predictions: Sequence[ColumnDrift],
    limit: int = 3,
    n_current: int | None = None,
    min_rows: int | None = None,
    reference_error: str | None = None,
) -> str:
    """One line for people: which features moved, by how much, with which test, where; or
    why nothing was tested (how many patients there were, why there is no reference)."""
    if status is Status.INSUFFICIENT_DATA and n_current is not None and min_rows is not None:
        # "Patients scored with enough readings": one evaluated without them is no row.
        return (
            f"Too few patients to test: {n_current} scored in the window with enough "
            f"readings, {min_rows} needed."
        )
    if status is Status.NO_REFERENCE and reference_error:
        return f"No training reference available ({reference_error}): nothing was tested."
    if status is not Status.ALERT:
        return {
            Status.OK: "No drift found.",
            Status.INSUFFICIENT_DATA: "Too few evaluated patients in the window to test.",
            Status.NO_REFERENCE: "No training reference available: nothing was tested.",
        }.get(status, str(status))
    parts: list[str] = []
    for a in attributions[:limit]:
        moved = ", ".join(_describe(c) for c in a.columns[:limit])
        parts.append(f"{a.dimension} {a.value}: {moved}")
    if drifted_features:
        parts.append("all patients: " + ", ".join(_describe(c) for c in drifted_features[:limit]))
    if drifted_predictions:
        parts.append("predictions: " + ", ".join(_describe(c) for c in drifted_predictions[:limit]))
    if override is not None and override.alert and override.current_rate is not None:
        before = override.previous_rate
        was = "" if before is None else f" (was {before:.0%})"
        parts.append(f"override rate {override.current_rate:.0%}{was}")
    return "Drift: " + "; ".join(parts) + "."


def _describe(column: ColumnDrift) -> str:
    return f"{column.column} ({column.test_name} {_score(column.score)})"


def _score(score: float) -> str:
    return f"{score:.2g}" if score < 0.01 else f"{score:.3f}"
