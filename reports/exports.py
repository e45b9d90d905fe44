"""One export as a file, and what its audit entry records: shared by the API, portal and pack.

Reads only (the caller audits and commits). Each function returns the bytes, the media type,
a safe file name (from the kind and period only, never user input) and the audit details:
kind, format, period, filters and the SHA-256 of exactly the bytes handed out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.orm import Session

from app.core import clock
from app.core.config import Settings
from app.core.errors import ProblemError
from reports import audit_export, fhir, render, service
from reports.models import Filters, Period, ReportFormat, ReportKind

FHIR_TYPES: Final = ("AuditEvent", "Provenance")
MEDIA_NDJSON: Final = "application/fhir+ndjson"
MEDIA_FHIR_JSON: Final = "application/fhir+json"
MEDIA_ZIP: Final = "application/zip"


class ExportRefused(ProblemError):
    """An export that cannot be made as asked: the status and code to answer with (a
    problem document as it stands, so the API lets it through to the error handler)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status, code, detail)


@dataclass(frozen=True)
class ExportFile:
    """An export ready to hand out, and its audit details."""

    body: bytes
    media_type: str
    filename: str
    details: dict[str, Any]

    @property
    def sha256(self) -> str:
        """The SHA-256 of the bytes, lowercase hex."""
        return hashlib.sha256(self.body).hexdigest()


def _stem(label: str, period: Period) -> str:
    return f"clinaiops-{label}-{period.start:%Y%m%d}-{period.end:%Y%m%d}"


def _details(
    kind: str, fmt: str, period: Period, filters: Filters, body: bytes, **more: Any
) -> dict[str, Any]:
    return {
        "kind": kind,
        "format": fmt,
        "period_start": clock.iso(period.start),
        "period_end": clock.iso(period.end),
        "filters": dict(filters.describe()),
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        **more,
    }


def report_file(
    session: Session,
    *,
    kind: ReportKind,
    fmt: ReportFormat,
    period: Period,
    filters: Filters,
    generated_by: str,
    now: datetime,
    settings: Settings,
) -> ExportFile:
    """A report rendered in one format (the app's settings go to builders that read them:
    evidence files under the data directory, the signing key's public half)."""
    try:
        report = service.build(
            session,
            kind=kind,
            period=period,
            filters=filters,
            generated_by=generated_by,
            now=now,
            settings=settings,
        )
    except ModuleNotFoundError as exc:  # a builder not deployed yet
        detail = f"the {kind} report is not available"
        raise ExportRefused(503, "report_unavailable", detail) from exc
    except LookupError as exc:  # e.g. a model version that does not exist
        raise ExportRefused(404, "not_found", str(exc)) from exc
    body, media_type, name = render.render(report, fmt)
    return ExportFile(body, media_type, name, _details(str(kind), str(fmt), period, filters, body))


def audit_trail_export(
    session: Session,
    *,
    period: Period,
    filters: Filters,
    public_key: Ed25519PublicKey,
    generated_by: str,
    now: datetime,
    signing_key: Ed25519PrivateKey | None = None,
) -> tuple[audit_export.AuditExport, dict[str, Any]]:
    """The verifiable audit-trail export and the audit details of its files (no ZIP yet)."""
    try:
        built = audit_export.export(
            session,
            period=period,
            filters=filters,
            public_key=public_key,
            now=now,
            generated_by=generated_by,
            signing_key=signing_key,
        )
    except audit_export.NothingToExport as exc:
        raise ExportRefused(404, "nothing_to_export", str(exc)) from exc
    except audit_export.TreeHeadDoesNotCover as exc:
        raise ExportRefused(409, "tree_head_not_covering", str(exc)) from exc
    except audit_export.KeyMismatch as exc:
        raise ExportRefused(409, "key_mismatch", str(exc)) from exc
    return built, built.audit_details()


def audit_trail_zip(
    session: Session,
    *,
    period: Period,
    filters: Filters,
    public_key: Ed25519PublicKey,
    generated_by: str,
    now: datetime,
) -> ExportFile:
    """The verifiable audit-trail export as one ZIP."""
    built, extra = audit_trail_export(
        session,
        period=period,
        filters=filters,
        public_key=public_key,
        generated_by=generated_by,
        now=now,
    )
    body = audit_export.zip_bytes(built)
    name = f"{_stem('audit-trail-export', period)}.zip"
    details = _details(str(ReportKind.AUDIT_TRAIL), "zip", period, filters, body, export=extra)
    return ExportFile(body, MEDIA_ZIP, name, details)


def fhir_file(
    session: Session, *, name: str, period: Period, filters: Filters, now: datetime
) -> ExportFile:
    """FHIR evidence: `AuditEvent` or `Provenance` as NDJSON, or `bundle` (a collection)."""
    built = fhir.export(session, period=period, filters=filters, now=now)
    if name == "bundle":
        body = built.files[fhir.BUNDLE_FILE]
        media_type, filename, fmt = MEDIA_FHIR_JSON, f"{_stem('fhir-bundle', period)}.json", "json"
    elif name in FHIR_TYPES:
        body = built.files.get(f"{name}.ndjson", b"")
        media_type, fmt = MEDIA_NDJSON, "ndjson"
        filename = f"{_stem(f'fhir-{name}', period)}.ndjson"
    else:
        detail = "FHIR exports: AuditEvent, Provenance, bundle"
        raise ExportRefused(404, "unknown_fhir_type", detail)
    details = _details(f"fhir:{name}", fmt, period, filters, body)
    details["resources"] = len(built.resources)
    return ExportFile(body, media_type, filename, details)
