"""Messaging in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright
against `clinaiops serve` on a seeded SQLite database.

A clinician sees the unread badge, opens the inbox and a conversation, replies, and the
patient's API then shows the reply and the content-free notice; the same without JavaScript,
closing and reopening; a message carrying markup is shown as text and runs nothing. Saves
screenshots under the test's tmp dir, and into docs/img/ when missing there or when
CLINAIOPS_UPDATE_SCREENSHOTS=1 (docs/messaging.md uses them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx2
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
from loops.messages import service as messages
from loops.messages.models import SenderSide, ThreadStatus
from loops.messages.service import MESSAGE_WAITING_TEXT
from tests.live_server import LiveServer, clean_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "browser-test-pass-42"
ROOT = Path(__file__).resolve().parents[2]
DOC_IMAGES = ROOT / "docs" / "img"
XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script>'

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    pytest.skip(f"needs {CHROMIUM} (make install)", allow_module_level=True)


@dataclass
class Site:
    """The running server and the seeded conversations, by name."""

    server: LiveServer
    threads: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL."""
        return self.server.base_url


# (given, family, team) per patient login patient1..patient4
PATIENTS = [
    ("Hana", "Castro", "A"),
    ("Ivo", "Brandt", "A"),
    ("Lena", "Abbott", "A"),
    ("Teo", "Garner", "B"),
]


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
    threads: dict[str, str] = {}
    with session_factory(engine)() as s:
        teams = {
            "A": patients.create_care_team(s, name="Hypertension Team A"),
            "B": patients.create_care_team(s, name="Hypertension Team B"),
        }
        staff: dict[str, Any] = {}
        for username, name, team in (
            ("clin1", "Dr. Maya Okafor", "A"),
            ("clin2", "Dr. Jonas Weber", "A"),
            ("clin3", "Dr. Lea Novak", "B"),
        ):
            staff[username] = auth_service.create_user(
                s,
                username=username,
                password=PASSWORD,
                full_name=name,
                role=Role.CLINICIAN,
                settings=settings,
            )
            patients.add_member(s, team=teams[team], user=staff[username])
        users = {}
        ids = {}
        for n, (given, family, team) in enumerate(PATIENTS, start=1):
            patient = patients.register_patient(
                s,
                pseudonym=f"P-{n:04d}",
                given_name=given,
                family_name=family,
                birth_date=date(1950 + n, n, 10 + n),
                sex=Sex.FEMALE if n % 2 else Sex.MALE,
            )
            patients.add_patient(s, team=teams[team], patient=patient)
            users[n] = auth_service.create_user(
                s,
                username=f"patient{n}",
                password=PASSWORD,
                full_name=f"{given} {family}",
                role=Role.PATIENT,
                settings=settings,
                patient_id=patient.id,
            )
            ids[n] = patient.id
        start = clock.utcnow() - timedelta(days=2)

        def at(hours: float) -> Any:
            return start + timedelta(hours=hours)

        def patient_says(n: int, subject: str, body: str, hours: float, **kw: Any) -> str:
            thread, _ = messages.start_thread(
                s,
                patient_id=ids[n],
                sender_id=users[n].id or 0,
                side=SenderSide.PATIENT,
                subject=subject,
                body=body,
                now=at(hours),
                **kw,
            )
            return thread.id

        def reply(thread_id: str, user: Any, side: SenderSide, body: str, hours: float) -> None:
            messages.reply(
                s, thread_id=thread_id, sender_id=user.id, side=side, body=body, now=at(hours)
            )

        threads["dizzy"] = patient_says(
            1,
            "Dizzy when I stand up",
            "Since the new dose I feel light-headed when I get out of bed, mostly in the "
            "morning. It passes after a minute. Should I keep taking it?",
            1,
            is_question=True,
        )
        messages.open_thread(
            s,
            thread_id=threads["dizzy"],
            side=SenderSide.CARE_TEAM,
            reader_id=staff["clin2"].id,
            now=at(2),
        )
        reply(
            threads["dizzy"],
            staff["clin2"],
            SenderSide.CARE_TEAM,
            "Thank you for telling us. Please keep taking it, stand up slowly, and measure "
            "your blood pressure sitting and then standing tomorrow morning.",
            3,
        )
        messages.open_thread(
            s,
            thread_id=threads["dizzy"],
            side=SenderSide.PATIENT,
            reader_id=users[1].id or 0,
            now=at(20),
        )
        reply(
            threads["dizzy"],
            users[1],
            SenderSide.PATIENT,
            "Sitting 128/76, standing 112/70 this morning. Still a little dizzy.\n"
            "I'd like to talk about it at my next visit.",
            30,
        )
        threads["refill"] = patient_says(
            2, "Refill for lisinopril", "I have 5 tablets left. Can you send a refill?", 40
        )
        threads["cuff"] = patient_says(
            3, "New blood pressure cuff", "I bought an Omron M3. Can I use it for my readings?", 5
        )
        messages.open_thread(
            s,
            thread_id=threads["cuff"],
            side=SenderSide.CARE_TEAM,
            reader_id=staff["clin1"].id,
            now=at(6),
        )
        reply(
            threads["cuff"],
            staff["clin1"],
            SenderSide.CARE_TEAM,
            "Yes, the M3 is a validated cuff. Register it in the app so its readings count.",
            6,
        )
        messages.set_status(
            s, thread_id=threads["cuff"], status=ThreadStatus.CLOSED, side=SenderSide.CARE_TEAM
        )
        threads["xss"] = patient_says(4, f"Markup {XSS}", f"Body {XSS}", 41)
        thread, _ = messages.start_thread(
            s,
            patient_id=ids[1],
            sender_id=staff["clin1"].id,
            side=SenderSide.CARE_TEAM,
            subject="Your readings this month",
            body="Your morning readings are in your target range. Well done.",
            now=at(10),
        )
        threads["team"] = thread.id
        threads["other_team"] = patient_says(4, "Other team's patient", "Not for team A.", 42)
        s.commit()
    engine.dispose()
    return threads


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`clinaiops serve` on a seeded database; stopped at teardown."""
    data_dir = tmp_path_factory.mktemp("messages-live")
    url = f"sqlite:///{data_dir / 'clinaiops.db'}"
    upgrade(url)
    threads = _seed(url, data_dir)
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
    server = LiveServer(["serve"], env, data_dir)
    server.start(timeout=120.0)
    try:
        yield Site(server, threads)
    finally:
        server.stop()


def _context(browser: Browser, *, javascript: bool = True) -> BrowserContext:
    return browser.new_context(
        viewport={"width": 1280, "height": 900}, locale="en-GB", java_script_enabled=javascript
    )


def _watch(page: Page) -> list[str]:
    """Console errors, page errors and dialogs (a dialog would mean injected script ran)."""
    found: list[str] = []
    page.on("console", lambda m: found.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: found.append(str(e)))

    def dialog(d: Any) -> None:
        found.append(f"dialog: {d.message}")
        d.dismiss()

    page.on("dialog", dialog)
    return found


def _sign_in(page: Page, site: Site, username: str, target: str) -> None:
    page.goto(f"{site.url}/portal/login?next={target}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{site.url}{target}")


def _shoot(page: Page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    doc = DOC_IMAGES / name
    if not doc.exists() or os.environ.get("CLINAIOPS_UPDATE_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, doc)
    return shot


def _as_patient(site: Site, n: int, path: str) -> dict[str, Any]:
    with httpx2.Client(base_url=site.url, timeout=10.0) as http:
        token = http.post(
            "/api/v1/auth/token", data={"username": f"patient{n}", "password": PASSWORD}
        ).json()["access_token"]
        r = http.get(path, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


def test_clinician_when_replying_from_inbox_reaches_patient_with_notice(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    ctx = _context(browser)
    page = ctx.new_page()
    errors = _watch(page)
    _sign_in(page, site, "clin1", "/portal/messages")
    badge = page.locator(".mainnav [data-unread-threads]")
    expect(badge).to_have_text("2")
    rows = page.locator("table.threads tbody tr")
    expect(rows).to_have_count(4)  # team A's four conversations, not team B's
    expect(rows.nth(0)).to_contain_text("Refill for lisinopril")  # unread, newest
    expect(rows.nth(1)).to_contain_text("Dizzy when I stand up")
    expect(rows.nth(2)).to_contain_text("Your readings this month")  # read: newest first
    expect(rows.nth(3)).to_contain_text("New blood pressure cuff")
    expect(page.locator("table.threads")).not_to_contain_text("Other team")
    _shoot(page, tmp_path, "messages-inbox.png")

    page.locator(f"tr[data-thread='{site.threads['dizzy']}'] a.subject").click()
    expect(page.locator("h1")).to_have_text("Dizzy when I stand up")
    expect(page.locator(".msg.new")).to_have_count(1)  # the patient's unread reply
    expect(badge).to_have_text("1")
    page.get_by_label("Reply to the patient, for the care team").fill(
        "Thank you, that drop on standing explains it. We will talk it through at your "
        "visit; until then stand up slowly and drink enough water."
    )
    _shoot(page, tmp_path, "messages.png")
    page.get_by_role("button", name="Send reply").click()
    expect(page.get_by_role("status")).to_have_text("Message sent.")
    expect(page.locator(".msg.care_team").last).to_contain_text("drink enough water")
    expect(page.locator(".msg.care_team").last).to_contain_text("not read by the patient yet")
    assert errors == []
    ctx.close()

    listed = _as_patient(site, 1, "/api/v1/me/messages")
    dizzy = next(t for t in listed["threads"] if t["id"] == site.threads["dizzy"])
    assert dizzy["unread"] == 1
    assert dizzy["is_question"] is True
    notices = _as_patient(site, 1, "/api/v1/me/alerts")["notices"]
    assert {n["text"] for n in notices if n["kind"] == "message_waiting"} == {MESSAGE_WAITING_TEXT}
    assert all("water" not in n["text"] for n in notices)


def test_clinician_without_javascript_starts_replies_closes_and_reopens(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    ctx = _context(browser, javascript=False)
    page = ctx.new_page()
    _sign_in(page, site, "clin2", "/portal/messages")
    page.locator(
        f"tr[data-thread='{site.threads['cuff']}'] a", has_text="All conversations"
    ).click()
    expect(page.locator("h1")).to_have_text("Conversations with Lena Abbott")
    page.get_by_label("Subject").fill("Your next visit")
    page.get_by_label("Message", exact=True).fill("We would like to see you in two weeks.")
    page.screenshot(path=str(tmp_path / "messages-patient.png"), full_page=True)
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Conversation started.")
    expect(page.locator("h1")).to_have_text("Your next visit")

    page.goto(f"{site.url}/portal/messages/{site.threads['refill']}")
    page.get_by_label("Reply to the patient, for the care team").fill(
        "Refill sent to your pharmacy."
    )
    page.get_by_role("button", name="Send reply").click()
    expect(page.get_by_role("status")).to_have_text("Message sent.")
    page.get_by_role("button", name="Close conversation").click()
    expect(page.get_by_role("status")).to_have_text("Conversation closed.")
    expect(page.locator("textarea[name=body]")).to_have_count(0)
    page.get_by_role("button", name="Reopen conversation").click()
    expect(page.get_by_role("status")).to_have_text("Conversation reopened.")
    expect(page.locator("textarea[name=body]")).to_have_count(1)
    ctx.close()


def test_message_with_markup_when_shown_is_text_and_runs_nothing(
    browser: Browser, site: Site
) -> None:
    ctx = _context(browser)
    page = ctx.new_page()
    errors = _watch(page)
    _sign_in(page, site, "clin3", f"/portal/messages/{site.threads['xss']}")
    expect(page.locator("h1")).to_have_text(f"Markup {XSS}")
    expect(page.locator(".msg .text").first).to_have_text(f"Body {XSS}")
    expect(page.locator("main img")).to_have_count(0)
    page.goto(f"{site.url}/portal/messages")
    expect(page.locator("table.threads")).to_contain_text(f"Markup {XSS}")
    assert not [e for e in errors if e.startswith("dialog")]
    ctx.close()


def test_clinician_of_other_team_when_opening_thread_gets_not_found(
    browser: Browser, site: Site
) -> None:
    ctx = _context(browser)
    page = ctx.new_page()
    _sign_in(page, site, "clin3", "/portal/messages")
    expect(page.locator("table.threads tbody tr")).to_have_count(2)
    response = page.goto(f"{site.url}/portal/messages/{site.threads['dizzy']}")
    assert response is not None
    assert response.status == 404
    expect(page.locator("h1")).to_have_text("Not found")
    ctx.close()
