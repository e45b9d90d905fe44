"""Markup and SQL in the free text outside the issue-6 fields (test_portal covers goals, plans,
visits and messages): an envelope's reason, a symptom note and a patient's names, each
submitted through the API, then shown escaped on the portal page its reader opens (a 200, the
text intact as text, no live markup)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from tests.hostile.conftest import Caller, Scene

TEXTS = [
    pytest.param("<script>alert('x')</script><img src=x onerror=alert(1)>", id="html"),
    pytest.param("\"'><svg/onload=alert(2)>", id="attribute-break"),
    pytest.param("'; DROP TABLE patients; -- \" OR 1=1", id="sql"),
]
LIVE = ("<script>alert", "<img src=x", "<svg/onload")


def _shown_escaped(page: str, text: str) -> None:
    assert str(escape(text)) in page, text
    for raw in LIVE:
        assert raw not in page


def _page(client: TestClient, path: str) -> str:
    r = client.get(path)
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/html")
    return r.text


@pytest.mark.parametrize("text", TEXTS)
def test_envelope_page_when_reason_holds_markup_shows_it_escaped(
    scene: Scene,
    as_: Callable[[str], Caller],
    browser: Callable[[str], tuple[TestClient, str]],
    text: str,
) -> None:
    pid = scene.pid("pa1")
    clina = as_("clina")
    history = clina("GET", f"/api/v1/patients/{pid}/envelopes").json()
    body = {
        "rules": history["template"],
        "reason": text,
        "expected_version": history["in_force_version"],
    }
    r = clina("PUT", f"/api/v1/patients/{pid}/envelope", json=body)
    assert r.status_code == 200, r.text
    client, _ = browser("clina")
    _shown_escaped(_page(client, f"/portal/patients/{pid}/envelope"), text)


@pytest.mark.parametrize("text", TEXTS)
def test_previsit_page_when_symptom_note_holds_markup_shows_it_escaped(
    scene: Scene,
    as_: Callable[[str], Caller],
    browser: Callable[[str], tuple[TestClient, str]],
    text: str,
) -> None:
    r = as_("pa1")("POST", "/api/v1/me/symptoms", json={"symptoms": [], "note": text})
    assert r.status_code == 201, r.text
    client, _ = browser("clina")
    _shown_escaped(_page(client, f"/portal/patients/{scene.pid('pa1')}/previsit"), text)


@pytest.mark.parametrize("text", TEXTS)
def test_panel_when_patient_name_holds_markup_shows_it_escaped(
    scene: Scene,
    as_: Callable[[str], Caller],
    browser: Callable[[str], tuple[TestClient, str]],
    text: str,
) -> None:
    admin = as_("admin")
    team_id = scene.world.teams["A"].id
    patient = {
        "pseudonym": "P-HOSTILE",
        "given_name": text,
        "family_name": text,
        "birth_date": "1961-02-03",
        "sex": "female",
        "care_team_id": team_id,
    }
    r = admin("POST", "/api/v1/admin/patients", json=patient)
    assert r.status_code == 201, r.text
    client, _ = browser("clina")
    _shown_escaped(_page(client, "/portal/panel"), text)
