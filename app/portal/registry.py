"""Portal pages for the model registry and its rollouts: every model with its alerts, and one
model's page (alerts, the running or latest rollout with each step's analysis, the versions,
the serving history), with a manual rollback for ML engineers.

Registered on the portal router (`app.portal.web.router`) when imported. Reading is
`model, list` and `model, read` (ML engineers, clinicians, auditors); rolling back is
`model, rollback` (ML engineers), under the password re-entered, through the service the CLI
and the API use (`mlops.rollout.rollback`). Every view and act is audited through
`require()`; the pages hold aggregates only (counts, rates, versions), no patient data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.auth import service as auth_service
from app.core import clock
from app.core.config import Settings
from app.core.errors import ProblemError
from app.portal import drafts
from app.portal.web import page_context, portal_page, refuse, render, router
from audit.models import Outcome
from mlops import alerts, lifecycle, lineage, rollout
from mlops.canary import Thresholds
from mlops.models import ModelVersion, Rollout, RolloutStatus, RolloutStep
from policies import service as policy

_MODEL_NAME = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
NAV: Final = "models"
EARLIER_ROLLOUTS: Final = 20
# The live checks in the order the analysis makes them (mlops/canary.py), as people read them.
CHECKS: Final[Mapping[str, str]] = {
    "error_rate": "Error rate",
    "override_rate": "Clinician override rate",
    "routing_mix": "Auto-delivered share (routing mix)",
    "latency_p95_ms": "Scoring latency p95 (ms)",
}
ARM_FIELDS: Final[Mapping[str, str]] = {
    "scored": "Evaluations scored",
    "errors": "No answer (errors)",
    "proposals": "Dose changes proposed",
    "auto_delivered": "Delivered automatically",
    "decided": "Decided by a clinician",
    "overridden": "Modified or rejected",
    "latency_p95_ms": "Latency p95 (ms)",
}
BADGES: Final[Mapping[str, str]] = {
    # model versions
    "production": "ok",
    "canary": "info",
    "shadow": "info",
    "validated": "plain",
    "candidate": "plain",
    "retired": "plain",
    # rollouts
    "completed": "ok",
    "rolled_back": "bad",
    "aborted": "warn",
    # step decisions
    "advance": "ok",
    "complete": "ok",
    "hold": "warn",
    "rollback": "bad",
}
NOTICES: Final[Mapping[str, str]] = {
    "rolled_back": "Rolled back. What serves now is shown below.",
    "rolled_back_unusable": "Rolled back, but the restored version's artifact cannot serve: "
    "every evaluation goes to clinicians until a usable version is in production.",
}
_PASSWORD_REFUSALS: Final = {
    auth_service.LoginOutcome.BAD_CREDENTIALS: "The password is wrong: nothing was rolled back.",
    auth_service.LoginOutcome.THROTTLED: "Too many wrong passwords: wait, then try again.",
    auth_service.LoginOutcome.LOCKED: "The account is locked after too many wrong passwords.",
}


@dataclass(frozen=True)
class StepView:
    """One step's analysis as the page shows it (a live one has no id and is not stored)."""

    id: int | None
    stage: str
    percent: int
    started_at: datetime
    analysed_at: datetime
    decision: str
    reasons: list[str]
    analysis: dict[str, Any]

    @property
    def where(self) -> str:
        """Shadow, or the canary's share of patients."""
        return "shadow" if self.stage == RolloutStatus.SHADOW else f"canary {self.percent}%"

    def checks(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, label, check) for the four live checks, in the analysis's order."""
        found: dict[str, Any] = self.analysis.get("checks") or {}
        names = [n for n in CHECKS if n in found] + [n for n in found if n not in CHECKS]
        return [(n, CHECKS.get(n, n), dict(found[n])) for n in names]

    def arms(self) -> list[tuple[str, Any, Any]]:
        """(label, challenger, champion) for the counts behind the checks."""
        challenger = self.analysis.get("challenger") or {}
        champion = self.analysis.get("champion") or {}
        return [
            (label, challenger.get(key), champion.get(key))
            for key, label in ARM_FIELDS.items()
            if key in challenger or key in champion
        ]


def _step(step: RolloutStep) -> StepView:
    return StepView(
        step.id,
        step.stage,
        step.percent,
        step.started_at,
        step.analysed_at,
        step.decision,
        list(step.reasons),
        dict(step.analysis),
    )


def _live(session: Session, found: Rollout, now: datetime, settings: Settings) -> StepView | None:
    """The analysis of a running rollout's current step as of now (read only), with the
    thresholds the scheduled analysis uses."""
    if found.status not in rollout.ACTIVE:
        return None
    thresholds = Thresholds.from_settings(settings)
    live = rollout.analyse(session, rollout=found, now=now, thresholds=thresholds)
    return StepView(
        None,
        found.status,
        found.percent,
        found.step_started_at,
        now,
        str(live.analysis.verdict),
        list(live.analysis.reasons),
        live.document(),
    )


def _names(session: Session) -> list[str]:
    name = col(ModelVersion.name)
    return list(session.scalars(select(name).distinct().order_by(name)))


def _rollouts(session: Session, name: str) -> list[Rollout]:
    return list(
        session.scalars(
            select(Rollout)
            .where(col(Rollout.model_name) == name)
            .order_by(col(Rollout.id).desc())
            .limit(EARLIER_ROLLOUTS + 1)
        )
    )


def _context(request: Request, access: Access, settings: Settings, **extra: Any) -> dict[str, Any]:
    role = access.principal.role
    return page_context(
        request,
        access,
        settings,
        NAV,
        badges=BADGES,
        window_days=alerts.WINDOW.days,
        may_rollback=bool(policy.allowed_relations(role, "model", "rollback")),
        **extra,
    )


# ------------------------------------------------------------------ every model


@router.get("/models", response_class=HTMLResponse)
@portal_page
def models_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("model", "list")],
) -> Response:
    """Every registered model: what serves, the rollout, and the alerts of the last 14 days."""
    now = clock.utcnow()
    since = now - alerts.WINDOW
    rollbacks = alerts.rollbacks(session, since=since)
    failures = alerts.serving_failures(session, since=since)
    summaries = []
    for name in _names(session):
        champion = lifecycle.champion(session, name=name)
        summaries.append(
            {
                "name": name,
                "champion": champion.version if champion is not None else None,
                "aliases": lifecycle.aliases(session, name=name),
                "versions": len(lineage.listing(session, name=name).items),
                "rollout": rollout.latest(session, name=name),
            }
        )
    access.entry.resource_type = "model"
    access.entry.details = {
        "count": len(summaries),
        "rollback_alerts": len(rollbacks),
        "serving_failures": len(failures),
    }
    session.commit()
    return render(
        request,
        "models.html",
        _context(
            request,
            access,
            settings,
            models=summaries,
            rollbacks=rollbacks,
            failures=failures,
        ),
    )


# ------------------------------------------------------------------ one model


def _model_context(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    name: str,
    **extra: Any,
) -> dict[str, Any]:
    """Everything the model's page shows; 404 for a model with no version."""
    versions = lineage.listing(session, name=name).items
    if not versions:
        raise ProblemError(404, "not_found", "no such model")
    now = clock.utcnow()
    since = now - alerts.WINDOW
    history = lineage.history(session, name=name)
    found = _rollouts(session, name)
    running = rollout.active(session, name=name)
    latest = running or (found[0] if found else None)
    steps = [_step(s) for s in rollout.steps(session, rollout_id=latest.id or 0)] if latest else []
    champion = lifecycle.champion(session, name=name)
    return _context(
        request,
        access,
        settings,
        name=name,
        versions=versions,
        history=history,
        champion=champion,
        running=running,
        latest=latest,
        earlier=[r for r in found if latest is None or r.id != latest.id][:EARLIER_ROLLOUTS],
        steps=steps,
        live=_live(session, latest, now, settings) if latest is not None else None,
        rollbacks=alerts.rollbacks(session, since=since, name=name),
        failures=alerts.serving_failures(session, since=since, name=name),
        previous=_previous(history, champion.version if champion else None),
        **extra,
    )


def _previous(history: lineage.ServingHistory, current: int | None) -> int | None:
    """The version a manual rollback without a running rollout would restore (as
    `mlops.rollout` finds it: the one that served most recently before the current one)."""
    ended = [i for i in history.intervals if i.version != current and i.end is not None]
    if current is None or not ended:
        return None
    return max(ended, key=lambda i: (i.end or i.start, i.start)).version


@router.get("/models/{name}", response_class=HTMLResponse)
@portal_page
def model_page(
    name: _MODEL_NAME,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("model", "read")],
    notice: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    """One model: its alerts, the running or latest rollout with every step's analysis, the
    versions with status, aliases and privacy cost, and which version served when."""
    access.entry.resource_type, access.entry.resource_id = "model", name
    draft = drafts.take(request, access.principal.id)
    context = _model_context(
        request,
        session,
        access,
        settings,
        name,
        notice=NOTICES.get(notice, ""),
        error="",
        form=draft if draft.get("form") == "rollback" else {},
    )
    latest = context["latest"]
    access.entry.details = {
        "rollout_id": latest.id if latest is not None else None,
        "rollback_alerts": len(context["rollbacks"]),
        "serving_failures": len(context["failures"]),
    }
    session.commit()
    return render(request, "model.html", context)


@router.post("/models/{name}/rollback")
@portal_page
def model_rollback(
    name: _MODEL_NAME,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("model", "rollback")],
    reason: Annotated[str, Form(max_length=500)] = "",
    password: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Roll back by hand, as `clinaiops models rollback` does: a running rollout ends (its
    challenger retired), else the production version is retired and the previous one
    restored. The password is asked again; a wrong one is audited as a denial."""
    access.entry.resource_type, access.entry.resource_id = "model", name
    entered = {"form": "rollback", "reason": reason}
    if not lineage.listing(session, name=name, limit=1).items:
        raise ProblemError(404, "not_found", "no such model")
    if not " ".join(reason.split()):
        refuse(session, access, "reason_required")
        return _again(request, session, access, settings, name, entered, "Say why.", 422)
    checked = auth_service.authenticate(
        session,
        username=access.principal.username or "",
        password=password,
        settings=settings,
    )
    if checked.outcome is not auth_service.LoginOutcome.OK:
        # Only the failed attempt's count (toward lockout) and this denial are written.
        access.entry.outcome = Outcome.DENIED
        access.entry.details = {"code": "password_invalid", "reason": str(checked.outcome)}
        session.commit()
        message = _PASSWORD_REFUSALS.get(checked.outcome, "Refused: nothing was rolled back.")
        return _again(request, session, access, settings, name, entered, message, 403)
    try:
        result = rollout.rollback(
            session=session,
            name=name,
            actor=access.principal.actor,
            reason=reason,
            now=clock.utcnow(),
        )
    except (rollout.RolloutRefused, lifecycle.LifecycleRefused) as exc:
        refuse(session, access, exc.code)
        return _again(request, session, access, settings, name, entered, exc.detail, exc.status)
    access.entry.details = {
        "retired_version": result.retired,
        "serving_version": result.serving,
        "rollout_id": result.rollout_id,
        "reauthenticated": True,
    }
    session.commit()
    notice = "rolled_back" if result.artifact_problem is None else "rolled_back_unusable"
    return RedirectResponse(f"/portal/models/{name}?notice={notice}", status_code=303)


def _again(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    name: str,
    entered: Mapping[str, Any],
    error: str,
    status: int,
) -> Response:
    """The model's page again with the refusal and what was entered (never the password)."""
    context = _model_context(
        request, session, access, settings, name, notice="", error=error, form=entered
    )
    session.rollback()  # a read; the refusal is committed already
    return render(request, "model.html", context, status=status)
