"""Path traversal in report names and kinds (API, portal and the pack CLI's --month): a 4xx
with a machine-readable code (the portal: an HTML page), never a 500, never a file from
outside the reports, and never a folder written outside the pack base."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from reports.periods import PeriodError, parse_month
from tests.hostile.conftest import Caller, Scene, assert_problem
from tests.live_server import clean_env

CLINAIOPS = Path(sys.executable).with_name("clinaiops")
TRAVERSALS = [
    "..%2f..%2fetc%2fpasswd",
    "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "....%2f%2f....%2f%2fetc%2fpasswd",
    "..%5c..%5cwindows%5cwin.ini",
    "%2e%2e",  # a bare ".." is resolved by the client before it is sent
    "audit-trail%00.html",
    "%2fetc%2fpasswd",
    "activity%2f..%2f..%2f..%2fpyproject.toml",
]
# What must never come back: the start of /etc/passwd, of win.ini, of the project's files.
LEAKS = ("root:x:0:0", "[fonts]", "[project]", "BEGIN PRIVATE KEY")


def _no_leak(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, leak


@pytest.mark.parametrize("name", TRAVERSALS)
@pytest.mark.parametrize("prefix", ["/api/v1/reports/", "/api/v1/reports/fhir/"])
def test_report_when_name_traverses_is_4xx_problem(
    scene: Scene, as_: Callable[[str], Caller], prefix: str, name: str
) -> None:
    r = as_("auditor")("GET", prefix + name)
    assert_problem(r, 400, 404, 422)
    _no_leak(r.text)


@pytest.mark.parametrize("fmt", ["../../etc/passwd", "..%2fpdf", "pdf/../../x", "%00pdf"])
def test_report_when_format_traverses_is_422_unknown_format(
    scene: Scene, as_: Callable[[str], Caller], fmt: str
) -> None:
    r = as_("auditor")("GET", "/api/v1/reports/decision-log", params={"format": fmt})
    assert_problem(r, 404, 422)
    _no_leak(r.text)


@pytest.mark.parametrize("kind", ["../../etc/passwd", "..\\..\\win.ini", "%2e%2e/x", "a\x00b"])
@pytest.mark.parametrize("page", ["/portal/reports", "/portal/reports/preview"])
def test_portal_report_when_kind_traverses_is_4xx_page(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]], page: str, kind: str
) -> None:
    client, _ = browser("auditor")
    r = client.get(page, params={"kind": kind})
    assert r.status_code != 500, r.text[:300]
    # The chooser page shows the form again (200) with nothing chosen; the preview refuses.
    assert r.status_code == 200 if page == "/portal/reports" else 400 <= r.status_code < 500
    assert r.headers["content-type"].startswith("text/html")
    _no_leak(r.text)


@pytest.mark.parametrize("fmt", ["../../etc/passwd", "pdf/../../../x"])
def test_portal_download_when_kind_or_format_traverses_is_4xx_page(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]], fmt: str
) -> None:
    client, _ = browser("auditor")
    for params in ({"kind": "../../etc/passwd"}, {"kind": "decision-log", "format": fmt}):
        r = client.get("/portal/reports/download", params=params)
        assert 400 <= r.status_code < 500, (params, r.status_code, r.text[:300])
        _no_leak(r.text)


@pytest.mark.parametrize(
    "month",
    ["../../etc", "2026-01/../../x", "2026-01/..", "..", "/tmp", "2026-1", "2026-01\x00"],
)
def test_pack_month_when_it_traverses_is_refused_by_the_parser(month: str) -> None:
    with pytest.raises(PeriodError):
        parse_month(month)


def test_cli_pack_when_month_traverses_exits_1_and_writes_nothing(
    scene: Scene, tmp_path: Path
) -> None:
    settings = scene.world.settings
    out = tmp_path / "packs"
    done = subprocess.run(
        [str(CLINAIOPS), "reports", "pack", "--month", "../../../evil", "--out", str(out)],
        env=clean_env(
            CLINAIOPS_ENVIRONMENT="test",
            CLINAIOPS_DATABASE_URL=settings.database_url,
            CLINAIOPS_DATA_DIR=str(settings.data_dir),
            CLINAIOPS_SIGNING_KEY_PATH=str(settings.signing_key_path),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "YYYY-MM" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("param", ["patient_id", "actor", "cohort"])
@pytest.mark.parametrize(
    "path", ["/api/v1/reports/decision-log", "/api/v1/reports/audit-trail/export.zip"]
)
def test_report_when_filter_holds_nul_is_4xx_problem(
    scene: Scene, as_: Callable[[str], Caller], path: str, param: str
) -> None:
    # Found by schemathesis on PostgreSQL, which refuses NUL in any text it compares.
    r = as_("auditor")("GET", path, params={param: "P-PA1\x00' OR 1=1"})
    assert_problem(r, 404, 422)


@pytest.mark.parametrize("param", ["patient_id", "actor"])
def test_portal_report_when_filter_holds_nul_is_4xx_page(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]], param: str
) -> None:
    client, _ = browser("auditor")
    for page in ("/portal/reports/preview", "/portal/reports/download"):
        r = client.get(page, params={"kind": "decision-log", param: "x\x00y"})
        assert 400 <= r.status_code < 500, (page, r.status_code, r.text[:300])
