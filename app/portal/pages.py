"""The clinician review pages: panel, queue, proposal (decide, print), envelope editor, alerts.

Registered on the portal router (`app.portal.web.router`) when imported.

Server-rendered; every form works without JavaScript (charts are an enhancement over tables).
Each route declares `require()`: a patient's pages find the patient through the path (the
patient id, or the proposal's or alert's patient), so outside the care team every one of them
answers 404, as an unknown id does. Reads of patient data enrich the queued audit entry with
what was shown before committing it; changes go through `loops.review.service`, which never
commits. A refused act (conflict, invalid input, wrong signature) is rolled back and its
entry committed alone with the refusal's code, and the page is shown again with the input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.auth.principal import Principal
from app.core import clock
from app.core.config import Settings
from app.patients.models import Patient
from app.portal import charts, drafts
from app.portal.web import page_context, portal_page, refuse, render, router
from audit import service as audit
from audit.models import Outcome
from loops import service as loop_service
from loops.models import Alert, Proposal
from loops.review import service as review
from loops.review.models import MEANINGS, ModifyReason, RejectReason
from mlops.explain import feature_info
from mlops.features import FEATURE_DOCS
from policies.envelope import EnvelopeRules, TitrationAction

QUEUE_PAGE = 50
RISK_LABELS = {3: "crisis alert", 2: "open alert", 1: "high BP", 0: "routine"}
_ID = Annotated[str, Path(max_length=36)]
_NOTICES = {
    "released": "Claim released: the item is back in the queue for anyone.",
    "acknowledged": "Alert acknowledged.",
    "escalated": "Alert escalated.",
}


def _proposal_patient(session: Session, request: Request, principal: Principal) -> str | None:
    proposal = session.get(Proposal, request.path_params.get("proposal_id", ""))
    return None if proposal is None else proposal.patient_id


def _alert_patient(session: Session, request: Request, principal: Principal) -> str | None:
    alert = session.get(Alert, request.path_params.get("alert_id", ""))
    return None if alert is None else alert.patient_id


def _see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _conflict(
    request: Request,
    access: Access,
    settings: Settings,
    exc: review.ReviewConflict,
    *,
    proposal_id: str = "",
    back: str = "/portal/queue",
) -> Response:
    return render(
        request,
        "conflict.html",
        page_context(
            request,
            access,
            settings,
            "queue" if proposal_id else "alerts",
            conflict=exc,
            proposal_id=proposal_id,
            back=back,
        ),
        status=409,
    )


# ------------------------------------------------------------------------------ panel


@router.get("/panel", response_class=HTMLResponse)
@portal_page
def panel_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("patient", "panel", listing=True, audit_as="review.panel")],
    q: Annotated[str, Query(max_length=100)] = "",
    status: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    """The clinician's care-team patients: control, last reading, alerts, pending, review due."""
    wanted = status if status in {f.value for f in review.PanelFilter} else ""
    rows = review.panel(
        session,
        patient_filter=access.patient_filter(),
        now=clock.utcnow(),
        search=q.strip() or None,
        status_filter=wanted or None,
        limit=100,
        settings=settings,
    )
    # The search text may be a name: the trail keeps that a search was made, and who was shown.
    access.entry.details = {
        "search": bool(q.strip()),
        "filter": wanted or None,
        "count": len(rows),
        "patient_ids": [r.patient.id for r in rows],
    }
    session.commit()
    return render(
        request,
        "panel.html",
        page_context(
            request,
            access,
            settings,
            "panel",
            rows=rows,
            q=q,
            status=wanted,
            filters=[f.value for f in review.PanelFilter],
        ),
    )


# ------------------------------------------------------------------------------ queue


@router.get("/queue", response_class=HTMLResponse)
@portal_page
def queue_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("proposal", "review", listing=True, audit_as="review.queue")],
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    patient: Annotated[str | None, Query(max_length=36)] = None,
    notice: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    """Proposals waiting for a clinician, riskiest and then oldest first, with claims."""
    items, total = review.queue(
        session,
        patient_filter=access.patient_filter(),
        now=clock.utcnow(),
        limit=QUEUE_PAGE,
        offset=(page - 1) * QUEUE_PAGE,
        patient_id=patient or None,
        settings=settings,
    )
    access.entry.details = {
        "page": page,
        "count": len(items),
        "total": total,
        "patient_ids": sorted({i.patient.id for i in items}),
    }
    session.commit()
    return render(
        request,
        "queue.html",
        page_context(
            request,
            access,
            settings,
            "queue",
            items=items,
            total=total,
            page=page,
            pages=max(1, -(-total // QUEUE_PAGE)),
            patient=patient or "",
            notice=_NOTICES.get(notice, ""),
            risk_labels=RISK_LABELS,
        ),
    )


@router.post("/queue/{proposal_id}/claim")
@portal_page
def claim_item(
    request: Request,
    proposal_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("proposal", "claim", patient_from=_proposal_patient, audit_as="proposal.claim"),
    ],
) -> Response:
    """Claim a queued proposal (a lock that lapses), then open it."""
    access.entry.resource_type, access.entry.resource_id = "proposal", proposal_id
    try:
        held = review.claim(
            session,
            proposal_id=proposal_id,
            user=access.principal,
            now=clock.utcnow(),
            settings=settings,
        )
    except review.ReviewConflict as exc:
        refuse(session, access, exc.code)
        return _conflict(request, access, settings, exc, proposal_id=proposal_id)
    access.entry.details = {"expires_at": clock.iso(held.expires_at)}
    session.commit()
    return _see_other(f"/portal/proposals/{proposal_id}")


@router.post("/queue/{proposal_id}/release")
@portal_page
def release_item(
    proposal_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access,
        require("proposal", "claim", patient_from=_proposal_patient, audit_as="proposal.release"),
    ],
) -> Response:
    """Give a claim back so a colleague may take the item."""
    access.entry.resource_type, access.entry.resource_id = "proposal", proposal_id
    released = review.release(session, proposal_id=proposal_id, user=access.principal)
    access.entry.details = {"released": released}
    session.commit()
    return _see_other("/portal/queue?notice=released")


# --------------------------------------------------------------------------- proposal


@dataclass(frozen=True)
class Factor:
    """A SHAP factor as the page shows it: short label, formatted value, plain sentence."""

    feature: str
    label: str
    description: str
    value: str
    shap: float
    patient_phrase: str


def _factors(detail: review.ProposalDetail) -> list[Factor]:
    out = []
    for f in detail.shap:
        info = feature_info(f.feature)
        phrase = info.patient(f.value) if info.patient and f.value is not None else ""
        out.append(
            Factor(
                feature=f.feature,
                label=info.label,
                description=FEATURE_DOCS.get(f.feature, f.label),
                value="missing" if f.value is None else info.fmt(f.value),
                shap=f.shap,
                patient_phrase=phrase,
            )
        )
    return out


def _charts(detail: review.ProposalDetail, factors: Sequence[Factor]) -> dict[str, Any]:
    """The page's three figures."""
    points = [charts.BpPoint(p.time, p.systolic, p.diastolic, True) for p in detail.cuff]
    points += [charts.BpPoint(p.time, p.systolic, p.diastolic, False) for p in detail.cuffless]
    unit = detail.ladder.unit if detail.ladder else "mg"
    bp = charts.bp_figure(
        points,
        target=detail.target,
        dose_changes=[
            charts.Marker(c.time, f"{c.from_dose:g}→{c.to_dose:g} {unit}") for c in detail.changes
        ],
        alerts=[
            charts.Marker(a.raised_at, a.type.replace("_", " "))
            for a in detail.alerts
            if a.raised_at >= detail.window_start
        ],
    )
    adherence = charts.adherence_figure([(d.day, d.taken, d.missed) for d in detail.adherence])
    shap = charts.shap_figure([(f.label, f.shap) for f in factors])
    return {"bp": bp, "adherence": adherence, "shap": shap}


def _bp_summary(detail: review.ProposalDetail) -> dict[str, Any]:
    """The chart's gist as numbers, for the page without JavaScript and for print."""

    def mean(values: Sequence[float]) -> float | None:
        return sum(values) / len(values) if values else None

    last7 = [p for p in detail.cuff if (clock.utcnow() - p.time).days < 7]
    taken = sum(d.taken for d in detail.adherence)
    missed = sum(d.missed for d in detail.adherence)
    return {
        "cuff_n": len(detail.cuff),
        "cuffless_n": len(detail.cuffless),
        "sbp7": mean([p.systolic for p in last7]),
        "dbp7": mean([p.diastolic for p in last7]),
        "n7": len(last7),
        "sbp30": mean([p.systolic for p in detail.cuff]),
        "dbp30": mean([p.diastolic for p in detail.cuff]),
        "cuffless_sbp30": mean([p.systolic for p in detail.cuffless]),
        "adherence": taken / (taken + missed) if taken + missed else None,
        "doses": taken + missed,
    }


def _proposal_context(
    request: Request,
    access: Access,
    settings: Settings,
    detail: review.ProposalDetail,
    *,
    draft: Mapping[str, Any] | None = None,
    error: str = "",
) -> dict[str, Any]:
    factors = _factors(detail)
    return page_context(
        request,
        access,
        settings,
        "queue",
        d=detail,
        factors=factors,
        charts=_charts(detail, factors),
        summary=_bp_summary(detail),
        meanings={k.value: v for k, v in MEANINGS.items()},
        reject_reasons=[r.value for r in RejectReason],
        modify_reasons=[r.value for r in ModifyReason],
        draft=dict(draft or {}),
        error=error,
        pending=detail.proposal.status == "pending_review",
    )


@router.get("/proposals/{proposal_id}", response_class=HTMLResponse)
@portal_page
def proposal_page(
    request: Request,
    proposal_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("proposal", "review", patient_from=_proposal_patient, audit_as="proposal.read"),
    ],
) -> Response:
    """One proposal: charts, explanation, routing, envelope, responses; the decision forms,
    or the signed decision."""
    detail = review.proposal_detail(
        session, proposal_id=proposal_id, now=clock.utcnow(), settings=settings
    )
    access.entry.resource_type, access.entry.resource_id = "proposal", proposal_id
    access.entry.details = {"status": detail.proposal.status}
    session.commit()
    draft = drafts.take(request, access.principal.id)
    return render(
        request, "proposal.html", _proposal_context(request, access, settings, detail, draft=draft)
    )


@router.get("/proposals/{proposal_id}/print", response_class=HTMLResponse)
@portal_page
def proposal_print(
    request: Request,
    proposal_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("proposal", "review", patient_from=_proposal_patient, audit_as="proposal.print"),
    ],
) -> Response:
    """The printable record of a proposal and its signed decision."""
    detail = review.proposal_detail(
        session, proposal_id=proposal_id, now=clock.utcnow(), settings=settings
    )
    access.entry.resource_type, access.entry.resource_id = "proposal", proposal_id
    access.entry.details = {"status": detail.proposal.status, "print": True}
    session.commit()
    return render(
        request,
        "proposal_print.html",
        page_context(
            request,
            access,
            settings,
            "queue",
            d=detail,
            factors=_factors(detail),
            summary=_bp_summary(detail),
            printed_at=clock.utcnow(),
        ),
    )


@router.post("/proposals/{proposal_id}/decide")
@portal_page
def decide(
    request: Request,
    proposal_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("proposal", "decide", patient_from=_proposal_patient, audit_as="proposal.decide"),
    ],
    kind: Annotated[str, Form(max_length=16)],
    password: Annotated[str, Form(max_length=256)] = "",
    meaning_confirmed: Annotated[str, Form(max_length=8)] = "",
    decided_step: Annotated[str, Form(max_length=4)] = "",
    reason_code: Annotated[str, Form(max_length=32)] = "",
    reason_text: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Approve, modify or reject under an electronic signature: the password again and the
    meaning stated (21 CFR Part 11); a refused signature decides nothing."""
    access.entry.resource_type, access.entry.resource_id = "proposal", proposal_id
    access.entry.details = {"kind": kind}
    entered = {
        "form": f"decide-{kind}",
        "decided_step": decided_step,
        "reason_code": reason_code,
        "reason_text": reason_text,
    }
    try:
        decision = review.decide(
            session,
            proposal_id=proposal_id,
            user=access.principal,
            kind=kind,
            password=password,
            meaning_confirmed=bool(meaning_confirmed),
            now=clock.utcnow(),
            decided_step=int(decided_step) if decided_step.strip().isdigit() else None,
            reason_code=reason_code or None,
            reason_text=reason_text or None,
            settings=settings,
        )
    except review.SignatureRefused as exc:
        # Nothing changed but the failed-password count, which must stay (lockout); the
        # attempt is recorded as a denial.
        access.entry.outcome = Outcome.DENIED
        access.entry.details = {"code": "signature_invalid", "reason": exc.code, "kind": kind}
        session.commit()
        return _decide_again(request, session, access, settings, proposal_id, entered, exc.message)
    except review.ReviewConflict as exc:
        refuse(session, access, exc.code)
        return _conflict(request, access, settings, exc, proposal_id=proposal_id)
    except review.ReviewInvalid as exc:
        refuse(session, access, exc.code)
        return _decide_again(
            request, session, access, settings, proposal_id, entered, exc.message, 422
        )
    access.entry.details = review.decision_audit_details(decision)
    session.commit()
    return _see_other(f"/portal/proposals/{proposal_id}")


def _decide_again(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    proposal_id: str,
    entered: dict[str, str],
    error: str,
    status: int = 403,
) -> Response:
    detail = review.proposal_detail(
        session, proposal_id=proposal_id, now=clock.utcnow(), settings=settings
    )
    session.rollback()  # a read; the refusal is committed already
    context = _proposal_context(request, access, settings, detail, draft=entered, error=error)
    return render(request, "proposal.html", context, status=status)


# --------------------------------------------------------------------------- envelope

RULE_FIELDS = (
    "min_dose_step",
    "max_dose_step",
    "max_step_change",
    "min_confidence",
    "min_cuff_readings_7d",
    "min_cuff_days_7d",
    "min_days_since_change",
    "max_auto_changes_per_30d",
)


def rules_form(rules: EnvelopeRules) -> dict[str, Any]:
    """Envelope rules as the editor's form values."""
    values: dict[str, Any] = {name: getattr(rules, name) for name in RULE_FIELDS}
    values["max_dose_step"] = "" if rules.max_dose_step is None else rules.max_dose_step
    values["auto_actions"] = sorted(a.value for a in rules.auto_actions)
    values["block_on_open_alert"] = rules.block_on_open_alert
    return values


def _form_rules(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The editor's posted (or kept) fields as form values."""
    values: dict[str, Any] = {name: str(fields.get(name, "")).strip() for name in RULE_FIELDS}
    actions = fields.get("auto_actions", [])
    values["auto_actions"] = [actions] if isinstance(actions, str) else list(actions)
    values["block_on_open_alert"] = bool(fields.get("block_on_open_alert"))
    return values


def _rules_input(values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values as the service's rules input (blank numbers keep the defaults)."""
    rules: dict[str, Any] = {
        "auto_actions": list(values["auto_actions"]),
        "block_on_open_alert": values["block_on_open_alert"],
    }
    for name in RULE_FIELDS:
        if values[name] != "":
            rules[name] = values[name]
    if values["max_dose_step"] == "":
        rules["max_dose_step"] = None
    return rules


@dataclass
class EnvelopeView:
    """What the editor shows besides the form."""

    history: list[Any]
    authors: dict[int, str]
    current: Any
    drug: str
    unit: str
    steps: list[float]
    template: EnvelopeRules
    version: int


def _envelope_view(session: Session, patient_id: str) -> EnvelopeView:
    history = review.envelope_history(session, patient_id=patient_id)
    ladder = review.active_ladder(session, patient_id=patient_id)
    current = loop_service.envelope_in_force(session, patient_id=patient_id, at=clock.utcnow())
    drug = ladder.drug if ladder else ""
    return EnvelopeView(
        history=history,
        authors=review.user_names(session, [e.author_id for e in history]),
        current=current,
        drug=drug,
        unit=ladder.unit if ladder else "mg",
        steps=list(ladder.steps) if ladder else [],
        template=review.envelope_template(drug, ladder_steps=len(ladder.steps) if ladder else None),
        version=history[0].version if history else 0,
    )


def _envelope_page(
    request: Request,
    access: Access,
    settings: Settings,
    patient: Any,
    view: EnvelopeView,
    *,
    form: Mapping[str, Any] | None = None,
    reason: str = "",
    expected_version: int | None = None,
    error: str = "",
    error_field: str = "",
    stale: review.ReviewConflict | None = None,
    rerouted: Sequence[Any] = (),
    saved: bool = False,
    status: int = 200,
) -> Response:
    current = (
        rules_form(EnvelopeRules.model_validate(view.current.rules))
        if view.current is not None
        else None
    )
    context = page_context(
        request,
        access,
        settings,
        "panel",
        patient=patient,
        v=view,
        form=dict(form) if form is not None else (current or rules_form(view.template)),
        current=current,
        template=rules_form(view.template),
        actions=[a.value for a in TitrationAction],
        fields=RULE_FIELDS,
        reason=reason,
        expected_version=view.version if expected_version is None else expected_version,
        error=error,
        error_field=error_field,
        stale=stale,
        rerouted=rerouted,
        saved=saved,
    )
    return render(request, "envelope.html", context, status=status)


def _patient(session: Session, patient_id: str) -> Patient | None:
    return session.get(Patient, patient_id)


@router.get("/patients/{patient_id}/envelope", response_class=HTMLResponse)
@portal_page
def envelope_page(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("envelope", "read", patient_param="patient_id"),
    ],
    template: Annotated[bool, Query()] = False,
) -> Response:
    """The patient's safety envelope: version history and an edit form prefilled from the
    version in force (or from the drug's template)."""
    view = _envelope_view(session, patient_id)
    patient = _patient(session, patient_id)
    access.entry.details = {"version": view.version}
    session.commit()
    draft = drafts.take(request, access.principal.id)
    form = _form_rules(draft) if draft else rules_form(view.template) if template else None
    return _envelope_page(
        request,
        access,
        settings,
        patient,
        view,
        form=form,
        reason=str(draft.get("reason", "")),
        expected_version=int(draft["expected_version"])
        if str(draft.get("expected_version", "")).isdigit()
        else None,
    )


@router.post("/patients/{patient_id}/envelope")
@portal_page
async def envelope_edit(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("envelope", "write", patient_param="patient_id", audit_as="envelope.write"),
    ],
) -> Response:
    """Save a new envelope version, in force at once, unless someone saved one since the form
    was loaded (409, the input kept); pending proposals are re-routed against it."""
    posted = await request.form()
    entered = _form_rules(
        {k: posted.getlist(k) if k == "auto_actions" else posted.get(k) for k in posted}
    )
    reason = str(posted.get("reason", "")).strip()[:500]
    raw_version = str(posted.get("expected_version", ""))
    expected = int(raw_version) if raw_version.isdigit() else None
    now = clock.utcnow()
    try:
        edit = review.edit_envelope(
            session,
            patient_id=patient_id,
            user=access.principal,
            rules=_rules_input(entered),
            reason=reason,
            expected_version=expected,
            now=now,
        )
    except (review.ReviewConflict, review.ReviewInvalid) as exc:
        refuse(session, access, exc.code)
        view = _envelope_view(session, patient_id)
        patient = _patient(session, patient_id)
        session.rollback()
        stale = exc if isinstance(exc, review.ReviewConflict) else None
        return _envelope_page(
            request,
            access,
            settings,
            patient,
            view,
            form=entered,
            reason=reason,
            # After a conflict the form is resubmittable against the version now in force.
            expected_version=view.version if stale else expected,
            error="" if stale else exc.message,
            error_field="" if stale else getattr(exc, "field", ""),
            stale=stale,
            status=409 if stale else 422,
        )
    access.entry.resource_type, access.entry.resource_id = "safety_envelope", patient_id
    access.entry.details = {
        "version": edit.envelope.version,
        "reason": reason,
        "rules": edit.envelope.rules,
        "rerouted": [r.proposal.id for r in edit.rerouted],
        "delivered": [r.proposal.id for r in edit.rerouted if r.delivered],
    }
    session.commit()
    view = _envelope_view(session, patient_id)
    patient = _patient(session, patient_id)
    session.rollback()
    return _envelope_page(
        request, access, settings, patient, view, rerouted=edit.rerouted, saved=True
    )


# ----------------------------------------------------------------------------- alerts


def _inbox(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    show: str,
    *,
    notice: str = "",
    error: str = "",
    error_alert: str = "",
    draft: Mapping[str, Any] | None = None,
    status: int = 200,
) -> Response:
    """Read the inbox, audit what was shown (on the act's own entry, or as a read of its own
    after a refused act), commit, and render it."""
    inbox = review.alerts_inbox(
        session,
        patient_filter=access.patient_filter(),
        now=clock.utcnow(),
        include_resolved=show == "all",
    )
    shown = {"count": len(inbox), "patient_ids": sorted({row.patient.id for row in inbox})}
    if access.entry.written:
        audit.record(
            session,
            actor=access.principal.actor,
            actor_role=access.principal.role,
            action="alert.inbox",
            resource_type="alert",
            details=shown,
        )
    else:
        access.entry.details = {**access.entry.details, **shown}
    session.commit()
    return render(
        request,
        "alerts.html",
        page_context(
            request,
            access,
            settings,
            "alerts",
            rows=inbox,
            show=show,
            notice=notice,
            error=error,
            error_alert=error_alert,
            draft=dict(draft or {}),
        ),
        status=status,
    )


@router.get("/alerts", response_class=HTMLResponse)
@portal_page
def alerts_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("alert", "review", listing=True, audit_as="alert.inbox")],
    show: Annotated[str, Query(pattern="^(open|all)$")] = "open",
    notice: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    """Alerts of the care teams' patients, crises pinned on top; acknowledge or escalate."""
    draft = drafts.take(request, access.principal.id)
    return _inbox(
        request, session, access, settings, show, notice=_NOTICES.get(notice, ""), draft=draft
    )


def _alert_act(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    alert_id: str,
    note: str,
    act: Any,
    notice: str,
) -> Response:
    access.entry.resource_type, access.entry.resource_id = "alert", alert_id
    now = clock.utcnow()
    try:
        alert = act(session, alert_id=alert_id, user=access.principal, note=note, now=now)
    except review.ReviewConflict as exc:
        refuse(session, access, exc.code)
        return _conflict(request, access, settings, exc, back="/portal/alerts")
    except review.ReviewInvalid as exc:
        refuse(session, access, exc.code)
        return _inbox(
            request,
            session,
            access,
            settings,
            "open",
            error=exc.message,
            error_alert=alert_id,
            status=422,
        )
    details: dict[str, Any] = {"type": alert.type, "severity": alert.severity}
    if alert.acknowledged_at is not None and notice == "acknowledged":
        details["seconds_to_acknowledge"] = int(
            (alert.acknowledged_at - alert.raised_at).total_seconds()
        )
    if notice == "escalated":
        details["level"] = alert.escalation_level
    access.entry.details = details
    session.commit()
    return _see_other(f"/portal/alerts?notice={notice}")


@router.post("/alerts/{alert_id}/acknowledge")
@portal_page
def acknowledge_alert(
    request: Request,
    alert_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("alert", "acknowledge", patient_from=_alert_patient, audit_as="alert.acknowledge"),
    ],
    note: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Acknowledge an alert with a note; the time is recorded and shown."""
    return _alert_act(
        request, session, access, settings, alert_id, note, review.acknowledge, "acknowledged"
    )


@router.post("/alerts/{alert_id}/escalate")
@portal_page
def escalate_alert(
    request: Request,
    alert_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("alert", "escalate", patient_from=_alert_patient, audit_as="alert.escalate"),
    ],
    note: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Escalate an alert (to whom and why, in the note)."""
    return _alert_act(
        request, session, access, settings, alert_id, note, review.escalate, "escalated"
    )
