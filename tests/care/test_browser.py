"""The goals and care-plan page in a real browser: headless Chromium (Debian's `chromium`)
driven by Playwright against the real `clinaiops serve` process on a seeded SQLite database.

A clinician proposes a home BP goal; the patient, in a browser with JavaScript off, agrees to
it; the clinician sees it agreed with its progress, edits the note and opens the history.
Saves a screenshot of the page under the test's tmp dir, and as docs/img/care-plan.png when
that is missing or CLINAIOPS_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import insert

from app.auth import service as auth_service
from app.auth.models import Role
from app.core import clock
from app.core.config import Environment, Settings
from app.db import make_engine, session_factory
from app.migrate import upgrade
from app.patients import service as patients
from app.patients.models import Sex
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, Reading
from loops import service as loops
from loops.care import service as care
from loops.care.models import GoalKind
from tests.live_server import LiveServer, clean_env
from tests.portal.seed import add_history, put_on_ladder

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "browser-test-pass-42"
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    pytest.skip(f"needs {CHROMIUM} (make install)", allow_module_level=True)


@dataclass
class Site:
    """The running server and the seeded patient."""

    server: LiveServer | None = None
    patient_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL."""
        assert self.server is not None
        return self.server.base_url


def _steps(session: object, patient_id: str) -> None:
    """Four weeks of daily step counts from a phone, a little under 7,000 on average."""
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    phone, _ = devices.register(session, patient_id=patient_id, device_class=DeviceClass.OTHER)
    now = clock.utcnow()
    batch = IngestBatch(
        device_id=phone.id,
        patient_id=patient_id,
        received_at=now,
        content_type="application/json",
        source_format="omh",
        body_sha256="0" * 64,
        body_bytes=0,
        entries=28,
    )
    session.add(batch)
    session.flush()
    rows = []
    for d in range(1, 29):
        at = (now - timedelta(days=d)).replace(hour=21, minute=0, second=0, microsecond=0)
        value = float(5200 + (d * 677) % 3400)
        rows.append(
            {
                "patient_id": patient_id,
                "device_id": phone.id,
                "batch_id": batch.id or 0,
                "device_class": "other",
                "kind": "step_count",
                "code": "41950-7",
                "effective_start": at,
                "effective_precision": "second",
                "effective_raw": at.isoformat(),
                "value": value,
                "unit": "/d",
                "status": "accepted",
                "quarantine_reasons": [],
                "source_format": "omh",
                "payload_sha256": "0" * 64,
                "received_at": at,
                "natural_key": f"steps-{patient_id}-{d}",
                "context": {},
                "calibration_systolic": 0.0,
                "calibration_diastolic": 0.0,
            }
        )
    session.execute(insert(Reading), rows)


def _seed(url: str, data_dir: Path) -> Site:
    settings = Settings(
        environment=Environment.TEST,
        data_dir=data_dir,
        database_url=url,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        cookie_secure=False,
    )
    engine = make_engine(url)
    site = Site()
    with session_factory(engine)() as s:
        team = patients.create_care_team(s, name="Hypertension Team A")
        clinician = auth_service.create_user(
            s,
            username="clin1",
            password=PASSWORD,
            full_name="Dr. Maya Okafor",
            role=Role.CLINICIAN,
            settings=settings,
        )
        colleague = auth_service.create_user(
            s,
            username="nurse1",
            password=PASSWORD,
            full_name="Sam Reyes, RN",
            role=Role.CLINICIAN,
            settings=settings,
        )
        for user in (clinician, colleague):
            patients.add_member(s, team=team, user=user)
        patient = patients.register_patient(
            s,
            pseudonym="P-0101",
            given_name="Hana",
            family_name="Castro",
            birth_date=clock.utcnow().date().replace(year=1961),
            sex=Sex.FEMALE,
        )
        patients.add_patient(s, team=team, patient=patient)
        patient_user = auth_service.create_user(
            s,
            username="patient1",
            password=PASSWORD,
            full_name="Hana Castro",
            role=Role.PATIENT,
            settings=settings,
            patient_id=patient.id,
        )
        now = clock.utcnow()
        ladder = loops.create_ladder(
            s, drug="lisinopril", steps=[5.0, 10.0, 20.0, 40.0], rxnorm_code="29046"
        )
        put_on_ladder(
            s, patient_id=patient.id, ladder=ladder, author_id=clinician.id or 0, now=now, step=1
        )
        add_history(s, patient_id=patient.id, now=now, sbp=134.0, dbp=84.0)
        _steps(s, patient.id)
        # Two goals already agreed: steps (proposed by the patient) and adherence.
        for kind, value, side, by in (
            (GoalKind.DAILY_STEPS, 7000.0, care.Side.PATIENT, patient_user),
            (GoalKind.ADHERENCE, 0.9, care.Side.CLINICIAN, clinician),
        ):
            goal = care.propose_goal(
                s,
                patient_id=patient.id,
                kind=kind,
                target_value=value,
                target_systolic=None,
                target_diastolic=None,
                note="",
                side=side,
                user_id=by.id or 0,
                now=now - timedelta(days=20),
            )
            other = care.Side.CLINICIAN if side is care.Side.PATIENT else care.Side.PATIENT
            care.agree_goal(
                s,
                goal_id=goal.id,
                patient_id=patient.id,
                side=other,
                user_id=(clinician if other is care.Side.CLINICIAN else patient_user).id or 0,
                now=now - timedelta(days=19),
                actor="seed",
                actor_role="system",
            )
        # The patient's own proposal, waiting for the care team.
        care.propose_goal(
            s,
            patient_id=patient.id,
            kind=GoalKind.SLEEP,
            target_value=7.0,
            target_systolic=None,
            target_diastolic=None,
            note="I want to go to bed before 11.",
            side=care.Side.PATIENT,
            user_id=patient_user.id or 0,
            now=now - timedelta(days=1),
        )
        site.patient_id = patient.id
        s.commit()
    engine.dispose()
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`clinaiops serve` on a seeded database; stopped at teardown."""
    data_dir = tmp_path_factory.mktemp("care-live")
    url = f"sqlite:///{data_dir / 'clinaiops.db'}"
    upgrade(url)
    seeded = _seed(url, data_dir)
    env = clean_env(
        CLINAIOPS_ENVIRONMENT="test",
        CLINAIOPS_COOKIE_SECURE="false",
        CLINAIOPS_DATA_DIR=str(data_dir),
        CLINAIOPS_DATABASE_URL=url,
        CLINAIOPS_ARGON2_TIME_COST="1",
        CLINAIOPS_ARGON2_MEMORY_KIB="1024",
        CLINAIOPS_LOOP_WORKER_SECONDS="0",
        CLINAIOPS_DAILY_EVALUATION_HOUR_UTC="none",
    )
    seeded.server = LiveServer(["serve"], env, data_dir)
    seeded.server.start(timeout=120.0)
    try:
        yield seeded
    finally:
        seeded.server.stop()


def _sign_in(page: Page, site: Site, username: str, target: str) -> None:
    page.goto(f"{site.url}/portal/login?next={target}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{site.url}{target}")


def test_care_page_when_both_sides_agree_a_goal_shows_it_with_progress(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    target = f"/portal/patients/{site.patient_id}/care"
    clinician = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    # The patient's browser runs no JavaScript: every form must still work.
    patient = browser.new_context(
        viewport={"width": 1000, "height": 900}, locale="en-GB", java_script_enabled=False
    )
    try:
        page = clinician.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        _sign_in(page, site, "clin1", target)
        expect(page.locator("h1")).to_have_text("Goals and care plan: Castro, Hana")
        sleep = page.locator("tr[data-kind='sleep']")
        expect(sleep).to_contain_text("waiting for you")
        sleep.get_by_role("button", name="Agree").click()
        expect(page.locator("#notice")).to_contain_text("Goal agreed")

        page.locator("#propose summary").click()
        page.get_by_label("What the goal is about").select_option("blood_pressure")
        page.get_by_label("Systolic, 80 to 180").fill("130")
        page.get_by_label("Diastolic, 50 to 110").fill("80")
        page.get_by_label("Note (optional, shown to both sides)").fill(
            "Home readings, morning and evening."
        )
        page.get_by_role("button", name="Propose goal").click()
        expect(page.locator("#notice")).to_contain_text("Goal proposed")
        expect(page.locator("tr[data-kind='blood_pressure']")).to_contain_text(
            "waiting for the patient"
        )

        mine = patient.new_page()
        _sign_in(mine, site, "patient1", target)
        row = mine.locator("tr[data-kind='blood_pressure']")
        expect(row).to_contain_text("waiting for you")
        expect(mine.locator("#edit-note")).to_have_count(0)
        row.get_by_role("button", name="Agree").click()
        expect(mine.locator("#notice")).to_contain_text("Goal agreed")
        expect(mine.locator("tr[data-kind='blood_pressure']")).to_have_attribute(
            "data-status", "agreed"
        )
        mine.screenshot(path=str(tmp_path / "care-plan-patient.png"), full_page=True)

        page.reload()
        bp = page.locator("tr[data-kind='blood_pressure']")
        expect(bp).to_contain_text("agreed")
        expect(bp.locator("[data-progress]")).to_contain_text("Home blood pressure averaged")
        expect(page.locator("tr[data-kind='daily_steps'] [data-progress]")).to_contain_text(
            "Steps averaged"
        )
        page.locator("#edit-note summary").click()
        page.get_by_label("Note (the plan in your own words; the patient sees it)").fill(
            "Keep measuring twice a day. We review the dose at the next visit."
        )
        page.get_by_label("Reason for the change (required, kept with the version)").fill(
            "Goals agreed at the review call"
        )
        page.get_by_role("button", name="Save note").click()
        expect(page.locator("#notice")).to_contain_text("Care plan note saved")
        expect(page.locator("#plan-note")).to_contain_text("Keep measuring twice a day")
        shot = tmp_path / "care-plan.png"
        page.screenshot(path=str(shot), full_page=True)
        doc = DOC_IMAGES / "care-plan.png"
        if not doc.exists() or os.environ.get("CLINAIOPS_UPDATE_SCREENSHOTS") == "1":
            DOC_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, doc)

        page.get_by_role("link", name="Version history").click()
        expect(page.locator("h1")).to_contain_text("Care plan history")
        rows = page.locator("table.versions tbody tr")
        expect(rows.first).to_contain_text("Goals agreed at the review call")
        expect(rows.first).to_contain_text("Dr. Maya Okafor")
        page.screenshot(path=str(tmp_path / "care-plan-history.png"), full_page=True)
        assert errors == []
    finally:
        clinician.close()
        patient.close()
