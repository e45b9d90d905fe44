"""`make demo` end to end: the real server process, seeded, answering the API and the portal.

Runs `clinaiops demo` as the Makefile does (demo environment, insecure cookies over plain
HTTP) on a SQLite file in a temporary data dir, then signs in over real HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx2
import pytest

from tests.live_server import LiveServer, clean_env

pytestmark = pytest.mark.slow

DEMO_PASSWORD = "demo-server-pass-42"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`clinaiops demo` on a free port; terminated (SIGTERM, then kill) at teardown."""
    data_dir = tmp_path_factory.mktemp("demo")
    env = clean_env(
        CLINAIOPS_ENVIRONMENT="demo",
        CLINAIOPS_COOKIE_SECURE="false",
        CLINAIOPS_DATA_DIR=str(data_dir),
        CLINAIOPS_DEMO_PASSWORD=DEMO_PASSWORD,
        CLINAIOPS_ARGON2_TIME_COST="1",
        CLINAIOPS_ARGON2_MEMORY_KIB="1024",
    )
    server = LiveServer(["demo"], env, data_dir)
    try:
        server.start(timeout=240.0)  # demo also trains model v1 and simulates 4 weeks
        yield server
    finally:
        server.stop()


@pytest.fixture
def http(demo_server: LiveServer) -> Iterator[httpx2.Client]:
    """A client with its own cookie jar; redirects are not followed."""
    with httpx2.Client(base_url=demo_server.base_url, timeout=10.0) as client:
        yield client


def _token(http: httpx2.Client, username: str) -> str:
    response = http.post(
        "/api/v1/auth/token", data={"username": username, "password": DEMO_PASSWORD}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    assert token
    return token


def _patients(http: httpx2.Client, token: str) -> list[dict[str, object]]:
    response = http.get("/api/v1/patients", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    listing: list[dict[str, object]] = response.json()
    return listing


def test_demo_token_for_clinician1_lists_only_team_a_patients(http: httpx2.Client) -> None:
    listing = _patients(http, _token(http, "clinician1"))

    # The seed alternates 12 patients over the two teams: team A has the odd-numbered ones.
    assert sorted(str(p["pseudonym"]) for p in listing) == [
        f"P-{i:04d}" for i in (1, 3, 5, 7, 9, 11)
    ]
    assert all(p["care_teams"] == ["Hypertension Team A"] for p in listing)


def test_demo_token_for_patient1_sees_only_own_record(http: httpx2.Client) -> None:
    others = _patients(http, _token(http, "clinician1"))
    other_id = next(p["id"] for p in others if p["pseudonym"] == "P-0003")
    token = _token(http, "patient1")

    listing = _patients(http, token)
    other = http.get(f"/api/v1/patients/{other_id}", headers={"Authorization": f"Bearer {token}"})

    assert [p["pseudonym"] for p in listing] == ["P-0001"]
    assert other.status_code == 404


def test_demo_portal_login_opens_session_and_greets_clinician(http: httpx2.Client) -> None:
    form = http.get("/portal/login")
    assert form.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert match is not None, form.text

    login = http.post(
        "/portal/login",
        data={"csrf_token": match.group(1), "username": "clinician1", "password": DEMO_PASSWORD},
    )

    assert login.status_code == 303, login.text
    assert login.headers["location"] == "/portal/"
    assert login.cookies.get("clinaiops_session")
    home = http.get("/portal/")
    assert home.status_code == 200
    assert "Dr. Casey Morgan" in home.text


def test_demo_output_points_to_portal_and_demo_logins(demo_server: LiveServer) -> None:
    output = " ".join(demo_server.output().split())

    assert f"{demo_server.base_url}/portal/" in output
    assert "clinician1" in output
    assert DEMO_PASSWORD not in output
