"""Portal cookie sessions: sign-in with CSRF, idle logoff, CSRF on unsafe requests."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.conftest import PASSWORD, FrozenClock, World


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in page"
    return match.group(1)


def _sign_in(client: TestClient, username: str, next_page: str = "/portal/") -> str:
    page = client.get("/portal/login")
    r = client.post(
        "/portal/login",
        data={
            "username": username,
            "password": PASSWORD,
            "csrf_token": _csrf(page.text),
            "next": next_page,
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == next_page
    assert "clinaiops_session" in client.cookies
    return _csrf(client.get("/portal/").text)


def test_portal_when_signed_out_redirects_to_login(client: TestClient) -> None:
    r = client.get("/portal/", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/portal/login?next=/portal/")


def test_login_when_correct_opens_session_showing_own_patients(
    client: TestClient, world: World
) -> None:
    _sign_in(client, "clina")
    home = client.get("/portal/")
    assert home.status_code == 200
    assert "Clina" in home.text
    assert world.patients["pa1"].family_name in home.text
    assert world.patients["pb1"].family_name not in home.text
    cookie = next(c for c in client.cookies.jar if c.name == "clinaiops_session")
    assert cookie.has_nonstandard_attr("HttpOnly")


def test_login_when_csrf_missing_is_refused(client: TestClient, world: World) -> None:
    client.get("/portal/login")
    r = client.post(
        "/portal/login", data={"username": "clina", "password": PASSWORD}, follow_redirects=False
    )
    assert r.status_code == 403
    assert "clinaiops_session" not in client.cookies


def test_login_when_password_wrong_shows_form_again(client: TestClient, world: World) -> None:
    page = client.get("/portal/login")
    r = client.post(
        "/portal/login",
        data={"username": "clina", "password": "bad", "csrf_token": _csrf(page.text)},
    )
    assert r.status_code == 401
    assert "Invalid username or password" in r.text
    assert "clinaiops_session" not in client.cookies


def test_login_when_next_is_offsite_stays_in_portal(client: TestClient, world: World) -> None:
    page = client.get("/portal/login")
    r = client.post(
        "/portal/login",
        data={
            "username": "clina",
            "password": PASSWORD,
            "csrf_token": _csrf(page.text),
            "next": "https://evil.example/",
        },
        follow_redirects=False,
    )
    assert r.headers["location"] == "/portal/"


def test_logout_when_csrf_missing_is_refused(client: TestClient, world: World) -> None:
    _sign_in(client, "clina")
    r = client.post("/portal/logout", follow_redirects=False)
    assert r.status_code == 403
    assert r.json()["code"] == "csrf_failed"
    assert client.get("/portal/", follow_redirects=False).status_code == 200


def test_logout_when_csrf_given_ends_session(client: TestClient, world: World) -> None:
    csrf = _sign_in(client, "clina")
    old_cookie = client.cookies["clinaiops_session"]
    r = client.post("/portal/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.set("clinaiops_session", old_cookie)
    again = client.get("/portal/", follow_redirects=False)
    assert again.status_code == 303
    assert "reason=session_invalid" in again.headers["location"]


def test_session_when_idle_too_long_asks_to_sign_in_again(
    client: TestClient, world: World, frozen_clock: FrozenClock
) -> None:
    _sign_in(client, "clina")
    frozen_clock.advance(minutes=world.settings.session_idle_minutes, seconds=1)
    r = client.get("/portal/", follow_redirects=False)
    assert r.status_code == 303
    assert "reason=session_expired" in r.headers["location"]
    login = client.get(r.headers["location"])
    assert "inactivity" in login.text


def test_session_when_active_is_kept_alive(
    client: TestClient, world: World, frozen_clock: FrozenClock
) -> None:
    _sign_in(client, "clina")
    for _ in range(3):
        frozen_clock.advance(minutes=world.settings.session_idle_minutes - 1)
        assert client.get("/portal/", follow_redirects=False).status_code == 200


def test_cookie_on_api_when_unsafe_needs_csrf_header(client: TestClient, world: World) -> None:
    csrf = _sign_in(client, "admin")
    assert client.get("/api/v1/me").json()["username"] == "admin"
    refused = client.post("/api/v1/audit/checkpoints")
    assert refused.status_code == 403
    assert refused.json()["code"] == "csrf_failed"
    ok = client.post("/api/v1/audit/checkpoints", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201


def test_session_when_user_disabled_is_refused(client: TestClient, world: World) -> None:
    _sign_in(client, "clina")
    uid = world.users["clina"].id
    admin = TestClient(client.app)
    assert (
        admin.post(f"/api/v1/admin/users/{uid}/disable", headers=world.auth("admin")).status_code
        == 200
    )
    r = client.get("/portal/", follow_redirects=False)
    assert r.status_code == 303
