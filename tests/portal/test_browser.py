"""The review portal in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright against the real `clinaiops serve` process on a seeded SQLite database.

Drives: sign-in, the queue, a proposal, approving with a signature and seeing the patient API
return it; modifying; rejecting; a wrong signature password; two clinicians racing for one
item; a clinician outside the care team. Saves screenshots of the queue and a proposal page
under the test's tmp dir, and into docs/img/ when they are missing there or when
CLINAIOPS_UPDATE_SCREENSHOTS=1 (the clinician's guide uses them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlalchemy import select

from app.auth import service as auth_service
from app.auth.models import Role, WebSession
from app.core import clock
from app.core.config import Environment, Settings
from app.db import make_engine, session_factory
from app.migrate import upgrade
from app.patients import service as patients
from app.patients.models import Sex
from tests.live_server import LiveServer, clean_env
from tests.portal.seed import seed_review

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "browser-test-pass-42"
ROOT = Path(__file__).resolve().parents[2]
DOC_IMAGES = ROOT / "docs" / "img"
# Team A's patients, one per scenario (each decides its own proposal); pb1 is team B's.
SCENARIOS = ("approve", "modify", "reject", "wrong", "race", "tour", "nojs")
NAMES = {
    "approve": ("Hana", "Castro"),
    "modify": ("Ivo", "Brandt"),
    "reject": ("Lena", "Abbott"),
    "wrong": ("Jun", "Dalton"),
    "race": ("Mira", "Eklund"),
    "tour": ("Olu", "Farkas"),
    "nojs": ("Pia", "Hughes"),
    "pb1": ("Teo", "Garner"),
}

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    pytest.skip(f"needs {CHROMIUM} (make install)", allow_module_level=True)


@dataclass
class Site:
    """The running server and what was seeded, by scenario name."""

    server: LiveServer
    proposals: dict[str, str] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL."""
        return self.server.base_url


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
    site = Site(server=None)  # type: ignore[arg-type]
    with session_factory(engine)() as s:
        team_a = patients.create_care_team(s, name="Hypertension Team A")
        team_b = patients.create_care_team(s, name="Hypertension Team B")
        staff = {
            "clin1": ("Dr. Maya Okafor", team_a),
            "clin2": ("Dr. Jonas Weber", team_a),
            "clin3": ("Dr. Lea Novak", team_b),
        }
        users = {}
        for username, (name, team) in staff.items():
            users[username] = auth_service.create_user(
                s,
                username=username,
                password=PASSWORD,
                full_name=name,
                role=Role.CLINICIAN,
                settings=settings,
            )
            patients.add_member(s, team=team, user=users[username])
        for n, (key, (given, family)) in enumerate(NAMES.items(), start=1):
            patient = patients.register_patient(
                s,
                pseudonym=f"P-{n:04d}",
                given_name=given,
                family_name=family,
                birth_date=date(1955 + n, n, 10 + n),
                sex=Sex.FEMALE if n % 2 else Sex.MALE,
            )
            patients.add_patient(s, team=team_b if key == "pb1" else team_a, patient=patient)
            auth_service.create_user(
                s,
                username=f"patient{n}",
                password=PASSWORD,
                full_name=f"{given} {family}",
                role=Role.PATIENT,
                settings=settings,
                patient_id=patient.id,
            )
            site.patients[key] = patient.id
        cast = seed_review(
            s, patients=dict(site.patients), author_id=users["clin1"].id or 0, now=clock.utcnow()
        )
        site.proposals = {k: p.id for k, p in cast.proposals.items()}
        s.commit()
    engine.dispose()
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`clinaiops serve` on a seeded database; stopped at teardown."""
    data_dir = tmp_path_factory.mktemp("portal-live")
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


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (cookies of its own), desktop-sized."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    try:
        yield ctx
    finally:
        ctx.close()


def _errors(page: Page) -> list[str]:
    """Console errors and CSP violations collected on a page."""
    found: list[str] = []
    page.on("console", lambda m: found.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: found.append(str(e)))
    return found


def _sign_in(page: Page, site: Site, username: str, target: str = "/portal/queue") -> None:
    page.goto(f"{site.url}/portal/login?next={target}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{site.url}{target}")


def _shoot(page: Page, tmp_path: Path, name: str, *, full_page: bool = True) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=full_page)
    doc = DOC_IMAGES / name
    if not doc.exists() or os.environ.get("CLINAIOPS_UPDATE_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, doc)
    return shot


def _charts_drawn(page: Page) -> None:
    """Wait until plotly has drawn every chart of the page."""
    charts = page.locator("[data-chart]")
    for i in range(charts.count()):
        expect(charts.nth(i).locator(".main-svg").first).to_be_attached()


def _sign(page: Page, kind: str, password: str = PASSWORD) -> None:
    form = page.locator(f"#decide-{kind}")
    if form.get_attribute("open") is None:
        form.locator("summary").click()
    form.get_by_label("Your password (signature)").fill(password)
    form.locator("input[name=meaning_confirmed]").check()
    form.get_by_role("button", name="Sign:").click()


def _patient_recommendations(site: Site, patient_no: int) -> list[dict[str, object]]:
    with httpx2.Client(base_url=site.url, timeout=10.0) as http:
        token = http.post(
            "/api/v1/auth/token", data={"username": f"patient{patient_no}", "password": PASSWORD}
        ).json()["access_token"]
        r = http.get("/api/v1/me/recommendations", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        out: list[dict[str, object]] = r.json()
        return out


def _patient_no(name: str) -> int:
    return list(NAMES).index(name) + 1


def test_approve_when_signed_shows_signature_and_reaches_patient_api(
    context: BrowserContext, site: Site, tmp_path: Path
) -> None:
    page = context.new_page()
    errors = _errors(page)
    _sign_in(page, site, "clin1")
    expect(page.locator("h1")).to_have_text("Review queue")
    expect(page.locator("table.queue tbody tr")).to_have_count(len(SCENARIOS))
    # Crisis first: the approve scenario's patient has the crisis alert.
    expect(page.locator("table.queue tbody tr").first).to_contain_text("crisis alert")
    _shoot(page, tmp_path, "portal-queue.png")

    page.locator(f"tr[data-proposal='{site.proposals['approve']}'] a").first.click()
    expect(page.locator("#bp-chart .main-svg").first).to_be_attached()
    page.get_by_role("button", name="Claim to decide").click()
    expect(page.get_by_text("Claimed by you")).to_be_visible()
    _charts_drawn(page)
    _shoot(page, tmp_path, "portal-proposal.png")

    _sign(page, "approve")
    signature = page.locator(".signature")
    expect(signature).to_contain_text("approved as prescriber")
    expect(signature).to_contain_text("Dr. Maya Okafor")
    expect(signature.locator(".signed-at")).to_contain_text("UTC")
    _charts_drawn(page)
    _shoot(page, tmp_path, "portal-decision.png")
    page.get_by_role("link", name="Print view").first.click()
    expect(page.locator(".signature")).to_contain_text("Dr. Maya Okafor")
    expect(page.locator(".signature")).to_contain_text("approved as prescriber")
    page.emulate_media(media="print")
    _shoot(page, tmp_path, "portal-print.png")

    recommendations = _patient_recommendations(site, _patient_no("approve"))
    mine = next(r for r in recommendations if r["id"] == site.proposals["approve"])
    assert str(mine["status"]).startswith("approved by your")
    assert errors == []


def test_modify_when_signed_records_the_chosen_step(context: BrowserContext, site: Site) -> None:
    page = context.new_page()
    _sign_in(page, site, "clin1", f"/portal/proposals/{site.proposals['modify']}")
    page.locator("#decide-modify summary").click()
    form = page.locator("#decide-modify")
    form.get_by_label("New dose").select_option("0")
    form.get_by_label("Reason").select_option("recent_readings")
    form.get_by_label("Details").fill("Hold for two more weeks of readings.")
    _sign(page, "modify")
    expect(page.locator(".signature")).to_contain_text("modified as prescriber")
    expect(page.locator(".signature")).to_contain_text("step 0")
    recommendations = _patient_recommendations(site, _patient_no("modify"))
    mine = next(r for r in recommendations if r["id"] == site.proposals["modify"])
    assert str(mine["status"]).startswith("changed by your")
    assert mine["dose_to"] == 5.0  # lisinopril step 0: the current dose, held


def test_reject_when_signed_records_reason(context: BrowserContext, site: Site) -> None:
    page = context.new_page()
    _sign_in(page, site, "clin1", f"/portal/proposals/{site.proposals['reject']}")
    page.locator("#decide-reject summary").click()
    form = page.locator("#decide-reject")
    form.get_by_label("Reason").select_option("clinical_judgement")
    form.get_by_label("Details").fill("Recent illness; readings not representative.")
    _sign(page, "reject")
    expect(page.locator(".signature")).to_contain_text("rejected as reviewing clinician")
    expect(page.locator(".signature")).to_contain_text("clinical judgement")
    recommendations = _patient_recommendations(site, _patient_no("reject"))
    mine = next(r for r in recommendations if r["id"] == site.proposals["reject"])
    assert str(mine["status"]).startswith("not recommended by your")


def test_decide_when_password_wrong_decides_nothing(context: BrowserContext, site: Site) -> None:
    page = context.new_page()
    _sign_in(page, site, "clin1", f"/portal/proposals/{site.proposals['wrong']}")
    _sign(page, "approve", password="not-my-password")
    expect(page.locator("#decide-error")).to_contain_text("password is wrong")
    expect(page.locator(".signature")).to_have_count(0)
    page.reload()
    expect(page.locator("[data-status]")).to_have_text("pending review")


def test_claim_when_two_clinicians_race_the_second_sees_who_holds_it(
    browser: Browser, site: Site
) -> None:
    first = browser.new_context(viewport={"width": 1280, "height": 900})
    second = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        a, b = first.new_page(), second.new_page()
        target = f"/portal/proposals/{site.proposals['race']}"
        _sign_in(a, site, "clin1", target)
        _sign_in(b, site, "clin2", target)
        a.get_by_role("button", name="Claim to decide").click()
        expect(a.get_by_text("Claimed by you")).to_be_visible()
        b.get_by_role("button", name="Claim to decide").click()  # b's page is stale
        expect(b.locator("h1")).to_have_text("Someone got there first")
        expect(b.locator(".notice")).to_contain_text("Dr. Maya Okafor")
        b.goto(f"{site.url}{target}")
        expect(b.locator(".claim")).to_contain_text("Claimed by Dr. Maya Okafor")
        expect(b.locator("#decide-approve button[type=submit]")).to_be_disabled()
    finally:
        first.close()
        second.close()


def test_pages_when_clinician_outside_care_team_are_404(
    context: BrowserContext, site: Site
) -> None:
    page = context.new_page()
    _sign_in(page, site, "clin3")
    expect(page.locator("table.queue tbody tr")).to_have_count(1)  # team B's own patient only
    for path in (
        f"/portal/proposals/{site.proposals['tour']}",
        f"/portal/proposals/{site.proposals['tour']}/print",
        f"/portal/patients/{site.patients['tour']}/envelope",
    ):
        response = page.goto(f"{site.url}{path}")
        assert response is not None
        assert response.status == 404
        expect(page.locator("h1")).to_have_text("Not found")


def test_approve_when_javascript_is_off_still_works(browser: Browser, site: Site) -> None:
    ctx = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    try:
        page = ctx.new_page()
        _sign_in(page, site, "clin1")
        page.locator(f"tr[data-proposal='{site.proposals['nojs']}'] a").first.click()
        expect(page.get_by_text("Readings as a table")).to_be_visible()
        expect(page.locator("#bp-chart .main-svg")).to_have_count(0)  # no chart without JS
        page.get_by_role("button", name="Claim to decide").click()
        _sign(page, "approve")
        expect(page.locator(".signature")).to_contain_text("approved as prescriber")
    finally:
        ctx.close()


def test_tour_when_clinician_browses_panel_alerts_and_envelope(
    context: BrowserContext, site: Site, tmp_path: Path
) -> None:
    page = context.new_page()
    errors = _errors(page)
    _sign_in(page, site, "clin1", "/portal/panel")
    expect(page.locator("table.panel tbody tr")).to_have_count(len(SCENARIOS))
    _shoot(page, tmp_path, "portal-panel.png")
    page.get_by_role("link", name="Alerts").click()
    expect(page.locator("table.alerts tbody tr").first).to_contain_text("pinned")
    gap = page.locator("table.alerts tbody tr", has_text="data gap")
    gap.get_by_label("Acknowledgement note").fill("Cuff battery flat; patient buying a new one.")
    gap.get_by_role("button", name="Acknowledge").click()
    expect(page.locator("table.alerts tbody tr", has_text="data gap")).to_contain_text(
        "by Dr. Maya Okafor"
    )
    _shoot(page, tmp_path, "portal-alerts.png")
    page.goto(f"{site.url}/portal/patients/{site.patients['tour']}/envelope")
    expect(page.locator("h1")).to_contain_text("Farkas")
    page.get_by_label("Minimum model confidence").fill("0.75")
    page.get_by_label("Reason for the change").fill("Confidence floor lowered after review.")
    page.get_by_role("button", name="Save as version 2").click()
    expect(page.locator("#rerouted")).to_contain_text("Version 2 saved")
    _shoot(page, tmp_path, "portal-envelope.png")
    assert errors == []


def _end_sessions(site: Site) -> None:
    """What the server's idle logoff does: every session of the site ends now."""
    engine = make_engine(site.server.env["CLINAIOPS_DATABASE_URL"])
    with session_factory(engine)() as s:
        for web in s.scalars(select(WebSession).where(WebSession.revoked_at.is_(None))):  # type: ignore[union-attr]
            web.revoked_at = clock.utcnow()
        s.commit()
    engine.dispose()


def test_form_when_session_ends_while_typing_is_kept_across_sign_in(
    context: BrowserContext, site: Site, tmp_path: Path
) -> None:
    page = context.new_page()
    page.clock.install()
    target = f"/portal/proposals/{site.proposals['wrong']}"
    _sign_in(page, site, "clin1", target)
    _charts_drawn(page)  # portal.js has run: the idle guard is on
    page.locator("#decide-reject summary").click()
    form = page.locator("#decide-reject")
    form.get_by_label("Reason").select_option("patient_preference")
    form.get_by_label("Details").fill("Patient travels abroad next month; revisit after.")
    form.get_by_label("Your password (signature)").fill(PASSWORD)
    _end_sessions(site)
    page.clock.fast_forward("16:00")  # the page's idle guard: 15 minutes without activity
    cover = page.locator("#idle-cover")
    expect(cover).to_be_visible()
    expect(cover).to_contain_text("What you typed is kept")
    _shoot(page, tmp_path, "portal-idle.png", full_page=False)
    cover.get_by_role("button", name="Sign in again").click()
    expect(page.locator(".notice")).to_contain_text("nothing was done")
    page.get_by_label("Username").fill("clin1")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{site.url}{target}")
    form = page.locator("#decide-reject")
    expect(form).to_have_attribute("open", "")
    expect(form.get_by_label("Details")).to_have_value(
        "Patient travels abroad next month; revisit after."
    )
    expect(form.get_by_label("Reason")).to_have_value("patient_preference")
    expect(form.get_by_label("Your password (signature)")).to_have_value("")
    expect(page.locator("[data-status]")).to_have_text("pending review")
