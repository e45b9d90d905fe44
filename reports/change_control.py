"""The change-control log of the titration model: every model change in the period with its
evidence. Transitions (from, to, who, why, when), validation runs (each gate, measured
against its threshold, the evidence file's hash), approvals (the sign-offs' manifestation and
whether each signature verifies), rollouts with each step's live analysis and verdict, and
rollbacks, automatic and manual, with the model alert an automatic one raised.

`filters.model_version` narrows it to one version (and the rollouts it was the challenger or
the champion of). Reads the lifecycle's append-only tables; aggregates only. Never writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core.config import Settings, get_settings
from audit.keys import SigningKeyMissing
from mlops import lifecycle, registry
from mlops.models import (
    ModelSignoff,
    ModelStatus,
    ModelTransition,
    ModelVersion,
    Rollout,
    RolloutStep,
)
from mlops.rollout import AUTOMATIC
from reports.lifecycle_cells import NONE, Actors, num, short, when
from reports.model_card import evidence_state, gate_measured, gate_threshold
from reports.models import Filters, Period, Report, ReportKind, Section, Table
from validation.models import GateResult

MANUAL: Final = "manual rollback"
RESTORED: Final = "restored by the manual rollback"
_INSTANT: Final = timedelta(microseconds=1)  # the last instant of a half-open period


@dataclass(frozen=True)
class Rollback:
    """One rollback found in the transitions: what was retired, by whom, why, what serves."""

    at: datetime
    version: int
    automatic: bool
    actor: str
    reason: str
    rollout: Rollout | None
    serving_after: int | None


def build(
    session: Session,
    *,
    period: Period,
    filters: Filters,
    generated_by: str,
    now: datetime,
    settings: Settings | None = None,
) -> Report:
    """The change-control log of the period (of one version with `filters.model_version`)."""
    settings = settings or get_settings()
    log = _Log(session, period, filters.model_version, settings)
    versions = sorted(log.versions_changed())
    at_end = lifecycle.served_at(
        lifecycle.serving_history(session, name=log.name), period.end - _INSTANT
    )
    automatic = sum(r.automatic for r in log.rollbacks)
    runs = log.runs()
    summary = (
        ("versions changed", ", ".join(f"v{v}" for v in versions) or "none"),
        ("transitions", str(len(log.transitions))),
        (
            "validation runs",
            f"{len(runs)} ({sum(lifecycle.run_passed(r) for r in runs.values())} passed)",
        ),
        ("sign-offs", str(len(log.signoffs))),
        ("rollouts", f"{len(log.rollouts)} ({_statuses(log.rollouts)})"),
        (
            "rollbacks",
            f"{len(log.rollbacks)} ({automatic} automatic, "
            f"{len(log.rollbacks) - automatic} manual)",
        ),
        ("in production at the end of the period", f"v{at_end}" if at_end else "none"),
    )
    scope = f"v{filters.model_version}" if filters.model_version else "every version"
    return Report(
        kind=ReportKind.CHANGE_CONTROL,
        title=f"Change-control log: {log.name}, {scope}",
        period=period,
        generated_at=now,
        generated_by=generated_by,
        filters=filters,
        summary=summary,
        sections=(
            log.transition_section(),
            log.gate_section(),
            log.signoff_section(),
            log.rollout_section(),
            log.step_section(),
            log.rollback_section(),
        ),
    )


def _statuses(rollouts: Sequence[Rollout]) -> str:
    counts: dict[str, int] = {}
    for r in rollouts:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"


def _check_cell(name: str, check: Mapping[str, Any]) -> str:
    state = "BREACH" if check.get("breached") else ("ok" if check.get("judged") else "not judged")
    return (
        f"{name} {num(check.get('challenger'), 4)} vs {num(check.get('champion'), 4)} "
        f"({state}; limit {check.get('limit') or NONE})"
    )


def _arm_cell(arm: Mapping[str, Any]) -> str:
    keys = ("scored", "errors", "proposals", "auto_delivered", "decided", "overridden")
    return ", ".join(f"{k} {num(arm.get(k))}" for k in keys if k in arm) or NONE


class _Log:
    """The period's changes, read once."""

    def __init__(
        self, session: Session, period: Period, version: int | None, settings: Settings
    ) -> None:
        self.s, self.period, self.version, self.settings = session, period, version, settings
        self.name = registry.TITRATION
        self.actors = Actors(session)
        self.transitions = self._transitions()
        self.results = self._gate_results()
        self.signoffs = self._signoffs()
        self.rollouts = self._rollouts()
        self.steps = self._steps()
        self.rollbacks = self._rollbacks()
        self.public_key = _public_key(settings)

    def _in(self, column: Any) -> tuple[Any, Any]:
        return (col(column) >= self.period.start, col(column) < self.period.end)

    def _transitions(self) -> list[ModelTransition]:
        stmt = select(ModelTransition).where(
            col(ModelTransition.model_name) == self.name, *self._in(ModelTransition.at)
        )
        if self.version is not None:
            stmt = stmt.where(col(ModelTransition.version) == self.version)
        return list(self.s.scalars(stmt.order_by(col(ModelTransition.at), col(ModelTransition.id))))

    def _gate_results(self) -> list[GateResult]:
        stmt = select(GateResult).where(
            col(GateResult.model_name) == self.name, *self._in(GateResult.created_at)
        )
        if self.version is not None:
            stmt = stmt.where(col(GateResult.version) == self.version)
        return list(self.s.scalars(stmt.order_by(col(GateResult.created_at), col(GateResult.id))))

    def runs(self) -> dict[str, list[GateResult]]:
        out: dict[str, list[GateResult]] = {}
        for r in self.results:
            out.setdefault(r.run_id, []).append(r)
        return out

    def _signoffs(self) -> list[ModelSignoff]:
        stmt = select(ModelSignoff).where(
            col(ModelSignoff.model_name) == self.name, *self._in(ModelSignoff.signed_at)
        )
        if self.version is not None:
            stmt = stmt.where(col(ModelSignoff.version) == self.version)
        return list(
            self.s.scalars(stmt.order_by(col(ModelSignoff.signed_at), col(ModelSignoff.id)))
        )

    def _rollouts(self) -> list[Rollout]:
        """Rollouts that started, ended or analysed a step in the period."""
        stepped = select(col(RolloutStep.rollout_id)).where(*self._in(RolloutStep.analysed_at))
        start, end = self.period.start, self.period.end
        stmt = select(Rollout).where(
            col(Rollout.model_name) == self.name,
            or_(
                (col(Rollout.started_at) >= start) & (col(Rollout.started_at) < end),
                (col(Rollout.ended_at) >= start) & (col(Rollout.ended_at) < end),
                col(Rollout.id).in_(stepped),
            ),
        )
        if self.version is not None:
            stmt = stmt.where(
                (col(Rollout.challenger_version) == self.version)
                | (col(Rollout.champion_version) == self.version)
            )
        return list(self.s.scalars(stmt.order_by(col(Rollout.started_at), col(Rollout.id))))

    def _steps(self) -> list[RolloutStep]:
        ids = [r.id for r in self.rollouts]
        if not ids:
            return []
        stmt = select(RolloutStep).where(
            col(RolloutStep.rollout_id).in_(ids), *self._in(RolloutStep.analysed_at)
        )
        return list(
            self.s.scalars(stmt.order_by(col(RolloutStep.analysed_at), col(RolloutStep.id)))
        )

    def _rollbacks(self) -> list[Rollback]:
        """Rollbacks, from the transitions that retired a version for one (their reasons are
        written by mlops/rollout.py: `automatic rollback ...`, `manual rollback...`)."""
        by_id = {r.id: r for r in self.rollouts}
        restores = [t for t in self.transitions if t.reason.startswith(RESTORED)]
        found = []
        for t in self.transitions:
            if t.to_status != ModelStatus.RETIRED:
                continue
            automatic = t.reason.startswith(AUTOMATIC)
            if not (automatic or t.reason.startswith(MANUAL)):
                continue
            rollout_id = t.details.get("rollout_id")
            rollout = by_id.get(rollout_id) if isinstance(rollout_id, int) else None
            if rollout is None and isinstance(rollout_id, int):
                rollout = self.s.get(Rollout, rollout_id)
            if rollout is not None:
                serving = rollout.champion_version
            else:
                restored = next(
                    (
                        r
                        for r in restores
                        if r.at == t.at and r.reason.startswith(f"{RESTORED} of v{t.version}")
                    ),
                    None,
                )
                serving = restored.version if restored is not None else None
            found.append(Rollback(t.at, t.version, automatic, t.actor, t.reason, rollout, serving))
        return found

    def versions_changed(self) -> set[int]:
        return (
            {t.version for t in self.transitions}
            | {r.version for r in self.results}
            | {s.version for s in self.signoffs}
            | {r.challenger_version for r in self.rollouts}
        )

    # ------------------------------------------------------------------ sections

    def transition_section(self) -> Section:
        rows = tuple(
            (
                when(t.at),
                f"v{t.version}",
                t.from_status or "none",
                t.to_status,
                self.actors(t.actor),
                t.reason,
                ", ".join(f"{k} {v}" for k, v in t.details.items() if k in _DETAIL_KEYS) or NONE,
            )
            for t in self.transitions
        )
        return Section(
            heading="Transitions",
            notes=(
                "Every lifecycle change of a version in the period, in order: from which state "
                "to which, who made it and why (the transitions are append-only).",
            )
            + (() if rows else ("No transition in the period.",)),
            table=Table(("at", "version", "from", "to", "by", "why", "reference"), rows)
            if rows
            else None,
        )

    def gate_section(self) -> Section:
        rows = []
        for run_id, results in self.runs().items():
            verdict = "run passed" if lifecycle.run_passed(results) else "run failed"
            for r in results:
                rows.append(
                    (
                        when(r.created_at),
                        f"v{r.version}",
                        short(run_id, 8),
                        verdict,
                        r.gate,
                        "pass" if r.passed else "fail",
                        gate_measured(r),
                        gate_threshold(r),
                        f"v{r.champion_version}" if r.champion_version else "no-skill model",
                        r.evidence_sha256 or NONE,
                        evidence_state(r, self.settings.data_dir),
                        self.actors(r.created_by),
                    )
                )
        return Section(
            heading="Validation runs",
            notes=(
                "Each gate of each validation run in the period: measured against its "
                "threshold, the comparator, and the evidence file's SHA-256 (checked as the "
                "report was built). A run passes only with every required gate passed: "
                + ", ".join(lifecycle.REQUIRED_GATES)
                + ".",
            )
            + (() if rows else ("No validation run in the period.",)),
            table=Table(
                (
                    "run at",
                    "version",
                    "run",
                    "run verdict",
                    "gate",
                    "result",
                    "measured",
                    "threshold",
                    "compared with",
                    "evidence sha256",
                    "evidence file",
                    "by",
                ),
                tuple(rows),
            )
            if rows
            else None,
        )

    def signoff_section(self) -> Section:
        versions: dict[int, ModelVersion] = {}
        rows = []
        for s in self.signoffs:
            if s.version not in versions:
                versions[s.version] = lifecycle.get_version(
                    self.s, name=s.model_name, version=s.version
                )
            rows.append(
                (
                    when(s.signed_at),
                    f"v{s.version}",
                    s.signoff_role,
                    s.signer_name,
                    self.actors.user(s.signer_id),
                    s.meaning,
                    s.note or NONE,
                    s.record_sha256,
                    self._signature(s, versions[s.version]),
                )
            )
        return Section(
            heading="Approvals",
            notes=(
                "The sign-offs given in the period: the signature's manifestation (printed "
                "name, UTC time, meaning) and whether the Ed25519 signature over the signed "
                "record, which names the artifact's SHA-256, verifies now.",
            )
            + (() if rows else ("No sign-off in the period.",)),
            table=Table(
                (
                    "signed at",
                    "version",
                    "role",
                    "signer (printed name)",
                    "signer account",
                    "meaning",
                    "note",
                    "record sha256",
                    "signature",
                ),
                tuple(rows),
            )
            if rows
            else None,
        )

    def _signature(self, signoff: ModelSignoff, version: ModelVersion) -> str:
        if self.public_key is None:
            return "not checked (no signing key)"
        ok = lifecycle.verify_signoff(signoff, version, public_key=self.public_key)
        return "valid" if ok else "INVALID"

    def rollout_section(self) -> Section:
        rows = tuple(
            (
                f"#{r.id}",
                f"v{r.challenger_version}",
                f"v{r.champion_version}" if r.champion_version else NONE,
                when(r.started_at),
                self.actors(r.started_by),
                r.status,
                f"{r.percent}%",
                f"{r.dwell_seconds // 60} min"
                if r.dwell_seconds % 60 == 0
                else f"{r.dwell_seconds} s",
                when(r.ended_at),
                r.end_reason or NONE,
            )
            for r in self.rollouts
        )
        return Section(
            heading="Rollouts",
            notes=() if rows else ("No rollout started, stepped or ended in the period.",),
            table=Table(
                (
                    "rollout",
                    "challenger",
                    "champion",
                    "started",
                    "started by",
                    "status",
                    "share now",
                    "dwell per step",
                    "ended",
                    "end reason",
                ),
                rows,
            )
            if rows
            else None,
            primary=False,
        )

    def step_section(self) -> Section:
        challengers = {r.id: r.challenger_version for r in self.rollouts}
        rows = []
        for step in self.steps:
            analysis = step.analysis or {}
            checks = analysis.get("checks") or {}
            rows.append(
                (
                    when(step.analysed_at),
                    f"#{step.rollout_id}",
                    f"v{challengers.get(step.rollout_id, 0)}",
                    step.stage,
                    f"{step.percent}%",
                    when(step.started_at),
                    step.decision,
                    "; ".join(step.reasons) or NONE,
                    "; ".join(
                        _check_cell(str(k), v) for k, v in checks.items() if isinstance(v, Mapping)
                    )
                    or NONE,
                    _arm_cell(analysis.get("challenger") or {}),
                    _arm_cell(analysis.get("champion") or {}),
                )
            )
        return Section(
            heading="Rollout steps",
            notes=(
                "The live analysis that ended each rollout step in the period: its verdict "
                "(advance, complete or rollback), the reasons, each check (challenger against "
                "champion, and whether it was judged or breached) and both arms' counts. A "
                "step that held is not stored; the next analysis decides.",
            )
            + (() if rows else ("No rollout step ended in the period.",)),
            table=Table(
                (
                    "analysed",
                    "rollout",
                    "challenger",
                    "stage",
                    "share",
                    "step started",
                    "verdict",
                    "reasons",
                    "checks",
                    "challenger arm",
                    "champion arm",
                ),
                tuple(rows),
            )
            if rows
            else None,
        )

    def rollback_section(self) -> Section:
        rows = []
        for b in self.rollbacks:
            alert = NONE
            if b.automatic and b.rollout is not None:
                alert = b.rollout.end_reason  # the model alert as the API shows it
            rows.append(
                (
                    when(b.at),
                    f"v{b.version}",
                    "automatic" if b.automatic else "manual",
                    f"#{b.rollout.id}" if b.rollout is not None else "none (after completion)",
                    self.actors(b.actor),
                    b.reason,
                    f"v{b.serving_after}" if b.serving_after else "none",
                    alert,
                )
            )
        return Section(
            heading="Rollbacks",
            notes=(
                "Automatic rollbacks (a breach found by the live analysis retires the "
                "challenger at once and raises a model alert for the ML engineers: the audit "
                "entry model.rollout.rollback, an ERROR log line and the rollout's end reason) "
                "and manual ones (clinaiops models rollback, or the API, with a reason).",
            )
            + (() if rows else ("No rollback in the period.",)),
            table=Table(
                (
                    "at",
                    "version retired",
                    "kind",
                    "rollout",
                    "by",
                    "reason",
                    "serving after",
                    "alert",
                ),
                tuple(rows),
            )
            if rows
            else None,
        )


_DETAIL_KEYS: Final = frozenset({"run_id", "rollout_id", "step_id"})


def _public_key(settings: Settings) -> Ed25519PublicKey | None:
    try:
        return lifecycle.signing_public_key(settings)
    except (SigningKeyMissing, OSError, ValueError):
        return None
