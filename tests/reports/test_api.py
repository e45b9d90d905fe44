"""The reports API: the catalogue, each export audited with the hash of the bytes handed out,
patient filters decided by the policy, bad input answered with a code, and the verifiable
audit-trail ZIP and FHIR evidence over HTTP."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from datetime import timedelta
from io import BytesIO
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import col

from app.db import session_factory
from audit import service as audit
from audit.keys import load_signing_key
from audit.models import AuditEntry, Outcome
from audit.verifier import parse_seq_spec, verify_export
from reports import audit_export
from reports.models import ReportKind
from tests.reports.conftest import Seeded, csv_rows, pdf_pages, squeeze

BASE = "/api/v1/reports"


def _params(seeded: Seeded, **more: str) -> dict[str, str]:
    period = seeded.period
    return {"start": period.start.isoformat(), "end": period.end.isoformat(), **more}


def _details(entry: AuditEntry) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(entry.details)
    return out


def _last_export(seeded: Seeded) -> AuditEntry:
    with session_factory(seeded.world.session.get_bind())() as s:  # type: ignore[arg-type]
        entry = s.scalars(
            select(AuditEntry)
            .where(col(AuditEntry.action) == "report.export")
            .order_by(col(AuditEntry.seq).desc())
        ).first()
        assert entry is not None
        s.expunge(entry)
        return entry


def _names(seeded: Seeded) -> list[str]:
    return [name for p in seeded.world.patients.values() for name in (p.given_name, p.family_name)]


def test_list_reports_when_auditor_returns_every_kind_with_formats(
    client: TestClient, seeded: Seeded, count_audit: Callable[..., int]
) -> None:
    response = client.get(BASE, headers=seeded.world.auth("auditor"))
    assert response.status_code == 200
    body = response.json()
    assert [r["kind"] for r in body] == [str(k) for k in ReportKind]
    assert all(r["formats"] == ["html", "pdf", "csv"] for r in body)
    trail = next(r for r in body if r["kind"] == "audit-trail")
    assert trail["verifiable_export"] is True
    assert count_audit(action="report.list", outcome="success") == 1


def test_export_pdf_when_auditor_asks_is_an_attachment_and_audited_with_its_hash(
    client: TestClient, seeded: Seeded
) -> None:
    response = client.get(
        f"{BASE}/decision-log",
        params=_params(seeded, format="pdf"),
        headers=seeded.world.auth("auditor"),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="clinaiops-decision-log-')
    assert disposition.endswith('.pdf"')
    text = "".join(pdf_pages(response.content))
    assert squeeze("AI decision log") in text
    assert seeded.pseudonym("pa1") in text
    assert not any(name in text for name in _names(seeded))
    entry = _last_export(seeded)
    assert entry.actor_role == "auditor"
    assert entry.outcome == Outcome.SUCCESS
    assert entry.patient_id is None
    details = _details(entry)
    assert details["kind"] == "decision-log"
    assert details["format"] == "pdf"
    assert details["sha256"] == hashlib.sha256(response.content).hexdigest()
    assert details["period_start"].startswith(seeded.period.start.strftime("%Y-%m-%dT%H"))
    assert details["filters"] == {}


def test_export_csv_when_patient_filter_narrows_and_audits_that_patient(
    client: TestClient, seeded: Seeded
) -> None:
    pa1 = seeded.pseudonym("pa1")
    response = client.get(
        f"{BASE}/decision-log",
        params=_params(seeded, format="csv", patient_id=pa1),
        headers=seeded.world.auth("auditor"),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = csv_rows(response.text)
    assert rows
    assert seeded.pseudonym("pb1") not in response.text
    assert pa1 in response.text
    entry = _last_export(seeded)
    assert entry.patient_id == seeded.world.patients["pa1"].id
    assert _details(entry)["filters"] == {"patient": pa1}


def test_export_html_when_no_period_given_covers_last_calendar_month(
    client: TestClient, seeded: Seeded
) -> None:
    response = client.get(f"{BASE}/access", headers=seeded.world.auth("auditor"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    start = _details(_last_export(seeded))["period_start"]
    assert start.endswith("-01T00:00:00.000000Z")


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/nope", {}, 404, "unknown_report"),
        ("/access", {"format": "xls"}, 422, "unknown_format"),
        ("/access", {"start": "2026-13-01", "end": "2026-12-01"}, 422, "bad_date"),
        ("/access", {"start": "2026-11-02", "end": "2026-11-01"}, 422, "period_empty"),
        ("/access", {"start": "2026-11-01", "end": "2026-11-01"}, 422, "period_empty"),
        ("/access", {"start": "2024-01-01", "end": "2025-06-01"}, 422, "period_too_long"),
        ("/access", {"start": "2026-11-01"}, 422, "period_incomplete"),
        ("/access", {"model_version": "x"}, 422, "validation_error"),
        ("/fhir/Patient.ndjson", {}, 404, "unknown_fhir_export"),
        ("/model-card", {"model_version": "99"}, 404, "not_found"),
        ("/audit-trail/export.zip", {"end": "x", "start": "y"}, 422, "bad_date"),
    ],
)
def test_export_when_input_is_bad_answers_4xx_with_code(
    client: TestClient,
    world: Any,
    path: str,
    params: dict[str, str],
    status: int,
    code: str,
) -> None:
    response = client.get(BASE + path, params=params, headers=world.auth("auditor"))
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def test_export_when_not_an_auditor_is_refused_and_audited(
    client: TestClient, world: Any, count_audit: Callable[..., int]
) -> None:
    for who in ("clina", "pa1", "mleng", "admin"):
        response = client.get(f"{BASE}/access", headers=world.auth(who))
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"
    pb1 = world.patients["pb1"]
    response = client.get(
        f"{BASE}/access", params={"patient_id": pb1.pseudonym}, headers=world.auth("clina")
    )
    assert response.status_code == 403
    assert count_audit(action="report.export", outcome="denied") == 5
    assert count_audit(action="report.export", outcome="denied", patient_id=pb1.id) == 1
    assert count_audit(action="report.export", outcome="success") == 0


def test_audit_trail_zip_when_exported_verifies_offline(client: TestClient, seeded: Seeded) -> None:
    world = seeded.world
    assert world.settings.signing_key_path is not None
    audit.checkpoint(world.session, key=load_signing_key(world.settings.signing_key_path))
    world.session.commit()
    response = client.get(
        f"{BASE}/audit-trail/export.zip", params=_params(seeded), headers=world.auth("auditor")
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="clinaiops-audit-trail-export-' in response.headers["content-disposition"]
    with zipfile.ZipFile(BytesIO(response.content)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    assert set(files) == {
        audit_export.ENTRIES_FILE,
        audit_export.STH_FILE,
        audit_export.KEY_FILE,
        audit_export.SEQS_FILE,
        audit_export.README_FILE,
    }
    result = verify_export(
        audit_export.entries_lines(files[audit_export.ENTRIES_FILE]),
        json.loads(files[audit_export.STH_FILE]),
        files[audit_export.KEY_FILE],
        strict=True,
        expected_seqs=parse_seq_spec(files[audit_export.SEQS_FILE].decode()),
    )
    assert result.ok, result
    entry = _last_export(seeded)
    assert _details(entry)["format"] == "zip"
    assert _details(entry)["sha256"] == hashlib.sha256(response.content).hexdigest()
    assert _details(entry)["export"]["tree_size"] >= _details(entry)["export"]["count"]


def test_audit_trail_zip_when_tree_head_is_behind_answers_409(
    client: TestClient, seeded: Seeded
) -> None:
    world = seeded.world
    # A read after the last tree head: the period's last entry is not covered yet.
    assert client.get("/api/v1/patients", headers=world.auth("clina")).is_success
    response = client.get(
        f"{BASE}/audit-trail/export.zip", params=_params(seeded), headers=world.auth("auditor")
    )
    assert response.status_code == 409
    assert response.json()["code"] == "tree_head_not_covering"


def test_fhir_exports_when_auditor_asks_return_ndjson_and_bundle(
    client: TestClient, seeded: Seeded
) -> None:
    auth = seeded.world.auth("auditor")
    events = client.get(f"{BASE}/fhir/AuditEvent.ndjson", params=_params(seeded), headers=auth)
    assert events.status_code == 200, events.text
    assert events.headers["content-type"].startswith("application/fhir+ndjson")
    lines = [json.loads(line) for line in events.text.splitlines()]
    assert lines
    assert {r["resourceType"] for r in lines} == {"AuditEvent"}
    provenance = client.get(f"{BASE}/fhir/Provenance.ndjson", params=_params(seeded), headers=auth)
    assert provenance.status_code == 200
    assert {json.loads(x)["resourceType"] for x in provenance.text.splitlines()} == {"Provenance"}
    bundle = client.get(f"{BASE}/fhir/bundle", params=_params(seeded), headers=auth)
    assert bundle.status_code == 200
    assert bundle.json()["resourceType"] == "Bundle"
    assert not any(name in bundle.text for name in _names(seeded))
    entry = _last_export(seeded)
    assert _details(entry)["kind"] == "fhir:bundle"
    assert _details(entry)["sha256"] == hashlib.sha256(bundle.content).hexdigest()


def test_export_when_period_is_long_but_allowed_succeeds(
    client: TestClient, seeded: Seeded
) -> None:
    end = seeded.period.end
    params = {"start": (end - timedelta(days=366)).isoformat(), "end": end.isoformat()}
    response = client.get(
        f"{BASE}/audit-trail",
        params={**params, "format": "csv"},
        headers=seeded.world.auth("auditor"),
    )
    assert response.status_code == 200
