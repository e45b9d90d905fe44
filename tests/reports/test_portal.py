"""The auditor's report pages over HTTP: the chooser with last month as the default period, a
preview audited as `report.preview` with the report in a sandboxed frame, downloads audited
as `report.export`, bad input shown on the page (and audited as a failure), other roles
refused."""

from __future__ import annotations

import hashlib
import html
import json
import zipfile
from collections.abc import Callable
from datetime import timedelta
from io import BytesIO

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import col

from app.core import clock
from app.db import session_factory
from audit import service as audit
from audit.keys import load_signing_key
from audit.models import AuditEntry
from reports.periods import previous_month
from tests.portal.conftest import sign_in
from tests.reports.conftest import Seeded, csv_rows


def _form(seeded: Seeded, **more: str) -> dict[str, str]:
    return {
        "start": seeded.period.start.date().isoformat(),
        "end": (seeded.period.end.date() + timedelta(days=1)).isoformat(),
        **more,
    }


def _last(seeded: Seeded, action: str) -> AuditEntry:
    with session_factory(seeded.world.session.get_bind())() as s:  # type: ignore[arg-type]
        entry = s.scalars(
            select(AuditEntry)
            .where(col(AuditEntry.action) == action)
            .order_by(col(AuditEntry.seq).desc())
        ).first()
        assert entry is not None
        s.expunge(entry)
        return entry


def test_reports_page_when_auditor_opens_defaults_to_last_month(
    client: TestClient, seeded: Seeded
) -> None:
    sign_in(client, "auditor")
    page = client.get("/portal/reports")
    assert page.status_code == 200
    last = previous_month(clock.utcnow())
    assert f'name="start" value="{last.start.date().isoformat()}"' in page.text
    assert f'name="end" value="{last.end.date().isoformat()}"' in page.text
    assert 'href="/portal/reports"' in page.text  # the nav link


def test_preview_when_auditor_asks_embeds_the_report_sandboxed_and_audits(
    client: TestClient, seeded: Seeded
) -> None:
    sign_in(client, "auditor")
    page = client.get("/portal/reports/preview", params=_form(seeded, kind="decision-log"))
    assert page.status_code == 200
    assert "<iframe" in page.text
    assert " sandbox " in page.text
    assert seeded.pseudonym("pa1") in page.text
    # The report's hostile reason is escaped twice over: as text, then inside srcdoc.
    assert "<script>alert" not in page.text
    assert "/portal/reports/download?" in page.text
    assert "Verifiable ZIP" not in page.text  # the decision log has no verifiable export
    entry = _last(seeded, "report.preview")
    assert json.loads(entry.details)["kind"] == "decision-log"
    trail = client.get("/portal/reports/preview", params=_form(seeded, kind="audit-trail"))
    assert "Verifiable ZIP" in trail.text


def test_download_when_auditor_exports_csv_is_an_attachment_and_audited(
    client: TestClient, seeded: Seeded
) -> None:
    sign_in(client, "auditor")
    pa1 = seeded.pseudonym("pa1")
    response = client.get(
        "/portal/reports/download",
        params=_form(seeded, kind="decision-log", format="csv", patient_id=pa1),
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    rows = csv_rows(response.text)
    assert rows
    assert seeded.pseudonym("pb1") not in response.text
    entry = _last(seeded, "report.export")
    assert entry.patient_id == seeded.world.patients["pa1"].id
    details = json.loads(entry.details)
    assert details["sha256"] == hashlib.sha256(response.content).hexdigest()
    assert details["filters"] == {"patient": pa1}


def test_preview_when_period_is_bad_shows_why_and_audits_a_failure(
    client: TestClient, seeded: Seeded, count_audit: Callable[..., int]
) -> None:
    sign_in(client, "auditor")
    page = client.get(
        "/portal/reports/preview",
        params={"kind": "access", "start": "2026-11-02", "end": "2026-11-01"},
    )
    assert page.status_code == 422
    assert html.escape("end must be after start") in page.text
    assert count_audit(action="report.preview", outcome="failure") == 1


def test_reports_pages_when_not_an_auditor_are_refused(client: TestClient, seeded: Seeded) -> None:
    sign_in(client, "clina")
    assert client.get("/portal/reports").status_code == 403
    preview = client.get("/portal/reports/preview", params=_form(seeded, kind="access"))
    assert preview.status_code == 403
    assert 'href="/portal/reports"' not in client.get("/portal/").text


def test_download_when_auditor_asks_for_the_verifiable_zip_gets_it(
    client: TestClient, seeded: Seeded
) -> None:
    sign_in(client, "auditor")
    world = seeded.world
    assert world.settings.signing_key_path is not None
    audit.checkpoint(world.session, key=load_signing_key(world.settings.signing_key_path))
    world.session.commit()
    response = client.get(
        "/portal/reports/download", params=_form(seeded, kind="audit-trail", format="zip")
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(BytesIO(response.content)) as archive:
        assert "entries.jsonl" in archive.namelist()
    details = json.loads(_last(seeded, "report.export").details)
    assert (details["kind"], details["format"]) == ("audit-trail", "zip")
