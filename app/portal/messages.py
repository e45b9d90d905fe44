"""Portal pages: messages between patients and their care teams. Registered on the portal
router when imported.

The inbox lists the care teams' conversations, those with unread patient messages first; a
conversation's page shows its messages (opening it marks the patient's messages read for the
whole team), a reply form and close/reopen; a patient's page lists their conversations with a
form to start one. Every form works without JavaScript. Message text is shown only on these
pages, always HTML-escaped; audit entries carry ids, lengths and counts.

The navigation's unread badge comes from `unread_message_threads`, a template global: one
count query in a read-only transaction, only for roles that may list messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import pass_context
from jinja2.runtime import Context
from sqlalchemy.orm import Session

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.auth.principal import Principal
from app.core import clock
from app.core.config import Settings
from app.db import READONLY_OPTION
from app.patients.models import Patient
from app.portal import drafts
from app.portal.web import page_context, portal_page, refuse, render, router, templates
from audit import service as audit
from loops.messages import service
from loops.messages.models import MessageThread, SenderSide, ThreadStatus
from policies import service as policy

INBOX_PAGE = 50
THREAD_PAGE = 100
_ID = Annotated[str, Path(max_length=36)]
# Generous raw bounds; the service's own limits (200, 5,000 after cleaning) say what is wrong.
_SUBJECT = Annotated[str, Form(max_length=2000)]
_BODY = Annotated[str, Form(max_length=50_000)]
_NOTICES = {
    "sent": "Message sent.",
    "started": "Conversation started.",
    "closed": "Conversation closed.",
    "reopened": "Conversation reopened.",
}


@pass_context
def unread_message_threads(context: Context) -> int:
    """Conversations with patient messages nobody on the caller's care teams has read; 0 for
    a caller who may not list messages (no query then)."""
    principal = context.get("principal")
    request = context.get("request")
    if not isinstance(principal, Principal) or not isinstance(request, Request):
        return 0
    if not policy.allowed_relations(principal.role, "message", "list"):
        return 0
    with request.app.state.session_factory() as session:
        # A snapshot read: it must not wait for (or take) SQLite's writer slot mid-render.
        session.connection(execution_options={READONLY_OPTION: True})
        return service.unread_thread_count(
            session,
            side=SenderSide.CARE_TEAM,
            scope=policy.patient_filter(principal, "message", "list"),
        )


templates.env.globals["unread_message_threads"] = unread_message_threads


def _thread_patient(session: Session, request: Request, principal: Principal) -> str | None:
    thread = session.get(MessageThread, request.path_params.get("thread_id", ""))
    return None if thread is None else thread.patient_id


def _context(
    request: Request, access: Access, settings: Settings, **context: Any
) -> dict[str, Any]:
    return page_context(request, access, settings, "messages", **context)


def _see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


# ------------------------------------------------------------------------------ inbox


@router.get("/messages", response_class=HTMLResponse)
@portal_page
def inbox_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("message", "list", listing=True, audit_as="message.list")],
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    """The care teams' conversations: unread patient messages first, then the newest."""
    rows, total = service.inbox(
        session,
        scope=access.patient_filter(),
        limit=INBOX_PAGE,
        offset=(page - 1) * INBOX_PAGE,
    )
    access.entry.resource_type = "message_thread"
    access.entry.details = {
        "page": page,
        "count": len(rows),
        "total": total,
        "patient_ids": sorted({r.thread.patient_id for r in rows}),
    }
    session.commit()
    return render(
        request,
        "messages.html",
        _context(
            request,
            access,
            settings,
            rows=rows,
            total=total,
            page=page,
            pages=max(1, -(-total // INBOX_PAGE)),
        ),
    )


# ----------------------------------------------------------------------------- thread


def _thread_page(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    thread_id: str,
    *,
    before: int | None = None,
    notice: str = "",
    error: str = "",
    draft: Mapping[str, Any] | None = None,
    status: int = 200,
) -> Response:
    """Open the thread (marking what is shown read), audit the read on the act's own entry or,
    after a refused act, as a read of its own, commit, and render."""
    view = service.open_thread(
        session,
        thread_id=thread_id,
        side=service.side_of(access.principal),
        reader_id=int(access.principal.id),
        now=clock.utcnow(),
        limit=THREAD_PAGE,
        before=before,
    )
    if view is None:
        session.rollback()
        return render(
            request,
            "error.html",
            {"principal": None, "title": "Not found", "code": "not_found", "detail": ""},
            status=404,
        )
    shown = {"thread_id": thread_id, "shown": len(view.messages), "marked_read": view.marked_read}
    if access.entry.written:
        audit.record(
            session,
            actor=access.principal.actor,
            actor_role=access.principal.role,
            action="message.read",
            resource_type="message_thread",
            resource_id=thread_id,
            patient_id=view.summary.thread.patient_id,
            details=shown,
        )
    else:
        access.entry.resource_type, access.entry.resource_id = "message_thread", thread_id
        access.entry.details = shown
    session.commit()
    return render(
        request,
        "message_thread.html",
        _context(
            request,
            access,
            settings,
            view=view,
            t=view.summary.thread,
            patient=view.summary.patient,
            side=str(service.side_of(access.principal)),
            notice=_NOTICES.get(notice, ""),
            error=error,
            draft=dict(draft or {}),
            body_max=service.BODY_MAX,
        ),
        status=status,
    )


@router.get("/messages/{thread_id}", response_class=HTMLResponse)
@portal_page
def thread_page(
    request: Request,
    thread_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("message", "read", patient_from=_thread_patient, audit_as="message.read"),
    ],
    before: Annotated[int | None, Query(ge=1, le=service.MAX_ID)] = None,
    notice: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    """A conversation, oldest message first, with the reply form and close or reopen."""
    draft = drafts.take(request, access.principal.id)
    return _thread_page(
        request, session, access, settings, thread_id, before=before, notice=notice, draft=draft
    )


@router.post("/messages/{thread_id}")
@portal_page
def thread_reply(
    request: Request,
    thread_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("message", "send", patient_from=_thread_patient, audit_as="message.send"),
    ],
    body: _BODY = "",
) -> Response:
    """Send a reply for the care team; on refusal the page comes back with the text kept."""
    side = service.side_of(access.principal)
    access.entry.resource_type, access.entry.resource_id = "message_thread", thread_id
    try:
        message = service.reply(
            session,
            thread_id=thread_id,
            sender_id=int(access.principal.id),
            side=side,
            body=body,
            now=clock.utcnow(),
        )
    except service.MessageInvalid as exc:
        refuse(session, access, "validation_error")
        return _thread_page(
            request,
            session,
            access,
            settings,
            thread_id,
            error=exc.message,
            draft={"body": body},
            status=422,
        )
    except service.MessageConflict as exc:
        refuse(session, access, exc.code)
        return _thread_page(
            request,
            session,
            access,
            settings,
            thread_id,
            error=exc.message,
            draft={"body": body},
            status=409,
        )
    access.entry.details = {
        "thread_id": thread_id,
        "message_id": message.id,
        "length": len(message.body),
        "new_thread": False,
        "side": str(side),
    }
    session.commit()
    return _see_other(f"/portal/messages/{thread_id}?notice=sent")


def _set_status(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    thread_id: str,
    status: ThreadStatus,
) -> Response:
    access.entry.resource_type, access.entry.resource_id = "message_thread", thread_id
    try:
        service.set_status(
            session, thread_id=thread_id, status=status, side=service.side_of(access.principal)
        )
    except (service.MessageConflict, service.MessageForbidden) as exc:
        refuse(session, access, exc.code)
        code = 409 if isinstance(exc, service.MessageConflict) else 403
        return _thread_page(
            request, session, access, settings, thread_id, error=exc.message, status=code
        )
    access.entry.details = {"thread_id": thread_id, "status": str(status)}
    session.commit()
    done = "closed" if status is ThreadStatus.CLOSED else "reopened"
    return _see_other(f"/portal/messages/{thread_id}?notice={done}")


@router.post("/messages/{thread_id}/close")
@portal_page
def thread_close(
    request: Request,
    thread_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("message", "send", patient_from=_thread_patient, audit_as="message.close"),
    ],
) -> Response:
    """Close the conversation; nobody can reply until the care team reopens it."""
    return _set_status(request, session, access, settings, thread_id, ThreadStatus.CLOSED)


@router.post("/messages/{thread_id}/reopen")
@portal_page
def thread_reopen(
    request: Request,
    thread_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("message", "send", patient_from=_thread_patient, audit_as="message.reopen"),
    ],
) -> Response:
    """Reopen a closed conversation."""
    return _set_status(request, session, access, settings, thread_id, ThreadStatus.OPEN)


# ---------------------------------------------------------------------------- patient


def _patient_page(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    patient_id: str,
    *,
    cursor: str = "",
    error: str = "",
    draft: Mapping[str, Any] | None = None,
    status: int = 200,
) -> Response:
    try:
        at = service.decode_cursor(cursor) if cursor else None
    except ValueError:
        at = None  # a stale or edited link: start from the newest
    page = service.list_threads(
        session, side=SenderSide.CARE_TEAM, patient_id=patient_id, limit=INBOX_PAGE, cursor=at
    )
    shown = {"count": len(page.items), "patient_ids": [patient_id]}
    if access.entry.written:
        audit.record(
            session,
            actor=access.principal.actor,
            actor_role=access.principal.role,
            action="message.list",
            resource_type="message_thread",
            patient_id=patient_id,
            details=shown,
        )
    else:
        access.entry.resource_type = "message_thread"
        access.entry.details = shown
    session.commit()
    return render(
        request,
        "messages_patient.html",
        _context(
            request,
            access,
            settings,
            patient=session.get(Patient, patient_id),
            rows=page.items,
            next_cursor=page.next_cursor,
            error=error,
            draft=dict(draft or {}),
            subject_max=service.SUBJECT_MAX,
            body_max=service.BODY_MAX,
        ),
        status=status,
    )


@router.get("/patients/{patient_id}/messages", response_class=HTMLResponse)
@portal_page
def patient_messages_page(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access, require("message", "read", patient_param="patient_id", audit_as="message.list")
    ],
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """One patient's conversations, newest first, and a form to start one."""
    draft = drafts.take(request, access.principal.id)
    return _patient_page(request, session, access, settings, patient_id, cursor=cursor, draft=draft)


@router.post("/patients/{patient_id}/messages")
@portal_page
def patient_new_thread(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access, require("message", "send", patient_param="patient_id", audit_as="message.send")
    ],
    subject: _SUBJECT = "",
    body: _BODY = "",
) -> Response:
    """Start a conversation with the patient; on refusal the form comes back filled in."""
    side = service.side_of(access.principal)
    try:
        thread, message = service.start_thread(
            session,
            patient_id=patient_id,
            sender_id=int(access.principal.id),
            side=side,
            subject=subject,
            body=body,
            now=clock.utcnow(),
        )
    except service.MessageInvalid as exc:
        refuse(session, access, "validation_error")
        return _patient_page(
            request,
            session,
            access,
            settings,
            patient_id,
            error=exc.message,
            draft={"subject": subject, "body": body},
            status=422,
        )
    access.entry.resource_type, access.entry.resource_id = "message_thread", thread.id
    access.entry.details = {
        "thread_id": thread.id,
        "message_id": message.id,
        "length": len(message.body),
        "new_thread": True,
        "is_question": False,
        "side": str(side),
    }
    session.commit()
    return _see_other(f"/portal/messages/{thread.id}?notice=started")
