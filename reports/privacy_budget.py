"""The privacy budget statement per data cohort: the budget, what the training runs spent of
it and what remains, each run's cost (and each refused run, from the audit log), and what the
guarantee means and does not.

`filters.cohort` narrows it to one cohort; without it every cohort the code knows
(`mlops.snapshots.COHORTS`) and every cohort the ledger names. Reads the privacy ledger, the
versions and snapshots it names and the `model.train` refusals in the audit log; aggregates
only. Never writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core.config import Settings, get_settings
from audit.models import AuditEntry, Outcome
from mlops import ledger, registry, snapshots
from mlops.models import ModelVersion, PrivacySpend, TrainingSnapshot
from reports.lifecycle_cells import NONE, Actors, num, when
from reports.models import Filters, Period, Report, ReportKind, Section, Table

_COLUMNS: Final = (
    "entry",
    "at",
    "in period",
    "outcome",
    "model version",
    "epsilon",
    "delta",
    "accountant",
    "unit",
    "rows trained",
    "snapshot",
    "cumulative epsilon",
    "detail",
    "by",
)
LIMITS: Final = (
    "The budget is never replenished by time: once spent, the cohort's data train no more "
    "models unless the budget setting is raised, a policy decision that weakens the stated "
    "guarantee and belongs in the change-control record.",
    "Composition is basic sequential composition: the epsilons and the deltas of all runs on "
    "a cohort add up. It is loose (composing the runs' RDP curves would give a smaller total) "
    "but holds for any mix of runs and accountants; it charges the whole cohort for every run, "
    "also patients who joined after it.",
    "Opacus secure_mode is off (torchcsprng does not install): each run's seed comes from a "
    "cryptographically secure generator, but the noise and the batch sampling come from "
    "torch's pseudo-random generator, and floating-point attacks on the Gaussian noise are not "
    "mitigated. Epsilon is that of the idealised mechanism.",
    "Released outside epsilon: the calibration temperature, the holdout and subgroup metrics, "
    "the snapshots' row, patient and label counts and data-check results, and whether a run "
    "was refused (this statement shows them).",
    "Differential privacy limits what the released models reveal; it does not protect the "
    "training snapshot files or the database, which access control and the host protect.",
)


def build(
    session: Session,
    *,
    period: Period,
    filters: Filters,
    generated_by: str,
    now: datetime,
    settings: Settings | None = None,
) -> Report:
    """The privacy budget statement of `filters.cohort`, or of every cohort."""
    settings = settings or get_settings()
    budget = settings.privacy_budget_epsilon
    entries = ledger.entries(session, cohort=filters.cohort)
    refusals = _refusals(session, period)
    if filters.cohort is not None:
        cohorts = [filters.cohort]
    else:
        cohorts = sorted(set(snapshots.COHORTS) | {e.cohort for e in entries})
    versions = _versions(session, entries)
    snaps = _snapshots(session, entries)
    actors = Actors(session)
    sections: list[Section] = []
    summary: list[tuple[str, str]] = [("budget per cohort (epsilon)", num(budget))]
    for cohort in cohorts:
        statement = _Statement(
            cohort=cohort,
            entries=[e for e in entries if e.cohort == cohort],
            refusals=[r for r in refusals if r[1].get("cohort") == cohort],
            period=period,
            budget=budget,
            versions=versions,
            snaps=snaps,
            actors=actors,
        )
        summary.append((f"cohort {cohort}", statement.headline()))
        sections.append(statement.section())
    if filters.cohort is None:
        outside = _outside_ledger(session, period, entries)
        if outside is not None:
            sections.append(outside)
    scope = f"cohort {filters.cohort}" if filters.cohort else "every cohort"
    return Report(
        kind=ReportKind.PRIVACY_BUDGET,
        title=f"Privacy budget statement: {scope}",
        period=period,
        generated_at=now,
        generated_by=generated_by,
        filters=filters,
        summary=tuple(summary),
        sections=tuple(sections),
    )


def _refusals(session: Session, period: Period) -> list[tuple[AuditEntry, dict[str, Any]]]:
    """Refused training runs in the period (audited `model.train`, outcome failure)."""
    rows = session.scalars(
        select(AuditEntry)
        .where(
            col(AuditEntry.action) == "model.train",
            col(AuditEntry.outcome) == Outcome.FAILURE,
            col(AuditEntry.ts) >= period.start,
            col(AuditEntry.ts) < period.end,
        )
        .order_by(col(AuditEntry.seq))
    )
    out = []
    for row in rows:
        try:
            details = json.loads(row.details)
        except ValueError:
            details = {}
        out.append((row, details if isinstance(details, dict) else {}))
    return out


def _versions(
    session: Session, entries: Sequence[PrivacySpend]
) -> dict[tuple[str, int], ModelVersion]:
    wanted = {e.model_version for e in entries if e.model_version is not None}
    if not wanted:
        return {}
    found = session.scalars(select(ModelVersion).where(col(ModelVersion.version).in_(wanted)))
    return {(v.name, v.version): v for v in found}


def _snapshots(session: Session, entries: Sequence[PrivacySpend]) -> dict[int, TrainingSnapshot]:
    wanted = {e.snapshot_id for e in entries if e.snapshot_id is not None}
    if not wanted:
        return {}
    found = session.scalars(select(TrainingSnapshot).where(col(TrainingSnapshot.id).in_(wanted)))
    return {s.id or 0: s for s in found}


def _runs(n: int, what: str = "run") -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class _Statement:
    """One cohort's statement (pure once its rows are read)."""

    def __init__(
        self,
        *,
        cohort: str,
        entries: list[PrivacySpend],
        refusals: list[tuple[AuditEntry, dict[str, Any]]],
        period: Period,
        budget: float,
        versions: Mapping[tuple[str, int], ModelVersion],
        snaps: Mapping[int, TrainingSnapshot],
        actors: Actors,
    ) -> None:
        self.cohort, self.period, self.budget = cohort, period, budget
        self.refusals, self.versions, self.snaps, self.actors = refusals, versions, snaps, actors
        self.upto = [e for e in entries if e.created_at < period.end]
        self.before = [e for e in self.upto if e.created_at < period.start]
        self.within = [e for e in self.upto if e.created_at >= period.start]
        self.later = [e for e in entries if e.created_at >= period.end]
        self.spent = math.fsum(e.epsilon for e in self.upto)
        self.spent_delta = math.fsum(e.delta for e in self.upto)

    @property
    def remaining(self) -> float:
        return max(self.budget - self.spent, 0.0)

    def unit(self) -> str:
        units = {str(e.details.get("privacy_unit") or "") for e in self.upto} - {""}
        if not units:
            return (
                "patient"
                if snapshots.COHORTS.get(self.cohort) == snapshots.SOURCE_DECISIONS
                else "row"
            )
        return " or ".join(sorted(units))

    def headline(self) -> str:
        refused = f"; {len(self.refusals)} refused" if self.refusals else ""
        return (
            f"epsilon {num(self.spent)} of {num(self.budget)} spent by the end of the period, "
            f"{num(self.remaining)} remaining ({_runs(len(self.upto))}{refused})"
        )

    def section(self) -> Section:
        known = self.cohort in snapshots.COHORTS
        facts: list[tuple[str, str]] = [
            ("source", snapshots.COHORTS.get(self.cohort, "not a cohort this code knows")),
            ("total budget (epsilon)", num(self.budget)),
            ("spent before the period", num(math.fsum(e.epsilon for e in self.before))),
            ("spent in the period", num(math.fsum(e.epsilon for e in self.within))),
            ("spent by the end of the period", num(self.spent)),
            ("remaining at the end of the period", num(self.remaining)),
            ("delta spent by the end of the period", num(self.spent_delta)),
            ("runs by the end of the period", str(len(self.upto))),
            ("runs in the period", str(len(self.within))),
            ("refused runs in the period", str(len(self.refusals))),
            ("unit of privacy", self.unit()),
            ("composition", ledger.COMPOSITION),
        ]
        recorded = {_number(e.details.get("budget_epsilon")) for e in self.upto} - {None}
        if recorded and recorded != {self.budget}:
            facts.append(
                (
                    "budget recorded by the runs",
                    ", ".join(num(b) for b in sorted(x for x in recorded if x is not None)),
                )
            )
        if self.later:
            facts.append(
                (
                    "runs after the period",
                    f"{len(self.later)} (epsilon {num(math.fsum(e.epsilon for e in self.later))}"
                    "; not counted above)",
                )
            )
        notes = [self._meaning()]
        if not known:
            notes.append(f"No cohort named {self.cohort!r} is defined in this code.")
        if snapshots.COHORTS.get(self.cohort) == snapshots.SOURCE_SIMULATED:
            notes.append("This cohort is simulated: no real person is in its data.")
        notes.extend(LIMITS)
        rows = self._rows()
        return Section(
            heading=f"Cohort {self.cohort}",
            facts=tuple(facts),
            notes=tuple(notes),
            table=Table(_COLUMNS, tuple(rows)) if rows else None,
        )

    def _meaning(self) -> str:
        unit = self.unit()
        if not self.upto:
            return (
                f"No training run used this cohort's data by the end of the period: nothing "
                f"has been revealed about any {unit} through a model."
            )
        n = len(self.upto)
        text = (
            f"By the end of the period {_runs(n, 'training run')} used this cohort's data. "
            f"{'It is' if n == 1 else 'Together they are'} "
            f"({num(self.spent)}, {num(self.spent_delta)})-"
            f"differentially private for one {unit}: whatever anyone does with the "
            f"{'model' if n == 1 else 'models'}, any conclusion about whether one {unit}'s data "
            f"were used, or what they were, becomes at most e^{num(self.spent, 4)} = "
            f"{num(math.exp(min(self.spent, 700.0)), 3)} times more likely than without them, "
            f"except with probability {num(self.spent_delta)}."
        )
        ks = {e.details.get("rows_per_patient_max") for e in self.upto}
        if unit == "row" and snapshots.COHORTS.get(self.cohort) == snapshots.SOURCE_DECISIONS:
            text += (
                " A run with several rows per patient protects a patient only by group "
                "privacy; the ledger charged each such run k times its row epsilon, "
                f"k = {', '.join(str(k) for k in sorted(x for x in ks if isinstance(x, int)))}."
            )
        return text

    def _rows(self) -> list[tuple[str, ...]]:
        events: list[tuple[datetime, int, tuple[str, ...]]] = []
        cumulative = 0.0
        for e in self.upto:
            cumulative += e.epsilon
            version = self.versions.get((e.model_name, e.model_version or 0))
            snap = self.snaps.get(e.snapshot_id or 0)
            rows_trained = (version.metrics or {}).get("train_rows") if version else None
            d = e.details
            detail = "; ".join(
                f"{label} {num(d.get(key))}"
                for label, key in (
                    ("row epsilon", "row_epsilon"),
                    ("target", "target_epsilon"),
                    ("noise multiplier", "noise_multiplier"),
                    ("sample rate", "sample_rate"),
                    ("steps", "steps"),
                    ("clipping", "max_grad_norm"),
                    ("rows per patient", "rows_per_patient_max"),
                )
                if d.get(key) is not None
            )
            events.append(
                (
                    e.created_at,
                    0,
                    (
                        f"#{e.id}",
                        when(e.created_at),
                        "yes" if e.created_at >= self.period.start else "no",
                        "charged",
                        f"{e.model_name}:v{e.model_version}" if e.model_version else NONE,
                        num(e.epsilon),
                        num(e.delta),
                        e.accountant or NONE,
                        str(d.get("privacy_unit") or NONE),
                        num(rows_trained),
                        f"#{snap.id}: {snap.rows} rows, {snap.patients} patients"
                        if snap
                        else (f"#{e.snapshot_id}" if e.snapshot_id else NONE),
                        num(cumulative),
                        detail or NONE,
                        self.actors(e.created_by),
                    ),
                )
            )
        for entry, d in self.refusals:
            asked = d.get("requested_epsilon")
            detail = ", ".join(
                f"{label} {num(d.get(key))}"
                for label, key in (
                    ("spent", "spent_epsilon"),
                    ("requested", "requested_epsilon"),
                    ("budget", "budget_epsilon"),
                    ("excess", "excess_epsilon"),
                )
                if d.get(key) is not None
            )
            events.append(
                (
                    entry.ts,
                    1,
                    (
                        f"audit #{entry.seq}",
                        when(entry.ts),
                        "yes",
                        f"refused: {d.get('code') or 'unknown'}",
                        NONE,
                        "0" if asked is None else f"0 (asked {num(asked)})",
                        "0",
                        NONE,
                        NONE,
                        NONE,
                        f"#{d['snapshot_id']}" if d.get("snapshot_id") else NONE,
                        NONE,
                        detail or "nothing trained, nothing spent",
                        self.actors(entry.actor),
                    ),
                )
            )
        events.sort(key=lambda ev: (ev[0], ev[1]))
        return [row for _, _, row in events]


def _outside_ledger(
    session: Session, period: Period, entries: Sequence[PrivacySpend]
) -> Section | None:
    """Versions with a privacy record but no ledger entry (v1, trained by `train-initial`
    on simulated data, is charged to no cohort)."""
    charged = {(e.model_name, e.model_version) for e in entries}
    rows = []
    for v in session.scalars(
        select(ModelVersion)
        .where(col(ModelVersion.created_at) < period.end)
        .order_by(col(ModelVersion.name), col(ModelVersion.version))
    ):
        privacy = v.privacy or {}
        eps = _number(privacy.get("epsilon"))
        if eps is None or (v.name, v.version) in charged:
            continue
        rows.append(
            (
                registry.label(v),
                when(v.created_at),
                num(eps),
                num(_number(privacy.get("delta"))),
                str(privacy.get("accountant") or NONE),
                str(privacy.get("privacy_unit") or NONE),
                str((v.params or {}).get("labels") or NONE),
            )
        )
    if not rows:
        return None
    return Section(
        heading="Versions trained outside the ledger",
        notes=(
            "These versions carry a privacy record but no ledger entry: they were trained on "
            "the simulated protocol cohort by `models train-initial`, which charges no cohort "
            "(no real person is in their data).",
        ),
        table=Table(
            ("model version", "created", "epsilon", "delta", "accountant", "unit", "labels"),
            tuple(rows),
        ),
        primary=False,
    )
