"""Authentication: tokens, throttling and lockout, expiry, disabled users, device keys."""

from __future__ import annotations

from collections.abc import Callable

import jwt
import pytest
from fastapi.testclient import TestClient

from tests.conftest import PASSWORD, FrozenClock, World


def test_token_when_password_correct_returns_bearer_with_scopes(
    client: TestClient, world: World
) -> None:
    response = client.post("/api/v1/auth/token", data={"username": "clina", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == world.settings.access_token_minutes * 60
    assert "user/Patient.rs" in body["scope"].split()
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json()["username"] == "clina"


def test_me_when_patient_reports_patient_id(client: TestClient, world: World) -> None:
    me = client.get("/api/v1/me", headers=world.auth("pa1")).json()
    assert me["role"] == "patient"
    assert me["patient_id"] == world.patients["pa1"].id


def test_token_when_password_wrong_is_401_and_audited(
    client: TestClient, world: World, count_audit: Callable[..., int]
) -> None:
    response = client.post("/api/v1/auth/token", data={"username": "clina", "password": "nope"})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_credentials"
    assert count_audit(action="auth.login", outcome="denied") == 1


def test_token_when_failures_repeat_throttles_then_locks(
    client: TestClient, world: World, frozen_clock: FrozenClock
) -> None:
    s = world.settings
    for _ in range(s.login_throttle_after):
        assert (
            client.post(
                "/api/v1/auth/token", data={"username": "clina", "password": "bad"}
            ).status_code
            == 401
        )
    throttled = client.post("/api/v1/auth/token", data={"username": "clina", "password": PASSWORD})
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "login_throttled"
    assert int(throttled.headers["retry-after"]) >= 1
    # Keep failing, each time after the wait, until the account locks.
    status = 0
    for _ in range(s.lockout_threshold):
        frozen_clock.advance(seconds=s.login_throttle_max_seconds + 1)
        r = client.post("/api/v1/auth/token", data={"username": "clina", "password": "bad"})
        status = r.status_code
        if status == 423:
            break
    assert status == 423
    frozen_clock.advance(seconds=s.login_throttle_max_seconds + 1)
    locked = client.post("/api/v1/auth/token", data={"username": "clina", "password": PASSWORD})
    assert locked.status_code == 423
    assert locked.json()["code"] == "account_locked"
    frozen_clock.advance(minutes=s.lockout_minutes, seconds=1)
    assert (
        client.post(
            "/api/v1/auth/token", data={"username": "clina", "password": PASSWORD}
        ).status_code
        == 200
    )


def test_token_when_username_unknown_throttles_alike(client: TestClient, world: World) -> None:
    codes = []
    for _ in range(world.settings.login_throttle_after + 1):
        r = client.post("/api/v1/auth/token", data={"username": "ghost", "password": "bad"})
        codes.append(r.status_code)
    assert codes == [401] * world.settings.login_throttle_after + [429]


def test_token_when_success_resets_failures(client: TestClient, world: World) -> None:
    for _ in range(world.settings.login_throttle_after - 1):
        client.post("/api/v1/auth/token", data={"username": "clina", "password": "bad"})
    assert (
        client.post(
            "/api/v1/auth/token", data={"username": "clina", "password": PASSWORD}
        ).status_code
        == 200
    )
    for _ in range(world.settings.login_throttle_after - 1):
        r = client.post("/api/v1/auth/token", data={"username": "clina", "password": "bad"})
        assert r.status_code == 401


def test_request_when_token_expired_is_refused(
    client: TestClient, world: World, frozen_clock: FrozenClock
) -> None:
    headers = world.auth("clina")
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    frozen_clock.advance(
        minutes=world.settings.access_token_minutes, seconds=world.settings.clock_skew_seconds + 1
    )
    response = client.get("/api/v1/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "token_expired"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_request_when_token_forged_is_refused(client: TestClient, world: World) -> None:
    token = world.token("clina")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["role"] = "admin"
    forged = jwt.encode(claims, "another-secret-of-at-least-32-chars!!", algorithm="HS256")
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    for bad in (forged, unsigned, token[:-4] + "AAAA", "garbage"):
        r = client.get("/api/v1/me", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401
        assert r.json()["code"] == "token_invalid"


def test_request_when_user_disabled_is_refused_at_once(client: TestClient, world: World) -> None:
    headers = world.auth("clina")
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    uid = world.users["clina"].id
    r = client.post(f"/api/v1/admin/users/{uid}/disable", headers=world.auth("admin"))
    assert r.status_code == 200
    refused = client.get("/api/v1/me", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "account_disabled"
    again = client.post("/api/v1/auth/token", data={"username": "clina", "password": PASSWORD})
    assert again.status_code == 401


def test_device_key_when_revoked_is_refused(client: TestClient, world: World) -> None:
    device_id, key = world.device("pa1")
    headers = {"Authorization": f"Bearer {key}"}
    me = client.get("/api/v1/device/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["patient_id"] == world.patients["pa1"].id
    r = client.post(f"/api/v1/devices/{device_id}/revoke", headers=world.auth("admin"))
    assert r.status_code == 200
    refused = client.get("/api/v1/device/me", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "device_key_invalid"


def test_device_key_when_used_on_user_route_is_refused(client: TestClient, world: World) -> None:
    _, key = world.device("pa1")
    r = client.get(
        f"/api/v1/patients/{world.patients['pa1'].id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 403
    assert r.json()["code"] == "device_key_not_allowed"


def test_device_route_when_called_with_user_token_is_refused(
    client: TestClient, world: World
) -> None:
    r = client.get("/api/v1/device/me", headers=world.auth("pa1"))
    assert r.status_code == 403
    assert r.json()["code"] == "device_key_required"


def test_device_key_when_tampered_is_refused(client: TestClient, world: World) -> None:
    _, key = world.device("pa1")
    r = client.get("/api/v1/device/me", headers={"Authorization": f"Bearer {key[:-2]}xx"})
    assert r.status_code == 401


def test_token_when_scope_narrowed_limits_access(client: TestClient, world: World) -> None:
    r = client.post(
        "/api/v1/auth/token",
        data={"username": "pa1", "password": PASSWORD, "scope": "patient/Observation.crs"},
    )
    assert r.status_code == 200
    assert r.json()["scope"] == "patient/Observation.crs"
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    refused = client.get(f"/api/v1/patients/{world.patients['pa1'].id}", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("scope", "method", "path", "allowed"),
    [
        ("patient/Observation.crs", "GET", "/api/v1/me/messages", False),
        ("patient/Communication.crs", "GET", "/api/v1/me/messages", True),
        ("patient/Goal.rsu", "POST", "/api/v1/me/messages", False),
        ("patient/Observation.crs", "GET", "/api/v1/me/goals", False),
        ("patient/Goal.rsu", "GET", "/api/v1/me/goals", True),
        ("patient/Communication.crs", "POST", "/api/v1/me/goals", False),
        ("patient/Goal.rsu", "GET", "/api/v1/me/care-plan", False),
        ("patient/CarePlan.rs", "GET", "/api/v1/me/care-plan", True),
        ("patient/CarePlan.rs", "GET", "/api/v1/me/next-visit", False),
        ("patient/Appointment.rs", "GET", "/api/v1/me/next-visit", True),
        ("patient/Communication.crs", "GET", "/api/v1/me/symptoms", False),
        ("patient/Observation.crs", "GET", "/api/v1/me/symptoms", True),
    ],
)
def test_token_when_narrowed_covers_only_its_patient_clinician_acts(
    client: TestClient, world: World, scope: str, method: str, path: str, allowed: bool
) -> None:
    # An app that asked only for messaging cannot read goals, and so on: each route of the
    # patient-clinician loop is guarded by its FHIR type (policies/scopes.py). A client asks
    # for scopes as the role holds them; it gets the intersection.
    r = client.post(
        "/api/v1/auth/token", data={"username": "pa1", "password": PASSWORD, "scope": scope}
    )
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    response = client.request(method, path, headers=headers, json={})
    if allowed:
        assert response.status_code in (200, 422), response.text
    else:
        assert response.status_code == 403
        assert response.json()["code"] == "insufficient_scope"


def test_authorization_header_when_not_bearer_is_refused(client: TestClient, world: World) -> None:
    r = client.get("/api/v1/me", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert r.status_code == 401
    assert r.json()["code"] == "unauthenticated"


def test_token_when_admin_scope_narrowed_limits_admin_acts(
    client: TestClient, world: World
) -> None:
    r = client.post(
        "/api/v1/auth/token",
        data={"username": "admin", "password": PASSWORD, "scope": "user/User.cruds"},
    )
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert client.get("/api/v1/admin/users", headers=headers).status_code == 200
    refused = client.post(
        f"/api/v1/patients/{world.patients['pa1'].id}/devices",
        headers=headers,
        json={"device_class": "validated_cuff"},
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "insufficient_scope"


def test_request_when_no_credentials_challenges_without_error(client: TestClient) -> None:
    r = client.get("/api/v1/me")
    assert r.headers["www-authenticate"] == "Bearer"


def test_token_when_user_disabled_answers_as_bad_password(client: TestClient, world: World) -> None:
    client.post(
        f"/api/v1/admin/users/{world.users['clina'].id}/disable", headers=world.auth("admin")
    )
    r = client.post("/api/v1/auth/token", data={"username": "clina", "password": PASSWORD})
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_credentials"
