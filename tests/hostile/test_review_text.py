"""Markup and SQL in a clinician's decision note and an alert's acknowledgement note, submitted
through the API, then shown escaped on the proposal and alerts pages (a 200, no live markup)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from loops.models import Alert, Proposal
from tests.conftest import World
from tests.review import conftest as review
from tests.review.conftest import decision_body

# The review suite's fixtures: queued proposals and open alerts (with regimens and envelopes).
regimens = review.regimens
propose = review.propose
raise_alert = review.raise_alert

TEXTS = [
    pytest.param("<script>alert('x')</script><img src=x onerror=alert(1)>", id="html"),
    pytest.param("\"'><svg/onload=alert(2)>", id="attribute-break"),
    pytest.param("'; DROP TABLE decisions; -- \" OR 1=1", id="sql"),
]
LIVE = ("<script>alert", "<img src=x", "<svg/onload")


def _shown_escaped(client: TestClient, path: str, text: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert str(escape(text)) in r.text, text
    for raw in LIVE:
        assert raw not in r.text


@pytest.mark.parametrize("text", TEXTS)
def test_proposal_page_when_decision_note_holds_markup_shows_it_escaped(
    client: TestClient,
    world: World,
    propose: Callable[..., Proposal],
    browser: Callable[[str], tuple[TestClient, str]],
    text: str,
) -> None:
    p = propose("pa1")
    body = decision_body("reject", reason_code="other", reason_text=text)
    r = client.post(
        f"/api/v1/review/proposals/{p.id}/decision", json=body, headers=world.auth("clina")
    )
    assert r.status_code == 201, r.text
    page, _ = browser("clina")
    _shown_escaped(page, f"/portal/proposals/{p.id}", text)


@pytest.mark.parametrize("text", TEXTS)
def test_alerts_page_when_acknowledgement_note_holds_markup_shows_it_escaped(
    client: TestClient,
    world: World,
    raise_alert: Callable[..., Alert],
    browser: Callable[[str], tuple[TestClient, str]],
    text: str,
) -> None:
    alert = raise_alert("pa1")
    r = client.post(
        f"/api/v1/alerts/{alert.id}/acknowledge", json={"note": text}, headers=world.auth("clina")
    )
    assert r.status_code == 200, r.text
    page, _ = browser("clina")
    _shown_escaped(page, "/portal/alerts?status=all", text)
