"""An ended session while submitting a form: sign in again without losing the form."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.portal import drafts
from loops.review.models import Decision
from tests.conftest import PASSWORD, FrozenClock
from tests.portal.conftest import Scene, csrf_of, sign_in


def _draft_field(html: str) -> str:
    match = re.search(r'name="draft" value="([^"]+)"', html)
    assert match, "no kept form on the sign-in page"
    return match.group(1)


def _post_reject_after_idle(
    client: TestClient, scene: Scene, frozen_clock: FrozenClock
) -> tuple[str, object]:
    csrf = sign_in(client, "clina")
    proposal_id = scene.proposal("pa1")
    page = f"/portal/proposals/{proposal_id}"
    frozen_clock.advance(minutes=scene.world.settings.session_idle_minutes, seconds=5)
    r = client.post(
        f"{page}/decide",
        data={
            "csrf_token": csrf,
            "return_to": page,
            "form": "decide-reject",
            "kind": "reject",
            "reason_code": "patient_preference",
            "reason_text": "Patient wants to wait until after the holidays.",
            "password": PASSWORD,
            "meaning_confirmed": "1",
        },
        follow_redirects=False,
    )
    return page, r


def test_post_when_session_expired_asks_to_sign_in_keeping_form(
    client: TestClient,
    scene: Scene,
    frozen_clock: FrozenClock,
    peek: Callable[[Callable[[Any], Any]], Any],
    count_audit: Callable[..., int],
) -> None:
    page, r = _post_reject_after_idle(client, scene, frozen_clock)
    assert r.status_code == 401  # type: ignore[attr-defined]
    assert r.template.name == "login.html"  # type: ignore[attr-defined]
    assert "nothing was done" in r.text  # type: ignore[attr-defined]
    kept = drafts.decode(scene.world.settings.secret_key, _draft_field(r.text))  # type: ignore[attr-defined]
    assert kept is not None
    assert kept["to"] == page
    assert kept["u"] == scene.world.users["clina"].id
    assert kept["f"]["reason_text"] == "Patient wants to wait until after the holidays."
    assert "password" not in kept["f"]
    assert "meaning_confirmed" not in kept["f"]
    assert "csrf_token" not in kept["f"]
    assert peek(lambda s: s.scalars(select(Decision)).first()) is None
    assert count_audit(action="auth.denied", outcome="denied") == 1


def test_sign_in_when_form_kept_returns_to_page_with_fields_restored_once(
    client: TestClient, scene: Scene, frozen_clock: FrozenClock
) -> None:
    page, r = _post_reject_after_idle(client, scene, frozen_clock)
    login = client.post(
        "/portal/login",
        data={
            "username": "clina",
            "password": PASSWORD,
            "csrf_token": csrf_of(r.text),  # type: ignore[attr-defined]
            "draft": _draft_field(r.text),  # type: ignore[attr-defined]
        },
        follow_redirects=False,
    )
    assert login.status_code == 303
    assert login.headers["location"] == page
    restored = client.get(page)
    assert restored.status_code == 200
    draft = restored.context["draft"]  # type: ignore[attr-defined]
    assert draft["form"] == "decide-reject"
    assert draft["reason_code"] == "patient_preference"
    assert "Patient wants to wait until after the holidays." in restored.text
    assert re.search(r'<details class="decide" id="decide-reject" open>', restored.text)
    assert 'value="patient_preference" selected' in restored.text
    assert drafts.DRAFT_COOKIE not in client.cookies  # used once, then deleted
    assert client.get(page).context["draft"] == {}  # type: ignore[attr-defined]


def test_sign_in_when_another_user_signs_in_ignores_kept_form(
    client: TestClient, scene: Scene, frozen_clock: FrozenClock
) -> None:
    _, r = _post_reject_after_idle(client, scene, frozen_clock)
    login = client.post(
        "/portal/login",
        data={
            "username": "clinb",
            "password": PASSWORD,
            "csrf_token": csrf_of(r.text),  # type: ignore[attr-defined]
            "draft": _draft_field(r.text),  # type: ignore[attr-defined]
        },
        follow_redirects=False,
    )
    assert login.status_code == 303
    assert login.headers["location"] == "/portal/"
    assert drafts.DRAFT_COOKIE not in client.cookies


def test_sign_in_when_password_wrong_keeps_the_form_for_the_next_try(
    client: TestClient, scene: Scene, frozen_clock: FrozenClock
) -> None:
    _, r = _post_reject_after_idle(client, scene, frozen_clock)
    kept = _draft_field(r.text)  # type: ignore[attr-defined]
    again = client.post(
        "/portal/login",
        data={
            "username": "clina",
            "password": "wrong",
            "csrf_token": csrf_of(r.text),  # type: ignore[attr-defined]
            "draft": kept,
        },
    )
    assert again.status_code == 401
    assert _draft_field(again.text) == kept


def test_draft_when_tampered_or_expired_is_ignored(scene: Scene) -> None:
    secret = scene.world.settings.secret_key
    token = drafts.encode(secret, user_id=1, to="/portal/queue", fields={"note": "x"})
    assert token is not None
    assert drafts.decode(secret, token) is not None
    payload, _, sig = token.partition(".")
    assert drafts.decode(secret, f"{payload}x.{sig}") is None
    assert drafts.decode("another-secret-of-at-least-32-chars!!", token) is None
    assert drafts.decode(secret, "garbage") is None


def test_draft_when_too_large_for_a_cookie_is_not_made() -> None:
    noise = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1900))
    fields = {f"f{i}": noise for i in range(4)}
    assert drafts.encode("s" * 32, user_id=1, to="/portal/", fields=fields) is None


def test_resume_when_session_alive_keeps_fields_and_acts_on_nothing(
    client: TestClient, scene: Scene
) -> None:
    csrf = sign_in(client, "clina")
    alert_id = scene.cast.alerts["pa1"].id
    r = client.post(
        f"/portal/alerts/{alert_id}/acknowledge",
        data={
            "csrf_token": csrf,
            "return_to": "/portal/alerts",
            "form": f"ack-{alert_id}",
            "note": "left a voicemail",
            "_resume": "1",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/portal/alerts"
    inbox = client.get("/portal/alerts")
    assert inbox.context["rows"][0].alert.status == "open"  # type: ignore[attr-defined]
    assert 'value="left a voicemail"' in inbox.text


def test_resume_when_session_expired_asks_to_sign_in(
    client: TestClient, scene: Scene, frozen_clock: FrozenClock
) -> None:
    csrf = sign_in(client, "clina")
    url = f"/portal/patients/{scene.patient('pa1')}/envelope"
    frozen_clock.advance(minutes=scene.world.settings.session_idle_minutes, seconds=5)
    # The session is still stored as live: the idle guard's post does not check it, and the
    # page it returns to does (and asks to sign in, keeping the draft cookie).
    r = client.post(
        url,
        data={
            "csrf_token": csrf,
            "return_to": url,
            "form": "envelope",
            "min_confidence": "0.93",
            "reason": "half-written",
            "_resume": "1",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = client.get(url, follow_redirects=False)
    assert page.status_code == 303
    assert "reason=session_expired" in page.headers["location"]
    login = client.get(page.headers["location"])
    restored = client.post(
        "/portal/login",
        data={
            "username": "clina",
            "password": PASSWORD,
            "csrf_token": csrf_of(login.text),
            "next": url,
        },
    )
    assert restored.url.path == url
    assert restored.context["form"]["min_confidence"] == "0.93"  # type: ignore[attr-defined]
    assert restored.context["reason"] == "half-written"  # type: ignore[attr-defined]
