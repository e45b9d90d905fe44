"""Claims: a lock with expiry, so two clinicians never decide the same item."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fastapi.testclient import TestClient

from app.auth.models import User
from app.core import clock
from loops.models import Proposal
from tests.conftest import FrozenClock, World
from tests.review.conftest import decision_body


def test_claim_when_two_clinicians_race_second_gets_409_with_who_and_when(
    client: TestClient,
    world: World,
    frozen_clock: FrozenClock,
    clina2: User,
    propose: Callable[..., Proposal],
) -> None:
    p = propose("pa1")
    url = f"/api/v1/review/proposals/{p.id}/claim"
    first = client.post(url, headers=world.auth("clina"))
    assert first.status_code == 200
    assert first.json()["claimed_by"] == "Clina"
    claimed_at = first.json()["claimed_at"]
    second = client.post(url, headers=world.auth("clina2"))
    assert second.status_code == 409
    assert second.headers["content-type"].startswith("application/problem+json")
    problem = second.json()
    assert problem["code"] == "claimed_by_other"
    assert problem["holder"] == "Clina"
    assert problem["at"] == clock.iso(frozen_clock.now)
    assert claimed_at.startswith(clock.iso(frozen_clock.now)[:19])
    # Deciding while someone else holds the claim is refused the same way.
    decided = client.post(
        f"/api/v1/review/proposals/{p.id}/decision",
        json=decision_body(),
        headers=world.auth("clina2"),
    )
    assert decided.status_code == 409
    assert decided.json()["holder"] == "Clina"


def test_claim_when_same_clinician_claims_again_extends_it(
    client: TestClient, world: World, frozen_clock: FrozenClock, propose: Callable[..., Proposal]
) -> None:
    p = propose("pa1")
    url = f"/api/v1/review/proposals/{p.id}/claim"
    headers = world.auth("clina")  # tokens are minted before the clock moves
    first = client.post(url, headers=headers).json()
    frozen_clock.advance(minutes=5)
    again = client.post(url, headers=headers).json()
    assert again["claimed_at"] == first["claimed_at"]
    assert again["expires_at"] > first["expires_at"]


def test_claim_when_expired_lets_another_clinician_take_it(
    client: TestClient,
    world: World,
    frozen_clock: FrozenClock,
    clina2: User,
    propose: Callable[..., Proposal],
) -> None:
    p = propose("pa1")
    url = f"/api/v1/review/proposals/{p.id}/claim"
    second = world.auth("clina2")  # tokens are minted before the clock moves
    assert client.post(url, headers=world.auth("clina")).status_code == 200
    frozen_clock.advance(minutes=11)
    taken = client.post(url, headers=second)
    assert taken.status_code == 200
    assert taken.json()["claimed_by"] == "Second Clinician"


def test_release_when_holder_releases_lets_another_claim(
    client: TestClient,
    world: World,
    clina2: User,
    propose: Callable[..., Proposal],
    count_audit: Callable[..., int],
) -> None:
    p = propose("pa1")
    url = f"/api/v1/review/proposals/{p.id}/claim"
    assert client.post(url, headers=world.auth("clina")).status_code == 200
    # Someone else's release releases nothing.
    assert client.delete(url, headers=world.auth("clina2")).status_code == 204
    assert client.post(url, headers=world.auth("clina2")).status_code == 409
    assert client.delete(url, headers=world.auth("clina")).status_code == 204
    assert client.post(url, headers=world.auth("clina2")).status_code == 200
    assert count_audit(action="proposal.release") == 2
    assert count_audit(action="proposal.claim", outcome="success") == 2
    assert count_audit(action="proposal.claim", outcome="failure") == 1


def test_claim_when_already_decided_is_409_with_decider(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    p = propose("pa1")
    done = client.post(
        f"/api/v1/review/proposals/{p.id}/decision",
        json=decision_body(),
        headers=world.auth("clina"),
    )
    assert done.status_code == 201
    again = client.post(f"/api/v1/review/proposals/{p.id}/claim", headers=world.auth("clina"))
    assert again.status_code == 409
    assert again.json()["code"] == "already_decided"
    assert again.json()["holder"] == "Clina"
    signed = datetime.fromisoformat(done.json()["signature"]["signed_at"])
    assert datetime.fromisoformat(again.json()["at"]) == signed
