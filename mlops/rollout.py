"""Rolling a validated model out: shadow, then a canary on a patient-hash slice stepping
10 -> 25 -> 50 -> 100%, a live analysis at each step (mlops/canary.py), and rollback,
automatic on a breach and by hand.

The rollout is data: a `Rollout` row (stage, percent, salt, when the step started) that
serving reads once per batch (mlops/serving.py), and a `RolloutStep` row for each analysis
that ended a step. Every act is a lifecycle transition (mlops/lifecycle.py) and an audit
entry. Services here never commit.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core.config import get_settings
from audit import service as audit
from loops.flows import Outcome
from loops.models import Evaluation, Proposal
from loops.review.models import Decision, DecisionKind
from mlops import canary, lifecycle, serving
from mlops.canary import Analysis, Arm, Thresholds, Verdict
from mlops.models import (
    ROLLOUT_TRANSITIONS,
    ModelStatus,
    Rollout,
    RolloutStatus,
    RolloutStep,
    ShadowPrediction,
)
from policies.routing import Route

log = logging.getLogger("clinaiops.rollout")
SYSTEM = "system:rollout"
ACTIVE = (RolloutStatus.SHADOW, RolloutStatus.CANARY)
_OVERRIDES = (DecisionKind.MODIFY, DecisionKind.REJECT)
# How an automatic rollback's end reason begins (the API shows it as the model alert).
AUTOMATIC = "automatic rollback"


class RolloutRefused(Exception):
    """A rollout act refused: `code` says why, `status` is the HTTP answer."""

    def __init__(self, code: str, detail: str, status: int = 409) -> None:
        self.code, self.detail, self.status = code, detail, status
        super().__init__(f"{code}: {detail}")


@dataclass(frozen=True)
class RollbackResult:
    """What a manual rollback did: the version retired and the one serving now."""

    retired: int
    serving: int | None
    rollout_id: int | None  # the rollout it ended, if one was running
    artifact_problem: str | None  # why the version serving now cannot serve, if it cannot


def _label(name: str, version: int) -> str:
    return f"{name}:v{version}"


def active(session: Session, *, name: str, lock: bool = False) -> Rollout | None:
    """The model's rollout in shadow or canary, if one is running."""
    stmt = (
        select(Rollout)
        .where(col(Rollout.model_name) == name, col(Rollout.status).in_(ACTIVE))
        .order_by(col(Rollout.id).desc())
        .limit(1)
    )
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).first()


def latest(session: Session, *, name: str) -> Rollout | None:
    """The model's running rollout, else its most recent one."""
    found = active(session, name=name)
    if found is not None:
        return found
    stmt = (
        select(Rollout)
        .where(col(Rollout.model_name) == name)
        .order_by(col(Rollout.id).desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def steps(session: Session, *, rollout_id: int) -> list[RolloutStep]:
    """The analyses that ended each step of a rollout, oldest first."""
    stmt = (
        select(RolloutStep)
        .where(col(RolloutStep.rollout_id) == rollout_id)
        .order_by(col(RolloutStep.id))
    )
    return list(session.scalars(stmt))


def _audit(
    session: Session, *, actor: str, action: str, name: str, version: int, details: dict[str, Any]
) -> None:
    audit.record(
        session,
        actor=actor,
        actor_role=lifecycle.actor_role(session, actor),
        action=action,
        resource_type="model",
        resource_id=_label(name, version),
        details=details,
    )


def _move(rollout: Rollout, to: RolloutStatus) -> None:
    current = RolloutStatus(rollout.status)
    if to not in ROLLOUT_TRANSITIONS[current]:
        raise RolloutRefused("invalid_rollout_transition", f"a {current} rollout cannot be {to}")
    rollout.status = to


def start(
    *,
    session: Session,
    name: str,
    version: int,
    actor: str,
    now: datetime,
    dwell: timedelta | None = None,
) -> Rollout:
    """Start a validated, gated and signed-off version's rollout in shadow beside the
    champion (the `challenger` alias points at it); one rollout per model at a time."""
    missing = lifecycle.ready_for_rollout(session, name=name, version=version)
    if missing:
        raise RolloutRefused("not_ready", f"the rollout needs: {', '.join(missing)}")
    if active(session, name=name, lock=True) is not None:
        raise RolloutRefused("rollout_running", f"{name} already has a rollout running")
    champion = lifecycle.champion(session, name=name)
    if champion is None:
        raise RolloutRefused(
            "no_champion", f"{name} has no usable production version to compare against"
        )
    challenger = lifecycle.get_version(session, name=name, version=version)
    problem = serving.artifact_problem(challenger)
    if problem is not None:
        raise RolloutRefused("artifact_unusable", f"{_label(name, version)}: {problem}")
    dwell = dwell if dwell is not None else timedelta(minutes=get_settings().canary_dwell_minutes)
    if dwell <= timedelta(0):
        raise RolloutRefused("invalid_dwell", "the dwell time must be positive", 422)
    rollout = Rollout(
        model_name=name,
        challenger_version=version,
        champion_version=champion.version,
        status=RolloutStatus.SHADOW,
        percent=0,
        step_started_at=now,
        dwell_seconds=int(dwell.total_seconds()),
        salt=secrets.token_hex(8),
        started_by=actor,
        started_at=now,
    )
    session.add(rollout)
    session.flush()
    lifecycle.transition(
        session=session,
        name=name,
        version=version,
        to=ModelStatus.SHADOW,
        actor=actor,
        reason=f"rollout {rollout.id} started: shadow beside {_label(name, champion.version)}",
        details={"rollout_id": rollout.id},
        now=now,
    )
    lifecycle.set_alias(
        session=session,
        name=name,
        alias=lifecycle.CHALLENGER,
        version=version,
        actor=actor,
        now=now,
    )
    _audit(
        session,
        actor=actor,
        action="model.rollout.start",
        name=name,
        version=version,
        details={
            "rollout_id": rollout.id,
            "champion_version": champion.version,
            "dwell_seconds": rollout.dwell_seconds,
        },
    )
    return rollout


# ------------------------------------------------------------------ the live analysis


@dataclass(frozen=True)
class StepAnalysis:
    """The analysis of a rollout's current step, before anything is acted on."""

    rollout: Rollout
    analysis: Analysis
    challenger: Arm
    champion: Arm
    extra: dict[str, Any]  # shadow agreement figures

    def document(self) -> dict[str, Any]:
        """The analysis as stored on a RolloutStep row."""
        return {
            **self.analysis.document(),
            "challenger": _arm_doc(self.challenger),
            "champion": _arm_doc(self.champion),
            **self.extra,
        }


def _arm_doc(arm: Arm) -> dict[str, Any]:
    return {
        "scored": arm.scored,
        "errors": arm.errors,
        "proposals": arm.proposals,
        "auto_delivered": arm.auto_delivered,
        "decided": arm.decided,
        "overridden": arm.overridden,
        "latency_p95_ms": arm.latency_p95_ms,
        "latency_samples": arm.latency_samples,
    }


def analyse(
    session: Session, *, rollout: Rollout, now: datetime, thresholds: Thresholds
) -> StepAnalysis:
    """The live analysis of the rollout's current step (read only; `tick` acts on it)."""
    since = rollout.step_started_at
    if rollout.status == RolloutStatus.SHADOW:
        challenger, champion, extra = _shadow_arms(session, rollout, since, now)
    else:
        challenger, champion = _canary_arms(session, rollout, since, now)
        extra = {}
    version = lifecycle.get_version(
        session, name=rollout.model_name, version=rollout.challenger_version
    )
    result = canary.analyse(
        percent=rollout.percent,
        elapsed=now - since,
        dwell=timedelta(seconds=rollout.dwell_seconds),
        challenger=challenger,
        champion=champion,
        thresholds=thresholds,
        artifact_problem=serving.artifact_problem(version),
    )
    current = lifecycle.champion(session, name=rollout.model_name)
    serving_now = current.version if current is not None else None
    if serving_now != rollout.champion_version:
        # The version compared against is no longer the one serving (a version registered
        # in production meanwhile, or the champion retired): the comparison means nothing.
        changed = f"champion_changed: v{rollout.champion_version} -> v{serving_now}"
        breaches = (changed, *(r for r in result.reasons if result.verdict is Verdict.ROLLBACK))
        result = Analysis(Verdict.ROLLBACK, breaches, None, result.checks)
    return StepAnalysis(rollout, result, challenger, champion, extra)


def _canary_arms(
    session: Session, rollout: Rollout, since: datetime, now: datetime
) -> tuple[Arm, Arm]:
    """Each model's evaluations, routing, clinician decisions and scoring times in the step."""
    name = rollout.model_name
    labels = {
        _label(name, rollout.challenger_version): "challenger",
        _label(name, rollout.champion_version or 0): "champion",
    }
    window = (
        col(Evaluation.created_at) >= since,
        col(Evaluation.created_at) <= now,
        col(Evaluation.model_version).in_(list(labels)),
    )
    counts: dict[str, dict[str, int]] = {arm: {} for arm in labels.values()}
    rows = session.execute(
        select(
            col(Evaluation.model_version),
            col(Evaluation.outcome),
            col(Evaluation.route),
            func.count(),
        )
        .where(*window)
        .group_by(col(Evaluation.model_version), col(Evaluation.outcome), col(Evaluation.route))
    )
    for label, outcome, route, n in rows:
        tally = counts[labels[label]]
        tally["scored"] = tally.get("scored", 0) + n
        if outcome == Outcome.MODEL_UNAVAILABLE:
            tally["errors"] = tally.get("errors", 0) + n
        if outcome == Outcome.PROPOSAL:
            tally["proposals"] = tally.get("proposals", 0) + n
            if route == Route.AUTO_DELIVER:
                tally["auto_delivered"] = tally.get("auto_delivered", 0) + n
    latencies: dict[str, list[float]] = {arm: [] for arm in labels.values()}
    for label, ms in session.execute(
        select(col(Evaluation.model_version), col(Evaluation.model_ms)).where(
            *window, col(Evaluation.model_ms).is_not(None)
        )
    ):
        latencies[labels[label]].append(float(ms))
    decided = session.execute(
        select(col(Proposal.model_version), col(Decision.kind), func.count())
        .join(Proposal, col(Proposal.id) == col(Decision.proposal_id))
        .where(
            col(Proposal.model_version).in_(list(labels)),
            col(Proposal.created_at) >= since,
            col(Proposal.created_at) <= now,
        )
        .group_by(col(Proposal.model_version), col(Decision.kind))
    )
    for label, kind, n in decided:
        tally = counts[labels[label]]
        tally["decided"] = tally.get("decided", 0) + n
        if kind in _OVERRIDES:
            tally["overridden"] = tally.get("overridden", 0) + n
    arms = {
        arm: Arm(
            **counts[arm],
            latency_p95_ms=canary.p95(latencies[arm]),
            latency_samples=len(latencies[arm]),
        )
        for arm in labels.values()
    }
    return arms["challenger"], arms["champion"]


def _shadow_arms(
    session: Session, rollout: Rollout, since: datetime, now: datetime
) -> tuple[Arm, Arm, dict[str, Any]]:
    """The challenger's shadow answers against the champion's on the same evaluations, and
    both against the clinicians' decisions on the champion's queued proposals."""
    rows = session.execute(
        select(
            col(ShadowPrediction.challenger_action),
            col(ShadowPrediction.challenger_route),
            col(ShadowPrediction.error),
            col(ShadowPrediction.latency_ms),
            col(ShadowPrediction.champion_action),
            col(Evaluation.outcome),
            col(Evaluation.route),
            col(Evaluation.model_ms),
            col(Decision.label_action),
        )
        .join(Evaluation, col(Evaluation.id) == col(ShadowPrediction.evaluation_id))
        .outerjoin(Decision, col(Decision.proposal_id) == col(Evaluation.proposal_id))
        .where(
            col(ShadowPrediction.rollout_id) == rollout.id,
            col(ShadowPrediction.created_at) >= since,
            col(ShadowPrediction.created_at) <= now,
        )
    ).all()
    c = {"scored": len(rows), "errors": 0, "proposals": 0, "auto": 0, "decided": 0, "over": 0}
    k = {"errors": 0, "proposals": 0, "auto": 0, "decided": 0, "over": 0}
    c_ms: list[float] = []
    k_ms: list[float] = []
    compared = agreed = 0
    for c_action, c_route, error, c_lat, k_action, outcome, k_route, k_lat, label in rows:
        if k_lat is not None:
            k_ms.append(float(k_lat))
        if outcome == Outcome.MODEL_UNAVAILABLE:
            k["errors"] += 1
        if outcome == Outcome.PROPOSAL:
            k["proposals"] += 1
            k["auto"] += k_route == Route.AUTO_DELIVER
        if label is not None:
            k["decided"] += 1
            k["over"] += k_action != label
        if error is not None or c_action is None:
            c["errors"] += 1
            continue
        if c_lat is not None:
            c_ms.append(float(c_lat))
        compared += 1
        agreed += c_action == k_action
        if c_action != "hold":
            c["proposals"] += 1
            c["auto"] += c_route == Route.AUTO_DELIVER
        if label is not None:
            c["decided"] += 1
            c["over"] += c_action != label
    challenger = Arm(
        scored=c["scored"],
        errors=c["errors"],
        proposals=c["proposals"],
        auto_delivered=c["auto"],
        decided=c["decided"],
        overridden=c["over"],
        latency_p95_ms=canary.p95(c_ms),
        latency_samples=len(c_ms),
    )
    champion = Arm(
        scored=len(rows),
        errors=k["errors"],
        proposals=k["proposals"],
        auto_delivered=k["auto"],
        decided=k["decided"],
        overridden=k["over"],
        latency_p95_ms=canary.p95(k_ms),
        latency_samples=len(k_ms),
    )
    extra = {
        "agreement": {
            "with_champion": round(agreed / compared, 4) if compared else None,
            "compared": compared,
            # Agreement with the clinicians' decisions on the champion's queued proposals
            # (1 - the share a clinician would have overridden).
            "with_clinicians_challenger": _share(c["decided"] - c["over"], c["decided"]),
            "with_clinicians_champion": _share(k["decided"] - k["over"], k["decided"]),
            "decided": k["decided"],
        }
    }
    return challenger, champion, extra


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


# ------------------------------------------------------------------ acting on it


def tick(*, session: Session, now: datetime, thresholds: Thresholds) -> list[RolloutStep]:
    """One evaluation cycle of every running rollout: analyse its current step, then advance
    it (shadow -> 10 -> 25 -> 50 -> 100%), complete it (the challenger to production), roll
    it back on a breach, or hold. Steps that ended are stored and audited; a hold is
    returned unsaved (it is the same analysis again at the next tick)."""
    # Locked: a manual rollback at the same moment waits for this cycle, then finds it done.
    running = session.scalars(
        select(Rollout)
        .where(col(Rollout.status).in_(ACTIVE))
        .order_by(col(Rollout.id))
        .with_for_update()
    ).all()
    done: list[RolloutStep] = []
    for rollout in running:
        found = analyse(session, rollout=rollout, now=now, thresholds=thresholds)
        step = RolloutStep(
            rollout_id=rollout.id or 0,
            stage=rollout.status,
            percent=rollout.percent,
            started_at=rollout.step_started_at,
            analysed_at=now,
            analysis=found.document(),
            decision=str(found.analysis.verdict),
            reasons=list(found.analysis.reasons),
        )
        done.append(step)
        verdict = found.analysis.verdict
        if verdict is Verdict.HOLD:
            continue
        session.add(step)
        session.flush()
        if verdict is Verdict.ROLLBACK:
            _roll_back(session, rollout, step, now)
        elif verdict is Verdict.COMPLETE:
            _complete(session, rollout, step, now)
        else:
            _advance(session, rollout, step, found.analysis.next_percent or 100, now)
    return done


def _advance(
    session: Session, rollout: Rollout, step: RolloutStep, percent: int, now: datetime
) -> None:
    name, version = rollout.model_name, rollout.challenger_version
    before = rollout.percent
    if rollout.status == RolloutStatus.SHADOW:
        lifecycle.transition(
            session=session,
            name=name,
            version=version,
            to=ModelStatus.CANARY,
            actor=SYSTEM,
            reason=f"rollout {rollout.id}: shadow clean for the dwell; canary at {percent}%",
            details={"rollout_id": rollout.id, "step_id": step.id},
            now=now,
        )
    _move(rollout, RolloutStatus.CANARY)
    rollout.percent, rollout.step_started_at = percent, now
    session.add(rollout)
    _audit(
        session,
        actor=SYSTEM,
        action="model.rollout.advance",
        name=name,
        version=version,
        details={
            "rollout_id": rollout.id,
            "step_id": step.id,
            "from_percent": before,
            "to_percent": percent,
        },
    )
    log.info("rollout %s of %s: %d%% -> %d%%", rollout.id, _label(name, version), before, percent)


def _complete(session: Session, rollout: Rollout, step: RolloutStep, now: datetime) -> None:
    """The challenger becomes the champion; the old champion is retired."""
    name, version = rollout.model_name, rollout.challenger_version
    reason = f"rollout {rollout.id} completed: clean at 100% for the dwell"
    lifecycle.transition(
        session=session,
        name=name,
        version=version,
        to=ModelStatus.PRODUCTION,
        actor=SYSTEM,
        reason=reason,
        details={"rollout_id": rollout.id, "step_id": step.id},
        now=now,
    )
    old = rollout.champion_version
    if old is not None:
        previous = lifecycle.get_version(session, name=name, version=old)
        if previous.status == ModelStatus.PRODUCTION:
            lifecycle.transition(
                session=session,
                name=name,
                version=old,
                to=ModelStatus.RETIRED,
                actor=SYSTEM,
                reason=f"replaced by {_label(name, version)} (rollout {rollout.id})",
                details={"rollout_id": rollout.id},
                now=now,
            )
    lifecycle.set_alias(
        session=session, name=name, alias=lifecycle.CHAMPION, version=version, actor=SYSTEM, now=now
    )
    lifecycle.set_alias(
        session=session, name=name, alias=lifecycle.CHALLENGER, version=None, actor=SYSTEM, now=now
    )
    _move(rollout, RolloutStatus.COMPLETED)
    rollout.ended_at, rollout.end_reason = now, reason
    session.add(rollout)
    _audit(
        session,
        actor=SYSTEM,
        action="model.rollout.complete",
        name=name,
        version=version,
        details={"rollout_id": rollout.id, "step_id": step.id, "retired_version": old},
    )
    log.info("rollout %s: %s is in production", rollout.id, _label(name, version))


def _roll_back(session: Session, rollout: Rollout, step: RolloutStep, now: datetime) -> None:
    """A breach: the challenger is retired at once and the champion serves every patient."""
    name, version = rollout.model_name, rollout.challenger_version
    reasons = "; ".join(step.reasons)
    _end(
        session,
        rollout,
        actor=SYSTEM,
        reason=f"{AUTOMATIC} at {step.stage} {step.percent}%: {reasons}",
        now=now,
    )
    _audit(
        session,
        actor=SYSTEM,
        action="model.rollout.rollback",
        name=name,
        version=version,
        details={
            "rollout_id": rollout.id,
            "step_id": step.id,
            "automatic": True,
            "model_alert": True,
            "stage": step.stage,
            "percent": step.percent,
            "breaches": [r.split(" ", 1)[0].rstrip(":") for r in step.reasons],
            "serving_version": rollout.champion_version,
        },
    )
    # The ML engineers' alert: this line (level ERROR, logger clinaiops.rollout) for the log
    # pipeline, the audit entry above, and the rollout's end reason in the API.
    log.error(
        "MODEL ALERT: rollout %s of %s rolled back automatically at %s %d%%: %s",
        rollout.id,
        _label(name, version),
        step.stage,
        step.percent,
        reasons,
    )


def _end(session: Session, rollout: Rollout, *, actor: str, reason: str, now: datetime) -> None:
    """Retire the challenger, drop its alias, and mark the rollout rolled back."""
    name, version = rollout.model_name, rollout.challenger_version
    challenger = lifecycle.get_version(session, name=name, version=version)
    if challenger.status in (ModelStatus.SHADOW, ModelStatus.CANARY):
        lifecycle.transition(
            session=session,
            name=name,
            version=version,
            to=ModelStatus.RETIRED,
            actor=actor,
            reason=reason,
            details={"rollout_id": rollout.id},
            now=now,
        )
    if lifecycle.aliases(session, name=name).get(lifecycle.CHALLENGER) == version:
        lifecycle.set_alias(
            session=session,
            name=name,
            alias=lifecycle.CHALLENGER,
            version=None,
            actor=actor,
            now=now,
        )
    _move(rollout, RolloutStatus.ROLLED_BACK)
    rollout.ended_at, rollout.end_reason = now, reason[:1000]
    session.add(rollout)


# ------------------------------------------------------------------ by hand


def rollback(
    *, session: Session, name: str, actor: str, reason: str, now: datetime
) -> RollbackResult:
    """Roll back by hand. With a rollout running: end it (its challenger retired, the
    champion serving every patient). Otherwise: retire the production version and restore
    the one that served before it (from the serving history)."""
    # One line of printable text (a NUL or a newline has no place in a transition's reason).
    reason = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    if not reason:
        raise RolloutRefused("reason_required", "say why the model is rolled back", 422)
    running = active(session, name=name, lock=True)
    if running is not None:
        _end(session, running, actor=actor, reason=f"manual rollback: {reason}", now=now)
        _audit(
            session,
            actor=actor,
            action="model.rollout.rollback",
            name=name,
            version=running.challenger_version,
            details={
                "rollout_id": running.id,
                "automatic": False,
                "stage": _stage(running),
                "serving_version": running.champion_version,
            },
        )
        log.warning("rollout %s of %s rolled back by hand", running.id, name)
        return RollbackResult(
            running.challenger_version, running.champion_version, running.id, None
        )
    current = lifecycle.champion(session, name=name)
    if current is None:
        raise RolloutRefused("no_production", f"{name} has no version in production")
    previous = _previous(session, name=name, current=current.version)
    if previous is None:
        raise RolloutRefused(
            "no_previous_version", f"no version of {name} served before v{current.version}"
        )
    restored = lifecycle.get_version(session, name=name, version=previous)
    lifecycle.transition(
        session=session,
        name=name,
        version=current.version,
        to=ModelStatus.RETIRED,
        actor=actor,
        reason=f"manual rollback to v{previous}: {reason}",
        now=now,
    )
    lifecycle.transition(
        session=session,
        name=name,
        version=previous,
        to=ModelStatus.PRODUCTION,
        actor=actor,
        reason=f"restored by the manual rollback of v{current.version}: {reason}",
        now=now,
    )
    lifecycle.set_alias(
        session=session, name=name, alias=lifecycle.CHAMPION, version=previous, actor=actor, now=now
    )
    problem = serving.artifact_problem(restored)
    _audit(
        session,
        actor=actor,
        action="model.rollback",
        name=name,
        version=current.version,
        details={
            "retired_version": current.version,
            "restored_version": previous,
            "restored_artifact_ok": problem is None,
        },
    )
    log.warning("%s rolled back by hand: v%d -> v%d", name, current.version, previous)
    if problem is not None:
        log.error(
            "restored %s is unusable (%s): clinicians decide", _label(name, previous), problem
        )
    return RollbackResult(current.version, previous, None, problem)


def _stage(rollout: Rollout) -> str:
    return "shadow" if rollout.status == RolloutStatus.SHADOW else f"canary {rollout.percent}%"


def _previous(session: Session, *, name: str, current: int) -> int | None:
    """The version that served in production most recently before `current`."""
    ended = [
        i
        for i in lifecycle.serving_history(session, name=name)
        if i.version != current and i.end is not None
    ]
    if not ended:
        return None
    return max(ended, key=lambda i: (i.end or i.start, i.start)).version
