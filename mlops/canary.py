"""The rollout's pure rules: the patient-hash slice, the step ladder, and the live analysis
that decides at each step whether a challenger advances, holds, completes or is rolled back.

No I/O and no clock: `mlops.rollout` gathers the counts of a step from the database and
passes them here, so every decision can be tested (and property-tested) without one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

# The canary's steps: the share of patients (percent) the challenger serves. Shadow (0%)
# comes first; after the last step's dwell the challenger becomes the production model.
STEPS: tuple[int, ...] = (10, 25, 50, 100)
_SCALE = 100.0 / 2**64


def bucket(salt: str, patient_id: str) -> float:
    """The patient's place in [0, 100) for a rollout's salt: sha256(salt + patient_id)."""
    digest = hashlib.sha256((salt + patient_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") * _SCALE


def in_slice(salt: str, patient_id: str, percent: float) -> bool:
    """True when the challenger serves this patient at `percent`.

    Monotone: a patient in the slice at one percent stays in it at every larger one, so a
    patient the challenger served at 10% is still its patient at 25%, 50% and 100%, and no
    patient switches back and forth between models as the rollout widens."""
    return bucket(salt, patient_id) < percent


def next_percent(percent: int) -> int | None:
    """The step after `percent` (0 is shadow); None after the last step (100%)."""
    for step in STEPS:
        if step > percent:
            return step
    return None


class Verdict(StrEnum):
    """What the analysis of a step decided."""

    ADVANCE = "advance"  # to the next step (shadow -> 10%, 10% -> 25%, ...)
    HOLD = "hold"  # the step goes on: dwell not over, or too little data yet
    ROLLBACK = "rollback"  # a breach: the challenger is retired, the champion serves all
    COMPLETE = "complete"  # 100% served clean for a dwell: the challenger goes to production


@dataclass(frozen=True)
class Arm:
    """What one model did during a step (counts and a latency figure, no patient data)."""

    scored: int = 0  # evaluations it was asked to score
    errors: int = 0  # of which it gave no answer (unusable artifact, inference raised)
    proposals: int = 0  # dose changes it proposed (holds excluded)
    auto_delivered: int = 0  # of which routing would deliver (or delivered) automatically
    decided: int = 0  # clinician decisions on its proposals
    overridden: int = 0  # of which the clinician modified or rejected it
    latency_p95_ms: float | None = None  # of its scoring time per evaluation
    latency_samples: int = 0

    @property
    def error_rate(self) -> float | None:
        """Errors among scored evaluations."""
        return self.errors / self.scored if self.scored else None

    @property
    def auto_share(self) -> float | None:
        """The routing mix: share of its proposals delivered automatically."""
        return self.auto_delivered / self.proposals if self.proposals else None

    @property
    def override_rate(self) -> float | None:
        """Clinician modify or reject among its decided proposals."""
        return self.overridden / self.decided if self.decided else None


@dataclass(frozen=True)
class Thresholds:
    """When a step may advance, and what counts as a breach (settings `canary_*`)."""

    min_scored: int = 20  # challenger evaluations in a step before it may advance
    min_decided: int = 20  # decisions per model before override rates are compared
    max_override_increase: float = 0.10  # challenger's override rate above the champion's
    min_proposals: int = 20  # proposals per model before routing mixes are compared
    max_mix_shift: float = 0.20  # |auto-delivered share, challenger - champion|
    max_error_increase: float = 0.02  # challenger's error rate above the champion's
    min_latency_samples: int = 20  # scoring times per model before latency is compared
    max_latency_ratio: float = 2.0  # challenger p95 / champion p95
    latency_slack_ms: float = 5.0  # a p95 within this of the champion's never breaches

    @classmethod
    def from_settings(cls, settings: Any) -> Thresholds:
        """The thresholds the settings name (`canary_<field>` for each field)."""
        return cls(**{name: getattr(settings, f"canary_{name}") for name in _FIELDS})


_FIELDS = tuple(Thresholds.__dataclass_fields__)


@dataclass(frozen=True)
class Check:
    """One live check: judged only with enough data; breached when judged and over."""

    name: str
    judged: bool
    breached: bool
    challenger: float | None
    champion: float | None
    limit: str
    note: str = ""


@dataclass(frozen=True)
class Analysis:
    """A step's verdict, why, and the evidence (stored on the RolloutStep row)."""

    verdict: Verdict
    reasons: tuple[str, ...]
    next_percent: int | None
    checks: tuple[Check, ...]

    def document(self) -> dict[str, Any]:
        """The analysis as JSON-able data (checks by name)."""
        return {
            "verdict": str(self.verdict),
            "next_percent": self.next_percent,
            "checks": {c.name: _check_doc(c) for c in self.checks},
        }


def _check_doc(check: Check) -> dict[str, Any]:
    doc = asdict(check)
    doc.pop("name")
    return doc


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def checks(challenger: Arm, champion: Arm, thresholds: Thresholds) -> tuple[Check, ...]:
    """The four live checks: error rate, override rate, routing mix, latency."""
    t = thresholds
    found: list[Check] = []

    # Errors: a model that cannot answer sends its patients to clinicians. Judged on any
    # count: a challenger that fails on one evaluation in ten must not widen.
    c_err, k_err = challenger.error_rate, champion.error_rate or 0.0
    found.append(
        Check(
            name="error_rate",
            judged=c_err is not None,
            breached=c_err is not None
            and challenger.errors > 0
            and c_err > k_err + t.max_error_increase,
            challenger=_round(c_err),
            champion=_round(champion.error_rate),
            limit=f"champion + {t.max_error_increase:g}",
        )
    )

    c_over, k_over = challenger.override_rate, champion.override_rate
    judged = (
        challenger.decided >= t.min_decided
        and champion.decided >= t.min_decided
        and c_over is not None
        and k_over is not None
    )
    found.append(
        Check(
            name="override_rate",
            judged=judged,
            breached=judged
            and c_over is not None
            and k_over is not None
            and c_over > k_over + t.max_override_increase,
            challenger=_round(c_over),
            champion=_round(k_over),
            limit=f"champion + {t.max_override_increase:g}",
            note="" if judged else f"needs {t.min_decided} decisions per model",
        )
    )

    c_mix, k_mix = challenger.auto_share, champion.auto_share
    judged = (
        challenger.proposals >= t.min_proposals
        and champion.proposals >= t.min_proposals
        and c_mix is not None
        and k_mix is not None
    )
    found.append(
        Check(
            name="routing_mix",
            judged=judged,
            breached=judged
            and c_mix is not None
            and k_mix is not None
            and abs(c_mix - k_mix) > t.max_mix_shift,
            challenger=_round(c_mix),
            champion=_round(k_mix),
            limit=f"|shift| <= {t.max_mix_shift:g}",
            note="" if judged else f"needs {t.min_proposals} proposals per model",
        )
    )

    c_lat, k_lat = challenger.latency_p95_ms, champion.latency_p95_ms
    judged = (
        challenger.latency_samples >= t.min_latency_samples
        and champion.latency_samples >= t.min_latency_samples
        and c_lat is not None
        and k_lat is not None
    )
    found.append(
        Check(
            name="latency_p95_ms",
            judged=judged,
            breached=judged
            and c_lat is not None
            and k_lat is not None
            and c_lat > max(k_lat * t.max_latency_ratio, k_lat + t.latency_slack_ms),
            challenger=_round(c_lat),
            champion=_round(k_lat),
            limit=f"max(champion x {t.max_latency_ratio:g}, champion + {t.latency_slack_ms:g})",
            note="" if judged else f"needs {t.min_latency_samples} samples per model",
        )
    )
    return tuple(found)


def _reason(check: Check) -> str:
    return f"{check.name} {check.challenger} vs champion {check.champion} (limit {check.limit})"


def analyse(
    *,
    percent: int,
    elapsed: timedelta,
    dwell: timedelta,
    challenger: Arm,
    champion: Arm,
    thresholds: Thresholds,
    artifact_problem: str | None = None,
) -> Analysis:
    """Decide a step: roll back on any breach (at once, dwell or not), else hold until the
    dwell is over and the challenger has scored enough, then advance or, at 100%, complete.

    `percent` is 0 in shadow. `artifact_problem` says why the challenger's artifact cannot
    be served (hash mismatch, feature set), itself a breach."""
    found = checks(challenger, champion, thresholds)
    breaches = [_reason(c) for c in found if c.breached]
    if artifact_problem is not None:
        breaches.insert(0, f"artifact_unusable: {artifact_problem}")
    following = next_percent(percent)
    if breaches:
        return Analysis(Verdict.ROLLBACK, tuple(breaches), None, found)
    waiting: list[str] = []
    if elapsed < dwell:
        left = math.ceil((dwell - elapsed).total_seconds())
        waiting.append(f"dwell: {left} s left of {int(dwell.total_seconds())} s")
    if challenger.scored < thresholds.min_scored:
        waiting.append(
            f"insufficient_data: {challenger.scored} of {thresholds.min_scored} evaluations"
        )
    if waiting:
        return Analysis(Verdict.HOLD, tuple(waiting), None, found)
    if following is None:
        return Analysis(Verdict.COMPLETE, ("clean at 100% for the dwell",), None, found)
    stage = "shadow" if percent == 0 else f"{percent}%"
    return Analysis(Verdict.ADVANCE, (f"clean at {stage} for the dwell",), following, found)


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile (nearest rank), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(0.95 * len(ordered)), 1)
    return float(ordered[rank - 1])
