"""The pre-visit summary on the fixed hand-computed cohort (tests/visits/cohort.py): the JSON
figures, the pure shaping's edge cases, the portal page and the PDF's text."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pypdf
import pytest
from fastapi.testclient import TestClient

from app.patients.models import Patient, Sex
from loops.visits import flows
from tests.conftest import World
from tests.portal.conftest import sign_in
from tests.visits.cohort import EXPECTED, QUESTION, QUESTION_BODY, WEEKS, Cohort, seed_cohort
from tests.visits.conftest import NOW

pytestmark = pytest.mark.usefixtures("clock_at")


@pytest.fixture
def cohort(world: World) -> Cohort:
    """The cohort for pa1 (team A), 28 days since the last visit."""
    made = seed_cohort(
        world.session,
        patient_id=world.patients["pa1"].id,
        clinician_id=world.users["clina"].id or 0,
        patient_user_id=world.users["pa1"].id or 0,
        now=NOW,
    )
    world.session.commit()
    return made


def test_previsit_summary_on_cohort_matches_hand_computed_figures(
    client: TestClient, world: World, cohort: Cohort
) -> None:
    sign_in(client, "clina")
    r = client.get(f"/api/v1/patients/{cohort.patient_id}/previsit-summary")
    assert r.status_code == 200, r.text
    s = r.json()
    for key in (
        "sbp_7d",
        "dbp_7d",
        "readings_7d",
        "control",
        "readings",
        "days_with_readings",
        "days_in_range",
        "time_in_range",
        "doses_taken",
        "doses_total",
        "adherence",
        "decision_counts",
        "alerts_raised",
        "alerts_acknowledged",
        "symptom_counts",
    ):
        assert s[key] == EXPECTED[key], key
    assert s["period_basis"] == "since_last_visit"
    assert s["period_start"].startswith("2026-11-08T12:00:00")
    assert [(w["systolic"], w["diastolic"]) for w in s["weekly_means"]] == [*WEEKS, (None, None)]
    assert [w["readings"] for w in s["weekly_means"]] == [14, 14, 14, 14, 0]
    assert (s["target_systolic"], s["target_diastolic"], s["target_from_goal"]) == (135, 85, False)
    assert len(s["alerts"]) == EXPECTED["alerts_listed"]
    assert [e["version"] for e in s["envelope_changes"]] == EXPECTED["envelope_versions"]
    assert [(q["subject"], q["first_message"]) for q in s["questions"]] == [
        (QUESTION, QUESTION_BODY)
    ]
    assert [c["outcome"] for c in s["changes"]] == [
        "pending_review",
        "rejected",
        "approved",
        "delivered",
    ]
    assert s["changes"][1]["by"] == "Dr. Test Signer"
    [goal] = s["goals"]
    assert goal["kind"] == "adherence"
    assert goal["met"] is False
    # The next visit: a recent change (day 3 of the period, 25 days ago) makes it 4 weeks after
    # the change, i.e. in 3 days.
    assert s["next_visit"]["schedule"]["reasons"][0] == "recent_change"


def test_previsit_summary_without_visit_covers_last_90_days(
    client: TestClient, world: World
) -> None:
    sign_in(client, "clina")
    s = client.get(f"/api/v1/patients/{world.patients['pa2'].id}/previsit-summary").json()
    assert s["period_basis"] == "last_90_days"
    assert s["period_start"].startswith((NOW - timedelta(days=90)).date().isoformat())
    assert s["control"] == "no_data"
    assert s["time_in_range"] is None
    assert s["adherence"] is None


def _patient() -> Patient:
    return Patient(
        pseudonym="P-X",
        given_name="A",
        family_name="B",
        birth_date=datetime(1960, 1, 1, tzinfo=UTC).date(),
        sex=Sex.FEMALE,
    )


def test_shape_when_days_low_or_at_target_counts_them_out_of_range() -> None:
    start = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    now = datetime(2026, 12, 5, 23, 0, tzinfo=UTC)
    readings = [
        (start + timedelta(hours=8), 120.0, 75.0),  # in range
        (start + timedelta(days=1, hours=8), 96.0, 60.0),  # low: out
        (start + timedelta(days=2, hours=8), 135.0, 80.0),  # at the target: out
        (start + timedelta(days=3, hours=8), 134.0, 84.0),  # in range
        (start + timedelta(days=3, hours=9), 140.0, 84.0),  # same day: mean 137 -> out
        (start - timedelta(days=1), 200.0, 120.0),  # before the period: ignored
    ]
    s = flows.shape(
        flows.SummaryFacts(
            patient=_patient(),
            now=now,
            start=start,
            last_visit_at=start,
            target=(135.0, 85.0),
            target_from_goal=False,
            readings=readings,
            doses=[(start + timedelta(hours=1), True), (start + timedelta(hours=2), False)],
        )
    )
    assert (s.days_with_readings, s.days_in_range, s.time_in_range) == (4, 1, 0.25)
    assert s.readings == 5
    assert s.adherence == 0.5
    assert [(w.start.day, w.end.day, w.readings) for w in s.weeks] == [(1, 5, 5)]
    assert s.sbp_7d == 125.0
    assert s.control == "controlled"


def test_previsit_pdf_text_contains_the_summary_figures(
    client: TestClient, world: World, cohort: Cohort
) -> None:
    sign_in(client, "clina")
    r = client.get(f"/api/v1/patients/{cohort.patient_id}/previsit-summary.pdf")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].startswith('attachment; filename="previsit-P-PA1-')
    reader = pypdf.PdfReader(io.BytesIO(r.content))
    text = "\n".join(page.extract_text() for page in reader.pages)
    flat = " ".join(text.split())
    for figure in (
        "128/80",  # 7-day mean
        "controlled",
        "50%",  # time in range
        "14 of 28 days",
        "89%",  # adherence
        "25 of 28 doses",
        "150/94",  # week 1
        "Delivered within the envelope: 1",
        "Rejected: 1",
        "Raised in the period: 1",
        QUESTION,
        "dizziness",
        "2026-11-08 to 2026-12-06",  # the period, in the body and the footer
        "generated 2026-12-06 12:00 UTC",
        f"Page 1 of {len(reader.pages)}",
    ):
        assert figure in flat, figure
    assert len(reader.pages) <= 2


def test_previsit_page_shows_figures_and_forms(
    client: TestClient, world: World, cohort: Cohort
) -> None:
    csrf = sign_in(client, "clina")
    page = client.get(f"/portal/patients/{cohort.patient_id}/previsit")
    assert page.status_code == 200
    html = page.text
    assert 'id="bp-7d">128/80<' in html
    assert 'id="time-in-range">50%<' in html
    assert 'id="adherence">89%<' in html
    assert "<svg" in html
    bad = client.post(
        f"/portal/patients/{cohort.patient_id}/next-visit/override",
        data={"csrf_token": csrf, "due_date": "2026-12-20", "kind": "call", "reason": ""},
    )
    assert bad.status_code == 422
    assert "say why" in bad.text
    ok = client.post(
        f"/portal/patients/{cohort.patient_id}/next-visit/override",
        data={"csrf_token": csrf, "due_date": "2026-12-20", "kind": "call", "reason": "Holiday"},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    again = client.get(ok.headers["location"]).text
    assert "set by the care team" in again
    assert "Holiday" in again
    due = client.get("/portal/visits/due").text
    assert "P-PA1" in due
    assert "Holiday" in due
    panel = client.get("/portal/panel").text
    assert f'href="/portal/patients/{cohort.patient_id}/previsit"' in panel
    assert 'href="/portal/visits/due"' in panel
    done = client.post(
        f"/portal/patients/{cohort.patient_id}/next-visit/complete",
        data={"csrf_token": csrf, "note": "Seen."},
        follow_redirects=False,
    )
    assert done.status_code == 303
    after = client.get(done.headers["location"]).text
    assert "since the last visit" in after


def test_previsit_page_when_outside_team_answers_404(
    client: TestClient, world: World, cohort: Cohort
) -> None:
    sign_in(client, "clinb")
    assert client.get(f"/portal/patients/{cohort.patient_id}/previsit").status_code == 404
    assert "P-PA1" not in client.get("/portal/visits/due").text
