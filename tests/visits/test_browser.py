"""A clinician in a real browser (headless Debian Chromium, Playwright) against the real
`clinaiops serve`: from the panel to the due list to a pre-visit summary, checking the figures
of the hand-computed cohort (tests/visits/cohort.py) on the page and in the downloaded PDF.
Saves docs/img/previsit-summary.png when missing (or with CLINAIOPS_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pypdf
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from app.auth import service as auth_service
from app.auth.models import Role
from app.core import clock
from app.core.config import Environment, Settings
from app.db import make_engine, session_factory
from app.migrate import upgrade
from app.patients import service as patients
from app.patients.models import Sex
from loops.models import Alert
from loops.visits import service as visits
from tests.live_server import LiveServer, clean_env
from tests.visits.cohort import QUESTION, seed_cohort

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "browser-visits-pass-42"
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    pytest.skip(f"needs {CHROMIUM} (make install)", allow_module_level=True)


@dataclass
class Site:
    """The running server and the seeded patients by short name."""

    server: LiveServer
    patients: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL."""
        return self.server.base_url


def _seed(url: str, data_dir: Path) -> dict[str, str]:
    settings = Settings(
        environment=Environment.TEST,
        data_dir=data_dir,
        database_url=url,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        cookie_secure=False,
    )
    engine = make_engine(url)
    ids: dict[str, str] = {}
    with session_factory(engine)() as s:
        team = patients.create_care_team(s, name="Hypertension Team A")
        other = patients.create_care_team(s, name="Hypertension Team B")
        clin = auth_service.create_user(
            s,
            username="clin1",
            password=PASSWORD,
            full_name="Dr. Maya Okafor",
            role=Role.CLINICIAN,
            settings=settings,
        )
        patients.add_member(s, team=team, user=clin)
        people = {
            "cohort": ("Hana", "Castro", team),
            "crisis": ("Ivo", "Brandt", team),
            "quiet": ("Lena", "Abbott", team),
            "elsewhere": ("Teo", "Garner", other),
        }
        users = {}
        for n, (key, (given, family, home)) in enumerate(people.items(), start=1):
            p = patients.register_patient(
                s,
                pseudonym=f"P-{n:04d}",
                given_name=given,
                family_name=family,
                birth_date=date(1955 + n, n, 10 + n),
                sex=Sex.FEMALE if n % 2 else Sex.MALE,
            )
            patients.add_patient(s, team=home, patient=p)
            users[key] = auth_service.create_user(
                s,
                username=f"patient{n}",
                password=PASSWORD,
                full_name=f"{given} {family}",
                role=Role.PATIENT,
                settings=settings,
                patient_id=p.id,
            )
            ids[key] = p.id
        now = clock.utcnow()
        seed_cohort(
            s,
            patient_id=ids["cohort"],
            clinician_id=clin.id or 0,
            patient_user_id=users["cohort"].id or 0,
            now=now,
        )
        s.add(
            Alert(
                patient_id=ids["crisis"],
                type="hypertensive_crisis",
                severity="critical",
                key=f"{ids['crisis']}:crisis",
                detail="186/104 mmHg, confirmed",
                raised_at=now - timedelta(hours=1),
            )
        )
        s.flush()
        visits.recompute_all(s, now=now)
        s.commit()
    engine.dispose()
    return ids


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`clinaiops serve` on a seeded database; stopped at teardown."""
    data_dir = tmp_path_factory.mktemp("visits-live")
    url = f"sqlite:///{data_dir / 'clinaiops.db'}"
    upgrade(url)
    ids = _seed(url, data_dir)
    env = clean_env(
        CLINAIOPS_ENVIRONMENT="test",
        CLINAIOPS_COOKIE_SECURE="false",
        CLINAIOPS_DATA_DIR=str(data_dir),
        CLINAIOPS_DATABASE_URL=url,
        CLINAIOPS_ARGON2_TIME_COST="1",
        CLINAIOPS_ARGON2_MEMORY_KIB="1024",
        CLINAIOPS_LOOP_WORKER_SECONDS="0",
        CLINAIOPS_DAILY_EVALUATION_HOUR_UTC="none",
        CLINAIOPS_VISIT_CADENCE_HOUR_UTC="none",
    )
    server = LiveServer(["serve"], env, data_dir)
    server.start(timeout=120.0)
    try:
        yield Site(server, ids)
    finally:
        server.stop()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile, desktop-sized, accepting downloads."""
    ctx = browser.new_context(
        viewport={"width": 1280, "height": 900}, locale="en-GB", accept_downloads=True
    )
    try:
        yield ctx
    finally:
        ctx.close()


def _errors(page: Page) -> list[str]:
    found: list[str] = []
    page.on("console", lambda m: found.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: found.append(str(e)))
    return found


def _shoot(page: Page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    doc = DOC_IMAGES / name
    if not doc.exists() or os.environ.get("CLINAIOPS_UPDATE_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, doc)
    return shot


def test_clinician_walks_from_panel_to_due_list_to_summary_and_pdf(
    context: BrowserContext, site: Site, tmp_path: Path
) -> None:
    page = context.new_page()
    errors = _errors(page)
    page.goto(f"{site.url}/portal/login?next=/portal/panel")
    page.get_by_label("Username").fill("clin1")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{site.url}/portal/panel")
    expect(page.locator("table.panel tbody tr")).to_have_count(3)  # team A only

    page.locator("#due-link").click()
    expect(page).to_have_url(f"{site.url}/portal/visits/due")
    rows = page.locator("#due-list tbody tr")
    expect(rows).to_have_count(3)
    # Soonest first: the open crisis alert asks for a visit within 48 hours.
    expect(rows.first).to_have_attribute("data-patient", "P-0002")
    expect(rows.first).to_contain_text("open hypertensive crisis alert")
    expect(page.locator("#due-list")).not_to_contain_text("P-0004")
    _shoot(page, tmp_path, "visits-due.png")

    page.locator("#due-list tbody tr[data-patient='P-0001'] a").click()
    expect(page).to_have_url(f"{site.url}/portal/patients/{site.patients['cohort']}/previsit")
    expect(page.locator("#bp-7d")).to_have_text("128/80")
    expect(page.locator("#control")).to_have_text("controlled")
    expect(page.locator("#time-in-range")).to_have_text("50%")
    expect(page.locator("#adherence")).to_have_text("89%")
    expect(page.locator("#weekly tbody tr").first).to_contain_text("150/94")
    expect(page.locator("#decision-counts")).to_contain_text("Rejected: 1")
    expect(page.locator("#questions")).to_contain_text(QUESTION)
    expect(page.locator("svg.trend polyline")).to_have_count(2)
    _shoot(page, tmp_path, "previsit-summary.png")

    with page.expect_download() as info:
        page.locator("#pdf-link").click()
    download = info.value
    assert download.suggested_filename.startswith("previsit-P-0001-")
    path = tmp_path / "summary.pdf"
    download.save_as(str(path))
    reader = pypdf.PdfReader(io.BytesIO(path.read_bytes()))
    text = " ".join(" ".join(p.extract_text() for p in reader.pages).split())
    for figure in ("128/80", "controlled", "50%", "89%", "150/94", QUESTION, "Page 1 of"):
        assert figure in text, figure

    # A date set by the clinician, with a reason, shows on the summary and the due list.
    page.get_by_label("Reason (required; the patient sees it)").fill("Travelling next week")
    page.locator("#override-form select[name=kind]").select_option("call")
    page.get_by_role("button", name="Set date").click()
    expect(page.locator("#next-visit")).to_contain_text("Travelling next week")
    page.goto(f"{site.url}/portal/visits/due")
    expect(page.locator("#due-list tbody tr[data-patient='P-0001']")).to_contain_text(
        "set by care team"
    )
    assert errors == []
