"""What an auditor can choose: each report's title, purpose and the filters it honours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from reports.models import ReportFormat, ReportKind


@dataclass(frozen=True)
class Entry:
    """One report in the catalogue."""

    kind: ReportKind
    title: str
    description: str
    filters: tuple[str, ...]  # the query parameters the report honours
    formats: tuple[ReportFormat, ...] = tuple(ReportFormat)
    verifiable_export: bool = False  # also offered as the signed, offline-verifiable ZIP


CATALOGUE: Final = (
    Entry(
        ReportKind.AUDIT_TRAIL,
        "Audit trail",
        "Every audit entry of the period (actor, action, resource, outcome, request id) and "
        "the signed tree head covering it.",
        ("patient_id", "actor"),
        verifiable_export=True,
    ),
    Entry(
        ReportKind.DECISION_LOG,
        "AI decision log",
        "Each AI proposal with its explanation, envelope version and routing reasons, and the "
        "clinician's signed decision (name, UTC time, meaning) or automatic delivery.",
        ("patient_id", "actor", "model_version"),
    ),
    Entry(
        ReportKind.MODEL_CARD,
        "Model card",
        "One model version (default: the one in production at the end of the period): use, "
        "data, metrics overall and per subgroup, validation evidence, privacy, known limits.",
        ("model_version",),
    ),
    Entry(
        ReportKind.PRIVACY_BUDGET,
        "Privacy budget statement",
        "Per data cohort: the privacy budget, what each training run spent and what remains.",
        ("cohort",),
    ),
    Entry(
        ReportKind.CHANGE_CONTROL,
        "Change-control log",
        "Each model change with its gate evidence, approvers, rollout steps and rollbacks.",
        ("model_version",),
    ),
    Entry(
        ReportKind.MONITORING,
        "Monitoring summary",
        "Drift findings, override rates, alerts and time to acknowledge crisis alerts against "
        "the target.",
        ("model_version",),
    ),
    Entry(
        ReportKind.ACCESS,
        "Access report",
        "Who read which patient's data (by pseudonym), and every denial.",
        ("patient_id", "actor"),
    ),
)

BY_KIND: Final = {entry.kind: entry for entry in CATALOGUE}


def entry(kind: str) -> Entry | None:
    """The catalogue entry of a kind as typed (`decision-log`), or None if there is none."""
    try:
        return BY_KIND[ReportKind(kind)]
    except ValueError:
        return None
