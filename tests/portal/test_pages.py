"""The review pages over HTTP: templates by name and context, signatures on the record and its
print view, CSRF refusals, 404 outside the care team, conflicts, and the audit trail."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.portal.views import PLOTLY_JS, VENDOR_CACHE
from loops.models import Alert, Proposal
from loops.review.models import Decision
from policies.models import SafetyEnvelope
from tests.conftest import PASSWORD, World
from tests.portal.conftest import Scene, sign_in

Peek = Callable[[Callable[[Any], Any]], Any]


def _decide(
    client: TestClient, csrf: str, proposal_id: str, kind: str = "approve", **fields: str
) -> object:
    data = {"csrf_token": csrf, "kind": kind, "password": PASSWORD, "meaning_confirmed": "1"}
    data.update(fields)
    return client.post(f"/portal/proposals/{proposal_id}/decide", data=data, follow_redirects=False)


def _template(response: object) -> str:
    name: str = response.template.name  # type: ignore[attr-defined]
    return name


def _context(response: object) -> dict[str, object]:
    context: dict[str, object] = response.context  # type: ignore[attr-defined]
    return context


# ------------------------------------------------------------------ pages and their context


def test_panel_when_clinician_lists_only_care_team_patients(
    client: TestClient, scene: Scene
) -> None:
    sign_in(client, "clina")
    r = client.get("/portal/panel")
    assert r.status_code == 200
    assert _template(r) == "panel.html"
    rows = _context(r)["rows"]
    assert isinstance(rows, list)
    assert {row.patient.id for row in rows} == {scene.patient("pa1"), scene.patient("pa2")}
    pa1 = next(row for row in rows if row.patient.id == scene.patient("pa1"))
    assert pa1.crisis_alert
    assert pa1.pending_proposals == 1
    assert pa1.control == "uncontrolled"
    assert 'aria-current="page">Panel' in r.text


def test_panel_when_searched_and_filtered_narrows_rows(client: TestClient, scene: Scene) -> None:
    sign_in(client, "clina")
    by_name = client.get("/portal/panel", params={"q": "Familypa2"})
    with_alerts = client.get("/portal/panel", params={"status": "open_alerts"})
    unknown_filter = client.get("/portal/panel", params={"status": "nonsense"})
    assert [row.patient.id for row in _context(by_name)["rows"]] == [scene.patient("pa2")]  # type: ignore[attr-defined]
    assert len(_context(with_alerts)["rows"]) == 2  # type: ignore[arg-type]
    assert _context(unknown_filter)["status"] == ""


def test_queue_when_pending_orders_crisis_first_and_marks_overdue(
    client: TestClient, scene: Scene
) -> None:
    sign_in(client, "clina")
    r = client.get("/portal/queue")
    assert _template(r) == "queue.html"
    items = _context(r)["items"]
    assert isinstance(items, list)
    assert [i.proposal.id for i in items] == [scene.proposal("pa1"), scene.proposal("pa2")]
    assert items[0].risk == 3
    assert items[0].overdue
    assert not items[1].overdue
    assert _context(r)["total"] == 2
    assert 'class="overdue"' in r.text
    assert "crisis alert" in r.text


def test_proposal_page_when_pending_shows_charts_explanation_and_decide_forms(
    client: TestClient, scene: Scene
) -> None:
    sign_in(client, "clina")
    r = client.get(f"/portal/proposals/{scene.proposal('pa1')}")
    assert r.status_code == 200
    assert _template(r) == "proposal.html"
    context = _context(r)
    detail = context["d"]
    assert detail.proposal.id == scene.proposal("pa1")  # type: ignore[attr-defined]
    charts = context["charts"]
    assert isinstance(charts, dict)
    names = [trace["name"] for trace in charts["bp"]["data"]]
    assert "Systolic, validated cuff" in names
    assert "Systolic, cuffless (not used for titration)" in names
    assert {s["type"] for s in charts["bp"]["layout"]["shapes"]} == {"rect", "line"}
    assert charts["shap"]["data"][0]["orientation"] == "h"
    assert context["pending"] is True
    for kind in ("approve", "modify", "reject"):
        assert f'id="decide-{kind}"' in r.text
    # Without JavaScript: summaries and tables; with it: plotly from the installed package.
    assert "Readings as a table" in r.text
    assert "7-day home SBP mean" in r.text
    assert "confidence_below_envelope" in r.text
    assert "/portal/static/vendor/plotly.min.js" in r.text
    assert "cdn" not in r.text.lower()


def test_plotly_js_when_requested_is_served_from_the_installed_package(
    client: TestClient,
) -> None:
    r = client.get("/portal/static/vendor/plotly.min.js")
    assert r.status_code == 200
    assert r.content == PLOTLY_JS.read_bytes()
    assert r.headers["cache-control"] == VENDOR_CACHE  # no patient data: browsers may keep it
    assert client.get("/portal/static/portal.js").headers["cache-control"] == "no-store"
    assert client.get("/portal/static/vendor/../../views.py").status_code == 404


def test_alerts_when_crisis_open_pins_it_first(client: TestClient, scene: Scene) -> None:
    sign_in(client, "clina")
    r = client.get("/portal/alerts")
    assert _template(r) == "alerts.html"
    rows = _context(r)["rows"]
    assert isinstance(rows, list)
    assert rows[0].pinned
    assert rows[0].alert.type == "hypertensive_crisis"
    assert [row.patient.id for row in rows] == [scene.patient("pa1"), scene.patient("pa2")]


def test_home_when_clinician_shows_review_navigation(client: TestClient, world: World) -> None:
    sign_in(client, "clina")
    page = client.get("/portal/").text
    for link in ("/portal/panel", "/portal/queue", "/portal/alerts"):
        assert f'href="{link}"' in page


def test_home_when_patient_hides_review_navigation(client: TestClient, world: World) -> None:
    sign_in(client, "pa1")
    assert 'href="/portal/queue"' not in client.get("/portal/").text


# ------------------------------------------------------------------ deciding and signatures


def test_decide_when_approved_shows_signature_on_record_and_print_view(
    client: TestClient, scene: Scene, world: World
) -> None:
    csrf = sign_in(client, "clina")
    proposal_id = scene.proposal("pa1")
    r = _decide(client, csrf, proposal_id)
    assert r.status_code == 303  # type: ignore[attr-defined]
    record = client.get(f"/portal/proposals/{proposal_id}")
    printed = client.get(f"/portal/proposals/{proposal_id}/print")
    decision = _context(record)["d"].decision  # type: ignore[attr-defined]
    assert decision is not None
    assert _template(printed) == "proposal_print.html"
    assert _context(printed)["d"].decision.id == decision.id  # type: ignore[attr-defined]
    signed_at = decision.signed_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    for page in (record.text, printed.text):
        signature = page[page.index('class="signature"') :]
        assert "Clina" in signature  # the signer's printed name
        assert "approved as prescriber" in signature
        assert signed_at in signature
        assert decision.record_hash in signature
    assert 'id="decide-approve"' not in record.text


def test_decide_when_modified_records_step_and_reason(client: TestClient, scene: Scene) -> None:
    csrf = sign_in(client, "clina")
    proposal_id = scene.proposal("pa1")
    r = _decide(
        client,
        csrf,
        proposal_id,
        "modify",
        decided_step="0",
        reason_code="recent_readings",
        reason_text="hold two more weeks",
    )
    assert r.status_code == 303  # type: ignore[attr-defined]
    decision = _context(client.get(f"/portal/proposals/{proposal_id}"))["d"].decision  # type: ignore[attr-defined]
    assert (decision.kind, decision.decided_step, decision.reason_code) == (
        "modify",
        0,
        "recent_readings",
    )
    assert decision.meaning == "modified as prescriber"


def test_decide_when_rejected_without_reason_is_refused_with_input_kept(
    client: TestClient, scene: Scene, count_audit: Callable[..., int]
) -> None:
    csrf = sign_in(client, "clina")
    r = _decide(client, csrf, scene.proposal("pa1"), "reject", reason_text="my note")
    assert r.status_code == 422  # type: ignore[attr-defined]
    assert _template(r) == "proposal.html"
    assert _context(r)["error"]
    assert _context(r)["draft"]["reason_text"] == "my note"  # type: ignore[index]
    assert count_audit(action="proposal.decide", outcome="failure") == 1


def test_decide_when_password_wrong_decides_nothing_and_audits_denial(
    client: TestClient, scene: Scene, peek: Peek, count_audit: Callable[..., int]
) -> None:
    csrf = sign_in(client, "clina")
    proposal_id = scene.proposal("pa1")
    r = _decide(client, csrf, proposal_id, password="wrong-password!")
    assert r.status_code == 403  # type: ignore[attr-defined]
    assert _template(r) == "proposal.html"
    assert "password is wrong" in _context(r)["error"]  # type: ignore[operator]
    assert 'id="decide-error"' in r.text  # type: ignore[attr-defined]
    assert peek(lambda s: s.get(Proposal, proposal_id).status) == "pending_review"  # type: ignore[union-attr]
    assert peek(lambda s: s.scalars(select(Decision)).first()) is None
    assert count_audit(action="proposal.decide", outcome="denied") == 1


def test_decide_when_meaning_not_confirmed_is_refused(client: TestClient, scene: Scene) -> None:
    csrf = sign_in(client, "clina")
    r = _decide(client, csrf, scene.proposal("pa1"), meaning_confirmed="")
    assert r.status_code == 403  # type: ignore[attr-defined]
    assert "confirm the meaning" in _context(r)["error"]  # type: ignore[operator]


def test_decide_when_already_decided_is_409_naming_signer(client: TestClient, scene: Scene) -> None:
    csrf = sign_in(client, "clina")
    proposal_id = scene.proposal("pa1")
    _decide(client, csrf, proposal_id)
    again = _decide(client, csrf, proposal_id, "reject", reason_code="other", reason_text="x")
    assert again.status_code == 409  # type: ignore[attr-defined]
    assert _template(again) == "conflict.html"
    assert _context(again)["conflict"].code == "already_decided"  # type: ignore[attr-defined]
    assert "Clina" in again.text  # type: ignore[attr-defined]


# ------------------------------------------------------------------ CSRF and scope


@pytest.mark.parametrize(
    "path",
    [
        "/portal/proposals/{pa1}/decide",
        "/portal/queue/{pa1}/claim",
        "/portal/queue/{pa1}/release",
        "/portal/patients/{patient}/envelope",
        "/portal/alerts/{alert}/acknowledge",
        "/portal/alerts/{alert}/escalate",
    ],
)
def test_post_when_csrf_token_missing_or_wrong_is_refused(
    client: TestClient, scene: Scene, path: str, peek: Peek, count_audit: Callable[..., int]
) -> None:
    sign_in(client, "clina")
    url = path.format(
        pa1=scene.proposal("pa1"),
        patient=scene.patient("pa1"),
        alert=scene.cast.alerts["pa1"].id,
    )
    fields = {"kind": "approve", "password": PASSWORD, "meaning_confirmed": "1", "note": "n"}
    missing = client.post(url, data=fields, follow_redirects=False)
    wrong = client.post(url, data={**fields, "csrf_token": "forged"}, follow_redirects=False)
    for r in (missing, wrong):
        assert r.status_code == 403
        assert _template(r) == "error.html"
        assert 'data-code="csrf_failed"' in r.text
    assert count_audit(action="auth.denied", outcome="denied") == 2
    assert peek(lambda s: s.scalars(select(Decision)).first()) is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/portal/proposals/{pa1}"),
        ("GET", "/portal/proposals/{pa1}/print"),
        ("POST", "/portal/proposals/{pa1}/decide"),
        ("POST", "/portal/queue/{pa1}/claim"),
        ("POST", "/portal/queue/{pa1}/release"),
        ("GET", "/portal/patients/{patient}/envelope"),
        ("POST", "/portal/patients/{patient}/envelope"),
        ("POST", "/portal/alerts/{alert}/acknowledge"),
        ("POST", "/portal/alerts/{alert}/escalate"),
    ],
)
def test_patient_pages_when_outside_care_team_are_404(
    client: TestClient, scene: Scene, method: str, path: str
) -> None:
    csrf = sign_in(client, "clinb")
    url = path.format(
        pa1=scene.proposal("pa1"),
        patient=scene.patient("pa1"),
        alert=scene.cast.alerts["pa1"].id,
    )
    data = {"csrf_token": csrf, "kind": "approve", "password": PASSWORD, "note": "n"}
    r = client.request(method, url, data=data if method == "POST" else None)
    assert r.status_code == 404
    assert _template(r) == "error.html"
    assert "Familypa1" not in r.text


def test_proposal_page_when_id_unknown_is_404_like_outside_scope(
    client: TestClient, scene: Scene
) -> None:
    sign_in(client, "clina")
    r = client.get("/portal/proposals/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 404
    assert _template(r) == "error.html"


def test_queue_when_other_team_shows_none_of_their_items(client: TestClient, scene: Scene) -> None:
    sign_in(client, "clinb")
    items = _context(client.get("/portal/queue"))["items"]
    assert [i.proposal.id for i in items] == [scene.proposal("pb1")]  # type: ignore[attr-defined]


def test_review_pages_when_patient_signed_in_are_refused(client: TestClient, scene: Scene) -> None:
    sign_in(client, "pa1")
    assert client.get("/portal/queue").status_code == 403
    assert client.get(f"/portal/proposals/{scene.proposal('pa1')}").status_code == 403


# ------------------------------------------------------------------ claims


def test_claim_when_held_by_colleague_is_409_naming_holder(
    client: TestClient, scene: Scene, colleague: str, app: object
) -> None:
    proposal_id = scene.proposal("pa1")
    csrf = sign_in(client, "clina")
    first = client.post(
        f"/portal/queue/{proposal_id}/claim", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert first.status_code == 303
    assert first.headers["location"] == f"/portal/proposals/{proposal_id}"
    with TestClient(app) as other:  # type: ignore[arg-type]
        other_csrf = sign_in(other, colleague)
        second = other.post(f"/portal/queue/{proposal_id}/claim", data={"csrf_token": other_csrf})
        assert second.status_code == 409
        assert _template(second) == "conflict.html"
        assert "Clina" in second.text
        queue = other.get("/portal/queue")
        assert "claimed by Clina" in queue.text
        refused = _decide(other, other_csrf, proposal_id)
        assert refused.status_code == 409  # type: ignore[attr-defined]


def test_release_when_claimed_frees_the_item(client: TestClient, scene: Scene) -> None:
    proposal_id = scene.proposal("pa1")
    csrf = sign_in(client, "clina")
    client.post(f"/portal/queue/{proposal_id}/claim", data={"csrf_token": csrf})
    r = client.post(
        f"/portal/queue/{proposal_id}/release", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert r.status_code == 303
    queue = client.get(r.headers["location"])
    assert "Claim released" in queue.text
    assert _context(queue)["items"][0].claim is None  # type: ignore[index]


# ------------------------------------------------------------------ envelope editor


def _envelope_form(csrf: str, expected: str, **overrides: object) -> dict[str, object]:
    form: dict[str, object] = {
        "csrf_token": csrf,
        "expected_version": expected,
        "auto_actions": ["hold", "decrease"],
        "min_dose_step": "0",
        "max_dose_step": "1",
        "max_step_change": "1",
        "min_confidence": "0.9",
        "min_cuff_readings_7d": "14",
        "min_cuff_days_7d": "5",
        "min_days_since_change": "21",
        "max_auto_changes_per_30d": "1",
        "block_on_open_alert": "1",
        "reason": "Tighter after the crisis alert",
    }
    form.update(overrides)
    return form


def test_envelope_page_when_opened_prefills_current_version_and_template(
    client: TestClient, scene: Scene
) -> None:
    sign_in(client, "clina")
    r = client.get(f"/portal/patients/{scene.patient('pa1')}/envelope")
    assert _template(r) == "envelope.html"
    context = _context(r)
    assert context["expected_version"] == 1
    assert context["form"] == context["current"]
    assert context["template"]["auto_actions"] == ["decrease", "hold", "increase"]  # type: ignore[index]
    templated = _context(client.get(f"/portal/patients/{scene.patient('pa1')}/envelope?template=1"))
    assert templated["form"] == templated["template"]


def test_envelope_edit_when_saved_adds_version_and_shows_rerouted(
    client: TestClient, scene: Scene, peek: Peek, count_audit: Callable[..., int]
) -> None:
    csrf = sign_in(client, "clina")
    url = f"/portal/patients/{scene.patient('pa1')}/envelope"
    r = client.post(url, data=_envelope_form(csrf, "1"))
    assert r.status_code == 200, r.text
    context = _context(r)
    assert context["saved"] is True
    assert [x.proposal.id for x in context["rerouted"]] == [scene.proposal("pa1")]  # type: ignore[attr-defined]
    assert 'id="rerouted"' in r.text
    versions = peek(
        lambda s: [
            e.version
            for e in s.scalars(
                select(SafetyEnvelope).where(SafetyEnvelope.patient_id == scene.patient("pa1"))
            )
        ]
    )
    assert sorted(versions) == [1, 2]
    assert count_audit(action="envelope.write", outcome="success") == 1


def test_envelope_edit_when_stale_is_409_keeping_input_and_naming_editor(
    client: TestClient, scene: Scene, colleague: str, app: object
) -> None:
    url = f"/portal/patients/{scene.patient('pa1')}/envelope"
    csrf = sign_in(client, "clina")
    client.get(url)  # clina loads version 1
    with TestClient(app) as other:  # type: ignore[arg-type]
        other_csrf = sign_in(other, colleague)
        saved = other.post(url, data=_envelope_form(other_csrf, "1", reason="colleague"))
        assert saved.status_code == 200
    r = client.post(url, data=_envelope_form(csrf, "1", min_confidence="0.95", reason="mine"))
    assert r.status_code == 409
    context = _context(r)
    assert context["stale"].code == "stale_envelope"  # type: ignore[attr-defined]
    assert context["stale"].holder == "Dr. Second Colleague"  # type: ignore[attr-defined]
    assert context["form"]["min_confidence"] == "0.95"  # type: ignore[index]
    assert context["reason"] == "mine"
    assert context["expected_version"] == 2  # resubmittable against the version now in force
    assert "Dr. Second Colleague" in r.text


def test_envelope_edit_when_rules_invalid_is_422_naming_field(
    client: TestClient, scene: Scene
) -> None:
    csrf = sign_in(client, "clina")
    url = f"/portal/patients/{scene.patient('pa1')}/envelope"
    r = client.post(url, data=_envelope_form(csrf, "1", min_cuff_readings_7d="3"))
    assert r.status_code == 422
    assert _context(r)["error_field"] == "min_cuff_readings_7d"
    assert _context(r)["form"]["min_cuff_readings_7d"] == "3"  # type: ignore[index]


# ------------------------------------------------------------------ alerts


def test_acknowledge_when_noted_records_time_and_shows_it(
    client: TestClient, scene: Scene, peek: Peek
) -> None:
    csrf = sign_in(client, "clina")
    alert_id = scene.cast.alerts["pa1"].id
    r = client.post(
        f"/portal/alerts/{alert_id}/acknowledge",
        data={"csrf_token": csrf, "note": "called the patient"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    inbox = client.get(r.headers["location"])
    alert = peek(lambda s: s.get(Alert, alert_id))
    assert alert is not None
    assert alert.acknowledged_at is not None
    assert alert.acknowledgement_note == "called the patient"
    assert alert.acknowledged_at.strftime("%Y-%m-%d %H:%M UTC") in inbox.text
    assert "Alert acknowledged" in inbox.text
    again = client.post(f"/portal/alerts/{alert_id}/acknowledge", data={"csrf_token": csrf})
    assert again.status_code == 409
    assert _context(again)["conflict"].code == "already_acknowledged"  # type: ignore[attr-defined]


def test_escalate_when_note_missing_is_422_and_when_given_raises_level(
    client: TestClient, scene: Scene, peek: Peek
) -> None:
    csrf = sign_in(client, "clina")
    alert_id = scene.cast.alerts["pa2"].id
    refused = client.post(f"/portal/alerts/{alert_id}/escalate", data={"csrf_token": csrf})
    assert refused.status_code == 422
    assert _context(refused)["error_alert"] == alert_id
    done = client.post(
        f"/portal/alerts/{alert_id}/escalate",
        data={"csrf_token": csrf, "note": "to Dr. Senior"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert peek(lambda s: s.get(Alert, alert_id).escalation_level) == 1  # type: ignore[union-attr]


# ------------------------------------------------------------------ audit of reads


def test_pages_when_read_are_audited_with_patients_shown(
    client: TestClient, scene: Scene, count_audit: Callable[..., int]
) -> None:
    sign_in(client, "clina")
    client.get("/portal/panel")
    client.get("/portal/queue")
    client.get("/portal/alerts")
    client.get(f"/portal/proposals/{scene.proposal('pa1')}")
    client.get(f"/portal/proposals/{scene.proposal('pa1')}/print")
    client.get(f"/portal/patients/{scene.patient('pa1')}/envelope")
    for action in (
        "review.panel",
        "review.queue",
        "alert.inbox",
        "proposal.read",
        "proposal.print",
        "envelope.read",
    ):
        assert count_audit(action=action, outcome="success") == 1, action
    assert count_audit(action="proposal.read", patient_id=scene.patient("pa1")) == 1


def test_login_page_when_draft_present_carries_it_hidden(client: TestClient) -> None:
    page = client.get("/portal/login")
    assert not re.search(r'name="draft"', page.text)
