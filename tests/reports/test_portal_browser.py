"""An auditor in headless Chromium: signs in, opens Reports, chooses the AI decision log for a
period, previews it (the report in a sandboxed frame) and downloads the PDF, whose text is
checked with pypdf and whose first page is rendered with pdftoppm. No script errors, no CSP
violations. Screenshots and the page image land in the test's tmp dir."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, expect

from tests.conftest import CHROMIUM, PASSWORD
from tests.live_server import serve_in_thread
from tests.reports.conftest import Seeded, pdf_pages, squeeze

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.exists():
    pytest.skip(f"needs {CHROMIUM} (make install)", allow_module_level=True)


@pytest.fixture
def served(app: FastAPI) -> Iterator[str]:
    """The test's app on a loopback port, in a thread."""
    with serve_in_thread(app) as url:
        yield url


def test_auditor_when_previewing_the_decision_log_downloads_its_pdf(
    browser: Browser, seeded: Seeded, served: str, tmp_path: Path
) -> None:
    errors: list[str] = []
    ctx = browser.new_context(
        viewport={"width": 1280, "height": 900}, locale="en-GB", accept_downloads=True
    )
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    start = seeded.period.start.date()
    end = seeded.period.end.date() + timedelta(days=1)
    try:
        page.goto(f"{served}/portal/login")
        page.fill("input[name=username]", "auditor")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.get_by_role("navigation", name="Main").get_by_role(
            "link", name="Compliance reports"
        ).click()
        expect(page.locator("h1")).to_have_text("Compliance reports")
        page.select_option("select[name=kind]", "decision-log")
        page.fill("input[name=start]", start.isoformat())
        page.fill("input[name=end]", end.isoformat())
        page.get_by_role("button", name="Preview").click()

        preview = page.locator("section[data-preview=decision-log]")
        expect(preview).to_be_visible()
        expect(preview.locator("h2")).to_have_text("AI decision log")
        frame = page.frame_locator("iframe.report-preview")
        expect(frame.locator("h1")).to_have_text("AI decision log")
        expect(frame.locator("body")).to_contain_text(seeded.pseudonym("pa1"))
        page.screenshot(path=str(tmp_path / "preview.png"), full_page=True)

        with page.expect_download() as info:
            preview.get_by_role("link", name="Export PDF").click()
        download = info.value
        assert download.suggested_filename == (
            f"clinaiops-decision-log-{start:%Y%m%d}-{end:%Y%m%d}.pdf"
        )
        pdf = tmp_path / download.suggested_filename
        download.save_as(pdf)
    finally:
        ctx.close()
    pages = pdf_pages(pdf.read_bytes())
    text = "".join(pages)
    assert squeeze("AI decision log") in text
    assert seeded.pseudonym("pa1") in text
    assert seeded.pseudonym("pb1") in text
    assert f"page1of{len(pages)}" in text.lower().replace(" ", "")
    assert seeded.world.patients["pa1"].family_name not in text
    if shutil.which("pdftoppm"):
        out = tmp_path / "page"
        subprocess.run(
            ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf), str(out)],
            check=True,
            timeout=60,
        )
        assert list(tmp_path.glob("page*.png"))
    assert errors == []
