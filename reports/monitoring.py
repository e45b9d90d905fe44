"""The monitoring summary: drift findings, clinicians' override rates per week, the alerts
raised by kind and severity, and how fast crisis alerts were acknowledged against the target.

Reads the drift reports (their stored summaries: aggregates and segment names only), the
clinicians' signed decisions (counted by kind), the alerts and their escalations (counted,
timed; never their detail or patient) and the automatic rollbacks. `filters.model_version`
narrows the drift reports and decisions to those of that version. Never writes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core.config import Settings, get_settings
from loops.alerts import ESCALATE_AFTER, SEVERITY, AlertType, Severity
from loops.models import Alert, AlertStatus
from loops.review.models import AlertEscalation, Decision, DecisionKind
from mlops import registry
from mlops.models import Rollout, RolloutStatus
from mlops.rollout import AUTOMATIC
from reports.lifecycle_cells import NONE, minutes, num, pct, when
from reports.models import Filters, Period, Report, ReportKind, Section, Table
from validation.drift import Status as DriftStatus
from validation.models import DriftReport

WEEK: Final = timedelta(days=7)
CRISIS_TARGET: Final = ESCALATE_AFTER[Severity.CRITICAL]
_SEVERITY_ORDER: Final[dict[str, int]] = {str(s): i for i, s in enumerate(Severity)}
_OVERRIDES: Final = (DecisionKind.MODIFY, DecisionKind.REJECT)


def build(
    session: Session,
    *,
    period: Period,
    filters: Filters,
    generated_by: str,
    now: datetime,
    settings: Settings | None = None,
) -> Report:
    """The monitoring summary of the period."""
    settings = settings or get_settings()
    label = (
        f"{registry.TITRATION}:v{filters.model_version}"
        if filters.model_version is not None
        else None
    )
    drift = _drift_reports(session, period, label)
    weeks = _override_weeks(session, period, label)
    alerts = _alerts(session, period)
    crisis = _Crisis([a for a in alerts if a.type == AlertType.CRISIS], now)
    model_alerts = _model_alerts(session, period)
    decided = sum(w.decided for w in weeks)
    overridden = sum(w.overridden for w in weeks)
    drift_alerts = sum(r.status == DriftStatus.ALERT for r in drift)
    summary = (
        ("drift reports", f"{len(drift)} ({drift_alerts} with a drift alert)"),
        ("override rate", f"{pct(overridden, decided)} ({overridden} of {decided} decisions)"),
        ("alerts raised", str(len(alerts))),
        ("crisis alerts", str(len(crisis.alerts))),
        ("crisis acknowledgement target", f"{minutes(CRISIS_TARGET)} min"),
        ("crisis alerts over target", str(crisis.over_target())),
        ("median time to acknowledge a crisis alert", crisis.stat(statistics.median)),
        ("model alerts (automatic rollbacks)", str(len(model_alerts))),
    )
    return Report(
        kind=ReportKind.MONITORING,
        title="Monitoring summary",
        period=period,
        generated_at=now,
        generated_by=generated_by,
        filters=filters,
        summary=summary,
        sections=(
            _drift_section(drift),
            _findings_section(drift),
            _override_section(weeks, decided, overridden),
            _alert_section(session, alerts, model_alerts),
            crisis.section(settings, weeks=_weeks(period)),
        ),
    )


# ------------------------------------------------------------------ weeks


def _weeks(period: Period) -> list[tuple[datetime, datetime]]:
    """The period cut at each Monday 00:00 UTC (the first and last pieces may be partial)."""
    start = period.start.astimezone(UTC)
    monday = datetime(start.year, start.month, start.day, tzinfo=UTC) - timedelta(
        days=start.weekday()
    )
    out = []
    edge = monday
    while edge < period.end:
        out.append((max(edge, period.start), min(edge + WEEK, period.end)))
        edge += WEEK
    return out


# ------------------------------------------------------------------ drift


def _drift_reports(session: Session, period: Period, label: str | None) -> list[DriftReport]:
    stmt = select(DriftReport).where(
        col(DriftReport.created_at) >= period.start, col(DriftReport.created_at) < period.end
    )
    if label is not None:
        stmt = stmt.where(col(DriftReport.model_version) == label)
    return list(session.scalars(stmt.order_by(col(DriftReport.created_at), col(DriftReport.id))))


def _drift_section(reports: Sequence[DriftReport]) -> Section:
    rows = tuple(
        (
            f"#{r.id}",
            when(r.created_at),
            f"{when(r.window_start)} to {when(r.window_end)}",
            r.status,
            r.model_version or NONE,
            str(r.reference_rows),
            str(r.current_rows),
            str(r.drifted_features),
            ", ".join(str(x) for x in (r.summary or {}).get("reasons") or []) or NONE,
            r.headline,
        )
        for r in reports
    )
    return Section(
        heading="Drift reports",
        notes=(
            "Each drift report of the period: the current window of evaluated patients "
            "against the model's training data, and what it concluded.",
        )
        + (() if rows else ("No drift report in the period.",)),
        table=Table(
            (
                "report",
                "created",
                "window",
                "status",
                "model",
                "reference rows",
                "current rows",
                "features moved",
                "reasons",
                "headline",
            ),
            rows,
        )
        if rows
        else None,
    )


def _column_row(report: DriftReport, scope: str, c: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        f"#{report.id}",
        scope,
        str(c.get("column") or NONE),
        str(c.get("test") or c.get("stattest") or NONE),
        num(c.get("score"), 4),
        num(c.get("threshold"), 4),
        num(c.get("n_current")),
        num(c.get("n_reference")),
    )


def _findings_section(reports: Sequence[DriftReport]) -> Section:
    rows: list[tuple[str, ...]] = []
    for r in reports:
        summary = r.summary or {}
        for c in summary.get("features") or []:
            if isinstance(c, Mapping) and c.get("drifted"):
                rows.append(_column_row(r, "all patients", c))
        for c in summary.get("predictions") or []:
            if isinstance(c, Mapping) and c.get("drifted"):
                rows.append(_column_row(r, "model outputs", c))
        for a in summary.get("attributions") or []:
            if not isinstance(a, Mapping):
                continue
            scope = f"{a.get('dimension')}={a.get('value')}"
            steady = ", ".join(str(s) for s in a.get("steady_siblings") or [])
            if steady:
                scope += f" (steady: {steady})"
            for c in a.get("features") or []:
                if isinstance(c, Mapping):
                    rows.append(_column_row(r, scope, c))
        override = summary.get("override")
        if isinstance(override, Mapping) and override.get("alert"):
            rows.append(
                (
                    f"#{r.id}",
                    "clinicians' overrides",
                    f"override rate {num(override.get('current_rate'), 4)} "
                    f"(was {num(override.get('previous_rate'), 4)}; {override.get('reason')})",
                    "one-sided two-proportion z-test",
                    num(override.get("p_value"), 4),
                    num((summary.get("thresholds") or {}).get("override_alpha"), 4),
                    num(override.get("current_decided")),
                    num(override.get("previous_decided")),
                )
            )
    return Section(
        heading="Drift findings",
        notes=(
            "What moved: features across all patients, the model's outputs, features located "
            "in one device model or subgroup (sex, age band, diabetes or CKD) while a sibling "
            "stayed steady, and clinicians' override rate. A p-value test finds drift below its "
            "threshold (Bonferroni-corrected per report), a distance at or above it.",
        )
        + (() if rows else ("No drift found in the period.",)),
        table=Table(
            (
                "report",
                "where",
                "feature",
                "test",
                "score",
                "threshold",
                "rows current",
                "rows reference",
            ),
            tuple(rows),
        )
        if rows
        else None,
    )


# ------------------------------------------------------------------ overrides


@dataclass(frozen=True)
class _Week:
    start: datetime
    end: datetime
    counts: Mapping[str, int]

    @property
    def decided(self) -> int:
        return sum(self.counts.values())

    @property
    def overridden(self) -> int:
        return sum(self.counts.get(k, 0) for k in _OVERRIDES)


def _override_weeks(session: Session, period: Period, label: str | None) -> list[_Week]:
    stmt = select(col(Decision.signed_at), col(Decision.kind)).where(
        col(Decision.signed_at) >= period.start, col(Decision.signed_at) < period.end
    )
    if label is not None:
        stmt = stmt.where(col(Decision.model_version) == label)
    rows = session.execute(stmt).all()
    weeks = []
    for start, end in _weeks(period):
        counts: dict[str, int] = {}
        for signed_at, kind in rows:
            if start <= signed_at < end:
                counts[str(kind)] = counts.get(str(kind), 0) + 1
        weeks.append(_Week(start, end, counts))
    return weeks


def _override_section(weeks: Sequence[_Week], decided: int, overridden: int) -> Section:
    def row(first: str, last: str, counts: Mapping[str, int], n: int, over: int) -> tuple[str, ...]:
        return (
            first,
            last,
            str(n),
            str(counts.get(DecisionKind.APPROVE, 0)),
            str(counts.get(DecisionKind.MODIFY, 0)),
            str(counts.get(DecisionKind.REJECT, 0)),
            str(over),
            pct(over, n),
        )

    rows = [row(when(w.start), when(w.end), w.counts, w.decided, w.overridden) for w in weeks]
    total: dict[str, int] = {}
    for w in weeks:
        for k, n in w.counts.items():
            total[k] = total.get(k, 0) + n
    rows.append(row("whole period", "", total, decided, overridden))
    return Section(
        heading="Override rates per week",
        notes=(
            "Clinicians' signed decisions on proposals, by the week (from Monday 00:00 UTC) "
            "they were signed in: the override rate is modified plus rejected over decided.",
        ),
        table=Table(
            (
                "from",
                "until",
                "decided",
                "approved",
                "modified",
                "rejected",
                "overridden",
                "override rate",
            ),
            tuple(rows),
        ),
    )


# ------------------------------------------------------------------ alerts


def _alerts(session: Session, period: Period) -> list[Alert]:
    stmt = select(Alert).where(
        col(Alert.raised_at) >= period.start, col(Alert.raised_at) < period.end
    )
    return list(session.scalars(stmt.order_by(col(Alert.raised_at), col(Alert.id))))


def _model_alerts(session: Session, period: Period) -> list[Rollout]:
    """Automatic rollbacks in the period: each raised a model alert for the ML engineers."""
    stmt = select(Rollout).where(
        col(Rollout.status) == RolloutStatus.ROLLED_BACK,
        col(Rollout.ended_at) >= period.start,
        col(Rollout.ended_at) < period.end,
    )
    return [r for r in session.scalars(stmt) if r.end_reason.startswith(AUTOMATIC)]


def _alert_section(
    session: Session, alerts: Sequence[Alert], model_alerts: Sequence[Rollout]
) -> Section:
    manual: dict[str, int] = {}
    ids = [a.id for a in alerts]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for alert_id, n in session.execute(
            select(col(AlertEscalation.alert_id), func.count())
            .where(col(AlertEscalation.alert_id).in_(chunk))
            .group_by(col(AlertEscalation.alert_id))
        ):
            manual[str(alert_id)] = int(n)
    groups: dict[tuple[str, str], list[Alert]] = {}
    for a in alerts:
        groups.setdefault((a.type, a.severity), []).append(a)
    # Every kind the rules raise, even with none raised: a zero is a finding too.
    for rule, level in SEVERITY.items():
        groups.setdefault((str(rule), str(level)), [])
    rows: list[tuple[str, ...]] = []
    order = sorted(groups, key=lambda k: (_SEVERITY_ORDER.get(k[1], len(Severity)), k[0]))
    for kind, severity in order:
        found = groups[(kind, severity)]
        rows.append(
            (
                kind,
                severity,
                str(len(found)),
                str(sum(a.acknowledged_at is not None for a in found)),
                str(sum(a.status == AlertStatus.RESOLVED for a in found)),
                str(sum(a.status == AlertStatus.OPEN for a in found)),
                str(sum(a.escalation_level > 0 for a in found)),
                str(sum(manual.get(a.id, 0) > 0 for a in found)),
            )
        )
    rows.append(
        (
            "model alert (automatic rollback)",
            "for ML engineers",
            str(len(model_alerts)),
            "",
            "",
            "",
            "",
            "",
        )
    )
    return Section(
        heading="Alerts by kind and severity",
        notes=(
            "Alerts raised in the period, by kind and severity; acknowledged, resolved, open "
            "and escalated as they stand when the report was built. An unacknowledged alert "
            "escalates automatically after its severity's interval (critical 15 min, high "
            "4 h, medium 24 h, low 72 h); a clinician may also escalate one by hand.",
        ),
        table=Table(
            (
                "kind",
                "severity",
                "raised",
                "acknowledged",
                "resolved",
                "open now",
                "escalated",
                "escalated by a clinician",
            ),
            tuple(rows),
        ),
    )


# ------------------------------------------------------------------ crisis acknowledgement


def _wait(value: timedelta) -> str:
    """Minutes, with hours beside them past an hour."""
    hours = value.total_seconds() / 3600.0
    return f"{minutes(value)} min" + (f" ({hours:.1f} h)" if hours >= 1 else "")


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (pure): the smallest value with at least
    q of the values at or below it."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


class _Crisis:
    """Time to acknowledge each crisis alert raised in the period."""

    def __init__(self, alerts: Sequence[Alert], now: datetime) -> None:
        self.alerts, self.now = list(alerts), now

    @staticmethod
    def waits(alerts: Sequence[Alert]) -> list[timedelta]:
        return [a.acknowledged_at - a.raised_at for a in alerts if a.acknowledged_at is not None]

    def unacknowledged(self, alerts: Sequence[Alert] | None = None) -> list[Alert]:
        return [a for a in (self.alerts if alerts is None else alerts) if a.acknowledged_at is None]

    def over_target(self, alerts: Sequence[Alert] | None = None) -> int:
        """Acknowledged later than the target, or not acknowledged within it (by now)."""
        found = self.alerts if alerts is None else alerts
        late = sum(w > CRISIS_TARGET for w in self.waits(found))
        waiting = sum(
            (a.resolved_at or self.now) - a.raised_at > CRISIS_TARGET
            for a in self.unacknowledged(found)
        )
        return late + waiting

    def stat(self, how: Any, alerts: Sequence[Alert] | None = None) -> str:
        waits = [
            w.total_seconds() / 60.0 for w in self.waits(self.alerts if alerts is None else alerts)
        ]
        return f"{how(waits):.1f} min" if waits else NONE

    def section(self, settings: Settings, *, weeks: Sequence[tuple[datetime, datetime]]) -> Section:
        p90 = lambda v: nearest_rank(v, 0.9)  # noqa: E731 - one use, named for the cell
        open_now = [a for a in self.unacknowledged() if a.status == AlertStatus.OPEN]
        grid = settings.alert_escalation_seconds
        facts = (
            ("target", f"acknowledged within {minutes(CRISIS_TARGET)} min of being raised"),
            (
                "escalation",
                f"unacknowledged after {minutes(CRISIS_TARGET)} min it escalates, and again "
                f"after each further {minutes(CRISIS_TARGET)} min; checked every "
                + (f"{grid} s" if grid is not None else "never (escalation job off)"),
            ),
            ("crisis alerts raised", str(len(self.alerts))),
            ("acknowledged", str(len(self.waits(self.alerts)))),
            ("median", self.stat(statistics.median)),
            ("90th percentile", self.stat(p90)),
            ("maximum", self.stat(max)),
            ("over target", str(self.over_target())),
            ("not acknowledged, still open", str(len(open_now))),
            (
                "longest wait of those still open",
                _wait(max(self.now - a.raised_at for a in open_now)) if open_now else NONE,
            ),
        )
        rows = []
        for start, end in weeks:
            found = [a for a in self.alerts if start <= a.raised_at < end]
            rows.append(
                (
                    when(start),
                    when(end),
                    str(len(found)),
                    str(len(self.waits(found))),
                    self.stat(statistics.median, found).removesuffix(" min"),
                    self.stat(p90, found).removesuffix(" min"),
                    self.stat(max, found).removesuffix(" min"),
                    str(self.over_target(found)),
                    str(len(self.unacknowledged(found))),
                )
            )
        return Section(
            heading="Time to acknowledge crisis alerts",
            facts=facts,
            notes=(
                "Hypertensive-crisis alerts (critical) raised in the period: minutes from "
                "raised to acknowledged by a clinician. The 90th percentile is by nearest "
                "rank. Over target counts those acknowledged later than the target and those "
                "not acknowledged within it by the time the report was built.",
            ),
            table=Table(
                (
                    "from",
                    "until",
                    "raised",
                    "acknowledged",
                    "median min",
                    "p90 min",
                    "max min",
                    "over target",
                    "not acknowledged",
                ),
                tuple(rows),
            ),
        )
