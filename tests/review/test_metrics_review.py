"""GET /metrics counts the review queue and proposals by route from the database."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from app.core.config import Settings
from app.main import create_app
from loops.models import Proposal, ProposalStatus
from tests.conftest import World

TOKEN = "q" * 40


def test_scrape_when_proposals_queued_and_delivered_counts_queue_and_routes(
    settings: Settings, engine: Engine, world: World, propose: Callable[..., Proposal]
) -> None:
    propose("pa1")
    propose("pa2")
    delivered = propose("pb1", "hold", status=ProposalStatus.DELIVERED)
    delivered.route = "auto_deliver"
    world.session.commit()
    app = create_app(settings.model_copy(update={"metrics_token": TOKEN}), engine)

    with TestClient(app) as client:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 200
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert values[("clinaiops_queue_depth", (("queue", "review"),))] == 2
    assert values[("clinaiops_proposals_total", (("route", "clinician_review"),))] == 2
    assert values[("clinaiops_proposals_total", (("route", "auto_deliver"),))] == 1
