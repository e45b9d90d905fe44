"""The compliance reports API for auditors: the catalogue, any report in HTML, PDF or CSV,
the verifiable audit-trail ZIP and the FHIR evidence. Every export is audited
(`report.export`: kind, format, period, filters and the SHA-256 of the bytes handed out)."""

from __future__ import annotations

from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.auth.principal import Principal
from app.core import clock
from app.core.config import Settings
from app.core.errors import ProblemError
from audit import keys
from audit import service as audit
from reports import catalogue, exports
from reports.models import Filters, Period, ReportFormat, ReportKind
from reports.periods import PeriodError, parse_period
from reports.trail_cells import patient_of

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

Start = Annotated[str | None, Query(max_length=40, description="ISO date or date-time, UTC")]
End = Annotated[str | None, Query(max_length=40, description="ISO date or date-time, UTC")]
# No filter text holds NUL: PostgreSQL refuses it in any text it compares (a 422, not a 500).
_NO_NUL = r"^[^\x00]*$"
Pseudonym = Annotated[
    str | None, Query(max_length=64, pattern=_NO_NUL, description="pseudonymous patient id")
]
Actor = Annotated[str | None, Query(max_length=100, pattern=_NO_NUL)]
Version = Annotated[int | None, Query(ge=1, le=2**31 - 1)]
Cohort = Annotated[str | None, Query(max_length=64, pattern=_NO_NUL)]


def filtered_patient(session: Session, request: Request, principal: Principal) -> str | None:
    """The patient behind the `patient_id` pseudonym filter, so the policy decides on it."""
    pseudonym = request.query_params.get("patient_id")
    if pseudonym and "\x00" in pseudonym:
        return None  # no patient has it (and PostgreSQL refuses NUL in a comparison)
    return patient_of(session, pseudonym) or None if pseudonym else None


# Patient-filtered exports are decided on that patient (policy: report export, relation *).
EXPORT = require("report", "export", patient_from=filtered_patient, read_first=True)


class CatalogueEntry(BaseModel):
    """One report an auditor can choose."""

    kind: str
    title: str
    description: str
    formats: list[str]
    filters: list[str]
    verifiable_export: bool
    href: str


def period_of(start: str | None, end: str | None) -> Period:
    """The period asked for, or a 422 with the reason's code."""
    try:
        return parse_period(start, end, now=clock.utcnow())
    except PeriodError as exc:
        raise ProblemError(422, exc.code, exc.detail) from exc


def _text(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def send_export(session: Session, access: Access, made: exports.ExportFile) -> Response:
    """Commit the export's audit entry (a fresh transaction after the read) and answer with
    the file as an attachment (the API and the portal both answer this way)."""
    audit.end_read(session)
    access.entry.details = made.details
    session.commit()
    return Response(
        made.body,
        media_type=made.media_type,
        headers={
            "content-disposition": f'attachment; filename="{made.filename}"',
            "x-content-sha256": made.sha256,
        },
    )


def _public_key(settings: Settings) -> Ed25519PublicKey:
    assert settings.signing_key_path is not None
    return keys.load_signing_key(settings.signing_key_path).public_key()


@router.get("", response_model=list[CatalogueEntry])
def list_reports(
    session: SessionDep, access: Annotated[Access, require("report", "list")]
) -> list[CatalogueEntry]:
    """The reports an auditor can export, with their formats and filters."""
    session.commit()
    return [
        CatalogueEntry(
            kind=str(e.kind),
            title=e.title,
            description=e.description,
            formats=[str(f) for f in e.formats],
            filters=list(e.filters),
            verifiable_export=e.verifiable_export,
            href=f"{router.prefix}/{e.kind}",
        )
        for e in catalogue.CATALOGUE
    ]


@router.get("/audit-trail/export.zip")
def export_audit_trail(
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, EXPORT],
    start: Start = None,
    end: End = None,
    patient_id: Pseudonym = None,
    actor: Actor = None,
) -> Response:
    """The period's audit entries with inclusion proofs, the signed tree head, the public key
    and the verifier command, as one ZIP (see docs/auditor-guide.md)."""
    period = period_of(start, end)
    filters = Filters(patient_id=_text(patient_id), actor=_text(actor))
    made = exports.audit_trail_zip(
        session,
        period=period,
        filters=filters,
        public_key=_public_key(settings),
        generated_by=access.principal.username or access.principal.actor,
        now=clock.utcnow(),
    )
    return send_export(session, access, made)


@router.get("/fhir/{name}")
def export_fhir(
    name: str,
    session: SessionDep,
    access: Annotated[Access, EXPORT],
    start: Start = None,
    end: End = None,
    patient_id: Pseudonym = None,
    actor: Actor = None,
) -> Response:
    """FHIR R4 evidence: `AuditEvent.ndjson`, `Provenance.ndjson` (Bulk Data) or `bundle`."""
    wanted = name.removesuffix(".ndjson") if name.endswith(".ndjson") else name
    if wanted not in (*exports.FHIR_TYPES, "bundle") or (wanted == "bundle") != (name == "bundle"):
        raise ProblemError(
            404, "unknown_fhir_export", "use AuditEvent.ndjson, Provenance.ndjson or bundle"
        )
    period = period_of(start, end)
    filters = Filters(patient_id=_text(patient_id), actor=_text(actor))
    made = exports.fhir_file(
        session, name=wanted, period=period, filters=filters, now=clock.utcnow()
    )
    return send_export(session, access, made)


@router.get("/{kind}")
def export_report(
    kind: str,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, EXPORT],
    start: Start = None,
    end: End = None,
    patient_id: Pseudonym = None,
    actor: Actor = None,
    model_version: Version = None,
    cohort: Cohort = None,
    fmt_name: Annotated[str, Query(alias="format", max_length=10)] = "html",
) -> Response:
    """One report over the period (default: the last calendar month) as an attachment."""
    known = catalogue.entry(kind)
    if known is None:
        raise ProblemError(404, "unknown_report", f"no report {kind!r}; see GET {router.prefix}")
    try:
        fmt = ReportFormat(fmt_name.lower())
    except ValueError as exc:
        raise ProblemError(422, "unknown_format", "format must be html, pdf or csv") from exc
    period = period_of(start, end)
    filters = Filters(
        patient_id=_text(patient_id),
        actor=_text(actor),
        model_version=model_version,
        cohort=_text(cohort),
    )
    made = exports.report_file(
        session,
        kind=ReportKind(known.kind),
        fmt=fmt,
        period=period,
        filters=filters,
        generated_by=access.principal.username or access.principal.actor,
        now=clock.utcnow(),
        settings=settings,
    )
    return send_export(session, access, made)
