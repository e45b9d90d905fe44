"""Two real server processes on one PostgreSQL database honour each other's state.

Replica A (`clinaiops serve --workers 2`) and replica B (`--workers 1`) listen on two ports
over the same database, as two machines behind a load balancer would. A portal session
opened on A works on B and a sign-out on B ends it on A; a claim taken on A blocks another
clinician on B. A's request metrics are summed over its two workers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.auth.models import User
from app.core.config import Settings
from loops.models import Proposal
from tests.conftest import PASSWORD, World
from tests.live_server import LiveServer, clean_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

METRICS_TOKEN = "r" * 40


@pytest.fixture
def replicas(
    settings: Settings, db_url: str, tmp_path: Path, world: World
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers on the test's database, each with a data dir of its own."""
    assert settings.signing_key_path is not None
    servers: list[LiveServer] = []
    try:
        for name, workers in (("a", "2"), ("b", "1")):
            data_dir = tmp_path / name
            data_dir.mkdir()
            env = clean_env(
                CLINAIOPS_ENVIRONMENT="test",
                CLINAIOPS_DATABASE_URL=db_url,
                CLINAIOPS_DATA_DIR=str(data_dir),
                # Every replica signs the audit trail with the one key (docs/scaling.md).
                CLINAIOPS_SIGNING_KEY_PATH=str(settings.signing_key_path),
                CLINAIOPS_COOKIE_SECURE="false",
                CLINAIOPS_LOOP_WORKER_SECONDS="0",
                CLINAIOPS_METRICS_TOKEN=METRICS_TOKEN,
                CLINAIOPS_ARGON2_TIME_COST="1",
                CLINAIOPS_ARGON2_MEMORY_KIB="1024",
            )
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            server = LiveServer(["serve", "--workers", workers], env, data_dir)
            servers.append(server)
            server.start(timeout=180.0)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in page"
    return match.group(1)


def _token(base_url: str, username: str) -> dict[str, str]:
    response = httpx2.post(
        f"{base_url}/api/v1/auth/token",
        data={"username": username, "password": PASSWORD},
        timeout=10.0,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_replicas_when_session_opened_on_one_honour_it_on_the_other(
    replicas: tuple[LiveServer, LiveServer], world: World
) -> None:
    a, b = replicas
    with httpx2.Client(base_url=a.base_url, timeout=10.0) as on_a:
        page = on_a.get("/portal/login")
        signed_in = on_a.post(
            "/portal/login",
            data={"username": "clina", "password": PASSWORD, "csrf_token": _csrf(page.text)},
        )
        assert signed_in.status_code == 303, signed_in.text
        cookie = on_a.cookies["clinaiops_session"]
    with httpx2.Client(
        base_url=b.base_url, timeout=10.0, cookies={"clinaiops_session": cookie}
    ) as on_b:
        home = on_b.get("/portal/")
        assert home.status_code == 200
        assert world.patients["pa1"].family_name in home.text
        # Sign out on B (the session's CSRF token is in the database, not in A's memory).
        out = on_b.post("/portal/logout", data={"csrf_token": _csrf(home.text)})
        assert out.status_code == 303, out.text
    with httpx2.Client(
        base_url=a.base_url, timeout=10.0, cookies={"clinaiops_session": cookie}
    ) as again_on_a:
        ended = again_on_a.get("/portal/")
        assert ended.status_code == 303
        assert ended.headers["location"].startswith("/portal/login")


def test_replicas_when_claim_taken_on_one_refuse_another_clinician_on_the_other(
    replicas: tuple[LiveServer, LiveServer],
    clina2: User,
    propose: Callable[..., Proposal],
) -> None:
    a, b = replicas
    proposal = propose("pa1")
    url = f"/api/v1/review/proposals/{proposal.id}/claim"

    first = httpx2.post(a.base_url + url, headers=_token(a.base_url, "clina"), timeout=10.0)
    second = httpx2.post(b.base_url + url, headers=_token(b.base_url, "clina2"), timeout=10.0)

    assert first.status_code == 200, first.text
    assert second.status_code == 409
    assert second.json()["code"] == "claimed_by_other"
    assert second.json()["holder"] == "Clina"


def test_replicas_when_server_has_two_workers_sum_their_request_metrics(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, _ = replicas
    # Fresh connections: the kernel hands them to either worker.
    for _ in range(8):
        assert httpx2.get(f"{a.base_url}/healthz", timeout=10.0).status_code == 200

    counts = []
    for _ in range(4):
        scrape = httpx2.get(
            f"{a.base_url}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=10.0,
        )
        assert scrape.status_code == 200, scrape.text
        for family in text_string_to_metric_families(scrape.text):
            for sample in family.samples:
                if (
                    sample.name == "clinaiops_http_requests_total"
                    and sample.labels.get("route") == "/healthz"
                ):
                    counts.append(sample.value)
    # Whichever worker answers each scrape, it reports both workers' requests.
    assert counts == [8.0, 8.0, 8.0, 8.0]
