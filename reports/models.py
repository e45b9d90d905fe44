"""The shape every compliance report takes, whatever it reports and however it is rendered.

A builder (one module per report in `reports/`) reads the database and returns a `Report`;
`reports.render` turns any `Report` into HTML, PDF or CSV. Builders never render, and
renderers never query, so each can be tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class ReportKind(StrEnum):
    """The reports an auditor can choose (issue 8)."""

    AUDIT_TRAIL = "audit-trail"
    DECISION_LOG = "decision-log"
    MODEL_CARD = "model-card"
    PRIVACY_BUDGET = "privacy-budget"
    CHANGE_CONTROL = "change-control"
    MONITORING = "monitoring"
    ACCESS = "access"


class ReportFormat(StrEnum):
    """How a report can be exported."""

    HTML = "html"
    PDF = "pdf"
    CSV = "csv"


@dataclass(frozen=True)
class Period:
    """A half-open UTC interval [start, end) the report covers."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a report period must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise ValueError("a report period must end after it starts")

    def label(self) -> str:
        """The period as printed in headers and footers: ISO dates/times in UTC."""
        return f"{self.start.isoformat()} to {self.end.isoformat()} (UTC, end excluded)"


@dataclass(frozen=True)
class Filters:
    """Optional narrowing an auditor may ask for; a builder ignores what does not apply."""

    patient_id: str | None = None  # the pseudonymous patient id
    actor: str | None = None
    model_version: int | None = None
    cohort: str | None = None

    def describe(self) -> list[tuple[str, str]]:
        """The filters in force, as (name, value) pairs, for the report header."""
        pairs = [
            ("patient", self.patient_id),
            ("actor", self.actor),
            ("model version", None if self.model_version is None else str(self.model_version)),
            ("cohort", self.cohort),
        ]
        return [(k, v) for k, v in pairs if v is not None]


@dataclass(frozen=True)
class Table:
    """A section's rows: every cell already a string, in the column order given."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError("every row needs one cell per column")


@dataclass(frozen=True)
class Section:
    """One part of a report: a heading, key facts, prose notes and at most one table."""

    heading: str
    facts: tuple[tuple[str, str], ...] = ()  # (label, value) shown as a definition list
    notes: tuple[str, ...] = ()  # paragraphs (plain text; the renderer escapes them)
    table: Table | None = None
    # The CSV export writes the tables of sections marked `primary` (see reports.render).
    primary: bool = True


@dataclass(frozen=True)
class Report:
    """A built report: what it is, for when, for whom, and its sections."""

    kind: ReportKind
    title: str
    period: Period
    generated_at: datetime
    generated_by: str  # the auditor's username (or "system:scheduler" for the monthly pack)
    filters: Filters = field(default_factory=Filters)
    summary: tuple[tuple[str, str], ...] = ()  # the key figures, shown first
    sections: tuple[Section, ...] = ()
