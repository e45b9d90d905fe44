"""Role x route x own/other patient: every cell answers as the policy says (OWASP API1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from app.core import clock
from audit import service as audit_service
from audit.keys import load_signing_key
from tests.conftest import World
from tests.portal.conftest import sign_in
from tests.portal.seed import seed_review


@dataclass(frozen=True)
class Cell:
    """One request and the status each caller must get."""

    name: str
    method: str
    path: str
    expect: dict[str, int]


CALLERS = ["anon", "pa1", "clina", "clinb", "auditor", "mleng", "admin", "device_pa1"]


def _all(status: int, **overrides: int) -> dict[str, int]:
    return {c: overrides.get(c, status) for c in CALLERS}


CELLS = [
    Cell("me", "GET", "/api/v1/me", _all(200, anon=401, device_pa1=403)),
    Cell(
        "patients-list",
        "GET",
        "/api/v1/patients",
        _all(403, anon=401, pa1=200, clina=200, clinb=200),
    ),
    Cell(
        "patient-pa1",
        "GET",
        "/api/v1/patients/{pa1}",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "patient-pb1",
        "GET",
        "/api/v1/patients/{pb1}",
        _all(403, anon=401, pa1=404, clina=404, clinb=200),
    ),
    Cell(
        "patient-unknown",
        "GET",
        "/api/v1/patients/00000000-0000-4000-8000-000000000000",
        _all(403, anon=401, pa1=404, clina=404, clinb=404),
    ),
    Cell("audit-entries", "GET", "/api/v1/audit/entries", _all(403, anon=401, auditor=200)),
    Cell("audit-sth", "GET", "/api/v1/audit/sth", _all(200, anon=401, device_pa1=403)),
    Cell(
        "audit-proof",
        "GET",
        "/api/v1/audit/proofs/inclusion?seq=1&tree_size=1",
        _all(403, anon=401, auditor=200),
    ),
    Cell("audit-export", "GET", "/api/v1/audit/export", _all(403, anon=401, auditor=200)),
    Cell("audit-checkpoint", "POST", "/api/v1/audit/checkpoints", _all(403, anon=401, admin=201)),
    Cell("admin-users", "GET", "/api/v1/admin/users", _all(403, anon=401, admin=200)),
    Cell(
        "devices-pa1",
        "GET",
        "/api/v1/patients/{pa1}/devices",
        _all(403, anon=401, admin=200, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "devices-pb1",
        "GET",
        "/api/v1/patients/{pb1}/devices",
        _all(403, anon=401, admin=200, pa1=404, clina=404, clinb=200),
    ),
    Cell(
        "device-revoke-unknown",
        "POST",
        "/api/v1/devices/00000000-0000-4000-8000-000000000000/revoke",
        _all(403, anon=401, admin=404, pa1=404, clina=404, clinb=404),
    ),
    Cell(
        "fhir-search-pa1",
        "GET",
        "/fhir/R4/Observation?patient={pa1}",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "fhir-search-pb1",
        "GET",
        "/fhir/R4/Observation?patient=Patient/{pb1}",
        _all(403, anon=401, pa1=404, clina=404, clinb=200),
    ),
    Cell(
        "readings-pa1",
        "GET",
        "/api/v1/patients/{pa1}/readings",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "quarantine-pa1",
        "GET",
        "/api/v1/patients/{pa1}/quarantine",
        _all(403, anon=401, clina=200, clinb=404, auditor=200),
    ),
    Cell(
        "ingest-as-user",
        "POST",
        "/api/v1/device/observations",
        _all(403, anon=401, device_pa1=415),
    ),
    Cell("device-me", "GET", "/api/v1/device/me", _all(403, anon=401, device_pa1=200)),
    # Clinician review (issue 5).
    Cell("review-queue", "GET", "/api/v1/review/queue", _all(403, anon=401, clina=200, clinb=200)),
    Cell(
        "review-alerts", "GET", "/api/v1/review/alerts", _all(403, anon=401, clina=200, clinb=200)
    ),
    Cell("review-panel", "GET", "/api/v1/review/panel", _all(403, anon=401, clina=200, clinb=200)),
    Cell(
        "review-proposal-unknown",
        "GET",
        "/api/v1/review/proposals/00000000-0000-4000-8000-000000000000",
        _all(403, anon=401, clina=404, clinb=404),
    ),
    Cell(
        "review-claim-unknown",
        "POST",
        "/api/v1/review/proposals/00000000-0000-4000-8000-000000000000/claim",
        _all(403, anon=401, clina=404, clinb=404),
    ),
    Cell(
        "review-release-unknown",
        "DELETE",
        "/api/v1/review/proposals/00000000-0000-4000-8000-000000000000/claim",
        _all(403, anon=401, clina=404, clinb=404),
    ),
    Cell(
        "review-decide-unknown",
        "POST",
        "/api/v1/review/proposals/00000000-0000-4000-8000-000000000000/decision",
        _all(403, anon=401, clina=404, clinb=404),
    ),
    Cell(
        "decision-unknown",
        "GET",
        "/api/v1/decisions/00000000-0000-4000-8000-000000000000",
        _all(403, anon=401, clina=404, clinb=404, auditor=404),
    ),
    Cell(
        "envelopes-pa1",
        "GET",
        "/api/v1/patients/{pa1}/envelopes",
        _all(403, anon=401, clina=200, clinb=404),
    ),
    Cell(
        "envelope-write-pa1",
        "PUT",
        "/api/v1/patients/{pa1}/envelope",
        _all(403, anon=401, clina=422, clinb=404),
    ),
    Cell(
        "alert-escalate-unknown",
        "POST",
        "/api/v1/alerts/00000000-0000-4000-8000-000000000000/escalate",
        _all(403, anon=401, clina=404, clinb=404),
    ),
    # Patient-clinician loop (issue 6): goals, care plan, visits, messages.
    Cell(
        "me-goals",
        "GET",
        "/api/v1/me/goals",
        _all(403, anon=401, pa1=200, clina=404, clinb=404),  # no own record
    ),
    Cell(
        "me-care-plan",
        "GET",
        "/api/v1/me/care-plan",
        _all(403, anon=401, pa1=200, clina=404, clinb=404),  # no own record
    ),
    Cell(
        "me-next-visit",
        "GET",
        "/api/v1/me/next-visit",
        _all(403, anon=401, pa1=200, clina=404, clinb=404),  # no own record
    ),
    Cell(
        "me-messages",
        "GET",
        "/api/v1/me/messages",
        _all(403, anon=401, pa1=200, clina=404, clinb=404),  # no own record
    ),
    Cell(
        "me-thread-unknown",
        "GET",
        "/api/v1/me/messages/00000000-0000-4000-8000-000000000000",
        _all(403, anon=401, pa1=404, clina=404, clinb=404),
    ),
    Cell(
        "goals-pa1",
        "GET",
        "/api/v1/patients/{pa1}/goals",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "goals-pb1",
        "GET",
        "/api/v1/patients/{pb1}/goals",
        _all(403, anon=401, pa1=404, clina=404, clinb=200),
    ),
    Cell(
        "goal-agree-unknown",
        "POST",
        "/api/v1/goals/00000000-0000-4000-8000-000000000000/agree",
        _all(403, anon=401, pa1=404, clina=404, clinb=404),
    ),
    Cell(
        "care-plan-pa1",
        "GET",
        "/api/v1/patients/{pa1}/care-plan",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "care-plan-versions-pb1",
        "GET",
        "/api/v1/patients/{pb1}/care-plan/versions",
        _all(403, anon=401, pa1=404, clina=404, clinb=200),
    ),
    Cell(
        "care-plan-note-pa1",
        "PUT",
        "/api/v1/patients/{pa1}/care-plan/note",
        _all(403, anon=401, clina=422, clinb=404),  # granted; no body sent
    ),
    Cell(
        "fhir-careplan-pa1",
        "GET",
        "/fhir/R4/CarePlan?patient={pa1}",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "next-visit-pa1",
        "GET",
        "/api/v1/patients/{pa1}/next-visit",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "next-visit-override-pa1",
        "PUT",
        "/api/v1/patients/{pa1}/next-visit",
        _all(403, anon=401, clina=422, clinb=404),  # granted; no body sent
    ),
    Cell("visits-due", "GET", "/api/v1/visits/due", _all(403, anon=401, clina=200, clinb=200)),
    Cell(
        "previsit-pa1",
        "GET",
        "/api/v1/patients/{pa1}/previsit-summary",
        _all(403, anon=401, clina=200, clinb=404),
    ),
    Cell(
        "previsit-pdf-pb1",
        "GET",
        "/api/v1/patients/{pb1}/previsit-summary.pdf",
        _all(403, anon=401, clina=404, clinb=200),
    ),
    Cell(
        "messages-pa1",
        "GET",
        "/api/v1/patients/{pa1}/messages",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "messages-unread",
        "GET",
        "/api/v1/messages/unread",
        _all(403, anon=401, clina=200, clinb=200),
    ),
    Cell(
        "thread-unknown",
        "GET",
        "/api/v1/messages/threads/00000000-0000-4000-8000-000000000000",
        _all(403, anon=401, pa1=404, clina=404, clinb=404),
    ),
    Cell(
        "thread-reply-unknown",
        "POST",
        "/api/v1/messages/threads/00000000-0000-4000-8000-000000000000",
        _all(403, anon=401, pa1=404, clina=404, clinb=404),
    ),
    # Drift monitoring (issue 7): ML engineers; auditors read summaries.
    Cell(
        "drift-reports",
        "GET",
        "/api/v1/monitoring/drift-reports",
        _all(403, anon=401, mleng=200, auditor=200),
    ),
    Cell(
        "drift-report-unknown",
        "GET",
        "/api/v1/monitoring/drift-reports/999999",
        _all(403, anon=401, mleng=404, auditor=404),
    ),
    Cell(
        "drift-report-html-unknown",
        "GET",
        "/api/v1/monitoring/drift-reports/999999/html",
        _all(403, anon=401, mleng=404),
    ),
    # Model lifecycle (issue 7): ML engineers train, validate, roll out and roll back;
    # clinicians read and may sign off (the service admits only a clinical lead); auditors
    # read. The privacy ledger and training snapshots: ML engineers and auditors. Scheduled
    # jobs: ML engineers, admins and auditors list them; ML engineers and admins run one.
    Cell(
        "models",
        "GET",
        "/api/v1/models",
        _all(403, anon=401, mleng=200, clina=200, clinb=200, auditor=200),
    ),
    Cell(
        "model-version-unknown",
        "GET",
        "/api/v1/models/titration/versions/999999",
        _all(403, anon=401, mleng=404, clina=404, clinb=404, auditor=404),
    ),
    Cell(
        "model-history-unknown",
        "GET",
        "/api/v1/models/titration/history",
        _all(403, anon=401, mleng=404, clina=404, clinb=404, auditor=404),
    ),
    Cell(
        "model-validate-unknown",
        "POST",
        "/api/v1/models/titration/versions/999999/validate",
        _all(403, anon=401, mleng=404),
    ),
    Cell(
        "model-signoff",
        "POST",
        "/api/v1/models/titration/versions/999999/signoffs",
        _all(403, anon=401, mleng=422, clina=422, clinb=422),  # granted; no body sent
    ),
    Cell(
        "model-rollout-unknown",
        "GET",
        "/api/v1/models/titration/rollout",
        _all(403, anon=401, mleng=404, clina=404, clinb=404, auditor=404),
    ),
    Cell(
        "model-rollout-start-unknown",
        "POST",
        "/api/v1/models/titration/versions/999999/rollout",
        _all(403, anon=401, mleng=404),
    ),
    Cell(
        "model-rollback",
        "POST",
        "/api/v1/models/titration/rollback",
        _all(403, anon=401, mleng=422),  # granted; no body sent
    ),
    Cell(
        "model-train",
        "POST",
        "/api/v1/models/train",
        _all(403, anon=401, mleng=422),  # granted; no body sent
    ),
    Cell(
        "privacy-ledger",
        "GET",
        "/api/v1/privacy-ledger",
        _all(403, anon=401, mleng=200, auditor=200),
    ),
    Cell(
        "training-snapshots",
        "GET",
        "/api/v1/training-snapshots",
        _all(403, anon=401, mleng=200, auditor=200),
    ),
    Cell(
        "training-snapshot-unknown",
        "GET",
        "/api/v1/training-snapshots/999999",
        _all(403, anon=401, mleng=404, auditor=404),
    ),
    Cell("jobs", "GET", "/api/v1/jobs", _all(403, anon=401, mleng=200, admin=200, auditor=200)),
    Cell(
        "job-runs",
        "GET",
        "/api/v1/jobs/daily_evaluation/runs",
        _all(403, anon=401, mleng=200, admin=200, auditor=200),
    ),
    Cell(
        "job-runs-unknown",
        "GET",
        "/api/v1/jobs/no_such_job/runs",
        _all(403, anon=401, mleng=404, admin=404, auditor=404),
    ),
    Cell(
        "job-run-unknown",
        "POST",
        "/api/v1/jobs/no_such_job/run",
        _all(403, anon=401, mleng=404, admin=404),
    ),
    # Clinician review portal: HTML pages. Signed out, a page sends the browser to sign in
    # (303); a refusal is an HTML page with the policy's status (403, or 404 outside the care
    # team as for an unknown id). Bearer callers are not asked for a CSRF token, so the
    # POST cells check authorization alone; the cookie test below checks CSRF.
    Cell("portal-home", "GET", "/portal/", _all(200, anon=303, device_pa1=403)),
    Cell("portal-logout", "POST", "/portal/logout", _all(303, device_pa1=403)),
    Cell("portal-panel", "GET", "/portal/panel", _all(403, anon=303, clina=200, clinb=200)),
    Cell("portal-queue", "GET", "/portal/queue", _all(403, anon=303, clina=200, clinb=200)),
    Cell(
        "portal-queue-filter-pb1",
        "GET",
        "/portal/queue?patient={pb1}",
        _all(403, anon=303, clina=200, clinb=200),
    ),
    Cell("portal-alerts", "GET", "/portal/alerts", _all(403, anon=303, clina=200, clinb=200)),
    Cell(
        "portal-proposal-pa1",
        "GET",
        "/portal/proposals/{proposal_pa1}",
        _all(403, anon=303, clina=200, clinb=404),
    ),
    Cell(
        "portal-proposal-pb1",
        "GET",
        "/portal/proposals/{proposal_pb1}",
        _all(403, anon=303, clina=404, clinb=200),
    ),
    Cell(
        "portal-proposal-unknown",
        "GET",
        "/portal/proposals/00000000-0000-4000-8000-000000000000",
        _all(403, anon=303, clina=404, clinb=404),
    ),
    Cell(
        "portal-print-pa1",
        "GET",
        "/portal/proposals/{proposal_pa1}/print",
        _all(403, anon=303, clina=200, clinb=404),
    ),
    Cell(
        "portal-print-pb1",
        "GET",
        "/portal/proposals/{proposal_pb1}/print",
        _all(403, anon=303, clina=404, clinb=200),
    ),
    Cell(
        "portal-envelope-pa1",
        "GET",
        "/portal/patients/{pa1}/envelope",
        _all(403, anon=303, clina=200, clinb=404),
    ),
    Cell(
        "portal-envelope-pb1",
        "GET",
        "/portal/patients/{pb1}/envelope",
        _all(403, anon=303, clina=404, clinb=200),
    ),
    Cell(
        "portal-envelope-unknown",
        "GET",
        "/portal/patients/00000000-0000-4000-8000-000000000000/envelope",
        _all(403, anon=303, clina=404, clinb=404),
    ),
    Cell(
        "portal-claim-pa1",
        "POST",
        "/portal/queue/{proposal_pa1}/claim",
        _all(403, anon=303, clina=303, clinb=404),
    ),
    Cell(
        "portal-release-pa1",
        "POST",
        "/portal/queue/{proposal_pa1}/release",
        _all(403, anon=303, clina=303, clinb=404),
    ),
    Cell(
        "portal-decide-pa1",
        "POST",
        "/portal/proposals/{proposal_pa1}/decide",
        _all(403, anon=303, clina=422, clinb=404),  # granted; no form sent
    ),
    Cell(
        "portal-envelope-write-pa1",
        "POST",
        "/portal/patients/{pa1}/envelope",
        _all(403, anon=303, clina=422, clinb=404),  # granted; no form sent
    ),
    Cell(
        "portal-acknowledge-pa1",
        "POST",
        "/portal/alerts/{alert_pa1}/acknowledge",
        _all(403, anon=303, clina=303, clinb=404),
    ),
    Cell(
        "portal-escalate-pb1",
        "POST",
        "/portal/alerts/{alert_pb1}/escalate",
        _all(403, anon=303, clina=404, clinb=422),  # granted; a note is required
    ),
    Cell(
        "portal-care-pa1",
        "GET",
        "/portal/patients/{pa1}/care",
        _all(403, anon=303, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "portal-care-history-pb1",
        "GET",
        "/portal/patients/{pb1}/care/history",
        _all(403, anon=303, pa1=404, clina=404, clinb=200),
    ),
    Cell(
        "portal-care-goal-pa1",
        "POST",
        "/portal/patients/{pa1}/care/goals",
        _all(403, anon=303, pa1=422, clina=422, clinb=404),  # granted; no form sent
    ),
    Cell(
        "portal-visits-due", "GET", "/portal/visits/due", _all(403, anon=303, clina=200, clinb=200)
    ),
    Cell(
        "portal-previsit-pa1",
        "GET",
        "/portal/patients/{pa1}/previsit",
        _all(403, anon=303, clina=200, clinb=404),
    ),
    Cell(
        "portal-override-pb1",
        "POST",
        "/portal/patients/{pb1}/next-visit/override",
        _all(403, anon=303, clina=404, clinb=422),  # granted; no form sent
    ),
    Cell("portal-messages", "GET", "/portal/messages", _all(403, anon=303, clina=200, clinb=200)),
    Cell(
        "portal-messages-pa1",
        "GET",
        "/portal/patients/{pa1}/messages",
        _all(403, anon=303, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "portal-thread-unknown",
        "GET",
        "/portal/messages/00000000-0000-4000-8000-000000000000",
        _all(403, anon=303, pa1=404, clina=404, clinb=404),
    ),
    Cell(
        "portal-drift",
        "GET",
        "/portal/monitoring/drift",
        _all(403, anon=303, mleng=200, auditor=200),
    ),
    Cell(
        "portal-drift-unknown",
        "GET",
        "/portal/monitoring/drift/999999",
        _all(403, anon=303, mleng=404, auditor=404),
    ),
    # Compliance reports (issue 8): auditors only. The default period is the last calendar
    # month, empty here: the audit-trail ZIP has nothing to prove (404 once granted).
    Cell("reports-list", "GET", "/api/v1/reports", _all(403, anon=401, auditor=200)),
    Cell(
        "report-access-csv",
        "GET",
        "/api/v1/reports/access?format=csv",
        _all(403, anon=401, auditor=200),
    ),
    Cell(
        "report-decisions-patient",
        "GET",
        "/api/v1/reports/decision-log?format=csv&patient_id=P-PA1",
        _all(403, anon=401, auditor=200),
    ),
    Cell(
        "report-audit-zip",
        "GET",
        "/api/v1/reports/audit-trail/export.zip",
        _all(403, anon=401, auditor=404),
    ),
    Cell(
        "report-fhir-auditevent",
        "GET",
        "/api/v1/reports/fhir/AuditEvent.ndjson",
        _all(403, anon=401, auditor=200),
    ),
    Cell(
        "report-fhir-bundle", "GET", "/api/v1/reports/fhir/bundle", _all(403, anon=401, auditor=200)
    ),
    # The auditor's report pages (default period: last month, empty here).
    Cell("portal-reports", "GET", "/portal/reports", _all(403, anon=303, auditor=200)),
    Cell(
        "portal-report-preview",
        "GET",
        "/portal/reports/preview?kind=access",
        _all(403, anon=303, auditor=200),
    ),
    Cell(
        "portal-report-download",
        "GET",
        "/portal/reports/download?kind=access&format=csv",
        _all(403, anon=303, auditor=200),
    ),
    # The model pages: whoever may read models (ML engineers, clinicians, auditors); rolling
    # back by hand is for ML engineers (no model is registered here: 404 once granted).
    Cell(
        "portal-models",
        "GET",
        "/portal/models",
        _all(403, anon=303, mleng=200, clina=200, clinb=200, auditor=200),
    ),
    Cell(
        "portal-model-unknown",
        "GET",
        "/portal/models/titration",
        _all(403, anon=303, mleng=404, clina=404, clinb=404, auditor=404),
    ),
    Cell(
        "portal-model-rollback",
        "POST",
        "/portal/models/titration/rollback",
        _all(403, anon=303, mleng=404),
    ),
]


@pytest.fixture
def setup(world: World) -> tuple[World, dict[str, dict[str, str]]]:
    """Headers for every caller, and a first signed tree head."""
    _, key = world.device("pa1")
    headers: dict[str, dict[str, str]] = {
        "anon": {},
        "device_pa1": {"Authorization": f"Bearer {key}"},
    }
    for name in ("pa1", "clina", "clinb", "auditor", "mleng", "admin"):
        headers[name] = world.auth(name)
    assert world.settings.signing_key_path is not None
    audit_service.checkpoint(world.session, key=load_signing_key(world.settings.signing_key_path))
    world.session.commit()
    return world, headers


def _forbidden_data(world: World, caller: str) -> list[str]:
    """Identifiers and record contents of patients the caller must never see.

    Admins manage accounts and devices, so they see patient ids (links), never records.
    """
    visible = {
        "pa1": {"pa1"},
        "clina": {"pa1", "pa2"},
        "clinb": {"pb1", "pb2"},
        "device_pa1": {"pa1"},
    }.get(caller, set())
    out = []
    for key, patient in world.patients.items():
        if key not in visible:
            if caller != "admin":
                out.append(patient.id)
            out += [patient.given_name, patient.family_name, patient.pseudonym]
    return out


@pytest.fixture
def path_ids(world: World) -> dict[str, str]:
    """What cell paths name: patients pa1 and pb1, and a waiting proposal and an open alert
    of each (the review scene of the portal tests)."""
    cast = seed_review(
        world.session,
        patients={key: world.patients[key].id for key in ("pa1", "pb1")},
        author_id=world.users["clina"].id or 0,
        now=clock.utcnow(),
    )
    world.session.commit()
    out = {key: world.patients[key].id for key in ("pa1", "pb1")}
    for key in ("pa1", "pb1"):
        out[f"proposal_{key}"] = cast.proposals[key].id
        out[f"alert_{key}"] = cast.alerts[key].id
    return out


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_access_matrix_when_each_role_calls_answers_as_policy(
    client: TestClient,
    setup: tuple[World, dict[str, dict[str, str]]],
    path_ids: dict[str, str],
    cell: Cell,
    count_audit: object,
) -> None:
    world, headers = setup
    path = cell.path.format(**path_ids)
    portal = path.startswith("/portal/")
    got = {}
    for caller in CALLERS:
        response = client.request(
            cell.method, path, headers=headers[caller], follow_redirects=False
        )
        got[caller] = response.status_code
        for secret in _forbidden_data(world, caller):
            assert secret not in response.text, f"{caller} saw another patient's data in {path}"
        if portal:
            # Pages answer HTML: only the status is checked, and where a signed-out caller
            # is sent (to sign in, then back).
            if caller == "anon":
                assert response.headers["location"].startswith("/portal/login?next=")
        elif response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"]
    assert got == cell.expect


PORTAL_CELLS = [c for c in CELLS if c.path.startswith("/portal/")]
# Who can hold a portal session (a device key cannot sign in).
PEOPLE = [c for c in CALLERS if c not in ("anon", "device_pa1")]
PORTAL_ACTS = (
    "proposal.claim",
    "proposal.release",
    "proposal.decide",
    "envelope.write",
    "alert.acknowledge",
    "alert.escalate",
    "model.rollback",
    "auth.portal_logout",
)


def test_portal_matrix_when_signed_in_by_cookie_gets_pages_and_csrf_refusals(
    client: TestClient,
    setup: tuple[World, dict[str, dict[str, str]]],
    path_ids: dict[str, str],
    count_audit: Callable[..., int],
) -> None:
    """The portal's own callers hold a cookie session: every page answers them as the matrix
    says, and every portal POST without the session's CSRF token is refused (403) before the
    policy is asked, whoever posts, and does nothing."""
    world = setup[0]
    for caller in PEOPLE:
        client.cookies.clear()
        sign_in(client, caller)
        for cell in PORTAL_CELLS:
            path = cell.path.format(**path_ids)
            if cell.method == "GET":
                response = client.get(path, follow_redirects=False)
                assert response.status_code == cell.expect[caller], (caller, cell.name)
            else:
                response = client.post(path, data={"note": "x"}, follow_redirects=False)
                assert response.status_code == 403, (caller, cell.name)
            for secret in _forbidden_data(world, caller):
                assert secret not in response.text, f"{caller} saw another patient's data"
        assert client.get("/portal/", follow_redirects=False).status_code == 200  # still in
    assert all(count_audit(action=act) == 0 for act in PORTAL_ACTS)
    assert count_audit(action="auth.denied", outcome="denied") == len(PEOPLE) * sum(
        c.method == "POST" for c in PORTAL_CELLS
    )


def test_denials_when_refused_are_each_audited(
    client: TestClient,
    setup: tuple[World, dict[str, dict[str, str]]],
    count_audit: Callable[..., int],
) -> None:
    world, headers = setup
    counter = count_audit
    before = counter(outcome="denied")
    other = world.patients["pb1"].id
    assert client.get(f"/api/v1/patients/{other}", headers=headers["clina"]).status_code == 404
    assert client.get("/api/v1/audit/entries", headers=headers["pa1"]).status_code == 403
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me", headers=headers["device_pa1"]).status_code == 403
    assert counter(outcome="denied") == before + 4
    assert counter(outcome="denied", action="patient.read", patient_id=other) == 1


def test_clinician_list_when_two_teams_returns_only_own_team(
    client: TestClient, setup: tuple[World, dict[str, dict[str, str]]]
) -> None:
    world, headers = setup
    ids = {p["id"] for p in client.get("/api/v1/patients", headers=headers["clina"]).json()}
    assert ids == {world.patients["pa1"].id, world.patients["pa2"].id}
    own = client.get("/api/v1/patients", headers=headers["pa1"]).json()
    assert [p["id"] for p in own] == [world.patients["pa1"].id]
