"""The model alert in headless Chromium: an ML engineer signs in after an automatic rollback,
sees the banner on the home page, follows it to the model's page and sees the red alert with
the stored reason and the step that breached; no script errors, no CSP violations.
Screenshots land in the test's tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, expect

from mlops import serving
from mlops.models import Rollout
from tests.conftest import CHROMIUM, PASSWORD, World
from tests.live_server import serve_in_thread
from tests.mlops.rollout_setup import Rig
from tests.portal.test_models_page import roll_back_automatically

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.exists():
    pytest.skip(f"needs {CHROMIUM} (make install)", allow_module_level=True)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "_cache", {})


@pytest.fixture
def rolled_back(world: World, tmp_path: Path) -> Rollout:
    """Champion v1 serving; challenger v2 rolled back automatically at canary 10%."""
    return roll_back_automatically(Rig(world, tmp_path, challenger_push=2.0))


@pytest.fixture
def served(app: FastAPI) -> Iterator[str]:
    """The test's app on a loopback port, in a thread."""
    with serve_in_thread(app) as url:
        yield url


def test_model_alert_when_ml_engineer_signs_in_shows_banner_then_red_alert(
    browser: Browser, rolled_back: Rollout, served: str, tmp_path: Path
) -> None:
    errors: list[str] = []
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"{served}/portal/login")
        page.fill("input[name=username]", "mleng")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        banner = page.locator(".model-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("1 automatic rollback in the last 14 days")
        expect(banner).to_contain_text("titration:v2 at canary 10%")
        page.screenshot(path=str(tmp_path / "home-banner.png"), full_page=True)

        banner.get_by_role("link", name="See the model alert").click()
        expect(page).to_have_url(f"{served}/portal/models/titration")
        expect(page.locator("h1")).to_have_text("Model titration")
        alert = page.locator(f'.model-alert[data-rollout="{rolled_back.id}"]')
        expect(alert).to_be_visible()
        expect(alert).to_contain_text("Automatic rollback: titration:v2")
        expect(alert.locator(".model-alert-reason")).to_have_text(rolled_back.end_reason)
        breached = page.locator("#rollout tr.breached[data-check=error_rate]")
        expect(breached).to_be_visible()
        expect(page.locator("nav.mainnav a[aria-current=page]")).to_have_text("Models")
        # The red box stands out: its border is the portal's "bad" colour.
        colour = alert.evaluate("e => getComputedStyle(e).borderLeftColor")
        assert colour == "rgb(179, 38, 30)"
        page.screenshot(path=str(tmp_path / "model-alert.png"), full_page=True)

        page.locator("details.arms").first.locator("summary").click()
        expect(page.locator("details.arms").first.locator("table")).to_be_visible()
        page.goto(f"{served}/portal/models")
        expect(page.locator(f'.model-alert[data-rollout="{rolled_back.id}"]')).to_be_visible()
        page.screenshot(path=str(tmp_path / "models.png"), full_page=True)
    finally:
        ctx.close()
    assert errors == []
