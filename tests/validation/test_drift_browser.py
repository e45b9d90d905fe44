"""The drift report page in headless Chromium: Evidently's page, with its inline scripts,
renders inside the portal's sandboxed frame under both pages' content security policies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi import FastAPI
from playwright.sync_api import expect, sync_playwright

from tests.conftest import PASSWORD, World
from tests.live_server import serve_in_thread
from tests.validation.drift_sim import frame, simulate
from tests.validation.test_drift_reports import Stored, _report, api, store  # noqa: F401
from validation.models import DriftReport

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")

if not CHROMIUM.exists():
    pytest.skip(f"needs {CHROMIUM} (make install)", allow_module_level=True)


@pytest.fixture
def served(api: FastAPI) -> Iterator[str]:  # noqa: F811
    """The test's app on a loopback port, in a thread."""
    with serve_in_thread(api) as url:
        yield url


def test_drift_page_when_opened_in_browser_renders_evidently_in_sandboxed_frame(
    world: World,
    store: Callable[..., Stored],  # noqa: F811
    served: str,
    tmp_path: Path,
) -> None:
    reference = frame(*simulate(120, seed=7), cuff_only=True, symptoms=False)
    report: DriftReport = _report(world, store(40, seed=5), pd.DataFrame(reference))
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{served}/portal/login")
        page.fill("input[name=username]", "mleng")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.goto(f"{served}/portal/monitoring/drift/{report.id}")
        expect(page.locator("h1")).to_contain_text(f"Drift report #{report.id}")
        evidently = page.frame_locator("iframe.evidently")
        expect(evidently.get_by_text("Dataset Drift").first).to_be_visible(timeout=30_000)
        expect(evidently.locator("tbody tr").first).to_be_visible()
        page.screenshot(path=str(tmp_path / "drift-report.png"), full_page=True)
        browser.close()
    assert errors == []
